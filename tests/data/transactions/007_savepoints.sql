BEGIN;
SAVEPOINT before_index;
CREATE INDEX orders_status_idx ON orders (status);
RELEASE SAVEPOINT before_index;
SAVEPOINT outer_step;
SAVEPOINT inner_step;
ALTER TABLE orders ADD COLUMN priority smallint;
-- releasing the outer savepoint releases the inner one too
RELEASE outer_step;
SAVEPOINT bulk;
UPDATE orders SET priority = 1 WHERE total > 40;
ALTER TABLE orders ALTER COLUMN priority SET DEFAULT 0;
RELEASE SAVEPOINT bulk;
COMMIT;
