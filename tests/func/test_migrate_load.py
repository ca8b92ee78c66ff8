"""``migrate mode: lock-safe`` on a 1M-row table under pgbench load: an index, a foreign key, a NOT NULL and a
UNIQUE constraint are added while clients keep writing, and no client transaction fails.

The bench (``bench/locksafe.py``) compares the clients' latency with the original migration; this test
only asserts outcomes: the constraints are there and valid, and the clients saw no error.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg

from orchestrator.localenv import Databases, LocalCluster, Pgbench, PgbenchResult

from .helpers import bluegreen, cli_env, query, scalar, write_plan

ROWS = 1_000_000
CHUNK = 4

MIGRATION = """\
CREATE INDEX orders_account_id_idx ON orders (account_id);
ALTER TABLE orders ADD CONSTRAINT orders_account_id_fkey FOREIGN KEY (account_id) REFERENCES accounts (id);
ALTER TABLE orders ALTER COLUMN status SET NOT NULL;
ALTER TABLE orders ADD CONSTRAINT orders_code_key UNIQUE (code);
"""

CLIENT = """\
\\set id random(1, {rows})
\\set account random(1, 1000)
BEGIN;
UPDATE orders SET total = total + 1 WHERE id = :id;
SELECT status, code FROM orders WHERE id = :id;
UPDATE orders SET account_id = :account WHERE id = :id;
END;
"""


def test_lock_safe_migration_under_load_fails_no_client_transaction(dbs: Databases, green: LocalCluster,
                                                                    tmp_path: Path) -> None:
    with psycopg.connect(dbs.green_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id bigint PRIMARY KEY, name text)")
        conn.execute("INSERT INTO accounts SELECT g, 'a' || g FROM generate_series(1, 1000) g")
        conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, account_id bigint, status text, code text,"
                     " total int NOT NULL DEFAULT 0)")
        conn.execute(f"INSERT INTO orders SELECT g, 1 + g % 1000, 'new', 'code-' || g, 0"
                     f" FROM generate_series(1, {ROWS}) g")
        conn.execute("VACUUM ANALYZE orders")
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001_orders.sql").write_text(MIGRATION)
    plan = write_plan(tmp_path / "plan.yaml", "under-load", """\
  - {id: migrate, kind: migrate, on: green, files: "migrations/*.sql", mode: lock-safe}
""", "{lock_timeout: 500ms, lock_retries: 10, retry_backoff: 100ms}")
    script = tmp_path / "client.sql"
    script.write_text(CLIENT.format(rows=ROWS))

    # the load runs in back-to-back pgbench runs of CHUNK seconds until the migration is over (each run
    # reports its own failed transactions), so it covers the migration however long it takes here
    done = threading.Event()
    loads: list[PgbenchResult] = []

    def load() -> None:
        while not done.is_set():
            bench = Pgbench(green.bins, green.host, green.port, dbs.name, green.password,
                            workdir=tmp_path / "pgbench", clients=4, jobs=2, duration_s=CHUNK, script=script,
                            name=f"load{len(loads)}")
            bench.start()
            loads.append(bench.wait(timeout=CHUNK + 60))

    clients = threading.Thread(target=load)
    clients.start()
    try:
        time.sleep(1)  # the clients are connected and writing before the migration starts
        started = time.monotonic()
        result = bluegreen(["run", str(plan)], cli_env(dbs), timeout=300)
        migrated_in = time.monotonic() - started
    finally:
        done.set()
        clients.join(timeout=CHUNK + 90)
    assert result.returncode == 0, result.stderr[-3000:]
    assert loads and all(r.returncode == 0 for r in loads), [r.stderr for r in loads]
    assert sum(r.failed for r in loads) == 0 and sum(r.aborted_clients for r in loads) == 0
    transactions = sum(r.transactions for r in loads)
    assert transactions > 100

    constraints = query(dbs.green_dsn, "SELECT conname, contype, convalidated FROM pg_constraint"
                                       " WHERE conrelid = 'orders'::regclass AND contype IN ('f', 'u', 'c')"
                                       " ORDER BY conname")
    assert constraints == [("orders_account_id_fkey", "f", True), ("orders_code_key", "u", True)]
    assert scalar(dbs.green_dsn, "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'orders'::regclass"
                                 " AND attname = 'status'") is True
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM pg_index WHERE indrelid = 'orders'::regclass"
                                 " AND indisvalid") == 3  # pkey, account_id, code
    latency = max(r.latency_max_ms or 0.0 for r in loads)
    print(f"\nlock-safe migration of {ROWS} rows under load: {migrated_in:.1f}s, {transactions} client"
          f" transactions in {len(loads)} pgbench runs, 0 failed, max latency {latency:.0f} ms")
