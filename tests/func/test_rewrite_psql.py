"""``bluegreen rewrite --out``'s files run as written: psql on PostgreSQL 15 (blue) and 18 (green).

- Our corpus (``tests/data/transactions``: blocks in every spelling, DO blocks and functions with BEGIN in
  their bodies, COMMIT AND CHAIN, savepoints, nested BEGIN, SET LOCAL, mixed DDL and DML, a file without
  transaction control, an ``.autocommit.`` one) and ``tests/data/transactions-rollback`` (a block that ends
  in ROLLBACK, a ROLLBACK TO SAVEPOINT): each rewritten file runs with ``psql -v ON_ERROR_STOP=1 -f``, and
  the schema (``pg_dump -s``) and the data afterwards equal those the original files leave. A migrate step
  on the same files leaves that schema too: it runs the same transactions.
- Hydra's 212 migrations, in popx's order: the originals one transaction per file (``psql -1``, as popx),
  the rewritten ones as written; one schema.
- A session holding a conflicting lock: psql on the rewritten file waits at most its lock_timeout and stops;
  the migrate step retries, and finishes once the lock is gone.

Schema dumps are compared as pg_dump prints them, but for the ``\\restrict`` key pg_dump draws at random
per run, and, for the migrated database, for bluegreen's own ``bluegreen`` schema (history, markers).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from orchestrator.localenv import Databases, LocalCluster

from .helpers import ROOT, bluegreen, cli_env, query, scalar, spawn, wait_for, write_plan
from .migrate_support import extra_database, migrations
from .psql_support import apply_files, psql_file, schema_dump, table_digests

CORPORA = [ROOT / "tests" / "data" / "transactions", ROOT / "tests" / "data" / "transactions-rollback"]
# Hydra's statements with no lock-safe form, kept as written (tests/unit/test_lint_squawk.py names them per file)
HYDRA_ALLOW = "changing-column-type,adding-field-with-default"


def rewrite(sources: list[Path], out: Path, *options: str) -> list[Path]:
    result = subprocess.run([sys.executable, "-m", "orchestrator", "rewrite", *map(str, sources), "--out", str(out),
                             *options], capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return [out / path.name for path in sources]


def sql_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.sql"))


@pytest.mark.parametrize("server", ["blue", "green"])
@pytest.mark.parametrize("corpus", CORPORA, ids=[c.name for c in CORPORA])
def test_rewritten_corpus_runs_with_psql_and_leaves_the_same_schema_and_data(
        server: str, corpus: Path, request: pytest.FixtureRequest, dbs: Databases, tmp_path: Path) -> None:
    cluster: LocalCluster = request.getfixturevalue(server)
    originals = sql_files(corpus)
    assert len(originals) >= (12 if corpus.name == "transactions" else 2)
    rewritten = rewrite(originals, tmp_path / "out")
    with extra_database(cluster, dbs.name + "_orig") as orig, extra_database(cluster, dbs.name + "_rw") as rw:
        apply_files(cluster, dbs.name + "_orig", originals)
        apply_files(cluster, dbs.name + "_rw", rewritten)
        expected = schema_dump(cluster, dbs.name + "_orig")
        assert "CREATE TABLE public." in expected
        assert schema_dump(cluster, dbs.name + "_rw") == expected
        assert table_digests(rw) == table_digests(orig)
        assert scalar(rw, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0
        if server != "green":
            return
        # migrate runs the same plan of transactions: same schema, same data
        plan = write_plan(tmp_path / "migrate.yaml", "corpus", f"""\
  - {{id: migrate, kind: migrate, on: green, files: "{corpus}/*.sql", mode: lock-safe}}
""")
        result = bluegreen(["run", str(plan)], cli_env(dbs), timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert schema_dump(cluster, dbs.name, exclude_schema="bluegreen") == expected
        assert table_digests(dbs.green_dsn) == table_digests(orig)


@pytest.mark.parametrize("server", ["blue", "green"])
def test_rewritten_hydra_migrations_run_with_psql_and_leave_the_same_schema(
        server: str, request: pytest.FixtureRequest, dbs: Databases, tmp_path: Path) -> None:
    cluster: LocalCluster = request.getfixturevalue(server)
    originals = [f.path for f in migrations()]
    assert len(originals) == 212
    rewritten = rewrite(originals, tmp_path / "out", "--allow", HYDRA_ALLOW)
    with extra_database(cluster, dbs.name + "_orig"), extra_database(cluster, dbs.name + "_rw") as rw:
        apply_files(cluster, dbs.name + "_orig", originals, single_transaction=True)  # as popx runs them
        apply_files(cluster, dbs.name + "_rw", rewritten)  # as they are: their own transactions
        expected = schema_dump(cluster, dbs.name + "_orig")
        assert expected.count("CREATE TABLE public.") == 14
        assert schema_dump(cluster, dbs.name + "_rw") == expected
        assert scalar(rw, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0


LOCKED_MIGRATION = """\
BEGIN;
ALTER TABLE items ADD COLUMN note text;
CREATE INDEX items_note_idx ON items (note);
UPDATE items SET note = 'n' || id WHERE note IS NULL;
ALTER TABLE items ALTER COLUMN note SET NOT NULL;
COMMIT;
"""


class LockWaits:
    """The longest lock wait of a statement of ``application_name`` sessions, sampled every 10 ms."""

    def __init__(self, dsn: str, application: str) -> None:
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(dsn, application), daemon=True)

    def _watch(self, dsn: str, application: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                row = conn.execute("SELECT max(extract(epoch FROM clock_timestamp() - query_start)) FROM"
                                   " pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
                                   (application,)).fetchone()
                if row and row[0] is not None:
                    self.longest = max(self.longest, float(row[0]))
                time.sleep(0.01)

    def __enter__(self) -> LockWaits:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def setup_items(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO items SELECT g, g FROM generate_series(1, 20000) g")


def waiting_attempt(dsn: str) -> object:
    rows = query(dsn, "SELECT a.xact_start FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                      " WHERE NOT l.granted AND a.application_name = 'bluegreen'")
    return rows[0][0] if rows else None


def test_a_held_lock_stops_psql_within_the_lock_timeout_and_migrate_retries(
        green: LocalCluster, dbs: Databases, tmp_path: Path) -> None:
    setup_items(dbs.green_dsn)
    source = tmp_path / "migrations" / "001_note.sql"
    source.parent.mkdir()
    source.write_text(LOCKED_MIGRATION)
    [rewritten] = rewrite([source], tmp_path / "out", "--lock-timeout", "300ms")
    assert rewritten.read_text().startswith("SET lock_timeout = '300ms';\n")

    # a report reading items in an open transaction: ALTER TABLE's ACCESS EXCLUSIVE must wait for it
    with psycopg.connect(dbs.green_dsn) as blocker:
        blocker.execute("SELECT count(*) FROM items")
        with LockWaits(dbs.green_dsn, "psql") as waits:
            started = time.monotonic()
            done = psql_file(green, dbs.name, rewritten)
            elapsed = time.monotonic() - started
        blocker.rollback()
    assert done.returncode == 3, done.stdout + done.stderr  # psql: stopped by ON_ERROR_STOP
    assert "canceling statement due to lock timeout" in done.stderr
    assert 0.2 < waits.longest < 0.3 + 0.4, waits.longest  # it waited, no longer than lock_timeout (+ sampling)
    assert elapsed < 10
    # the block's first part rolled back as a whole: nothing half done
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'items'::regclass"
                                 " AND attname = 'note'") == 0

    # the same file through a migrate step: each attempt waits lock_timeout, is retried, and succeeds once the
    # lock is gone
    plan = write_plan(tmp_path / "locked.yaml", "locked", """\
  - {id: migrate, kind: migrate, on: green, files: "migrations/*.sql", mode: lock-safe}
""", "{lock_timeout: 300ms, lock_retries: 10, retry_backoff: 100ms}")
    blocker = psycopg.connect(dbs.green_dsn)
    try:
        blocker.execute("SELECT count(*) FROM items")
        proc = spawn(["run", str(plan)], cli_env(dbs))
        wait_for(lambda: waiting_attempt(dbs.green_dsn) is not None, what="a first attempt waiting")
        first = waiting_attempt(dbs.green_dsn)
        wait_for(lambda: waiting_attempt(dbs.green_dsn) not in (None, first), what="a retry waiting")
        blocker.rollback()
        _, err = proc.communicate(timeout=120)
    finally:
        blocker.close()
    assert proc.returncode == 0, err
    attempts = scalar(dbs.blue_dsn, "SELECT (detail->>'attempts')::int FROM bluegreen.step_events"
                                    " WHERE action_id = 'migrate:migrate:001:0' AND status = 'done'")
    assert attempts >= 2
    assert scalar(dbs.green_dsn, "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'items'::regclass"
                                 " AND attname = 'note'") is True
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM items WHERE note IS NULL") == 0
    assert scalar(dbs.green_dsn, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'items_note_idx'::regclass")

    # and psql, the lock gone, runs the rewritten file to the same end on a fresh copy of the table
    with extra_database(green, dbs.name + "_psql") as fresh:
        setup_items(fresh)
        again = psql_file(green, dbs.name + "_psql", rewritten)
        assert again.returncode == 0, again.stderr
        assert schema_dump(green, dbs.name + "_psql") == schema_dump(green, dbs.name, exclude_schema="bluegreen")
