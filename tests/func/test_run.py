"""Runs of real plans against blue (PG 15) and green (PG 18): outcomes, journal, report, failures."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg

from orchestrator.localenv import Databases

from .helpers import bluegreen, cli_env, journal_dump, journal_started, query, scalar, spawn, wait_for, write_plan

STEPS = """\
  - {id: make-table, kind: sql, on: green, sql: "CREATE TABLE items (id int PRIMARY KEY, v text)",
     rollback: {sql: "DROP TABLE IF EXISTS items"}}
  - {id: fill, kind: sql, on: green,
     sql: ["INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 1500) g",
           "UPDATE items SET v = 'x' WHERE id <= 10"]}
  - {id: index, kind: sql, on: green, transaction: false,
     sql: "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_v ON items (v); ANALYZE items"}
  - {id: mark-blue, kind: sql, on: blue, sql: "CREATE TABLE marker AS SELECT 1 AS done"}
  - {id: hello, kind: command, argv: [sh, -c, 'echo "hello from $BLUEGREEN_STEP_ID"']}
"""


def test_run_applies_every_step_journals_and_reports(dbs: Databases, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.yaml", "basic", STEPS)
    report_file = tmp_path / "report.json"
    result = bluegreen(["run", str(plan), "--report", str(report_file)], cli_env(dbs))
    assert result.returncode == 0, result.stdout + result.stderr

    assert scalar(dbs.green_dsn, "SELECT count(*) FROM items") == 1500
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM items WHERE v = 'x'") == 10
    assert scalar(dbs.green_dsn, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'items_v'::regclass")
    assert scalar(dbs.blue_dsn, "SELECT done FROM marker") == 1

    runs = query(dbs.blue_dsn, "SELECT run_id, status, finished_at IS NOT NULL FROM bluegreen.runs")
    assert [(r[1], r[2]) for r in runs] == [("done", True)]
    done = {r[0] for r in query(dbs.blue_dsn, "SELECT action_id FROM bluegreen.step_events"
                                              " WHERE status = 'done' AND action_id IS NOT NULL")}
    assert done == {"sql:make-table:0", "sql:fill:0", "sql:fill:1", "sql:index:0.0", "sql:index:0.1", "sql:mark-blue:0",
                    "command:hello"}
    output = query(dbs.blue_dsn, "SELECT detail->>'output' FROM bluegreen.step_events"
                                 " WHERE action_id = 'command:hello' AND status = 'done'")
    assert output == [("hello from hello\n",)]

    report = json.loads(report_file.read_text())
    assert report["status"] == "done"
    assert [s["id"] for s in report["steps"]] == ["make-table", "fill", "index", "mark-blue", "hello"]
    fill = report["steps"][1]
    assert fill["actions_run"] == 2  # a list of chunks: one transaction each
    assert fill["stats"]["green"]["tup_inserted"] >= 1500
    assert fill["stats"]["green"]["tup_updated"] >= 10
    assert fill["stats"]["green"]["xact_commit"] >= 1
    assert "inserted" in result.stdout and "fill" in result.stdout


def test_second_run_of_a_finished_plan_does_nothing(dbs: Databases, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.yaml", "once", STEPS)
    assert bluegreen(["run", str(plan)], cli_env(dbs)).returncode == 0
    again = bluegreen(["run", str(plan)], cli_env(dbs))
    assert again.returncode == 0, again.stderr
    assert "already completed by run" in again.stdout
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM items") == 1500
    assert scalar(dbs.blue_dsn, "SELECT count(*) FROM bluegreen.runs") == 1


def test_failed_step_rolls_back_completed_steps_in_reverse(dbs: Databases, tmp_path: Path) -> None:
    steps = STEPS + """\
  - {id: boom, kind: sql, on: green, sql: "INSERT INTO items VALUES (1, 'duplicate')"}
"""
    plan = write_plan(tmp_path / "plan.yaml", "rolls-back", steps, "{on_failure: rollback}")
    result = bluegreen(["run", str(plan)], cli_env(dbs))
    assert result.returncode == 1
    assert "step 'boom'" in result.stderr and "duplicate key" in result.stderr
    assert "rolled back" in result.stderr
    assert scalar(dbs.green_dsn, "SELECT to_regclass('items')") is None
    assert scalar(dbs.blue_dsn, "SELECT status FROM bluegreen.runs") == "rolled_back"
    order = [r[0] for r in query(dbs.blue_dsn, "SELECT step_id FROM bluegreen.step_events WHERE phase = 'rollback'"
                                               " AND status = 'done' AND action_id IS NULL ORDER BY event_id")]
    assert order == ["hello", "mark-blue", "index", "fill", "make-table"]


def test_failed_step_stops_and_the_next_run_resumes_there(dbs: Databases, tmp_path: Path) -> None:
    steps = """\
  - {id: one, kind: sql, on: green, sql: "CREATE TABLE log (step text)"}
  - {id: two, kind: sql, on: green, sql: "INSERT INTO log VALUES ('two')"}
  - {id: three, kind: sql, on: green, sql: "INSERT INTO needed VALUES ('three')"}
  - {id: four, kind: sql, on: green, sql: "INSERT INTO log VALUES ('four')"}
"""
    plan = write_plan(tmp_path / "plan.yaml", "resumes", steps)
    first = bluegreen(["run", str(plan)], cli_env(dbs))
    assert first.returncode == 1
    assert 'relation "needed" does not exist' in first.stderr
    assert "resume" in first.stderr
    assert scalar(dbs.blue_dsn, "SELECT status FROM bluegreen.runs") == "failed"

    query(dbs.green_dsn, "CREATE TABLE needed (step text)")
    second = bluegreen(["run", str(plan)], cli_env(dbs))
    assert second.returncode == 0, second.stderr
    assert "resumed" in second.stderr
    assert query(dbs.green_dsn, "SELECT step FROM log ORDER BY step") == [("four",), ("two",)]
    assert query(dbs.green_dsn, "SELECT step FROM needed") == [("three",)]
    assert query(dbs.blue_dsn, "SELECT status, attempt FROM bluegreen.runs") == [("done", 2)]


def test_changed_plan_is_refused_until_restart(dbs: Databases, tmp_path: Path) -> None:
    steps = """\
  - {id: one, kind: sql, on: green, sql: "CREATE TABLE t1 (x int)"}
  - {id: two, kind: sql, on: green, sql: "SELECT * FROM missing"}
"""
    plan = write_plan(tmp_path / "plan.yaml", "changes", steps)
    assert bluegreen(["run", str(plan)], cli_env(dbs)).returncode == 1
    write_plan(plan, "changes", steps.replace("missing", "t1"))
    refused = bluegreen(["run", str(plan)], cli_env(dbs))
    assert refused.returncode == 2
    assert "plan file changed since run" in refused.stderr and "--restart" in refused.stderr
    fixed = steps.replace("missing", "t1").replace("CREATE TABLE t1", "CREATE TABLE IF NOT EXISTS t1")
    write_plan(plan, "changes", fixed)
    restarted = bluegreen(["run", str(plan), "--restart"], cli_env(dbs))
    assert restarted.returncode == 0, restarted.stderr
    assert query(dbs.blue_dsn, "SELECT status FROM bluegreen.runs ORDER BY run_id") == [("abandoned",), ("done",)]


def test_rollback_command_undoes_a_finished_run(dbs: Databases, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.yaml", "undo", STEPS)
    assert bluegreen(["run", str(plan)], cli_env(dbs)).returncode == 0
    result = bluegreen(["rollback", str(plan), "--json"], cli_env(dbs))
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["status"] == "rolled_back"
    assert payload["rollback"] == ["make-table"]  # the only step with an undo that did something
    assert scalar(dbs.green_dsn, "SELECT to_regclass('items')") is None
    again = bluegreen(["rollback", str(plan)], cli_env(dbs))
    assert again.returncode == 2 and "no run to roll back" in again.stderr


def test_status_shows_the_journal(dbs: Databases, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.yaml", "status", STEPS)
    empty = bluegreen(["status", str(plan), "--json"], cli_env(dbs))
    assert json.loads(empty.stdout)["run"] is None
    assert bluegreen(["run", str(plan)], cli_env(dbs)).returncode == 0
    status = json.loads(bluegreen(["status", str(plan), "--json"], cli_env(dbs)).stdout)
    assert status["run"]["status"] == "done"
    assert [(s["id"], s["apply"], s["verify"], s["actions_done"]) for s in status["steps"]] == [
        ("make-table", "done", "done", 1), ("fill", "done", "done", 2), ("index", "done", "done", 2),
        ("mark-blue", "done", "done", 1), ("hello", "done", "done", 1)]


def test_lock_timeout_retries_then_fails_cleanly(dbs: Databases, tmp_path: Path) -> None:
    query(dbs.green_dsn, "CREATE TABLE hot (id int)")
    steps = '  - {id: alter, kind: sql, on: green, sql: "ALTER TABLE hot ADD COLUMN c int"}\n'
    plan = write_plan(tmp_path / "plan.yaml", "locked", steps,
                      "{lock_timeout: 100ms, lock_retries: 2, retry_backoff: 50ms}")
    with psycopg.connect(dbs.green_dsn) as holder:
        holder.execute("LOCK TABLE hot IN ACCESS SHARE MODE")
        started = time.monotonic()
        result = bluegreen(["run", str(plan)], cli_env(dbs))
        elapsed = time.monotonic() - started
        holder.rollback()
    assert result.returncode == 1
    assert "lock not available after 3 attempt(s)" in result.stderr
    assert "55P03" in result.stderr
    assert elapsed < 60  # bounded: it never queued behind the lock indefinitely
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'hot'::regclass"
                                 " AND attname = 'c'") == 0


def test_lock_retry_succeeds_once_the_lock_is_released(dbs: Databases, tmp_path: Path) -> None:
    query(dbs.green_dsn, "CREATE TABLE hot (id int)")
    steps = '  - {id: alter, kind: sql, on: green, sql: "ALTER TABLE hot ADD COLUMN c int"}\n'
    plan = write_plan(tmp_path / "plan.yaml", "retried", steps,
                      "{lock_timeout: 200ms, lock_retries: 20, retry_backoff: 100ms}")
    with psycopg.connect(dbs.green_dsn) as holder:
        holder.execute("LOCK TABLE hot IN ACCESS SHARE MODE")
        proc = spawn(["run", str(plan)], cli_env(dbs))
        wait_for(lambda: journal_started(dbs.blue_dsn, "sql:alter:0"), what="the ALTER to start")
        time.sleep(0.6)  # > lock_timeout: at least one attempt has timed out by now
        holder.rollback()
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    attempts = scalar(dbs.blue_dsn, "SELECT (detail->>'attempts')::int FROM bluegreen.step_events"
                                    " WHERE action_id = 'sql:alter:0' AND status = 'done'")
    assert attempts > 1
    assert "lock retries" in stderr


def test_command_failures_and_timeouts(dbs: Databases, tmp_path: Path) -> None:
    fails = write_plan(tmp_path / "fails.yaml", "cmd-fails",
                       "  - {id: bad, kind: command, argv: [sh, -c, 'echo why-it-failed; exit 3']}\n")
    result = bluegreen(["run", str(fails)], cli_env(dbs))
    assert result.returncode == 1
    assert "exited with 3" in result.stderr and "why-it-failed" in result.stderr

    slow = write_plan(tmp_path / "slow.yaml", "cmd-slow",
                      "  - {id: slow, kind: command, argv: [sleep, '30'], timeout: 500ms}\n")
    started = time.monotonic()
    result = bluegreen(["run", str(slow)], cli_env(dbs))
    assert result.returncode == 1
    assert "timed out after 0.5s" in result.stderr
    assert time.monotonic() - started < 20

    env = write_plan(tmp_path / "env.yaml", "cmd-env",
                     "  - {id: env, kind: command, argv: [sh, -c, 'test \"$GREETING\" = hi'],"
                     " env: {GREETING: hi}}\n")
    assert bluegreen(["run", str(env)], cli_env(dbs)).returncode == 0


def test_unreachable_cluster_is_exit_2_and_touches_nothing(dbs: Databases, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.yaml", "unreachable", STEPS)
    env = cli_env(dbs, GREEN_DSN=dbs.green_dsn.replace(f":{dbs.green.port}/", ":1/"))
    result = bluegreen(["run", str(plan)], env)
    assert result.returncode == 2
    assert "cannot connect to green" in result.stderr
    assert journal_dump(dbs.blue_dsn) == ""
    assert scalar(dbs.blue_dsn, "SELECT to_regnamespace('bluegreen')") is None


def test_dry_run_online_renders_and_writes_nothing(dbs: Databases, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.yaml", "dry", STEPS)
    result = bluegreen(["run", str(plan), "--dry-run", "--json"], cli_env(dbs))
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert [r["action"] for r in payload["rendered"]] == [
        "sql:make-table:0", "sql:fill:0", "sql:fill:1", "sql:index:0.0", "sql:index:0.1", "sql:mark-blue:0",
        "command:hello"]
    assert payload["rendered"][0]["sql"] == (
        "BEGIN;\nSET LOCAL lock_timeout = '2000ms';\nCREATE TABLE items (id int PRIMARY KEY, v text);\nCOMMIT;")
    assert payload["rendered"][3]["sql"] == (
        "SET lock_timeout = '2000ms';\nCREATE INDEX CONCURRENTLY IF NOT EXISTS items_v ON items (v);\n"
        "RESET lock_timeout;")
    assert scalar(dbs.green_dsn, "SELECT to_regclass('items')") is None
    assert scalar(dbs.blue_dsn, "SELECT to_regnamespace('bluegreen')") is None
