SET lock_timeout = '2s';
-- bluegreen rewrite: run this file as it is (psql -v ON_ERROR_STOP=1 -f FILE): each BEGIN ... COMMIT is one transaction, every other statement runs alone
BEGIN ISOLATION LEVEL REPEATABLE READ;
SET TRANSACTION READ WRITE;
ALTER TABLE orders ADD COLUMN note text;
COMMIT;
-- bluegreen: COMMIT AND CHAIN written as COMMIT, then BEGIN with the same characteristics
-- the chained transaction keeps the isolation level
-- bluegreen: CREATE INDEX CONCURRENTLY cannot run inside a transaction block: it runs outside the transaction of line 4 (atomicity changed)
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_note_idx ON orders (note);
BEGIN ISOLATION LEVEL REPEATABLE READ;
SET TRANSACTION READ WRITE;
ALTER TABLE orders ADD COLUMN shipped boolean DEFAULT false;
COMMIT;
BEGIN;
SAVEPOINT first;
ALTER TABLE orders ADD COLUMN priority smallint;
RELEASE SAVEPOINT first;
COMMIT;
-- bluegreen: SAVEPOINT second dropped: the transaction is split inside it, and it is only released, never rolled back to (nothing changes)
-- bluegreen: DROP INDEX CONCURRENTLY cannot run inside a transaction block: it runs outside the transaction of line 9 (atomicity changed)
DROP INDEX CONCURRENTLY IF EXISTS orders_note_idx;
-- bluegreen: RELEASE second dropped with its SAVEPOINT
-- bluegreen: COMMIT moved up: it ends the transaction before the statements that run outside it
