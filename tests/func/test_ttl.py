"""extend_ttl and restore_ttl against real clusters: exact values, undo, restore on green, crash, lock bound."""

from __future__ import annotations

import json
import os
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg

from orchestrator.localenv import Databases

from .helpers import bluegreen, cli_env, query, scalar, spawn, wait_for, write_plan

TABLE = """
CREATE TABLE tokens (id bigint PRIMARY KEY, active boolean NOT NULL, expires_at timestamptz, note text);
INSERT INTO tokens
SELECT g, g % 5 <> 0,
       CASE WHEN g % 10 = 0 THEN now() - interval '1 hour'
            WHEN g % 97 = 0 THEN NULL
            ELSE now() + (10 + g % 290) * interval '1 minute' END,
       'n'
FROM generate_series(1, {rows}) g;
"""
SIX_HOURS = timedelta(hours=6)


def _create(dsn: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(TABLE.format(rows=rows).encode())


def _values(dsn: str) -> dict[int, Any]:
    return dict(query(dsn, "SELECT id, expires_at FROM tokens"))  # type: ignore[arg-type]


def _eligible(dsn: str) -> set[int]:
    return {r[0] for r in query(dsn, "SELECT id FROM tokens WHERE active AND expires_at > now()")}


def _extend_step(backup: str = "tok", batch: int = 250, extra: str = "") -> str:
    return ("  - {id: extend, kind: extend_ttl, on: blue, table: tokens, column: expires_at, by: 6h, where: active,"
            f" window: 3h, batch_size: {batch}, backup: {backup}{extra}}}\n")


def _checks(report: Path, step: int = 0) -> list[dict[str, Any]]:
    return list(json.loads(report.read_text())["steps"][step]["checks"])


def test_extend_exactly_once_then_rollback_restores_only_untouched_rows(dbs: Databases, tmp_path: Path) -> None:
    _create(dbs.blue_dsn, 3000)
    before = _values(dbs.blue_dsn)
    eligible = _eligible(dbs.blue_dsn)
    plan = write_plan(tmp_path / "plan.yaml", "ttl-basic", _extend_step())
    report = tmp_path / "report.json"
    result = bluegreen(["run", str(plan), "--report", str(report)], cli_env(dbs))
    assert result.returncode == 0, result.stdout + result.stderr

    after = _values(dbs.blue_dsn)
    for key, old in before.items():
        assert after[key] == (old + SIX_HOURS if key in eligible else old), key  # never expired, never inactive
    assert scalar(dbs.blue_dsn, "SELECT count(*) FROM bluegreen.ttl_backup WHERE backup = 'tok'") == len(eligible)

    window_end = scalar(dbs.blue_dsn, "SELECT window_end FROM bluegreen.ttl_backups WHERE backup = 'tok'")
    avoided = sum(1 for key in eligible if before[key] < window_end)
    [check] = _checks(report)
    assert check["ok"]
    assert check["detail"].startswith(f"{len(eligible):,} rows of public.tokens.expires_at extended by 6h"
                                      f" (backup tok); {avoided:,} of them would have expired within the 3h"
                                      " window: refreshes avoided")
    assert 0 < avoided < len(eligible)
    result_state = scalar(dbs.blue_dsn, "SELECT value FROM bluegreen.run_state WHERE key = 'extend.result'")
    assert result_state["rows_extended"] == len(eligible) and result_state["refreshes_avoided"] == avoided
    assert result_state["batches"] >= len(eligible) // 250

    # the application moves on: it refreshes some tokens and deletes others
    ordered = sorted(eligible)
    refreshed, deleted = ordered[:7], ordered[7:10]
    with psycopg.connect(dbs.blue_dsn, autocommit=True) as conn:
        conn.execute("UPDATE tokens SET expires_at = now() + interval '1 day' WHERE id = ANY(%s)", (refreshed,))
        conn.execute("DELETE FROM tokens WHERE id = ANY(%s)", (deleted,))
        conn.execute("UPDATE tokens SET note = 'touched' WHERE id = ANY(%s)", (ordered[10:20],))  # expiry unchanged
    kept = _values(dbs.blue_dsn)

    undo = bluegreen(["rollback", str(plan)], cli_env(dbs))
    assert undo.returncode == 0, undo.stdout + undo.stderr
    final = _values(dbs.blue_dsn)
    assert set(final) == set(before) - set(deleted)
    for key in final:
        assert final[key] == (kept[key] if key in refreshed else before[key]), key
    statuses = dict(query(dbs.blue_dsn, "SELECT status, count(*) FROM bluegreen.ttl_backup GROUP BY status"))
    assert statuses == {"restored": len(eligible) - 10, "kept": 7, "gone": 3}
    # journaled batches: a second rollback finds nothing left to do
    assert bluegreen(["rollback", str(plan)], cli_env(dbs)).returncode == 2


def test_restore_ttl_on_green_from_blues_backup(dbs: Databases, tmp_path: Path) -> None:
    _create(dbs.blue_dsn, 1200)
    before = _values(dbs.blue_dsn)
    eligible = _eligible(dbs.blue_dsn)
    extend = write_plan(tmp_path / "extend.yaml", "ttl-extend", _extend_step("hydra", 100))
    assert bluegreen(["run", str(extend)], cli_env(dbs)).returncode == 0
    # the snapshot: green gets blue's rows, extended
    with psycopg.connect(dbs.green_dsn, autocommit=True) as green, \
            psycopg.connect(dbs.blue_dsn, autocommit=True) as blue:
        green.execute("CREATE TABLE tokens (id bigint PRIMARY KEY, active boolean NOT NULL, expires_at timestamptz,"
                      " note text)")
        with blue.cursor().copy("COPY tokens TO STDOUT") as out, green.cursor().copy("COPY tokens FROM STDIN") as inp:
            for chunk in out:
                inp.write(chunk)
        green.execute("UPDATE tokens SET expires_at = expires_at + interval '1 minute' WHERE id IN (1, 2, 3)")
    blue_extended = _values(dbs.blue_dsn)
    green_touched = _values(dbs.green_dsn)

    restore = write_plan(tmp_path / "restore.yaml", "ttl-restore",
                         "  - {id: restore, kind: restore_ttl, backup: hydra, backup_on: blue, on: green,"
                         " batch_size: 100}\n")
    report = tmp_path / "report.json"
    result = bluegreen(["run", str(restore), "--report", str(report)], cli_env(dbs))
    assert result.returncode == 0, result.stdout + result.stderr
    green = _values(dbs.green_dsn)
    touched = {1, 2, 3} & eligible
    for key, old in before.items():
        assert green[key] == (green_touched[key] if key in touched else old), key
    assert _values(dbs.blue_dsn) == blue_extended  # blue is not touched
    [check] = _checks(report)
    assert check["ok"] and check["detail"] == (f"backup hydra on green: {len(eligible) - len(touched):,} restored,"
                                               f" {len(touched)} kept (changed since), 0 missing there")


def test_crash_mid_extension_resumes_without_extending_twice(dbs: Databases, tmp_path: Path) -> None:
    _create(dbs.blue_dsn, 40000)
    before = _values(dbs.blue_dsn)
    eligible = _eligible(dbs.blue_dsn)
    plan = write_plan(tmp_path / "plan.yaml", "ttl-crash", _extend_step("crash", 400, ", max_rate: 8000"))
    env = cli_env(dbs)
    proc = spawn(["run", str(plan)], env)
    try:
        wait_for(lambda: _backed_up(dbs.blue_dsn) >= 4000, timeout=60, what="a few batches")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = _backed_up(dbs.blue_dsn)
    assert 4000 <= partial < len(eligible)
    assert scalar(dbs.blue_dsn, "SELECT status FROM bluegreen.runs") == "running"

    again = bluegreen(["run", str(plan)], env, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    after = _values(dbs.blue_dsn)
    twice = [k for k in eligible if after[k] != before[k] + SIX_HOURS]
    assert twice == []
    assert all(after[k] == before[k] for k in before if k not in eligible)
    assert _backed_up(dbs.blue_dsn) == len(eligible)


def _backed_up(dsn: str) -> int:
    try:
        return int(scalar(dsn, "SELECT count(*) FROM bluegreen.ttl_backup"))
    except psycopg.errors.UndefinedTable:
        return 0


def test_a_held_table_lock_makes_batches_give_up_then_resume(dbs: Databases, tmp_path: Path) -> None:
    _create(dbs.blue_dsn, 500)
    before = _values(dbs.blue_dsn)
    eligible = _eligible(dbs.blue_dsn)
    plan = write_plan(tmp_path / "plan.yaml", "ttl-lock", _extend_step("lock", 100),
                      "{lock_timeout: 100ms, lock_retries: 2, retry_backoff: 50ms, on_failure: stop}")
    with psycopg.connect(dbs.blue_dsn) as holder:
        holder.execute("LOCK TABLE tokens IN SHARE MODE")  # blocks writers, as a CREATE INDEX would
        blocked = bluegreen(["run", str(plan)], cli_env(dbs), timeout=60)
        assert blocked.returncode == 1
        assert "lock timeout" in blocked.stderr and "after 3 attempt(s) (lock_timeout 100ms)" in blocked.stderr
        assert _values(dbs.blue_dsn) == before
        holder.rollback()
    resumed = bluegreen(["run", str(plan)], cli_env(dbs))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = _values(dbs.blue_dsn)
    assert all(after[k] == before[k] + SIX_HOURS for k in eligible)


def test_refuses_what_it_cannot_extend(dbs: Databases, tmp_path: Path) -> None:
    with psycopg.connect(dbs.blue_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE nokey (expires_at timestamptz); CREATE TABLE wrongtype (id int PRIMARY KEY,"
                     " expires_at bigint)")
    for table, message in (("nokey", "has no primary key"), ("wrongtype", "is bigint: extend_ttl extends"),
                           ("missing", "table missing not found")):
        plan = write_plan(tmp_path / f"{table}.yaml", f"ttl-{table}",
                          f"  - {{id: extend, kind: extend_ttl, table: {table}, column: expires_at, by: 1h}}\n")
        result = bluegreen(["run", str(plan)], cli_env(dbs))
        assert result.returncode == 1 and message in result.stderr, result.stderr
    bad = write_plan(tmp_path / "bad.yaml", "ttl-bad",
                     "  - {id: extend, kind: extend_ttl, table: 't; DROP', column: expires_at, by: 1h,"
                     " where: 'active; DROP TABLE tokens'}\n")
    result = bluegreen(["run", str(bad)], cli_env(dbs))
    assert result.returncode == 2
    assert "steps[0].table" in result.stderr and "steps[0].where" in result.stderr
    orphan = write_plan(tmp_path / "orphan.yaml", "ttl-orphan", "  - {id: restore, kind: restore_ttl, extend: nope}\n")
    result = bluegreen(["run", str(orphan)], cli_env(dbs))
    assert result.returncode == 2 and "extend: no extend_ttl step 'nope' in this plan" in result.stderr
    assert scalar(dbs.blue_dsn, "SELECT count(*) FROM bluegreen.runs WHERE plan_name = 'ttl-orphan'") == 0


def test_ttl_sql_comments_hold_no_placeholders() -> None:
    """psycopg.sql fills braces anywhere in a block, comments included: they must stay out of comments."""
    from orchestrator.sqlfiles import read_sql

    for number, line in enumerate(read_sql("ttl.sql").splitlines(), 1):
        if line.lstrip().startswith("--"):
            assert "{" not in line and "}" not in line, f"sql/ttl.sql:{number}"


def test_restore_waits_for_a_concurrent_writer_and_restores_its_row(dbs: Databases, tmp_path: Path) -> None:
    _create(dbs.blue_dsn, 300)
    before = _values(dbs.blue_dsn)
    eligible = sorted(_eligible(dbs.blue_dsn))
    assert bluegreen(["run", str(write_plan(tmp_path / "a.yaml", "ttl-a", _extend_step("conc", 100)))],
                     cli_env(dbs)).returncode == 0
    restore = write_plan(tmp_path / "b.yaml", "ttl-b",
                         "  - {id: restore, kind: restore_ttl, backup: conc, backup_on: blue, batch_size: 100}\n",
                         "{lock_timeout: 30s}")
    row = eligible[len(eligible) // 2]
    with psycopg.connect(dbs.blue_dsn) as writer:
        # the application updates another column of a token and holds its row lock a while
        writer.execute("UPDATE tokens SET note = 'concurrent' WHERE id = %s", (row,))
        proc = spawn(["run", str(restore)], cli_env(dbs))
        try:
            wait_for(lambda: scalar(dbs.blue_dsn, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type ="
                                                  " 'Lock' AND datname = current_database()") > 0,
                     timeout=60, what="the restore to wait for the row lock")
            writer.commit()  # a new row version, committed while the restore waits for it
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, out + err
    assert _values(dbs.blue_dsn) == before  # every row back, the concurrently updated one included
    assert query(dbs.blue_dsn, "SELECT note FROM tokens WHERE id = %s", (row,)) == [("concurrent",)]
    assert dict(query(dbs.blue_dsn, "SELECT status, count(*) FROM bluegreen.ttl_backup GROUP BY status")) \
        == {"restored": len(eligible)}
    # in one round: the batch locked the row first, then restored its latest version
    assert scalar(dbs.blue_dsn, "SELECT count(*) FROM bluegreen.step_events"
                                " WHERE action_id LIKE 'restore_ttl:restore:r%'") == 0
