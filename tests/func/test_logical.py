"""Capture by logical decoding, end to end on real servers (PG 15 -> PG 18): every write reaches green, once.

Eight writers change five tables on blue while the run captures, copies, replays and cuts over; the tables
include one with no primary key (REPLICA IDENTITY FULL), one the plan never names, TRUNCATE and DELETE.
Afterwards each table's content on green equals blue's, also when the run is SIGKILLed mid-copy or
mid-replay and resumed. Then: the slot and the publication are gone after every ending, a slot that holds
too much WAL fails the run, DDL during the window stops it, and what decoding needs from blue is refused
up front (exit 2, nothing created).
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from orchestrator.localenv import Databases, LocalCluster, debian_pg

from .helpers import bluegreen, cli_env, query, scalar, write_plan
from .snapshot_support import table_rows

pytestmark = pytest.mark.func

SCHEMA = """
CREATE SCHEMA app;
CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, note text NOT NULL DEFAULT '');
CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, doc jsonb, payload text);
ALTER TABLE accounts ALTER COLUMN payload SET STORAGE EXTERNAL;
CREATE TABLE journal (at int NOT NULL, what text, amount numeric);  -- no key: REPLICA IDENTITY FULL
CREATE TABLE tags (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE app."Notes" (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text, tags text[]);
INSERT INTO items SELECT g, g, 'seed' FROM generate_series(1, 300) g;
INSERT INTO accounts SELECT g, g * 10, jsonb_build_object('g', g), CASE WHEN g % 10 = 0 THEN repeat(md5(g::text), 400)
                     END FROM generate_series(1, 200) g;
INSERT INTO journal SELECT g % 50, 'seed ' || g, g / 3.0 FROM generate_series(1, 200) g;
INSERT INTO tags SELECT g, 'tag ' || g FROM generate_series(1, 30) g;
INSERT INTO app."Notes" (body, tags) SELECT 'note ' || g, ARRAY['a', 'b' || g] FROM generate_series(1, 100) g;
"""
TABLES = {"items": "id", "accounts": "id", "journal": "t::text", "tags": "id", 'app."Notes"': "id"}


def _steps(extra_capture: str = "", batch: int = 500, snapshot: str = "", after_replay: str = "") -> str:
    return (f"  - {{id: cap, kind: capture, replica_identity: {{journal: full}}{extra_capture}}}\n"
            f"  - {{id: snap, kind: snapshot, jobs: 2{snapshot}}}\n"
            f"  - {{id: catch-up, kind: replay, max_lag: 500, batch_size: {batch}, timeout: 2m}}\n"
            f"{after_replay}"
            "  - {id: cutover, kind: cutover, pause_budget: 10s, max_lag: 100000, drain: [cap],"
            " switches: [{command: [\"true\"]}]}\n")


class Writers:
    """Eight threads writing the five tables on blue until stopped, or until the cutover's fence stops them."""

    def __init__(self, dsn: str, threads: int = 8) -> None:
        self.dsn = dsn
        self.threads = threads
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        self.commits = 0
        self.fenced = 0
        self._lock = threading.Lock()
        self._workers = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def __enter__(self) -> Writers:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, commits: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.commits < commits and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.commits >= commits, f"only {self.commits} commits"

    def stop(self) -> None:
        self.stop_event.set()
        for worker in self._workers:
            worker.join(timeout=30)
        if self.errors:
            raise self.errors[0]

    def _run(self, n: int) -> None:
        rng = random.Random(1000 + n)
        try:
            conn = psycopg.connect(self.dsn, autocommit=False)
        except psycopg.OperationalError:
            return
        try:
            while not self.stop_event.is_set():
                try:
                    self._transaction(conn, rng, n)
                    with self._lock:
                        self.commits += 1
                except (psycopg.errors.UniqueViolation, psycopg.errors.DeadlockDetected,
                        psycopg.errors.LockNotAvailable):
                    conn.rollback()
                except (psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.AdminShutdown,
                        psycopg.OperationalError):
                    with self._lock:
                        self.fenced += 1
                    return  # the cutover fenced blue: this writer is done
        except BaseException as exc:  # surfaced by stop()
            self.errors.append(exc)
        finally:
            conn.close()

    def _transaction(self, conn: psycopg.Connection[Any], rng: random.Random, n: int) -> None:
        with conn.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = '2s'")
            for _ in range(rng.randint(1, 4)):
                key = rng.randint(1, 400)
                pick = rng.random()
                if pick < 0.3:
                    cur.execute("INSERT INTO items VALUES (%s, %s, 'w') ON CONFLICT (id) DO UPDATE SET v = items.v + 1",
                                (key, rng.randint(0, 99)))
                elif pick < 0.45:
                    cur.execute("UPDATE items SET id = id + 1000 WHERE id = %s AND NOT EXISTS"
                                " (SELECT FROM items WHERE id = %s)", (key, key + 1000))
                elif pick < 0.55:
                    cur.execute("DELETE FROM items WHERE id = %s", (key,))
                elif pick < 0.7:
                    # an update that leaves the TOASTed payload as it is (the WAL does not repeat it)
                    cur.execute("UPDATE accounts SET balance = balance + %s, doc = jsonb_set(coalesce(doc, '{}'),"
                                " '{n}', to_jsonb(%s)) WHERE id = %s", (rng.randint(-5, 5), n, key % 220))
                elif pick < 0.75:
                    cur.execute("INSERT INTO accounts VALUES (%s, 0, NULL, repeat(%s, 3000)) ON CONFLICT (id) DO UPDATE"
                                " SET payload = EXCLUDED.payload", (1000 + key, f"p{n}"))
                elif pick < 0.85:
                    cur.execute("INSERT INTO journal VALUES (%s, %s, %s)", (key % 50, f"w{n}", rng.randint(1, 9)))
                elif pick < 0.9:
                    cur.execute("DELETE FROM journal WHERE ctid = (SELECT ctid FROM journal WHERE at = %s LIMIT 1)",
                                (key % 50,))
                elif pick < 0.93:
                    cur.execute("UPDATE journal SET amount = amount + 1 WHERE ctid = (SELECT ctid FROM journal"
                                " WHERE at = %s LIMIT 1)", (key % 50,))
                elif pick < 0.97:
                    cur.execute('INSERT INTO app."Notes" (body, tags) VALUES (%s, %s)', (f"w{n}", ["x", str(key)]))
                elif n == 0:
                    cur.execute("TRUNCATE tags")
                    cur.execute("INSERT INTO tags SELECT g, 'again ' || g FROM generate_series(1, %s) g",
                                (rng.randint(5, 40),))
                else:
                    cur.execute("UPDATE tags SET name = name || '+' WHERE id = %s", (key % 40,))
            if n == 1 and rng.random() < 0.2:
                time.sleep(rng.uniform(0.05, 0.3))  # a slow transaction: commits after younger ones
        conn.commit()
        time.sleep(0.01)  # an application's pace, not flat out: 8 writers still commit hundreds a second


def _assert_equal(dbs: Databases) -> None:
    for table, order in TABLES.items():
        blue, green = table_rows(dbs.blue_dsn, table, order), table_rows(dbs.green_dsn, table, order)
        assert blue == green, f"{table}: {len(blue)} rows on blue, {len(green)} on green, first differences: " \
                              f"{sorted(set(blue) ^ set(green))[:5]}"


def _no_slot_left(dbs: Databases, output: str = "") -> None:
    for dsn in (dbs.blue_dsn, dbs.green_dsn):
        assert scalar(dsn, "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'bluegreen%'") == 0, output
        assert scalar(dsn, "SELECT count(*) FROM pg_publication WHERE pubname LIKE 'bluegreen%'") == 0, output


def test_every_write_of_eight_writers_on_five_tables_reaches_green(dbs: Databases, tmp_path: Path) -> None:
    query(dbs.blue_dsn, SCHEMA)
    plan = write_plan(tmp_path / "plan.yaml", "logical", _steps())
    with Writers(dbs.blue_dsn) as writers:
        writers.wait_for(50)
        result = bluegreen(["run", str(plan)], cli_env(dbs), timeout=240)
        assert result.returncode == 0, result.stderr
        assert writers.fenced == 8  # every writer ran until the fence
    assert writers.commits > 200
    assert "CREATE_REPLICATION_SLOT" not in result.stderr  # (the dry run shows it; a run reports its slot)
    assert "slot bluegreen_" in result.stderr and "the copy reads under the snapshot it exported" in result.stderr
    _assert_equal(dbs)
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM tags") == scalar(dbs.blue_dsn, "SELECT count(*) FROM tags")
    _no_slot_left(dbs, result.stderr)
    assert scalar(dbs.blue_dsn, "SELECT relreplident FROM pg_class WHERE oid = 'journal'::regclass") == "f"


@pytest.mark.parametrize("fault", ["during:copy_table:snap:public.accounts", "during:apply_changes:catch-up:cap"])
def test_sigkill_mid_copy_or_mid_replay_resumes_to_equal_tables(dbs: Databases, tmp_path: Path, fault: str) -> None:
    query(dbs.blue_dsn, SCHEMA)
    query(dbs.blue_dsn, "INSERT INTO accounts SELECT g, g, NULL, repeat('x', 2000) FROM generate_series(300, 5000) g")
    plan = write_plan(tmp_path / "plan.yaml", "logical-kill", _steps(batch=50))
    with Writers(dbs.blue_dsn) as writers:
        writers.wait_for(50)
        killed = bluegreen(["run", str(plan)], cli_env(dbs, BLUEGREEN_FAULT=fault), timeout=240)
        assert killed.returncode == -9, killed.stderr
        assert scalar(dbs.blue_dsn, "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'bluegreen%'") == 1
        writers.wait_for(writers.commits + 100)  # more writes while nothing runs: the slot keeps them
        resumed = bluegreen(["run", str(plan)], cli_env(dbs), timeout=240)
        assert resumed.returncode == 0, resumed.stderr
    if fault.startswith("during:copy"):
        assert "survived the interruption but not its exported snapshot" in resumed.stderr
    _assert_equal(dbs)
    _no_slot_left(dbs)


def test_a_slot_that_holds_more_wal_than_allowed_fails_the_run_and_is_dropped(dbs: Databases, tmp_path: Path) -> None:
    query(dbs.blue_dsn, SCHEMA)
    churn = ("  - {id: churn, kind: sql, on: blue, sql: \"INSERT INTO journal SELECT g, repeat('w', 200), g"
             " FROM generate_series(1, 30000) g\"}\n")
    plan = write_plan(tmp_path / "plan.yaml", "logical-wal", _steps(", max_retained_wal: 2MB", after_replay=churn),
                      defaults="{on_failure: stop}")
    result = bluegreen(["run", str(plan)], cli_env(dbs), timeout=240)
    assert result.returncode == 1, result.stderr
    assert "more than max_retained_wal 2.0 MB: it was dropped" in result.stderr
    assert scalar(dbs.blue_dsn, "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'bluegreen%'") == 0


def test_ddl_on_blue_during_the_window_stops_the_run_before_cutover(dbs: Databases, tmp_path: Path) -> None:
    query(dbs.blue_dsn, SCHEMA)
    ddl = "  - {id: ddl, kind: sql, on: blue, sql: \"ALTER TABLE items ADD COLUMN extra int\"}\n"
    steps = _steps().replace("  - {id: catch-up", ddl + "  - {id: catch-up")
    plan = write_plan(tmp_path / "plan.yaml", "logical-ddl", steps, defaults="{on_failure: rollback}")
    result = bluegreen(["run", str(plan)], cli_env(dbs), timeout=240)
    assert result.returncode == 1
    assert "DDL on blue during the window (public.items was altered)" in result.stderr
    assert "the run was rolled back" in result.stderr
    _no_slot_left(dbs)


def test_when_and_replay_files_apply_to_decoded_rows(dbs: Databases, tmp_path: Path) -> None:
    query(dbs.blue_dsn, "CREATE TABLE tokens (sig text PRIMARY KEY, active boolean NOT NULL, note text);"
                        " INSERT INTO tokens SELECT 't' || g, true, 'n' FROM generate_series(1, 50) g;"
                        " CREATE TABLE other (id int PRIMARY KEY, v int); INSERT INTO other VALUES (1, 1)")
    (tmp_path / "revoke.sql").write_text("-- a revocation, replayed by key\n"
                                         "UPDATE tokens SET active = false, note = :note || ' via ' || :_op"
                                         " WHERE sig = :old.sig;\n")
    rules = (", replica_identity: {tokens: full}, rules: {tokens: {replay: revoke.sql, events: [update],"
             " when: \"OLD.active AND NOT NEW.active\"}}")
    steps = (f"  - {{id: cap, kind: capture{rules}}}\n  - {{id: snap, kind: snapshot}}\n"
             "  - id: writes\n    kind: sql\n    on: blue\n    sql:\n"
             "      - UPDATE tokens SET active = false, note = 'revoked' WHERE sig IN ('t1', 't2')\n"
             "      - UPDATE tokens SET note = 'touched' WHERE sig = 't3'\n"
             "      - UPDATE other SET v = 2\n"
             "  - {id: catch-up, kind: replay, max_lag: 0}\n")
    result = bluegreen(["run", str(write_plan(tmp_path / "plan.yaml", "logical-when", steps)), "--json"],
                       cli_env(dbs))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    checks = {c["name"]: c for s in report["steps"] for c in s["checks"]}
    assert checks["slot cap"]["ok"] and " of WAL on blue (max_retained_wal 2.0 GB)" in checks["slot cap"]["detail"]
    assert query(dbs.green_dsn, "SELECT sig, active, note FROM tokens WHERE sig IN ('t1', 't2', 't3') ORDER BY 1") == [
        ("t1", False, "revoked via update"), ("t2", False, "revoked via update"), ("t3", True, "n")]
    assert scalar(dbs.green_dsn, "SELECT v FROM other") == 2  # a table with no rule: the default upsert


# -- refused up front: exit 2, one clear line, nothing created on blue ----------------------------------------------


def _nothing_created(dsn: str) -> None:
    assert scalar(dsn, "SELECT count(*) FROM pg_namespace WHERE nspname = 'bluegreen'") == 0
    assert scalar(dsn, "SELECT count(*) FROM pg_replication_slots") == 0 or \
        scalar(dsn, "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'bluegreen%'") == 0
    assert scalar(dsn, "SELECT count(*) FROM pg_publication") == 0


def _refused(result: Any, expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_bad_input_on_the_session_clusters_is_refused_before_anything(dbs: Databases, tmp_path: Path) -> None:
    query(dbs.blue_dsn, "CREATE TABLE keyless (a int, b text); CREATE TABLE fine (id int PRIMARY KEY)")
    env = cli_env(dbs)
    plan = write_plan(tmp_path / "a.yaml", "no-identity",
                      "  - {id: cap, kind: capture}\n  - {id: snap, kind: snapshot}\n")
    _refused(bluegreen(["run", str(plan)], env), "a.yaml:8: steps[0]: capture 'cap' on blue: public.keyless has no"
                                                 " primary key")
    plan = write_plan(tmp_path / "b.yaml", "unknown", "  - {id: cap, kind: capture, tables: [fine, nosuch]}\n")
    _refused(bluegreen(["run", str(plan)], env), "no table public.nosuch on blue")
    plan = write_plan(tmp_path / "w.yaml", "old-columns", "  - {id: cap, kind: capture, table: keyless,"
                                                          " events: [update], when: \"OLD.b <> NEW.b\","
                                                          " replica_identity: {keyless: 'keyless_a'}}\n")
    query(dbs.blue_dsn, "CREATE UNIQUE INDEX keyless_a ON keyless (a); ALTER TABLE keyless ALTER a SET NOT NULL")
    _refused(bluegreen(["run", str(plan)], env), "the capture reads OLD.b of public.keyless, but blue logs only the"
                                                 " key of an old row (a): set replica_identity:")
    query(dbs.blue_dsn, "CREATE ROLE norep LOGIN PASSWORD 'pw-norep'; GRANT CREATE ON DATABASE "
                        f"{dbs.name} TO norep; ALTER TABLE fine OWNER TO norep")
    try:
        env_norep = {**env, "BLUE_DSN": f"postgresql://norep:pw-norep@{dbs.blue.host}:{dbs.blue.port}/{dbs.name}"}
        plan = write_plan(tmp_path / "c.yaml", "no-replication", "  - {id: cap, kind: capture, tables: [fine]}\n")
        _refused(bluegreen(["run", str(plan)], env_norep), "role norep may not create a replication slot: it needs"
                                                           " the REPLICATION attribute")
    finally:
        query(dbs.blue_dsn, f"ALTER TABLE fine OWNER TO postgres; REVOKE CREATE ON DATABASE {dbs.name} FROM norep;"
                            " DROP ROLE norep")
    _nothing_created(dbs.blue_dsn)


def test_a_blue_without_logical_wal_or_free_slots_is_refused(tmp_path: Path, pg_password: str) -> None:
    cluster = LocalCluster("blue-replica", debian_pg(15), tmp_path, pg_password,
                           settings={"wal_level": "replica", "max_replication_slots": "1", "max_wal_senders": "2"})
    cluster.start()
    try:
        cluster.create_database("app")
        dsn = cluster.dsn("app")
        query(dsn, "CREATE TABLE t (id int PRIMARY KEY)")
        env = {**cli_env_for(dsn), "GREEN_DSN": dsn}
        plan = write_plan(tmp_path / "plan.yaml", "replica", "  - {id: cap, kind: capture}\n"
                                                             "  - {id: snap, kind: snapshot, to: green}\n")
        _refused(bluegreen(["run", str(plan)], env), "blue runs with wal_level = replica; logical decoding needs"
                                                     " wal_level = logical")
        _nothing_created(dsn)
        cluster.stop()
        cluster = LocalCluster("blue-replica", debian_pg(15), tmp_path, pg_password,
                               settings={"wal_level": "logical", "max_replication_slots": "1", "max_wal_senders": "2"})
        cluster.start()
        query(dsn, "SELECT pg_create_logical_replication_slot('someone_elses', 'pgoutput')")
        _refused(bluegreen(["run", str(plan)], env), "no free replication slot (1 of max_replication_slots = 1 in use)")
        query(dsn, "SELECT pg_drop_replication_slot('someone_elses')")
        _nothing_created(dsn)
    finally:
        cluster.destroy()


def cli_env_for(blue_dsn: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEGREEN_")}
    env.update({"BLUE_DSN": blue_dsn, "COLUMNS": "200"})
    return env


def test_a_killed_run_leaves_its_slot_listed_by_status_and_abort_drops_it(dbs: Databases, tmp_path: Path) -> None:
    query(dbs.blue_dsn, SCHEMA)
    plan = write_plan(tmp_path / "plan.yaml", "logical-abort", _steps())
    env = cli_env(dbs)
    killed = bluegreen(["run", str(plan)], {**env, "BLUEGREEN_FAULT": "after:create_slot:snap"})
    assert killed.returncode == -9
    status = bluegreen(["status", str(plan)], env)
    assert status.returncode == 0, status.stderr
    assert "bluegreen_1_cap" in status.stdout and "run 1 (running)" in status.stdout
    aborted = bluegreen(["abort", str(plan)], env)
    assert aborted.returncode == 0, aborted.stderr
    assert "run 1 abandoned" in aborted.stdout
    _no_slot_left(dbs, aborted.stderr)
    assert scalar(dbs.blue_dsn, "SELECT status FROM bluegreen.runs WHERE run_id = 1") == "abandoned"
    assert "bluegreen_" not in bluegreen(["status", str(plan)], env).stdout


def test_a_plan_error_found_mid_run_rolls_back_and_leaves_no_slot(dbs: Databases, tmp_path: Path) -> None:
    query(dbs.blue_dsn, SCHEMA)
    drop = "  - {id: drop-on-green, kind: sql, on: green, sql: \"DROP TABLE tags\"}\n"
    steps = _steps().replace("  - {id: catch-up", drop + "  - {id: catch-up")
    plan = write_plan(tmp_path / "plan.yaml", "logical-plan-error", steps, defaults="{on_failure: rollback}")
    result = bluegreen(["run", str(plan)], cli_env(dbs), timeout=240)
    assert result.returncode == 1
    assert "public.tags is not on green: give it a replay file" in result.stderr
    assert "the run was rolled back" in result.stderr
    _no_slot_left(dbs, result.stderr)


# capture and copy, then stop on a failing step (the run stays unfinished, so its slot stays for the test)
HELD_OPEN = ("  - {id: cap, kind: capture}\n  - {id: snap, kind: snapshot}\n"
             "  - {id: stop-here, kind: sql, on: blue, sql: \"SELECT 1 / 0\"}\n")


def _replayer(dbs: Databases, source: psycopg.Connection[Any], target: psycopg.Connection[Any]) -> Any:
    """The capture's replayer, as the replay step opens it, with the run's state read from the journal."""
    from orchestrator.logical_replay import LogicalCaptureInfo, LogicalReplayer

    state = dict(query(dbs.blue_dsn, "SELECT key, value FROM bluegreen.run_state WHERE run_id = 1"))
    capture = LogicalCaptureInfo("cap", "blue", "green", snapshot_step="snap")
    replayer = LogicalReplayer(capture, source, target, run_id=1, batch_size=100, get=state.get)
    replayer.setup()
    return replayer


def test_a_batch_that_reorders_into_a_conflict_falls_back_to_one_change_at_a_time(dbs: Databases,
                                                                                   tmp_path: Path) -> None:
    query(dbs.blue_dsn, "CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE NOT NULL, n int NOT NULL);"
                        " INSERT INTO users SELECT g, 'u' || g, 0 FROM generate_series(1, 5) g")
    assert bluegreen(["run", str(write_plan(tmp_path / "p.yaml", "swap", HELD_OPEN))], cli_env(dbs)).returncode == 1
    # swap two emails through a temporary value, move a key, delete and insert again: the last change per key,
    # in the order of those last changes, collides with a unique index that the commit order never hits
    query(dbs.blue_dsn, "UPDATE users SET email = 'tmp' WHERE id = 1")
    query(dbs.blue_dsn, "UPDATE users SET email = 'u1' WHERE id = 2")
    query(dbs.blue_dsn, "UPDATE users SET email = 'u2' WHERE id = 1")
    query(dbs.blue_dsn, "UPDATE users SET id = 50, n = 1 WHERE id = 3")
    query(dbs.blue_dsn, "DELETE FROM users WHERE id = 4; INSERT INTO users VALUES (4, 'again', 9)")
    query(dbs.blue_dsn, "UPDATE users SET n = n + 1")
    with psycopg.connect(dbs.blue_dsn, autocommit=True) as source, \
            psycopg.connect(dbs.green_dsn, autocommit=True) as target:
        result = _replayer(dbs, source, target).round()
    assert result.fallbacks == 1 and result.events == 11
    assert table_rows(dbs.blue_dsn, "users") == table_rows(dbs.green_dsn, "users")
    assert scalar(dbs.blue_dsn, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'bluegreen_1_cap'"
                                " AND confirmed_flush_lsn > restart_lsn") == 1  # advanced once green committed


def test_changes_of_a_quarantined_row_are_quarantined_not_replayed(dbs: Databases, tmp_path: Path) -> None:
    query(dbs.blue_dsn, "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL);"
                        " INSERT INTO items SELECT g, g FROM generate_series(1, 10) g")
    assert bluegreen(["run", str(write_plan(tmp_path / "p.yaml", "held", HELD_OPEN))], cli_env(dbs)).returncode == 1
    with psycopg.connect(dbs.green_dsn, autocommit=True) as conn:  # a cleanup on green set rows 5 and 6 aside
        conn.execute((Path(__file__).resolve().parents[2] / "sql" / "quarantine.sql").read_text().encode())
        conn.execute("SELECT bluegreen_quarantine.clean('items'::regclass, 'id IN (5, 6)', 'items_v_check',"
                     " 'quarantine', 1, 'cleanup')")
    query(dbs.blue_dsn, "UPDATE items SET v = 500 WHERE id IN (5, 7)")
    query(dbs.blue_dsn, "DELETE FROM items WHERE id = 6")
    with psycopg.connect(dbs.blue_dsn, autocommit=True) as source, \
            psycopg.connect(dbs.green_dsn, autocommit=True) as target:
        result = _replayer(dbs, source, target).round()
    assert (result.events, result.quarantined) == (3, 2)
    assert query(dbs.green_dsn, "SELECT id, v FROM items WHERE id BETWEEN 5 AND 7 ORDER BY id") == [(7, 500)]
    held = query(dbs.green_dsn, "SELECT row_data->>'id', row_data->>'v', constraint_name"
                                " FROM bluegreen_quarantine.items ORDER BY quarantine_id")
    # a delete's old row holds only its key (the primary key is the replica identity)
    assert held == [("5", "5", "items_v_check"), ("6", "6", "items_v_check"), ("5", "500", "replay"),
                    ("6", None, "replay")]
