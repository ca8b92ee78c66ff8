"""The run journal: runs and step events in the ``bluegreen`` schema of the control cluster.

Locks: the schema is created under ``pg_advisory_xact_lock``; a run holds a *session* advisory
lock keyed on the plan name for its whole life (released by the server if the process dies, so a
``kill -9`` never leaves a stale lock), and the unique index ``runs_one_unfinished_per_plan``
lets the database itself refuse a second unfinished run of a plan. Every write is autocommitted
at once: the journal is what a resumed run trusts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from . import secrets
from .db import connect
from .errors import PlanChanged, RunInProgress, UsageError
from .sqlfiles import read_sql

LOCK_NAMESPACE = 25191  # "bg": the first key of every bluegreen advisory lock
UNFINISHED = ("running", "failed", "rollback_failed")


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One row of ``bluegreen.runs``."""

    run_id: int
    plan_name: str
    plan_sha256: str
    status: str
    attempt: int
    started_at: datetime
    finished_at: datetime | None
    error: str | None
    report: dict[str, Any] | None
    updated_at: datetime | None = None


class Journal:
    """Read and write the journal over one autocommit connection that also holds the run lock."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    @classmethod
    def open(cls, dsn: str, name: str, plan_name: str) -> Journal:
        """Connect to the control cluster, naming this process in ``application_name``."""
        app = f"bluegreen {plan_name} pid {os.getpid()}"[:63]
        return cls(connect(dsn, name, application_name=app))

    def close(self) -> None:
        self.conn.close()

    def exists(self) -> bool:
        row = self.conn.execute("SELECT to_regclass('bluegreen.runs') IS NOT NULL").fetchone()
        return bool(row and row[0])

    def ensure_schema(self) -> None:
        """Create the journal schema if missing (idempotent, serialized by an advisory lock)."""
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (LOCK_NAMESPACE,))
            self.conn.execute(read_sql("journal.sql").encode())

    def lock(self, plan_name: str) -> None:
        """Take the plan's session advisory lock, or say who holds it.

        :raises RunInProgress: naming the holder's server pid, client and start time.
        """
        row = self.conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))",
                                (LOCK_NAMESPACE, plan_name)).fetchone()
        if row and row[0]:
            return
        holder = self.conn.execute(
            "SELECT a.pid, a.application_name, a.client_addr::text, a.backend_start"
            " FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s"
            " AND l.objid = hashtext(%s)::oid AND l.objsubid = 2",
            (LOCK_NAMESPACE, plan_name)).fetchone()
        who = ""
        if holder:
            who = (f" (held by server pid {holder[0]}, {holder[1] or 'unnamed client'}"
                   f" from {holder[2] or 'local socket'}, since {holder[3]:%Y-%m-%d %H:%M:%S %Z})")
        raise RunInProgress(f"plan {plan_name!r} is being run by another bluegreen process{who};"
                            " wait for it to finish, or stop it before running again")

    def unlock(self, plan_name: str) -> None:
        self.conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_NAMESPACE, plan_name))

    def _runs(self, where: str, params: tuple[Any, ...]) -> list[RunRecord]:
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT run_id, plan_name, plan_sha256, status, attempt, started_at, finished_at, error, report,"
                f" updated_at FROM bluegreen.runs WHERE {where} ORDER BY run_id DESC", params)
            return [RunRecord(**row) for row in cur.fetchall()]

    def unfinished(self, plan_name: str) -> RunRecord | None:
        runs = self._runs("plan_name = %s AND finished_at IS NULL", (plan_name,))
        return runs[0] if runs else None

    def runs_of(self, plan_name: str) -> list[RunRecord]:
        """Every run of the plan, the newest first."""
        return self._runs("plan_name = %s", (plan_name,))

    def state_keys(self, run_id: int) -> list[str]:
        """The keys of a run's state (``put_state``)."""
        return [r[0] for r in self.conn.execute("SELECT key FROM bluegreen.run_state WHERE run_id = %s ORDER BY key",
                                                (run_id,)).fetchall()]

    def latest(self, plan_name: str) -> RunRecord | None:
        runs = self._runs("plan_name = %s", (plan_name,))
        return runs[0] if runs else None

    def run_of(self, plan_name: str, run_id: int) -> RunRecord | None:
        """Run ``run_id`` if it is one of ``plan_name``'s."""
        runs = self._runs("run_id = %s AND plan_name = %s", (run_id, plan_name))
        return runs[0] if runs else None

    def get(self, run_id: int) -> RunRecord:
        return self._runs("run_id = %s", (run_id,))[0]

    def begin(self, plan_name: str, sha256: str, restart: bool) -> tuple[RunRecord, bool]:
        """Resume the plan's unfinished run or start a new one; returns ``(run, resumed)``.

        :raises PlanChanged: the unfinished run was started from another version of the file.
        """
        current = self.unfinished(plan_name)
        if current is not None and not restart:
            if current.status == "rollback_failed":
                raise UsageError(f"run {current.run_id} of plan {plan_name!r} failed to roll back;"
                                 " finish it with 'bluegreen rollback' (or abandon it with --restart)")
            if current.plan_sha256 != sha256:
                raise PlanChanged(
                    f"the plan file changed since run {current.run_id} started (sha256 "
                    f"{current.plan_sha256[:12]} then, {sha256[:12]} now): run it with the original file"
                    " to resume, 'bluegreen rollback' to undo it, or --restart to abandon it")
            self.conn.execute("UPDATE bluegreen.runs SET status = 'running', attempt = attempt + 1,"
                              " error = NULL, updated_at = clock_timestamp() WHERE run_id = %s",
                              (current.run_id,))
            return self.get(current.run_id), True
        if current is not None:
            self.set_status(current.run_id, "abandoned", error="abandoned by --restart")
        row = self.conn.execute("INSERT INTO bluegreen.runs (plan_name, plan_sha256, status)"
                                " VALUES (%s, %s, 'running') RETURNING run_id", (plan_name, sha256)).fetchone()
        assert row is not None
        return self.get(int(row[0])), False

    def set_status(self, run_id: int, status: str, *, error: str | None = None,
                   report: dict[str, Any] | None = None) -> None:
        finished = status not in UNFINISHED
        self.conn.execute(
            "UPDATE bluegreen.runs SET status = %s, error = %s, updated_at = clock_timestamp(),"
            " finished_at = CASE WHEN %s THEN clock_timestamp() END,"
            " report = COALESCE(%s::jsonb, report) WHERE run_id = %s",
            (status, secrets.redact(error) if error else None, finished,
             json.dumps(secrets.redact_obj(report)) if report is not None else None, run_id))

    def record(self, run_id: int, step_id: str, phase: str, status: str, *, action_id: str | None = None,
               detail: dict[str, Any] | None = None) -> None:
        """Append one event; every string in ``detail`` is redacted first."""
        self.conn.execute(
            "INSERT INTO bluegreen.step_events (run_id, step_id, phase, action_id, status, detail)"
            " VALUES (%s, %s, %s, %s, %s, %s::jsonb)",
            (run_id, step_id, phase, action_id, status,
             json.dumps(secrets.redact_obj(detail), default=str) if detail is not None else None))

    def actions(self, run_id: int, phase: str, status: str) -> set[str]:
        rows = self.conn.execute(
            "SELECT DISTINCT action_id FROM bluegreen.step_events WHERE run_id = %s AND phase = %s"
            " AND status = %s AND action_id IS NOT NULL", (run_id, phase, status)).fetchall()
        return {r[0] for r in rows}

    def step_states(self, run_id: int) -> dict[tuple[str, str], tuple[str, dict[str, Any] | None]]:
        """The last step-level status (and its detail) of each ``(step_id, phase)``."""
        rows = self.conn.execute(
            "SELECT DISTINCT ON (step_id, phase) step_id, phase, status, detail FROM bluegreen.step_events"
            " WHERE run_id = %s AND action_id IS NULL ORDER BY step_id, phase, event_id DESC",
            (run_id,)).fetchall()
        return {(r[0], r[1]): (r[2], r[3]) for r in rows}

    def steps_touched(self, run_id: int) -> set[str]:
        """Steps with at least one action done (or a completed apply): what a rollback must undo."""
        rows = self.conn.execute(
            "SELECT DISTINCT step_id FROM bluegreen.step_events WHERE run_id = %s AND phase = 'apply'"
            " AND status = 'done'", (run_id,)).fetchall()
        return {r[0] for r in rows}

    def action_counts(self, run_id: int) -> dict[str, int]:
        """Applied actions per step."""
        rows = self.conn.execute(
            "SELECT step_id, count(DISTINCT action_id) FROM bluegreen.step_events WHERE run_id = %s"
            " AND phase = 'apply' AND status = 'done' AND action_id IS NOT NULL GROUP BY step_id",
            (run_id,)).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def put_state(self, run_id: int, key: str, value: Any) -> None:
        """Store a run-scoped fact for later steps (and resumed runs); ``value`` must be JSON."""
        self.conn.execute(
            "INSERT INTO bluegreen.run_state (run_id, key, value) VALUES (%s, %s, %s::jsonb)"
            " ON CONFLICT (run_id, key) DO UPDATE SET value = EXCLUDED.value, updated_at = clock_timestamp()",
            (run_id, key, json.dumps(secrets.redact_obj(value), default=str)))

    def get_state(self, run_id: int, key: str) -> Any:
        """A fact stored by :meth:`put_state` in this run, or None."""
        row = self.conn.execute("SELECT value FROM bluegreen.run_state WHERE run_id = %s AND key = %s",
                                (run_id, key)).fetchone()
        return row[0] if row else None

    def events(self, run_id: int) -> list[dict[str, Any]]:
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SELECT event_id, step_id, phase, action_id, status, at, detail"
                        " FROM bluegreen.step_events WHERE run_id = %s ORDER BY event_id", (run_id,))
            return list(cur.fetchall())

    # -- time series (orchestrator/sampler.py) -----------------------------------------------------

    def add_samples(self, run_id: int, data: dict[str, Any], *, thinned: bool = False) -> None:
        """Append one batch of ticks (``orchestrator/timeseries.py``'s format); strings are redacted first."""
        times = [float(x) for x in data.get("t") or []] + [float(m[0]) for m in data.get("m") or []]
        if not times:
            return
        self.conn.execute(
            "INSERT INTO bluegreen.samples (run_id, t0, t1, ticks, thinned, data)"
            " VALUES (%s, %s, %s, %s, %s, %s::jsonb)",
            (run_id, min(times), max(times), len(data.get("t") or []), thinned,
             json.dumps(secrets.redact_obj(data), separators=(",", ":"))))

    def samples(self, run_id: int) -> list[dict[str, Any]]:
        """Every batch of the run, oldest first (empty on a journal from before the table existed)."""
        row = self.conn.execute("SELECT to_regclass('bluegreen.samples') IS NOT NULL").fetchone()
        if not row or not row[0]:
            return []
        rows = self.conn.execute("SELECT data FROM bluegreen.samples WHERE run_id = %s ORDER BY t0, batch_id",
                                 (run_id,)).fetchall()
        return [r[0] for r in rows]

    def thin_samples(self, run_id: int, before: float, resolution: float, window: float = 600.0) -> int:
        """Merge the full-resolution batches of each ``window`` seconds wholly before ``before`` into one thinned
        batch, one tick per ``resolution`` seconds (:func:`timeseries.thin`); returns the batches replaced."""
        from . import timeseries

        rows = self.conn.execute(
            "SELECT batch_id, t0, data FROM bluegreen.samples WHERE run_id = %s AND NOT thinned AND t1 < %s"
            " ORDER BY t0, batch_id", (run_id, before)).fetchall()
        groups: list[list[tuple[int, float, dict[str, Any]]]] = []
        for batch_id, t0, data in rows:
            if not groups or t0 - groups[-1][0][1] >= window:
                groups.append([])
            groups[-1].append((int(batch_id), float(t0), data))
        replaced = 0
        for group in groups:
            if group[0][1] + window > before:  # the window is not over yet: thin it whole, later
                continue
            merged = timeseries.thin(timeseries.decode_all(d for _, _, d in group), resolution)
            with self.conn.transaction():
                self.conn.execute("DELETE FROM bluegreen.samples WHERE run_id = %s AND batch_id = ANY(%s)",
                                  (run_id, [b for b, _, _ in group]))
                self.add_samples(run_id, timeseries.encode(merged), thinned=True)
            replaced += len(group)
        return replaced

