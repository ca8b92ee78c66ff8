-- .autocommit.: each statement runs alone.
ALTER TABLE accounts ADD COLUMN score int;
UPDATE accounts SET score = 0 WHERE score IS NULL;
ALTER TABLE accounts ALTER COLUMN score SET NOT NULL;
