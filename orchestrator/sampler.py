"""Time series of a running plan: a thread samples both clusters about once a second into the journal.

What is sampled, per cluster, in one query each tick (its own autocommit connection, named
``bluegreen sampler`` so that the cutover's fence and session gate leave it alone):

- ``db/<cluster>/<counter>``: ``pg_stat_database`` of the plan's database (commits, rollbacks, temp
  bytes, tuples inserted, updated, deleted), cumulative; the page draws their rate;
- ``locks/<cluster>/bluegreen_waiting`` and ``clients_waiting``: sessions waiting for a lock, ours (a
  migration waiting on traffic) and the others (traffic waiting on a migration);
- ``copy/<table>/bytes`` and ``rows``: COPY FROM in flight (``pg_stat_progress_copy``), the snapshot's
  streams or a pg_restore;
- ``slot/<slot>/retained_bytes`` and ``pending_bytes``: logical replication slots named ``bluegreen%``
  (WAL kept, WAL not yet confirmed);
- ``capture/<capture>/captured``, ``applied``, ``pending``, ``lag_s``: trigger captures
  (``bluegreen.capture_events`` on the source, ``bluegreen.replay_progress`` on the target). Counting
  the captured events reads only the events past a watermark, and the watermark moves past an event
  number only once every transaction that could still commit a lower one has ended (the ``seq`` trap
  of DESIGN.md section 3), so the count is exact and each tick reads about one second's events.

And from the run itself, at no cost to the clusters: ``progress/<step>: <task>/<unit>`` from every
``ctx.progress`` (TTL and cleanup batches, replay rounds...), and marks: notes, failures, retries and
step phases (the cutover's ``pausing`` ... ``done``), with their time.

Bounded: a tick is buffered in memory (:class:`timeseries.BatchWriter`, a point only where a value
changed) and written every ``flush_every`` seconds as one row of ``bluegreen.samples``; batches older than
``full_resolution`` are thinned to one tick per ``thin_to`` seconds.

Never in the run's way: the run only appends to in-memory buffers under a lock; every query has a short
``statement_timeout`` and takes no lock (catalog views and ``bluegreen`` tables read in autocommit); a
failed tick or write is logged and the thread goes on; :meth:`Sampler.stop` (on every ending, failure
and rollback included) writes what is left and never raises.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from . import secrets
from .actions import Action, ActionResult
from .db import connect
from .journal import Journal
from .reporter import Reporter
from .timeseries import BatchWriter, Value, series_name

if TYPE_CHECKING:
    from .plan import LoadedPlan

log = logging.getLogger(__name__)

APPLICATION_NAME = "bluegreen sampler"
COUNTERS = ("xact_commit", "xact_rollback", "temp_bytes", "tup_inserted", "tup_updated", "tup_deleted")
MAX_MARKS = 2000
_HISTORY = 20_000

_CLUSTER_QUERY = """\
SELECT clock_timestamp(), d.xact_commit, d.xact_rollback, d.temp_bytes, d.tup_inserted, d.tup_updated, d.tup_deleted,
       a.ours_waiting, a.clients_waiting,
       least(a.oldest_writer, (SELECT min(prepared) FROM pg_prepared_xacts WHERE database = current_database())),
       (SELECT json_agg(json_build_array(c.relid::regclass::text, c.bytes_processed, c.tuples_processed))
          FROM pg_stat_progress_copy c WHERE c.datid = d.datid AND c.command = 'COPY FROM'),
       (SELECT json_agg(json_build_array(s.slot_name, pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint,
                                         pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint))
          FROM pg_replication_slots s WHERE s.slot_name LIKE 'bluegreen%' AND s.database = current_database()),
       to_regclass('bluegreen.capture_events') IS NOT NULL, to_regclass('bluegreen.replay_progress') IS NOT NULL,
       {events}, {progress}
  FROM pg_stat_database d CROSS JOIN LATERAL (
       SELECT count(*) FILTER (WHERE wait_event_type = 'Lock' AND application_name LIKE 'bluegreen%') AS ours_waiting,
              count(*) FILTER (WHERE wait_event_type = 'Lock' AND application_name NOT LIKE 'bluegreen%')
                AS clients_waiting,
              min(xact_start) FILTER (WHERE backend_xid IS NOT NULL) AS oldest_writer
         FROM pg_stat_activity WHERE datname = current_database()) a
 WHERE d.datname = current_database()"""

_EVENTS = ("(SELECT json_agg(json_build_array(capture, n, n_cut, mx)) FROM (SELECT capture, count(*) AS n,"
           " count(*) FILTER (WHERE seq <= {cut}) AS n_cut, max(seq) AS mx FROM bluegreen.capture_events"
           " WHERE seq > {low} AND capture = ANY({ids}) GROUP BY capture) x)")
_PROGRESS = ("(SELECT json_agg(json_build_array(capture, applied)) FROM bluegreen.replay_progress"
             " WHERE run_id = {run})")


@dataclass(frozen=True, slots=True)
class _Capture:
    id: str
    source: str
    target: str
    table: str  # as the snapshot state names it (schema.table)


@dataclass
class _Watermark:
    """Exact counts of one cluster's captured events, reading only those past ``low`` each tick.

    Events numbered at most ``low`` are counted in ``stable``. ``cut`` is where ``low`` moves next: the
    highest number seen at a tick that every transaction still able to write an event started after;
    any event it could still commit is numbered above ``cut``.
    """

    low: int = 0
    cut: int = 0
    max_seen: int = 0
    stable: dict[str, int] = field(default_factory=dict)
    seen: deque[tuple[datetime, int]] = field(default_factory=deque)

    def update(self, rows: list[list[Any]], now: datetime, oldest_writer: datetime | None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for capture, n, n_cut, mx in rows:
            counts[capture] = self.stable.get(capture, 0) + int(n)
            self.stable[capture] = self.stable.get(capture, 0) + int(n_cut)
            self.max_seen = max(self.max_seen, int(mx or 0))
        for capture, n in self.stable.items():
            counts.setdefault(capture, n)
        self.low = self.cut
        self.seen.append((now, self.max_seen))
        horizon = oldest_writer or now
        while len(self.seen) > 1 and self.seen[1][0] < horizon:
            self.seen.popleft()
        if self.seen[0][0] < horizon:
            self.cut = max(self.low, self.seen[0][1])
        return counts


@dataclass
class _Backlog:
    """One capture's committed-and-not-applied events over time, and how old the oldest is."""

    in_copy: int | None = None  # events the snapshot already had (never replayed); None: not known yet
    history: deque[tuple[float, int]] = field(default_factory=deque)

    def measure(self, at: float, captured: int, applied: int) -> tuple[int, float]:
        done = (self.in_copy or 0) + applied
        pending = max(0, captured - done)
        self.history.append((at, captured))
        while len(self.history) > 1 and (self.history[1][1] <= done or len(self.history) > _HISTORY):
            self.history.popleft()
        if pending == 0:
            return 0, 0.0
        first = next((t for t, c in self.history if c > done), at)
        return pending, max(0.0, at - first)


def _task_key(task: str) -> str:
    """A progress task's stable part: ``replay c1 (round, up to seq 812)`` and ``replay c1: lag 3 events``
    are both ``replay c1``."""
    text = re.sub(r"\s*\([^)]*\)", "", task).strip()
    head, sep, tail = text.partition(":")
    if sep and re.search(r"\d", tail):
        text = head.strip()
    return text or task


class Sampler:
    """Sample a run's clusters into ``bluegreen.samples`` from a thread of its own (see the module doc).

    :param dsns: ``{"blue": dsn, "green": dsn}``; ``control`` names the one holding the journal.
    """

    def __init__(self, loaded: LoadedPlan, dsns: Mapping[str, str], control: str, run_id: int, *,
                 interval: float = 1.0, flush_every: float = 10.0, full_resolution: float = 3600.0,
                 thin_to: float = 10.0) -> None:
        self.dsns = dict(dsns)
        self.control = control
        self.run_id = run_id
        self.interval = interval
        self.flush_every = flush_every
        self.full_resolution = full_resolution
        self.thin_to = thin_to
        self.captures = _captures(loaded)
        self.snapshot_source = _snapshot_source(loaded)
        self.errors = 0  # failed ticks and writes, for tests and the log
        self._lock = threading.Lock()
        self._pushed: dict[str, Value] = {}
        self._writer = BatchWriter()
        self._unsent: deque[dict[str, Any]] = deque(maxlen=360)
        self._marks = 0
        self._conns: dict[str, psycopg.Connection[Any]] = {}
        self._journal: Journal | None = None
        self._tables: dict[str, tuple[bool, bool]] = {}
        self._watermarks: dict[str, _Watermark] = {}
        self._backlogs: dict[str, _Backlog] = {c.id: _Backlog() for c in self.captures}
        self._applied: dict[str, int] = {}
        self._captured: dict[str, int] = {}
        self._described: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bluegreen-sampler", daemon=True)
        self._started = 0.0
        self._last_error_log = 0.0

    # -- what the run feeds in (any thread, never blocks on I/O) ---------------------------------

    def progress(self, step_id: str, task: str, done: float, unit: str) -> None:
        name = series_name("progress", f"{step_id}: {_task_key(task)}", unit or "done")
        with self._lock:
            self._pushed[name] = done

    def mark(self, kind: str, step_id: str, text: str) -> None:
        with self._lock:
            if self._marks >= MAX_MARKS and kind == "note":
                return
            self._marks += 1
            self._writer.mark(time.time(), kind, step_id, secrets.redact(text))

    # -- life --------------------------------------------------------------------------------------

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Take a last tick, write everything, close the connections; never raises."""
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the sampler did not stop within %gs; its last samples may be missing", timeout)

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        next_tick = time.monotonic()
        last_flush = time.monotonic()
        try:
            while True:
                self._tick()
                now = time.monotonic()
                if now - last_flush >= self.flush_every:
                    self._flush()
                    last_flush = now
                next_tick += self.interval
                if next_tick < now:
                    next_tick = now + self.interval
                if self._stop.wait(max(0.0, next_tick - time.monotonic())):
                    break
            self._tick()
            self._flush()
        except BaseException:  # the sampler must never take the run down
            log.exception("the sampler stopped")
        finally:
            for conn in [*self._conns.values(), *([self._journal.conn] if self._journal else [])]:
                with contextlib.suppress(psycopg.Error):
                    conn.close()

    def _failed(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._last_error_log >= 60:
            self._last_error_log = now
            log.warning("sampler: %s: %s (sampling goes on)", what,
                        secrets.redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__))

    # -- one tick ----------------------------------------------------------------------------------

    def _conn(self, cluster: str) -> psycopg.Connection[Any]:
        conn = self._conns.get(cluster)
        if conn is None or conn.closed:
            conn = connect(self.dsns[cluster], cluster, connect_timeout=3, application_name=APPLICATION_NAME)
            conn.execute("SET statement_timeout = '2s'")
            conn.execute("SET lock_timeout = '100ms'")
            self._conns[cluster] = conn
        return conn

    def _tick(self) -> None:
        values: dict[str, Value] = {}
        at = time.time()
        for cluster in self.dsns:
            try:
                self._sample(cluster, at, values)
            except Exception as exc:
                self._failed(f"sampling {cluster}", exc)
                self._tables.pop(cluster, None)
                bad = self._conns.pop(cluster, None)
                if bad is not None:
                    bad.close()
        self._capture_series(at, values)
        with self._lock:
            values.update(self._pushed)
            self._writer.add(at, values)

    def _query(self, cluster: str) -> tuple[sql.Composed, bool]:
        """This tick's query of ``cluster``, and whether it counts captured events (they exist there)."""
        has_events, has_progress = self._tables.get(cluster, (False, False))
        ids = [c.id for c in self.captures if c.source == cluster]
        events: sql.Composable = sql.SQL("NULL::json")
        if has_events and ids:
            mark = self._watermarks.setdefault(cluster, _Watermark())
            events = sql.SQL(_EVENTS).format(cut=sql.Literal(mark.cut), low=sql.Literal(mark.low),
                                              ids=sql.Literal(ids))
        progress: sql.Composable = sql.SQL("NULL::json")
        if has_progress and any(c.target == cluster for c in self.captures):
            progress = sql.SQL(_PROGRESS).format(run=sql.Literal(self.run_id))
        return sql.SQL(_CLUSTER_QUERY).format(events=events, progress=progress), bool(has_events and ids)

    def _sample(self, cluster: str, at: float, values: dict[str, Value]) -> None:
        conn = self._conn(cluster)
        if cluster not in self._described:
            self._describe(cluster, conn)
        query, counts_events = self._query(cluster)
        row = conn.execute(query).fetchone()
        if row is not None and (bool(row[12]), bool(row[13])) != self._tables.get(cluster, (False, False)):
            # a capture or replay table just appeared: read it in this very tick, not one second later
            self._tables[cluster] = (bool(row[12]), bool(row[13]))
            query, counts_events = self._query(cluster)
            row = conn.execute(query).fetchone()
        if row is None:
            return
        now, *counters = row[:7]
        ours_waiting, clients_waiting, oldest_writer, copies, slots, has_events, has_progress, events, applied = row[7:]
        for name, value in zip(COUNTERS, counters, strict=True):
            values[series_name("db", cluster, name)] = int(value or 0)
        values[series_name("locks", cluster, "bluegreen_waiting")] = int(ours_waiting or 0)
        values[series_name("locks", cluster, "clients_waiting")] = int(clients_waiting or 0)
        per_table: dict[str, list[int]] = {}
        for relation, nbytes, rows in copies or []:
            total = per_table.setdefault(str(relation), [0, 0])
            total[0] += int(nbytes or 0)
            total[1] += int(rows or 0)
        for relation, (nbytes, rows) in per_table.items():
            values[series_name("copy", relation, "bytes")] = nbytes
            values[series_name("copy", relation, "rows")] = rows
        for slot, retained, pending in slots or []:
            values[series_name("slot", str(slot), "retained_bytes")] = int(retained or 0)
            values[series_name("slot", str(slot), "pending_bytes")] = int(pending or 0)
        if counts_events:
            counts = self._watermarks[cluster].update(list(events or []), now, oldest_writer)
            for c in self.captures:
                if c.source == cluster:
                    self._captured[c.id] = counts.get(c.id, 0)
        for capture, count in applied or []:
            self._applied[str(capture)] = int(count)
        self._tables[cluster] = (bool(has_events), bool(has_progress))
        if has_events:
            self._copy_boundary(cluster, conn)

    def _describe(self, cluster: str, conn: psycopg.Connection[Any]) -> None:
        """The cluster's version and database, once, in the run state (the page's header)."""
        row = conn.execute("SELECT current_setting('server_version'), current_database()").fetchone()
        journal = self._journal_conn()
        if row is None or journal is None:
            return
        clusters = journal.get_state(self.run_id, "report:clusters") or {}
        clusters[cluster] = {"version": str(row[0]), "database": str(row[1]),
                             "dsn": secrets.redact_dsn(self.dsns[cluster])}
        journal.put_state(self.run_id, "report:clusters", clusters)
        self._described.add(cluster)

    def _copy_boundary(self, cluster: str, conn: psycopg.Connection[Any]) -> None:
        """Once the snapshot is known: how many of each capture's events it already had (never replayed)."""
        waiting = [c for c in self.captures if c.source == cluster and self._backlogs[c.id].in_copy is None]
        if not waiting:
            return
        if self.snapshot_source is None or self.snapshot_source[1] != cluster:
            for c in waiting:
                self._backlogs[c.id].in_copy = 0
            return
        journal = self._journal_conn()
        state = journal.get_state(self.run_id, f"snapshot:{self.snapshot_source[0]}") if journal else None
        tables = (state or {}).get("tables") if isinstance(state, dict) else None
        if not tables:
            return
        for c in waiting:
            snapshot = tables.get(c.table)
            if not snapshot:
                self._backlogs[c.id].in_copy = 0
                continue
            row = conn.execute("SELECT count(*) FROM bluegreen.capture_events WHERE capture = %s"
                               " AND pg_visible_in_snapshot(xid, %s::pg_snapshot)", (c.id, snapshot)).fetchone()
            self._backlogs[c.id].in_copy = int(row[0]) if row else 0

    def _capture_series(self, at: float, values: dict[str, Value]) -> None:
        for c in self.captures:
            if c.id not in self._captured:
                continue
            captured = self._captured[c.id]
            applied = self._applied.get(c.id, 0)
            pending, lag = self._backlogs[c.id].measure(at, captured, applied)
            values[series_name("capture", c.id, "captured")] = captured
            values[series_name("capture", c.id, "applied")] = applied
            values[series_name("capture", c.id, "pending")] = pending
            values[series_name("capture", c.id, "lag_s")] = round(lag, 1)

    # -- writing -----------------------------------------------------------------------------------

    def _journal_conn(self) -> Journal | None:
        if self._journal is None or self._journal.conn.closed:
            try:
                conn = connect(self.dsns[self.control], self.control, connect_timeout=3,
                               application_name=APPLICATION_NAME)
                conn.execute("SET statement_timeout = '5s'")
                self._journal = Journal(conn)
            except Exception as exc:
                self._failed("connecting to the journal", exc)
                return None
        return self._journal

    def _flush(self) -> None:
        with self._lock:
            batch = self._writer.take()
        if batch is not None:
            self._unsent.append(batch)
        journal = self._journal_conn()
        if journal is None:
            return
        try:
            while self._unsent:
                journal.add_samples(self.run_id, self._unsent[0])
                self._unsent.popleft()
            if time.monotonic() - self._started > self.full_resolution:
                journal.thin_samples(self.run_id, time.time() - self.full_resolution, self.thin_to)
        except Exception as exc:
            self._failed("writing samples", exc)
            journal.conn.close()


class SamplingReporter(Reporter):
    """A Reporter that passes every event on and feeds progress, notes, retries and failures to a sampler."""

    def __init__(self, inner: Reporter, sampler: Sampler) -> None:
        self.inner = inner
        self.sampler = sampler
        self._step = ""

    def run_started(self, plan: str, run_id: int | None, mode: str, resumed: bool) -> None:
        self.sampler.mark("run", "", f"{mode} started" + (" (resumed)" if resumed else ""))
        self.inner.run_started(plan, run_id, mode, resumed)

    def step_started(self, step_id: str, kind: str, phase: str) -> None:
        self._step = step_id
        self.inner.step_started(step_id, kind, phase)

    def step_skipped(self, step_id: str, reason: str) -> None:
        self.inner.step_skipped(step_id, reason)

    def action_started(self, step_id: str, action: Action) -> None:
        self.inner.action_started(step_id, action)

    def action_finished(self, step_id: str, action: Action, result: ActionResult | None, skipped: str = "") -> None:
        if result is not None and result.attempts > 1 and not result.rendered:
            self.sampler.mark("retry", step_id, f"{action.id}: {result.attempts - 1} lock retries")
        self.inner.action_finished(step_id, action, result, skipped)

    def step_finished(self, step_id: str, phase: str, ok: bool, detail: str = "") -> None:
        if not ok:
            self.sampler.mark("failed", step_id, f"{phase} failed: {detail}")
        self.inner.step_finished(step_id, phase, ok, detail)

    def note(self, message: str) -> None:
        self.sampler.mark("note", self._step, message)
        self.inner.note(message)

    def progress(self, step_id: str, task: str, done: float, total: float | None, unit: str) -> None:
        self.sampler.progress(step_id, task, done, unit)
        self.inner.progress(step_id, task, done, total, unit)


def _captures(loaded: LoadedPlan) -> list[_Capture]:
    """The plan's trigger captures: where their events are written and where they are replayed."""
    from .copy.names import parse_qualified_name

    out = []
    for spec in loaded.plan.steps:
        if getattr(spec, "kind", None) != "capture" or getattr(spec, "method", "logical") != "trigger":
            continue  # a logical capture's backlog is its slot's pending WAL (``slot/<slot>/...``)
        if not isinstance(getattr(spec, "table", None), str):
            continue
        source = str(getattr(spec, "on", "blue"))
        try:
            table = parse_qualified_name(str(getattr(spec, "table", ""))).display
        except Exception:
            continue
        out.append(_Capture(spec.id, source, "green" if source == "blue" else "blue", table))
    return out


def _snapshot_source(loaded: LoadedPlan) -> tuple[str, str] | None:
    """``(step id, source cluster)`` of the plan's first snapshot step."""
    for spec in loaded.plan.steps:
        if getattr(spec, "kind", None) == "snapshot":
            return spec.id, str(getattr(spec, "from_", "blue"))
    return None
