-- bluegreen snapshot state, on the cluster the copy goes INTO (green). Idempotent; applied by
-- orchestrator/copy/engine.py under pg_advisory_xact_lock(25191, 5).
--
-- One row per part of a copied table (a leaf: a plain table or a partition; a large table may be
-- split into ctid ranges). A part is `done` in the same transaction as the COPY that filled it, with
-- the snapshot it was read under, so after a crash the data and this row always agree. `attempt`
-- says which attempt of the step owns an unfinished part: a resumed step starts a new attempt, takes
-- over every unfinished copy group, and copies it again under its own, new snapshot.
CREATE SCHEMA IF NOT EXISTS bluegreen;

CREATE TABLE IF NOT EXISTS bluegreen.snapshot_tables (
    run_id      bigint NOT NULL,
    step_id     text NOT NULL,
    relation    text NOT NULL,            -- schema-qualified, each part quoted as quote_ident does
    part        integer NOT NULL,         -- 0 .. parts - 1
    parts       integer NOT NULL,
    copy_group  integer NOT NULL,         -- tables linked by foreign keys, or one partition tree
    attempt     integer NOT NULL,
    done        boolean NOT NULL DEFAULT false,
    snapshot    text,                     -- pg_current_snapshot() of the source the part was read under
    rows        bigint,
    bytes       bigint,
    seconds     double precision,
    done_at     timestamptz,
    PRIMARY KEY (run_id, step_id, relation, part)
);
