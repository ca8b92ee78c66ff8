"""The capture step on a real blue (PG 15): what the trigger records, its filter, its lock bound, its undo."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psycopg

from orchestrator.localenv import Databases

from .helpers import bluegreen, cli_env, query, scalar, write_plan

TABLE = """
CREATE TABLE tokens (signature text PRIMARY KEY, subject text NOT NULL, active boolean NOT NULL DEFAULT true,
                     expires_at timestamptz NOT NULL DEFAULT now() + interval '1 hour', tags text[]);
INSERT INTO tokens (signature, subject) SELECT 's' || g, 'user' || g % 7 FROM generate_series(1, 50) g;
"""


def _setup(dbs: Databases) -> None:
    with psycopg.connect(dbs.blue_dsn, autocommit=True) as conn:
        conn.execute(TABLE.encode())


def test_capture_records_each_event_with_its_transaction(dbs: Databases, tmp_path: Path) -> None:
    _setup(dbs)
    plan = write_plan(tmp_path / "plan.yaml", "cap",
                      "  - {id: cap-tokens, kind: capture, method: trigger, table: tokens}\n")
    result = bluegreen(["run", str(plan)], cli_env(dbs))
    assert result.returncode == 0, result.stderr
    with psycopg.connect(dbs.blue_dsn) as conn:
        xid = conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0]  # type: ignore[index]
        conn.execute("INSERT INTO tokens (signature, subject, tags) VALUES ('new', 'u', ARRAY['a', 'b'])")
        conn.execute("UPDATE tokens SET active = false WHERE signature = 's1'")
        conn.execute("DELETE FROM tokens WHERE signature = 's2'")
        conn.commit()
    with psycopg.connect(dbs.blue_dsn) as conn:  # a rolled-back write leaves no event
        conn.execute("UPDATE tokens SET subject = 'x' WHERE signature = 's3'")
        conn.rollback()
    rows = query(dbs.blue_dsn, "SELECT capture, op, xid::text, old, new FROM bluegreen.capture_events ORDER BY seq")
    assert [(r[0], r[1], r[2]) for r in rows] == [("cap-tokens", "I", xid), ("cap-tokens", "U", xid),
                                                    ("cap-tokens", "D", xid)]
    assert rows[0][3] is None and rows[0][4]["tags"] == ["a", "b"] and rows[0][4]["signature"] == "new"
    assert rows[1][3]["active"] is True and rows[1][4]["active"] is False
    assert rows[2][3]["signature"] == "s2" and rows[2][4] is None
    assert query(dbs.blue_dsn, "SELECT relation, events FROM bluegreen.captures") == [
        ("public.tokens", ["insert", "update", "delete"])]
    status = json.loads(bluegreen(["status", str(plan), "--json"], cli_env(dbs)).stdout)
    assert status["steps"][0]["verify"] == "done"


def test_when_condition_keeps_only_matching_updates(dbs: Databases, tmp_path: Path) -> None:
    _setup(dbs)
    steps = ('  - {id: revocations, kind: capture, method: trigger, table: public.tokens, events: [update],'
             ' when: "OLD.active AND NOT NEW.active"}\n')
    plan = write_plan(tmp_path / "plan.yaml", "cap-when", steps)
    assert bluegreen(["run", str(plan)], cli_env(dbs)).returncode == 0
    query(dbs.blue_dsn, "UPDATE tokens SET active = false WHERE signature IN ('s1', 's2')")
    query(dbs.blue_dsn, "UPDATE tokens SET subject = 'other' WHERE signature = 's3'")
    query(dbs.blue_dsn, "UPDATE tokens SET active = false WHERE signature = 's1'")  # already inactive
    query(dbs.blue_dsn, "INSERT INTO tokens (signature, subject, active) VALUES ('n', 'u', false)")
    query(dbs.blue_dsn, "DELETE FROM tokens WHERE signature = 's4'")
    events = query(dbs.blue_dsn, "SELECT op, old->>'signature' FROM bluegreen.capture_events ORDER BY seq")
    assert events == [("U", "s1"), ("U", "s2")]
    trigger = scalar(dbs.blue_dsn, "SELECT pg_get_triggerdef(oid) FROM pg_trigger"
                                   " WHERE tgname = 'bluegreen_capture_revocations'")
    assert "AFTER UPDATE ON public.tokens" in trigger and "WHEN ((old.active AND (NOT new.active)))" in trigger


def test_an_application_role_without_rights_on_bluegreen_is_captured(dbs: Databases, tmp_path: Path) -> None:
    _setup(dbs)
    role = f"app_{os.urandom(3).hex()}"
    query(dbs.blue_dsn, f"CREATE ROLE {role} LOGIN PASSWORD 'app-secret-pw'; GRANT ALL ON tokens TO {role}")
    try:
        plan = write_plan(tmp_path / "plan.yaml", "cap-role",
                          "  - {id: cap, kind: capture, method: trigger, table: tokens}\n")
        assert bluegreen(["run", str(plan)], cli_env(dbs)).returncode == 0
        dsn = dbs.blue_dsn.replace(f"postgres:{dbs.blue.password}@", f"{role}:app-secret-pw@")
        with psycopg.connect(dsn, autocommit=True) as app:
            app.execute("UPDATE tokens SET active = false WHERE signature = 's9'")
            try:
                app.execute("SELECT count(*) FROM bluegreen.capture_events")
                raise AssertionError("the application role can read bluegreen.capture_events")
            except psycopg.errors.InsufficientPrivilege:
                pass
        assert scalar(dbs.blue_dsn, "SELECT count(*) FROM bluegreen.capture_events") == 1
    finally:
        query(dbs.blue_dsn, f"DROP OWNED BY {role}; DROP ROLE {role}")


def test_installing_waits_for_writers_at_most_lock_timeout(dbs: Databases, tmp_path: Path) -> None:
    _setup(dbs)
    steps = "  - {id: cap, kind: capture, method: trigger, table: tokens}\n"
    plan = write_plan(tmp_path / "plan.yaml", "cap-lock", steps,
                      "{lock_timeout: 100ms, lock_retries: 2, retry_backoff: 50ms}")
    with psycopg.connect(dbs.blue_dsn) as writer:
        writer.execute("UPDATE tokens SET subject = 'busy' WHERE signature = 's1'")  # open write transaction
        started = time.monotonic()
        result = bluegreen(["run", str(plan)], cli_env(dbs))
        elapsed = time.monotonic() - started
        # other writers were never blocked for longer than a lock_timeout: a write now goes through
        with psycopg.connect(dbs.blue_dsn, autocommit=True) as other:
            other.execute("SET lock_timeout = '1s'")
            other.execute("UPDATE tokens SET subject = 'free' WHERE signature = 's2'")
        writer.rollback()
    assert result.returncode == 1
    assert "lock not available after 3 attempt(s)" in result.stderr
    assert elapsed < 15
    assert scalar(dbs.blue_dsn, "SELECT count(*) FROM pg_trigger WHERE tgname = 'bluegreen_capture_cap'") == 0
    again = bluegreen(["run", str(plan)], cli_env(dbs))  # the writer is gone: the install goes through
    assert again.returncode == 0, again.stderr
    assert scalar(dbs.blue_dsn, "SELECT count(*) FROM pg_trigger WHERE tgname = 'bluegreen_capture_cap'") == 1


def test_rollback_removes_trigger_function_and_events(dbs: Databases, tmp_path: Path) -> None:
    _setup(dbs)
    query(dbs.blue_dsn, "CREATE TABLE other (id int PRIMARY KEY)")
    steps = ("  - {id: cap-a, kind: capture, method: trigger, table: tokens}\n"
             "  - {id: cap-b, kind: capture, method: trigger, table: other, events: [insert]}\n")
    plan = write_plan(tmp_path / "plan.yaml", "cap-undo", steps)
    assert bluegreen(["run", str(plan)], cli_env(dbs)).returncode == 0
    query(dbs.blue_dsn, "UPDATE tokens SET active = false WHERE signature = 's1'")
    query(dbs.blue_dsn, "INSERT INTO other VALUES (1)")
    assert scalar(dbs.blue_dsn, "SELECT count(*) FROM bluegreen.capture_events") == 2
    result = bluegreen(["rollback", str(plan)], cli_env(dbs))
    assert result.returncode == 0, result.stderr
    assert scalar(dbs.blue_dsn, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'bluegreen_capture_%'") == 0
    assert scalar(dbs.blue_dsn, "SELECT to_regproc('bluegreen.capture_event')") is None
    assert scalar(dbs.blue_dsn, "SELECT count(*) FROM bluegreen.capture_events") == 0
    assert scalar(dbs.blue_dsn, "SELECT count(*) FROM bluegreen.captures") == 0
    query(dbs.blue_dsn, "UPDATE tokens SET active = false WHERE signature = 's5'")  # the table works as before


def test_a_when_condition_that_reads_old_on_insert_is_refused(dbs: Databases, tmp_path: Path) -> None:
    steps = ('  - {id: cap, kind: capture, method: trigger, table: tokens, events: [insert, update],'
             ' when: "OLD.active"}\n')
    plan = write_plan(tmp_path / "plan.yaml", "cap-bad", steps)
    result = bluegreen(["run", str(plan)], cli_env(dbs))
    assert result.returncode == 2
    assert "plan.yaml:" in result.stderr and "reads OLD, which an insert does not have" in result.stderr
