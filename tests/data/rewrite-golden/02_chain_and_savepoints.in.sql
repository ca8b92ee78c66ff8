BEGIN ISOLATION LEVEL REPEATABLE READ;
SET TRANSACTION READ WRITE;
ALTER TABLE orders ADD COLUMN note text;
COMMIT AND CHAIN;
-- the chained transaction keeps the isolation level
CREATE INDEX orders_note_idx ON orders (note);
ALTER TABLE orders ADD COLUMN shipped boolean DEFAULT false;
COMMIT;
BEGIN;
SAVEPOINT first;
ALTER TABLE orders ADD COLUMN priority smallint;
RELEASE SAVEPOINT first;
SAVEPOINT second;
DROP INDEX orders_note_idx;
RELEASE second;
COMMIT;
