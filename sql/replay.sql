-- bluegreen replay progress, on the cluster events are replayed INTO (green; blue for a reverse
-- capture). Idempotent; applied by orchestrator/replay.py under pg_advisory_xact_lock(25191, 4).
--
-- Exactly once: the replay updates this row in the same transaction as the events it applies.
-- Every event whose transaction is visible in `base_snapshot` (a snapshot of the SOURCE cluster)
-- is applied (or was in the copy green was restored from). A round takes a newer source snapshot,
-- `round_snapshot`, and applies the events visible in it but not in `base_snapshot`, in seq order;
-- `after_seq` is the last of those applied. When the round is done, base_snapshot := round_snapshot.
-- A crash mid-round resumes the same round (same snapshots, same after_seq): nothing is applied
-- twice and no event committed late with a low seq is skipped.
CREATE SCHEMA IF NOT EXISTS bluegreen;

CREATE TABLE IF NOT EXISTS bluegreen.replay_progress (
    run_id         bigint NOT NULL,
    capture        text NOT NULL,
    base_snapshot  text NOT NULL,
    round_snapshot text,
    after_seq      bigint NOT NULL DEFAULT 0,
    applied        bigint NOT NULL DEFAULT 0,
    rounds         bigint NOT NULL DEFAULT 0,
    last_event_at  timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (run_id, capture)
);

-- Logical capture (orchestrator/logical_replay.py): the commit LSN of the last source transaction applied,
-- updated in the same transaction as its changes; the slot is advanced only after that commit.
ALTER TABLE bluegreen.replay_progress ADD COLUMN IF NOT EXISTS applied_lsn pg_lsn;
