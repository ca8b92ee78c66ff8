SET lock_timeout = '2s';
-- bluegreen rewrite: run this file as it is (psql -v ON_ERROR_STOP=1 -f FILE): each BEGIN ... COMMIT is one transaction, every other statement runs alone
-- a BOM and CRLF line ends
-- bluegreen: CREATE INDEX CONCURRENTLY cannot run inside a transaction block: it runs outside the transaction of line 2 (atomicity changed)
CREATE INDEX CONCURRENTLY IF NOT EXISTS a_b_idx ON a (b);  -- kept comment
BEGIN;
ALTER TABLE a ADD COLUMN c int;
COMMIT;
SELECT 1;