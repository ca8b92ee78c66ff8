"""Lock safety of ``migrate`` against a session that holds a conflicting lock (real servers, real locks).

A statement that cannot get its lock waits at most ``lock_timeout``, is retried with backoff
``lock_retries`` times, then fails cleanly; readers queued behind it are never stuck. A concurrent index
build interrupted by a lock timeout leaves an invalid index, which the next run drops and builds again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg

from orchestrator.localenv import Databases

from .helpers import bluegreen, cli_env, query, scalar, spawn, wait_for, write_plan

DEFAULTS = "{lock_timeout: 200ms, lock_retries: 2, retry_backoff: 100ms}"


def setup_table(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int, code text)")
        conn.execute("INSERT INTO items SELECT g, g, 'c' || g FROM generate_series(1, 2000) g")


def plan_with(tmp_path: Path, name: str, migration: str, defaults: str = DEFAULTS) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir(exist_ok=True)
    (folder / "001_change.sql").write_text(migration)
    return write_plan(tmp_path / f"{name}.yaml", name, """\
  - {id: migrate, kind: migrate, on: green, files: "migrations/*.sql", mode: lock-safe}
""", defaults)


def waiting_on_items(dsn: str) -> bool:
    """Whether a bluegreen session waits for a lock on ``items`` (pg_locks, not granted)."""
    return bool(scalar(dsn, "SELECT EXISTS (SELECT FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                            " WHERE NOT l.granted AND a.application_name = 'bluegreen')"))


def waiting_attempt(dsn: str) -> object:
    """The start of the transaction of the bluegreen session waiting for a lock (each retry starts a new one)."""
    rows = query(dsn, "SELECT a.xact_start FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                      " WHERE NOT l.granted AND a.application_name = 'bluegreen'")
    return rows[0][0] if rows else None


def test_statement_retries_under_lock_timeout_then_fails_cleanly(dbs: Databases, tmp_path: Path) -> None:
    setup_table(dbs.green_dsn)
    plan = plan_with(tmp_path, "blocked", "ALTER TABLE items ALTER COLUMN v SET NOT NULL;\n")
    with psycopg.connect(dbs.green_dsn) as blocker:
        blocker.execute("SELECT count(*) FROM items")  # an open transaction holding ACCESS SHARE on items
        started = time.monotonic()
        proc = spawn(["run", str(plan)], cli_env(dbs))
        wait_for(lambda: waiting_on_items(dbs.green_dsn), what="the migration waiting for its lock")
        # while it waits, a reader queued behind it gets through within lock_timeout: nothing queues forever
        with psycopg.connect(dbs.green_dsn, autocommit=True) as reader:
            reader.execute("SET statement_timeout = '10s'")
            assert reader.execute("SELECT count(*) FROM items").fetchone() == (2000,)
        out, err = proc.communicate(timeout=60)
        elapsed = time.monotonic() - started
        assert proc.returncode == 1, out + err
        blocker.rollback()
    assert "lock not available after 3 attempt(s) (lock_timeout 0.2s)" in err
    assert "migrate:migrate:001:0" in err
    # three waits of 200ms and two backoffs: it gave up, it did not hang (generous bound for a slow machine)
    assert elapsed < 30
    failed = query(dbs.blue_dsn, "SELECT action_id, detail->>'error' FROM bluegreen.step_events"
                                 " WHERE status = 'failed' AND action_id IS NOT NULL")
    assert [a for a, _ in failed] == ["migrate:migrate:001:0"]
    # nothing half-done: no helper check constraint, no version, column still nullable
    assert query(dbs.green_dsn, "SELECT conname FROM pg_constraint WHERE conrelid = 'items'::regclass"
                                " AND contype = 'c'") == []
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM bluegreen.schema_versions") == 0
    assert scalar(dbs.green_dsn, "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'items'::regclass"
                                 " AND attname = 'v'") is False

    # the blocker is gone: the same plan resumes and finishes
    again = bluegreen(["run", str(plan)], cli_env(dbs))
    assert again.returncode == 0, again.stderr
    assert scalar(dbs.green_dsn, "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'items'::regclass"
                                 " AND attname = 'v'") is True


def test_statement_succeeds_on_a_retry_once_the_lock_is_free(dbs: Databases, tmp_path: Path) -> None:
    setup_table(dbs.green_dsn)
    plan = plan_with(tmp_path, "retried", "ALTER TABLE items ADD CONSTRAINT items_v_positive CHECK (v > 0);\n",
                     "{lock_timeout: 200ms, lock_retries: 8, retry_backoff: 100ms}")
    blocker = psycopg.connect(dbs.green_dsn)
    try:
        blocker.execute("SELECT count(*) FROM items")
        proc = spawn(["run", str(plan), "--json"], cli_env(dbs))
        wait_for(lambda: waiting_attempt(dbs.green_dsn) is not None, what="a first attempt waiting")
        first = waiting_attempt(dbs.green_dsn)
        wait_for(lambda: waiting_attempt(dbs.green_dsn) not in (None, first), what="a retry waiting")
        blocker.rollback()
        out, err = proc.communicate(timeout=60)
    finally:
        blocker.close()
    assert proc.returncode == 0, err
    attempts = scalar(dbs.blue_dsn, "SELECT (detail->>'attempts')::int FROM bluegreen.step_events"
                                    " WHERE action_id = 'migrate:migrate:001:0' AND status = 'done'")
    assert attempts >= 2
    assert scalar(dbs.green_dsn, "SELECT convalidated FROM pg_constraint WHERE conname = 'items_v_positive'")
    assert json.loads(out)["status"] == "done"


def test_interrupted_concurrent_build_leaves_an_invalid_index_that_is_rebuilt(dbs: Databases, tmp_path: Path) -> None:
    setup_table(dbs.green_dsn)
    plan = plan_with(tmp_path, "rebuilt", "CREATE UNIQUE INDEX items_code_key ON items (code);\n",
                     "{lock_timeout: 300ms, lock_retries: 0}")
    with psycopg.connect(dbs.green_dsn) as writer:
        # an open write transaction: CREATE INDEX CONCURRENTLY must wait for it, after creating the index
        writer.execute("UPDATE items SET v = v WHERE id = 1")
        result = bluegreen(["run", str(plan)], cli_env(dbs))
        assert result.returncode == 1
        assert "create_index_concurrently:migrate:001:0" in result.stderr
        assert scalar(dbs.green_dsn, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'items_code_key'::regclass") \
            is False
        writer.rollback()
    result = bluegreen(["run", str(plan), "--json"], cli_env(dbs))
    assert result.returncode == 0, result.stderr
    assert "index items_code_key is invalid (an interrupted concurrent build)" in result.stderr
    assert scalar(dbs.green_dsn, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'items_code_key'::regclass")
    done = [r[0] for r in query(dbs.blue_dsn, "SELECT action_id FROM bluegreen.step_events WHERE status = 'done'"
                                              " AND action_id IS NOT NULL ORDER BY event_id")]
    assert done[-3:] == ["drop_invalid_index:migrate:items_code_key:1", "create_index_concurrently:migrate:001:0",
                         "record_version:migrate:001"]
    checks = {c["name"]: c["ok"] for c in json.loads(result.stdout)["steps"][0]["checks"]}
    assert checks == {"every migration applied": True, "no invalid index": True}
