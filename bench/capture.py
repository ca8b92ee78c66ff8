"""Capture overhead on blue's write path, both methods in one run: each against no capture, side by side.

Prints, per method, a line per round and its median ratio, then

    capture: trigger against no capture: median of the per-round ratios M (min A, max B)
    capture: logical decoding against no capture: median of the per-round ratios M (min A, max B);
        target >= 0.97: met|MISSED

**Trigger** (``method: trigger``): one blue (PostgreSQL 15) with two identical pgbench databases (``pgbench -i``
at ``--scale``) and the capture's table and function (``sql/capture.sql``) in each. A round runs pgbench's
built-in ``simple-update`` (an UPDATE of ``pgbench_accounts`` by key, a SELECT, an INSERT into
``pgbench_history``) on both databases *at the same time*, ``--clients`` each, with the capture trigger the
``capture`` step installs (every update of ``pgbench_accounts``) on one of them; it changes sides every round.

**Logical** (``method: logical``, the default): the setting that costs is per cluster (``wal_level``), so two
identical clusters run side by side, ``wal_level = logical`` with the capture's publication and slot (made by
``orchestrator.logical`` as the capture and snapshot steps make them; the tables keep their default replica
identity, the primary key, as in a plan; ``--full`` gives ``pgbench_accounts`` REPLICA IDENTITY FULL) on
one, ``wal_level = replica`` and nothing on the other, swapped (restart) halfway. Nothing reads the slot
during the rounds: decoding is the replay's work (``bench/replay.py``), on its own connection.

Why side by side: on this project's 2-core VMs the tps of two identical runs made one after the other
differ by up to 40% (the machine's speed drifts from one ten-second window to the next), so "with, then
without" measured mostly the drift (per-round ratios from 0.59 to 1.16 with 8 rounds, ``--sequential``).
Run side by side, both sides share every moment of the machine: the CPU is saturated and shared fairly
between the two sides' backends, so the tps ratio is the ratio of what a transaction costs with and
without the capture, which is the overhead an operator's CPU-bound primary would see.

Every round starts from the same state: pgbench itself vacuums its small tables and empties
``pgbench_history``, and after each round ``pgbench_accounts`` is vacuumed and a checkpoint taken (the
trigger's events truncated); autovacuum is off, so it cannot land in one side and not the other. The first
round of each half is a warm-up, not counted.

``--when`` gives the trigger a WHEN condition, as a capture's ``when:`` does: rows the condition rejects
never call the trigger's function.

Run: .venv/bin/python bench/capture.py [--method both|trigger|logical] [--scale 10] [--clients 4] [--seconds 8]
     [--rounds 12] [--builtin simple-update] [--when CONDITION] [--sequential] [--full]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

from orchestrator.copy.names import QualifiedName, condition_sql
from orchestrator.localenv import LocalCluster, Pgbench, PgbenchResult, debian_pg
from orchestrator.logical import capture_name, create_slot, drop_capture, publication_sql
from orchestrator.sqlfiles import read_sql

PASSWORD = "pw-bench-capture"
DATABASES = ("bench_a", "bench_b")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4, help="pgbench clients on each side")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--builtin", default="simple-update",
                        help="pgbench's built-in script: simple-update (the captured table's update is most of the"
                             " transaction) or tpcb-like (pgbench's default: it also updates two other tables)")
    parser.add_argument("--sequential", action="store_true",
                        help="one side after the other (ABBA order) instead of side by side")
    parser.add_argument("--when", default=None,
                        help="a WHEN condition for the trigger, as a capture's 'when:' (e.g. a rare event:"
                             " \"NEW.abalance < -1000000\"); default: every update is captured")
    parser.add_argument("--method", choices=("both", "trigger", "logical"), default="both")
    parser.add_argument("--full", action="store_true", help="logical: REPLICA IDENTITY FULL on pgbench_accounts")
    args = parser.parse_args()
    results: dict[str, list[float]] = {}
    if args.method in ("both", "trigger"):
        results["trigger"] = trigger_rounds(args)
    if args.method in ("both", "logical"):
        results["logical"] = logical_rounds(args)
    for method, ratios in results.items():
        median = statistics.median(ratios)
        line = (f"capture: {'logical decoding' if method == 'logical' else 'trigger'} against no capture: median"
                f" of the per-round ratios {median:.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})")
        if method == "logical":
            line += f"; target >= 0.97: {'met' if median >= 0.97 else 'MISSED'}"
        print(line, flush=True)
    return 0


def trigger_rounds(args: argparse.Namespace) -> list[float]:
    """The trigger against no capture, two databases of one cluster side by side; the per-round ratios."""
    base_dir = Path(tempfile.mkdtemp(prefix="bluegreen-bench-capture-"))
    blue = LocalCluster("blue", debian_pg(15), base_dir, PASSWORD, settings={"autovacuum": "off"})
    try:
        blue.start()
        for db in DATABASES:
            blue.create_database(db)
            Pgbench(blue.bins, blue.host, blue.port, db, PASSWORD, workdir=base_dir / "pgbench").initialize(args.scale)
            with psycopg.connect(blue.dsn(db), autocommit=True) as conn:
                conn.execute(read_sql("capture.sql").encode())

        def pgbench(db: str, name: str) -> Pgbench:
            return Pgbench(blue.bins, blue.host, blue.port, db, PASSWORD, workdir=base_dir / "pgbench",
                           clients=args.clients, jobs=1 if not args.sequential else 2, duration_s=args.seconds,
                           builtin=args.builtin, latency_log=False, name=name)

        def finish(run: Pgbench) -> PgbenchResult:
            result = run.wait(args.seconds + 120)
            if not result.ok:
                raise SystemExit(f"pgbench {run.name} failed: {result.stderr[-500:]}")
            return result

        def trigger(db: str, on: bool) -> int:
            """Install (or drop) the capture on ``db``; dropping returns the events captured and resets the side."""
            with psycopg.connect(blue.dsn(db), autocommit=True) as conn:
                if on:
                    when = sql.SQL(" WHEN ({})").format(sql.SQL(condition_sql(args.when))) if args.when \
                        else sql.SQL("")
                    conn.execute(sql.SQL("CREATE TRIGGER bluegreen_capture_accounts AFTER UPDATE ON pgbench_accounts"
                                         " FOR EACH ROW{} EXECUTE FUNCTION bluegreen.capture_event('accounts')")
                                 .format(when))
                    return 0
                conn.execute("DROP TRIGGER bluegreen_capture_accounts ON pgbench_accounts")
                events = conn.execute("SELECT count(*) FROM bluegreen.capture_events").fetchone()
                conn.execute("TRUNCATE bluegreen.capture_events")
                return int(events[0]) if events else 0

        def reset() -> None:
            for db in DATABASES:
                with psycopg.connect(blue.dsn(db), autocommit=True) as conn:
                    conn.execute("VACUUM pgbench_accounts")
            with psycopg.connect(blue.dsn(DATABASES[0]), autocommit=True) as conn:
                conn.execute("CHECKPOINT")

        def side_by_side(n: int) -> tuple[float, float, int]:
            on, off = DATABASES if n % 2 == 0 else DATABASES[::-1]
            trigger(on, True)
            runs = [pgbench(on, f"with-{n}"), pgbench(off, f"without-{n}")]
            for run in runs:
                run.start()
            with_run, without_run = (finish(run) for run in runs)
            events = trigger(on, False)
            return with_run.tps, without_run.tps, events

        def one_after_other(n: int) -> tuple[float, float, int]:
            db = DATABASES[0]
            if n % 2 == 0:
                without = finish(_started(pgbench(db, f"without-{n}"))).tps
                reset()
                trigger(db, True)
                with_ = finish(_started(pgbench(db, f"with-{n}"))).tps
                events = trigger(db, False)
            else:
                trigger(db, True)
                with_ = finish(_started(pgbench(db, f"with-{n}"))).tps
                events = trigger(db, False)
                reset()
                without = finish(_started(pgbench(db, f"without-{n}"))).tps
            return with_, without, events

        round_ = one_after_other if args.sequential else side_by_side
        round_(-1)  # warm-up, not counted
        reset()
        with_trigger: list[float] = []
        without: list[float] = []
        mode = "one after the other" if args.sequential else "side by side"
        for n in range(args.rounds):
            w, wo, events = round_(n)
            reset()
            with_trigger.append(w)
            without.append(wo)
            print(f"capture: round {n + 1} ({mode}): without {wo:,.0f} tps, with {w:,.0f} tps, ratio {w / wo:.2f}"
                  f" ({events:,} events captured)", flush=True)
        ours = statistics.mean(with_trigger)
        baseline = statistics.mean(without)
        ratios = [w / wo for w, wo in zip(with_trigger, without, strict=True)]
        ratio = statistics.median(ratios)
        print(f"capture: pgbench -b {args.builtin}, {args.clients} clients a side; captured: "
              + (f"updates WHEN ({args.when})" if args.when else "every update"))
        print(f"capture: ours {ours:,.0f} tps (with the trigger), baseline {baseline:,.0f} tps (without),"
              f" mean ratio {ours / baseline:.2f}")
        print(f"capture: trigger: median of the per-round ratios {ratio:.2f} (min {min(ratios):.2f},"
              f" max {max(ratios):.2f})", flush=True)
        return ratios
    finally:
        blue.destroy()
        shutil.rmtree(base_dir, ignore_errors=True)


def logical_rounds(args: argparse.Namespace) -> list[float]:
    """Two clusters side by side, ``wal_level = logical`` with the capture's publication and slot on one of them
    (swapped halfway); the per-round ratios."""
    base_dir = Path(tempfile.mkdtemp(prefix="bluegreen-bench-capture-"))
    clusters = [LocalCluster(name, debian_pg(15), base_dir, PASSWORD, settings={"autovacuum": "off"})
                for name in ("blue_a", "blue_b")]
    try:
        for cluster in clusters:
            cluster.start()
            cluster.create_database("bench")
            Pgbench(cluster.bins, cluster.host, cluster.port, "bench", PASSWORD,
                    workdir=base_dir / "pgbench").initialize(args.scale)
            with psycopg.connect(cluster.dsn("bench"), autocommit=True) as conn:
                if args.full:
                    conn.execute("ALTER TABLE pgbench_accounts REPLICA IDENTITY FULL")
                conn.execute("ALTER TABLE pgbench_history REPLICA IDENTITY FULL")  # no key: what a plan must set

        def switch(logical_side: LocalCluster) -> None:
            """Restart both clusters with ``wal_level = logical`` on ``logical_side`` only; give it the slot."""
            name = capture_name(1, "capture")
            for cluster in clusters:
                with psycopg.connect(cluster.dsn("bench"), autocommit=True) as conn:
                    drop_capture(conn, name)
                    level = "logical" if cluster is logical_side else "replica"
                    conn.execute(sql.SQL("ALTER SYSTEM SET wal_level = {}").format(sql.Literal(level)))
                cluster.stop()
                cluster.start()
            with psycopg.connect(logical_side.dsn("bench"), autocommit=True) as conn:
                tables = [QualifiedName("public", t) for t in
                          ("pgbench_accounts", "pgbench_branches", "pgbench_history", "pgbench_tellers")]
                conn.execute(publication_sql(name, tables))
                create_slot(conn, name)

        def run(cluster: LocalCluster, name: str) -> Pgbench:
            return _started(Pgbench(cluster.bins, cluster.host, cluster.port, "bench", PASSWORD,
                                    workdir=base_dir / "pgbench", clients=args.clients, jobs=1,
                                    duration_s=args.seconds, builtin=args.builtin, latency_log=False, name=name))

        def reset() -> None:
            for cluster in clusters:
                with psycopg.connect(cluster.dsn("bench"), autocommit=True) as conn:
                    conn.execute("VACUUM pgbench_accounts")
                    conn.execute("CHECKPOINT")

        ratios: list[float] = []
        for half, logical_side in enumerate(clusters):
            other = clusters[1 - half]
            switch(logical_side)
            for n in range(-1, args.rounds // 2):  # round -1: warm-up, not counted
                runs = (run(logical_side, f"logical-{half}-{n}"), run(other, f"replica-{half}-{n}"))
                with_slot, without = (run_.wait(args.seconds + 120) for run_ in runs)
                if not (with_slot.ok and without.ok):
                    raise SystemExit(f"pgbench failed: {(with_slot.stderr + without.stderr)[-500:]}")
                reset()
                if n < 0:
                    continue
                ratios.append(with_slot.tps / without.tps)
                print(f"capture: round {len(ratios)} (side by side): wal_level=replica {without.tps:,.0f} tps,"
                      f" logical with a slot {with_slot.tps:,.0f} tps, ratio {ratios[-1]:.2f}", flush=True)
        identity = "REPLICA IDENTITY FULL" if args.full else "the primary key as replica identity"
        print(f"capture: pgbench -b {args.builtin}, {args.clients} clients a side; logical: wal_level=logical, the"
              f" capture's publication and pgoutput slot, {identity}; against wal_level=replica", flush=True)
        return ratios
    finally:
        for cluster in clusters:
            cluster.destroy()
        shutil.rmtree(base_dir, ignore_errors=True)


def _started(run: Pgbench) -> Pgbench:
    run.start()
    return run


if __name__ == "__main__":
    sys.exit(main())
