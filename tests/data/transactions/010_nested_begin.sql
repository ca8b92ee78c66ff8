-- A BEGIN inside a block is ignored by Postgres (a warning); the first COMMIT ends the block.
BEGIN;
BEGIN;
ALTER TABLE accounts ADD COLUMN nickname text;
COMMIT;
COMMIT;
