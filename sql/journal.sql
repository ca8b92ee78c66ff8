-- bluegreen journal: run and step state on the control cluster (blue by default).
-- Idempotent; applied under pg_advisory_xact_lock by orchestrator/journal.py.
-- The database itself enforces one unfinished run per plan (runs_one_unfinished_per_plan).
CREATE SCHEMA IF NOT EXISTS bluegreen;

CREATE TABLE IF NOT EXISTS bluegreen.runs (
    run_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    plan_name   text NOT NULL,
    plan_sha256 text NOT NULL,
    status      text NOT NULL
                CHECK (status IN ('running', 'failed', 'done', 'rolled_back', 'rollback_failed', 'abandoned')),
    attempt     integer NOT NULL DEFAULT 1,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    error       text,
    report      jsonb,
    CHECK ((finished_at IS NULL) = (status IN ('running', 'failed', 'rollback_failed')))
);

CREATE UNIQUE INDEX IF NOT EXISTS runs_one_unfinished_per_plan
    ON bluegreen.runs (plan_name) WHERE finished_at IS NULL;

-- Append-only: one row per transition of a step phase or an action.
CREATE TABLE IF NOT EXISTS bluegreen.step_events (
    event_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id    bigint NOT NULL REFERENCES bluegreen.runs,
    step_id   text NOT NULL,
    phase     text NOT NULL CHECK (phase IN ('apply', 'verify', 'rollback')),
    action_id text,
    status    text NOT NULL CHECK (status IN ('started', 'done', 'failed', 'skipped')),
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    detail    jsonb
);

CREATE INDEX IF NOT EXISTS step_events_by_run ON bluegreen.step_events (run_id, step_id, phase);

-- Run-scoped facts steps hand to later steps (the snapshot a copy used, capture positions...).
CREATE TABLE IF NOT EXISTS bluegreen.run_state (
    run_id     bigint NOT NULL REFERENCES bluegreen.runs,
    key        text NOT NULL,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (run_id, key)
);

-- Time series of a run (orchestrator/sampler.py; the format is orchestrator/timeseries.py's): one row per
-- batch of ticks sampled about once a second and written every few seconds, each batch self-contained.
-- Batches older than an hour are merged and thinned to one tick per 10 s, so a 3-hour run keeps 1 to
-- 1.5 MB here (bench/report.py). What `bluegreen report --html` and `run --report x.html` draw, with the steps' events.
CREATE TABLE IF NOT EXISTS bluegreen.samples (
    run_id   bigint NOT NULL REFERENCES bluegreen.runs,
    batch_id bigint GENERATED ALWAYS AS IDENTITY,
    t0       double precision NOT NULL,   -- epoch seconds of the batch's first tick (or mark)
    t1       double precision NOT NULL,   -- and of its last
    ticks    integer NOT NULL,
    thinned  boolean NOT NULL DEFAULT false,
    data     jsonb NOT NULL,              -- {"t": [...], "s": {series: [[tick, value], ...]}, "m": [...]}
    PRIMARY KEY (run_id, batch_id)
);
