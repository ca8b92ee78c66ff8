BEGIN ISOLATION LEVEL REPEATABLE READ;
ALTER TABLE orders ADD COLUMN note text;
COMMIT AND CHAIN;
-- the chained transaction has the same isolation level
CREATE INDEX orders_note_idx ON orders (note);
UPDATE orders SET note = 'order ' || id WHERE note IS NULL AND id % 2 = 0;
COMMIT AND CHAIN;
ALTER TABLE orders ADD COLUMN shipped boolean DEFAULT false;
COMMIT;
