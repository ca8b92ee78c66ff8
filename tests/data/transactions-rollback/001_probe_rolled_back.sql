BEGIN;
CREATE TABLE probe (id bigint PRIMARY KEY, v int);
INSERT INTO probe SELECT g, g FROM generate_series(1, 1000) g;
COMMIT;
-- a check that leaves nothing behind: it runs, then is undone
BEGIN;
DELETE FROM probe WHERE v > 500;
DO $$ BEGIN IF (SELECT count(*) FROM probe) <> 500 THEN RAISE EXCEPTION 'unexpected count'; END IF; END $$;
ROLLBACK;
CREATE INDEX probe_v_idx ON probe (v);
