"""Capture -> snapshot -> replay against real servers under concurrent writes: exact, once, in commit order."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psycopg

from orchestrator.copy.names import QualifiedName
from orchestrator.localenv import Databases
from orchestrator.plan import load_plan
from orchestrator.replay import CaptureInfo, DrainDeadline, Replayer, compile_replay_sql, drain, lags

from .helpers import ROOT, bluegreen, cli_env, query, scalar, spawn, wait_for, write_plan
from .snapshot_support import Writer, table_rows

ITEMS = """
CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, note text NOT NULL DEFAULT '',
                    touched timestamptz NOT NULL DEFAULT clock_timestamp());
INSERT INTO items (id, v, note) SELECT g, g, 'seed' FROM generate_series(1, 300) g;
"""


def _steps(batch_size: int = 200) -> str:
    return ("  - {id: cap, kind: capture, method: trigger, table: items}\n"
            "  - {id: snap, kind: snapshot, jobs: 2}\n"
            f"  - {{id: catch-up, kind: replay, max_lag: 0, batch_size: {batch_size}, timeout: 2m}}\n")


GATE = 4343  # an advisory lock the test holds to park the replay once 50 events are applied

# A sql step between the snapshot and the replay: an ALWAYS trigger (it fires under the replay's
# session_replication_role = replica) that spins while the test holds GATE, once 50 events are in.
# It spins on pg_try_advisory_xact_lock_shared rather than waiting, so lock_timeout never ends it.
GATE_STEP = (
    "  - id: gate\n    kind: sql\n    on: green\n    sql: |\n"
    "      CREATE FUNCTION park() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN\n"
    "        IF (SELECT COALESCE(sum(applied), 0) FROM bluegreen.replay_progress) >= 50 THEN\n"
    f"          WHILE NOT pg_try_advisory_xact_lock_shared({GATE}) LOOP PERFORM pg_sleep(0.02); END LOOP;\n"
    "        END IF;\n"
    "        RETURN NULL;\n"
    "      END $f$;\n"
    "      CREATE TRIGGER park AFTER INSERT OR UPDATE OR DELETE ON items FOR EACH ROW EXECUTE FUNCTION park();\n"
    "      ALTER TABLE items ENABLE ALWAYS TRIGGER park;\n")


def _parked(dsn: str) -> bool:
    return bool(scalar(dsn, "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
                            " AND query NOT LIKE '%pg_stat_activity%'"))


def _step_done(dsn: str, step: str) -> bool:
    try:
        return bool(scalar(dsn, "SELECT EXISTS (SELECT FROM bluegreen.step_events WHERE step_id = %s"
                                " AND phase = 'verify' AND status = 'done')", (step,)))
    except psycopg.errors.UndefinedTable:
        return False


def _applied(dsn: str) -> int:
    try:
        return int(scalar(dsn, "SELECT COALESCE(sum(applied), 0) FROM bluegreen.replay_progress"))
    except psycopg.errors.UndefinedTable:
        return 0


def _events_after_snapshot(blue_dsn: str) -> int:
    """Captured events green did not get from the copy: exactly what the replay must apply."""
    return int(scalar(blue_dsn, "SELECT count(*) FROM bluegreen.capture_events e, bluegreen.run_state s"
                                " WHERE s.key = 'snapshot:snap' AND NOT pg_visible_in_snapshot("
                                "e.xid, (s.value->'tables'->>'public.items')::pg_snapshot)"))


# An ALWAYS trigger on green (it fires under the replay's session_replication_role = replica) that makes
# every applied row cost 50 ms: a drain whose batches take as long as the test wants.
SLOW_GREEN = """
CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN PERFORM pg_sleep(0.05); RETURN NULL; END $f$;
CREATE TRIGGER slow AFTER INSERT OR UPDATE OR DELETE ON items FOR EACH ROW EXECUTE FUNCTION slow();
ALTER TABLE items ENABLE ALWAYS TRIGGER slow;
"""


def _drain(plan: Path, dbs: Databases) -> None:
    """What the cutover does once blue is fenced: apply every remaining event; then no lag is left."""
    loaded = load_plan(plan, {"BLUE_DSN": dbs.blue_dsn, "GREEN_DSN": dbs.green_dsn})
    run_id = scalar(dbs.blue_dsn, "SELECT max(run_id) FROM bluegreen.runs")
    dsns = {"blue": dbs.blue_dsn, "green": dbs.green_dsn}
    drain(loaded, dsns, run_id, ["cap"])
    assert lags(loaded, dsns, run_id, ["cap"])["cap"].events == 0


def test_replay_under_concurrent_writes_makes_green_equal_blue(dbs: Databases, tmp_path: Path) -> None:
    query(dbs.blue_dsn, ITEMS)
    plan = write_plan(tmp_path / "plan.yaml", "exact", _steps())
    writer = Writer(dbs.blue_dsn)
    writer.start()
    try:
        wait_for(lambda: writer.commits > 50, what="writes before the capture")
        proc = spawn(["run", str(plan)], cli_env(dbs))
        wait_for(lambda: _step_done(dbs.blue_dsn, "snap"), timeout=120, what="the snapshot")
        at_snapshot = writer.commits
        wait_for(lambda: writer.commits > at_snapshot + 150, what="writes after the snapshot")
    finally:
        writer.stop()
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    _drain(plan, dbs)
    expected = _events_after_snapshot(dbs.blue_dsn)
    assert expected > 100  # the replay had real work, including events of transactions open at the snapshot
    assert table_rows(dbs.blue_dsn, "items") == table_rows(dbs.green_dsn, "items")
    assert _applied(dbs.green_dsn) == expected  # every event applied exactly once
    assert "replay cap onto green" in err


def test_replay_killed_halfway_resumes_without_applying_twice(dbs: Databases, tmp_path: Path) -> None:
    query(dbs.blue_dsn, ITEMS)
    steps = _steps(batch_size=25).split("\n")
    plan = write_plan(tmp_path / "plan.yaml", "exact-kill", "\n".join(steps[:2]) + "\n" + GATE_STEP + steps[2] + "\n")
    writer = Writer(dbs.blue_dsn, threads=4)
    gate = psycopg.connect(dbs.green_dsn, autocommit=True)
    gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
    writer.start()
    try:
        wait_for(lambda: writer.commits > 50, what="writes before the capture")
        proc = spawn(["run", str(plan)], cli_env(dbs))
        wait_for(lambda: _step_done(dbs.blue_dsn, "snap"), timeout=120, what="the snapshot")
        at_snapshot = writer.commits
        wait_for(lambda: writer.commits > at_snapshot + 600, timeout=60, what="writes after the snapshot")
        wait_for(lambda: proc.poll() is not None or (_applied(dbs.green_dsn) >= 50 and _parked(dbs.green_dsn)),
                 timeout=60, what="the replay to apply a few batches and park on the gate")
        if proc.poll() is not None:  # the run ended before it parked: say how
            raise AssertionError(f"the run ended (exit {proc.returncode}) before the replay parked: "
                                 + proc.communicate()[1][-3000:])
        os.kill(proc.pid, signal.SIGKILL)  # inside a replay batch: it never commits
        proc.communicate(timeout=30)
    finally:
        writer.stop()
        gate.close()  # releases GATE: the parked backend finishes its loop, then its transaction aborts
    assert proc.returncode == -signal.SIGKILL
    applied_before = _applied(dbs.green_dsn)
    assert 0 < applied_before < _events_after_snapshot(dbs.blue_dsn)  # killed halfway indeed

    resumed = bluegreen(["run", str(plan)], cli_env(dbs), timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert "snap skip completed in an earlier attempt" in resumed.stderr
    _drain(plan, dbs)
    assert table_rows(dbs.blue_dsn, "items") == table_rows(dbs.green_dsn, "items")
    assert _applied(dbs.green_dsn) == _events_after_snapshot(dbs.blue_dsn)


def test_drain_stops_at_its_deadline_and_cancels_the_running_batch(dbs: Databases, tmp_path: Path) -> None:
    """The cutover's drain under a pause budget: a batch still running at the deadline is cancelled on green
    and rolls back with its progress; what committed stays; the next drain applies the rest, once."""
    query(dbs.blue_dsn, ITEMS)
    plan = write_plan(tmp_path / "plan.yaml", "deadline", _steps())
    result = bluegreen(["run", str(plan)], cli_env(dbs), timeout=120)
    assert result.returncode == 0, result.stderr
    query(dbs.blue_dsn, "UPDATE items SET v = v + 1000 WHERE id <= 60")  # 60 events
    query(dbs.green_dsn, SLOW_GREEN)  # 50 ms per applied row
    loaded = load_plan(plan, {"BLUE_DSN": dbs.blue_dsn, "GREEN_DSN": dbs.green_dsn})
    run_id = scalar(dbs.blue_dsn, "SELECT max(run_id) FROM bluegreen.runs")
    dsns = {"blue": dbs.blue_dsn, "green": dbs.green_dsn}
    applied_before = _applied(dbs.green_dsn)

    def updated_on_green() -> int:
        return int(scalar(dbs.green_dsn, "SELECT count(*) FROM items WHERE v > 1000"))

    # batches of 30 rows take 1.5 s: the deadline falls inside the first one, which must be cancelled
    started = time.monotonic()
    try:
        drain(loaded, dsns, run_id, ["cap"], batch_size=30, deadline=time.monotonic() + 0.5)
    except DrainDeadline as exc:
        assert "cancelled after 0 event(s)" in str(exc)
    else:
        raise AssertionError("the drain outlived its deadline")
    assert time.monotonic() - started < 1.3  # not the 1.5 s the batch needed: it was cut short
    assert updated_on_green() == 0 and _applied(dbs.green_dsn) == applied_before  # rolled back, progress too

    # batches of 7 rows take 0.35 s: whole batches only, never a part of one
    try:
        drain(loaded, dsns, run_id, ["cap"], batch_size=7, deadline=time.monotonic() + 0.6)
    except DrainDeadline:
        pass
    else:
        raise AssertionError("the drain outlived its deadline")
    partial = updated_on_green()
    assert partial % 7 == 0 and partial < 60 and _applied(dbs.green_dsn) == applied_before + partial

    query(dbs.green_dsn, "DROP TRIGGER slow ON items")
    _drain(plan, dbs)
    assert table_rows(dbs.blue_dsn, "items") == table_rows(dbs.green_dsn, "items")
    assert _applied(dbs.green_dsn) == applied_before + 60  # each event once: the cancelled batches left nothing


def test_an_event_committed_late_with_a_low_seq_is_not_skipped(dbs: Databases, tmp_path: Path) -> None:
    """The trap: a high-water mark on seq would skip the long transaction's events."""
    query(dbs.blue_dsn, ITEMS)
    env = cli_env(dbs)
    assert bluegreen(["run", str(write_plan(tmp_path / "c.yaml", "trap-cap", "  - {id: cap, kind: capture,"
                                                                            " method: trigger, table: items}\n"))],
                     env).returncode == 0
    with psycopg.connect(dbs.blue_dsn) as long_tx:
        long_tx.execute("UPDATE items SET v = -1 WHERE id = 1")  # seq 1, stays open across the snapshot
        snap = bluegreen(["run", str(write_plan(tmp_path / "s.yaml", "trap-snap",
                                                "  - {id: snap, kind: snapshot}\n"))], env, timeout=120)
        assert snap.returncode == 0, snap.stderr
        assert scalar(dbs.green_dsn, "SELECT v FROM items WHERE id = 1") == 1
        query(dbs.blue_dsn, "UPDATE items SET v = -2 WHERE id = 2")  # seq 2, committed first
        base = scalar(dbs.blue_dsn, "SELECT value->'tables'->>'public.items' FROM bluegreen.run_state"
                                    " WHERE key = 'snapshot:snap'")
        capture = CaptureInfo("cap", QualifiedName("public", "items"), "blue", "green")
        with psycopg.connect(dbs.blue_dsn, autocommit=True) as source, \
                psycopg.connect(dbs.green_dsn, autocommit=True) as target:
            replayer = Replayer(capture, source, target, run_id=1, batch_size=10)
            replayer.setup(base)
            first = replayer.round()
            assert first.events == 1  # seq 2 only: seq 1's transaction is still running
            assert query(dbs.green_dsn, "SELECT id, v FROM items WHERE id <= 2 ORDER BY id") == [(1, 1), (2, -2)]
            assert replayer.lag().events == 0  # uncommitted events are not lag yet
            long_tx.execute("UPDATE items SET v = -3 WHERE id = 3")  # seq 3
            long_tx.commit()
            assert replayer.lag().events == 2
            second = replayer.round()
            assert second.events == 2
            assert replayer.round().events == 0
            assert replayer.progress().applied == 3
    assert table_rows(dbs.blue_dsn, "items") == table_rows(dbs.green_dsn, "items")


def test_batches_that_reorder_into_a_conflict_fall_back_to_one_by_one(dbs: Databases, tmp_path: Path) -> None:
    query(dbs.blue_dsn, "CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE NOT NULL, n int);"
                        " INSERT INTO users SELECT g, 'u' || g, 0 FROM generate_series(1, 5) g")
    env = cli_env(dbs)
    steps = ("  - {id: cap, kind: capture, method: trigger, table: users}\n  - {id: snap, kind: snapshot}\n")
    assert bluegreen(["run", str(write_plan(tmp_path / "p.yaml", "swap", steps))], env, timeout=120).returncode == 0
    # swap two emails through a temporary value, change a key, and delete/re-insert: the last event per key,
    # in the order of those last events, collides with a unique index that the sequential order never hits
    query(dbs.blue_dsn, "UPDATE users SET email = 'tmp' WHERE id = 1")
    query(dbs.blue_dsn, "UPDATE users SET email = 'u1' WHERE id = 2")
    query(dbs.blue_dsn, "UPDATE users SET email = 'u2' WHERE id = 1")
    query(dbs.blue_dsn, "UPDATE users SET id = 50, n = 1 WHERE id = 3")
    query(dbs.blue_dsn, "DELETE FROM users WHERE id = 4; INSERT INTO users VALUES (4, 'again', 9)")
    query(dbs.blue_dsn, "UPDATE users SET n = n + 1")
    base = scalar(dbs.blue_dsn, "SELECT value->>'snapshot' FROM bluegreen.run_state WHERE key = 'snapshot:snap'")
    capture = CaptureInfo("cap", QualifiedName("public", "users"), "blue", "green")
    with psycopg.connect(dbs.blue_dsn, autocommit=True) as source, \
            psycopg.connect(dbs.green_dsn, autocommit=True) as target:
        replayer = Replayer(capture, source, target, run_id=1, batch_size=100)
        replayer.setup(base)
        result = replayer.round()
    assert result.fallbacks == 1 and result.events == 11
    assert table_rows(dbs.blue_dsn, "users") == table_rows(dbs.green_dsn, "users")


def test_events_of_a_quarantined_row_are_quarantined_not_replayed(dbs: Databases, tmp_path: Path) -> None:
    query(dbs.blue_dsn, ITEMS)
    env = cli_env(dbs)
    steps = "  - {id: cap, kind: capture, method: trigger, table: items}\n  - {id: snap, kind: snapshot}\n"
    assert bluegreen(["run", str(write_plan(tmp_path / "p.yaml", "held", steps))], env, timeout=120).returncode == 0
    # a cleanup on green quarantined rows 5 and 6 (they broke a constraint a migration adds)
    with psycopg.connect(dbs.green_dsn, autocommit=True) as conn:
        conn.execute((ROOT / "sql" / "quarantine.sql").read_text().encode())
        conn.execute("SELECT bluegreen_quarantine.clean('items'::regclass, 'id IN (5, 6)', 'items_v_check',"
                     " 'quarantine', 1, 'cleanup')")
    query(dbs.blue_dsn, "UPDATE items SET v = 500 WHERE id IN (5, 7)")
    query(dbs.blue_dsn, "DELETE FROM items WHERE id = 6")
    base = scalar(dbs.blue_dsn, "SELECT value->>'snapshot' FROM bluegreen.run_state WHERE key = 'snapshot:snap'")
    capture = CaptureInfo("cap", QualifiedName("public", "items"), "blue", "green")
    with psycopg.connect(dbs.blue_dsn, autocommit=True) as source, \
            psycopg.connect(dbs.green_dsn, autocommit=True) as target:
        replayer = Replayer(capture, source, target, run_id=1, batch_size=100)
        replayer.setup(base)
        result = replayer.round()
    assert (result.events, result.quarantined) == (3, 2)
    assert query(dbs.green_dsn, "SELECT id, v FROM items WHERE id BETWEEN 5 AND 7 ORDER BY id") == [(7, 500)]
    held = query(dbs.green_dsn, "SELECT row_data->>'id', row_data->>'v', constraint_name"
                                " FROM bluegreen_quarantine.items ORDER BY quarantine_id")
    assert held == [("5", "5", "items_v_check"), ("6", "6", "items_v_check"), ("5", "500", "replay"),
                    ("6", "6", "replay")]


REPLAY_SQL = """-- a revocation replayed onto the migrated schema: flag the token, keep when
UPDATE tokens SET active = false, revoked_at = :_at::timestamptz WHERE signature = :old.signature;
INSERT INTO revocations (signature, op, seq) VALUES (:signature, :_op, :_seq::bigint);
"""


def test_replay_sql_file_with_named_parameters(dbs: Databases, tmp_path: Path) -> None:
    query(dbs.blue_dsn, "CREATE TABLE tokens (signature text PRIMARY KEY, active boolean NOT NULL, tags text[]);"
                        " INSERT INTO tokens SELECT 's' || g, true, ARRAY['t' || g] FROM generate_series(1, 20) g")
    (tmp_path / "revoke.sql").write_text(REPLAY_SQL)
    steps = ('  - {id: cap, kind: capture, method: trigger, table: tokens, events: [update],'
             ' when: "OLD.active AND NOT NEW.active",'
             ' replay: revoke.sql}\n'
             "  - {id: snap, kind: snapshot}\n"
             '  - {id: migrate, kind: sql, on: green, sql: "ALTER TABLE tokens ADD COLUMN revoked_at timestamptz;'
             ' CREATE TABLE revocations (signature text, op text, seq bigint)"}\n'
             "  - {id: revoke, kind: sql, on: blue, sql: \"UPDATE tokens SET active = false WHERE signature IN"
             " ('s3', 's7'); UPDATE tokens SET tags = '{x}' WHERE signature = 's9'\"}\n"
             "  - {id: catch-up, kind: replay, max_lag: 0}\n")
    result = bluegreen(["run", str(write_plan(tmp_path / "plan.yaml", "named", steps))], cli_env(dbs), timeout=120)
    assert result.returncode == 0, result.stderr
    rows = query(dbs.green_dsn, "SELECT signature, active, revoked_at IS NOT NULL FROM tokens"
                                " WHERE NOT active OR revoked_at IS NOT NULL ORDER BY 1")
    assert rows == [("s3", False, True), ("s7", False, True)]
    assert query(dbs.green_dsn, "SELECT signature, op FROM revocations ORDER BY seq") == [("s3", "update"),
                                                                                          ("s7", "update")]
    assert scalar(dbs.green_dsn, "SELECT tags FROM tokens WHERE signature = 's9'") == ["t9"]  # not captured


def test_compile_replay_sql_names_and_positions() -> None:
    compiled = compile_replay_sql(REPLAY_SQL, "revoke.sql")
    assert [s.text for s in compiled.statements] == [
        "UPDATE tokens SET active = false, revoked_at = $1::timestamptz WHERE signature = $2",
        "INSERT INTO revocations (signature, op, seq) VALUES ($1, $2, $3::bigint)"]
    assert [s.params for s in compiled.statements] == [("_at", "old.signature"), ("signature", "_op", "_seq")]
    assert compiled.params == ("_at", "old.signature", "signature", "_op", "_seq")

