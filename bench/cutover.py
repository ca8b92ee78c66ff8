"""Cutover under load: pause and clients' max stall over N cutovers, against the same load with no cutover.

Starts its own blue (PG 15), green (PG 18) and PgBouncer (transaction pooling), runs pgbench with 8
clients through PgBouncer, cuts over blue -> green mid-load, rolls back, and repeats. Prints:

    cutover: pause median X ms, max Y ms
    cutover: client max stall median A ms, max B ms (baseline, no cutover: C ms), ratio A/C
    cutover: failed client transactions 0, aborted clients 0

Targets (issue 6): median pause < 250 ms, max client stall < 1 s, 0 errors.
With ``--sampler both`` the runs alternate with and without the run's sampler (orchestrator/sampler.py),
which must not slow the pause, and it also prints:

    cutover: pause median with the sampler X ms, without Y ms, ratio X/Y

Run: .venv/bin/python bench/cutover.py [--runs 5] [--seconds 6] [--sampler on|off|both]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.localenv import LocalCluster, LocalPgBouncer, Pgbench, PgbenchResult, debian_pg, embedded_pg
from orchestrator.plan import load_plan
from orchestrator.runner import Runner, RunOptions

PASSWORD = "pw-bench-cutover"
DB = "bench"


def plan_text(bouncer: LocalPgBouncer) -> str:
    return f"""version: 1
name: bench-cutover
clusters:
  blue: {{dsn: "${{BLUE_DSN}}"}}
  green: {{dsn: "${{GREEN_DSN}}"}}
steps:
  - id: cutover
    kind: cutover
    pause_budget: 2s
    switches:
      - {{pgbouncer: {{admin_dsn: "{bouncer.admin_dsn()}", ini: "{bouncer.ini_path}", database: {DB}}}}}
"""


def load(blue: LocalCluster, bouncer: LocalPgBouncer, workdir: Path, seconds: int, name: str) -> Pgbench:
    bench = Pgbench(blue.bins, bouncer.host, bouncer.port, DB, PASSWORD, workdir=workdir, clients=8, jobs=2,
                    duration_s=seconds, builtin="simple-update", name=name)
    bench.start()
    return bench


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=6, help="pgbench duration per run")
    parser.add_argument("--sampler", choices=("on", "off", "both"), default="on",
                        help="sample the runs' time series (both: alternate, and compare the pauses)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bluegreen-bench-cutover-"))
    blue = LocalCluster("blue", debian_pg(15), base, PASSWORD)
    green = LocalCluster("green", embedded_pg(), base, PASSWORD)
    bouncer: LocalPgBouncer | None = None
    try:
        for cluster in (blue, green):
            cluster.start()
            cluster.create_database(DB)
            Pgbench(cluster.bins, cluster.host, cluster.port, DB, PASSWORD, workdir=base / cluster.name).initialize(1)
        bouncer = LocalPgBouncer(base, blue.host, blue.port, PASSWORD)
        bouncer.start()
        plan_path = base / "plan.yaml"
        plan_path.write_text(plan_text(bouncer))
        env = {"BLUE_DSN": blue.dsn(DB), "GREEN_DSN": green.dsn(DB)}

        baseline = load(blue, bouncer, base / "load", args.seconds, "baseline").wait()
        results: list[PgbenchResult] = []
        pauses: list[float] = []
        sampled: list[bool] = []
        for run in range(args.runs):
            sample = args.sampler == "on" or (args.sampler == "both" and run % 2 == 0)
            sampled.append(sample)
            runner = Runner(load_plan(plan_path, env))
            bench = load(blue, bouncer, base / "load", args.seconds, f"run{run}")
            time.sleep(args.seconds / 3)
            report = runner.run(RunOptions(restart=True, sample=sample))
            results.append(bench.wait())
            if report.status != "done":
                print(f"cutover: run {run} ended {report.status}: {report.error}", file=sys.stderr)
                return 1
            with blue.connect(DB) as conn:
                row = conn.execute("SELECT (value->>'pause_ms')::float FROM bluegreen.run_state"
                                   " WHERE key = 'cutover:cutover' ORDER BY run_id DESC LIMIT 1").fetchone()
            pauses.append(float(row[0]) if row else float("nan"))
            Runner(load_plan(plan_path, env)).rollback(sample=sample)  # traffic back to blue for the next run
        stalls = [r.latency_max_ms or float("nan") for r in results]
        base_stall = baseline.latency_max_ms or float("nan")
        failed = sum(r.failed for r in results)
        aborted = sum(r.aborted_clients for r in results)
        print(f"cutover: pause median {statistics.median(pauses):.0f} ms, max {max(pauses):.0f} ms"
              f" over {args.runs} cutovers")
        print(f"cutover: client max stall median {statistics.median(stalls):.0f} ms, max {max(stalls):.0f} ms"
              f" (baseline, no cutover: {base_stall:.0f} ms), ratio {statistics.median(stalls) / base_stall:.1f}")
        print(f"cutover: failed client transactions {failed}, aborted clients {aborted}")
        if args.sampler == "both":
            on = [p for p, s in zip(pauses, sampled, strict=True) if s]
            off = [p for p, s in zip(pauses, sampled, strict=True) if not s]
            if on and off:
                print(f"cutover: pause median with the sampler {statistics.median(on):.0f} ms, without"
                      f" {statistics.median(off):.0f} ms, ratio {statistics.median(on) / statistics.median(off):.2f}")
        ok = statistics.median(pauses) < 250 and max(stalls) < 1000 and failed == 0 and aborted == 0
        print(f"cutover: targets (median pause < 250 ms, max stall < 1 s, 0 errors): {'met' if ok else 'NOT met'}")
        return 0 if ok else 1
    finally:
        if bouncer is not None:
            bouncer.destroy()
        blue.destroy()
        green.destroy()


if __name__ == "__main__":
    sys.exit(main())
