"""Lock-safe migration under load: the clients' latency while an index, a foreign key, a NOT NULL and a UNIQUE
constraint are added to a 1M-row table, with the migration as written and with ``migrate mode: lock-safe``.

Starts its own PostgreSQL 18 (and, with ``--pgbouncer``, a PgBouncer in transaction mode that the clients go
through), fills a fresh database per variant with one ``INSERT ... SELECT generate_series``, runs pgbench
(updates and reads by primary key), and 2 s into the load runs the migration:

- baseline: the file as written, in one transaction (the way most migration tools run a file);
- ours: ``bluegreen run`` of a plan with ``migrate, mode: lock-safe``.

Prints, side by side:

    locksafe: client max latency: ours X ms, baseline Y ms, ratio X/Y
    locksafe: client p99 latency: ours X ms, baseline Y ms, ratio X/Y
    locksafe: failed client transactions: ours 0, baseline 0 (aborted clients: ours 0, baseline 0)
    locksafe: migration time: ours X s, baseline Y s, ratio X/Y

Run: .venv/bin/python bench/locksafe.py [--rows 1000000] [--clients 8] [--seconds 30] [--pgbouncer]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from orchestrator.localenv import LocalCluster, LocalPgBouncer, Pgbench, PgbenchResult, embedded_pg
from orchestrator.plan import load_plan
from orchestrator.runner import Runner, RunOptions
from orchestrator.sqlanalysis.parse import split_statements

PASSWORD = "pw-bench-locksafe"

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

PLAN = """\
version: 1
name: bench-locksafe
clusters:
  blue: {{dsn: "{journal}"}}
  green: {{dsn: "{target}"}}
defaults: {{lock_timeout: 500ms, lock_retries: 20, retry_backoff: 100ms}}
steps:
  - {{id: migrate, kind: migrate, on: green, files: "migrations/*.sql", mode: lock-safe}}
"""


def fill(dsn: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id bigint PRIMARY KEY, name text)")
        conn.execute("INSERT INTO accounts SELECT g, 'a' || g FROM generate_series(1, 1000) g")
        conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, account_id bigint, status text, code text,"
                     " total int NOT NULL DEFAULT 0)")
        conn.execute("INSERT INTO orders SELECT g, 1 + g %% 1000, 'new', 'code-' || g, 0"
                     " FROM generate_series(1, %s) g", (rows,))
        conn.execute("VACUUM ANALYZE orders")


def as_written(dsn: str, path: Path) -> None:
    """The baseline: the file in one transaction, as written."""
    with psycopg.connect(dsn) as conn, conn.transaction():
        for statement in split_statements(path.read_text(), str(path)):
            conn.execute(statement.text.encode())


def variant(name: str, cluster: LocalCluster, bouncer: LocalPgBouncer | None, base: Path, args: argparse.Namespace
            ) -> tuple[PgbenchResult, float]:
    db = f"bench_{name}"
    cluster.create_database(db)
    fill(cluster.dsn(db), args.rows)
    work = base / name
    (work / "migrations").mkdir(parents=True)
    migration = work / "migrations" / "001_orders.sql"
    migration.write_text(MIGRATION)
    script = work / "client.sql"
    script.write_text(CLIENT.format(rows=args.rows))
    host, port = (bouncer.host, bouncer.port) if bouncer else (cluster.host, cluster.port)
    load = Pgbench(cluster.bins, host, port, db, PASSWORD, workdir=work, clients=args.clients, jobs=2,
                   duration_s=args.seconds, script=script, name=name)
    load.start()
    time.sleep(2)
    started = time.monotonic()
    if name == "baseline":
        as_written(cluster.dsn(db), migration)
    else:
        plan = work / "plan.yaml"
        plan.write_text(PLAN.format(journal=cluster.dsn(db), target=cluster.dsn(db)))
        Runner(load_plan(plan)).run(RunOptions())
    took = time.monotonic() - started
    if not load.is_running():
        print(f"locksafe: warning: the {name} load ended before its migration ({took:.1f}s): raise --seconds",
              file=sys.stderr)
    return load.wait(), took


def ratio(ours: float | None, baseline: float | None) -> str:
    return f"{ours / baseline:.3f}" if ours is not None and baseline else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=30, help="pgbench duration per variant")
    parser.add_argument("--pgbouncer", action="store_true", help="clients go through PgBouncer (transaction mode)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bluegreen-bench-locksafe-"))
    cluster = LocalCluster("pg", embedded_pg(), base, PASSWORD)
    bouncer: LocalPgBouncer | None = None
    try:
        cluster.start()
        if args.pgbouncer:
            bouncer = LocalPgBouncer(base, cluster.host, cluster.port, PASSWORD)
            bouncer.start()
        baseline, baseline_s = variant("baseline", cluster, bouncer, base, args)
        ours, ours_s = variant("ours", cluster, bouncer, base, args)
    finally:
        if bouncer is not None:
            bouncer.destroy()
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)
    via = " through PgBouncer" if args.pgbouncer else ""
    print(f"locksafe: {args.rows} rows, {args.clients} clients{via}, {args.seconds}s of load per variant")
    print(f"locksafe: client max latency: ours {ours.latency_max_ms:.0f} ms, baseline {baseline.latency_max_ms:.0f} ms,"
          f" ratio {ratio(ours.latency_max_ms, baseline.latency_max_ms)}")
    print(f"locksafe: client p99 latency: ours {ours.latency_p99_ms:.1f} ms, baseline {baseline.latency_p99_ms:.1f}"
          f" ms, ratio {ratio(ours.latency_p99_ms, baseline.latency_p99_ms)}")
    print(f"locksafe: failed client transactions: ours {ours.failed}, baseline {baseline.failed}"
          f" (aborted clients: ours {ours.aborted_clients}, baseline {baseline.aborted_clients})")
    print(f"locksafe: client transactions: ours {ours.transactions}, baseline {baseline.transactions},"
          f" ratio {ratio(ours.transactions, baseline.transactions)}")
    print(f"locksafe: migration time: ours {ours_s:.1f} s, baseline {baseline_s:.1f} s,"
          f" ratio {ratio(ours_s, baseline_s)}")
    return 0 if ours.ok else 1


if __name__ == "__main__":
    sys.exit(main())
