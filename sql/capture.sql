-- bluegreen capture: where the capture trigger appends row events, on the captured cluster.
-- Idempotent; applied by orchestrator/steps/capture.py under pg_advisory_xact_lock(25191, 3).
--
-- Ordering contract (DESIGN.md section 3, "capture"): `seq` comes from a sequence with CACHE 1, so
-- it is taken from one shared counter at the moment the event is written. Two transactions that
-- write the same row are serialized by the row lock, so the later writer's event always gets the
-- higher `seq`; per row, `seq` order is commit order. Across rows it is not: a long transaction can
-- commit an event numbered below events already replayed, which is why the replay never keeps a
-- high-water mark on `seq` alone (see orchestrator/replay.py). Never raise the sequence's CACHE:
-- per-backend caches would hand out numbers out of order.
CREATE SCHEMA IF NOT EXISTS bluegreen;

CREATE TABLE IF NOT EXISTS bluegreen.capture_events (
    seq     bigint GENERATED ALWAYS AS IDENTITY (CACHE 1),
    capture text NOT NULL,
    xid     xid8 NOT NULL,
    op      "char" NOT NULL,                 -- 'I', 'U' or 'D' (the first letter of TG_OP)
    at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    old     json,                            -- json, not jsonb: see the trigger function below
    new     json
);

-- The replay reads a round's events above a position once, in seq order, and sorts them itself
-- (orchestrator/replay.py). A BRIN index on seq lets that read skip the block ranges already replayed
-- (events are appended in about seq order); unlike a b-tree, a BRIN index costs an insert nothing until
-- its range is summarized, and every captured write would pay for a b-tree entry (about a quarter of
-- the trigger's cost: bench/capture.py). The replay summarizes new ranges as it goes; so does autovacuum.
CREATE INDEX IF NOT EXISTS capture_events_seq_brin ON bluegreen.capture_events USING brin (seq)
    WITH (pages_per_range = 16, autosummarize = on);
DROP INDEX IF EXISTS bluegreen.capture_events_seq;         -- the b-tree of earlier releases

-- One row per installed capture: what it watches (read by the replay, status and cutover).
CREATE TABLE IF NOT EXISTS bluegreen.captures (
    capture      text PRIMARY KEY,
    relation     text NOT NULL,
    events       text[] NOT NULL,
    condition    text,
    installed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The trigger function: TG_ARGV[0] is the capture's id. SECURITY DEFINER, so the application's
-- roles need no privilege on the bluegreen schema. It has no SET search_path (a SET clause costs every
-- captured write a configuration save and restore, about 8% of pgbench's tps): instead every name it
-- uses is schema-qualified and it uses no operator, so a caller's search_path cannot redirect it. OLD is
-- NULL for an insert and NEW for a delete, and to_json(NULL) is NULL. The images are json, not jsonb:
-- to_json writes the row's text form straight out, while to_jsonb builds and sorts a binary tree first,
-- a cost every captured write pays (bench/capture.py); the replay reads them once, as text.
CREATE OR REPLACE FUNCTION bluegreen.capture_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    INSERT INTO bluegreen.capture_events (capture, xid, op, old, new)
    VALUES (TG_ARGV[0], pg_catalog.pg_current_xact_id(), pg_catalog.left(TG_OP, 1),
            pg_catalog.to_json(OLD), pg_catalog.to_json(NEW));
    RETURN NULL;
END
$fn$;
