-- BEGIN WORK ... COMMIT WORK: a column, its index, a backfill of its NULLs, then NOT NULL.
BEGIN WORK;
ALTER TABLE accounts ADD COLUMN team int;
CREATE INDEX accounts_team_idx ON accounts (team);
UPDATE accounts SET team = id % 7 WHERE team IS NULL;
ALTER TABLE accounts ALTER COLUMN team SET NOT NULL;
COMMIT WORK;
