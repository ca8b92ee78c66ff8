COMMIT; -- nothing to commit yet
BEGIN;
BEGIN; -- ignored by Postgres
ALTER TABLE accounts ADD COLUMN nickname text;
COMMIT;
COMMIT;
BEGIN;
COMMIT;
BEGIN;
CREATE INDEX accounts_nickname_idx ON accounts (nickname);
COMMIT;
