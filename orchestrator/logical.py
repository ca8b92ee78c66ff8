"""Capture by logical decoding: a run's publication and ``pgoutput`` slot, the checks before them, their end.

One capture step with ``method: logical`` owns one publication and one logical replication slot on its
cluster, both named from the run id and the step id (:func:`capture_name`). The publication lists the
captured tables (``FOR TABLE``: it needs only ownership of them, not superuser); the slot decodes every
change committed on them after its consistent point. Nothing runs in the captured cluster's write path:
the server already writes the WAL; ``wal_level = logical`` adds the old key (or row) to it.

Where the copy and the capture meet: when a snapshot step copies from the captured cluster, it creates
the slot itself on a replication connection (``CREATE_REPLICATION_SLOT ... LOGICAL pgoutput (SNAPSHOT
'export')``, :class:`ExportedSlot`) and copies under the snapshot that command exports, so "in the copy"
and "to replay" meet exactly at the slot's consistent point. Without a snapshot step (a reverse capture
on green), the capture step creates the slot at once: what is written from then on is captured.

Hygiene: a slot holds WAL on its cluster until it is advanced or dropped. :class:`WalGuard` watches the
run's slots and drops one that retains more than the capture's ``max_retained_wal`` before the disk
fills (the run then fails with that reason); every ending of a run drops them (success, rollback,
``bluegreen abort``), and ``bluegreen status`` lists any ``bluegreen_`` slot left behind by a crash.

DDL is not decoded: :func:`fingerprint` of the captured tables (columns, types, replica identity, and
the set of tables) is taken when the slot is created and compared at every replay round and at the
cutover's gate; a difference stops the run before cutover (:class:`SchemaChanged`).

Locks: ``CREATE PUBLICATION`` takes SHARE ROW EXCLUSIVE on each listed table for an instant (under
``lock_timeout``); ``ALTER TABLE ... REPLICA IDENTITY`` (when the plan asks for one) takes ACCESS
EXCLUSIVE for an instant, also under ``lock_timeout``. Creating a slot waits for the transactions
running at that moment to finish (it needs a consistent point): it takes no lock on any table.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from . import secrets
from .copy.names import QualifiedName
from .errors import BluegreenError

log = logging.getLogger(__name__)

SLOT_PREFIX = "bluegreen_"
PLUGIN = "pgoutput"
DEFAULT_MAX_RETAINED_WAL = 2 << 30


class SlotLost(BluegreenError):
    """A capture's slot is gone (dropped for retaining too much WAL, or by hand): its changes cannot be replayed."""


class SchemaChanged(BluegreenError):
    """DDL changed a captured table on the source during the window: decoding does not carry DDL."""


def capture_name(run_id: int | None, capture_id: str) -> str:
    """The slot's (and the publication's) name: ``bluegreen_<run>_<step id>``, in the characters a slot allows.

    Slot names take lower-case letters, digits and underscores, at most 63 bytes; a longer step id is
    shortened and given a hash so two steps never share a name.
    """
    run = str(run_id) if run_id is not None else "RUN"
    tail = re.sub(r"[^a-z0-9_]", "_", capture_id.lower())
    name = f"{SLOT_PREFIX}{run}_{tail}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(capture_id.encode()).hexdigest()[:8]
    return f"{name[:54]}_{digest}"


# -- what a capture needs from its cluster ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TableIdentity:
    """How a captured table identifies the old row in the WAL."""

    relation: QualifiedName
    identity: str  # 'd' (primary key), 'i' (an index), 'f' (full row), 'n' (nothing)
    key: tuple[str, ...]  # the identity's columns ('d': the primary key; 'i': the index's; 'f'/'n': none)
    persistence: str  # 'p' permanent, 'u' unlogged, 't' temporary
    owned: bool  # the current role may add it to a publication


def table_identities(conn: psycopg.Connection[Any], tables: Sequence[QualifiedName]) -> dict[str, TableIdentity]:
    """Read the replica identity, its key columns and the persistence of each table that exists, by display name."""
    if not tables:
        return {}
    out: dict[str, TableIdentity] = {}
    rows = conn.execute(
        "SELECT n.nspname, c.relname, c.relreplident, c.relpersistence, pg_has_role(c.relowner, 'USAGE'),"
        " COALESCE((SELECT array_agg(a.attname::text ORDER BY k.n) FROM pg_index i"
        "   CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n)"
        "   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        "   WHERE i.indrelid = c.oid AND CASE c.relreplident WHEN 'd' THEN i.indisprimary"
        "     WHEN 'i' THEN i.indisreplident ELSE false END), '{}')"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = ANY (SELECT to_regclass(t) FROM unnest(%s::text[]) t)",
        ([t.display for t in tables],)).fetchall()
    for schema, name, ident, persistence, owned, key in rows:
        rel = QualifiedName(schema, name)
        out[rel.display] = TableIdentity(rel, str(ident), tuple(key or ()), str(persistence), bool(owned))
    return out


def preflight(conn: psycopg.Connection[Any], cluster: str, capture_id: str, tables: Sequence[QualifiedName],
              unknown: Sequence[str], identities: dict[str, str], own_slot: bool, needs_sender: bool,
              reads_old: dict[str, set[str]] | None = None) -> list[str]:
    """Everything a logical capture needs from its cluster, checked read-only; one message per thing missing.

    :param tables: the tables to capture (resolved), ``unknown``: names the plan gave that do not exist.
    :param identities: the replica identity the plan sets per table (``full`` or an index name).
    :param own_slot: the capture's slot exists already (a resumed run): no free slot is needed.
    :param needs_sender: the slot is created on a replication connection (a snapshot step exports its snapshot).
    :param reads_old: per table, the non-key columns of the old row a ``when`` or a replay file reads.
    """
    problems: list[str] = []
    where = f"capture {capture_id!r} on {cluster}"
    row = conn.execute(
        "SELECT current_setting('wal_level'), current_setting('max_replication_slots')::int,"
        " (SELECT count(*) FROM pg_replication_slots), current_setting('max_wal_senders')::int,"
        " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'),"
        " (SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user),"
        " EXISTS (SELECT FROM pg_roles WHERE rolname = 'rds_replication')"
        "   AND pg_has_role(current_user, 'rds_replication', 'MEMBER'),"
        " has_database_privilege(current_database(), 'CREATE'), current_user").fetchone()
    assert row is not None
    wal_level, max_slots, slots, max_senders, senders, replication, rds, can_create, user = row
    if wal_level != "logical":
        problems.append(f"{where}: {cluster} runs with wal_level = {wal_level}; logical decoding needs"
                        " wal_level = logical (ALTER SYSTEM SET wal_level = logical, then restart the server),"
                        " or capture with method: trigger")
    if not own_slot and int(slots) >= int(max_slots):
        problems.append(f"{where}: no free replication slot ({slots} of max_replication_slots = {max_slots} in"
                        " use): drop an unused slot or raise max_replication_slots (a restart)")
    if needs_sender and int(senders) >= int(max_senders):
        problems.append(f"{where}: no free WAL sender ({senders} of max_wal_senders = {max_senders} in use):"
                        " raise max_wal_senders (a restart)")
    if not replication and not rds:
        problems.append(f"{where}: role {user} may not create a replication slot: it needs the REPLICATION"
                        f" attribute (ALTER ROLE {user} REPLICATION) or, on RDS, membership of rds_replication")
    if not can_create:
        problems.append(f"{where}: role {user} may not create a publication in this database (CREATE privilege)")
    problems += [f"{where}: no table {name} on {cluster} (tables: lists the tables to capture)" for name in unknown]
    found = table_identities(conn, tables)
    for table in tables:
        info = found.get(table.display)
        if info is None:
            continue
        if info.persistence != "p":
            kind = "unlogged" if info.persistence == "u" else "temporary"
            problems.append(f"{where}: {table.display} is {kind}: its writes are not in the WAL, so logical"
                            f" decoding cannot capture them; exclude it (exclude: [{table.display}])")
            continue
        if not info.owned:
            problems.append(f"{where}: role {user} does not own {table.display}: only its owner (or a superuser)"
                            " may add it to a publication")
        wanted = identities.get(table.display)
        if wanted is None and (info.identity == "n" or (info.identity == "d" and not info.key)):
            why = "REPLICA IDENTITY NOTHING" if info.identity == "n" else "no primary key"
            problems.append(f"{where}: {table.display} has {why}, so the WAL does not say which row an update or"
                            f" delete touched: give it a primary key, or set replica_identity: {{{table.display}:"
                            " full} (or a unique index's name) in the plan, or exclude it")
            continue
        old = (reads_old or {}).get(table.display, set())
        full = (wanted or "").lower() == "full" or (wanted is None and info.identity == "f")
        key = list(info.key)
        if wanted is not None and not full:  # the key will be the named index's columns
            key = [r[0] for r in conn.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid"
                " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)"
                " WHERE i.indrelid = to_regclass(%s) AND x.relname = %s", (table.display, wanted)).fetchall()]
        missing = [] if full else sorted(old - set(key))
        if missing:
            problems.append(f"{where}: the capture reads OLD.{missing[0]} of {table.display}, but {cluster} logs only"
                            f" the key of an old row ({', '.join(key) or 'none'}): set replica_identity:"
                            f" {{{table.display}: full}} in the plan")
    for display, wanted in identities.items():
        if wanted.lower() == "full" or display not in found:
            continue
        index = conn.execute(
            "SELECT i.indisunique AND i.indimmediate AND i.indpred IS NULL AND i.indexprs IS NULL"
            " FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid"
            " WHERE i.indrelid = to_regclass(%s) AND x.relname = %s", (display, wanted)).fetchone()
        if index is None:
            problems.append(f"{where}: replica_identity of {display}: no index {wanted!r} on it")
        elif not index[0]:
            problems.append(f"{where}: replica_identity of {display}: index {wanted!r} is not a plain unique"
                            " index (no expression, no predicate, not deferrable)")
    return problems


def replica_identity_sql(table: QualifiedName, wanted: str) -> sql.Composed:
    """``ALTER TABLE ... REPLICA IDENTITY FULL`` or ``USING INDEX <name>``."""
    if wanted.lower() == "full":
        return sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(table.ident)
    return sql.SQL("ALTER TABLE {} REPLICA IDENTITY USING INDEX {}").format(table.ident, sql.Identifier(wanted))


def restore_identity_sql(table: QualifiedName, identity: str, index: str | None) -> sql.Composed:
    """Put a table's replica identity back as it was (``identity``: pg_class.relreplident)."""
    if identity == "i" and index:
        return replica_identity_sql(table, index)
    word = {"f": "FULL", "n": "NOTHING"}.get(identity, "DEFAULT")
    return sql.SQL("ALTER TABLE {} REPLICA IDENTITY {}").format(table.ident, sql.SQL(word))


def publication_sql(name: str, tables: Sequence[QualifiedName]) -> sql.Composed:
    """Create the publication unless it exists (a resumed action), listing the tables (all changes, TRUNCATE too)."""
    listed = sql.SQL(", ").join(t.ident for t in tables)
    create = sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert, update, delete, truncate')").format(
        sql.Identifier(name), listed)
    return sql.SQL("DO $bg$BEGIN IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = {}) THEN {}; END IF;"
                   " END$bg$").format(sql.Literal(name), create)


# -- fingerprint of the captured tables (DDL detection) ----------------------------------------------


def fingerprint(conn: psycopg.Connection[Any], tables: Sequence[QualifiedName],
                schemas: Sequence[str] | None = None) -> dict[str, str]:
    """Per captured table a digest of its columns (names, types, typmods, order), replica identity and kind.

    With ``schemas`` (``tables: all``), the key ``*tables*`` lists every table of those schemas too, so a
    table created during the window is seen. A table that is gone maps to ``"missing"``.
    """
    out = {t.display: "missing" for t in tables}
    rows = conn.execute(
        "SELECT format('%%I.%%I', n.nspname, c.relname), md5(concat_ws('|', c.relreplident, c.relkind,"
        " (SELECT string_agg(concat_ws(':', a.attnum, a.attname, a.atttypid::regtype, a.atttypmod, a.attnotnull,"
        " a.attisdropped, a.attgenerated), ',' ORDER BY a.attnum) FROM pg_attribute a"
        " WHERE a.attrelid = c.oid AND a.attnum > 0)))"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = ANY (SELECT to_regclass(t) FROM unnest(%s::text[]) t)",
        ([t.display for t in tables],)).fetchall()
    out.update({str(r[0]): str(r[1]) for r in rows})
    if schemas is not None:
        listed = conn.execute(
            "SELECT string_agg(format('%%I.%%I', n.nspname, c.relname), ',' ORDER BY n.nspname, c.relname)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p' AND n.nspname = ANY (%s)",
            (list(schemas),)).fetchone()
        out["*tables*"] = str(listed[0] if listed and listed[0] else "")
    return out


def fingerprint_changes(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """What differs between two fingerprints, one phrase per table."""
    changes: list[str] = []
    for key, value in before.items():
        if key == "*tables*":
            added = sorted(set(filter(None, now.get(key, "").split(","))) - set(filter(None, value.split(","))))
            changes += [f"table {name} was created (not captured)" for name in added]
        elif now.get(key) != value:
            changes.append(f"{key} was dropped" if now.get(key) == "missing" else f"{key} was altered")
    return changes


# -- slots ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlotInfo:
    """One logical slot as ``pg_replication_slots`` shows it."""

    name: str
    database: str
    active: bool
    retained: int | None  # bytes of WAL the slot keeps (current LSN - restart_lsn)
    confirmed_flush: str | None


def list_slots(conn: psycopg.Connection[Any], prefix: str = SLOT_PREFIX) -> list[SlotInfo]:
    """Every slot whose name starts with ``prefix`` on the connection's cluster (any database)."""
    rows = conn.execute(
        "SELECT slot_name, database, active, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,"
        " confirmed_flush_lsn::text FROM pg_replication_slots WHERE starts_with(slot_name::text, %s)"
        " ORDER BY slot_name", (prefix,)).fetchall()
    return [SlotInfo(str(r[0]), str(r[1] or ""), bool(r[2]), None if r[3] is None else int(r[3]), r[4])
            for r in rows]


def slot_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("SELECT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = %s)", (name,)).fetchone()
    return bool(row and row[0])


def create_slot(conn: psycopg.Connection[Any], name: str) -> str:
    """Create the slot through SQL (no snapshot exported); return its consistent point. Waits for running writers."""
    row = conn.execute("SELECT lsn::text FROM pg_create_logical_replication_slot(%s, %s)", (name, PLUGIN)).fetchone()
    assert row is not None
    return str(row[0])


def drop_slot(conn: psycopg.Connection[Any], name: str) -> bool:
    """Drop the slot if it exists, ending a session that holds it first; True if it was dropped."""
    for _ in range(50):
        row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (name,)).fetchone()
        if row is None:
            return False
        if row[0] is not None:
            conn.execute("SELECT pg_terminate_backend(%s, 1000)", (row[0],))
            continue
        try:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
            return True
        except psycopg.errors.ObjectInUse:
            continue
        except psycopg.errors.UndefinedObject:
            return False
    raise BluegreenError(f"slot {name} stays in use: drop it by hand (SELECT pg_drop_replication_slot('{name}'))")


def drop_capture(conn: psycopg.Connection[Any], name: str) -> list[str]:
    """Drop the slot and the publication of one capture; return what was dropped."""
    dropped = [f"slot {name}"] if drop_slot(conn, name) else []
    row = conn.execute("SELECT EXISTS (SELECT FROM pg_publication WHERE pubname = %s)", (name,)).fetchone()
    if row and row[0]:
        conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))
        dropped.append(f"publication {name}")
    return dropped


def drop_publication_sql(name: str) -> sql.Composed:
    return sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name))


def drop_slot_statements(name: str) -> tuple[sql.Composed, ...]:
    """Drop the slot if it exists, ending a session that still holds it first (autocommit statements)."""
    return (sql.SQL("SELECT pg_terminate_backend(active_pid, 1000) FROM pg_replication_slots WHERE slot_name = {}"
                    " AND active_pid IS NOT NULL").format(sql.Literal(name)),
            sql.SQL("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {}"
                    " AND NOT active").format(sql.Literal(name)))


class ExportedSlot:
    """The slot created on a replication connection, exporting the snapshot of its consistent point.

    The snapshot stays importable (``SET TRANSACTION SNAPSHOT``, ``pg_dump --snapshot``) as long as this
    connection stays open and runs nothing else: :meth:`close` when every reader has imported it.
    """

    def __init__(self, dsn: str, cluster: str, name: str) -> None:
        self.name = name
        try:
            self.conn = psycopg.connect(dsn, autocommit=True, replication="database", connect_timeout=10,
                                        application_name="bluegreen slot")
        except psycopg.Error as exc:
            raise BluegreenError(f"cannot open a replication connection to {cluster}"
                                 f" ({secrets.redact_dsn(dsn)}): {secrets.redact(str(exc).strip())}") from None
        try:
            row = self.conn.execute(sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL {} (SNAPSHOT 'export')").format(
                sql.Identifier(name), sql.Identifier(PLUGIN))).fetchone()
        except psycopg.Error as exc:
            self.conn.close()
            raise BluegreenError(f"creating replication slot {name} on {cluster} failed:"
                                 f" {secrets.redact(str(exc).strip())}") from None
        assert row is not None
        self.consistent_point: str = str(row[1])
        self.snapshot_name: str = str(row[2])

    def close(self) -> None:
        if not self.conn.closed:
            self.conn.close()


# -- the guard: a slot never fills its cluster's disk --------------------------------------------------


@dataclass(frozen=True, slots=True)
class GuardedSlot:
    name: str
    cluster: str
    limit: int


class WalGuard:
    """A thread that drops a run's slot once it retains more than its limit of WAL; :attr:`lost` says why.

    It polls every ``interval`` seconds with one query per cluster on its own connections. A dropped slot
    cannot be replayed from: the run fails at its next check (:meth:`check`) with that reason.
    """

    def __init__(self, dsns: dict[str, str], slots: Iterable[GuardedSlot], interval: float = 2.0,
                 on_drop: Callable[[str], None] | None = None) -> None:
        self.dsns = dsns
        self.slots = list(slots)
        self.interval = interval
        self.on_drop = on_drop
        self.lost: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bluegreen-wal-guard", daemon=True)

    def start(self) -> WalGuard:
        if self.slots:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def check(self) -> None:
        """Raise :class:`SlotLost` if the guard dropped a slot."""
        if self.lost:
            raise SlotLost("; ".join(self.lost.values()))

    def poll(self) -> None:
        """One look at every guarded slot (the thread calls it; tests may too)."""
        from .db import connect

        by_cluster: dict[str, list[GuardedSlot]] = {}
        for slot in self.slots:
            if slot.name not in self.lost:
                by_cluster.setdefault(slot.cluster, []).append(slot)
        for cluster, slots in by_cluster.items():
            with connect(self.dsns[cluster], cluster, application_name="bluegreen wal guard") as conn:
                retained = {s.name: s.retained for s in list_slots(conn)}
                for slot in slots:
                    size = retained.get(slot.name)
                    if size is None or size <= slot.limit:
                        continue
                    drop_capture(conn, slot.name)
                    reason = (f"slot {slot.name} on {cluster} retained {format_bytes(size)} of WAL, more than"
                              f" max_retained_wal {format_bytes(slot.limit)}: it was dropped (with its publication)"
                              f" before {cluster}'s disk filled, so its changes cannot be replayed; run the plan"
                              " again with --restart (a new capture and snapshot)")
                    self.lost[slot.name] = reason
                    log.error("%s", reason)
                    if self.on_drop is not None:
                        self.on_drop(reason)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception as exc:  # the guard must never take the run down by itself
                log.warning("WAL guard: %s", secrets.redact(str(exc)))


def format_bytes(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1024 or unit == "TB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} TB"
