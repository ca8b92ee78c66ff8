BEGIN;
SAVEPOINT tentative;
DELETE FROM probe WHERE v < 0;
ALTER TABLE probe ADD COLUMN tentative_flag boolean;
ROLLBACK TO SAVEPOINT tentative;
-- the savepoint still exists: this part is kept as written, up to its RELEASE
ALTER TABLE probe ADD COLUMN priority smallint;
RELEASE tentative;
CREATE INDEX probe_priority_idx ON probe (priority);
ALTER TABLE probe ALTER COLUMN v SET DEFAULT 0;
COMMIT;
