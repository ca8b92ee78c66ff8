"""Crash safety and exclusion with real processes: SIGKILL mid-run, resume, two runs at once."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psycopg

from orchestrator.localenv import Databases, twin_databases

from .helpers import bluegreen, cli_env, query, scalar, spawn, wait_for, write_plan

GATE = 4242  # an advisory lock the test can hold to stop a run inside step s3


def _steps(count: int, sleep: float) -> str:
    """``count`` steps, each a non-idempotent insert (a second apply would show as a duplicate row).

    Step s3 also takes the advisory lock ``GATE``, so a test holding it parks the run inside s3.
    """
    lines = ['  - {id: setup, kind: sql, on: green, sql: "CREATE TABLE applied (n int, at timestamptz DEFAULT now());'
             ' CREATE TABLE data (k int PRIMARY KEY, v int)"}\n']
    for n in range(1, count + 1):
        lines.append(
            f'  - {{id: s{n}, kind: sql, on: green, sql: "INSERT INTO applied (n) VALUES ({n});'
            f' INSERT INTO data SELECT g, g * {n} FROM generate_series({n * 100}, {n * 100 + 99}) g'
            f' ON CONFLICT (k) DO UPDATE SET v = data.v + 1; SELECT pg_sleep({sleep})'
            + (f'; SELECT pg_advisory_xact_lock({GATE})' if n == 3 else "") + '"}\n')
    lines.append('  - {id: blue-side, kind: sql, on: blue, sql: "CREATE TABLE IF NOT EXISTS seen (x int);'
                 ' INSERT INTO seen VALUES (1)"}\n')
    return "".join(lines)


def _waiting_on_gate(dsn: str) -> bool:
    return bool(scalar(dsn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s"
                            " AND NOT granted", (GATE,)))


def _state(dsn_green: str, dsn_blue: str) -> tuple[list[tuple[object, ...]], ...]:
    return (query(dsn_green, "SELECT n, count(*) FROM applied GROUP BY n ORDER BY n"),
            query(dsn_green, "SELECT k, v FROM data ORDER BY k"),
            query(dsn_blue, "SELECT x FROM seen"))


def _uninterrupted_state(dbs: Databases, plan: Path) -> tuple[list[tuple[object, ...]], ...]:
    with twin_databases(dbs.blue, dbs.green) as other:
        result = bluegreen(["run", str(plan)], cli_env(other))
        assert result.returncode == 0, result.stderr
        return _state(other.green_dsn, other.blue_dsn)


def test_sigkill_mid_action_resumes_to_the_same_state(dbs: Databases, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.yaml", "killed", _steps(6, 0.05), "{lock_timeout: 1m}")
    with psycopg.connect(dbs.green_dsn, autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
        proc = spawn(["run", str(plan)], cli_env(dbs))
        try:
            wait_for(lambda: _waiting_on_gate(dbs.green_dsn), what="action s3 to wait on the gate")
            os.kill(proc.pid, signal.SIGKILL)  # inside s3's open transaction: it never commits
        finally:
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert scalar(dbs.blue_dsn, "SELECT status FROM bluegreen.runs") == "running"
    assert query(dbs.green_dsn, "SELECT n FROM applied ORDER BY n") == [(1,), (2,)]

    resumed = bluegreen(["run", str(plan)], cli_env(dbs))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stderr
    assert "s1 skip completed in an earlier attempt" in resumed.stderr
    assert "s2 skip completed in an earlier attempt" in resumed.stderr

    state = _state(dbs.green_dsn, dbs.blue_dsn)
    assert state[0] == [(n, 1) for n in range(1, 7)]  # every action applied exactly once
    assert state == _uninterrupted_state(dbs, plan)


def test_sigkill_between_commit_and_journal_never_applies_twice(dbs: Databases, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.yaml", "killed-after-commit", _steps(4, 0))
    crashed = bluegreen(["run", str(plan)], cli_env(dbs, BLUEGREEN_FAULT="after:sql:s2:0"))
    assert crashed.returncode == -signal.SIGKILL
    # s2 committed on green, but the journal never heard of its end
    assert query(dbs.green_dsn, "SELECT n FROM applied ORDER BY n") == [(1,), (2,)]
    assert scalar(dbs.blue_dsn, "SELECT count(*) FROM bluegreen.step_events WHERE action_id = 'sql:s2:0'"
                                " AND status = 'done'") == 0

    resumed = bluegreen(["run", str(plan)], cli_env(dbs))
    assert resumed.returncode == 0, resumed.stderr
    assert "committed before the interruption" in resumed.stderr
    state = _state(dbs.green_dsn, dbs.blue_dsn)
    assert state[0] == [(n, 1) for n in range(1, 5)]
    assert state == _uninterrupted_state(dbs, plan)


def test_sigkill_before_an_action_on_blue_resumes(dbs: Databases, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.yaml", "killed-before", _steps(2, 0))
    crashed = bluegreen(["run", str(plan)], cli_env(dbs, BLUEGREEN_FAULT="before:sql:blue-side:0"))
    assert crashed.returncode == -signal.SIGKILL
    assert scalar(dbs.blue_dsn, "SELECT to_regclass('seen')") is None
    assert bluegreen(["run", str(plan)], cli_env(dbs)).returncode == 0
    assert _state(dbs.green_dsn, dbs.blue_dsn) == _uninterrupted_state(dbs, plan)


def test_two_runs_of_one_plan_at_once_one_is_refused(dbs: Databases, tmp_path: Path) -> None:
    steps = (f'  - {{id: slow, kind: sql, on: green, sql: "SELECT pg_advisory_xact_lock({GATE})"}}\n'
             '  - {id: after, kind: sql, on: green, sql: "CREATE TABLE finished (x int)"}\n')
    plan = write_plan(tmp_path / "plan.yaml", "exclusive", steps, "{lock_timeout: 1m}")
    with psycopg.connect(dbs.green_dsn, autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
        first = spawn(["run", str(plan)], cli_env(dbs))
        try:
            wait_for(lambda: _waiting_on_gate(dbs.green_dsn), what="the first run to be inside its step")
            second = bluegreen(["run", str(plan)], cli_env(dbs))
            assert second.returncode == 1
            assert "is being run by another bluegreen process" in second.stderr
            assert "held by server pid" in second.stderr
            gate.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
            _, err = first.communicate(timeout=60)
        finally:
            if first.poll() is None:
                first.kill()
    assert first.returncode == 0, err
    assert scalar(dbs.green_dsn, "SELECT to_regclass('finished') IS NOT NULL")
    assert query(dbs.blue_dsn, "SELECT status FROM bluegreen.runs") == [("done",)]


def test_database_refuses_a_second_unfinished_run(dbs: Databases, tmp_path: Path) -> None:
    steps = '  - {id: fails, kind: sql, on: green, sql: "SELECT * FROM nowhere"}\n'
    plan = write_plan(tmp_path / "plan.yaml", "constrained", steps)
    assert bluegreen(["run", str(plan)], cli_env(dbs)).returncode == 1
    try:
        query(dbs.blue_dsn, "INSERT INTO bluegreen.runs (plan_name, plan_sha256, status)"
                            " VALUES ('constrained', 'x', 'running')")
    except psycopg.errors.UniqueViolation as exc:
        assert "runs_one_unfinished_per_plan" in str(exc)
    else:
        raise AssertionError("a second unfinished run of the plan was accepted")
