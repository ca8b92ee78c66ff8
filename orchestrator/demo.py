"""``bluegreen demo``: local blue (PG 15) + green (PG 18) + PgBouncer + pgbench traffic, one full run.

Everything lives in a temporary directory and is stopped at the end (unless ``keep``). Library code:
it reports through the Reporter and a ``note`` callback, and returns the run report plus a summary
of the client traffic (failed transactions, latency), so the CLI decides what to print.
"""

from __future__ import annotations

import os
import secrets as pysecrets
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from . import secrets
from .errors import BluegreenError, LocalEnvError
from .localenv import LocalCluster, LocalPgBouncer, Pgbench, PgbenchResult, debian_pg, embedded_pg
from .plan import load_plan
from .report import RunReport
from .reporter import Reporter
from .runner import Runner, RunOptions
from .sqlfiles import read_sql, sql_dir

DEMO_DB = "demo"


@dataclass
class DemoResult:
    report: RunReport
    traffic: PgbenchResult | None
    summary: str
    exit_code: int


def demo_plan_path() -> Path:
    """``plans/demo.yaml`` in a checkout, or the copy shipped inside the wheel."""
    return sql_dir().parent / "plans" / "demo.yaml"


def run_demo(reporter: Reporter, console_note: Callable[[str], object], keep: bool = False,
             traffic_seconds: int = 10, fail_validation: bool = False) -> DemoResult:
    """Start the local servers, run the demo plan under traffic, stop everything.

    :param traffic_seconds: pgbench runs at least this long, and until the plan has finished.
    :raises LocalEnvError: a server or a binary is missing (the message says what to install).
    """
    password = "pw-" + pysecrets.token_urlsafe(12)
    secrets.register(password)
    note = console_note
    with ExitStack() as stack:
        base = Path(tempfile.mkdtemp(prefix="bluegreen-demo-"))
        note(f"demo workspace: {base}")
        blue = LocalCluster("blue", debian_pg(15), base, password)
        green = LocalCluster("green", embedded_pg(), base, password)
        for cluster in (blue, green):
            note(f"starting {cluster.name}: PostgreSQL {cluster.bins.major} ({cluster.bins.bindir})")
            cluster.start()
            if not keep:
                stack.callback(cluster.stop)
            cluster.create_database(DEMO_DB)
        with blue.connect(DEMO_DB) as conn:
            conn.execute(read_sql("demo/blue.sql").encode())
        bouncer = LocalPgBouncer(base, blue.host, blue.port, password)
        bouncer.start()
        if not keep:
            stack.callback(bouncer.stop)
        note(f"PgBouncer on port {bouncer.port} (transaction pooling) in front of blue")

        def bench(name: str) -> Pgbench:
            return Pgbench(blue.bins, bouncer.host, bouncer.port, DEMO_DB, password, workdir=base / "pgbench",
                           clients=4, jobs=2, duration_s=_Traffic.ROUND_SECONDS,
                           script=sql_dir() / "demo" / "traffic.pgbench", name=name)

        note("pgbench: initializing its tables on blue")
        Pgbench(blue.bins, blue.host, blue.port, DEMO_DB, password, workdir=base / "pgbench-init").initialize(1)

        env = {**os.environ, "BLUE_DSN": blue.dsn(DEMO_DB), "GREEN_DSN": green.dsn(DEMO_DB),
               "PGBOUNCER_ADMIN_DSN": bouncer.admin_dsn(), "PGBOUNCER_INI": str(bouncer.ini_path)}
        if fail_validation:
            env["DEMO_EXTRA_CHECK"] = "SELECT count(*) = -1 FROM hydra_client"
        loaded = load_plan(demo_plan_path(), env)
        traffic = _Traffic(bench, traffic_seconds)
        traffic.start()
        note(f"pgbench: 4 clients through PgBouncer for at least {traffic_seconds}s")
        error: BluegreenError | None = None
        runner = Runner(loaded, reporter)
        try:
            report = runner.run(RunOptions())
        except BluegreenError as exc:
            error = exc
            report = runner.last_report or RunReport(loaded.plan.name, "run", status="failed")
            report.error = secrets.redact(str(exc))
        result = traffic.finish()
        summary = _summary(result, base if keep else None)
        if error is not None:
            summary = f"{summary}\nthe run failed: {secrets.redact(str(error))}"
            return DemoResult(report, result, summary, error.exit_code)
        return DemoResult(report, result, summary, 0 if result is not None and result.ok else 1)
    raise LocalEnvError("unreachable")  # pragma: no cover (ExitStack does not swallow)


class _Traffic:
    """pgbench in back-to-back rounds of a few seconds, for at least ``seconds`` and until stopped.

    pgbench prints its summary only when it ends by itself, so open-ended load is a series of short
    runs whose results are added up.
    """

    ROUND_SECONDS = 3

    def __init__(self, make: Callable[[str], Pgbench], seconds: int) -> None:
        self.make = make
        self.seconds = seconds
        self.results: list[PgbenchResult] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="demo-traffic", daemon=True)
        self._started = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def _loop(self) -> None:
        n = 0
        try:
            while not self._stop.is_set() or time.monotonic() - self._started < self.seconds:
                bench = self.make(f"round{n}")
                bench.start()
                self.results.append(bench.wait())
                n += 1
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self) -> PgbenchResult | None:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise LocalEnvError(f"pgbench traffic failed: {self.error}")
        if not self.results:
            return None
        elapsed = time.monotonic() - self._started
        maxima = [r.latency_max_ms for r in self.results if r.latency_max_ms is not None]
        total = sum(r.transactions for r in self.results)
        return PgbenchResult(
            returncode=max(r.returncode for r in self.results),
            transactions=total,
            failed=sum(r.failed for r in self.results),
            aborted_clients=sum(r.aborted_clients for r in self.results),
            tps=total / elapsed if elapsed > 0 else 0.0,
            latency_avg_ms=None,
            latency_max_ms=max(maxima) if maxima else None,
            stdout="".join(r.stdout for r in self.results[-1:]),
            stderr="".join(r.stderr for r in self.results),
        )


def _summary(result: PgbenchResult | None, kept: Path | None) -> str:
    lines = []
    if result is None:
        lines.append("client traffic: pgbench did not run")
    else:
        lines.append(
            f"client traffic through PgBouncer: {result.transactions} transactions, "
            f"{result.failed} failed, {result.aborted_clients} clients aborted, {result.tps:.0f} tps"
            + (f", max latency {result.latency_max_ms:.1f} ms" if result.latency_max_ms is not None else ""))
    if kept is not None:
        lines.append(f"servers left running in {kept} (--keep)")
    return "\n".join(lines)
