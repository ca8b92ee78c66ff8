"""The pgoutput parser and decoder on hand-built protocol messages: every tag, values, malformed input."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import struct
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.pgoutput import (
    UNCHANGED,
    Begin,
    Change,
    Column,
    Commit,
    Decoder,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    ProtocolError,
    Relation,
    Transaction,
    Truncate,
    TypeMessage,
    Update,
    Value,
    int_to_lsn,
    lsn_to_int,
    parse_message,
)

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


# -- building messages as the server writes them (src/backend/replication/logical/proto.c) -------


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def tupledata(values: list[Value]) -> bytes:
    out = struct.pack("!H", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value is UNCHANGED:
            out += b"u"
        else:
            raw = value.encode()
            out += b"t" + struct.pack("!I", len(raw)) + raw
    return out


def begin(final_lsn: int, micros: int, xid: int) -> bytes:
    return b"B" + struct.pack("!QqI", final_lsn, micros, xid)


def commit(commit_lsn: int, end_lsn: int, micros: int, flags: int = 0) -> bytes:
    return b"C" + struct.pack("!BQQq", flags, commit_lsn, end_lsn, micros)


def relation(oid: int, schema: str, name: str, identity: str, columns: list[tuple[int, str, int, int]]) -> bytes:
    out = b"R" + struct.pack("!I", oid) + cstr(schema) + cstr(name) + identity.encode()
    out += struct.pack("!H", len(columns))
    for flags, colname, type_oid, typmod in columns:
        out += struct.pack("!B", flags) + cstr(colname) + struct.pack("!Ii", type_oid, typmod)
    return out


def insert(oid: int, new: list[Value]) -> bytes:
    return b"I" + struct.pack("!I", oid) + b"N" + tupledata(new)


def update(oid: int, new: list[Value], old: list[Value] | None = None, kind: bytes = b"K") -> bytes:
    head = b"U" + struct.pack("!I", oid)
    if old is not None:
        head += kind + tupledata(old)
    return head + b"N" + tupledata(new)


def delete(oid: int, old: list[Value], kind: bytes = b"K") -> bytes:
    return b"D" + struct.pack("!I", oid) + kind + tupledata(old)


def truncate(oids: list[int], options: int) -> bytes:
    return b"T" + struct.pack("!IB", len(oids), options) + struct.pack(f"!{len(oids)}I", *oids)


def origin(lsn: int, name: str) -> bytes:
    return b"O" + struct.pack("!Q", lsn) + cstr(name)


def typ(oid: int, schema: str, name: str) -> bytes:
    return b"Y" + struct.pack("!I", oid) + cstr(schema) + cstr(name)


def message(transactional: bool, lsn: int, prefix: str, content: bytes) -> bytes:
    return b"M" + struct.pack("!BQ", int(transactional), lsn) + cstr(prefix) + struct.pack("!I", len(content)) + content


ITEMS = relation(16384, "public", "items", "d", [(1, "id", 23, -1), (0, "note", 25, -1), (0, "big", 25, -1)])
SAMPLES = {
    "B": begin(0x16_B374D848, 0, 7),
    "C": commit(0x16_B374D848, 0x16_B374D878, 0),
    "R": ITEMS,
    "I": insert(16384, ["1", None, UNCHANGED]),
    "U": update(16384, ["2", "b", UNCHANGED], ["1", None, None]),
    "D": delete(16384, ["1", "a", "x"], b"O"),
    "T": truncate([16384, 16390], 3),
    "O": origin(99, "green"),
    "Y": typ(16400, "public", "mood"),
    "M": message(True, 5, "bluegreen", b"x\0y"),
}


# -- LSNs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [
    ("0/0", 0),
    ("0/1", 1),
    ("16/B374D848", 0x16_B374D848),
    ("1/0", 1 << 32),
    ("FFFFFFFF/FFFFFFFF", (1 << 64) - 1),
])
def test_lsn_conversions_round_trip(text: str, value: int) -> None:
    assert lsn_to_int(text) == value
    assert int_to_lsn(value) == text
    assert lsn_to_int(int_to_lsn(value)) == value


def test_lsn_text_is_read_in_either_case_and_written_as_postgres_does() -> None:
    assert lsn_to_int("16/b374d848") == 0x16_B374D848
    assert int_to_lsn(lsn_to_int("00000016/0000D848")) == "16/D848"


@pytest.mark.parametrize("text", ["", "16", "16/", "/16", "G/1", "1/123456789", " 1/2", "1/2 ", "-1/2", "1//2"])
def test_lsn_to_int_refuses_what_is_not_an_lsn(text: str) -> None:
    with pytest.raises(ValueError, match="not an LSN"):
        lsn_to_int(text)


@pytest.mark.parametrize("value", [-1, 1 << 64])
def test_int_to_lsn_refuses_out_of_range(value: int) -> None:
    with pytest.raises(ValueError, match="not an LSN"):
        int_to_lsn(value)


# -- every tag -----------------------------------------------------------------------------------


def test_begin() -> None:
    micros = 770_000_000_123_456
    msg = parse_message(begin(0x16_B374D848, micros, 4_000_000_000))
    assert msg == Begin(0x16_B374D848, PG_EPOCH + timedelta(microseconds=micros), 4_000_000_000)
    assert isinstance(msg, Begin)
    assert msg.commit_time.tzinfo is UTC
    assert msg.commit_time == datetime(2024, 5, 26, 0, 53, 20, 123456, tzinfo=UTC)


def test_begin_before_the_postgres_epoch() -> None:
    msg = parse_message(begin(1, -1, 1))
    assert isinstance(msg, Begin)
    assert msg.commit_time == datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def test_commit() -> None:
    msg = parse_message(commit(100, 148, 5, flags=0))
    assert msg == Commit(0, 100, 148, PG_EPOCH + timedelta(microseconds=5))


def test_relation_and_its_columns() -> None:
    msg = parse_message(relation(16384, "app", "Ünïcode tbl", "i", [(1, "id", 23, -1), (0, "name", 1043, 68)]))
    assert msg == Relation(16384, "app", "Ünïcode tbl", "i", (Column(1, "id", 23, -1), Column(0, "name", 1043, 68)))
    assert isinstance(msg, Relation)
    assert msg.qualified == ("app", "Ünïcode tbl")
    assert [c.key for c in msg.columns] == [True, False]


def test_relation_in_pg_catalog_has_an_empty_schema_and_may_have_no_column() -> None:
    msg = parse_message(relation(1, "", "t", "n", []))
    assert msg == Relation(1, "", "t", "n", ())


def test_insert_with_text_null_and_unchanged_values() -> None:
    values: list[Value] = ["42", None, UNCHANGED, "", "tab\there\nnew line \\ back 'q' \"dq\"", "héllo ✓ 🐘"]
    msg = parse_message(insert(16384, values))
    assert msg == Insert(16384, tuple(values))
    assert isinstance(msg, Insert)
    assert msg.new[1] is None and msg.new[2] is UNCHANGED and msg.new[3] == ""


def test_insert_of_a_large_value() -> None:
    big = "x" * 100_000 + "é"
    msg = parse_message(insert(1, [big]))
    assert isinstance(msg, Insert) and msg.new == (big,)


def test_update_without_old_with_old_key_and_with_old_row() -> None:
    assert parse_message(update(7, ["1", "b"])) == Update(7, None, None, ("1", "b"))
    assert parse_message(update(7, ["2", "b"], ["1", None], b"K")) == Update(7, ("1", None), "K", ("2", "b"))
    assert parse_message(update(7, ["1", UNCHANGED], ["1", "a"], b"O")) == Update(7, ("1", "a"), "O", ("1", UNCHANGED))


def test_delete_with_old_key_and_with_old_row() -> None:
    assert parse_message(delete(7, ["1", None], b"K")) == Delete(7, ("1", None), "K")
    assert parse_message(delete(7, ["1", "a"], b"O")) == Delete(7, ("1", "a"), "O")


@pytest.mark.parametrize(("options", "cascade", "restart"), [(0, False, False), (1, True, False), (2, False, True),
                                                              (3, True, True)])
def test_truncate_options(options: int, cascade: bool, restart: bool) -> None:
    assert parse_message(truncate([5, 6, 7], options)) == Truncate((5, 6, 7), cascade, restart)


def test_origin_and_type() -> None:
    assert parse_message(origin(0x1_00000002, "pg_16389")) == Origin(0x1_00000002, "pg_16389")
    assert parse_message(typ(16400, "public", "mood")) == TypeMessage(16400, "public", "mood")


def test_logical_messages_keep_their_bytes() -> None:
    assert parse_message(message(True, 10, "bluegreen", b"x")) == LogicalMessage(True, 10, "bluegreen", b"x")
    raw = bytes(range(256))
    assert parse_message(message(False, 11, "", raw)) == LogicalMessage(False, 11, "", raw)
    assert parse_message(message(False, 12, "p", b"")) == LogicalMessage(False, 12, "p", b"")


def test_memoryview_and_bytes_parse_alike() -> None:
    for data in SAMPLES.values():
        buf = bytearray(b"junk" + data)
        assert parse_message(memoryview(buf)[4:]) == parse_message(data)


def test_messages_are_frozen() -> None:
    msg = parse_message(SAMPLES["I"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.relation_oid = 1  # type: ignore[misc, union-attr]


def test_unchanged_is_a_readable_singleton() -> None:
    assert repr(UNCHANGED) == "UNCHANGED"
    assert copy.deepcopy(UNCHANGED) is UNCHANGED
    assert pickle.loads(pickle.dumps(UNCHANGED)) is UNCHANGED
    assert UNCHANGED is not None and UNCHANGED != "UNCHANGED"
    assert repr(("1", None, UNCHANGED)) == "('1', None, UNCHANGED)"


# -- malformed input -----------------------------------------------------------------------------


def test_empty_message() -> None:
    with pytest.raises(ProtocolError, match="empty message") as info:
        parse_message(b"")
    assert info.value.offset == 0


def test_unknown_tag_is_refused_with_its_offset() -> None:
    with pytest.raises(ProtocolError, match=r"unknown message tag 'Z' at byte offset 0") as info:
        parse_message(b"Z\0\0\0\0")
    assert (info.value.tag, info.value.offset) == ("Z", 0)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("tag", ["S", "E", "c", "A", "b", "P", "K", "r", "p"])
def test_streaming_and_two_phase_tags_are_refused_as_not_proto_version_1(tag: str) -> None:
    with pytest.raises(ProtocolError, match="cannot appear with proto_version 1") as info:
        parse_message(tag.encode() + b"\0" * 40)
    assert info.value.tag == tag


@pytest.mark.parametrize("tag", sorted(SAMPLES))
def test_every_truncation_of_every_message_is_refused(tag: str) -> None:
    data = SAMPLES[tag]
    for end in range(1, len(data)):
        with pytest.raises(ProtocolError, match=r"truncated|unterminated") as info:
            parse_message(data[:end])
        assert info.value.tag == tag
        assert info.value.offset is not None and info.value.offset <= end


@pytest.mark.parametrize("tag", sorted(SAMPLES))
def test_trailing_bytes_are_refused(tag: str) -> None:
    with pytest.raises(ProtocolError, match="trailing bytes") as info:
        parse_message(SAMPLES[tag] + b"\0")
    assert info.value.offset == len(SAMPLES[tag])


def test_truncated_value_names_the_offset() -> None:
    data = insert(16384, ["abcdef"])
    assert len(data) == 19  # the value's kind byte at offset 8, its length, then 6 bytes
    with pytest.raises(ProtocolError, match=r"truncated 'I' message: it ends at byte 17, the value at byte offset 8"
                                            r" needs 19") as info:
        parse_message(data[:-2])
    assert info.value.offset == 8


def test_a_value_length_beyond_the_message_is_refused() -> None:
    data = b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!H", 1) + b"t" + struct.pack("!I", 0xFFFFFFFF) + b"ab"
    with pytest.raises(ProtocolError, match="truncated 'I'"):
        parse_message(data)


def test_unknown_tuple_kind() -> None:
    data = b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!H", 2) + b"n" + b"x"
    with pytest.raises(ProtocolError, match=r"unknown tuple data kind 'x' in the 'I' message at byte offset 9") as info:
        parse_message(data)
    assert info.value.offset == 9


def test_binary_tuple_data_is_refused_as_unsupported() -> None:
    data = b"U" + struct.pack("!I", 1) + b"N" + struct.pack("!H", 1) + b"b" + struct.pack("!I", 4) + b"\0\0\0\1"
    with pytest.raises(ProtocolError, match="binary mode is not supported") as info:
        parse_message(data)
    assert info.value.offset == 8


def test_invalid_utf8_in_a_value_names_its_offset() -> None:
    data = b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!H", 1) + b"t" + struct.pack("!I", 3) + b"a\xffb"
    with pytest.raises(ProtocolError, match=r"invalid UTF-8 in a value of the 'I' message at byte offset 14"):
        parse_message(data)


def test_invalid_utf8_in_a_name() -> None:
    with pytest.raises(ProtocolError, match="invalid UTF-8 in a string of the 'R' message at byte offset 5"):
        parse_message(b"R" + struct.pack("!I", 1) + b"\xff\0t\0d\0\0")


@pytest.mark.parametrize(("data", "expected"), [
    (b"I" + struct.pack("!I", 1) + b"K" + tupledata(["1"]), "expected 'N' at byte offset 5 of the 'I' message"),
    (b"U" + struct.pack("!I", 1) + b"X" + tupledata(["1"]), "expected 'N', 'K' or 'O' at byte offset 5"),
    (b"U" + struct.pack("!I", 1) + b"K" + tupledata(["1"]) + b"K" + tupledata(["1"]),
     "expected 'N', 'K' or 'O' at byte offset 14"),
    (b"D" + struct.pack("!I", 1) + b"N" + tupledata(["1"]), "expected 'K' or 'O' at byte offset 5 of the 'D' message"),
    (relation(1, "s", "t", "x", []), "unknown replica identity 'x'"),
])
def test_misplaced_markers_are_refused(data: bytes, expected: str) -> None:
    with pytest.raises(ProtocolError, match=expected):
        parse_message(data)


# -- the decoder ---------------------------------------------------------------------------------


def feed_all(decoder: Decoder, rows: Sequence[tuple[int, bytes | memoryview]]) -> list[Transaction | LogicalMessage]:
    out: list[Transaction | LogicalMessage] = []
    for lsn, data in rows:
        out += decoder.feed(lsn, data)
    return out


def test_decoder_assembles_a_transaction() -> None:
    decoder = Decoder()
    assert not decoder.in_transaction
    assert decoder.feed(10, begin(100, 1_000_000, 7)) == []
    assert decoder.in_transaction
    items = parse_message(ITEMS)
    assert isinstance(items, Relation)
    rows = [(10, ITEMS), (10, insert(16384, ["1", "a", "big"])),
            (20, update(16384, ["2", "a", UNCHANGED], ["1", None, None])),
            (30, delete(16384, ["2", None, None])), (40, message(True, 40, "bluegreen", b"m")),
            (50, truncate([16384], 2))]
    assert feed_all(decoder, rows) == []
    assert decoder.relations == {16384: items}
    [txn] = decoder.feed(148, commit(100, 148, 1_000_000))
    assert not decoder.in_transaction
    assert txn == Transaction(7, 100, 148, PG_EPOCH + timedelta(seconds=1), [
        Change("insert", items, ("1", "a", "big"), None, None, 10),
        Change("update", items, ("2", "a", UNCHANGED), ("1", None, None), "K", 20),
        Change("delete", items, None, ("2", None, None), "K", 30),
        Change("truncate", items, None, None, None, 50, (items,), False, True),
    ], [LogicalMessage(True, 40, "bluegreen", b"m")])
    assert txn.origin is None


def test_decoder_accepts_memoryviews() -> None:
    decoder = Decoder()
    rows = [(1, begin(9, 0, 1)), (1, ITEMS), (1, insert(16384, ["1", "a", "b"])), (2, commit(9, 10, 0))]
    [txn] = feed_all(decoder, [(lsn, memoryview(data)) for lsn, data in rows])
    assert isinstance(txn, Transaction) and txn.changes[0].new == ("1", "a", "b")


def test_relation_cache_outlives_transactions_and_a_redefinition_wins_from_then_on() -> None:
    decoder = Decoder()
    old_def = relation(5, "public", "t", "d", [(1, "id", 23, -1)])
    new_def = relation(5, "public", "t", "d", [(1, "id", 23, -1), (0, "extra", 25, -1)])
    out = feed_all(decoder, [
        (1, begin(9, 0, 1)), (1, old_def), (1, insert(5, ["1"])), (2, commit(9, 10, 0)),
        (11, begin(19, 0, 2)), (11, insert(5, ["2"])), (12, new_def), (12, insert(5, ["3", "x"])),
        (13, update(5, ["3", "y"])), (20, commit(19, 20, 0)),
    ])
    first, second = out
    assert isinstance(first, Transaction) and isinstance(second, Transaction)
    assert [c.new for c in first.changes + second.changes] == [("1",), ("2",), ("3", "x"), ("3", "y")]
    widths = [len(c.relation.columns) for c in first.changes + second.changes]
    assert widths == [1, 1, 2, 2]
    assert decoder.relations[5].columns[-1].name == "extra"


def test_a_change_with_a_width_unlike_its_relation_is_refused() -> None:
    decoder = Decoder()
    feed_all(decoder, [(1, begin(9, 0, 1)), (1, ITEMS)])
    with pytest.raises(ProtocolError, match=r"has 2 columns, its Relation 3"):
        decoder.feed(1, insert(16384, ["1", "a"]))
    with pytest.raises(ProtocolError, match=r"has 1 columns, its Relation 3"):
        decoder.feed(1, delete(16384, ["1"]))


def test_commit_without_begin() -> None:
    with pytest.raises(ProtocolError, match=r"Commit without Begin, at lsn 0/A"):
        Decoder().feed(10, commit(9, 10, 0))


def test_nested_begin() -> None:
    decoder = Decoder()
    decoder.feed(1, begin(9, 0, 1))
    with pytest.raises(ProtocolError, match=r"Begin of xid 2 inside transaction 1 \(nested Begin\)"):
        decoder.feed(2, begin(19, 0, 2))


def test_commit_of_another_lsn_than_the_begin() -> None:
    decoder = Decoder()
    decoder.feed(1, begin(9, 0, 1))
    with pytest.raises(ProtocolError, match=r"Commit of lsn 0/8 ends transaction 1 whose Begin said 0/9"):
        decoder.feed(10, commit(8, 10, 0))


def test_change_for_an_unknown_relation() -> None:
    decoder = Decoder()
    decoder.feed(1, begin(9, 0, 1))
    with pytest.raises(ProtocolError, match=r"update for unknown relation oid 77 \(no Relation message before it\)"):
        decoder.feed(2, update(77, ["1"]))
    with pytest.raises(ProtocolError, match=r"truncate of unknown relation oid 77"):
        decoder.feed(2, truncate([77], 0))


@pytest.mark.parametrize("data", [insert(16384, ["1", "a", "b"]), delete(16384, ["1", None, None]),
                                  truncate([16384], 0), message(True, 3, "p", b""), origin(1, "o")])
def test_changes_and_transactional_messages_outside_a_transaction(data: bytes) -> None:
    decoder = Decoder()
    decoder.feed(1, ITEMS)
    with pytest.raises(ProtocolError, match="outside a transaction"):
        decoder.feed(2, data)


def test_non_transactional_message_comes_back_at_once_outside_a_transaction() -> None:
    decoder = Decoder()
    msg = LogicalMessage(False, 5, "bluegreen", b"x")
    assert decoder.feed(5, message(False, 5, "bluegreen", b"x")) == [msg]
    assert not decoder.in_transaction


def test_truncate_of_several_relations_keeps_their_order_and_options() -> None:
    decoder = Decoder()
    other = relation(6, "public", "other", "f", [(1, "a", 23, -1)])
    out = feed_all(decoder, [(1, begin(9, 0, 1)), (1, other), (1, ITEMS), (1, truncate([6, 16384], 1)),
                             (2, commit(9, 10, 0))])
    [txn] = out
    assert isinstance(txn, Transaction)
    [change] = txn.changes
    assert change.op == "truncate" and change.cascade and not change.restart_identity
    assert [r.name for r in change.relations] == ["other", "items"]
    assert change.relation is change.relations[0]


def test_origin_and_types_are_kept() -> None:
    decoder = Decoder()
    out = feed_all(decoder, [(1, begin(9, 0, 1)), (1, origin(77, "green")), (1, typ(16400, "public", "mood")),
                             (2, commit(9, 10, 0))])
    [txn] = out
    assert isinstance(txn, Transaction) and txn.origin == "green" and txn.changes == []
    assert decoder.types == {16400: TypeMessage(16400, "public", "mood")}


def test_reset_drops_the_transaction_in_progress_but_not_the_relations() -> None:
    decoder = Decoder()
    feed_all(decoder, [(1, begin(9, 0, 1)), (1, ITEMS), (1, insert(16384, ["1", "a", "b"]))])
    decoder.reset()
    assert not decoder.in_transaction
    assert 16384 in decoder.relations
    [txn] = feed_all(decoder, [(11, begin(19, 0, 2)), (11, insert(16384, ["2", "a", "b"])), (20, commit(19, 20, 0))])
    assert isinstance(txn, Transaction) and [c.new for c in txn.changes] == [("2", "a", "b")]


def test_decoder_refuses_unknown_tags_and_malformed_messages() -> None:
    decoder = Decoder()
    with pytest.raises(ProtocolError, match="unknown message tag 'Z'"):
        decoder.feed(1, b"Z")
    with pytest.raises(ProtocolError, match="cannot appear with proto_version 1"):
        decoder.feed(1, b"S" + b"\0" * 5)
    with pytest.raises(ProtocolError, match="truncated 'U'"):
        decoder.feed(1, SAMPLES["U"][:-1])
    with pytest.raises(ProtocolError, match="empty message"):
        decoder.feed(1, b"")
