-- SQL of the extend_ttl and restore_ttl steps (orchestrator/steps/extend_ttl.py).
-- Each block starts with "-- name: <block>". Names in braces are filled with psycopg.sql: identifiers
-- as sql.Identifier, values as sql.Literal (never formatted as text), so what --dry-run prints is
-- exactly what runs; braces are never written in comments. Values are handled as timestamptz under
-- "SET LOCAL timezone = 'UTC'": a timestamp without time zone column round-trips exactly, and
-- subtracting the extension from an extended value gives back the original one.

-- name: schema
-- The backup: one header per backup (what was extended, how), one row per extended row.
CREATE SCHEMA IF NOT EXISTS bluegreen;
CREATE TABLE IF NOT EXISTS bluegreen.ttl_backups (
    backup       text PRIMARY KEY,
    schema_name  text NOT NULL,
    table_name   text NOT NULL,
    column_name  text NOT NULL,
    key_columns  text[] NOT NULL,
    extend_by    interval NOT NULL,
    window_end   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS bluegreen.ttl_backup (
    id          bigserial PRIMARY KEY,
    backup      text NOT NULL,  -- a bluegreen.ttl_backups row (no foreign key: it would cost every insert)
    key         jsonb NOT NULL,
    old_value   timestamptz NOT NULL,
    new_value   timestamptz NOT NULL,
    status      text NOT NULL DEFAULT 'extended' CHECK (status IN ('extended', 'restored', 'kept', 'gone')),
    extended_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    restored_at timestamptz
)

-- name: header
-- Register (or re-register) a backup; a different table or column under the same name is refused.
INSERT INTO bluegreen.ttl_backups (backup, schema_name, table_name, column_name, key_columns, extend_by, window_end)
VALUES ({backup}, {schema_name}, {table_name}, {column_name}, {key_columns}, {extend_by}, {window_end})
ON CONFLICT (backup) DO UPDATE SET extend_by = EXCLUDED.extend_by,
    window_end = coalesce(bluegreen.ttl_backups.window_end, EXCLUDED.window_end)
WHERE (bluegreen.ttl_backups.schema_name, bluegreen.ttl_backups.table_name, bluegreen.ttl_backups.column_name)
    = (EXCLUDED.schema_name, EXCLUDED.table_name, EXCLUDED.column_name)

-- name: eligible
-- Rows the extension is for: matching the condition, with an expiry still ahead (an expired token
-- is never revived) and finite.
SELECT count(*) FROM ONLY {table} AS t
WHERE ({where}) AND t.{column} > now() AND t.{column} < 'infinity'

-- name: extend_window
-- The last key of the next batch_size rows after the cursor (NULL: fewer are left, this is the last
-- batch). A primary-key index scan whatever the statistics say.
SELECT {t_keys} FROM ONLY {table} AS t WHERE {after} ORDER BY {t_keys} OFFSET {offset} LIMIT 1

-- name: extend_lock
-- First statement of a batch's transaction: lock the range's eligible rows (skipping those locked
-- by someone else). The batch statement that follows takes a new snapshot, in which the rows it
-- holds are visible in their latest version, so it can update them by ctid. (Within one statement, a
-- row that a concurrent update moved to a new version while we waited would be locked but invisible
-- to the update.)
SELECT count(*) FROM (
    SELECT FROM ONLY {table} AS t
    {probe}
    WHERE {range} AND ({where}) AND t.{column} > now() AND t.{column} < 'infinity' {probe_condition}
    FOR NO KEY UPDATE OF t SKIP LOCKED
) AS locked

-- name: extend_batch
-- One batch: the rows of one key range, of which the eligible ones are locked and extended. A row
-- locked by someone else is skipped, never waited for (no deadlock with the application; the
-- second pass tries the ranges that had some again); a row already extended under this backup is
-- skipped (the probe block looks each row up in the backup when it held rows as the step started,
-- and in the second pass), so a re-run after a crash never extends a row twice; each row's old and
-- new expiry is saved in the same transaction as its update. The update finds its rows by ctid (a TID scan: no join whose
-- plan could turn into a scan of the whole table). Returns the rows extended, those whose old expiry
-- fell inside the window, and the eligible rows it left (locked by the application).
WITH candidates AS (
    SELECT t.ctid AS row_id
    FROM ONLY {table} AS t
    {probe}
    WHERE {range} AND ({where}) AND t.{column} > now() AND t.{column} < 'infinity' {probe_condition}
    FOR NO KEY UPDATE OF t SKIP LOCKED
), extended AS (
    UPDATE ONLY {table} AS t SET {column} = t.{column} + {extend_by}
    WHERE t.ctid = ANY (ARRAY(SELECT row_id FROM candidates))
    RETURNING {key_json} AS key, t.{column} - {extend_by} AS old_value, t.{column} AS new_value
), saved AS (
    INSERT INTO bluegreen.ttl_backup AS b (backup, key, old_value, new_value)
    SELECT {backup}, key, old_value, new_value FROM extended
    {on_conflict}
    RETURNING b.old_value, b.new_value
)
SELECT count(*) AS extended,
       count(*) FILTER (WHERE old_value < {window_end} AND new_value >= {window_end}) AS avoided,
       (SELECT count(*) FROM ONLY {table} AS t
        {probe}
        WHERE {range} AND ({where}) AND t.{column} > now() AND t.{column} < 'infinity' {probe_condition})
       - count(*) AS left_over
FROM saved

-- name: probe
LEFT JOIN LATERAL (SELECT b.status FROM bluegreen.ttl_backup AS b
                   WHERE b.backup = {backup} AND b.key = {key_json} LIMIT 1) AS done ON true

-- name: on_conflict
ON CONFLICT (backup, key) DO UPDATE
    SET old_value = EXCLUDED.old_value, new_value = EXCLUDED.new_value, status = 'extended',
        extended_at = clock_timestamp(), restored_at = NULL

-- name: key_index
-- Look-ups by key (resuming, the second pass) and upserts need it; a fresh first pass, the only
-- writer of its backup and never meeting a key twice, goes faster without it.
CREATE UNIQUE INDEX IF NOT EXISTS ttl_backup_key ON bluegreen.ttl_backup (backup, key)

-- name: summary
-- What a backup holds, by status; "avoided" are rows whose original expiry fell inside the window
-- and whose extended one is past it: the refreshes the extension saves.
SELECT count(*) FILTER (WHERE status = 'extended') AS extended,
       count(*) FILTER (WHERE status = 'extended' AND old_value < h.window_end
                        AND new_value >= h.window_end) AS avoided,
       count(*) FILTER (WHERE status = 'restored') AS restored,
       count(*) FILTER (WHERE status = 'kept') AS kept,
       count(*) FILTER (WHERE status = 'gone') AS gone
FROM bluegreen.ttl_backups AS h
LEFT JOIN bluegreen.ttl_backup AS b ON b.backup = h.backup
WHERE h.backup = {backup}
GROUP BY h.window_end

-- name: still_extended
-- Of the rows a backup says are extended, how many still hold the extended value.
SELECT count(*) FILTER (WHERE t.{column} = b.new_value), count(*)
FROM bluegreen.ttl_backup AS b
CROSS JOIN LATERAL jsonb_populate_record(NULL::{table}, b.key) AS r
JOIN ONLY {table} AS t ON ({t_keys}) = ({r_cols})
WHERE b.backup = {backup} AND b.status = 'extended'

-- name: restore_bounds
-- The first id of every batch of extended rows of a backup (batches of batch_size rows).
SELECT id FROM (
    SELECT id, row_number() OVER (ORDER BY id) AS n
    FROM bluegreen.ttl_backup WHERE backup = {backup} AND status = 'extended'
) AS numbered
WHERE n % {batch_size} = 1
ORDER BY id

-- name: restore_lock
-- First statement of a restore batch's transaction: lock the batch's rows, waiting (under
-- lock_timeout) for the application's locks; restore_range then sees their latest version.
SELECT count(*) FROM bluegreen.ttl_backup AS b
CROSS JOIN LATERAL jsonb_populate_record(NULL::{table}, b.key) AS r
CROSS JOIN LATERAL (SELECT FROM ONLY {table} AS t WHERE ({t_keys}) = ({r_cols}) FOR NO KEY UPDATE OF t) AS hit
WHERE b.backup = {backup} AND b.status = 'extended' AND b.id >= {low} AND b.id < {high}

-- name: restore_range
-- Put back the original expiry of one batch of a backup on the cluster that holds it, only where
-- the row still holds the extended value (a row the application changed since keeps its value);
-- each backup row is marked restored, kept (changed since) or gone (row deleted since); one that
-- could not be restored stays extended, for the next round. Rows are found by key, one index
-- look-up each, and updated by ctid; the restored value is the current one minus the extension,
-- checked equal to the saved original.
WITH b AS (
    SELECT id, key, old_value, new_value FROM bluegreen.ttl_backup
    WHERE backup = {backup} AND status = 'extended' AND id >= {low} AND id < {high}
    ORDER BY id
    FOR UPDATE
), found AS (
    SELECT b.id, b.old_value, b.new_value, hit.row_id, hit.current
    FROM b
    CROSS JOIN LATERAL jsonb_populate_record(NULL::{table}, b.key) AS r
    CROSS JOIN LATERAL (SELECT t.ctid AS row_id, t.{column} AS current FROM ONLY {table} AS t
                        WHERE ({t_keys}) = ({r_cols}) FOR NO KEY UPDATE OF t) AS hit
), restored AS (
    UPDATE ONLY {table} AS t SET {column} = t.{column} - {extend_by}
    WHERE t.ctid = ANY (ARRAY(SELECT row_id FROM found
                              WHERE current = new_value AND current - {extend_by} = old_value))
    RETURNING {key_json} AS key
)
UPDATE bluegreen.ttl_backup AS x
SET status = CASE WHEN x.key IN (SELECT key FROM restored) THEN 'restored'
                  WHEN x.id IN (SELECT id FROM found WHERE current = new_value
                                                       AND current - {extend_by} = old_value) THEN 'extended'
                  WHEN x.id IN (SELECT id FROM found) THEN 'kept'
                  ELSE 'gone' END,
    restored_at = clock_timestamp()
WHERE x.backup = {backup} AND x.status = 'extended' AND x.id >= {low} AND x.id < {high}

-- name: backup_rows
-- One batch of a backup's extended rows, in id order after the cursor (for a restore elsewhere).
SELECT id, key, old_value, new_value FROM bluegreen.ttl_backup
WHERE backup = {backup} AND status = 'extended' AND id > {after}
ORDER BY id
LIMIT {batch_size}

-- name: restore_rows_lock
-- The same lock, for rows given as a jsonb array (restore_rows follows in the same transaction).
SELECT count(*) FROM jsonb_array_elements({rows}::jsonb) AS e
CROSS JOIN LATERAL jsonb_populate_record(NULL::{table}, e -> 'key') AS r
CROSS JOIN LATERAL (SELECT FROM ONLY {table} AS t WHERE ({t_keys}) = ({r_cols}) FOR NO KEY UPDATE OF t) AS hit

-- name: restore_rows
-- Put back the original expiry of rows given as a jsonb array (a backup read from another
-- cluster), only where the row still holds the extended value. Returns restored, kept, gone.
WITH k AS (
    SELECT (e ->> 'old_value')::timestamptz AS old_value, (e ->> 'new_value')::timestamptz AS new_value,
           e -> 'key' AS key
    FROM jsonb_array_elements({rows}::jsonb) AS e
), found AS (
    SELECT k.old_value, k.new_value, hit.row_id, hit.current
    FROM k
    CROSS JOIN LATERAL jsonb_populate_record(NULL::{table}, k.key) AS r
    CROSS JOIN LATERAL (SELECT t.ctid AS row_id, t.{column} AS current FROM ONLY {table} AS t
                        WHERE ({t_keys}) = ({r_cols}) FOR NO KEY UPDATE OF t) AS hit
), restored AS (
    UPDATE ONLY {table} AS t SET {column} = t.{column} - {extend_by}
    WHERE t.ctid = ANY (ARRAY(SELECT row_id FROM found
                              WHERE current = new_value AND current - {extend_by} = old_value))
    RETURNING 1
)
SELECT (SELECT count(*) FROM restored), (SELECT count(*) FROM found) - (SELECT count(*) FROM restored),
       (SELECT count(*) FROM k) - (SELECT count(*) FROM found)
