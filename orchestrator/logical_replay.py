"""Replay from a logical slot: decoded changes applied to the other cluster, exactly once, in commit order.

The capture (``steps/capture.py``, method logical) owns a ``pgoutput`` slot on the SOURCE cluster. A
*round* reads the slot with ``pg_logical_slot_peek_binary_changes`` (protocol v1, ``orchestrator/pgoutput.py``)
through a server-side cursor, so a backlog of any size streams in batches, and applies whole source
transactions, in the order they committed, to the TARGET cluster.

Exactly once: each target transaction applies some whole source transactions and, in the same
transaction, records in ``bluegreen.replay_progress`` the commit LSN of the last of them
(``applied_lsn``). Only after that commit is the slot advanced (``pg_replication_slot_advance``), so a
crash anywhere leaves the slot at or behind what the target holds: the next round reads again from the
slot and skips every transaction whose commit LSN is at or below ``applied_lsn``. Nothing is lost
(the slot never moves past an uncommitted target transaction) and nothing is applied twice.

The copy's boundary: a table copied under the snapshot the slot exported holds exactly the
transactions that committed before the slot's consistent point, and the slot decodes exactly the
others. A table copied again by a resumed snapshot (under a later, plain snapshot) records that
snapshot; a decoded transaction visible in it is already in that table's copy and is skipped for it
(:func:`visible_in`): the same contract as the trigger capture (DESIGN.md section 3).

How a change is applied, per table (the capture's ``rules``):

- a table with a key (its replica identity's columns, or ``key``): within a target transaction, the
  last change per key wins (an update that moves the key deletes the old key), then one DELETE and one
  ``INSERT ... ON CONFLICT (key) DO UPDATE`` over ``unnest`` of the values as text, each cast to the
  target column's type (the input functions COPY uses); a TOASTed value the WAL did not repeat
  (unchanged) is taken from the old row when the WAL has it, else left as the target has it;
- a table with no key but ``REPLICA IDENTITY FULL``: changes in order, inserts batched, each update or
  delete matching one row with every old value;
- a table with a ``replay`` file: each change runs the file's statements with named parameters
  (``:col``, ``:new.col``, ``:old.col``, ``:_op``, ``:_seq``, ``:_at``, ``:_xid``), pipelined; every
  pending default change is written first, so a file sees the rows as of commit order;
- TRUNCATE: ``TRUNCATE ONLY`` the same tables on the target (RESTART IDENTITY and CASCADE as blue did).

A ``when`` condition is evaluated by Postgres on the source, on the decoded OLD and NEW rows typed as
the source table's columns; ``events`` choose the kinds of change replayed. Should a batch hit a
constraint that de-duplication reordered into a conflict, the target transaction is rolled back and the
same source transactions are applied again one change at a time, in order.

DDL is not decoded: the captured tables' fingerprint (``logical.fingerprint``) is compared with the one
taken when the capture started at every round, and a Relation message whose columns differ from what
was planned stops the replay (:class:`~orchestrator.logical.SchemaChanged`).

Writes run with ``session_replication_role = replica`` (the target's triggers and foreign-key checks do
not fire, as in logical replication) unless the capture says ``fire_triggers``; then every change is
applied on its own, in order.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg.types.json import Jsonb

from . import pgoutput
from .copy import PreconditionFailed
from .copy.names import QualifiedName, condition_sql, parse_qualified_name
from .errors import BluegreenError, UsageError
from .faults import fault
from .logical import SchemaChanged, SlotLost, capture_name, fingerprint, fingerprint_changes, slot_exists
from .pgoutput import UNCHANGED, int_to_lsn, lsn_to_int
from .replay import DrainDeadline, Lag, Progress, ReplaySql, RoundResult, bounded_drain, compile_replay_sql
from .sqlfiles import read_sql

if TYPE_CHECKING:
    from .plan import LoadedPlan

log = logging.getLogger(__name__)

Target = Literal["blue", "green"]
LAG_CAP = 100_000  # a lag counts at most this many pending changes (a gate needs only "more than max_lag")
SESSION = ("SET TimeZone = 'UTC'", "SET DateStyle = 'ISO, YMD'", "SET IntervalStyle = 'postgres'",
           "SET extra_float_digits = 1", "SET bytea_output = 'hex'")


# -- what the replay knows of a capture ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TableReplay:
    """One table's replay rule: a SQL file, or the default by key; which changes; a condition."""

    replay: ReplaySql | None = None
    key: tuple[str, ...] | None = None
    events: frozenset[str] = frozenset({"insert", "update", "delete", "truncate"})
    when: str | None = None


@dataclass(frozen=True, slots=True)
class LogicalCaptureInfo:
    """A logical capture as the replay sees it: where from, where to, the rules per table."""

    id: str
    source: Target
    target: Target
    rules: dict[str, TableReplay] = field(default_factory=dict)
    fire_triggers: bool = False
    snapshot_step: str | None = None  # the snapshot step that copied the tables (its per-table snapshots)

    def name(self, run_id: int | None) -> str:
        return capture_name(run_id, self.id)

    def rule(self, display: str) -> TableReplay:
        return self.rules.get(display) or TableReplay()


def logical_captures_of(loaded: LoadedPlan) -> dict[str, LogicalCaptureInfo]:
    """Every ``capture`` step of a plan with ``method: logical``, by id."""
    from .steps.capture import CaptureSpec, snapshot_after

    out: dict[str, LogicalCaptureInfo] = {}
    for spec in loaded.plan.steps:
        if not isinstance(spec, CaptureSpec) or spec.method != "logical":
            continue
        rules: dict[str, TableReplay] = {}
        for display, rule in spec.table_rules().items():
            compiled = None
            if rule.replay is not None:
                compiled = compile_replay_sql((loaded.base_dir / rule.replay).read_text(encoding="utf-8"),
                                              rule.replay)
            rules[display] = TableReplay(compiled, tuple(rule.key) if rule.key else None, frozenset(rule.events),
                                         condition_sql(rule.when) if rule.when else None)
        snap = snapshot_after(loaded, spec)
        out[spec.id] = LogicalCaptureInfo(spec.id, spec.on, spec.replay_target, rules, spec.fire_triggers,
                                          snap.id if snap is not None else None)
    return out


def visible_in(xid: int, snapshot: str) -> bool:
    """Whether the committed transaction ``xid`` (32 bits, as decoded) is visible in ``snapshot`` (xid8 text).

    The decoded xid is widened to 64 bits with the epoch nearest the snapshot's ``xmax`` (two live
    xids are never 2^31 apart), then tested as ``pg_visible_in_snapshot`` does for a committed one.
    """
    xmin_text, xmax_text, xip_text = snapshot.split(":")
    xmin, xmax = int(xmin_text), int(xmax_text)
    full = (xmax & ~0xFFFFFFFF) | (xid & 0xFFFFFFFF)
    if full - xmax > 1 << 31:
        full -= 1 << 32
    elif xmax - full > 1 << 31:
        full += 1 << 32
    if full < xmin:
        return True
    if full >= xmax:
        return False
    return str(full) not in set(xip_text.split(",")) if xip_text else True


# -- one table, planned from both catalogs ------------------------------------------------------


@dataclass
class _Table:
    """How one source table's changes reach the target."""

    relation: QualifiedName
    columns: tuple[str, ...]  # as the source sends them (no dropped or generated columns), in order
    source_types: tuple[str, ...]
    rule: TableReplay
    mode: Literal["key", "keyless", "file"]
    key: tuple[str, ...] = ()
    key_index: tuple[int, ...] = ()
    shared: tuple[int, ...] = ()  # positions (in ``columns``) of the columns written on the target
    target_types: dict[str, str] = field(default_factory=dict)
    updatable: tuple[str, ...] = ()
    overriding: bool = False
    base: str | None = None  # the snapshot its copy was read under, when that is not the slot's own
    quarantine: sql.Identifier | None = None
    quarantined: set[tuple[Any, ...]] = field(default_factory=set)
    exists_on_target: bool = True
    display: str = ""  # ``relation.display``, computed once (it is read for every change)

    def __post_init__(self) -> None:
        self.display = self.relation.display


@dataclass(slots=True)
class _Change:
    table: _Table
    op: str  # insert | update | delete
    new: tuple[Any, ...] | None
    old: tuple[Any, ...] | None
    xid: int
    lsn: int
    at: datetime


@dataclass
class _Segment:
    """Consecutive work of one kind: default changes (any tables), file changes (in order), or a truncate."""

    kind: Literal["default", "file", "truncate"]
    changes: list[_Change] = field(default_factory=list)
    truncate: list[_Table] = field(default_factory=list)
    restart_identity: bool = False
    cascade: bool = False


# -- the replayer -------------------------------------------------------------------------------


class LogicalReplayer:
    """Apply one logical capture's decoded changes from its source connection to its target connection.

    :param source: autocommit connection to the captured cluster (reads and advances the slot).
    :param target: connection to the cluster changes are applied to; this object owns its transactions.
    :param get: the run's state (``StepContext.get``): the capture's tables and fingerprint, the copy's
        per-table snapshots.
    :param on_batch: called after each committed target transaction with ``(changes so far in the round, lsn)``.
    """

    def __init__(self, capture: LogicalCaptureInfo, source: psycopg.Connection[Any],
                 target: psycopg.Connection[Any], run_id: int, batch_size: int = 5000,
                 on_batch: Callable[[int, int], None] | None = None,
                 get: Callable[[str], Any] = lambda key: None) -> None:
        self.capture = capture
        self.source = source
        self.target = target
        self.run_id = run_id
        self.batch_size = batch_size
        self.on_batch = on_batch
        self.get = get
        self.slot = capture.name(run_id)
        self._tables: dict[str, _Table] = {}
        self._by_oid: dict[int, tuple[pgoutput.Relation, _Table | None]] = {}
        self._prepared = False
        self._replica = False
        self._sequential_until = 0  # apply one change at a time up to this commit LSN (a fallback)
        self._advance_to = 0  # where the slot may move once the round's target transactions committed
        self._quarantined_now = 0
        self._fingerprint: dict[str, str] = {}
        self._schemas: list[str] | None = None
        self.fault_point: str | None = None  # ``during:<it>`` fires after each committed target transaction

    # -- setup ------------------------------------------------------------------------------------

    def setup(self, base_snapshot: str | None = None) -> Progress:
        """Create the progress table on the target if needed and this capture's row (an existing one is kept)."""
        with self.target.transaction():
            self.target.execute("SELECT pg_advisory_xact_lock(25191, 4)")
            self.target.execute(read_sql("replay.sql").encode())
            self.target.execute(
                "INSERT INTO bluegreen.replay_progress (run_id, capture, base_snapshot, applied_lsn)"
                " VALUES (%s, %s, %s, '0/0') ON CONFLICT (run_id, capture) DO NOTHING",
                (self.run_id, self.capture.id, base_snapshot or "logical"))
        self._prepare()
        return self.progress()

    def _prepare(self) -> None:
        if self._prepared:
            return
        state = self.get(f"capture:{self.capture.id}") or {}
        if not state.get("tables"):
            raise PreconditionFailed(f"capture {self.capture.id!r}: the capture step has not run in run {self.run_id}")
        if not slot_exists(self.source, self.slot):
            raise SlotLost(f"capture {self.capture.id!r}: slot {self.slot} is gone from {self.capture.source}"
                           " (dropped by hand, or for retaining too much WAL): its changes cannot be replayed;"
                           " run the plan again with --restart")
        self._fingerprint = dict(state.get("fingerprint") or {})
        self._schemas = state.get("schemas")
        for statement in SESSION:
            self.source.execute(statement)
            self.target.execute(statement)
        self._replica = False
        if not self.capture.fire_triggers:
            try:
                self.target.execute("SET session_replication_role = replica")
                self.target.execute("RESET session_replication_role")
                self._replica = True
            except pgerrors.InsufficientPrivilege:
                log.warning("replay of %s: not allowed to set session_replication_role (not a superuser): "
                            "the target's triggers fire during the replay", self.capture.id)
        bases = self._bases()
        problems: list[str] = []
        for display in state["tables"]:
            try:
                self._tables[display] = self._plan_table(parse_qualified_name(display), bases.get(display))
            except PreconditionFailed as exc:
                problems.append(str(exc))
        if problems:
            raise PreconditionFailed(f"capture {self.capture.id!r} cannot replay onto {self.capture.target}: "
                                     + "; ".join(problems))
        self._prepared = True

    def _bases(self) -> dict[str, str]:
        """Per table, the snapshot its copy was read under, where it is not the slot's own (a resumed copy)."""
        if self.capture.snapshot_step is None:
            return {}
        snap = self.get(f"snapshot:{self.capture.snapshot_step}") or {}
        own = (self.get(f"capture:{self.capture.id}") or {}).get("snapshot")
        return {t: s for t, s in (snap.get("tables") or {}).items() if s and s != own}

    def _plan_table(self, rel: QualifiedName, base: str | None) -> _Table:
        """How ``rel``'s changes reach the target; raises :class:`PreconditionFailed` when they cannot."""
        where = f"{rel.display}"
        rule = self.capture.rule(rel.display)
        query = ("SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attgenerated <> '', a.attidentity = 'a'"
                 " FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped"
                 " ORDER BY a.attnum")
        src = [r for r in self.source.execute(query, (rel.display,)).fetchall() if not r[2]]
        if not src:
            raise PreconditionFailed(f"{where} not found on {self.capture.source}")
        tgt = {r[0]: r for r in self.target.execute(query, (rel.display,)).fetchall()}
        columns = tuple(r[0] for r in src)
        table = _Table(rel, columns, tuple(r[1] for r in src), rule, "file", base=base,
                       exists_on_target=bool(tgt), target_types={n: r[1] for n, r in tgt.items()})
        if rule.replay is not None:
            missing = sorted({p.split(".", 1)[-1] for p in rule.replay.params if not p.startswith("_")}
                             - set(columns))
            if missing:
                raise PreconditionFailed(f"{where}: replay file {rule.replay.source} reads {', '.join(missing)},"
                                         f" which {rel.display} does not have on {self.capture.source}")
            return table
        if not tgt:
            raise PreconditionFailed(f"{where} is not on {self.capture.target}: give it a replay file (rules:"
                                     f" {{{rel.display}: {{replay: FILE}}}}) or exclude it from the capture")
        ident = self.source.execute("SELECT relreplident FROM pg_class WHERE oid = to_regclass(%s)",
                                    (rel.display,)).fetchone()
        identity = str(ident[0]) if ident else "d"
        key = list(rule.key or ())
        if not key:
            key = [r[0] for r in self.source.execute(
                "SELECT a.attname FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n)"
                " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
                " WHERE i.indrelid = to_regclass(%s) AND CASE WHEN %s = 'i' THEN i.indisreplident"
                " ELSE i.indisprimary END ORDER BY k.n", (rel.display, identity)).fetchall()]
        shared = tuple(i for i, name in enumerate(columns) if name in tgt and not tgt[name][2])
        if not key:
            if identity != "f":
                raise PreconditionFailed(f"{where} has no key on {self.capture.source}: set 'key' in its rule, or"
                                         " replica_identity: full")
            table.mode = "keyless"
            table.shared = shared
            table.overriding = any(tgt[columns[i]][3] for i in shared)
            return table
        shared_names = {columns[i] for i in shared}
        missing = [k for k in key if k not in shared_names]
        if missing:
            raise PreconditionFailed(f"{where}: key column(s) {', '.join(missing)} missing on {self.capture.target}:"
                                     " give it a replay file")
        unique = self.target.execute(
            "SELECT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = to_regclass(%s) AND i.indisunique"
            " AND i.indpred IS NULL AND i.indexprs IS NULL AND (SELECT array_agg(a.attname::text ORDER BY a.attname)"
            " FROM pg_attribute a WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey))"
            " = (SELECT array_agg(k ORDER BY k) FROM unnest(%s::text[]) k))", (rel.display, key)).fetchone()
        if not unique or not unique[0]:
            raise PreconditionFailed(f"{where} on {self.capture.target} has no unique index on ({', '.join(key)})"
                                     " for the default upsert: give it a replay file")
        table.mode = "key"
        table.key = tuple(key)
        table.key_index = tuple(columns.index(k) for k in key)
        table.shared = shared
        table.updatable = tuple(columns[i] for i in shared if columns[i] not in key and not tgt[columns[i]][3])
        table.overriding = any(tgt[columns[i]][3] for i in shared)
        self._load_quarantine(table)
        return table

    def _load_quarantine(self, table: _Table) -> None:
        """The keys a cleanup moved to ``bluegreen_quarantine`` on the target: their changes go there too."""
        rel = table.relation
        name = rel.name if rel.schema == "public" else f"{rel.schema}__{rel.name}"[:63]
        row = self.target.execute("SELECT to_regclass(format('bluegreen_quarantine.%%I', %s::text)) IS NOT NULL",
                                  (name,)).fetchone()
        if not row or not row[0]:
            return
        table.quarantine = sql.Identifier("bluegreen_quarantine", name)
        keys = sql.SQL(", ").join(sql.SQL("row_data ->> {}").format(sql.Literal(k)) for k in table.key)
        table.quarantined = {tuple(r) for r in self.target.execute(
            sql.SQL("SELECT DISTINCT {} FROM {} WHERE restored_at IS NULL").format(keys, table.quarantine)).fetchall()}

    def check_schema(self) -> None:
        """Raise :class:`SchemaChanged` if DDL changed a captured table on the source since the capture started."""
        if not self._fingerprint:
            return
        tables = [parse_qualified_name(t) for t in self._fingerprint if t != "*tables*"]
        changes = fingerprint_changes(self._fingerprint, fingerprint(self.source, tables, self._schemas))
        if changes:
            raise SchemaChanged(f"capture {self.capture.id!r}: DDL on {self.capture.source} during the window ("
                                + "; ".join(changes) + "): logical decoding does not carry DDL, so green would"
                                " miss it. Make the same change on green and run the plan again with --restart,"
                                " or revert it on blue")

    # -- state ------------------------------------------------------------------------------------

    def progress(self) -> Progress:
        row = self.target.execute(
            "SELECT base_snapshot, applied_lsn::text, applied, rounds FROM bluegreen.replay_progress"
            " WHERE run_id = %s AND capture = %s", (self.run_id, self.capture.id)).fetchone()
        if row is None:
            raise PreconditionFailed(f"capture {self.capture.id!r}: no replay progress on {self.capture.target}"
                                     f" for run {self.run_id}: call setup() first")
        return Progress(str(row[0]), None, lsn_to_int(row[1] or "0/0"), int(row[2]), int(row[3]))

    def lag(self, cap: int | None = None) -> Lag:
        """Changes committed on the source and not applied yet, and the age of the oldest.

        Counted by decoding at most about four messages per change of ``cap`` (default :data:`LAG_CAP`):
        past that the count says ``cap + 1``, "more than", which is all a gate needs.
        """
        applied = self.progress().after_seq
        cap = cap or LAG_CAP
        self.flush_source()
        limit = max(4 * cap, 1000)
        rows = self.source.execute(
            "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, %s, 'proto_version', '1',"
            " 'publication_names', %s)", (self.slot, limit, self.slot)).fetchall()
        count, oldest, skip = 0, None, False
        for (data,) in rows:
            msg = pgoutput.parse_message(data)
            if isinstance(msg, pgoutput.Begin):
                skip = msg.final_lsn <= applied
                if not skip and oldest is None:
                    oldest = msg.commit_time
            elif not skip and isinstance(msg, pgoutput.Insert | pgoutput.Update | pgoutput.Delete | pgoutput.Truncate):
                count += 1
        if len(rows) >= limit:
            count = max(count, cap + 1)
        seconds = 0.0
        if oldest is not None:
            now = self.source.execute("SELECT clock_timestamp()").fetchone()
            seconds = max(0.0, (now[0] - oldest).total_seconds()) if now else 0.0
        return Lag(count, seconds)

    def retained(self) -> int | None:
        """Bytes of WAL the slot keeps on the source."""
        row = self.source.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint"
                                  " FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    # -- rounds -----------------------------------------------------------------------------------

    def round(self, deadline: float | None = None, upto: int | None = None) -> RoundResult:
        """Read the slot once, up to what is flushed now (or ``upto``), and apply what it holds.

        One read per round: every read decodes the WAL again from the slot's restart point (which moves
        only at the server's periodic running-transactions records), so a round reads everything up to its
        end LSN at once, streamed from the server's materialized result, rather than in pieces.

        :param upto: read only transactions that committed at or before this LSN (the cutover's fence).
        :param deadline: a ``time.monotonic()`` after which the round stops between target transactions.
        :returns: ``finished`` is False when the deadline stopped the round before the end of what it read.
        """
        self._prepare()
        self.check_schema()
        started = time.monotonic()
        result = RoundResult()
        while True:
            try:
                self._read_and_apply(result, deadline, upto)
                break
            except _Fallback as fallback:
                log.info("replay of %s: a batch hit %s; applying it again one change at a time",
                         self.capture.id, fallback.reason)
                result.fallbacks += 1
                self._sequential_until = fallback.until
        if self._advance_to:  # only now: every transaction before it is committed on the target (or skipped)
            self.source.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)",
                                (self.slot, int_to_lsn(self._advance_to)))
        if self.fault_point is not None and not result.batches:
            fault("during", self.fault_point)  # a round that had nothing to commit still has its crash point
        with self.target.transaction():
            self.target.execute("UPDATE bluegreen.replay_progress SET rounds = rounds + 1, updated_at ="
                                " clock_timestamp() WHERE run_id = %s AND capture = %s", (self.run_id, self.capture.id))
        result.seconds = time.monotonic() - started
        return result

    def _read_and_apply(self, result: RoundResult, deadline: float | None, upto: int | None) -> None:
        """One read of the slot, up to ``upto`` (default: what is flushed now), applied in target transactions.

        Reading to "now" flushes the source's WAL first (:meth:`flush_source`): decoding reads only flushed
        WAL. The slot may then move (:attr:`_advance_to`) past every transaction the read returned and that is
        committed on the target; past ``upto`` too when the read returned everything up to it (transactions
        with no captured change are not even sent, and the slot must not hold their WAL forever).
        """
        applied_lsn = self.progress().after_seq
        if upto is None:  # what committed until now, flushed (a commit with synchronous_commit = off may not be)
            upto = self.flush_source()
        self._advance_to = 0
        last_end = 0
        pending: list[_Segment] = []
        pending_changes = 0
        txn: pgoutput.Begin | None = None
        skip = False
        last_commit = 0
        # Target transactions run on a worker thread, one at a time and in order, while this thread reads and
        # parses the next batch: the slot's read and green's writes overlap. A transaction's error surfaces
        # when the next one is handed over (or at the end), before anything after it is committed.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bluegreen-apply") as pool:
            inflight: Future[None] | None = None

            def commit(segments: list[_Segment], count: int, lsn: int) -> None:
                nonlocal inflight
                if inflight is not None:
                    inflight.result()
                inflight = pool.submit(self._commit, segments, count, lsn, result)

            try:
                with self.source.transaction(), self._cursor(upto) as cursor:
                    while True:
                        rows = cursor.fetchmany(2000)
                        if not rows:
                            break
                        for lsn_text, data in rows:
                            msg = pgoutput.parse_message(data)
                            if isinstance(msg, pgoutput.Begin):
                                txn = msg
                                skip = msg.final_lsn <= applied_lsn
                            elif isinstance(msg, pgoutput.Commit):
                                if txn is None:
                                    raise BluegreenError(f"capture {self.capture.id!r}: a Commit without its Begin")
                                last_commit, last_end = txn.final_lsn, msg.end_lsn
                                if not skip and (pending_changes >= self.batch_size
                                                 or txn.final_lsn <= self._sequential_until):
                                    commit(pending, pending_changes, txn.final_lsn)
                                    applied_lsn = txn.final_lsn
                                    self._advance_to = last_end
                                    pending, pending_changes = [], 0
                                    if deadline is not None and time.monotonic() > deadline:
                                        return  # finished stays False: the rest is read again next round
                                elif skip:
                                    self._advance_to = max(self._advance_to, last_end)
                                txn = None
                            elif isinstance(msg, pgoutput.Relation):
                                self._relation(msg)
                            elif skip or txn is None:
                                continue
                            elif isinstance(msg, pgoutput.Truncate):
                                pending_changes += self._truncate(pending, msg)
                            elif isinstance(msg, pgoutput.Insert | pgoutput.Update | pgoutput.Delete):
                                pending_changes += self._change(pending, msg, txn, lsn_to_int(lsn_text))
                if pending_changes or (last_commit > applied_lsn):
                    commit(pending, pending_changes, max(last_commit, applied_lsn))
                    self._advance_to = last_end
                if inflight is not None:
                    inflight.result()
                    inflight = None
            finally:
                if inflight is not None:  # leaving early: let the target transaction in flight end first
                    try:
                        inflight.result()
                    except BaseException:
                        if sys.exc_info()[0] is None:
                            raise
        result.finished = True
        self._advance_to = max(self._advance_to, upto)

    @contextmanager
    def _cursor(self, upto: int) -> Iterator[psycopg.ServerCursor[Any]]:
        cursor = self.source.cursor(name=f"bluegreen_slot_{self.run_id}")
        try:
            cursor.execute(
                "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, NULL,"
                " 'proto_version', '1', 'publication_names', %s)", (self.slot, int_to_lsn(upto), self.slot))
            yield cursor
        except pgerrors.UndefinedObject as exc:
            raise SlotLost(f"capture {self.capture.id!r}: slot {self.slot} is gone from {self.capture.source}:"
                           " its changes cannot be replayed; run the plan again with --restart") from exc
        finally:
            cursor.close()

    def _relation(self, msg: pgoutput.Relation) -> None:
        display = QualifiedName(msg.schema, msg.name).display
        table = self._tables.get(display)
        if table is not None:
            sent = tuple(c.name for c in msg.columns)
            if sent != table.columns:
                raise SchemaChanged(f"capture {self.capture.id!r}: {display} on {self.capture.source} now has"
                                    f" columns ({', '.join(sent)}), not ({', '.join(table.columns)}) as when the"
                                    " replay was planned: DDL during the window is not decoded; make the same"
                                    " change on green and run again with --restart")
        self._by_oid[msg.oid] = (msg, table)

    def _table_of(self, oid: int) -> _Table | None:
        found = self._by_oid.get(oid)
        if found is None:
            raise BluegreenError(f"capture {self.capture.id!r}: a change for relation {oid} arrived before its"
                                 " Relation message")
        return found[1]

    def _change(self, pending: list[_Segment], msg: pgoutput.Insert | pgoutput.Update | pgoutput.Delete,
                txn: pgoutput.Begin, lsn: int) -> int:
        table = self._table_of(msg.relation_oid)
        if table is None:
            return 0
        if isinstance(msg, pgoutput.Insert):
            op, new, old = "insert", msg.new, None
        elif isinstance(msg, pgoutput.Update):
            op, new, old = "update", msg.new, msg.old
        else:
            op, new, old = "delete", None, msg.old
        if op not in table.rule.events:
            return 0
        if table.base is not None and visible_in(txn.xid, table.base):
            return 0  # already in this table's copy (a resumed snapshot read it under a later snapshot)
        change = _Change(table, op, new, old, txn.xid, lsn, txn.commit_time)
        kind: Literal["default", "file"] = "file" if table.mode == "file" else "default"
        if not pending or pending[-1].kind != kind:
            pending.append(_Segment(kind))
        pending[-1].changes.append(change)
        return 1

    def _truncate(self, pending: list[_Segment], msg: pgoutput.Truncate) -> int:
        tables = [t for t in (self._table_of(oid) for oid in msg.relation_oids)
                  if t is not None and "truncate" in t.rule.events]
        if not tables:
            return 0
        missing = [t.display for t in tables if not t.exists_on_target]
        if missing:
            raise BluegreenError(f"capture {self.capture.id!r}: TRUNCATE of {', '.join(missing)} on"
                                 f" {self.capture.source}, which {self.capture.target} does not have: leave"
                                 " truncate out of its rule's events, or exclude it")
        pending.append(_Segment("truncate", truncate=tables, restart_identity=msg.restart_identity,
                                cascade=msg.cascade))
        return len(tables)

    # -- applying ---------------------------------------------------------------------------------

    def _commit(self, segments: list[_Segment], count: int, applied_lsn: int, result: RoundResult) -> None:
        """One target transaction: the segments, in order, then the progress row (with the last commit LSN)."""
        sequential = applied_lsn <= self._sequential_until or self.capture.fire_triggers
        conn = self.target
        held = self._quarantined_now
        try:
            with conn.transaction(), conn.cursor() as cur:
                if self._replica:
                    cur.execute("SET LOCAL session_replication_role = replica")
                for segment in segments:
                    self._apply_segment(cur, segment, sequential)
                cur.execute(
                    "UPDATE bluegreen.replay_progress SET applied_lsn = %s::pg_lsn, applied = applied + %s,"
                    " last_event_at = CASE WHEN %s > 0 THEN clock_timestamp() ELSE last_event_at END,"
                    " updated_at = clock_timestamp() WHERE run_id = %s AND capture = %s AND applied_lsn < %s::pg_lsn",
                    (int_to_lsn(applied_lsn), count, count, self.run_id, self.capture.id, int_to_lsn(applied_lsn)))
                if cur.rowcount != 1:
                    raise BluegreenError(f"capture {self.capture.id!r}: the replay progress moved under this "
                                         "replayer (another replayer running?)")
        except (pgerrors.IntegrityError, pgerrors.CardinalityViolation) as exc:
            self._quarantined_now = held
            if sequential:
                raise BluegreenError(f"replay of capture {self.capture.id!r} onto {self.capture.target} failed at"
                                     f" the transaction committed at {int_to_lsn(applied_lsn)} on"
                                     f" {self.capture.source}: {_message(exc)}") from exc
            raise _Fallback(type(exc).__name__, applied_lsn) from exc
        except psycopg.Error as exc:
            self._quarantined_now = held
            raise BluegreenError(f"replay of capture {self.capture.id!r} onto {self.capture.target} failed at the"
                                 f" transaction committed at {int_to_lsn(applied_lsn)} on {self.capture.source}:"
                                 f" {_message(exc)}") from exc
        result.events += count
        result.batches += 1
        result.quarantined += self._quarantined_now - held
        if self.fault_point is not None:
            fault("during", self.fault_point)
        if self.on_batch is not None:
            self.on_batch(result.events, applied_lsn)

    def _apply_segment(self, cur: psycopg.Cursor[Any], segment: _Segment, sequential: bool) -> None:
        if segment.kind == "truncate":
            cur.execute(sql.SQL("TRUNCATE ONLY {}{}{}").format(
                sql.SQL(", ").join(t.relation.ident for t in segment.truncate),
                sql.SQL(" RESTART IDENTITY") if segment.restart_identity else sql.SQL(""),
                sql.SQL(" CASCADE") if segment.cascade else sql.SQL("")))
            for table in segment.truncate:
                table.quarantined.clear()
            return
        if segment.kind == "file":
            self._apply_files(cur, self._filtered(segment.changes))
            return
        changes = self._filtered(segment.changes)
        if sequential:
            for change in changes:
                self._apply_default(cur, [change])
            return
        by_table: dict[str, list[_Change]] = {}
        for change in changes:
            by_table.setdefault(change.table.display, []).append(change)
        for group in by_table.values():
            self._apply_default(cur, group)

    def _filtered(self, changes: list[_Change]) -> list[_Change]:
        """The changes whose table's ``when`` holds (evaluated on the source, on the decoded rows)."""
        conditional: dict[str, list[int]] = {}
        for i, change in enumerate(changes):
            if change.table.rule.when is not None:
                conditional.setdefault(change.table.display, []).append(i)
        if not conditional:
            return changes
        drop: set[int] = set()
        for display, positions in conditional.items():
            table = self._tables[display]
            kept = self._when(table, [changes[i] for i in positions])
            drop.update(p for j, p in enumerate(positions) if j not in kept)
        return [c for i, c in enumerate(changes) if i not in drop]

    def _when(self, table: _Table, changes: list[_Change]) -> set[int]:
        """Positions of ``changes`` for which the table's ``when`` holds, asked of the source in one query."""
        assert table.rule.when is not None
        n = len(table.columns)
        arrays: list[list[Any]] = [list(range(len(changes)))]
        for side in ("old", "new"):
            for i in range(n):
                arrays.append([_text(getattr(c, side), i) for c in changes])
        names = [sql.Identifier(f"{side}_{i}") for side in ("o", "n") for i in range(n)]
        rows = {side: sql.SQL(", ").join(
            sql.SQL("e.{}::{} AS {}").format(sql.Identifier(f"{side[0]}_{i}"), sql.SQL(table.source_types[i]),
                                              sql.Identifier(col)) for i, col in enumerate(table.columns))
            for side in ("old", "new")}
        query = sql.SQL(
            "SELECT e.i FROM unnest({arrays}) AS e(i, {names})"
            " CROSS JOIN LATERAL (SELECT {old}) AS old CROSS JOIN LATERAL (SELECT {new}) AS new WHERE {cond}").format(
            arrays=sql.SQL(", ").join(sql.SQL("%b::int[]" if k == 0 else "%b::text[]") for k in range(len(arrays))),
            names=sql.SQL(", ").join(names), old=rows["old"], new=rows["new"], cond=sql.SQL(table.rule.when))
        return {int(r[0]) for r in self.source.execute(query, arrays).fetchall()}

    def _apply_default(self, cur: psycopg.Cursor[Any], changes: Sequence[_Change]) -> None:
        table = changes[0].table
        if table.mode == "keyless":
            self._apply_keyless(cur, changes)
            return
        if table.quarantined:
            held = [c for c in changes if self._key(c, c.new) in table.quarantined
                    or self._key(c, c.old) in table.quarantined]
            if held:
                self._hold(cur, held)
                changes = [c for c in changes if c not in held]
        last: dict[tuple[Any, ...], tuple[bool, tuple[Any, ...]]] = {}
        for change in changes:
            new_key = self._key(change, change.new)
            old_key = self._key(change, change.old)
            if change.op == "delete":
                if old_key is not None:
                    last.pop(old_key, None)
                    last[old_key] = (False, change.old or ())
                continue
            assert change.new is not None and new_key is not None
            image = change.new
            if UNCHANGED in image:
                image = self._fill_unchanged(image, change.old, last.get(new_key))
            if old_key is not None and old_key != new_key:
                last.pop(old_key, None)
                last[old_key] = (False, change.old or ())
            last.pop(new_key, None)
            last[new_key] = (True, image)
        deletes = [image for upsert, image in last.values() if not upsert]
        upserts = [image for upsert, image in last.values() if upsert]
        if deletes:
            cur.execute(self._delete_sql(table), [[_text(image, i) for image in deletes] for i in table.key_index])
        full = [image for image in upserts if UNCHANGED not in image]
        partial = [image for image in upserts if UNCHANGED in image]
        if full:
            cur.execute(self._upsert_sql(table, table.shared),
                        [[_text(image, i) for image in full] for i in table.shared])
        for image in partial:  # a TOASTed value the WAL did not repeat: keep the target's
            present = tuple(i for i in table.shared if image[i] is not UNCHANGED)
            cur.execute(self._upsert_sql(table, present), [[_text(image, i)] for i in present])

    @staticmethod
    def _fill_unchanged(image: tuple[Any, ...], old: tuple[Any, ...] | None,
                        earlier: tuple[bool, tuple[Any, ...]] | None) -> tuple[Any, ...]:
        """Fill the values the WAL left out (unchanged TOAST) from the old row, or an earlier image in the batch."""
        sources = [src for src in (old, earlier[1] if earlier and earlier[0] else None) if src]
        out = list(image)
        for i, value in enumerate(out):
            if value is UNCHANGED:
                for src in sources:
                    if i < len(src) and src[i] is not UNCHANGED and (src is not old or src[i] is not None
                                                                     or old is None):
                        out[i] = src[i]
                        break
        return tuple(out)

    @staticmethod
    def _key(change: _Change, image: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        if image is None:
            return None
        return tuple(image[i] for i in change.table.key_index)

    def _delete_sql(self, table: _Table) -> sql.Composed:
        keys = [table.columns[i] for i in table.key_index]
        return sql.SQL("DELETE FROM {rel} t USING unnest({arrays}) AS d({names}) WHERE ({tk}) = ({dk})").format(
            rel=table.relation.ident,
            arrays=sql.SQL(", ").join(sql.SQL("%b::text[]") for _ in keys),
            names=sql.SQL(", ").join(sql.Identifier(k) for k in keys),
            tk=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(k)) for k in keys),
            dk=sql.SQL(", ").join(sql.SQL("d.{}::{}").format(sql.Identifier(k), sql.SQL(table.target_types[k]))
                                  for k in keys))

    def _upsert_sql(self, table: _Table, positions: Sequence[int]) -> sql.Composed:
        names = [table.columns[i] for i in positions]
        updatable = [n for n in names if n in table.updatable]
        action: sql.Composable
        if updatable:
            action = sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(
                sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in updatable))
        else:
            action = sql.SQL("DO NOTHING")
        return sql.SQL("INSERT INTO {rel} ({cols}){overriding} SELECT {casts} FROM unnest({arrays}) AS u({cols})"
                       " ON CONFLICT ({key}) {action}").format(
            rel=table.relation.ident, cols=sql.SQL(", ").join(sql.Identifier(n) for n in names),
            overriding=sql.SQL(" OVERRIDING SYSTEM VALUE") if table.overriding else sql.SQL(""),
            casts=sql.SQL(", ").join(sql.SQL("u.{}::{}").format(sql.Identifier(n), sql.SQL(table.target_types[n]))
                                     for n in names),
            arrays=sql.SQL(", ").join(sql.SQL("%b::text[]") for _ in names),
            key=sql.SQL(", ").join(sql.Identifier(k) for k in table.key), action=action)

    def _apply_keyless(self, cur: psycopg.Cursor[Any], changes: Sequence[_Change]) -> None:
        """A table without a key (REPLICA IDENTITY FULL): in order; runs of inserts in one statement."""
        table = changes[0].table
        names = [table.columns[i] for i in table.shared]
        cols = sql.SQL(", ").join(sql.Identifier(n) for n in names)
        insert = sql.SQL(
            "INSERT INTO {rel} ({cols}){overriding} SELECT {casts} FROM unnest({arrays}) AS u({cols})").format(
            rel=table.relation.ident, cols=cols,
            overriding=sql.SQL(" OVERRIDING SYSTEM VALUE") if table.overriding else sql.SQL(""),
            casts=sql.SQL(", ").join(sql.SQL("u.{}::{}").format(sql.Identifier(n), sql.SQL(table.target_types[n]))
                                     for n in names),
            arrays=sql.SQL(", ").join(sql.SQL("%b::text[]") for _ in names))
        match = sql.SQL(
            "ctid = (SELECT ctid FROM {rel} WHERE ({text}) IS NOT DISTINCT FROM ({params}) LIMIT 1)").format(
            rel=table.relation.ident,
            text=sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(n)) for n in names),
            params=sql.SQL(", ").join(sql.SQL("%s::text") for _ in names))
        delete = sql.SQL("DELETE FROM {} WHERE ").format(table.relation.ident) + match
        update = sql.SQL("UPDATE {} SET {} WHERE ").format(table.relation.ident, sql.SQL(", ").join(
            sql.SQL("{} = %s::{}").format(sql.Identifier(n), sql.SQL(table.target_types[n])) for n in names)) + match
        run: list[_Change] = []

        def flush() -> None:
            if run:
                cur.execute(insert, [[_text(c.new, i) for c in run] for i in table.shared])
                run.clear()

        for change in changes:
            if change.op == "insert":
                run.append(change)
                continue
            flush()
            old = [_text(change.old, i) for i in table.shared]
            if change.op == "delete":
                cur.execute(delete, old)
            else:
                assert change.new is not None
                new = self._fill_unchanged(change.new, change.old, None)
                cur.execute(update, [*(_text(new, i) for i in table.shared), *old])
        flush()

    def _hold(self, cur: psycopg.Cursor[Any], changes: Sequence[_Change]) -> None:
        """Append changes of quarantined rows to the quarantine (the row as the change left it)."""
        for change in changes:
            table = change.table
            assert table.quarantine is not None
            image = change.new if change.op != "delete" else change.old
            data = {table.columns[i]: _text(image, i) for i in range(len(table.columns))} if image else {}
            reason = (f"replayed {change.op} (committed at {int_to_lsn(change.lsn)}) of a row quarantined on"
                      f" {self.capture.target}")
            cur.execute(sql.SQL(
                "INSERT INTO {} (source_schema, source_table, constraint_name, reason, run_id, step_id, row_data)"
                " VALUES (%s, %s, 'replay', %s, %s, %s, %s::jsonb)").format(table.quarantine),
                (table.relation.schema, table.relation.name, reason, self.run_id, self.capture.id,
                 Jsonb(data)))
        self._quarantined_now += len(changes)

    def _apply_files(self, cur: psycopg.Cursor[Any], changes: Sequence[_Change]) -> None:
        """Each change runs its table's replay file, in order (pipelined by the connection)."""
        with self.target.pipeline():
            for change in changes:
                replay = change.table.rule.replay
                assert replay is not None
                values = self._file_params(change, replay)
                for stmt in replay.statements:
                    cur.execute(sql.SQL(stmt.query), {f"p{n + 1}": values[name] for n, name in enumerate(stmt.params)})

    @staticmethod
    def _file_params(change: _Change, replay: ReplaySql) -> dict[str, str | None]:
        table = change.table
        index = {name: i for i, name in enumerate(table.columns)}
        out: dict[str, str | None] = {}
        for name in replay.params:
            if name == "_op":
                out[name] = change.op
            elif name == "_seq":
                out[name] = str(change.lsn)
            elif name == "_at":
                out[name] = change.at.isoformat()
            elif name == "_xid":
                out[name] = str(change.xid)
            elif name.startswith("new."):
                out[name] = _text(change.new, index[name[4:]])
            elif name.startswith("old."):
                out[name] = _text(change.old, index[name[4:]])
            else:
                image = change.new if change.op != "delete" else change.old
                out[name] = _text(image, index[name])
        return out

    # -- the cutover's drain ------------------------------------------------------------------------

    def drain(self, deadline: float | None = None) -> RoundResult:
        """Apply everything committed on the source up to now (the cutover calls this once blue is fenced).

        The source's WAL is flushed first (a commit made with ``synchronous_commit = off`` may not be yet,
        and decoding reads only flushed WAL): one transaction with ``synchronous_commit = on`` that writes a
        logical message; everything committed before it is then decodable, and its LSN is where the drain
        stops (the fence).

        :param deadline: the cutover's pause budget; past it the rounds stop between target transactions
            and a target transaction still running is cancelled (it rolls back with its progress).
        :raises DrainDeadline: the deadline passed first; the next drain goes on from the last commit.
        """
        if deadline is not None and time.monotonic() >= deadline:
            raise DrainDeadline(f"capture {self.capture.id!r}: no time left to drain it")
        fence = self.flush_source()
        return bounded_drain(self.capture.id, self.target, deadline,
                             lambda n: self.round(deadline, upto=fence) if n == 0 else None)

    def flush_source(self) -> int:
        """Flush the source's WAL to now (see :meth:`drain`); return the LSN everything committed is below."""
        with self.source.transaction():
            self.source.execute("SET LOCAL synchronous_commit = on")
            row = self.source.execute("SELECT pg_logical_emit_message(true, 'bluegreen', %s)::text",
                                      (f"fence {self.slot}",)).fetchone()
        assert row is not None
        end = self.source.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
        assert end is not None
        return max(lsn_to_int(str(row[0])), lsn_to_int(str(end[0])))

    def catch_up(self, max_lag: int, deadline: float, on_round: Callable[[RoundResult, Lag], None] | None = None,
                 ) -> Lag:
        """Run rounds until the lag is at most ``max_lag`` changes or the deadline passes; return the lag."""
        while True:
            result = self.round(deadline)
            lag = self.lag(max_lag + 1)
            if on_round is not None:
                on_round(result, lag)
            if lag.events <= max_lag or time.monotonic() > deadline:
                return lag


class _Fallback(Exception):
    """A batch hit a constraint: apply its transactions again one change at a time (up to ``until``)."""

    def __init__(self, reason: str, until: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.until = until


def _text(image: tuple[Any, ...] | None, i: int) -> str | None:
    if image is None or i >= len(image):
        return None
    value = image[i]
    return value if isinstance(value, str) else None


def _message(exc: BaseException) -> str:
    from .replay import _message as message

    return message(exc)


def check_routes(capture: LogicalCaptureInfo, dsns: dict[str, str], run_id: int,
                 get: Callable[[str], Any]) -> None:
    """Plan every captured table's replay once (raises :class:`PreconditionFailed` naming each that cannot)."""
    from .db import connect

    with connect(dsns[capture.source], capture.source) as source, connect(dsns[capture.target],
                                                                           capture.target) as target:
        LogicalReplayer(capture, source, target, run_id, get=get)._prepare()


__all__ = ["LogicalCaptureInfo", "LogicalReplayer", "TableReplay", "UsageError", "check_routes",
           "logical_captures_of", "visible_in"]
