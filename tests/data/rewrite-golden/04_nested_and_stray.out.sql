SET lock_timeout = '2s';
-- bluegreen rewrite: run this file as it is (psql -v ON_ERROR_STOP=1 -f FILE): each BEGIN ... COMMIT is one transaction, every other statement runs alone
-- bluegreen: COMMIT dropped: no transaction is open here (Postgres ignores it, with a warning) -- nothing to commit yet
BEGIN;
-- bluegreen: BEGIN dropped: the transaction begun at line 2 is still open (Postgres ignores it, with a warning) -- ignored by Postgres
ALTER TABLE accounts ADD COLUMN nickname text;
COMMIT;
-- bluegreen: COMMIT dropped: no transaction is open here (Postgres ignores it, with a warning)
-- bluegreen: BEGIN dropped: an empty transaction
-- bluegreen: COMMIT dropped with its BEGIN
-- bluegreen: BEGIN dropped: nothing of this block can run inside a transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_nickname_idx ON accounts (nickname);
-- bluegreen: COMMIT dropped with its BEGIN
