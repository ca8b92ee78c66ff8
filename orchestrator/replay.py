"""The replay engine: apply captured events to the other cluster, exactly once, in commit order.

Used by the ``replay`` step (catch-up before cutover) and by the cutover (``drain`` once blue is
fenced). A capture (``steps/capture.py``) appends row events to ``bluegreen.capture_events`` on the
SOURCE cluster; this module applies them on the TARGET cluster.

The contract (DESIGN.md section 3): an event is applied iff its transaction is *not* visible in the
snapshot the target's copy of the table was read under, exactly once, and for every row in the
order its transactions committed.

How (no high-water mark on ``seq``): the target keeps, in ``bluegreen.replay_progress``, a snapshot
of the source, ``base``: every event of a transaction visible in ``base`` is applied (or was in the
copy; the first ``base`` is the copy's snapshot). A *round* takes a newer source snapshot ``N``
(``pg_current_snapshot()``) and applies the events of the transactions visible in ``N`` and not in
``base``: a fixed set, since every transaction visible in ``N`` has finished. It applies them in
``seq`` order, in batches; each batch commits on the target together with the progress row
(``after_seq`` = the last ``seq`` applied), so a crash mid-round resumes the same round with the
same ``N`` and nothing is applied twice. When the set is exhausted, ``base := N``. An event whose
transaction was still running at ``N`` is simply left for a later round, whatever its ``seq``: that
is the trap of a plain high-water mark (a long transaction commits an event numbered below events
already replayed), avoided by construction. ``pg_snapshot_xmin(base)`` bounds the scan: a
transaction not visible in ``base`` has an xid at or above it.

Order: two transactions that write the same row are serialized by its row lock, so the later one's
event has the higher ``seq`` and its transaction is never visible in a snapshot that misses the
earlier one: per row, ``seq`` order within a round and round order together are commit order.

Default replay (no SQL file): each batch keeps the last operation per key (an update that changes
the key deletes the old key and upserts the new one), then runs one DELETE and one
``INSERT ... ON CONFLICT (key) DO UPDATE`` over ``jsonb_populate_recordset`` of the target's row
type, on the columns both sides share. Should a batch hit a constraint that the reordering of
de-duplication can cause, it is rolled back and applied again one event at a time, in ``seq`` order.
With a SQL file: each of its statements runs per event (pipelined), with named parameters ``:col``
(NEW's value, OLD's for a delete), ``:new.col``, ``:old.col``, ``:_op`` (insert/update/delete),
``:_seq``, ``:_at``, ``:_xid``, passed as text and typed by the statement's context.

Writes run with ``session_replication_role = replica`` (as logical replication does: the target's
triggers, capture triggers included, do not fire) unless the capture says ``fire_triggers``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import psycopg
from pglast import parse_sql, parser
from pglast.parser import ParseError
from psycopg import errors as pgerrors
from psycopg import sql

from . import secrets
from .copy import PreconditionFailed
from .copy.names import QualifiedName
from .db import connect
from .errors import BluegreenError, UsageError
from .sqlanalysis.parse import position
from .sqlfiles import read_sql

if TYPE_CHECKING:
    from .logical_replay import LogicalCaptureInfo, LogicalReplayer
    from .plan import LoadedPlan

log = logging.getLogger(__name__)

class DrainDeadline(BluegreenError):
    """A drain stopped at its deadline, between batches or by cancelling one (that batch rolled back).

    Nothing is lost or doubled: every applied batch committed with its progress; the next drain goes on
    from there.
    """


NOTHING_VISIBLE = "1:1:"
"""A snapshot in which no transaction is visible: replay every event (a reverse capture)."""

_OPS = {"I": "insert", "U": "update", "D": "delete"}
_META = {"_op", "_seq", "_at", "_xid"}
_IDENT_TOKENS = {"IDENT"}


# -- replay SQL files with named parameters -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayStatement:
    """One statement of a replay file: with ``$n`` placeholders (``text``, what Postgres parses and a dry
    run shows), as psycopg runs it (``query``: ``%(pN)s`` placeholders, other ``%`` doubled), and the
    event field behind each placeholder (``params``)."""

    text: str
    params: tuple[str, ...]
    query: str = ""


@dataclass(frozen=True, slots=True)
class ReplaySql:
    """A compiled replay file: statements run in order for each event."""

    source: str
    statements: tuple[ReplayStatement, ...]

    @property
    def params(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for stmt in self.statements:
            seen.update(dict.fromkeys(stmt.params))
        return tuple(seen)


def _is_name_token(token: Any) -> bool:
    kind = str(token.kind)
    return bool(token.name in _IDENT_TOKENS or (kind.endswith("_KEYWORD") and kind != "NO_KEYWORD"))


def _name_text(text: str) -> str:
    if text.startswith('"') and text.endswith('"'):
        return text[1:-1].replace('""', '"')
    return text.lower()


def compile_replay_sql(text: str, source: str) -> ReplaySql:
    """Turn a replay file's ``:name`` parameters into ``$n`` placeholders, with the real Postgres scanner.

    The file is split and scanned by libpg_query (``:name`` is not SQL, so the statements are parsed
    only once their parameters are placeholders).

    :param source: the file name, for messages.
    :raises ValueError: the file has no statement, a parameter is malformed, or a statement does not parse.
    """
    try:
        slices = parser.split(text, with_parser=False, only_slices=True)
    except ParseError as exc:
        raise ValueError(f"{source}: {exc.args[0] if exc.args else exc}") from None
    out: list[ReplayStatement] = []
    for piece in slices:
        chunk = text[piece]
        tokens = [t for t in parser.scan(chunk) if t.name not in ("SQL_COMMENT", "C_COMMENT")]
        if not tokens:
            continue
        offset = piece.start + tokens[0].start
        out.append(_compile_statement(text, offset, source))
    if not out:
        raise ValueError(f"{source}: no SQL statement")
    return ReplaySql(source, tuple(out))


def _compile_statement(text: str, offset: int, source: str) -> ReplayStatement:
    end_of = next(iter(parser.split(text[offset:], with_parser=False, only_slices=True)))
    stmt = text[offset:offset + end_of.stop]
    tokens = list(parser.scan(stmt))
    pieces: list[str] = []
    runnable: list[str] = []
    names: list[str] = []
    cursor = 0
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok.name == "ASCII_58" and nxt is not None and nxt.start == tok.end + 1 and _is_name_token(nxt):
            name = _name_text(stmt[nxt.start:nxt.end + 1])
            end = nxt.end
            i += 2
            dot = tokens[i] if i < len(tokens) else None
            col = tokens[i + 1] if i + 1 < len(tokens) else None
            if name in ("new", "old") and dot is not None and dot.name == "ASCII_46" and dot.start == end + 1 \
                    and col is not None and col.start == dot.end + 1 and _is_name_token(col):
                name = f"{name}.{_name_text(stmt[col.start:col.end + 1])}"
                end = col.end
                i += 2
            elif name.startswith("_") and name not in _META:
                line, column = position(text, offset + tok.start)
                raise ValueError(f"{source}:{line}:{column}: unknown parameter :{name}"
                                 f" (event fields are {', '.join(sorted(_META))})")
            if name not in names:
                names.append(name)
            pieces.append(stmt[cursor:tok.start])
            pieces.append(f"${names.index(name) + 1}")
            runnable.append(stmt[cursor:tok.start].replace("%", "%%"))
            runnable.append(f"%(p{names.index(name) + 1})s")
            cursor = end + 1
            continue
        i += 1
    pieces.append(stmt[cursor:])
    runnable.append(stmt[cursor:].replace("%", "%%"))
    compiled = "".join(pieces).strip()
    try:
        parse_sql(compiled)
    except ParseError as exc:
        line, column = position(text, offset)
        raise ValueError(f"{source}:{line}:{column}: {exc.args[0] if exc.args else exc}") from None
    return ReplayStatement(compiled, tuple(names), "".join(runnable).strip())


# -- what the engine replays --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CaptureInfo:
    """A capture as the engine sees it: where events come from, where they go, how they apply."""

    id: str
    relation: QualifiedName
    source: Literal["blue", "green"]
    target: Literal["blue", "green"]
    replay: ReplaySql | None = None
    key: tuple[str, ...] | None = None
    fire_triggers: bool = False


def captures_of(loaded: LoadedPlan) -> dict[str, CaptureInfo | LogicalCaptureInfo]:
    """Every ``capture`` step of a plan, by id, as its replay engine needs it (trigger or logical)."""
    from .logical_replay import logical_captures_of
    from .steps.capture import CaptureSpec

    out: dict[str, CaptureInfo | LogicalCaptureInfo] = {}
    logical = logical_captures_of(loaded)
    for spec in loaded.plan.steps:
        if spec.id in logical:
            out[spec.id] = logical[spec.id]
        elif isinstance(spec, CaptureSpec):
            replay = None
            if spec.replay is not None:
                path = loaded.base_dir / spec.replay
                replay = compile_replay_sql(path.read_text(encoding="utf-8"), spec.replay)
            out[spec.id] = CaptureInfo(spec.id, spec.relation, spec.on, spec.replay_target, replay,
                                       tuple(spec.key) if spec.key else None, spec.fire_triggers)
    return out


@dataclass(frozen=True, slots=True)
class Lag:
    """Events captured (and committed) but not applied yet, and the age of the oldest."""

    events: int
    seconds: float


@dataclass
class Progress:
    """The target's ``bluegreen.replay_progress`` row of one capture."""

    base: str
    round: str | None
    after_seq: int
    applied: int
    rounds: int


@dataclass
class RoundResult:
    events: int = 0
    batches: int = 0
    fallbacks: int = 0
    quarantined: int = 0
    seconds: float = 0.0
    finished: bool = False  # the round applied its last batch (False: it stopped at its deadline)

    def add(self, other: RoundResult) -> None:
        """Count ``other``'s work into this one (a drain's total of its rounds)."""
        self.events += other.events
        self.batches += other.batches
        self.fallbacks += other.fallbacks
        self.quarantined += other.quarantined
        self.seconds += other.seconds


@dataclass(frozen=True, slots=True)
class _Event:
    seq: int
    op: str
    old: str | None
    new: str | None
    old_key: tuple[Any, ...] | None
    new_key: tuple[Any, ...] | None
    params: tuple[str | None, ...] = ()


@dataclass
class _Columns:
    shared: list[str] = field(default_factory=list)
    key: list[str] = field(default_factory=list)
    updatable: list[str] = field(default_factory=list)
    overriding: bool = False


class Replayer:
    """Apply one capture's events from its source connection to its target connection.

    :param source: autocommit connection to the captured cluster (reads ``bluegreen.capture_events``).
    :param target: connection to the cluster events are applied to; this object owns its transactions.
    :param run_id: the run whose progress row is used (``bluegreen.replay_progress`` on the target).
    :param on_batch: called after each committed batch with ``(events applied so far in this round, seq)``.
    """

    def __init__(self, capture: CaptureInfo, source: psycopg.Connection[Any], target: psycopg.Connection[Any],
                 run_id: int, batch_size: int = 5000,
                 on_batch: Callable[[int, int], None] | None = None) -> None:
        self.capture = capture
        self.source = source
        self.target = target
        self.run_id = run_id
        self.batch_size = batch_size
        self.on_batch = on_batch
        self._columns: _Columns | None = None
        self._prepared = False
        self._replica = False
        self._quarantine: sql.Identifier | None = None
        self._quarantined_keys: set[tuple[Any, ...]] = set()
        self._quarantined_now = 0
        self._held = 0

    # -- setup ------------------------------------------------------------------------------------

    def setup(self, base_snapshot: str | None) -> Progress:
        """Create the progress table on the target if needed and start this capture's progress at ``base``.

        An existing progress row is kept (a resumed run continues where it was).

        :param base_snapshot: the source snapshot the target's copy was read under; None replays every event.
        """
        with self.target.transaction():
            self.target.execute("SELECT pg_advisory_xact_lock(25191, 4)")
            self.target.execute(read_sql("replay.sql").encode())
            self.target.execute(
                "INSERT INTO bluegreen.replay_progress (run_id, capture, base_snapshot) VALUES (%s, %s, %s)"
                " ON CONFLICT (run_id, capture) DO NOTHING",
                (self.run_id, self.capture.id, base_snapshot or NOTHING_VISIBLE))
        self._prepare()
        return self.progress()

    def _prepare(self) -> None:
        if self._prepared:
            return
        row = self.source.execute("SELECT to_regclass('bluegreen.capture_events') IS NOT NULL").fetchone()
        if not row or not row[0]:
            raise PreconditionFailed(f"capture {self.capture.id!r}: no bluegreen.capture_events on "
                                     f"{self.capture.source}: the capture step has not run")
        if self.capture.replay is None:
            self._columns = self._default_columns()
            self._load_quarantine()
        self._replica = False
        if not self.capture.fire_triggers:
            try:
                self.target.execute("SET session_replication_role = replica")
                self.target.execute("RESET session_replication_role")
                self._replica = True
            except pgerrors.InsufficientPrivilege:
                log.warning("replay of %s: not allowed to set session_replication_role (not a superuser): "
                            "the target's triggers fire during the replay", self.capture.id)
        self._prepared = True

    def _default_columns(self) -> _Columns:
        rel = self.capture.relation
        query = (
            "SELECT a.attname, a.attgenerated <> '', a.attidentity = 'a' FROM pg_attribute a"
            " WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum")
        src = {r[0]: r for r in self.source.execute(query, (rel.display,)).fetchall()}
        tgt = {r[0]: r for r in self.target.execute(query, (rel.display,)).fetchall()}
        if not src:
            raise PreconditionFailed(f"capture {self.capture.id!r}: table {rel.display} not found on "
                                     f"{self.capture.source}")
        if not tgt:
            raise PreconditionFailed(f"capture {self.capture.id!r}: table {rel.display} not found on "
                                     f"{self.capture.target}: give the capture a 'replay' SQL file")
        if self.capture.key:
            key = list(self.capture.key)
        else:
            key = [r[0] for r in self.source.execute(
                "SELECT a.attname FROM pg_index i JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n)"
                " ON true JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
                " WHERE i.indrelid = to_regclass(%s) AND i.indisprimary ORDER BY k.n", (rel.display,)).fetchall()]
        if not key:
            raise PreconditionFailed(f"capture {self.capture.id!r}: {rel.display} has no primary key on "
                                     f"{self.capture.source}: set 'key' or give a 'replay' SQL file")
        shared = [name for name in src if name in tgt and not tgt[name][1]]
        missing = [k for k in key if k not in shared]
        if missing:
            raise PreconditionFailed(f"capture {self.capture.id!r}: key column(s) {', '.join(missing)} missing "
                                     f"on {self.capture.target}'s {rel.display}: give a 'replay' SQL file")
        unique = self.target.execute(
            "SELECT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = to_regclass(%s) AND i.indisunique"
            " AND i.indpred IS NULL AND i.indexprs IS NULL AND (SELECT array_agg(a.attname::text ORDER BY a.attname)"
            " FROM pg_attribute a WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey))"
            " = (SELECT array_agg(k ORDER BY k) FROM unnest(%s::text[]) k))",
            (rel.display, key)).fetchone()
        if not unique or not unique[0]:
            raise PreconditionFailed(f"capture {self.capture.id!r}: {rel.display} on {self.capture.target} has no "
                                     f"unique index on ({', '.join(key)}) for the default upsert")
        identity_always = {name for name, row in tgt.items() if row[2]}
        updatable = [c for c in shared if c not in key and c not in identity_always]
        return _Columns(shared, key, updatable, overriding=bool(identity_always & set(shared)))

    def _load_quarantine(self) -> None:
        """The keys a cleanup moved to ``bluegreen_quarantine`` on the target: their events go there too.

        A row quarantined on green because it broke a migration's constraint must not come back through
        the replay; every later event of its key is added to the quarantine (restorable with it).
        """
        assert self._columns is not None
        rel = self.capture.relation
        name = rel.name if rel.schema == "public" else f"{rel.schema}__{rel.name}"[:63]
        row = self.target.execute("SELECT to_regclass(format('bluegreen_quarantine.%%I', %s::text)) IS NOT NULL",
                                  (name,)).fetchone()
        if not row or not row[0]:
            return
        self._quarantine = sql.Identifier("bluegreen_quarantine", name)
        keys = sql.SQL(", ").join(sql.SQL("row_data ->> {}").format(sql.Literal(k)) for k in self._columns.key)
        self._quarantined_keys = {tuple(r) for r in self.target.execute(
            sql.SQL("SELECT DISTINCT {} FROM {} WHERE restored_at IS NULL").format(keys, self._quarantine)).fetchall()}

    # -- state ------------------------------------------------------------------------------------

    def progress(self) -> Progress:
        row = self.target.execute(
            "SELECT base_snapshot, round_snapshot, after_seq, applied, rounds FROM bluegreen.replay_progress"
            " WHERE run_id = %s AND capture = %s", (self.run_id, self.capture.id)).fetchone()
        if row is None:
            raise PreconditionFailed(f"capture {self.capture.id!r}: no replay progress on {self.capture.target}"
                                     f" for run {self.run_id}: call setup() first")
        return Progress(str(row[0]), row[1], int(row[2]), int(row[3]), int(row[4]))

    def lag(self) -> Lag:
        """Committed events not applied yet (as of now on the source), and the age of the oldest."""
        prog = self.progress()
        with self.source.transaction():
            row = self.source.execute(
                "SELECT count(*), COALESCE(extract(epoch FROM clock_timestamp() - min(at)), 0)::float8"
                " FROM bluegreen.capture_events WHERE capture = %(c)s AND xid >= pg_snapshot_xmin(%(b)s::pg_snapshot)"
                " AND NOT pg_visible_in_snapshot(xid, %(b)s::pg_snapshot)"
                " AND NOT (%(r)s::pg_snapshot IS NOT NULL AND pg_visible_in_snapshot(xid, %(r)s::pg_snapshot)"
                " AND seq <= %(a)s)",
                {"c": self.capture.id, "b": prog.base, "r": prog.round, "a": prog.after_seq}).fetchone()
        assert row is not None
        return Lag(int(row[0]), float(row[1]))

    # -- rounds -----------------------------------------------------------------------------------

    def round(self, deadline: float | None = None) -> RoundResult:
        """Apply every event committed before a fresh source snapshot (or finish an interrupted round).

        :param deadline: a ``time.monotonic()`` after which the round stops between batches (it is
            resumed by the next call; nothing is lost).
        """
        self._prepare()
        started = time.monotonic()
        result = RoundResult()
        prog = self.progress()
        if prog.round is None:
            row = self.source.execute("SELECT pg_current_snapshot()::text").fetchone()
            assert row is not None
            with self.target.transaction():
                cur = self.target.execute(
                    "UPDATE bluegreen.replay_progress SET round_snapshot = %s, after_seq = 0,"
                    " updated_at = clock_timestamp() WHERE run_id = %s AND capture = %s AND round_snapshot IS NULL",
                    (row[0], self.run_id, self.capture.id))
                if cur.rowcount != 1:
                    raise BluegreenError(f"capture {self.capture.id!r}: another replayer changed the progress")
            prog = self.progress()
        assert prog.round is not None
        after = prog.after_seq
        self._summarize()
        # One ordered read of the round's events (a cursor on the source, inside one read transaction), taken
        # batch by batch: the next batch is fetched while this one is applied on the target.
        with self.source.transaction(), self._round_cursor(prog.base, prog.round, after) as (cursor, convert), \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="bluegreen-replay-read") as reader:
            def fetch() -> list[_Event]:
                return [convert(row) for row in cursor.fetchmany(self.batch_size)]

            pending = reader.submit(fetch)
            while True:
                events = pending.result()
                last = len(events) < self.batch_size
                if not last:
                    pending = reader.submit(fetch)
                held = self._quarantined_now
                fallback = self._apply(events, prog, after, last)
                result.fallbacks += int(fallback)
                result.quarantined += self._quarantined_now - held
                result.batches += 1
                result.events += len(events)
                if events:
                    after = events[-1].seq
                if self.on_batch is not None:
                    self.on_batch(result.events, after)
                if last:
                    result.finished = True
                    break
                if deadline is not None and time.monotonic() > deadline:
                    break
        result.seconds = time.monotonic() - started
        return result

    def drain(self, deadline: float | None = None) -> RoundResult:
        """Finish any interrupted round, then run one more from a fresh snapshot (the cutover's last step).

        Called once blue is fenced, the fresh snapshot sees every event there will ever be.

        :param deadline: a ``time.monotonic()`` the drain must not outlast (the cutover's pause budget).
            Past it, the rounds stop between batches, and a batch still running on the target is cancelled
            there: its transaction, progress row included, rolls back.
        :raises DrainDeadline: the deadline passed first (before anything, if it already had); the next
            drain goes on from the last committed batch.
        """
        rounds = 2 if self.progress().round is not None else 1
        return bounded_drain(self.capture.id, self.target, deadline, lambda n: self.round(deadline) if n < rounds
                             else None)

    def catch_up(self, max_lag: int, deadline: float, on_round: Callable[[RoundResult, Lag], None] | None = None,
                 ) -> Lag:
        """Run rounds until the lag is at most ``max_lag`` events or the deadline passes; return the lag."""
        while True:
            result = self.round(deadline)
            lag = self.lag()
            if on_round is not None:
                on_round(result, lag)
            if lag.events <= max_lag or time.monotonic() > deadline:
                return lag

    # -- reading ----------------------------------------------------------------------------------

    def _summarize(self) -> None:
        """Summarize the events table's new BRIN ranges, so the read below skips the ranges already replayed.

        Takes SHARE UPDATE EXCLUSIVE on ``bluegreen.capture_events`` for an instant (captured writes go on).
        Optional: without it (not the index's owner), the unsummarized ranges are simply read too.
        """
        try:
            with self.source.transaction():
                self.source.execute("SET LOCAL lock_timeout = '50ms'")  # never wait on an autovacuum (the pause)
                self.source.execute("SELECT brin_summarize_new_values('bluegreen.capture_events_seq_brin'::regclass)")
        except (pgerrors.InsufficientPrivilege, pgerrors.UndefinedTable, pgerrors.LockNotAvailable):
            pass

    @contextmanager
    def _round_cursor(self, base: str, round_snapshot: str, after: int
                      ) -> Iterator[tuple[psycopg.ServerCursor[Any], Callable[[Sequence[Any]], _Event]]]:
        """A server-side cursor over the round's events above ``after``, in ``seq`` order, and a row converter.

        The events table has no b-tree (each index entry is paid by a captured write, see sql/capture.sql):
        the round's events are found once, through the BRIN index on ``seq`` (which prunes the summarized
        ranges at or below ``after``) or a sequential scan, and sorted once; the cursor then hands them out
        a batch at a time. Must run inside a transaction of ``self.source``.
        """
        rel = sql.Identifier(self.capture.relation.schema, self.capture.relation.name)
        where = sql.SQL(
            " FROM bluegreen.capture_events e{joins}"
            " WHERE e.capture = %(c)s AND e.seq > %(a)s AND e.xid >= pg_snapshot_xmin(%(b)s::pg_snapshot)"
            " AND NOT pg_visible_in_snapshot(e.xid, %(b)s::pg_snapshot)"
            " AND pg_visible_in_snapshot(e.xid, %(r)s::pg_snapshot) ORDER BY e.seq")
        params = {"c": self.capture.id, "a": after, "b": base, "r": round_snapshot}
        convert: Callable[[Sequence[Any]], _Event]
        if self.capture.replay is None:
            assert self._columns is not None
            keys = self._columns.key
            old_key = sql.SQL(", ").join(sql.SQL("e.old ->> {}").format(sql.Literal(k)) for k in keys)
            new_key = sql.SQL(", ").join(sql.SQL("e.new ->> {}").format(sql.Literal(k)) for k in keys)
            moved = sql.SQL(" OR ").join(sql.SQL("(e.old -> {k})::text IS DISTINCT FROM (e.new -> {k})::text").format(
                k=sql.Literal(k)) for k in keys)
            # the old image only when it is needed: a delete, or an update that moves the row to another key.
            # The images are json (cheaper for the trigger to write than jsonb, see sql/capture.sql); a key value
            # is compared as the text to_json wrote, which is the same for the same value of the same column.
            # (Comparing as text and casting to json also keeps events tables of older releases, jsonb, readable.)
            query = sql.SQL("SELECT e.seq, e.op, CASE WHEN e.op = 'D' OR (e.op = 'U' AND ({})) THEN e.old::text END,"
                            " e.new::text, {}, {}").format(moved, old_key, new_key) + where.format(joins=sql.SQL(""))
            n = len(keys)

            def convert(r: Sequence[Any]) -> _Event:
                return _Event(r[0], r[1], r[2], r[3], tuple(r[4:4 + n]), tuple(r[4 + n:4 + 2 * n]))
        else:
            exprs: list[sql.Composed | sql.SQL] = []
            for name in self.capture.replay.params:
                if name == "_op":
                    exprs.append(sql.SQL("CASE e.op WHEN 'I' THEN 'insert' WHEN 'U' THEN 'update' ELSE 'delete' END"))
                elif name in ("_seq", "_at", "_xid"):
                    exprs.append(sql.SQL("e.{}::text").format(sql.Identifier(name[1:])))
                elif name.startswith("new."):
                    exprs.append(sql.SQL("n.{}::text").format(sql.Identifier(name[4:])))
                elif name.startswith("old."):
                    exprs.append(sql.SQL("o.{}::text").format(sql.Identifier(name[4:])))
                else:
                    exprs.append(sql.SQL("(CASE WHEN e.new IS NULL THEN o.{c} ELSE n.{c} END)::text").format(
                        c=sql.Identifier(name)))
            joins = sql.SQL(
                " LEFT JOIN LATERAL json_populate_record(NULL::{rel}, e.new::json) n ON true"
                " LEFT JOIN LATERAL json_populate_record(NULL::{rel}, e.old::json) o ON true").format(rel=rel)
            query = sql.SQL("SELECT e.seq, e.op{}").format(
                sql.SQL("").join(sql.SQL(", ") + x for x in exprs)) + where.format(joins=joins)

            def convert(r: Sequence[Any]) -> _Event:
                return _Event(r[0], r[1], None, None, None, None, tuple(r[2:]))
        cursor = self.source.cursor(name=f"bluegreen_replay_{self.run_id}")
        try:
            try:
                cursor.execute(query, params)
            except pgerrors.UndefinedColumn as exc:
                source = self.capture.replay.source if self.capture.replay else self.capture.id
                raise UsageError(f"replay file {source}: {_message(exc)}") from exc
            yield cursor, convert
        finally:
            cursor.close()

    # -- applying ---------------------------------------------------------------------------------

    def _progress_update(self, prog: Progress, after: int, new_after: int, count: int, last: bool
                         ) -> tuple[sql.Composed | sql.SQL, dict[str, Any]]:
        params: dict[str, Any] = {"run": self.run_id, "c": self.capture.id, "r": prog.round, "a": after,
                                  "na": new_after, "n": count}
        if last:
            query = sql.SQL(
                "UPDATE bluegreen.replay_progress SET base_snapshot = round_snapshot, round_snapshot = NULL,"
                " after_seq = 0, applied = applied + %(n)s, rounds = rounds + 1,"
                " last_event_at = CASE WHEN %(n)s > 0 THEN clock_timestamp() ELSE last_event_at END,"
                " updated_at = clock_timestamp()"
                " WHERE run_id = %(run)s AND capture = %(c)s AND round_snapshot = %(r)s AND after_seq = %(a)s")
        else:
            query = sql.SQL(
                "UPDATE bluegreen.replay_progress SET after_seq = %(na)s, applied = applied + %(n)s,"
                " last_event_at = clock_timestamp(), updated_at = clock_timestamp()"
                " WHERE run_id = %(run)s AND capture = %(c)s AND round_snapshot = %(r)s AND after_seq = %(a)s")
        return query, params

    def _apply(self, events: Sequence[_Event], prog: Progress, after: int, last: bool) -> bool:
        """Apply one batch and move the progress in one target transaction; True if it fell back to one by one."""
        new_after = events[-1].seq if events else after
        update, params = self._progress_update(prog, after, new_after, len(events), last)
        try:
            self._apply_once(events, update, params, batched=True)
            return False
        except (pgerrors.IntegrityError, pgerrors.CardinalityViolation) as exc:
            if self.capture.replay is not None or len(events) <= 1:
                raise self._failed(events, exc) from exc
            log.info("replay of %s: batch after seq %d hit %s; applying it one event at a time",
                     self.capture.id, after, type(exc).__name__)
        try:
            self._apply_once(events, update, params, batched=False)
        except psycopg.Error as exc:
            raise self._failed(events, exc) from exc
        return True

    def _apply_once(self, events: Sequence[_Event], update: sql.Composed | sql.SQL, params: dict[str, Any],
                    batched: bool) -> None:
        """One target transaction, pipelined (one round trip): the events, then the progress row."""
        conn = self.target
        self._held = 0
        with conn.pipeline() as pipe, conn.transaction(), conn.cursor() as cur, conn.cursor() as marker:
            if self._replica:
                cur.execute("SET LOCAL session_replication_role = replica")
            if events:
                if self.capture.replay is not None:
                    self._apply_custom(cur, events)
                elif batched:
                    self._apply_default(cur, events)
                else:
                    for event in events:
                        self._apply_default(cur, [event])
            marker.execute(update, params)
            pipe.sync()
            if marker.rowcount != 1:
                raise BluegreenError(f"capture {self.capture.id!r}: the replay progress moved under this "
                                     "replayer (another replayer running?)")
        self._quarantined_now += self._held

    def _failed(self, events: Sequence[_Event], exc: psycopg.Error) -> BluegreenError:
        span = f"events {events[0].seq}..{events[-1].seq}" if events else "no event"
        return BluegreenError(f"replay of capture {self.capture.id!r} onto {self.capture.target} failed at {span}: "
                              f"{_message(exc)}")

    def _statements(self) -> tuple[sql.Composed, sql.Composed]:
        cols = self._columns
        assert cols is not None
        rel = sql.Identifier(self.capture.relation.schema, self.capture.relation.name)
        key = sql.SQL(", ").join(sql.Identifier(k) for k in cols.key)
        delete = sql.SQL(
            "DELETE FROM {rel} t USING json_populate_recordset(NULL::{rel}, %s::json) d WHERE ({tk}) = ({dk})"
        ).format(rel=rel, tk=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(k)) for k in cols.key),
                 dk=sql.SQL(", ").join(sql.SQL("d.{}").format(sql.Identifier(k)) for k in cols.key))
        names = sql.SQL(", ").join(sql.Identifier(c) for c in cols.shared)
        action: sql.Composed | sql.SQL
        if cols.updatable:
            action = sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(
                sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in cols.updatable))
        else:
            action = sql.SQL("DO NOTHING")
        upsert = sql.SQL(
            "INSERT INTO {rel} ({names}){overriding} SELECT {names}"
            " FROM json_populate_recordset(NULL::{rel}, %s::json) ON CONFLICT ({key}) {action}").format(
            rel=rel, names=names, key=key, action=action,
            overriding=sql.SQL(" OVERRIDING SYSTEM VALUE") if cols.overriding else sql.SQL(""))
        return delete, upsert

    def _apply_default(self, cur: psycopg.Cursor[Any], events: Sequence[_Event]) -> None:
        """Keep the last operation per key (in the order of those last operations), then one DELETE, one upsert.

        ``old`` is set only for a delete or a key-moving update (see ``_round_cursor``). Events of a quarantined
        key are appended to its quarantine table instead.
        """
        if self._quarantined_keys:
            held = [e for e in events if e.new_key in self._quarantined_keys or e.old_key in self._quarantined_keys]
            if held:
                self._hold(cur, held)
                events = [e for e in events if e not in held]
        last: dict[tuple[Any, ...], tuple[bool, str]] = {}
        for event in events:
            if event.old is not None and event.old_key is not None:
                last.pop(event.old_key, None)
                last[event.old_key] = (False, event.old)
            if event.op != "D" and event.new is not None and event.new_key is not None:
                last.pop(event.new_key, None)
                last[event.new_key] = (True, event.new)
        deletes = [image for upsert, image in last.values() if not upsert]
        upserts = [image for upsert, image in last.values() if upsert]
        delete, upsert = self._statements()
        if deletes:
            cur.execute(delete, ("[" + ",".join(deletes) + "]",))
        if upserts:
            cur.execute(upsert, ("[" + ",".join(upserts) + "]",))

    def _hold(self, cur: psycopg.Cursor[Any], events: Sequence[_Event]) -> None:
        """Append events of quarantined rows to the quarantine (the row as the event left it)."""
        assert self._quarantine is not None
        rel = self.capture.relation
        for event in events:
            image = event.new if event.op != "D" else event.old
            reason = f"replayed {_OPS[event.op]} (seq {event.seq}) of a row quarantined on {self.capture.target}"
            cur.execute(sql.SQL(
                "INSERT INTO {} (source_schema, source_table, constraint_name, reason, run_id, step_id, row_data)"
                " VALUES (%s, %s, 'replay', %s, %s, %s, COALESCE(%s::jsonb, '{{}}'::jsonb))").format(self._quarantine),
                (rel.schema, rel.name, reason, self.run_id, self.capture.id, image))
        self._held += len(events)

    def _apply_custom(self, cur: psycopg.Cursor[Any], events: Sequence[_Event]) -> None:
        replay = self.capture.replay
        assert replay is not None
        index = {name: i for i, name in enumerate(replay.params)}
        statements = [(sql.SQL(stmt.query), [(f"p{n + 1}", index[name]) for n, name in enumerate(stmt.params)])
                      for stmt in replay.statements]
        if len(statements) == 1:
            query, picks = statements[0]
            cur.executemany(query, [{key: e.params[i] for key, i in picks} for e in events])
            return
        for event in events:  # pipelined: _apply_once runs in pipeline mode
            for query, picks in statements:
                cur.execute(query, {key: event.params[i] for key, i in picks})


AnyReplayer: TypeAlias = "Replayer | LogicalReplayer"


def bounded_drain(capture_id: str, target: psycopg.Connection[Any], deadline: float | None,
                  next_round: Callable[[int], RoundResult | None]) -> RoundResult:
    """Run ``next_round(0)``, ``next_round(1)``, ... until it returns None, within ``deadline``; their total.

    Past the deadline the rounds stop between batches (a round that did not finish), and a batch still running
    on ``target`` is cancelled there (:func:`cancelled_at`): its transaction, progress included, rolls back.

    :raises DrainDeadline: the deadline passed first (before anything, if it already had); the next drain goes
        on from the last committed batch.
    """
    total = RoundResult()
    if deadline is not None and time.monotonic() >= deadline:
        raise DrainDeadline(f"capture {capture_id!r}: no time left to drain it")
    with cancelled_at(target, deadline) as cancelled:
        try:
            n = 0
            while (part := next_round(n)) is not None:
                total.add(part)
                n += 1
                if not part.finished:  # stopped between batches at the deadline
                    raise DrainDeadline(f"capture {capture_id!r}: stopped at the deadline after"
                                        f" {total.events:,} event(s); the rest on the next drain")
        except DrainDeadline:
            raise
        except Exception as exc:
            if not cancelled.is_set():
                raise
            raise DrainDeadline(f"capture {capture_id!r}: a batch still running at the deadline was"
                                f" cancelled after {total.events:,} event(s); the rest on the next drain") from exc
    total.finished = True
    return total


@contextmanager
def cancelled_at(conn: psycopg.Connection[Any], deadline: float | None) -> Iterator[threading.Event]:
    """Cancel whatever ``conn`` runs at ``deadline`` (a timer thread); the event says it fired.

    A cancel that reaches an idle session is ignored by the server, so firing between two batches is
    harmless: the round's own deadline check stops there.
    """
    fired = threading.Event()
    if deadline is None:
        yield fired
        return

    def cancel() -> None:
        fired.set()
        with contextlib.suppress(psycopg.Error):
            conn.cancel_safe(timeout=5.0)

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), cancel)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()
        timer.join()


def _message(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    detail = getattr(diag, "message_detail", None) if diag is not None else None
    text = primary or str(exc).strip() or type(exc).__name__
    return secrets.redact(text + (f" ({detail})" if detail else ""))


# -- driving replays from a step ----------------------------------------------------------------


def open_replayer(capture: CaptureInfo | LogicalCaptureInfo, dsns: dict[str, str], run_id: int, batch_size: int,
                  on_batch: Callable[[int, int], None] | None = None,
                  get: Callable[[str], Any] = lambda key: None) -> AnyReplayer:
    """A replayer with its own two connections (close them with :func:`close_replayer`).

    :param get: the run's state (a logical capture reads its tables and the copy's snapshots there).
    """
    from .logical_replay import LogicalCaptureInfo, LogicalReplayer

    source = connect(dsns[capture.source], capture.source)
    try:
        target = connect(dsns[capture.target], capture.target)
    except BaseException:
        source.close()
        raise
    if isinstance(capture, LogicalCaptureInfo):
        return LogicalReplayer(capture, source, target, run_id, batch_size, on_batch, get)
    return Replayer(capture, source, target, run_id, batch_size, on_batch)


def close_replayer(replayer: AnyReplayer) -> None:
    for conn in (replayer.source, replayer.target):
        if not conn.closed:
            conn.close()


def snapshot_for(state: Any, relation: QualifiedName) -> str | None:
    """The snapshot a snapshot step's state (``ctx.get("snapshot:<id>")``) copied ``relation`` under."""
    if not isinstance(state, dict):
        return None
    tables = state.get("tables") or {}
    value = tables.get(relation.display)
    return str(value) if value else None


@contextmanager
def drainers(loaded: LoadedPlan, dsns: dict[str, str], run_id: int, capture_ids: Iterable[str],
             batch_size: int | None = None, from_start: bool = False,
             get: Callable[[str], Any] = lambda key: None) -> Iterator[list[tuple[str, AnyReplayer]]]:
    """A replayer per capture, opened (two connections each) and checked, ready to drain; closed at the end.

    The cutover opens them before its pause, so that the pause does not pay for the connections. Each
    capture's progress must exist (the ``replay`` step set it up from the snapshot), unless ``from_start``:
    then a capture with no progress yet replays every event it holds (a reverse capture on green: nothing
    it captured is on blue). An existing progress row is kept either way.
    """
    captures = captures_of(loaded)
    opened: list[tuple[str, AnyReplayer]] = []
    try:
        for capture_id in capture_ids:
            if capture_id not in captures:
                raise UsageError(f"no capture step {capture_id!r} in the plan")
            replayer = open_replayer(captures[capture_id], dsns, run_id,
                                     batch_size or loaded.plan.defaults.batch_size, get=get)
            opened.append((capture_id, replayer))
            if from_start:
                replayer.setup(None)
            replayer.progress()
        yield opened
    finally:
        for _, replayer in opened:
            close_replayer(replayer)


def drain(loaded: LoadedPlan, dsns: dict[str, str], run_id: int, capture_ids: Iterable[str],
          batch_size: int | None = None, from_start: bool = False, deadline: float | None = None,
          get: Callable[[str], Any] = lambda key: None) -> dict[str, RoundResult]:
    """Apply every remaining event of the given captures (a rollback calls this once green is fenced).

    The captures and their progress are checked as :func:`drainers` says.

    :param deadline: a ``time.monotonic()`` shared by all the captures (see :meth:`Replayer.drain`).
    :raises DrainDeadline: it passed before the last capture was drained.
    :returns: per capture, what the last rounds applied.
    """
    with drainers(loaded, dsns, run_id, capture_ids, batch_size, from_start, get) as opened:
        return {capture_id: replayer.drain(deadline) for capture_id, replayer in opened}


def lags(loaded: LoadedPlan, dsns: dict[str, str], run_id: int, capture_ids: Iterable[str],
         get: Callable[[str], Any] = lambda key: None, cap: int | None = None) -> dict[str, Lag]:
    """Per capture, the events committed on its source and not applied yet (the cutover's lag gate).

    A trigger capture whose replay never started reports every one of its committed events; a logical
    capture counts decoded changes, at most ``cap`` of them (enough for a gate), and checks for DDL.
    """
    from .logical_replay import LogicalReplayer

    captures = captures_of(loaded)
    out: dict[str, Lag] = {}
    for capture_id in capture_ids:
        if capture_id not in captures:
            raise UsageError(f"no capture step {capture_id!r} in the plan")
        replayer = open_replayer(captures[capture_id], dsns, run_id, loaded.plan.defaults.batch_size, get=get)
        try:
            if isinstance(replayer, LogicalReplayer):
                replayer.setup()
                replayer.check_schema()
                out[capture_id] = replayer.lag(cap)
                continue
            row = replayer.target.execute("SELECT to_regclass('bluegreen.replay_progress') IS NOT NULL AND EXISTS ("
                                          "SELECT FROM bluegreen.replay_progress WHERE run_id = %s AND capture = %s)",
                                          (run_id, capture_id)).fetchone()
            if row and row[0]:
                out[capture_id] = replayer.lag()
            else:
                count = replayer.source.execute(
                    "SELECT count(*), COALESCE(extract(epoch FROM clock_timestamp() - min(at)), 0)::float8"
                    " FROM bluegreen.capture_events WHERE capture = %s", (capture_id,)).fetchone()
                assert count is not None
                out[capture_id] = Lag(int(count[0]), float(count[1]))
        finally:
            close_replayer(replayer)
    return out
