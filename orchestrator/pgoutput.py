"""A reader of the logical replication protocol as the ``pgoutput`` plugin writes it (protocol version 1).

Each row that ``pg_logical_slot_peek_binary_changes(..., 'proto_version', '1', 'publication_names', ...)``
returns carries one message: :func:`parse_message` turns its bytes into a frozen dataclass. Tuple values
are in text format (what the column type's output function writes), decoded from UTF-8: ``None`` is SQL
NULL and :data:`UNCHANGED` a TOASTed value the WAL did not repeat. LSNs are integers
(:func:`lsn_to_int`), times are UTC datetimes. :class:`Decoder` assembles the messages into committed
transactions and keeps the relation cache.

Not supported: binary tuple data (``binary 'true'``), streamed in-progress transactions (protocol v2 and
later) and two-phase messages (v3); a message of those kinds raises :class:`ProtocolError`.
Reference: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)

_BEGIN = struct.Struct(">QqI")
_COMMIT = struct.Struct(">bQQq")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_MESSAGE = struct.Struct(">bQ")
_STREAM_TAGS = {ord("S"): "Stream Start", ord("E"): "Stream Stop", ord("c"): "Stream Commit",
                ord("A"): "Stream Abort", ord("b"): "Begin Prepare", ord("P"): "Prepare",
                ord("K"): "Commit Prepared", ord("r"): "Rollback Prepared", ord("p"): "Stream Prepare"}


class ProtocolError(ValueError):
    """Bytes that are not a pgoutput protocol v1 message (malformed, cut short, or of an unsupported kind)."""


class _Unchanged:
    """The value of a TOASTed column the WAL did not carry (an UPDATE that left it as it was)."""

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()
Value = str | None | _Unchanged
Row = tuple[Value, ...]


def lsn_to_int(text: str) -> int:
    """``16/B374D848`` -> its integer value."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def int_to_lsn(value: int) -> str:
    """An integer LSN as Postgres writes it (``16/B374D848``)."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def _time(micros: int) -> datetime:
    return PG_EPOCH + timedelta(microseconds=micros)


@dataclass(frozen=True, slots=True)
class Column:
    """A column of a Relation message: flags (1 = part of the replica identity), name, type and typmod."""

    flags: int
    name: str
    type_oid: int
    typmod: int

    @property
    def key(self) -> bool:
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Relation:
    """A table's definition, sent before its first change in a decoding session (and again after DDL)."""

    oid: int
    schema: str
    name: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[Column, ...]

    @property
    def qualified(self) -> tuple[str, str]:
        return self.schema, self.name


@dataclass(frozen=True, slots=True)
class Begin:
    """A transaction's start: the LSN of its commit record, its commit time, its (32-bit) xid."""

    final_lsn: int
    commit_time: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """A transaction's end: the commit record's LSN and the LSN just past it."""

    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class Insert:
    relation_oid: int
    new: Row


@dataclass(frozen=True, slots=True)
class Update:
    """An UPDATE: ``old`` is the old key (``old_kind`` 'K', sent when the key changed) or the old row ('O')."""

    relation_oid: int
    old: Row | None
    old_kind: str | None
    new: Row


@dataclass(frozen=True, slots=True)
class Delete:
    relation_oid: int
    old: Row
    old_kind: str


@dataclass(frozen=True, slots=True)
class Truncate:
    relation_oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class Origin:
    lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class TypeMessage:
    oid: int
    schema: str
    name: str


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """``pg_logical_emit_message`` output (with ``messages 'true'``)."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = Begin | Commit | Relation | Insert | Update | Delete | Truncate | Origin | TypeMessage | LogicalMessage


def _cstring(data: memoryview, pos: int) -> tuple[str, int]:
    end = bytes(data[pos:]).find(b"\0") if pos < len(data) else -1
    if end < 0:
        raise ProtocolError(f"unterminated string at byte {pos}")
    return str(data[pos:pos + end], "utf-8"), pos + end + 1


def _tuple(data: memoryview, pos: int) -> tuple[Row, int]:
    try:
        (ncols,) = _U16.unpack_from(data, pos)
    except struct.error:
        raise ProtocolError(f"tuple data cut short at byte {pos}") from None
    pos += 2
    values: list[Value] = []
    append = values.append
    size = len(data)
    for _ in range(ncols):
        if pos >= size:
            raise ProtocolError(f"tuple data cut short at byte {pos}")
        kind = data[pos]
        pos += 1
        if kind == 116:  # 't' text
            if pos + 4 > size:
                raise ProtocolError(f"tuple data cut short at byte {pos}")
            (length,) = _I32.unpack_from(data, pos)
            pos += 4
            if length < 0 or pos + length > size:
                raise ProtocolError(f"a value of {length} bytes at byte {pos} runs past the message")
            append(str(data[pos:pos + length], "utf-8"))
            pos += length
        elif kind == 110:  # 'n' null
            append(None)
        elif kind == 117:  # 'u' unchanged TOAST
            append(UNCHANGED)
        elif kind == 98:  # 'b' binary
            raise ProtocolError(f"binary tuple data at byte {pos - 1}: read the slot without 'binary'")
        else:
            raise ProtocolError(f"unknown tuple value kind {chr(kind)!r} at byte {pos - 1}")
    return tuple(values), pos


def _oid(data: memoryview, pos: int) -> int:
    try:
        return int(_U32.unpack_from(data, pos)[0])
    except struct.error:
        raise ProtocolError(f"message cut short at byte {pos}") from None


def parse_message(data: bytes | memoryview) -> Message:
    """Parse one pgoutput message (protocol v1).

    :raises ProtocolError: the bytes are not a complete message of a kind protocol v1 sends.
    """
    view = memoryview(data)
    if not view:
        raise ProtocolError("empty message")
    tag = view[0]
    try:
        if tag == 73:  # 'I'
            oid = _oid(view, 1)
            if view[5] != 78:  # 'N'
                raise ProtocolError(f"Insert: expected 'N' at byte 5, got {chr(view[5])!r}")
            new, _ = _tuple(view, 6)
            return Insert(oid, new)
        if tag == 85:  # 'U'
            oid = _oid(view, 1)
            pos = 5
            old: Row | None = None
            kind: str | None = None
            if view[pos] in (75, 79):  # 'K' or 'O'
                kind = chr(view[pos])
                old, pos = _tuple(view, pos + 1)
            if view[pos] != 78:
                raise ProtocolError(f"Update: expected 'N' at byte {pos}, got {chr(view[pos])!r}")
            new, _ = _tuple(view, pos + 1)
            return Update(oid, old, kind, new)
        if tag == 68:  # 'D'
            oid = _oid(view, 1)
            if view[5] not in (75, 79):
                raise ProtocolError(f"Delete: expected 'K' or 'O' at byte 5, got {chr(view[5])!r}")
            old, _ = _tuple(view, 6)
            return Delete(oid, old, chr(view[5]))
        if tag == 66:  # 'B'
            final, micros, xid = _BEGIN.unpack_from(view, 1)
            return Begin(final, _time(micros), xid)
        if tag == 67:  # 'C'
            flags, commit, end, micros = _COMMIT.unpack_from(view, 1)
            return Commit(flags, commit, end, _time(micros))
        if tag == 82:  # 'R'
            oid = _oid(view, 1)
            schema, pos = _cstring(view, 5)
            name, pos = _cstring(view, pos)
            ident = chr(view[pos])
            (ncols,) = _U16.unpack_from(view, pos + 1)
            pos += 3
            columns = []
            for _ in range(ncols):
                flags = view[pos]
                colname, pos = _cstring(view, pos + 1)
                type_oid, typmod = struct.unpack_from(">Ii", view, pos)
                pos += 8
                columns.append(Column(flags, colname, type_oid, typmod))
            return Relation(oid, schema, name, ident, tuple(columns))
        if tag == 84:  # 'T'
            (count,) = _U32.unpack_from(view, 1)
            options = view[5]
            oids = struct.unpack_from(f">{count}I", view, 6)
            return Truncate(tuple(int(o) for o in oids), bool(options & 1), bool(options & 2))
        if tag == 79:  # 'O'
            (lsn,) = _U64.unpack_from(view, 1)
            origin, _ = _cstring(view, 9)
            return Origin(lsn, origin)
        if tag == 89:  # 'Y'
            oid = _oid(view, 1)
            schema, pos = _cstring(view, 5)
            name, _ = _cstring(view, pos)
            return TypeMessage(oid, schema, name)
        if tag == 77:  # 'M'
            flags, lsn = _MESSAGE.unpack_from(view, 1)
            prefix, pos = _cstring(view, 10)
            (length,) = _U32.unpack_from(view, pos)
            content = bytes(view[pos + 4:pos + 4 + length])
            if len(content) != length:
                raise ProtocolError(f"Message: content of {length} bytes cut short")
            return LogicalMessage(bool(flags & 1), lsn, prefix, content)
    except (struct.error, IndexError):
        raise ProtocolError(f"{chr(tag)!r} message cut short ({len(view)} bytes)") from None
    if tag in _STREAM_TAGS:
        raise ProtocolError(f"{_STREAM_TAGS[tag]} message ({chr(tag)!r}): protocol v1 never sends it (streaming and"
                            " two-phase need v2 or later, which bluegreen does not read)")
    raise ProtocolError(f"unknown message tag {chr(tag)!r} (byte {tag})")


@dataclass(frozen=True, slots=True)
class Change:
    """One row change of a committed transaction, with the table definition in force when it arrived."""

    op: Literal["insert", "update", "delete", "truncate"]
    relation: Relation
    new: Row | None
    old: Row | None
    old_kind: str | None
    lsn: int
    relations: tuple[Relation, ...] = ()
    cascade: bool = False
    restart_identity: bool = False


@dataclass(slots=True)
class Transaction:
    """A committed transaction as decoded: its changes in order, and its transactional logical messages."""

    xid: int
    final_lsn: int
    end_lsn: int
    commit_time: datetime
    changes: list[Change] = field(default_factory=list)
    messages: list[LogicalMessage] = field(default_factory=list)


class Decoder:
    """Assemble parsed messages into committed transactions; keep the relation cache.

    A Relation message may arrive again with a new definition (after DDL): the latest wins, and a change
    always uses the definition in force when it arrived.
    """

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}
        self._current: Transaction | None = None

    @property
    def in_transaction(self) -> bool:
        return self._current is not None

    def feed(self, lsn: int, data: bytes | memoryview) -> list[Transaction | LogicalMessage]:
        """Take one message; return what it completed (a transaction at its Commit, a non-transactional message)."""
        msg = parse_message(data)
        current = self._current
        if isinstance(msg, Begin):
            if current is not None:
                raise ProtocolError(f"Begin of xid {msg.xid} inside the transaction of xid {current.xid}")
            self._current = Transaction(msg.xid, msg.final_lsn, 0, msg.commit_time)
            return []
        if isinstance(msg, Commit):
            if current is None:
                raise ProtocolError(f"Commit at {int_to_lsn(msg.commit_lsn)} without a Begin")
            current.end_lsn = msg.end_lsn
            self._current = None
            return [current]
        if isinstance(msg, Relation):
            self.relations[msg.oid] = msg
            return []
        if isinstance(msg, LogicalMessage):
            if msg.transactional:
                if current is None:
                    raise ProtocolError("a transactional logical message outside a transaction")
                current.messages.append(msg)
                return []
            return [msg]
        if isinstance(msg, Origin | TypeMessage):
            return []
        if current is None:
            raise ProtocolError(f"a {type(msg).__name__} outside a transaction")
        if isinstance(msg, Truncate):
            rels = tuple(self._relation(oid) for oid in msg.relation_oids)
            current.changes.append(Change("truncate", rels[0], None, None, None, lsn, rels, msg.cascade,
                                          msg.restart_identity))
        elif isinstance(msg, Insert):
            current.changes.append(Change("insert", self._relation(msg.relation_oid), msg.new, None, None, lsn))
        elif isinstance(msg, Update):
            current.changes.append(Change("update", self._relation(msg.relation_oid), msg.new, msg.old, msg.old_kind,
                                          lsn))
        else:
            current.changes.append(Change("delete", self._relation(msg.relation_oid), None, msg.old, msg.old_kind,
                                          lsn))
        return []

    def _relation(self, oid: int) -> Relation:
        found = self.relations.get(oid)
        if found is None:
            raise ProtocolError(f"a change of relation {oid} before its Relation message")
        return found
