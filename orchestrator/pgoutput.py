"""A parser of the ``pgoutput`` logical replication protocol, and a decoder of its messages into transactions.

Used by the logical-decoding capture: the rows of
``pg_logical_slot_peek_binary_changes(slot, upto_lsn, upto_nchanges, 'proto_version', '1',
'publication_names', 'pub', 'messages', 'true')`` are ``(lsn, xid, data)``, one pgoutput message per
row. :func:`parse_message` turns one ``data`` into a frozen dataclass (:class:`Begin`, :class:`Relation`,
:class:`Insert`, ...); :class:`Decoder` feeds on the rows in order, keeps the relation cache and hands
back each committed :class:`Transaction` (its changes as :class:`Change`, in the order they were made)
when its Commit arrives, and each non-transactional :class:`LogicalMessage` at once.

Protocol: version 1 as PostgreSQL 10 to 18 write it (``src/backend/replication/logical/proto.c``;
"Logical Replication Message Formats" in the manual), text-format tuple data: a value arrives as the
text its type's output function gives (``col::text``, except bool: ``'t'``/``'f'``), rendered under the
settings of the session that peeks (TimeZone, DateStyle, bytea_output, ...) and decoded from UTF-8 once;
SQL NULL is ``None``; a TOASTed value that the change did not touch and the server did not send is
:data:`UNCHANGED` (in the new tuple even under ``REPLICA IDENTITY FULL``, whose old tuple has it whole).

What the slot's SQL interface does, on PostgreSQL 15 and 18 (``tests/func/test_pgoutput.py``): the
``lsn`` column is, for Begin, the LSN of the transaction's first published change (Begin is sent
lazily; empty transactions are not sent at all); for a change and the Relation/Type rows before it,
where the change's WAL record starts; for a logical message, where its record ends; for Commit,
``Commit.end_lsn``. A transaction comes back from a later peek as long as the slot's confirmed position
is at or below its commit LSN: advance the slot to :attr:`Transaction.end_lsn` once it is applied.
Both ``upto_nchanges`` (counting rows) and ``upto_lsn`` cut between whole transactions. A peek decodes
only flushed WAL, so with ``synchronous_commit = off`` a commit can be missing for up to about
``wal_writer_delay``, until a synchronous commit that wrote WAL flushes it.

Not supported, and refused with :class:`ProtocolError` rather than skipped: binary tuple data (the
``binary`` option, kind ``'b'``), the streaming of in-progress transactions (proto_version 2: Stream
Start/Stop/Commit/Abort) and two-phase commit (proto_version 3: Begin Prepare, Prepare, Commit Prepared,
Rollback Prepared, Stream Prepare). None of them can appear with proto_version 1.

Speed: a message is read with precompiled :class:`struct.Struct` s from offsets into one ``bytes``, each
value decoded once; a small Update costs a few microseconds, which the replay budget needs.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, TypeAlias

__all__ = [
    "UNCHANGED",
    "Begin",
    "Change",
    "Column",
    "Commit",
    "Decoder",
    "Delete",
    "Insert",
    "LogicalMessage",
    "Message",
    "Origin",
    "ProtocolError",
    "Relation",
    "Transaction",
    "Truncate",
    "TypeMessage",
    "Unchanged",
    "Update",
    "Value",
    "int_to_lsn",
    "lsn_to_int",
    "parse_message",
]


class ProtocolError(ValueError):
    """A malformed, truncated, unknown or out-of-place pgoutput message.

    :ivar tag: the message's tag (``'U'``), when known.
    :ivar offset: the byte offset in the message where reading failed, when it is about the bytes.
    """

    def __init__(self, message: str, *, tag: str | None = None, offset: int | None = None) -> None:
        self.tag = tag
        self.offset = offset
        super().__init__(message)


class Unchanged(enum.Enum):
    """The type of :data:`UNCHANGED`."""

    UNCHANGED = "UNCHANGED"

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = Unchanged.UNCHANGED
"""A TOASTed value the change did not modify and the server did not send (kind ``'u'``)."""

Value: TypeAlias = str | Literal[Unchanged.UNCHANGED] | None
"""One column of a tuple: its text form as sent, ``None`` for SQL NULL, or :data:`UNCHANGED`."""

Row: TypeAlias = tuple[Value, ...]

# -- LSNs --------------------------------------------------------------------------------------

_LSN_TEXT = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")
_LSN_MAX = (1 << 64) - 1


def lsn_to_int(text: str) -> int:
    """Return the integer of a ``pg_lsn`` in its text form (``"16/B374D848"``).

    :raises ValueError: ``text`` is not an LSN.
    """
    found = _LSN_TEXT.fullmatch(text)
    if found is None:
        raise ValueError(f"not an LSN: {text!r} (expected two hex numbers, as in '16/B374D848')")
    return (int(found.group(1), 16) << 32) | int(found.group(2), 16)


def int_to_lsn(value: int) -> str:
    """Return the text form of an LSN, as PostgreSQL writes it (``"16/B374D848"``).

    :raises ValueError: ``value`` is not in the range of a 64-bit unsigned integer.
    """
    if not 0 <= value <= _LSN_MAX:
        raise ValueError(f"not an LSN: {value} (out of the range of 64-bit unsigned integers)")
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


# -- messages ----------------------------------------------------------------------------------

_PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)


def _pg_time(micros: int) -> datetime:
    return _PG_EPOCH + timedelta(microseconds=micros)


@dataclass(frozen=True, slots=True)
class Column:
    """A column of a :class:`Relation`: ``flags`` bit 1 marks a column of the replica identity."""

    flags: int
    name: str
    type_oid: int
    typmod: int

    @property
    def key(self) -> bool:
        """Whether the column is part of the replica identity (every column under ``FULL``)."""
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Relation:
    """A table's definition, sent before its first change in a decoding session and after it changes.

    ``schema`` is ``""`` for ``pg_catalog``; ``replica_identity`` is ``'d'`` (default: the primary key),
    ``'n'`` (nothing), ``'f'`` (full) or ``'i'`` (an index). ``columns`` are the published ones, in the
    order of every tuple of this relation.
    """

    oid: int
    schema: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]

    @property
    def qualified(self) -> tuple[str, str]:
        """Return ``(schema, name)``."""
        return (self.schema, self.name)


@dataclass(frozen=True, slots=True)
class Begin:
    """The start of a committed transaction: ``final_lsn`` is its commit record's LSN."""

    final_lsn: int
    commit_time: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """The end of a transaction: ``commit_lsn`` (= :attr:`Begin.final_lsn`) and ``end_lsn``, where its
    commit record starts and ends."""

    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class Insert:
    """A row inserted into the relation ``relation_oid``."""

    relation_oid: int
    new: Row


@dataclass(frozen=True, slots=True)
class Update:
    """A row updated: ``old`` is its old key (``old_kind`` ``'K'``), old row (``'O'``) or not sent (``None``)."""

    relation_oid: int
    old: Row | None
    old_kind: str | None
    new: Row


@dataclass(frozen=True, slots=True)
class Delete:
    """A row deleted: ``old`` is its key (``old_kind`` ``'K'``) or the whole row (``'O'``)."""

    relation_oid: int
    old: Row
    old_kind: str


@dataclass(frozen=True, slots=True)
class Truncate:
    """One TRUNCATE of the relations ``relation_oids``, with its options."""

    relation_oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class Origin:
    """The replication origin of the transaction in progress, and its commit LSN on that origin."""

    lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class TypeMessage:
    """A data type's name (sent for types that are not built in, before a relation using them)."""

    oid: int
    schema: str
    name: str


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """A message of ``pg_logical_emit_message(transactional, prefix, content)``."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message: TypeAlias = (
    Begin | Commit | Relation | Insert | Update | Delete | Truncate | Origin | TypeMessage | LogicalMessage
)

_BEGIN = struct.Struct("!QqI")  # final_lsn, commit time, xid
_COMMIT = struct.Struct("!BQQq")  # flags, commit_lsn, end_lsn, commit time
_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_OID_KIND = struct.Struct("!IB")  # relation oid, then 'N' / 'K' / 'O'
_COLUMN_TAIL = struct.Struct("!Ii")  # type oid, typmod
_MESSAGE_HEAD = struct.Struct("!BQ")  # flags, lsn
_TRUNCATE_HEAD = struct.Struct("!IB")  # relation count, options
_unpack_u16 = _U16.unpack_from
_unpack_u32 = _U32.unpack_from
_unpack_oid_kind = _OID_KIND.unpack_from

_NEW, _KEY, _OLD = ord("N"), ord("K"), ord("O")

_LATER_VERSIONS: Final = {
    "S": "Stream Start (proto_version 2)",
    "E": "Stream Stop (proto_version 2)",
    "c": "Stream Commit (proto_version 2)",
    "A": "Stream Abort (proto_version 2)",
    "b": "Begin Prepare (two-phase, proto_version 3)",
    "P": "Prepare (two-phase, proto_version 3)",
    "K": "Commit Prepared (two-phase, proto_version 3)",
    "r": "Rollback Prepared (two-phase, proto_version 3)",
    "p": "Stream Prepare (two-phase, proto_version 3)",
}


def _short(tag: str, buf: bytes, pos: int) -> ProtocolError:
    return ProtocolError(f"truncated {tag!r} message: it ends at byte {len(buf)}, reading at byte offset {pos}",
                         tag=tag, offset=pos)


def _check_end(tag: str, buf: bytes, pos: int) -> None:
    if pos != len(buf):
        if pos > len(buf):
            raise _short(tag, buf, len(buf))
        raise ProtocolError(f"{len(buf) - pos} unexpected trailing bytes after the {tag!r} message,"
                            f" at byte offset {pos}", tag=tag, offset=pos)


def _string(tag: str, buf: bytes, pos: int) -> tuple[str, int]:
    """Return the NUL-terminated string at ``pos`` and the offset after its NUL."""
    end = buf.find(0, pos)
    if end < 0:
        raise ProtocolError(f"truncated {tag!r} message: unterminated string at byte offset {pos}",
                            tag=tag, offset=pos)
    try:
        return buf[pos:end].decode(), end + 1
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"invalid UTF-8 in a string of the {tag!r} message at byte offset {pos + exc.start}",
                            tag=tag, offset=pos + exc.start) from None


def _tuple(tag: str, buf: bytes, pos: int) -> tuple[Row, int]:
    """Return the TupleData at ``pos`` and the offset after it."""
    values: list[Value] = []
    append = values.append
    size = len(buf)
    try:
        count = _unpack_u16(buf, pos)[0]
        pos += 2
        for _ in range(count):
            kind = buf[pos]
            if kind == 116:  # 't'
                end = pos + 5 + _unpack_u32(buf, pos + 1)[0]
                if end > size:
                    raise ProtocolError(f"truncated {tag!r} message: it ends at byte {size}, the value at byte"
                                        f" offset {pos} needs {end}", tag=tag, offset=pos)
                append(buf[pos + 5:end].decode())
                pos = end
            elif kind == 110:  # 'n'
                append(None)
                pos += 1
            elif kind == 117:  # 'u'
                append(UNCHANGED)
                pos += 1
            elif kind == 98:  # 'b'
                raise ProtocolError(f"binary tuple data (kind 'b') in the {tag!r} message at byte offset {pos}:"
                                    " binary mode is not supported, read with text format", tag=tag, offset=pos)
            else:
                raise ProtocolError(f"unknown tuple data kind {chr(kind)!r} in the {tag!r} message"
                                    f" at byte offset {pos}", tag=tag, offset=pos)
    except (struct.error, IndexError):
        raise _short(tag, buf, pos) from None
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"invalid UTF-8 in a value of the {tag!r} message at byte offset {pos + 5 + exc.start}",
                            tag=tag, offset=pos + 5 + exc.start) from None
    return tuple(values), pos


def _bytes(data: bytes | memoryview) -> bytes:
    return data if type(data) is bytes else bytes(data)


def _parse_begin(buf: bytes) -> Begin:
    if len(buf) != 1 + _BEGIN.size:
        _check_length("B", buf, 1 + _BEGIN.size)
    final_lsn, micros, xid = _BEGIN.unpack_from(buf, 1)
    return Begin(final_lsn, _pg_time(micros), xid)


def _parse_commit(buf: bytes) -> Commit:
    if len(buf) != 1 + _COMMIT.size:
        _check_length("C", buf, 1 + _COMMIT.size)
    flags, commit_lsn, end_lsn, micros = _COMMIT.unpack_from(buf, 1)
    return Commit(flags, commit_lsn, end_lsn, _pg_time(micros))


def _check_length(tag: str, buf: bytes, size: int) -> None:
    if len(buf) < size:
        raise _short(tag, buf, len(buf))
    _check_end(tag, buf, size)


def _parse_relation(buf: bytes) -> Relation:
    pos = 1
    try:
        oid = _U32.unpack_from(buf, pos)[0]
        schema, pos = _string("R", buf, pos + 4)
        name, pos = _string("R", buf, pos)
        identity = chr(buf[pos])
        count = _U16.unpack_from(buf, pos + 1)[0]
        pos += 3
        columns: list[Column] = []
        for _ in range(count):
            flags = buf[pos]
            colname, pos = _string("R", buf, pos + 1)
            type_oid, typmod = _COLUMN_TAIL.unpack_from(buf, pos)
            pos += _COLUMN_TAIL.size
            columns.append(Column(flags, colname, type_oid, typmod))
    except (struct.error, IndexError):
        raise _short("R", buf, pos) from None
    _check_end("R", buf, pos)
    if identity not in "dnfi":
        raise ProtocolError(f"unknown replica identity {identity!r} in the 'R' message of relation {oid}",
                            tag="R", offset=pos)
    return Relation(oid, schema, name, identity, tuple(columns))


def _parse_insert(buf: bytes) -> tuple[int, Row]:
    try:
        oid, kind = _unpack_oid_kind(buf, 1)
    except struct.error:
        raise _short("I", buf, len(buf)) from None
    if kind != _NEW:
        raise ProtocolError(f"expected 'N' at byte offset 5 of the 'I' message, got {chr(kind)!r}", tag="I", offset=5)
    new, pos = _tuple("I", buf, 6)
    if pos != len(buf):
        _check_end("I", buf, pos)
    return oid, new


def _parse_update(buf: bytes) -> tuple[int, Row | None, str | None, Row]:
    try:
        oid, kind = _unpack_oid_kind(buf, 1)
    except struct.error:
        raise _short("U", buf, len(buf)) from None
    old: Row | None = None
    old_kind: str | None = None
    pos = 6
    if kind in (_KEY, _OLD):
        old_kind = "K" if kind == _KEY else "O"
        old, pos = _tuple("U", buf, 6)
        if pos >= len(buf):
            raise _short("U", buf, pos)
        kind = buf[pos]
        pos += 1
    if kind != _NEW:
        raise ProtocolError(f"expected 'N', 'K' or 'O' at byte offset {pos - 1} of the 'U' message,"
                            f" got {chr(kind)!r}", tag="U", offset=pos - 1)
    new, pos = _tuple("U", buf, pos)
    if pos != len(buf):
        _check_end("U", buf, pos)
    return oid, old, old_kind, new


def _parse_delete(buf: bytes) -> tuple[int, Row, str]:
    try:
        oid, kind = _unpack_oid_kind(buf, 1)
    except struct.error:
        raise _short("D", buf, len(buf)) from None
    if kind != _KEY and kind != _OLD:
        raise ProtocolError(f"expected 'K' or 'O' at byte offset 5 of the 'D' message, got {chr(kind)!r}",
                            tag="D", offset=5)
    old, pos = _tuple("D", buf, 6)
    if pos != len(buf):
        _check_end("D", buf, pos)
    return oid, old, "K" if kind == _KEY else "O"


def _parse_truncate(buf: bytes) -> Truncate:
    try:
        count, options = _TRUNCATE_HEAD.unpack_from(buf, 1)
    except struct.error:
        raise _short("T", buf, len(buf)) from None
    pos = 1 + _TRUNCATE_HEAD.size
    _check_length("T", buf, pos + 4 * count)
    oids = struct.unpack_from(f"!{count}I", buf, pos)
    return Truncate(oids, bool(options & 1), bool(options & 2))


def _parse_origin(buf: bytes) -> Origin:
    try:
        lsn = _U64.unpack_from(buf, 1)[0]
    except struct.error:
        raise _short("O", buf, len(buf)) from None
    name, pos = _string("O", buf, 9)
    _check_end("O", buf, pos)
    return Origin(lsn, name)


def _parse_type(buf: bytes) -> TypeMessage:
    try:
        oid = _U32.unpack_from(buf, 1)[0]
    except struct.error:
        raise _short("Y", buf, len(buf)) from None
    schema, pos = _string("Y", buf, 5)
    name, pos = _string("Y", buf, pos)
    _check_end("Y", buf, pos)
    return TypeMessage(oid, schema, name)


def _parse_message(buf: bytes) -> LogicalMessage:
    try:
        flags, lsn = _MESSAGE_HEAD.unpack_from(buf, 1)
    except struct.error:
        raise _short("M", buf, len(buf)) from None
    prefix, pos = _string("M", buf, 1 + _MESSAGE_HEAD.size)
    try:
        length = _U32.unpack_from(buf, pos)[0]
    except struct.error:
        raise _short("M", buf, pos) from None
    pos += 4
    _check_length("M", buf, pos + length)
    return LogicalMessage(bool(flags & 1), lsn, prefix, buf[pos:pos + length])


def _refuse(buf: bytes) -> ProtocolError:
    if not buf:
        return ProtocolError("empty message: no tag at byte offset 0", offset=0)
    tag = chr(buf[0])
    if tag in _LATER_VERSIONS:
        return ProtocolError(f"{_LATER_VERSIONS[tag]} message (tag {tag!r} at byte offset 0) cannot appear with"
                             " proto_version 1: read the slot with 'proto_version', '1' and without"
                             " 'streaming' or 'two_phase'", tag=tag, offset=0)
    return ProtocolError(f"unknown message tag {tag!r} at byte offset 0", tag=tag, offset=0)


def parse_message(data: bytes | memoryview) -> Message:
    """Parse one pgoutput message (the ``data`` of one row of the slot).

    :raises ProtocolError: the message is malformed, truncated, or not a proto_version 1 message.
    """
    buf = _bytes(data)
    tag = buf[0] if buf else 0
    if tag == 73:  # 'I'
        return Insert(*_parse_insert(buf))
    if tag == 85:  # 'U'
        return Update(*_parse_update(buf))
    if tag == 68:  # 'D'
        return Delete(*_parse_delete(buf))
    parse = _OTHERS.get(tag)
    if parse is None:
        raise _refuse(buf)
    return parse(buf)


_OTHERS: Final[dict[int, Callable[[bytes], Message]]] = {
    ord("B"): _parse_begin,
    ord("C"): _parse_commit,
    ord("R"): _parse_relation,
    ord("T"): _parse_truncate,
    ord("O"): _parse_origin,
    ord("Y"): _parse_type,
    ord("M"): _parse_message,
}

# -- transactions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One row change of a committed transaction, with the relation definition in force when it was made.

    ``new`` and ``old`` follow the order of ``relation.columns``; ``old`` is the key (``old_kind``
    ``'K'``: the other positions ``None``), the whole old row (``'O'``) or ``None``. A truncate names
    every relation it truncated in ``relations`` (``relation`` is the first).
    """

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
    """A committed transaction: its changes in order and its transactional logical messages.

    ``final_lsn`` is the commit record's LSN (from Begin), ``end_lsn`` the LSN just past it (from Commit):
    advance the slot to ``end_lsn`` once the transaction is applied.
    """

    xid: int
    final_lsn: int
    end_lsn: int
    commit_time: datetime
    changes: list[Change] = field(default_factory=list)
    messages: list[LogicalMessage] = field(default_factory=list)
    origin: str | None = None


class Decoder:
    """Assembles parsed messages into committed transactions; keeps the relation cache (Relation messages may
    arrive again with new definitions: the latest wins, and a change always uses the definition in force
    when it arrived).

    Feed it every row of the slot, in order. After a :class:`ProtocolError` the transaction in progress
    is unusable: :meth:`reset` drops it.
    """

    def __init__(self) -> None:
        """Start with no relation known and no transaction in progress."""
        self.relations: dict[int, Relation] = {}
        """The latest definition of every relation seen, by oid."""
        self.types: dict[int, TypeMessage] = {}
        """Every non-built-in type seen, by oid."""
        self._txn: Transaction | None = None

    @property
    def in_transaction(self) -> bool:
        """Whether a Begin arrived and its Commit has not yet."""
        return self._txn is not None

    def reset(self) -> None:
        """Drop the transaction in progress, if any; keep the relation cache."""
        self._txn = None

    def feed(self, lsn: int, data: bytes | memoryview) -> list[Transaction | LogicalMessage]:
        """Take one row of the slot and return what it completed.

        :param lsn: the row's ``lsn`` column, as an integer (:func:`lsn_to_int`).
        :param data: the row's ``data`` column.
        :return: ``[transaction]`` when ``data`` is its Commit, ``[message]`` for a non-transactional
            logical message, else ``[]``.
        :raises ProtocolError: the message is malformed, or out of place (a change outside a transaction,
            for an unknown relation or with the wrong number of columns; a Commit without Begin; a Begin
            inside a transaction).
        """
        buf = data if type(data) is bytes else bytes(data)
        tag = buf[0] if buf else 0
        txn = self._txn
        old: Row | None
        old_kind: str | None
        new: Row | None
        if tag == 85:  # 'U'
            oid, old, old_kind, new = _parse_update(buf)
            op: Literal["insert", "update", "delete"] = "update"
        elif tag == 73:  # 'I'
            oid, new = _parse_insert(buf)
            old = old_kind = None
            op = "insert"
        elif tag == 68:  # 'D'
            oid, old, old_kind = _parse_delete(buf)
            new = None
            op = "delete"
        else:
            return self._feed_other(lsn, buf)
        if txn is None:
            raise ProtocolError(f"{op} for relation {oid} outside a transaction (no Begin), at lsn {int_to_lsn(lsn)}",
                                tag=chr(tag))
        relation = self.relations.get(oid)
        if relation is None:
            raise ProtocolError(f"{op} for unknown relation oid {oid} (no Relation message before it),"
                                f" at lsn {int_to_lsn(lsn)}", tag=chr(tag))
        width = len(relation.columns)
        if (new is not None and len(new) != width) or (old is not None and len(old) != width):
            raise ProtocolError(f"{op} for relation {relation.schema}.{relation.name} has"
                                f" {len(new if new is not None else old or ())} columns, its Relation {width},"
                                f" at lsn {int_to_lsn(lsn)}", tag=chr(tag))
        txn.changes.append(Change(op, relation, new, old, old_kind, lsn))
        return []

    def _feed_other(self, lsn: int, buf: bytes) -> list[Transaction | LogicalMessage]:
        parse = _OTHERS.get(buf[0] if buf else 0)
        if parse is None:
            raise _refuse(buf)
        msg = parse(buf)
        txn = self._txn
        where = f"at lsn {int_to_lsn(lsn)}"
        if isinstance(msg, Relation):
            self.relations[msg.oid] = msg
        elif isinstance(msg, Begin):
            if txn is not None:
                raise ProtocolError(f"Begin of xid {msg.xid} inside transaction {txn.xid} (nested Begin), {where}",
                                    tag="B")
            self._txn = Transaction(msg.xid, msg.final_lsn, 0, msg.commit_time)
        elif isinstance(msg, Commit):
            if txn is None:
                raise ProtocolError(f"Commit without Begin, {where}", tag="C")
            if msg.commit_lsn != txn.final_lsn:
                raise ProtocolError(f"Commit of lsn {int_to_lsn(msg.commit_lsn)} ends transaction {txn.xid} whose"
                                    f" Begin said {int_to_lsn(txn.final_lsn)}, {where}", tag="C")
            txn.end_lsn = msg.end_lsn
            self._txn = None
            return [txn]
        elif isinstance(msg, LogicalMessage):
            if not msg.transactional:
                return [msg]
            if txn is None:
                raise ProtocolError(f"transactional logical message {msg.prefix!r} outside a transaction, {where}",
                                    tag="M")
            txn.messages.append(msg)
        elif isinstance(msg, Truncate):
            if txn is None:
                raise ProtocolError(f"truncate outside a transaction (no Begin), {where}", tag="T")
            if not msg.relation_oids:
                raise ProtocolError(f"truncate of no relation, {where}", tag="T")
            relations = []
            for oid in msg.relation_oids:
                relation = self.relations.get(oid)
                if relation is None:
                    raise ProtocolError(f"truncate of unknown relation oid {oid} (no Relation message before it),"
                                        f" {where}", tag="T")
                relations.append(relation)
            txn.changes.append(Change("truncate", relations[0], None, None, None, lsn, tuple(relations),
                                      msg.cascade, msg.restart_identity))
        elif isinstance(msg, Origin):
            if txn is None:
                raise ProtocolError(f"Origin {msg.name!r} outside a transaction, {where}", tag="O")
            txn.origin = msg.name
        elif isinstance(msg, TypeMessage):
            self.types[msg.oid] = msg
        return []
