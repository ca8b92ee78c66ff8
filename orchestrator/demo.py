"""``bluegreen demo``: local blue (PG 15) + green (PG 18) + PgBouncer + pgbench traffic, one full run.

A run is a scenario (``DemoScenario``: plans/demo.yaml on a small token store; ``orchestrator.hydra.scenario``:
plans/hydra.yaml on Hydra v1.11.10 at scale), on the same servers, traffic loop and report.

Everything lives in a temporary directory and is stopped at the end (unless ``keep``). Library code:
it reports through the Reporter and a ``note`` callback, and returns the run report plus a summary
of the client traffic (failed transactions, latency), so the CLI decides what to print.
"""

from __future__ import annotations

import os
import secrets as pysecrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from . import secrets
from .errors import BluegreenError, LocalEnvError
from .localenv import LocalCluster, LocalPgBouncer, Pgbench, PgbenchResult, debian_pg, embedded_pg
from .plan import LoadedPlan, load_plan
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
    # what the scenario's side traffic recorded (hydra: consent revocations), for the caller and the tests
    extra: dict[str, Any] = field(default_factory=dict)
    page: Path | None = None  # the run's HTML report, when asked for


def demo_plan_path() -> Path:
    """``plans/demo.yaml`` in a checkout, or the copy shipped inside the wheel."""
    return sql_dir().parent / "plans" / "demo.yaml"


@dataclass
class Servers:
    """The local servers of one scenario run (blue, green, PgBouncer in front of blue) and its workspace."""

    base: Path
    blue: LocalCluster
    green: LocalCluster
    bouncer: LocalPgBouncer
    password: str


class Scenario(Protocol):
    """What differs between ``bluegreen demo`` runs: the database, its plan, the load and the side traffic."""

    name: str
    dbname: str
    plan_path: Path
    clients: int

    def prepare(self, servers: Servers, note: Callable[[str], object]) -> None:
        """Load blue (the servers are up, the database exists on both sides, PgBouncer is not started)."""

    def pgbench_script(self) -> Path: ...

    def pgbench_args(self) -> list[str]: ...

    def env(self, servers: Servers) -> dict[str, str]:
        """Variables for the plan, beside BLUE_DSN, GREEN_DSN, PGBOUNCER_ADMIN_DSN, PGBOUNCER_INI."""

    def start_side_traffic(self, servers: Servers) -> None: ...

    def finish_side_traffic(self) -> dict[str, Any]: ...

    def after_run(self, servers: Servers) -> dict[str, Any]:
        """Read the outcome off both clusters before they stop (for the report and the tests)."""


class DemoScenario:
    """``make demo``: a small Hydra-like token store (sql/demo/) and plans/demo.yaml."""

    name = "demo"
    dbname = DEMO_DB
    clients = 4

    def __init__(self, fail_validation: bool = False) -> None:
        self.fail_validation = fail_validation
        self.plan_path = demo_plan_path()

    def prepare(self, servers: Servers, note: Callable[[str], object]) -> None:
        with servers.blue.connect(DEMO_DB) as conn:
            conn.execute(read_sql("demo/blue.sql").encode())
        note("pgbench: initializing its tables on blue")
        Pgbench(servers.blue.bins, servers.blue.host, servers.blue.port, DEMO_DB, servers.password,
                workdir=servers.base / "pgbench-init").initialize(1)

    def pgbench_script(self) -> Path:
        return sql_dir() / "demo" / "traffic.pgbench"

    def pgbench_args(self) -> list[str]:
        return []

    def env(self, servers: Servers) -> dict[str, str]:
        return {"DEMO_EXTRA_CHECK": "SELECT count(*) = -1 FROM hydra_client"} if self.fail_validation else {}

    def start_side_traffic(self, servers: Servers) -> None:
        return None

    def finish_side_traffic(self) -> dict[str, Any]:
        return {}

    def after_run(self, servers: Servers) -> dict[str, Any]:
        return {}


def run_demo(reporter: Reporter, console_note: Callable[[str], object], keep: bool = False,
             traffic_seconds: int = 10, fail_validation: bool = False, page: Path | None = None) -> DemoResult:
    """Start the local servers, run the demo plan under traffic, stop everything.

    :param traffic_seconds: pgbench runs at least this long, and until the plan has finished.
    :param page: write the run's HTML report there (with the clients' latency and tps per second).
    :raises LocalEnvError: a server or a binary is missing (the message says what to install).
    """
    return run_scenario(DemoScenario(fail_validation), reporter, console_note, keep, traffic_seconds, page)


def run_scenario(scenario: Scenario, reporter: Reporter, console_note: Callable[[str], object], keep: bool = False,
                 traffic_seconds: int = 10, page: Path | None = None) -> DemoResult:
    """Start blue (PG 15), green (PG 18) and PgBouncer, load blue, run the scenario's plan under pgbench traffic
    through PgBouncer (and its side traffic), stop everything (unless ``keep``); with ``page``, write the run's
    HTML report there first, the clients' per-second series included."""
    password = "pw-" + pysecrets.token_urlsafe(12)
    secrets.register(password)
    note = console_note
    with ExitStack() as stack:
        base = Path(tempfile.mkdtemp(prefix=f"bluegreen-{scenario.name}-"))
        if not keep:
            stack.callback(shutil.rmtree, base, True)  # last: after the servers are gone
        note(f"{scenario.name} workspace: {base}")
        blue = LocalCluster("blue", debian_pg(15), base, password)
        green = LocalCluster("green", embedded_pg(), base, password)
        for cluster in (blue, green):
            note(f"starting {cluster.name}: PostgreSQL {cluster.bins.major} ({cluster.bins.bindir})")
            cluster.start()
            if not keep:
                stack.callback(cluster.destroy)  # stops it, then deletes its files
            cluster.create_database(scenario.dbname)
        bouncer = LocalPgBouncer(base, blue.host, blue.port, password)
        servers = Servers(base, blue, green, bouncer, password)
        scenario.prepare(servers, note)
        bouncer.start()
        if not keep:
            stack.callback(bouncer.destroy)
        note(f"PgBouncer on port {bouncer.port} (transaction pooling) in front of blue")

        def bench(name: str) -> Pgbench:
            return Pgbench(blue.bins, bouncer.host, bouncer.port, scenario.dbname, password,
                           workdir=base / "pgbench", clients=scenario.clients, jobs=2,
                           duration_s=_Traffic.ROUND_SECONDS, script=scenario.pgbench_script(),
                           extra_args=scenario.pgbench_args(), name=name)

        env = {**os.environ, "BLUE_DSN": blue.dsn(scenario.dbname), "GREEN_DSN": green.dsn(scenario.dbname),
               "PGBOUNCER_ADMIN_DSN": bouncer.admin_dsn(), "PGBOUNCER_INI": str(bouncer.ini_path),
               **scenario.env(servers)}
        loaded = load_plan(scenario.plan_path, env)
        traffic = _Traffic(bench, traffic_seconds)
        traffic.start()
        scenario.start_side_traffic(servers)
        note(f"pgbench: {scenario.clients} clients through PgBouncer for at least {traffic_seconds}s")
        error: BluegreenError | None = None
        runner = Runner(loaded, reporter)
        try:
            report = runner.run(RunOptions())
        except BluegreenError as exc:
            error = exc
            report = runner.last_report or RunReport(loaded.plan.name, "run", status="failed")
            report.error = secrets.redact(str(exc))
        finally:
            extra = scenario.finish_side_traffic()
        result = traffic.finish()
        extra.update(scenario.after_run(servers))
        summary = _summary(result, base if keep else None)
        written = _page(loaded, report, result, page) if page is not None else None
        if error is not None:
            summary = f"{summary}\nthe run failed: {secrets.redact(str(error))}"
            return DemoResult(report, result, summary, error.exit_code, extra, written)
        return DemoResult(report, result, summary, 0 if result is not None and result.ok else 1, extra, written)
    raise LocalEnvError("unreachable")  # pragma: no cover (ExitStack does not swallow)


def _page(loaded: LoadedPlan, report: RunReport, traffic: PgbenchResult | None, path: Path) -> Path | None:
    """The run's page, with the client side: pgbench's per-second series and totals kept in the journal first."""
    if report.run_id is None:
        return None
    from . import htmlreport

    if traffic is not None:
        htmlreport.record_client(loaded, report.run_id, traffic.per_second, {
            "transactions": traffic.transactions, "failed": traffic.failed,
            "aborted_clients": traffic.aborted_clients, "tps": round(traffic.tps, 1),
            "latency_max_ms": traffic.latency_max_ms})
    return htmlreport.write(loaded, path, report.run_id).resolve()


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
            per_second=_merge_seconds(r.per_second for r in self.results),
        )


def _merge_seconds(rounds: Iterable[list[list[float]]]) -> list[list[float]]:
    """The rounds' per-second aggregates as one series (a second two rounds share is added up)."""
    merged: dict[float, list[float]] = {}
    for per_second in rounds:
        for second, count, latency_sum, latency_max, failed in per_second:
            into = merged.setdefault(second, [0, 0.0, 0.0, 0])
            into[0] += count
            into[1] += latency_sum
            into[2] = max(into[2], latency_max)
            into[3] += failed
    return [[second, *values] for second, values in sorted(merged.items())]


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
