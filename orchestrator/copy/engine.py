"""The snapshot engine: one exported snapshot on the source, the schema, the rows, then indexes and constraints.

``method: copy`` follows pgcopydb's shape: ``pg_dump --schema-only`` under the snapshot into a small
archive; its pre-data restored in one transaction; every table streamed by ``jobs`` workers, each a
``psql`` reading ``COPY ... TO STDOUT`` under the same snapshot straight into ``COPY ... FROM STDIN``
on the target (no file in between; relayed in 1 MiB chunks, so Python makes a few calls per MiB,
not one per row). A table's own indexes and key constraints are built by idle workers as soon as its
rows are in, and a copy group's foreign keys as soon as all of its tables have theirs
(:meth:`SnapshotEngine._foreign_keys`); the rest of the post-data (foreign keys of partitioned tables,
triggers, ...) is restored by ``pg_restore --jobs`` at the end; then sequences are set to their values at
the snapshot. With ``analyze``, each table is ANALYZEd by an idle worker once its rows and its own
indexes are in (SHARE UPDATE EXCLUSIVE on that table of the target, which nothing else holds yet);
what is left (partitioned parents, materialized views, tables of a dump) is analyzed at the end,
``jobs`` at a time. A serial ANALYZE of the whole database after the copy was a quarter of the
step's time on bench/shapes.py's database (2.0 s of 8.6 s).

A table is copied by ``TRUNCATE`` + ``COPY ... (FREEZE)`` in one transaction that also marks it done
in ``bluegreen.snapshot_tables`` on the target, so data and state never disagree; tables larger
than ``split_above`` are split into ctid ranges copied in parallel (without FREEZE). bluegreen's own
sessions on the target skip the zero-fill of new WAL segments where the role may
(:meth:`SnapshotEngine._bulk_load_settings`): a new cluster has no segments to recycle.

Resume: the exported snapshot dies with the process that holds it. A resumed step starts a new
attempt under a NEW snapshot and copies again every *copy group* (tables linked by foreign keys,
or one partition tree) that has an unfinished table; finished groups are kept. Each table records
the snapshot it was read under, and the replay uses that snapshot for events of that table: the
capture was installed before the first snapshot, so events between the two snapshots are in
``bluegreen.capture_events`` and replayed exactly like any other.

``method: dump`` is ``pg_dump -Fd --jobs N --snapshot`` then ``pg_restore --jobs N``; it is resumed
by cleaning the target and starting again.

Crash points (``orchestrator/faults.py``, for the fault suite): ``during:copy_table:<step>:<table>``
(mid-COPY), ``after:copy_table:...`` (after its commit), ``before:restore_post_data:<step>``,
``after:pg_restore:<step>`` (method dump), and ``after:`` each phase the dry run renders
(``export_snapshot``, ``dump_schema``, ``restore_pre_data``, ``restore_post_data``, ``set_sequences``),
``before:``/``after:analyze``, each ``:<step>``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from .. import secrets
from ..db import connect
from ..errors import BluegreenError
from ..faults import fault
from ..logical import ExportedSlot, drop_slot, slot_exists
from ..sqlfiles import read_sql
from . import PreconditionFailed
from .catalog import OWN_SCHEMAS, Catalog, Table, preflight, read_catalog, target_leftovers
from .names import QualifiedName
from .pgtools import PgTools, TocEntry, die_with_parent, find_tools, libpq_args, parse_toc, run_tool, tail, write_list

log = logging.getLogger(__name__)

CHUNK = 1 << 20
STATE_LOCK = 5
TRIGGER_PREFIX = "bluegreen_"
_F_SETPIPE_SZ = 1031


@dataclass(frozen=True, slots=True)
class Options:
    """How to take the snapshot (the step's spec, resolved)."""

    method: str = "copy"
    jobs: int = 2
    pg_bin: str | None = None
    schemas: tuple[str, ...] | None = None
    exclude_schemas: tuple[str, ...] = ()
    split_above: int | None = None
    format: str = "auto"
    owners: bool = True
    privileges: bool = True
    analyze: bool = True
    work_dir: Path | None = None
    tool_timeout: float | None = None

    def dump_filters(self) -> list[str]:
        out = [f"--exclude-schema={s}" for s in OWN_SCHEMAS]
        out += [f"--exclude-schema={s}" for s in self.exclude_schemas]
        out += [f"--schema={s}" for s in self.schemas or ()]
        if not self.owners:
            out.append("--no-owner")
        if not self.privileges:
            out.append("--no-privileges")
        return out


class SourceSnapshot:
    """The exported snapshot: one REPEATABLE READ, READ ONLY transaction held open on the source.

    Every reader imports it (``SET TRANSACTION SNAPSHOT``, ``pg_dump --snapshot``); it lives until
    :meth:`close`, or until the process dies. With ``slot`` (a logical capture's :class:`ExportedSlot`),
    the transaction imports the snapshot the slot exported, and readers import that one: the copy then
    holds exactly what committed before the slot's consistent point.
    """

    def __init__(self, dsn: str, name: str, slot: ExportedSlot | None = None) -> None:
        self.slot = slot
        self.conn = connect(dsn, name, application_name="bluegreen snapshot")
        try:
            self.conn.execute("SET idle_in_transaction_session_timeout = 0")
            self.conn.execute("SET statement_timeout = 0")
            self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            if slot is not None:
                self.conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(slot.snapshot_name)))
                row = self.conn.execute("SELECT %s::text, pg_current_snapshot()::text,"
                                        " current_setting('server_version_num')::int", (slot.snapshot_name,)).fetchone()
            else:
                row = self.conn.execute("SELECT pg_export_snapshot(), pg_current_snapshot()::text,"
                                        " current_setting('server_version_num')::int").fetchone()
        except BaseException:
            self.close()
            raise
        assert row is not None
        self.id: str = row[0]
        self.snapshot: str = row[1]
        self.server_version: int = row[2]

    @property
    def alive(self) -> bool:
        return not self.conn.closed and not self.conn.broken

    def close(self) -> None:
        if not self.conn.closed:
            self.conn.close()
        if self.slot is not None:
            self.slot.close()


@dataclass(frozen=True, slots=True)
class SlotRequest:
    """The logical capture whose slot this snapshot creates: its name, and the run-state key it records into."""

    capture_id: str
    name: str

    @property
    def state_key(self) -> str:
        return f"capture:{self.capture_id}"


@dataclass
class Totals:
    rows: int = 0
    bytes: int = 0
    tables: int = 0
    skipped: int = 0
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)

    def lap(self, phase: str, since: float) -> float:
        """Add the time since ``since`` to ``phase``; return now."""
        now = time.monotonic()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - since
        return now


@dataclass
class Hooks:
    """How the engine talks to its step: progress, notes, run state."""

    progress: Callable[[str, float, float | None, str], None] = lambda task, done, total, unit: None
    note: Callable[[str], None] = lambda message: None
    put: Callable[[str, Any], None] = lambda key, value: None
    get: Callable[[str], Any] = lambda key: None


@dataclass(frozen=True, slots=True)
class _Analyze:
    """The ANALYZE of one copied table, queued once its rows and its own indexes are in."""

    display: str


@dataclass
class _Part:
    table: Table
    part: int
    parts: int
    lo: int | None = None
    hi: int | None = None


@dataclass
class Result:
    """What one apply did; the step keeps it (and the live snapshot) for ``verify()``."""

    snapshot: SourceSnapshot
    catalog: Catalog
    attempt: int
    table_snapshots: dict[str, str] = field(default_factory=dict)
    totals: Totals = field(default_factory=Totals)


class SnapshotEngine:
    """Copy one database from ``source`` to ``target`` under one exported snapshot (per attempt)."""

    def __init__(self, step_id: str, run_id: int, dsns: dict[str, str], source: str, target: str,
                 options: Options, hooks: Hooks, slot: SlotRequest | None = None) -> None:
        self.slot = slot
        self.step_id = step_id
        self.run_id = run_id
        self.dsns = dsns
        self.source = source
        self.target = target
        self.options = options
        self.hooks = hooks
        self.state_key = f"snapshot:{step_id}"
        self._lock = threading.Lock()
        self._streamed = 0
        self._psql = "psql"
        self._cancel = threading.Event()
        self._built_early: set[int] = set()
        self._analyzed: set[str] = set()
        self._load_settings: list[tuple[str, str]] = []

    # -- entry point ------------------------------------------------------------------------------

    def run(self) -> Result:
        """Take (or resume) the snapshot; the returned result holds the snapshot open: close it when done."""
        state = self.hooks.get(self.state_key) or {}
        snap = self._open_snapshot(state)
        try:
            target = connect(self.dsns[self.target], self.target)
            try:
                return self._run(snap, target, self.hooks.get(self.state_key) or {})
            finally:
                target.close()
        except BaseException:
            snap.close()
            raise

    def _open_snapshot(self, state: dict[str, Any]) -> SourceSnapshot:
        """The snapshot to copy under: exported by a new slot (a logical capture's first attempt), else a plain one.

        With a logical capture: its slot is created here on the first attempt, and the copy reads under the
        snapshot it exports. A resumed attempt whose slot survived copies what is left under a new plain
        snapshot (the exported one died with the earlier process): each table records the snapshot it was
        read under, and the replay skips, table by table, the changes that snapshot already shows. A slot
        that was recorded but is gone cannot be replayed from: the copy starts over from a new slot.
        """
        dsn = self.dsns[self.source]
        if self.slot is None:
            return SourceSnapshot(dsn, self.source)
        capture = self.hooks.get(self.slot.state_key) or {}
        with connect(dsn, self.source) as conn:
            exists = slot_exists(conn, self.slot.name)
            if exists and capture.get("slot") != "created":
                drop_slot(conn, self.slot.name)  # made by a process killed before it recorded it: unused
                exists = False
        if exists:
            self.hooks.note(f"slot {self.slot.name} survived the interruption but not its exported snapshot: the"
                            " tables left are copied under a new snapshot, and the replay skips, for each table,"
                            " the changes its copy already holds")
            return SourceSnapshot(dsn, self.source)
        if capture.get("slot") == "created" or state.get("started"):
            self.hooks.note(f"slot {self.slot.name} is gone: the copy starts over from a new slot (replaying from"
                            " another slot's boundary would lose or double changes)")
            with connect(self.dsns[self.target], self.target) as target:
                clean_target(target, state.get("schemas") or [], self.run_id, self.step_id)
            self.hooks.put(self.state_key, {k: v for k, v in state.items() if k in ("attempt",)})
        fault("before", f"create_slot:{self.step_id}")
        self.hooks.progress(f"slot {self.slot.name} (waits for the transactions running now)", 0, 1, "")
        exported = ExportedSlot(dsn, self.source, self.slot.name)
        try:
            snap = SourceSnapshot(dsn, self.source, exported)
        except BaseException:
            exported.close()
            raise
        self.hooks.put(self.slot.state_key, {**capture, "slot": "created",
                                             "consistent_point": exported.consistent_point,
                                             "snapshot": snap.snapshot})
        self.hooks.progress(f"slot {self.slot.name} (waits for the transactions running now)", 1, 1, "")
        fault("after", f"create_slot:{self.step_id}")
        self.hooks.note(f"slot {self.slot.name} created on {self.source} at {exported.consistent_point}; the copy"
                        " reads under the snapshot it exported")
        return snap

    def _run(self, snap: SourceSnapshot, target: psycopg.Connection[Any], state: dict[str, Any]) -> Result:
        started = time.monotonic()
        opts = self.options
        catalog = read_catalog(snap.conn, opts.schemas, opts.exclude_schemas)
        tver = target.execute("SELECT current_setting('server_version_num')::int").fetchone()
        assert tver is not None
        tools = find_tools(opts.pg_bin, max(snap.server_version, int(tver[0])) // 10000)
        self._psql = tools.tool("psql")
        self._load_settings = self._bulk_load_settings(target)
        problems = preflight(snap.conn, target, catalog, opts.method, opts.owners, opts.privileges)
        if problems:
            raise PreconditionFailed(f"{self.source} cannot be restored on {self.target}: " + "; ".join(problems))
        resumed = bool(state.get("started"))
        if not resumed:
            leftovers = target_leftovers(target, catalog.schemas)
            if leftovers:
                raise PreconditionFailed(
                    f"the {self.target} database is not empty ({', '.join(leftovers[:5])}"
                    f"{', ...' if len(leftovers) > 5 else ''}): a snapshot restores into an empty database")
        attempt = int(state.get("attempt", 0)) + 1
        state = {**state, "started": True, "method": opts.method, "attempt": attempt, "schemas": catalog.schemas,
                 "snapshot": snap.snapshot, "snapshot_id": snap.id,
                 "sequences": {s.relation.display: [s.last_value, s.is_called] for s in catalog.sequences}}
        self.hooks.put(self.state_key, state)
        fault("after", f"export_snapshot:{self.step_id}")
        self.hooks.note(f"snapshot {snap.snapshot} exported by {self.source} (attempt {attempt}); pg_dump "
                        f"{tools.major} from {tools.bindir}")
        result = Result(snap, catalog, attempt)
        work = Path(tempfile.mkdtemp(prefix="bluegreen-snapshot-", dir=opts.work_dir))
        try:
            if opts.method == "dump":
                self._dump(snap, target, tools, work, resumed, result)
            else:
                self._copy(snap, target, tools, work, result)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if opts.analyze:
            lap = time.monotonic()
            fault("before", f"analyze:{self.step_id}")
            self._analyze_rest(target, catalog)
            result.totals.lap("analyze", lap)
            fault("after", f"analyze:{self.step_id}")
        for parent, leaves in catalog.parents.items():
            values = {result.table_snapshots[leaf] for leaf in leaves if leaf in result.table_snapshots}
            if len(values) == 1:
                result.table_snapshots[parent] = values.pop()
        result.totals.seconds = time.monotonic() - started
        self.hooks.put(self.state_key, {**state, "tables": result.table_snapshots,
                                        "copied": {"rows": result.totals.rows, "bytes": result.totals.bytes,
                                                   "tables": result.totals.tables,
                                                   "kept": result.totals.skipped,
                                                   "seconds": round(result.totals.seconds, 3),
                                                   "phases": {k: round(v, 3) for k, v in
                                                              result.totals.phases.items()}}})
        return result

    def _bulk_load_settings(self, target: psycopg.Connection[Any]) -> list[tuple[str, str]]:
        """Settings for bluegreen's own sessions on the target that make the load cheaper, where allowed.

        ``wal_init_zero = off``: a cluster fills every new 16 MB WAL segment with zeros before it writes to it,
        and a snapshot writes gigabytes of WAL into a new cluster, which has no old segments to recycle. On
        this project's VMs (``fsync = off``), the first copy of bench/snapshot.py's 1.5 GB into a fresh green
        took 11.4-13.4 s with the zero-fill and 8.6-9.7 s without (three of each, alternating, page cache
        dropped before each); later copies recycle the segments and gain nothing. Off, a new segment is
        created at its full size but sparse. Nothing about durability changes: WAL is flushed as before.
        It is a superuser setting (PGC_SUSET): a role that may not set it gets a note instead. Only these
        sessions are affected (set per session, never in the server's configuration): nothing to undo.
        """
        row = target.execute("SELECT current_setting('wal_init_zero')").fetchone()
        if row is None or row[0] == "off":
            return []
        try:
            target.execute("SET wal_init_zero = off")
            target.execute("RESET wal_init_zero")
        except psycopg.errors.InsufficientPrivilege:
            self.hooks.note(f"{self.target} zero-fills each new WAL segment (wal_init_zero = on) and this role may"
                            " not turn that off for its sessions: a first snapshot into a new cluster pays for it"
                            " ('ALTER SYSTEM SET wal_init_zero = off' on the new cluster avoids it)")
            return []
        return [("wal_init_zero", "off")]

    def _target_env(self) -> tuple[str, dict[str, str]]:
        """:func:`libpq_args` of the target, with the bulk-load settings in ``PGOPTIONS`` (pg_restore)."""
        info, env = libpq_args(self.dsns[self.target])
        env["PGOPTIONS"] = " ".join([env.get("PGOPTIONS", ""), *(f"-c {k}={v}" for k, v in self._load_settings)])
        return info, env

    # -- method: dump -----------------------------------------------------------------------------

    def _dump(self, snap: SourceSnapshot, target: psycopg.Connection[Any], tools: PgTools, work: Path,
              resumed: bool, result: Result) -> None:
        opts = self.options
        if resumed:
            clean_target(target, result.catalog.schemas, self.run_id, self.step_id)
            self.hooks.note(f"resuming a dump: {self.target} cleaned, restored again from a new snapshot")
        src_info, src_env = libpq_args(self.dsns[self.source])
        dst_info, dst_env = self._target_env()
        folder = work / "dump"
        lap = time.monotonic()
        self.hooks.progress("pg_dump", 0, 1, "")
        run_tool([tools.tool("pg_dump"), "--format=directory", f"--jobs={opts.jobs}", f"--snapshot={snap.id}",
                  "--no-sync", *opts.dump_filters(), f"--file={folder}", f"--dbname={src_info}"],
                 src_env, "pg_dump", timeout=opts.tool_timeout)
        self.hooks.progress("pg_dump", 1, 1, "")
        lap = result.totals.lap("pg_dump", lap)
        entries = self._without_own_triggers(snap, parse_toc(run_tool(
            [tools.tool("pg_restore"), "--list", str(folder)], dst_env, "pg_restore --list")))
        listing = write_list(work / "restore.list", entries)
        self.hooks.progress("pg_restore", 0, 1, "")
        run_tool([tools.tool("pg_restore"), f"--jobs={opts.jobs}", "--exit-on-error", f"--use-list={listing}",
                  *(["--no-owner"] if not opts.owners else []), *(["--no-privileges"] if not opts.privileges else []),
                  f"--dbname={dst_info}", str(folder)], dst_env, "pg_restore", timeout=opts.tool_timeout)
        self.hooks.progress("pg_restore", 1, 1, "")
        result.totals.lap("pg_restore", lap)
        fault("after", f"pg_restore:{self.step_id}")
        for table in result.catalog.tables:
            result.table_snapshots[table.display] = snap.snapshot
        result.totals.tables = len(result.catalog.tables)

    # -- method: copy -----------------------------------------------------------------------------

    def _copy(self, snap: SourceSnapshot, target: psycopg.Connection[Any], tools: PgTools, work: Path,
              result: Result) -> None:
        opts = self.options
        catalog = result.catalog
        src_info, src_env = libpq_args(self.dsns[self.source])
        dst_info, dst_env = self._target_env()
        archive = work / "schema.dump"
        lap = time.monotonic()
        run_tool([tools.tool("pg_dump"), "--format=custom", "--schema-only", f"--snapshot={snap.id}",
                  *opts.dump_filters(), f"--file={archive}", f"--dbname={src_info}"], src_env, "pg_dump --schema-only",
                 timeout=opts.tool_timeout)
        fault("after", f"dump_schema:{self.step_id}")
        entries = self._without_own_triggers(snap, parse_toc(run_tool(
            [tools.tool("pg_restore"), "--list", str(archive)], dst_env, "pg_restore --list")))
        post_ids = {e.dump_id for e in parse_toc(run_tool(
            [tools.tool("pg_restore"), "--list", "--section=post-data", str(archive)], dst_env,
            "pg_restore --list"))}
        owner_flags = [*(["--no-owner"] if not opts.owners else []),
                       *(["--no-privileges"] if not opts.privileges else [])]

        # pre-data: one transaction, so it is all there or not at all
        present = self._tables_present(target, catalog)
        if present == 0:
            pre = write_list(work / "pre.list", [e for e in entries if e.dump_id not in post_ids])
            self.hooks.progress("schema", 0, 1, "")
            run_tool([tools.tool("pg_restore"), "--section=pre-data", "--single-transaction", "--exit-on-error",
                      f"--use-list={pre}", *owner_flags, f"--dbname={dst_info}", str(archive)], dst_env,
                     "pg_restore --section=pre-data", timeout=opts.tool_timeout)
            self.hooks.progress("schema", 1, 1, "")
            fault("after", f"restore_pre_data:{self.step_id}")
        elif present < len(catalog.tables):
            raise PreconditionFailed(f"{self.target} holds {present} of the {len(catalog.tables)} tables to copy, "
                                     "but their schema is restored in one transaction: clean the target "
                                     "('bluegreen rollback') and run again")

        lap = result.totals.lap("schema", lap)
        parts = self._claim(target, catalog, result.attempt)
        post = [e for e in entries if e.dump_id in post_ids]
        early = self._entries_by_table(snap, post, catalog)

        serial_env = {**dst_env, "PGOPTIONS": dst_env.get("PGOPTIONS", "") + " -c max_parallel_maintenance_workers=0"}

        def build(entry: TocEntry, serial: bool) -> None:
            """One index or constraint of a table whose rows are all in: built while other tables copy.

            ``serial``: the pool has enough other work to keep its ``jobs`` workers busy, so the build
            runs without parallel maintenance workers. A parallel worker then only competes with the
            pool for the same cores and costs CPU of its own: on bench/shapes.py's 3M-row table one
            serial build took 0.47-0.74 s of CPU, the same build with one worker 0.64-0.88 s.
            """
            listing = write_list(work / f"early-{entry.dump_id}.list", [entry])
            run_tool([tools.tool("pg_restore"), "--section=post-data", "--exit-on-error", f"--use-list={listing}",
                      *owner_flags, f"--dbname={dst_info}", str(archive)], serial_env if serial else dst_env,
                     f"pg_restore of {entry.type.lower()} {entry.dump_id}", timeout=opts.tool_timeout)

        fk_groups: dict[int, list[TocEntry]] = {}
        fk_of = self._foreign_keys(snap, post, catalog)
        for entry in self._missing_on_target(snap, target, [e for e in post if e.dump_id in fk_of], quiet=True):
            fk_groups.setdefault(fk_of[entry.dump_id], []).append(entry)
        self._copy_parts(snap, target, parts, catalog, result, src_info, src_env, early, build, fk_groups)
        lap = result.totals.lap("data", lap)  # and the indexes of the tables done meanwhile

        fault("before", f"restore_post_data:{self.step_id}")
        post = self._missing_on_target(snap, target, post)
        if post:
            self.hooks.progress("indexes and constraints", 0, len(post), "objects")
            listing = write_list(work / "post.list", post)
            run_tool([tools.tool("pg_restore"), "--section=post-data", f"--jobs={opts.jobs}", "--exit-on-error",
                      f"--use-list={listing}", *owner_flags, f"--dbname={dst_info}", str(archive)], dst_env,
                     "pg_restore --section=post-data", timeout=opts.tool_timeout)
            self.hooks.progress("indexes and constraints", len(post), len(post), "objects")
        fault("after", f"restore_post_data:{self.step_id}")
        for seq in catalog.sequences:
            target.execute("SELECT setval(%s::regclass, %s, %s)", (seq.relation.display, seq.last_value,
                                                                  seq.is_called))
        fault("after", f"set_sequences:{self.step_id}")
        lap = result.totals.lap("indexes and constraints", lap)
        self._refresh_matviews(snap, target, catalog)
        result.totals.lap("sequences and views", lap)

    def _refresh_matviews(self, snap: SourceSnapshot, target: psycopg.Connection[Any], catalog: Catalog) -> None:
        """Fill the materialized views populated on the source (a schema-only dump leaves them empty).

        One may read another: refresh what can be, then the rest, until none is left.
        """
        pending = [QualifiedName(r[0], r[1]) for r in snap.conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind = 'm' AND c.relispopulated AND n.nspname = ANY (%s) ORDER BY c.oid",
            (catalog.schemas,)).fetchall()]
        while pending:
            failed: list[QualifiedName] = []
            last: psycopg.Error | None = None
            for view in pending:
                try:
                    target.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(view.ident))
                except psycopg.errors.ObjectNotInPrerequisiteState as exc:
                    failed.append(view)
                    last = exc
            if len(failed) == len(pending):
                reason = _pg_message(last) if last is not None else "unknown"
                raise BluegreenError(f"cannot refresh {', '.join(v.display for v in failed)}: {reason}")
            pending = failed

    def _tables_present(self, target: psycopg.Connection[Any], catalog: Catalog) -> int:
        if not catalog.tables:
            return 0
        row = target.execute("SELECT count(*) FROM unnest(%s::text[]) t WHERE to_regclass(t) IS NOT NULL",
                             ([t.display for t in catalog.tables],)).fetchone()
        return int(row[0]) if row else 0

    def _claim(self, target: psycopg.Connection[Any], catalog: Catalog, attempt: int) -> list[_Part]:
        """Record every table's parts (first attempt), take over unfinished groups, return what to copy."""
        split = self.options.split_above
        with target.transaction():
            target.execute(sql.SQL("SELECT pg_advisory_xact_lock(25191, {})").format(sql.Literal(STATE_LOCK)))
            target.execute(read_sql("snapshot.sql").encode())
            with target.cursor() as cur:
                rows: list[tuple[Any, ...]] = []
                for table in catalog.tables:
                    parts = 1
                    if split and table.bytes > split:
                        parts = min(64, -(-table.bytes // split))
                    rows.extend((self.run_id, self.step_id, table.display, p, parts, table.group, attempt)
                                for p in range(parts))
                cur.executemany(
                    "INSERT INTO bluegreen.snapshot_tables (run_id, step_id, relation, part, parts, copy_group,"
                    " attempt) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING", rows)
            target.execute(
                "UPDATE bluegreen.snapshot_tables SET attempt = %(a)s, done = false, snapshot = NULL, rows = NULL,"
                " bytes = NULL, seconds = NULL, done_at = NULL"
                " WHERE run_id = %(r)s AND step_id = %(s)s AND copy_group IN (SELECT copy_group FROM"
                " bluegreen.snapshot_tables WHERE run_id = %(r)s AND step_id = %(s)s AND NOT done)",
                {"a": attempt, "r": self.run_id, "s": self.step_id})
            todo = target.execute(
                "SELECT relation, part, parts FROM bluegreen.snapshot_tables WHERE run_id = %s AND step_id = %s"
                " AND NOT done ORDER BY relation, part", (self.run_id, self.step_id)).fetchall()
        by_name = {t.display: t for t in catalog.tables}
        parts_out: list[_Part] = []
        for relation, part, parts in todo:
            found = by_name.get(relation)
            if found is None:
                raise PreconditionFailed(f"table {relation} was being copied but is gone from {self.source}")
            parts_out.append(_Part(found, int(part), int(parts)))
        for p in parts_out:
            if p.parts > 1:
                pages = max(1, -(-p.table.bytes // 8192))
                step = -(-pages // p.parts)
                p.lo = p.part * step if p.part else None
                p.hi = (p.part + 1) * step if p.part < p.parts - 1 else None
        return parts_out

    def _entries_by_table(self, snap: SourceSnapshot, entries: list[TocEntry],
                          catalog: Catalog) -> dict[str, list[TocEntry]]:
        """The post-data entries a table's rows alone need (its indexes; primary key, unique, check and
        exclusion constraints), by table: built as soon as the table is copied. Foreign keys, triggers,
        partitioned parents' indexes and the rest wait for the final pass."""
        leaves = {t.display for t in catalog.tables}
        probes = snap.conn.execute("SELECT 'pg_class'::regclass::oid, 'pg_constraint'::regclass::oid").fetchone()
        assert probes is not None
        pg_class, pg_constraint = int(probes[0]), int(probes[1])
        owner: dict[tuple[int, int], str] = {}
        indexes = [e.oid for e in entries if e.catalog == pg_class and e.type == "INDEX"]
        if indexes:
            for oid, table in snap.conn.execute(
                    "SELECT i.indexrelid, format('%%I.%%I', n.nspname, c.relname) FROM pg_index i"
                    " JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE i.indexrelid = ANY (%s) AND c.relkind = 'r'", (indexes,)).fetchall():
                owner[(pg_class, int(oid))] = table
        constraints = [e.oid for e in entries if e.catalog == pg_constraint and e.type == "CONSTRAINT"]
        if constraints:
            for oid, table in snap.conn.execute(
                    "SELECT k.oid, format('%%I.%%I', n.nspname, c.relname) FROM pg_constraint k"
                    " JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE k.oid = ANY (%s) AND k.contype IN ('p', 'u', 'c', 'x') AND c.relkind = 'r'",
                    (constraints,)).fetchall():
                owner[(pg_constraint, int(oid))] = table
        out: dict[str, list[TocEntry]] = {}
        for entry in entries:
            table = owner.get((entry.catalog, entry.oid))
            if table is not None and table in leaves:
                out.setdefault(table, []).append(entry)
        return out

    def _foreign_keys(self, snap: SourceSnapshot, entries: list[TocEntry], catalog: Catalog) -> dict[int, int]:
        """Foreign keys between two plain tables of the copy, as ``{dump id: copy group}``.

        Both tables of a foreign key are in one copy group (``catalog._group``). Once every table of the
        group is copied and has its own indexes, the key can be added while other groups still copy,
        instead of in the final pass: a group that finished is never copied again (a resumed attempt keeps
        it), so no later TRUNCATE of a referenced table can meet the key. Foreign keys of partitioned
        tables or partitions are left to the final pass.
        """
        probe = snap.conn.execute("SELECT 'pg_constraint'::regclass::oid").fetchone()
        assert probe is not None
        candidates = {e.oid: e for e in entries if e.catalog == int(probe[0]) and e.type == "FK CONSTRAINT"}
        if not candidates:
            return {}
        groups = {t.display: t.group for t in catalog.tables}
        out: dict[int, int] = {}
        for oid, table, referenced in snap.conn.execute(
                "SELECT k.oid, format('%%I.%%I', n.nspname, c.relname), format('%%I.%%I', rn.nspname, r.relname)"
                " FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_class r ON r.oid = k.confrelid"
                " JOIN pg_namespace rn ON rn.oid = r.relnamespace WHERE k.oid = ANY (%s) AND k.contype = 'f'"
                " AND c.relkind = 'r' AND NOT c.relispartition AND r.relkind = 'r' AND NOT r.relispartition",
                (list(candidates),)).fetchall():
            group = groups.get(table)
            if group is not None and groups.get(referenced) == group:
                out[candidates[int(oid)].dump_id] = group
        return out

    def _copy_parts(self, snap: SourceSnapshot, target: psycopg.Connection[Any], parts: list[_Part],
                    catalog: Catalog, result: Result, src_info: str, src_env: dict[str, str],
                    early: dict[str, list[TocEntry]], build: Callable[[TocEntry, bool], None],
                    foreign_keys: dict[int, list[TocEntry]] | None = None) -> None:
        """Copy the parts with ``jobs`` workers; build each table's own indexes once its rows are in, and a
        copy group's foreign keys (``foreign_keys``: entries by group) once all of its tables have theirs."""
        done_rows = self._done_rows()
        for relation, snapshot in done_rows.items():
            result.table_snapshots[relation] = snapshot
        kept = len({r for r in done_rows})
        result.totals.skipped = kept
        if kept:
            self.hooks.note(f"{kept} table(s) were copied by an earlier attempt and are kept")
        if not parts:
            return
        tables = {p.table.display for p in parts}
        split_tables = {p.table.display for p in parts if p.parts > 1}
        for display in sorted(split_tables):
            self._truncate(catalog.table(display), result.attempt)
        parts.sort(key=lambda p: (-(p.table.bytes // max(1, p.parts)), p.table.display, p.part))
        total_bytes = sum(catalog.table(t).bytes for t in tables)
        remaining = {t: sum(1 for p in parts if p.table.display == t) for t in tables}
        table_stats: dict[str, list[float]] = {t: [0, 0, 0.0] for t in tables}
        started = time.monotonic()
        last_report = 0.0
        # a group's foreign keys wait until every table of the group is copied with its own indexes built
        members: dict[int, set[str]] = {}
        for t in catalog.tables:
            members.setdefault(t.group, set()).add(t.display)
        fk_waiting = {g: list(entries) for g, entries in (foreign_keys or {}).items() if members[g] <= tables}
        unsettled = {g: set(members[g]) for g in fk_waiting}
        building: dict[str, int] = {}
        owner: dict[int, str] = {}
        pool = ThreadPoolExecutor(max_workers=self.options.jobs, thread_name_prefix="bluegreen-copy")

        def ready(display: str) -> None:
            """``display`` has its rows and its own indexes: queue its ANALYZE, then see to its group."""
            if self.options.analyze:
                new = pool.submit(self._analyze, catalog.table(display).relation)
                futures[new] = _Analyze(display)
                pending.add(new)
            settled(display)

        def settled(display: str) -> None:
            """``display`` has its rows and its indexes: release its group's foreign keys if it was the last."""
            group = catalog.table(display).group
            waiting = unsettled.get(group)
            if waiting is None:
                return
            waiting.discard(display)
            if not waiting:
                for entry in fk_waiting.pop(group, []):
                    new = pool.submit(build, entry, len(pending) >= self.options.jobs)
                    futures[new] = entry
                    pending.add(new)

        try:
            futures: dict[Future[Any], _Part | TocEntry | _Analyze] = {
                pool.submit(self._copy_part, snap, p, result.attempt, src_info, src_env): p for p in parts}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in finished:
                    part = futures[future]
                    if isinstance(part, _Analyze):
                        future.result()
                        self._analyzed.add(part.display)
                        continue
                    if isinstance(part, TocEntry):
                        future.result()
                        self._built_early.add(part.oid)
                        table_of = owner.pop(part.dump_id, None)
                        if table_of is not None:
                            building[table_of] -= 1
                            if building[table_of] == 0:
                                ready(table_of)
                        continue
                    rows, nbytes, seconds = future.result()
                    stats = table_stats[part.table.display]
                    stats[0] += rows
                    stats[1] += nbytes
                    stats[2] = max(stats[2], seconds)
                    remaining[part.table.display] -= 1
                    if remaining[part.table.display] == 0:
                        result.table_snapshots[part.table.display] = snap.snapshot
                        result.totals.tables += 1
                        result.totals.rows += int(stats[0])
                        result.totals.bytes += int(stats[1])
                        rate = stats[1] / 1e6 / stats[2] if stats[2] else 0.0
                        self.hooks.progress(f"{part.table.display} ({stats[1] / 1e6:,.1f} MB, {rate:,.0f} MB/s)",
                                            stats[0], stats[0], "rows")
                        # its indexes go to the back of the queue: idle workers build them while others copy
                        display = part.table.display
                        building[display] = 0
                        for entry in self._missing_on_target(snap, target, early.get(display, []), quiet=True):
                            new = pool.submit(build, entry, len(pending) >= self.options.jobs)
                            futures[new] = entry
                            pending.add(new)
                            owner[entry.dump_id] = display
                            building[display] += 1
                        if building[display] == 0:
                            ready(display)
                now = time.monotonic()
                if now - last_report >= 2.0 or not pending:
                    last_report = now
                    with self._lock:
                        streamed = self._streamed
                    rate = streamed / 1e6 / max(now - started, 1e-6)
                    self.hooks.progress(
                        f"copy ({streamed / 1e6:,.0f} MB streamed, ~{total_bytes / 1e6:,.0f} MB on disk;"
                        f" {result.totals.rows:,} rows done; {rate:,.0f} MB/s)", result.totals.tables, len(tables),
                        "tables")
        except BaseException:
            self._cancel.set()  # the other workers abandon their COPY (their transactions roll back)
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)

    def _analyze(self, name: QualifiedName, only: bool = False) -> None:
        """ANALYZE one relation of the target on a connection of its own (SHARE UPDATE EXCLUSIVE on it)."""
        if self._cancel.is_set():
            return
        with connect(self.dsns[self.target], self.target, application_name="bluegreen analyze") as conn:
            conn.execute("SET statement_timeout = 0")
            statement = sql.SQL("ANALYZE ONLY {}") if only else sql.SQL("ANALYZE {}")
            try:
                conn.execute(statement.format(name.ident))
            except psycopg.Error as exc:
                raise BluegreenError(f"ANALYZE of {name.display} on {self.target} failed: {_pg_message(exc)}") from exc

    def _analyze_rest(self, target: psycopg.Connection[Any], catalog: Catalog) -> None:
        """ANALYZE what the copy did not: partitioned parents (``ONLY`` from PostgreSQL 17 on, so their leaves
        are not sampled a second time), materialized views, and every table when nothing was analyzed during
        the copy (a dump, or tables kept from an earlier attempt), ``jobs`` at a time."""
        rows = target.execute(
            "SELECT n.nspname, c.relname, c.relkind = 'p',"
            " current_setting('server_version_num')::int >= 170000"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = ANY (%s) AND c.relkind IN ('r', 'm', 'p') AND c.relpersistence <> 't'"
            " ORDER BY c.relpages DESC", (list(catalog.schemas),)).fetchall()
        todo = [(name, parent and only) for name, parent, only in
                ((QualifiedName(r[0], r[1]), bool(r[2]), bool(r[3])) for r in rows)
                if name.display not in self._analyzed]
        self.hooks.progress("analyze", 0, len(todo), "tables")
        if not todo:
            return
        done = 0

        with ThreadPoolExecutor(max_workers=self.options.jobs, thread_name_prefix="bluegreen-analyze") as pool:
            for future in [pool.submit(self._analyze, name, only) for name, only in todo]:
                future.result()
                done += 1
                self.hooks.progress("analyze", done, len(todo), "tables")

    def _done_rows(self) -> dict[str, str]:
        with connect(self.dsns[self.target], self.target) as conn:
            rows = conn.execute(
                "SELECT relation, min(snapshot) FROM bluegreen.snapshot_tables WHERE run_id = %s AND step_id = %s"
                " GROUP BY relation HAVING bool_and(done)", (self.run_id, self.step_id)).fetchall()
        return {r[0]: r[1] for r in rows}

    def _truncate(self, table: Table, attempt: int) -> None:
        """Empty a split table before its parts are copied (they cannot TRUNCATE: they run side by side)."""
        with connect(self.dsns[self.target], self.target) as conn, conn.transaction():
            owned = conn.execute(
                "SELECT count(*) FROM (SELECT FROM bluegreen.snapshot_tables WHERE run_id = %s AND step_id = %s"
                " AND relation = %s AND attempt = %s FOR UPDATE) x",
                (self.run_id, self.step_id, table.display, attempt)).fetchone()
            if not owned or not owned[0]:
                raise BluegreenError(f"copy of {table.display}: another attempt took it over")
            conn.execute(sql.SQL("TRUNCATE ONLY {}").format(table.relation.ident))

    def _copy_part(self, snap: SourceSnapshot, part: _Part, attempt: int, src_info: str,
                   src_env: dict[str, str]) -> tuple[int, int, float]:
        """Stream one table (or one ctid range of it) into the target; mark it done in the same transaction."""
        table = part.table
        rel = table.relation.ident
        started = time.monotonic()
        binary = self.options.format == "binary" or (self.options.format == "auto" and table.binary)
        fmt = sql.SQL("FORMAT binary") if binary else sql.SQL("FORMAT text")
        cols = table.copy_columns
        col_list = sql.SQL(" ({})").format(sql.SQL(", ").join(sql.Identifier(c) for c in cols)) if cols \
            else sql.SQL("")
        freeze = part.parts == 1
        copy_in = sql.SQL("COPY {}{} FROM STDIN ({}{})").format(rel, col_list, fmt,
                                                             sql.SQL(", FREEZE") if freeze else sql.SQL(""))
        if part.parts == 1:
            copy_out: sql.Composable = sql.SQL("COPY {}{} TO STDOUT ({})").format(rel, col_list, fmt)
        else:
            conds = []
            if part.lo is not None:
                conds.append(sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({part.lo},0)")))
            if part.hi is not None:
                conds.append(sql.SQL("ctid < {}::tid").format(sql.Literal(f"({part.hi},0)")))
            select = sql.SQL(", ").join(sql.Identifier(c) for c in cols) if cols else sql.SQL("")
            copy_out = sql.SQL("COPY (SELECT {} FROM ONLY {} WHERE {}) TO STDOUT ({})").format(
                select, rel, sql.SQL(" AND ").join(conds), fmt)
        conn = connect(self.dsns[self.target], self.target, application_name="bluegreen copy")
        try:
            conn.execute("SET statement_timeout = 0")
            for name, value in self._load_settings:
                conn.execute(sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
            copied = 0
            with conn.transaction(), conn.cursor() as cur:
                row = cur.execute(
                    "SELECT attempt, done FROM bluegreen.snapshot_tables WHERE run_id = %s AND step_id = %s"
                    " AND relation = %s AND part = %s FOR UPDATE",
                    (self.run_id, self.step_id, table.display, part.part)).fetchone()
                if row is None or int(row[0]) != attempt:
                    raise BluegreenError(f"copy of {table.display}: another attempt took it over")
                if freeze:
                    cur.execute(sql.SQL("TRUNCATE ONLY {}").format(rel))
                argv = [self._psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", src_info,
                        "-c", "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
                        "-c", f"SET TRANSACTION SNAPSHOT '{snap.id}'",
                        "-c", copy_out.as_string(conn), "-c", "COMMIT"]
                with tempfile.TemporaryFile() as errors, cur.copy(copy_in) as copy:
                    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL,
                                            env=src_env, preexec_fn=die_with_parent)
                    try:
                        assert proc.stdout is not None
                        fd = proc.stdout.fileno()
                        with contextlib.suppress(OSError):  # a larger pipe: fewer, bigger reads
                            fcntl.fcntl(fd, _F_SETPIPE_SZ, CHUNK)
                        while True:
                            chunk = os.read(fd, CHUNK)
                            if not chunk:
                                break
                            if self._cancel.is_set():
                                raise BluegreenError(f"copy of {table.display} abandoned: another table failed")
                            copy.write(chunk)
                            fault("during", f"copy_table:{self.step_id}:{table.display}")
                            copied += len(chunk)
                            with self._lock:
                                self._streamed += len(chunk)
                        code = proc.wait()
                    finally:
                        if proc.poll() is None:
                            proc.kill()
                            proc.wait()
                    if code != 0:
                        errors.seek(0)
                        raise BluegreenError(f"reading {table.display} from {self.source} failed (psql exit {code}): "
                                             + tail(errors.read().decode("utf-8", errors="replace")))
                rows = max(cur.rowcount, 0)
                seconds = time.monotonic() - started
                cur.execute(
                    "UPDATE bluegreen.snapshot_tables SET done = true, snapshot = %s, rows = %s, bytes = %s,"
                    " seconds = %s, done_at = clock_timestamp() WHERE run_id = %s AND step_id = %s"
                    " AND relation = %s AND part = %s",
                    (snap.snapshot, rows, copied, seconds, self.run_id, self.step_id, table.display, part.part))
            fault("after", f"copy_table:{self.step_id}:{table.display}")
            return rows, copied, seconds
        except psycopg.Error as exc:
            raise BluegreenError(f"copying {table.display} into {self.target} failed: {_pg_message(exc)}") from exc
        finally:
            conn.close()

    # -- post-data bookkeeping --------------------------------------------------------------------

    def _without_own_triggers(self, snap: SourceSnapshot, entries: list[TocEntry]) -> list[TocEntry]:
        """Drop bluegreen's own objects from a restore list: the capture triggers, and the logical captures'
        publications (with their table memberships). They belong to the source."""
        own: set[tuple[int, int]] = set()
        for query in (
                "SELECT 'pg_trigger'::regclass::oid, oid FROM pg_trigger WHERE starts_with(tgname::text, %(p)s)",
                "SELECT 'pg_publication'::regclass::oid, oid FROM pg_publication"
                " WHERE starts_with(pubname::text, %(p)s)",
                "SELECT 'pg_publication_rel'::regclass::oid, r.oid FROM pg_publication_rel r"
                " JOIN pg_publication p ON p.oid = r.prpubid WHERE starts_with(p.pubname::text, %(p)s)"):
            own |= {(int(r[0]), int(r[1])) for r in snap.conn.execute(query, {"p": TRIGGER_PREFIX}).fetchall()}
        return [e for e in entries if (e.catalog, e.oid) not in own]

    def _missing_on_target(self, snap: SourceSnapshot, target: psycopg.Connection[Any],
                           entries: list[TocEntry], quiet: bool = False) -> list[TocEntry]:
        """Post-data entries whose object the target does not have yet (a resumed restore skips the rest)."""
        probes = snap.conn.execute(
            "SELECT 'pg_class'::regclass::oid, 'pg_constraint'::regclass::oid, 'pg_trigger'::regclass::oid,"
            " 'pg_rewrite'::regclass::oid, 'pg_policy'::regclass::oid, 'pg_statistic_ext'::regclass::oid").fetchone()
        assert probes is not None
        pg_class, pg_constraint, pg_trigger, pg_rewrite, pg_policy, pg_statistic_ext = (int(x) for x in probes)
        queries = {
            pg_class: "SELECT c.oid, format('%%I.%%I', n.nspname, c.relname), NULL FROM pg_class c"
                      " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = ANY (%s)",
            pg_constraint: "SELECT c.oid, c.conname, CASE WHEN c.conrelid <> 0"
                           " THEN format('%%I.%%I', n.nspname, r.relname) ELSE format('type %%s', c.contypid) END"
                           " FROM pg_constraint c LEFT JOIN pg_class r ON r.oid = c.conrelid"
                           " LEFT JOIN pg_namespace n ON n.oid = r.relnamespace WHERE c.oid = ANY (%s)",
            pg_trigger: "SELECT t.oid, t.tgname, format('%%I.%%I', n.nspname, r.relname) FROM pg_trigger t"
                        " JOIN pg_class r ON r.oid = t.tgrelid JOIN pg_namespace n ON n.oid = r.relnamespace"
                        " WHERE t.oid = ANY (%s)",
            pg_rewrite: "SELECT w.oid, w.rulename, format('%%I.%%I', n.nspname, r.relname) FROM pg_rewrite w"
                        " JOIN pg_class r ON r.oid = w.ev_class JOIN pg_namespace n ON n.oid = r.relnamespace"
                        " WHERE w.oid = ANY (%s)",
            pg_policy: "SELECT p.oid, p.polname, format('%%I.%%I', n.nspname, r.relname) FROM pg_policy p"
                       " JOIN pg_class r ON r.oid = p.polrelid JOIN pg_namespace n ON n.oid = r.relnamespace"
                       " WHERE p.oid = ANY (%s)",
            pg_statistic_ext: "SELECT s.oid, format('%%I.%%I', n.nspname, s.stxname), NULL FROM pg_statistic_ext s"
                              " JOIN pg_namespace n ON n.oid = s.stxnamespace WHERE s.oid = ANY (%s)",
        }
        checks = {
            pg_class: "SELECT to_regclass(%s) IS NOT NULL",
            pg_constraint: "SELECT EXISTS (SELECT FROM pg_constraint WHERE conname = %s"
                           " AND conrelid = to_regclass(%s))",
            pg_trigger: "SELECT EXISTS (SELECT FROM pg_trigger WHERE tgname = %s AND tgrelid = to_regclass(%s))",
            pg_rewrite: "SELECT EXISTS (SELECT FROM pg_rewrite WHERE rulename = %s AND ev_class = to_regclass(%s))",
            pg_policy: "SELECT EXISTS (SELECT FROM pg_policy WHERE polname = %s AND polrelid = to_regclass(%s))",
            pg_statistic_ext: "SELECT EXISTS (SELECT FROM pg_statistic_ext s JOIN pg_namespace n"
                              " ON n.oid = s.stxnamespace WHERE format('%%I.%%I', n.nspname, s.stxname) = %s)",
        }
        keep: list[TocEntry] = []
        by_catalog: dict[int, list[TocEntry]] = {}
        for entry in entries:
            if entry.catalog in queries:
                by_catalog.setdefault(entry.catalog, []).append(entry)
            else:
                keep.append(entry)
        exists: set[int] = set()
        for catalog_oid, group in by_catalog.items():
            for oid, name, owner in snap.conn.execute(queries[catalog_oid], ([e.oid for e in group],)).fetchall():
                args = (name,) if catalog_oid in (pg_class, pg_statistic_ext) else (name, owner)
                if owner is not None and str(owner).startswith("type "):
                    continue  # a domain's constraint is part of its type (pre-data)
                present = target.execute(checks[catalog_oid], args).fetchone()
                if present and present[0]:
                    exists.add(int(oid))
            keep.extend(e for e in group if e.oid not in exists)
        order = {e.dump_id: i for i, e in enumerate(entries)}
        keep.sort(key=lambda e: order[e.dump_id])
        earlier = exists - self._built_early
        if earlier and not quiet:
            self.hooks.note(f"{len(earlier)} index(es)/constraint(s) were restored by an earlier attempt and are kept")
        return keep


def clean_target(conn: psycopg.Connection[Any], schemas: Sequence[str], run_id: int, step_id: str) -> None:
    """Drop what a snapshot restored into the target: its schemas (public is emptied and made again)."""
    for statement in clean_statements(schemas, run_id, step_id):
        conn.execute(statement)


def clean_statements(schemas: Sequence[str], run_id: int | None, step_id: str) -> list[sql.Composed | sql.SQL]:
    """The statements of :func:`clean_target` (also the step's rollback actions)."""
    out: list[sql.Composed | sql.SQL] = []
    for schema in schemas:
        if schema in OWN_SCHEMAS:
            continue
        out.append(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        if schema == "public":
            out.append(sql.SQL("CREATE SCHEMA public AUTHORIZATION pg_database_owner"))
            out.append(sql.SQL("GRANT USAGE ON SCHEMA public TO PUBLIC"))
    forget = sql.SQL(
        "DO $$BEGIN IF to_regclass('bluegreen.snapshot_tables') IS NOT NULL THEN"
        " DELETE FROM bluegreen.snapshot_tables WHERE step_id = {s}{r}; END IF;"
        " IF to_regclass('bluegreen.replay_progress') IS NOT NULL THEN"
        " DELETE FROM bluegreen.replay_progress WHERE true{r}; END IF; END$$").format(
        s=sql.Literal(step_id),
        r=sql.SQL(" AND run_id = {}").format(sql.Literal(run_id)) if run_id is not None else sql.SQL(""))
    out.append(forget)
    return out


def _pg_message(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    return secrets.redact(primary or str(exc).strip() or type(exc).__name__)


__all__ = [
    "Hooks",
    "Options",
    "QualifiedName",
    "Result",
    "SnapshotEngine",
    "SourceSnapshot",
    "Totals",
    "clean_statements",
    "clean_target",
]
