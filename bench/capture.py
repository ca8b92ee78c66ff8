"""Capture overhead: pgbench tps on the captured table, with and without the capture trigger, in one run.

Starts its own blue (PostgreSQL 15), ``pgbench -i`` at ``--scale``, then runs pgbench's built-in
``simple-update`` (an UPDATE of ``pgbench_accounts`` by key, a SELECT, an INSERT into
``pgbench_history``) alternately (in ABBA order) without and with a capture of every update of ``pgbench_accounts``
(the trigger and function the ``capture`` step installs, ``sql/capture.sql``), ``--rounds`` times each,
and compares the mean tps:

    capture: ours X tps (with the trigger), baseline Y tps (without), ratio X/Y (target >= 0.9)

Run: .venv/bin/python bench/capture.py [--scale 10] [--clients 4] [--seconds 10] [--rounds 6]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import psycopg

from orchestrator.localenv import LocalCluster, Pgbench, debian_pg
from orchestrator.sqlfiles import read_sql

PASSWORD = "pw-bench-capture"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()

    base_dir = Path(tempfile.mkdtemp(prefix="bluegreen-bench-capture-"))
    blue = LocalCluster("blue", debian_pg(15), base_dir, PASSWORD)
    try:
        blue.start()
        blue.create_database("bench")
        bins = blue.bins

        def bench(name: str) -> float:
            run = Pgbench(bins, blue.host, blue.port, "bench", PASSWORD, workdir=base_dir / "pgbench",
                          clients=args.clients, jobs=2, duration_s=args.seconds, builtin="simple-update",
                          extra_args=["-n"], latency_log=False, name=name)
            run.start()
            result = run.wait(args.seconds + 120)
            if not result.ok:
                raise SystemExit(f"pgbench {name} failed: {result.stderr[-500:]}")
            return result.tps

        Pgbench(bins, blue.host, blue.port, "bench", PASSWORD, workdir=base_dir / "pgbench").initialize(args.scale)
        with psycopg.connect(blue.dsn("bench"), autocommit=True) as conn:
            conn.execute(read_sql("capture.sql").encode())
        without: list[float] = []
        with_trigger: list[float] = []

        def trigger(on: bool) -> int:
            with psycopg.connect(blue.dsn("bench"), autocommit=True) as conn:
                if on:
                    conn.execute("CREATE TRIGGER bluegreen_capture_accounts AFTER UPDATE ON pgbench_accounts"
                                 " FOR EACH ROW EXECUTE FUNCTION bluegreen.capture_event('accounts')")
                    return 0
                conn.execute("DROP TRIGGER bluegreen_capture_accounts ON pgbench_accounts")
                events = conn.execute("SELECT count(*) FROM bluegreen.capture_events").fetchone()
                conn.execute("TRUNCATE bluegreen.capture_events")
                return int(events[0]) if events else 0

        bench("warmup")
        for n in range(args.rounds):
            # ABBA: odd rounds run the trigger first, so a drift of the machine over the run (checkpoints, the
            # table growing, a neighbour's load) weighs on both sides alike instead of on the second one.
            if n % 2 == 0:
                without.append(bench(f"without-{n}"))
                trigger(True)
                with_trigger.append(bench(f"with-{n}"))
                events = trigger(False)
            else:
                trigger(True)
                with_trigger.append(bench(f"with-{n}"))
                events = trigger(False)
                without.append(bench(f"without-{n}"))
            print(f"capture: round {n + 1}: without {without[-1]:,.0f} tps, with {with_trigger[-1]:,.0f} tps,"
                  f" ratio {with_trigger[-1] / without[-1]:.2f} ({events:,} events captured)", flush=True)
        ours = statistics.mean(with_trigger)
        baseline = statistics.mean(without)
        ratio = ours / baseline
        print(f"capture: ours {ours:,.0f} tps (with the trigger), baseline {baseline:,.0f} tps (without),"
              f" ratio {ratio:.2f} (target >= 0.9: {'met' if ratio >= 0.9 else 'MISSED'})")
        return 0
    finally:
        blue.destroy()
        shutil.rmtree(base_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
