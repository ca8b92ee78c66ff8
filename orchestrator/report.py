"""The run report: per step its duration, actions and ``pg_stat_database`` deltas on each cluster.

Counters are read from ``pg_stat_database`` for the plan's database on each cluster before and
after each step. They are database-wide: concurrent client traffic and bluegreen's own journal
writes (a few rows per action on the control cluster) are included, as in the articles' tables.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import psycopg

from .db import connect
from .errors import ConnectionFailed

COUNTERS = ("tup_inserted", "tup_updated", "tup_deleted", "temp_bytes", "xact_commit")
Stats = dict[str, dict[str, int]]


@dataclass
class StepReport:
    """What one step did in this run (across resumed attempts)."""

    id: str
    kind: str
    status: str = "pending"  # pending | done | skipped | failed | rolled_back | rendered
    seconds: float = 0.0
    actions_run: int = 0
    actions_skipped: int = 0
    stats: Stats = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # what it left behind (orchestrator/facts.py)


@dataclass
class RunReport:
    """The whole run, as printed at the end and written by ``--report FILE``."""

    plan: str
    mode: str  # run | dry-run | rollback
    run_id: int | None = None
    status: str = "running"
    resumed: bool = False
    seconds: float = 0.0
    steps: list[StepReport] = field(default_factory=list)
    rendered: list[dict[str, str]] = field(default_factory=list)
    rollback: list[str] = field(default_factory=list)
    error: str | None = None

    def step(self, step_id: str) -> StepReport:
        return next(s for s in self.steps if s.id == step_id)

    def totals(self) -> Stats:
        total: Stats = {}
        for step in self.steps:
            for cluster, counters in step.stats.items():
                bucket = total.setdefault(cluster, dict.fromkeys(COUNTERS, 0))
                for name, value in counters.items():
                    bucket[name] = bucket.get(name, 0) + value
        return total

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunReport:
        """A report as :meth:`to_dict` wrote it (the journal's ``runs.report``)."""
        names = {f.name for f in fields(StepReport)}
        steps = [StepReport(**{k: v for k, v in s.items() if k in names}) for s in data.get("steps") or []]
        return cls(str(data.get("plan", "")), str(data.get("mode", "run")), data.get("run_id"),
                   str(data.get("status", "")), bool(data.get("resumed")), float(data.get("seconds") or 0.0),
                   steps, list(data.get("rendered") or []), list(data.get("rollback") or []), data.get("error"))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["totals"] = self.totals()
        data["failed_step"] = next((s.id for s in self.steps if s.error), None)
        return data


class StatsReader:
    """Read ``pg_stat_database`` counters of the plan's database on each cluster.

    Stats of a backend reach ``pg_stat_database`` when it flushes them (on exit at the latest), so
    the runner closes its executor connections and waits for those backends to be gone before it
    takes the after-step reading.
    """

    def __init__(self, dsns: dict[str, str]) -> None:
        self._conns: dict[str, psycopg.Connection[Any]] = {}
        for name, dsn in dsns.items():
            try:
                self._conns[name] = connect(dsn, name, application_name="bluegreen stats")
            except ConnectionFailed:
                continue

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()

    def read(self) -> Stats:
        out: Stats = {}
        for name, conn in self._conns.items():
            row = conn.execute(
                "SELECT pg_stat_clear_snapshot(), " + ", ".join(COUNTERS)
                + " FROM pg_stat_database WHERE datname = current_database()").fetchone()
            if row is not None:
                out[name] = {c: int(v or 0) for c, v in zip(COUNTERS, row[1:], strict=True)}
        return out

    def wait_gone(self, backends: list[tuple[str, int]], timeout: float = 3.0) -> None:
        """Wait until the given ``(cluster, pid)`` backends have exited (and so flushed their stats)."""
        deadline = time.monotonic() + timeout
        for name, pid in backends:
            conn = self._conns.get(name)
            while conn is not None and time.monotonic() < deadline:
                row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
                if not row or row[0] == 0:
                    break
                time.sleep(0.01)


def delta(before: Stats, after: Stats) -> Stats:
    """Counter differences per cluster (clusters missing on one side are left out)."""
    return {name: {c: after[name][c] - before[name][c] for c in COUNTERS}
            for name in after if name in before}
