"""Cutover through a real PgBouncer under pgbench load, PG 15 -> PG 18; gates, PAUSE deadline, revert, rollback."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from orchestrator.localenv import Databases, LocalPgBouncer, Pgbench
from orchestrator.pgbouncer import read_entry

from .helpers import bluegreen, cli_env, query, scalar, wait_for, write_plan
from .snapshot_support import table_rows


@pytest.fixture
def bouncer(dbs: Databases, tmp_path: Path, pg_password: str) -> Iterator[LocalPgBouncer]:
    """A PgBouncer of this test's own (a cutover rewrites its config), in front of blue."""
    b = LocalPgBouncer(tmp_path, dbs.blue.host, dbs.blue.port, pg_password, name="pgb")
    b.start()
    try:
        yield b
    finally:
        b.destroy()


def _through(b: LocalPgBouncer, dbname: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(b.dsn(dbname), autocommit=True, prepare_threshold=None)


def _server_major(b: LocalPgBouncer, dbname: str) -> int:
    with _through(b, dbname) as conn:
        return int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000  # type: ignore[index]


def _cutover_plan(path: Path, dbs: Databases, b: LocalPgBouncer, extra: str = "", switches: str = "",
                  defaults: str = "{}", after: str = "") -> Path:
    steps = f"""\
  - id: cutover
    kind: cutover
    pause_budget: 2s
    retry_wait: 100ms
    {extra}
    switches:
      - {{pgbouncer: {{admin_dsn: "{b.admin_dsn()}", ini: "{b.ini_path}", database: {dbs.name}}}}}
{switches}{after}"""
    return write_plan(path, "cutover", steps, defaults)


def test_cutover_under_pgbench_load_loses_no_transaction(dbs: Databases, bouncer: LocalPgBouncer, tmp_path: Path,
                                                         pg_password: str) -> None:
    for cluster in (dbs.blue, dbs.green):
        Pgbench(cluster.bins, cluster.host, cluster.port, dbs.name, pg_password, workdir=tmp_path / cluster.name
                ).initialize(1)
    query(dbs.green_dsn, "CREATE SEQUENCE tickets")
    query(dbs.blue_dsn, "CREATE SEQUENCE tickets")
    query(dbs.blue_dsn, "SELECT setval('tickets', 4242)")
    bench = Pgbench(dbs.blue.bins, bouncer.host, bouncer.port, dbs.name, pg_password, workdir=tmp_path / "load",
                    clients=8, jobs=2, duration_s=15, builtin="simple-update")
    plan = _cutover_plan(tmp_path / "plan.yaml", dbs, bouncer)
    bench.start()
    wait_for(lambda: scalar(dbs.blue_dsn, "SELECT count(*) FROM pgbench_history") > 500, what="load on blue")
    result = bluegreen(["run", str(plan)], cli_env(dbs))
    assert bench.is_running(), "the load ended before the cutover: the test proves nothing"
    outcome = bench.wait(timeout=60)
    assert result.returncode == 0, result.stderr
    assert "traffic is on green" in result.stderr
    assert outcome.failed == 0 and outcome.aborted_clients == 0, outcome.stderr
    assert outcome.latency_max_ms is not None and outcome.latency_max_ms <= 2000 + 100
    on_blue = scalar(dbs.blue_dsn, "SELECT count(*) FROM pgbench_history")
    on_green = scalar(dbs.green_dsn, "SELECT count(*) FROM pgbench_history")
    assert on_blue > 0 and on_green > 0  # both sides served: the switch happened mid-load
    assert on_blue + on_green == outcome.transactions
    assert _server_major(bouncer, dbs.name) == 18
    assert scalar(dbs.green_dsn, "SELECT last_value FROM tickets") == 4242  # sequences moved past blue
    # blue is fenced for new sessions of every role
    with psycopg.connect(dbs.blue_dsn) as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        conn.execute("INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (1, 1, 1, 1)")
    pause = query(dbs.blue_dsn, "SELECT value->>'pause_ms' FROM bluegreen.run_state WHERE key = 'cutover:cutover'")
    assert 0 < float(pause[0][0]) <= 2100
    phases = scalar(dbs.blue_dsn, "SELECT value->'phases_ms' FROM bluegreen.run_state WHERE key = 'cutover:cutover'")
    assert [name for name, _ in phases] == ["PAUSE", "fence", "sequences", "switches", "RESUME"]  # as they ran
    assert 0 < sum(ms for _, ms in phases) <= float(pause[0][0])  # the phases are inside the pause
    assert "ms (PAUSE " in result.stderr and " ms); traffic is on green" in result.stderr


def test_idle_in_transaction_client_is_refused_by_the_gate(dbs: Databases, bouncer: LocalPgBouncer,
                                                           tmp_path: Path) -> None:
    plan = _cutover_plan(tmp_path / "plan.yaml", dbs, bouncer, extra="max_xact_age: 300ms")
    with psycopg.connect(bouncer.dsn(dbs.name), prepare_threshold=None) as idle:
        idle.execute("SELECT 1")  # BEGIN implicitly: idle in transaction from now on
        old_enough = ("SELECT pid FROM pg_stat_activity WHERE state = 'idle in transaction'"
                      " AND datname = current_database() AND xact_start < now() - interval '400ms'")
        wait_for(lambda: bool(query(dbs.blue_dsn, old_enough)), what="the transaction to be older than 300ms")
        pid = scalar(dbs.blue_dsn, old_enough)
        result = bluegreen(["run", str(plan)], cli_env(dbs))
    assert result.returncode == 1
    assert "cutover refused, nothing was paused" in result.stderr
    assert f"session pid {pid}" in result.stderr and "idle in transaction" in result.stderr
    assert _server_major(bouncer, dbs.name) == 15


def test_pause_deadline_resumes_clients_and_the_run_can_be_retried(dbs: Databases, bouncer: LocalPgBouncer,
                                                                   tmp_path: Path) -> None:
    plan = _cutover_plan(tmp_path / "plan.yaml", dbs, bouncer, extra="skip_gates: [sessions]\n    pause_retries: 1")
    idle = psycopg.connect(bouncer.dsn(dbs.name), prepare_threshold=None)
    idle.execute("SELECT 1")  # holds a server connection: PAUSE cannot complete
    started = time.monotonic()
    result = bluegreen(["run", str(plan)], cli_env(dbs))
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "did not finish within 2s" in result.stderr and "gave up after 2 attempt(s)" in result.stderr
    assert elapsed < 30
    # the pool was resumed: clients work, and they are still on blue, which is writable
    with _through(bouncer, dbs.name) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert _server_major(bouncer, dbs.name) == 15
    query(dbs.blue_dsn, "CREATE TABLE still_writable (x int)")
    idle.close()
    retried = bluegreen(["run", str(plan)], cli_env(dbs))
    assert retried.returncode == 0, retried.stderr
    assert _server_major(bouncer, dbs.name) == 18


# Before the cutover: capture items, snapshot, catch up, then make every row applied on green cost 50 ms (an
# ALWAYS trigger: it fires under the replay's session_replication_role = replica).
SLOW_DRAIN_STEPS = """\
  - {id: cap, kind: capture, method: trigger, table: items}
  - {id: snap, kind: snapshot}
  - {id: catch-up, kind: replay, max_lag: 1000}
  - id: slow-green
    kind: sql
    on: green
    sql: |
      CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN PERFORM pg_sleep(0.05); RETURN NULL; END $f$;
      CREATE TRIGGER slow AFTER INSERT OR UPDATE OR DELETE ON items FOR EACH ROW EXECUTE FUNCTION slow();
      ALTER TABLE items ENABLE ALWAYS TRIGGER slow;
"""


def test_a_drain_longer_than_the_pause_budget_resumes_clients_on_blue(dbs: Databases, bouncer: LocalPgBouncer,
                                                                      tmp_path: Path) -> None:
    """The stall stays within pause_budget: the drain inside the pause is cut at the budget, clients resume on
    blue, and a later run completes with green equal to blue."""
    query(dbs.blue_dsn, "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL);"
                        " INSERT INTO items SELECT g, g FROM generate_series(1, 100) g")
    plan = _cutover_plan(tmp_path / "plan.yaml", dbs, bouncer, extra="drain: [cap]\n    pause_retries: 0",
                         defaults="{batch_size: 10}")
    plan.write_text(plan.read_text().replace("pause_budget: 2s", "pause_budget: 1s")
                    .replace("steps:\n", "steps:\n" + SLOW_DRAIN_STEPS, 1))
    stalls: list[float] = []
    errors: list[str] = []
    done = threading.Event()

    def client() -> None:
        """The application, through PgBouncer: an update every 10 ms (twice what green applies in the test's
        50 ms per row), so the cutover's catch-up outside the pause always leaves a backlog for the drain."""
        with _through(bouncer, dbs.name) as conn:
            n = 0
            while not done.is_set():
                n += 1
                started = time.monotonic()
                try:
                    conn.execute("UPDATE items SET v = v + 1 WHERE id = %s", (n % 100 + 1,))
                except psycopg.Error as exc:
                    errors.append(str(exc))
                stalls.append(time.monotonic() - started)
                time.sleep(0.01)

    writer = threading.Thread(target=client)
    writer.start()
    try:
        result = bluegreen(["run", str(plan)], cli_env(dbs), timeout=180)
    finally:
        done.set()
        writer.join()
    assert result.returncode == 1, result.stderr[-3000:]
    assert "the pause budget (1s) ran out during the drain" in result.stderr
    assert "gave up after 1 attempt(s): traffic stays on blue" in result.stderr
    assert errors == []
    assert 0.9 <= max(stalls) < 1.7  # the clients stalled for the budget, not for the whole drain
    assert _server_major(bouncer, dbs.name) == 15
    query(dbs.blue_dsn, "UPDATE items SET v = -1 WHERE id = 100")  # blue is writable (and this is captured)

    query(dbs.green_dsn, "DROP TRIGGER slow ON items")
    retried = bluegreen(["run", str(plan)], cli_env(dbs), timeout=180)
    assert retried.returncode == 0, retried.stderr[-3000:]
    assert _server_major(bouncer, dbs.name) == 18
    assert table_rows(dbs.green_dsn, "items") == table_rows(dbs.blue_dsn, "items")


def test_a_failing_switch_reverts_the_others(dbs: Databases, bouncer: LocalPgBouncer, tmp_path: Path) -> None:
    switches = "      - {name: deploy, command: [sh, -c, 'echo cannot deploy; exit 7']}\n"
    plan = _cutover_plan(tmp_path / "plan.yaml", dbs, bouncer, switches=switches)
    result = bluegreen(["run", str(plan)], cli_env(dbs))
    assert result.returncode == 1
    assert "deploy: sh exited with 7: cannot deploy" in result.stderr
    assert "reverted: pgbouncer-" in result.stderr
    assert _server_major(bouncer, dbs.name) == 15
    entry = read_entry(bouncer.ini_path, dbs.name)
    assert entry is not None and f"port={dbs.blue.port}" in entry
    query(dbs.blue_dsn, "CREATE TABLE blue_is_writable (x int)")
    assert scalar(dbs.blue_dsn, "SELECT count(*) FROM pg_db_role_setting r, unnest(r.setconfig) s"
                                " WHERE s LIKE 'default_transaction_read_only%'") == 0


def test_failed_validation_rolls_traffic_back_to_blue(dbs: Databases, bouncer: LocalPgBouncer,
                                                      tmp_path: Path) -> None:
    query(dbs.blue_dsn, "CREATE TABLE tokens (id int PRIMARY KEY, active bool)")
    query(dbs.blue_dsn, "INSERT INTO tokens SELECT g, true FROM generate_series(1, 10) g")
    query(dbs.green_dsn, "CREATE TABLE tokens (id int PRIMARY KEY, active bool)")
    query(dbs.green_dsn, "INSERT INTO tokens SELECT g, g <> 7 FROM generate_series(1, 10) g")  # one corrupted
    after = """\
  - id: validate
    kind: validate
    checks:
      - {name: counts, compare: "SELECT count(*) FROM tokens"}
      - {name: sessions-still-valid, rows: {blue: "SELECT id FROM tokens WHERE active",
                                            green: "SELECT id FROM tokens WHERE active"}}
"""
    plan = _cutover_plan(tmp_path / "plan.yaml", dbs, bouncer, defaults="{on_failure: rollback}", after=after)
    result = bluegreen(["run", str(plan)], cli_env(dbs))
    assert result.returncode == 3, result.stderr
    assert "sessions-still-valid: 1 of 10 keys valid on blue are not on green (e.g. 7)" in result.stderr
    assert "the run was rolled back" in result.stderr
    assert _server_major(bouncer, dbs.name) == 15
    query(dbs.blue_dsn, "INSERT INTO tokens VALUES (11, true)")  # writable again
    assert scalar(dbs.blue_dsn, "SELECT status FROM bluegreen.runs") == "rolled_back"


@pytest.mark.parametrize("method", ["logical", "trigger"])
def test_rollback_replays_onto_blue_what_clients_wrote_on_green(dbs: Databases, bouncer: LocalPgBouncer,
                                                                tmp_path: Path, method: str) -> None:
    """Reverse capture: rows written on green between the cutover and a failed validation are on blue after."""
    for dsn in (dbs.blue_dsn, dbs.green_dsn):
        query(dsn, "CREATE TABLE tokens (id int PRIMARY KEY, active bool NOT NULL)")
        query(dsn, "INSERT INTO tokens SELECT g, true FROM generate_series(1, 10) g")
    before = f"""  - {{id: capture-green, kind: capture, method: {method}, on: green, table: tokens}}
"""
    after = """  - id: validate
    kind: validate
    watch: 120s
    interval: 100ms
    checks:
      - {name: no-poison, sql: "SELECT NOT EXISTS (SELECT FROM tokens WHERE id = 999)"}
"""
    plan = _cutover_plan(tmp_path / "plan.yaml", dbs, bouncer, extra="reverse: [capture-green]",
                         defaults="{on_failure: rollback}", after=after)
    plan.write_text(plan.read_text().replace("steps:\n", "steps:\n" + before, 1))
    outcome: list[subprocess.CompletedProcess[str]] = []
    runner = threading.Thread(target=lambda: outcome.append(bluegreen(["run", str(plan)], cli_env(dbs), timeout=300)))
    runner.start()
    try:
        wait_for(lambda: _server_major(bouncer, dbs.name) == 18, 120, "traffic on green")
        with _through(bouncer, dbs.name) as conn:  # the application, now on green, one transaction per write
            for i in range(101, 121):
                conn.execute("INSERT INTO tokens VALUES (%s, true)", (i,))
            conn.execute("UPDATE tokens SET active = false WHERE id = 3")
            conn.execute("DELETE FROM tokens WHERE id = 5")
            on_green = query(dbs.green_dsn, "SELECT id, active FROM tokens ORDER BY id")
            conn.execute("INSERT INTO tokens VALUES (999, true)")  # the write validation catches
    finally:
        runner.join()
    result = outcome[0]
    assert result.returncode == 3, result.stderr[-3000:]
    assert "no-poison" in result.stderr
    # 20 inserts, an update, a delete and the poison row (logical decoding: one change each too)
    assert "replayed 23 event(s) captured on green back onto blue" in result.stderr
    assert _server_major(bouncer, dbs.name) == 15
    on_blue = query(dbs.blue_dsn, "SELECT id, active FROM tokens ORDER BY id")
    assert on_blue == [*on_green, (999, True)]
    assert len(on_blue) == 10 - 1 + 20 + 1 and (3, False) in on_blue and (5, True) not in on_blue
    query(dbs.blue_dsn, "INSERT INTO tokens VALUES (1000, true)")  # blue writable again
    query(dbs.green_dsn, "INSERT INTO tokens VALUES (1000, true)")  # green's fence for the drain was lifted
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'bluegreen_capture%'") == 0
    for dsn in (dbs.blue_dsn, dbs.green_dsn):  # a failed validation rolled back: no slot, no publication left
        assert scalar(dsn, "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'bluegreen%'") == 0
        assert scalar(dsn, "SELECT count(*) FROM pg_publication WHERE pubname LIKE 'bluegreen%'") == 0


def test_rollback_command_sends_traffic_back(dbs: Databases, bouncer: LocalPgBouncer, tmp_path: Path) -> None:
    plan = _cutover_plan(tmp_path / "plan.yaml", dbs, bouncer)
    assert bluegreen(["run", str(plan)], cli_env(dbs)).returncode == 0
    assert _server_major(bouncer, dbs.name) == 18
    stop = threading.Event()
    errors: list[str] = []

    def client() -> None:  # a client keeps querying through PgBouncer while traffic moves back
        with _through(bouncer, dbs.name) as conn:
            while not stop.is_set():
                try:
                    conn.execute("SELECT 1")
                except psycopg.Error as exc:
                    errors.append(str(exc))
                time.sleep(0.01)

    worker = threading.Thread(target=client)
    worker.start()
    try:
        result = bluegreen(["rollback", str(plan)], cli_env(dbs))
    finally:
        stop.set()
        worker.join()
    assert result.returncode == 0, result.stderr
    assert errors == []
    assert _server_major(bouncer, dbs.name) == 15
    query(dbs.blue_dsn, "CREATE TABLE writable_again (x int)")


def test_cutover_plan_renders_offline(tmp_path: Path, dbs: Databases, bouncer: LocalPgBouncer) -> None:
    plan = _cutover_plan(tmp_path / "plan.yaml", dbs, bouncer, extra="drain: [capture-tokens]")
    plan.write_text(plan.read_text().replace(
        "steps:\n", "steps:\n  - {id: capture-tokens, kind: capture, method: trigger, table: t}\n"))
    result = bluegreen(["run", str(plan), "--dry-run", "--offline"], cli_env(dbs))
    assert result.returncode == 0, result.stderr
    for text in (f"PAUSE {dbs.name}", "ALTER DATABASE", "SET default_transaction_read_only = on",
                 "replay the events left in capture-tokens", f"RESUME {dbs.name}", "RELOAD"):
        assert text in result.stderr
    assert scalar(dbs.blue_dsn, "SELECT to_regnamespace('bluegreen')") is None
