-- bluegreen cleanup: move (or delete, or only count) the rows that violate a constraint a migration adds.
-- Idempotent; installed on the migrated cluster by the migrate and cleanup steps (orchestrator/steps/cleanup.py).
--
-- bluegreen_quarantine.<table> holds the rows moved out of <table> (as jsonb, so a later change of the table
-- never breaks the quarantine), with the constraint, the reason and the time; `bluegreen quarantine restore`
-- puts them back. Rows that ON DELETE CASCADE would take with them are quarantined first (recursively), so
-- a restore brings back everything that left; so are rows whose NO ACTION / RESTRICT foreign key would refuse it.
CREATE SCHEMA IF NOT EXISTS bluegreen;
CREATE SCHEMA IF NOT EXISTS bluegreen_quarantine;
CREATE SEQUENCE IF NOT EXISTS bluegreen_quarantine.ids;

-- One row per table and cleanup: how many rows a constraint's cleanup moved, deleted or found.
CREATE TABLE IF NOT EXISTS bluegreen.cleanup_log (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id          bigint,
    step_id         text NOT NULL,
    constraint_name text NOT NULL,
    table_name      text NOT NULL,
    policy          text NOT NULL,
    rows            bigint NOT NULL,
    cascade_of      text,
    at              timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The quarantine table of a source table (created on first use).
CREATE OR REPLACE FUNCTION bluegreen_quarantine.table_for(p_table regclass) RETURNS text
LANGUAGE plpgsql AS $fn$
DECLARE
    v_schema text;
    v_name   text;
    v_target text;
BEGIN
    SELECT n.nspname, c.relname INTO v_schema, v_name
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = p_table;
    v_target := CASE WHEN v_schema = 'public' THEN v_name ELSE left(v_schema || '__' || v_name, 63) END;
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS bluegreen_quarantine.%I ('
        ' quarantine_id bigint PRIMARY KEY DEFAULT nextval(''bluegreen_quarantine.ids''),'
        ' source_schema text NOT NULL, source_table text NOT NULL, constraint_name text NOT NULL,'
        ' reason text NOT NULL, cascade_of text, depth int NOT NULL DEFAULT 0, run_id bigint, step_id text,'
        ' quarantined_at timestamptz NOT NULL DEFAULT clock_timestamp(), restored_at timestamptz,'
        ' row_data jsonb NOT NULL)', v_target);
    RETURN v_target;
END
$fn$;

-- Clean the rows of p_table matching p_where (a predicate over the table, which it may name unqualified).
-- p_policy: 'quarantine' (move), 'delete', or 'report' (count, and fail naming a sample of keys if any).
-- p_limit: at most that many rows of p_table (a batch); NULL for all. Returns the rows of p_table cleaned.
CREATE OR REPLACE FUNCTION bluegreen_quarantine.clean(
    p_table regclass, p_where text, p_constraint text, p_policy text, p_run_id bigint, p_step_id text,
    p_limit bigint DEFAULT NULL, p_cascade_of text DEFAULT NULL, p_depth int DEFAULT 0
) RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
    v_schema text;
    v_name   text;
    v_ctids  tid[];
    v_count  bigint;
    v_sample text;
    v_keys   text;
    v_target text;
    v_dep    record;
BEGIN
    IF p_policy NOT IN ('quarantine', 'delete', 'report') THEN
        RAISE EXCEPTION 'bluegreen cleanup: unknown policy %', p_policy;
    END IF;
    IF p_depth > 16 THEN
        RAISE EXCEPTION 'bluegreen cleanup: ON DELETE CASCADE chain deeper than 16 tables from %', p_cascade_of;
    END IF;
    SELECT n.nspname, c.relname INTO v_schema, v_name
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = p_table;
    EXECUTE format('SELECT array_agg(ctid) FROM (SELECT %I.ctid FROM %I.%I WHERE %s%s) s',
                   v_name, v_schema, v_name, p_where,
                   CASE WHEN p_limit IS NULL THEN '' ELSE ' LIMIT ' || p_limit END)
        INTO v_ctids;
    v_count := coalesce(cardinality(v_ctids), 0);
    IF v_count = 0 THEN
        RETURN 0;
    END IF;

    IF p_policy = 'report' THEN
        -- name the rows by their primary key (never the whole row: it may hold secrets)
        SELECT string_agg(format('%I', a.attname), ', ' ORDER BY k.ord) INTO v_keys
          FROM pg_index i, unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
          JOIN pg_attribute a ON a.attrelid = p_table AND a.attnum = k.attnum
         WHERE i.indrelid = p_table AND i.indisprimary;
        EXECUTE format('SELECT string_agg(k::text, ''; '') FROM (SELECT (%s) AS k FROM %I.%I WHERE ctid = ANY($1) LIMIT 5) s',
                       coalesce('ROW(' || v_keys || ')', 'ctid'), v_schema, v_name)
            INTO v_sample USING v_ctids;
        INSERT INTO bluegreen.cleanup_log (run_id, step_id, constraint_name, table_name, policy, rows, cascade_of)
        VALUES (p_run_id, p_step_id, p_constraint, format('%I.%I', v_schema, v_name), p_policy, v_count, p_cascade_of);
        RAISE EXCEPTION 'bluegreen cleanup: % row(s) of %.% violate %; e.g. %', v_count, v_schema, v_name,
            p_constraint, coalesce(v_keys, 'ctid') || ' = ' || v_sample
            USING ERRCODE = 'check_violation';
    END IF;

    -- rows that ON DELETE CASCADE would delete with these (or that NO ACTION / RESTRICT would refuse to
    -- orphan) go first, each to its own quarantine table
    IF p_policy = 'quarantine' THEN
        FOR v_dep IN
            SELECT c.conname, c.conrelid::regclass AS child,
                   (SELECT string_agg(format('%I', a.attname), ', ' ORDER BY k.ord)
                      FROM unnest(c.conkey) WITH ORDINALITY k(attnum, ord)
                      JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum) AS child_cols,
                   (SELECT string_agg(format('%I', a.attname), ', ' ORDER BY k.ord)
                      FROM unnest(c.confkey) WITH ORDINALITY k(attnum, ord)
                      JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum) AS parent_cols
              FROM pg_constraint c
             WHERE c.contype = 'f' AND c.confrelid = p_table AND c.confdeltype IN ('c', 'a', 'r')
               AND c.conrelid <> p_table
             ORDER BY c.conname
        LOOP
            PERFORM bluegreen_quarantine.clean(
                v_dep.child,
                format('(%s) IN (SELECT %s FROM %I.%I WHERE ctid = ANY(%L::tid[]))',
                       v_dep.child_cols, v_dep.parent_cols, v_schema, v_name, v_ctids::text),
                p_constraint, p_policy, p_run_id, p_step_id, NULL,
                format('%I.%I (%s)', v_schema, v_name, v_dep.conname), p_depth + 1);
        END LOOP;
        v_target := bluegreen_quarantine.table_for(p_table);
        EXECUTE format(
            'WITH moved AS (DELETE FROM %I.%I WHERE ctid = ANY($1) RETURNING *)'
            ' INSERT INTO bluegreen_quarantine.%I (source_schema, source_table, constraint_name, reason,'
            ' cascade_of, depth, run_id, step_id, row_data)'
            ' SELECT $2, $3, $4, $5, $6, $9, $7, $8, to_jsonb(moved) FROM moved',
            v_schema, v_name, v_target)
            USING v_ctids, v_schema, v_name, p_constraint,
                  CASE WHEN p_cascade_of IS NULL THEN 'violates ' || p_constraint
                       ELSE 'references a row moved out of ' || p_cascade_of END,
                  p_cascade_of, p_run_id, p_step_id, p_depth;
        GET DIAGNOSTICS v_count = ROW_COUNT;
    ELSE
        EXECUTE format('DELETE FROM %I.%I WHERE ctid = ANY($1)', v_schema, v_name) USING v_ctids;
        GET DIAGNOSTICS v_count = ROW_COUNT;
    END IF;
    INSERT INTO bluegreen.cleanup_log (run_id, step_id, constraint_name, table_name, policy, rows, cascade_of)
    VALUES (p_run_id, p_step_id, p_constraint, format('%I.%I', v_schema, v_name), p_policy, v_count, p_cascade_of);
    RETURN v_count;
END
$fn$;
