"""The pgoutput decoder against real servers (PG 15 and PG 18): what a slot's SQL interface really returns.

Besides the values, these pin down what the logical capture relies on: the ``lsn`` column of each row,
where ``pg_replication_slot_advance`` must go, that ``upto_nchanges`` and ``upto_lsn`` cut between whole
transactions, what makes an asynchronous commit visible at once, and that a slot created with an
exported snapshot on a replication connection is usable while that connection holds the snapshot.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import psycopg
import pytest

from orchestrator.localenv import Databases
from orchestrator.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Decoder,
    LogicalMessage,
    ProtocolError,
    Relation,
    Transaction,
    Value,
    int_to_lsn,
    lsn_to_int,
    parse_message,
)

pytestmark = pytest.mark.func

SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE address AS (street text, zip int);
CREATE TABLE items (id int PRIMARY KEY, n bigint, amount numeric(12,3), body text, raw bytea, flag bool,
                    at timestamptz, doc jsonb, ints int[], tags text[], uid uuid, feel mood, addr address, big text);
ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE events (who text, what text, big text);
ALTER TABLE events REPLICA IDENTITY FULL;
ALTER TABLE events ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE accounts (id serial, email text NOT NULL, name text);
CREATE UNIQUE INDEX accounts_email ON accounts (email);
ALTER TABLE accounts REPLICA IDENTITY USING INDEX accounts_email;
CREATE TABLE parent (id int PRIMARY KEY);
CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent);
CREATE TABLE counters (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
CREATE TABLE unpublished (n int);
INSERT INTO unpublished VALUES (0);
CREATE PUBLICATION pub FOR TABLE items, events, accounts, parent, child, counters;
"""
ITEM_COLUMNS = ["id", "n", "amount", "body", "raw", "flag", "at", "doc", "ints", "tags", "uid", "feel", "addr", "big"]
# Each value as its type's output function writes it, which is what pgoutput sends: ``col::text``, except
# for bool, whose cast to text says 'true' where its output function (and so the stream) says 't'.
ITEMS_TEXT = ", ".join("(CASE WHEN flag THEN 't' WHEN NOT flag THEN 'f' END)" if c == "flag" else f"{c}::text"
                       for c in ITEM_COLUMNS)
BIG = ITEM_COLUMNS.index("big")
TRICKY = "tab\there\nnew line\r\n back\\slash \\\\ 'single' \"double\" $$ é ✓ 🐘 \u00a0end"

PEEK = ("SELECT lsn::text, xid::text::bigint, data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, %s,"
        " 'proto_version', '1', 'publication_names', 'pub', 'messages', 'true')")
# A transaction that commits synchronously and writes WAL (on a table outside the publication): it flushes
# every earlier asynchronous commit, and decodes to nothing.
FLUSH = "BEGIN; SET LOCAL synchronous_commit = on; UPDATE unpublished SET n = n + 1; COMMIT"

Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass(frozen=True)
class SlotRow:
    lsn: int
    xid: int
    data: bytes


@dataclass(frozen=True)
class Server:
    name: str
    dsn: str
    slot: str


@pytest.fixture(params=["blue", "green"])
def server(request: pytest.FixtureRequest, dbs: Databases) -> Server:
    """One of the two servers (PG 15, PG 18), with its fresh database and a slot name unique to the test."""
    name = cast(str, request.param)
    return Server(name, dbs.blue_dsn if name == "blue" else dbs.green_dsn, f"s_{dbs.name}")


@contextmanager
def connect(dsn: str) -> Iterator[Conn]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def setup(conn: Conn, slot: str) -> None:
    conn.execute(SCHEMA.encode())
    conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))


def peek(conn: Conn, slot: str, upto_lsn: int | None = None, upto_nchanges: int | None = None) -> list[SlotRow]:
    rows = conn.execute(PEEK, (slot, None if upto_lsn is None else int_to_lsn(upto_lsn), upto_nchanges)).fetchall()
    return [SlotRow(lsn_to_int(lsn), xid, data) for lsn, xid, data in rows]


def decode(rows: Sequence[SlotRow], decoder: Decoder | None = None) -> list[Transaction | LogicalMessage]:
    decoder = decoder or Decoder()
    out: list[Transaction | LogicalMessage] = []
    for row in rows:
        out += decoder.feed(row.lsn, row.data)
    assert not decoder.in_transaction
    return out


def one(conn: Conn, query: str, params: Sequence[Any] = ()) -> tuple[Any, ...]:
    row = conn.execute(query.encode(), params or None).fetchone()
    assert row is not None
    return tuple(row)


def xid_now(conn: Conn) -> int:
    """Return the current transaction's 32-bit xid (``txid_current()`` is 64 bits: epoch and xid)."""
    return int(one(conn, "SELECT txid_current() % 4294967296")[0])


@dataclass
class Expected:
    """A transaction as the test wrote it: its xid, its changes ``(op, table, new, old, old_kind)``, its messages.

    A truncate is ``("truncate", "t1,t2", None, None, flag)``: flag ``"cascade"``, ``"restart"`` or ``"-"``.
    """

    xid: int
    changes: list[tuple[str, str, tuple[Value, ...] | None, tuple[Value, ...] | None, str | None]] = field(
        default_factory=list)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    started: datetime | None = None
    ended: datetime | None = None

    def add(self, op: str, table: str, new: tuple[Value, ...] | None, old: tuple[Value, ...] | None = None,
            old_kind: str | None = None) -> None:
        self.changes.append((op, table, new, old, old_kind))


class Writer:
    """Runs the workload and records what each committed transaction must decode to."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.items: list[Expected | tuple[str, bytes]] = []

    @contextmanager
    def tx(self, *, commit: bool = True) -> Iterator[Expected]:
        started = one(self.conn, "SELECT clock_timestamp()")[0]
        with self.conn.transaction(force_rollback=not commit):
            expected = Expected(xid_now(self.conn), started=started)
            yield expected
        expected.ended = one(self.conn, "SELECT clock_timestamp()")[0]
        if commit:
            self.items.append(expected)

    def row(self, query: str, params: Sequence[Any] = ()) -> tuple[Value, ...]:
        return cast(tuple[Value, ...], one(self.conn, query, params))


def with_unchanged(row: tuple[Value, ...], index: int) -> tuple[Value, ...]:
    return (*row[:index], UNCHANGED, *row[index + 1:])


def key_only(width: int, at: dict[int, str]) -> tuple[Value, ...]:
    """Return an old key tuple as the server sends it: the key's values, None at every other position."""
    return tuple(at.get(i) for i in range(width))


def workload(conn: Conn, dsn: str) -> Writer:
    """Write every kind of change; return what each committed transaction (and message) must decode to."""
    w = Writer(conn)
    big = "x" * 9000 + uuid.uuid4().hex  # > 8 kB, stored out of line (EXTERNAL: no compression)
    big2 = "y" * 9500 + uuid.uuid4().hex
    insert_items = (f"INSERT INTO items VALUES (%s, %s, %s, %s, %s, %s, %s::timestamptz, %s::jsonb, %s, %s, %s,"
                    f" %s::mood, ROW(%s, %s)::address, %s) RETURNING {ITEMS_TEXT}")
    raw = b"\x00\x01\\\xff'\n"
    uid = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    with w.tx() as t:  # inserts: every type, then every column NULL but the key
        full = w.row(insert_items, (1, 9007199254740993, "12345.678", TRICKY, raw, True,
                                    "2024-02-29 23:59:59.123456+00", '{"a": [1, "two", null], "é": "\\n"}',
                                    [1, None, 3], ["a b", "c,d", '"q"', None, ""], uid, "happy", "Main St, 1", 12345,
                                    big))
        assert full[3] == TRICKY and full[4] == "\\x" + raw.hex() and full[BIG] == big
        assert one(conn, "SELECT flag::text FROM items WHERE id = 1") == ("true",) and full[5] == "t"
        t.add("insert", "items", full)
        nulls = w.row(f"INSERT INTO items (id) VALUES (2) RETURNING {ITEMS_TEXT}")
        assert nulls[1:] == (None,) * 13
        t.add("insert", "items", nulls)
    assert one(conn, "SELECT pg_relation_size(reltoastrelid) > 0 FROM pg_class WHERE relname = 'items'") == (True,)
    width = len(ITEM_COLUMNS)
    with w.tx() as t:  # not the key, not the TOASTed value: no old key, the big value not sent
        new = w.row(f"UPDATE items SET flag = false, body = body || '!' WHERE id = 1 RETURNING {ITEMS_TEXT}")
        t.add("update", "items", with_unchanged(new, BIG))
    with w.tx() as t:  # key changes: the old key (other positions None); an untouched big value is still not sent
        new = w.row(f"UPDATE items SET id = 10 WHERE id = 2 RETURNING {ITEMS_TEXT}")
        t.add("update", "items", new, key_only(width, {0: "2"}), "K")
        new = w.row(f"UPDATE items SET id = 11 WHERE id = 1 RETURNING {ITEMS_TEXT}")
        t.add("update", "items", with_unchanged(new, BIG), key_only(width, {0: "1"}), "K")
    with w.tx() as t:  # the big value itself changes: sent whole
        new = w.row(f"UPDATE items SET big = %s WHERE id = 11 RETURNING {ITEMS_TEXT}", (big2,))
        assert new[BIG] == big2
        t.add("update", "items", new)
    with w.tx() as t:  # REPLICA IDENTITY FULL, no primary key: the old row, its big value whole; the new one 'u'
        new = w.row("INSERT INTO events VALUES ('alice', 'login', %s) RETURNING who, what, big", (big,))
        t.add("insert", "events", new)
        new = w.row("UPDATE events SET what = 'logout' RETURNING who, what, big")
        t.add("update", "events", ("alice", "logout", UNCHANGED), ("alice", "login", big), "O")
        old = w.row("DELETE FROM events RETURNING who, what, big")
        assert old == new
        t.add("delete", "events", None, ("alice", "logout", big), "O")
    with w.tx() as t:  # REPLICA IDENTITY USING INDEX (email): the old email only, when it changes
        new = w.row("INSERT INTO accounts (email, name) VALUES ('a@x', 'A') RETURNING id::text, email, name")
        t.add("insert", "accounts", new)
        new = w.row("UPDATE accounts SET name = 'B' RETURNING id::text, email, name")
        t.add("update", "accounts", new)
        new = w.row("UPDATE accounts SET email = 'b@x' RETURNING id::text, email, name")
        t.add("update", "accounts", new, (None, "a@x", None), "K")
        w.row("DELETE FROM accounts RETURNING id")
        t.add("delete", "accounts", None, (None, "b@x", None), "K")
    with w.tx() as t:  # savepoints: what was rolled back to is absent
        t.add("insert", "items", w.row(f"INSERT INTO items (id) VALUES (20) RETURNING {ITEMS_TEXT}"))
        conn.execute("SAVEPOINT a")
        conn.execute("INSERT INTO items (id) VALUES (21)")
        conn.execute("ROLLBACK TO SAVEPOINT a")
        conn.execute("SAVEPOINT b")
        t.add("insert", "items", w.row(f"INSERT INTO items (id) VALUES (22) RETURNING {ITEMS_TEXT}"))
        conn.execute("RELEASE SAVEPOINT b")
    with w.tx(commit=False):  # rolled back: absent
        conn.execute("INSERT INTO items (id) VALUES (30)")
    with w.tx() as t:  # several tables, in the order written
        t.add("insert", "parent", w.row("INSERT INTO parent VALUES (1) RETURNING id::text"))
        t.add("insert", "child", w.row("INSERT INTO child VALUES (1, 1) RETURNING id::text, parent_id::text"))
        t.add("insert", "counters", w.row("INSERT INTO counters (v) VALUES ('c') RETURNING id::text, v"))
        t.add("update", "items", w.row(f"UPDATE items SET n = -1 WHERE id = 10 RETURNING {ITEMS_TEXT}"))
    with w.tx() as t:  # a transactional message alone
        conn.execute("SELECT pg_logical_emit_message(true, 'bluegreen', 'x')")
        t.messages.append(("bluegreen", b"x"))
    conn.execute("SELECT pg_logical_emit_message(false, 'bluegreen', 'x')")
    w.items.append(("bluegreen", b"x"))
    with w.tx() as t:  # a non-transactional message comes out at once: before the transaction it was sent in
        t.add("insert", "items", w.row(f"INSERT INTO items (id) VALUES (40) RETURNING {ITEMS_TEXT}"))
        conn.execute("SELECT pg_logical_emit_message(false, 'bluegreen', 'nt-in-txn')")
        conn.execute("SELECT pg_logical_emit_message(true, 'bluegreen', convert_to('tx-in-txn é', 'UTF8'))")
        t.messages.append(("bluegreen", "tx-in-txn é".encode()))
        w.items.append(("bluegreen", b"nt-in-txn"))
    with w.tx(commit=False):  # ... even when that transaction rolls back
        conn.execute("SELECT pg_logical_emit_message(false, 'bluegreen', 'nt-rolled-back')")
        conn.execute("INSERT INTO items (id) VALUES (41)")
        w.items.append(("bluegreen", b"nt-rolled-back"))
    with connect(dsn) as other:  # commit order, not start order
        first = Writer(other)
        with w.tx() as late:
            late.add("insert", "items", w.row(f"INSERT INTO items (id) VALUES (50) RETURNING {ITEMS_TEXT}"))
            with first.tx() as early:
                early.add("insert", "items", first.row(f"INSERT INTO items (id) VALUES (51) RETURNING {ITEMS_TEXT}"))
            w.items.append(early)
        assert early.xid > late.xid
    with w.tx() as t:
        conn.execute("TRUNCATE items, accounts")
        t.add("truncate", "items,accounts", None, None, "-")
    with w.tx() as t:
        conn.execute("TRUNCATE counters RESTART IDENTITY")
        t.add("truncate", "counters", None, None, "restart")
    with w.tx() as t:
        conn.execute("TRUNCATE parent CASCADE")
        t.add("truncate", "parent,child", None, None, "cascade")
    conn.execute("ALTER TABLE accounts ADD COLUMN note text")
    with w.tx() as t:  # a new definition of the relation from here on
        new = w.row("INSERT INTO accounts (email, note) VALUES ('c@x', 'n') RETURNING id::text, email, name, note")
        t.add("insert", "accounts", new)
    conn.execute(FLUSH)
    return w


def test_decoded_stream_matches_what_was_written(server: Server) -> None:
    with connect(server.dsn) as conn:
        setup(conn, server.slot)
        writer = workload(conn, server.dsn)
        rows = peek(conn, server.slot)
        oids = dict(conn.execute("SELECT relname::text, oid::int8 FROM pg_class WHERE relname = ANY(%s)",
                                 (["items", "events", "accounts", "parent", "child", "counters"],)).fetchall())
        types = dict(conn.execute("SELECT typname::text, oid::int8 FROM pg_type WHERE typname IN ('mood', 'address')"
                                  ).fetchall())
        attrs = conn.execute("SELECT attrelid::int8, attname::text, atttypid::int8, atttypmod FROM pg_attribute"
                             " WHERE attrelid = ANY(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attrelid, attnum",
                             (list(oids.values()),)).fetchall()
    decoder = Decoder()
    out = decode(rows, decoder)

    assert len(out) == len(writer.items)
    for got, want in zip(out, writer.items, strict=True):
        if isinstance(want, tuple):
            assert isinstance(got, LogicalMessage) and not got.transactional
            assert (got.prefix, got.content) == want
            continue
        assert isinstance(got, Transaction), got
        assert got.xid == want.xid
        assert want.started is not None and want.ended is not None
        assert want.started <= got.commit_time <= want.ended
        assert [(m.prefix, m.content) for m in got.messages] == want.messages
        assert all(m.transactional for m in got.messages)
        assert len(got.changes) == len(want.changes)
        for change, (op, table, new, old, old_kind) in zip(got.changes, want.changes, strict=True):
            assert change.op == op
            if op == "truncate":
                assert [r.name for r in change.relations] == table.split(",")
                assert change.relation is change.relations[0]
                assert (change.cascade, change.restart_identity) == (old_kind == "cascade", old_kind == "restart")
                assert [r.oid for r in change.relations] == [oids[name] for name in table.split(",")]
                continue
            assert change.relation.qualified == ("public", table)
            assert (change.new, change.old, change.old_kind) == (new, old, old_kind), (op, table, [
                (i, a, b) for i, (a, b) in enumerate(zip(change.new or (), new or (), strict=False)) if a != b])
    transactions = [t for t in out if isinstance(t, Transaction)]
    assert [t.final_lsn for t in transactions] == sorted(t.final_lsn for t in transactions)

    # the relation cache: identities, keys, types; the redefinition applies from the change after it
    rel = decoder.relations
    assert {r.name: r.replica_identity for r in rel.values()} == {
        "items": "d", "events": "f", "accounts": "i", "parent": "d", "child": "d", "counters": "d"}
    assert [c.name for c in rel[oids["items"]].columns if c.key] == ["id"]
    assert [c.key for c in rel[oids["events"]].columns] == [True, True, True]
    assert [c.name for c in rel[oids["accounts"]].columns if c.key] == ["email"]
    assert [c.name for c in rel[oids["accounts"]].columns] == ["id", "email", "name", "note"]
    account_widths = [len(c.relation.columns) for t in transactions for c in t.changes
                      if c.op != "truncate" and c.relation.name == "accounts"]
    assert account_widths == [3, 3, 3, 3, 4]
    assert sorted((r.oid, c.name, c.type_oid, c.typmod) for r in rel.values() for c in r.columns) == sorted(
        tuple(a) for a in attrs)
    assert {t.name: (t.oid, t.schema) for t in decoder.types.values()} == {
        "mood": (types["mood"], "public"), "address": (types["address"], "public")}


def test_lsn_and_xid_columns_of_each_row(server: Server) -> None:
    """(a) Begin's row carries the LSN of the transaction's first published change or message (pgoutput
    sends Begin lazily), a change's row and the Relation rows before it the change's LSN (where its WAL
    record starts), a logical message's row ``LogicalMessage.lsn`` (where its WAL record *ends*: it can
    equal the commit LSN), the Commit row ``Commit.end_lsn``. ``Begin.final_lsn`` = ``Commit.commit_lsn``
    < ``Commit.end_lsn``; the xid column is the Begin's xid on every row of the transaction."""
    with connect(server.dsn) as conn:
        setup(conn, server.slot)
        writer = workload(conn, server.dsn)
        rows = peek(conn, server.slot)
    begin: Begin | None = None
    pending: list[SlotRow] = []  # Begin, Relation and Type rows: they carry the LSN of the row they precede
    last_change = last = -1
    commits = 0
    for row in rows:
        msg = parse_message(row.data)
        tag = chr(row.data[0])
        if begin is None:
            if isinstance(msg, Begin):
                begin, pending, last_change, last = msg, [row], -1, -1
                assert row.xid == msg.xid
            else:
                assert isinstance(msg, LogicalMessage) and not msg.transactional
                assert row.lsn == msg.lsn
            continue
        assert row.xid == begin.xid, tag
        if tag in "RY":
            pending.append(row)
            continue
        if isinstance(msg, Commit):
            assert msg.commit_lsn == begin.final_lsn < msg.end_lsn == row.lsn
            assert msg.commit_time == begin.commit_time
            assert last_change < begin.final_lsn and last <= begin.final_lsn
            assert not pending
            begin = None
            commits += 1
            continue
        assert tag in "IUDTM"
        assert all(p.lsn == row.lsn for p in pending)
        pending = []
        assert row.lsn >= last
        last = row.lsn
        if isinstance(msg, LogicalMessage):
            assert msg.transactional and msg.lsn == row.lsn
        else:
            assert row.lsn > last_change
            last_change = row.lsn
    assert begin is None and commits == sum(isinstance(item, Expected) for item in writer.items) == 16
    # the xid column of a non-transactional message: 0 outside a transaction, else its transaction's
    nontx = [(row.xid, parse_message(row.data)) for row in rows if row.data[:1] == b"M"]
    assert [(xid != 0, m.content) for xid, m in nontx if isinstance(m, LogicalMessage) and not m.transactional] == [
        (False, b"x"), (True, b"nt-in-txn"), (True, b"nt-rolled-back")]


def three_transactions(conn: Conn, slot: str) -> list[Transaction]:
    setup(conn, slot)
    for i in (1, 2, 3, 4):
        conn.execute(f"BEGIN; INSERT INTO items (id) VALUES ({i}); INSERT INTO items (id) VALUES ({i * 100}); COMMIT"
                     .encode())
    conn.execute(FLUSH)
    out = decode(peek(conn, slot))
    assert all(isinstance(t, Transaction) for t in out)
    return cast(list[Transaction], out)


def firsts(out: Sequence[Transaction | LogicalMessage]) -> list[Value]:
    return [t.changes[0].new[0] if isinstance(t, Transaction) and t.changes[0].new else None for t in out]


def test_advance_to_the_commit_rows_lsn_to_skip_what_was_applied(server: Server) -> None:
    """(b) A transaction comes back while the slot's confirmed position is <= its commit LSN: advance to
    ``Commit.end_lsn`` (the Commit row's lsn), not to ``Commit.commit_lsn`` (that brings it back again)."""
    with connect(server.dsn) as conn:
        txns = three_transactions(conn, server.slot)
        assert firsts(txns) == ["1", "2", "3", "4"]
        second = txns[1]
        cases = {
            second.end_lsn: ["3", "4"],
            second.end_lsn - 1: ["3", "4"],
            second.final_lsn + 1: ["3", "4"],
            second.final_lsn: ["2", "3", "4"],
            second.changes[0].lsn: ["2", "3", "4"],
        }
        for i, (target, expected) in enumerate(cases.items()):
            copy = f"{server.slot}_{i}"
            conn.execute("SELECT pg_copy_logical_replication_slot(%s, %s)", (server.slot, copy))
            moved = one(conn, "SELECT end_lsn::text FROM pg_replication_slot_advance(%s, %s::pg_lsn)",
                        (copy, int_to_lsn(target)))
            assert lsn_to_int(moved[0]) == target
            assert firsts(decode(peek(conn, copy))) == expected, int_to_lsn(target)
            conn.execute("SELECT pg_drop_replication_slot(%s)", (copy,))
        # the advance stops at the flushed WAL: an asynchronous commit not flushed yet is not skipped
        conn.execute("SELECT pg_copy_logical_replication_slot(%s, %s)", (server.slot, f"{server.slot}_x"))
        conn.execute("INSERT INTO items (id) VALUES (5)")
        flushed, inserted = one(conn, "SELECT pg_current_wal_flush_lsn()::text, pg_current_wal_insert_lsn()::text")
        moved = one(conn, "SELECT end_lsn::text FROM pg_replication_slot_advance(%s, %s::pg_lsn)",
                    (f"{server.slot}_x", inserted))
        assert lsn_to_int(flushed) <= lsn_to_int(moved[0]) <= lsn_to_int(inserted)


def test_upto_limits_cut_between_whole_transactions(server: Server) -> None:
    """(c) ``upto_nchanges`` counts rows (Begin, Relation, Commit included) and stops only after the
    transaction that reached it; ``upto_lsn`` returns the transactions whose commit record starts before it."""
    with connect(server.dsn) as conn:
        txns = three_transactions(conn, server.slot)
        rows = peek(conn, server.slot)
        sizes = [7, 4, 4, 4]  # B Y Y R I I C (two types of items), then B I I C: once per decoding session
        assert len(rows) == sum(sizes)
        for n in range(1, len(rows) + 1):
            whole = next(k for k in range(1, 5) if sum(sizes[:k]) >= n)
            got = peek(conn, server.slot, upto_nchanges=n)
            assert got == rows[:sum(sizes[:whole])], n
        for k, txn in enumerate(txns):
            before = [t.final_lsn for t in txns[:k]]
            assert [t.final_lsn for t in decode(peek(conn, server.slot, upto_lsn=txn.changes[0].lsn))
                    if isinstance(t, Transaction)] == before
            for upto in (txn.final_lsn + 1, txn.end_lsn):
                assert [t.final_lsn for t in decode(peek(conn, server.slot, upto_lsn=upto))
                        if isinstance(t, Transaction)] == [*before, txn.final_lsn]


def test_a_synchronous_commit_that_writes_wal_makes_earlier_async_commits_visible(server: Server) -> None:
    """(d) The clusters run with ``synchronous_commit = off``: a peek decodes only flushed WAL, so a commit
    just made may be missing for up to about wal_writer_delay (200 ms). FLUSH (a transaction with
    ``SET LOCAL synchronous_commit = on`` that writes a row outside the publication) makes it visible at
    once and adds nothing to the stream; so does writing the captured rows with ``synchronous_commit = on``."""
    with connect(server.dsn) as conn:
        setup(conn, server.slot)
        assert one(conn, "SHOW synchronous_commit") == ("off",)
        for i in range(1, 6):
            conn.execute(f"INSERT INTO items (id) VALUES ({i})".encode())
            conn.execute(FLUSH)
            rows = peek(conn, server.slot)
            assert [t.changes[0].new[0] for t in decode(rows) if isinstance(t, Transaction) and t.changes[0].new] == [
                str(n) for n in range(1, i + 1)]
        conn.execute("BEGIN; SET LOCAL synchronous_commit = on; INSERT INTO items (id) VALUES (6); COMMIT")
        assert firsts(decode(peek(conn, server.slot)))[-1] == "6"
        if conn.info.server_version >= 170000:  # PG 17+: a non-transactional message can flush
            conn.execute("INSERT INTO items (id) VALUES (7)")
            conn.execute("SELECT pg_logical_emit_message(false, 'bluegreen-flush', '', true)")
            out = decode(peek(conn, server.slot))
            assert firsts(out[-2:-1]) == ["7"] and isinstance(out[-1], LogicalMessage)


def test_values_are_rendered_with_the_peeking_sessions_settings(server: Server) -> None:
    """The text of a value is produced by the session that peeks: its TimeZone, DateStyle, bytea_output."""
    with connect(server.dsn) as conn:
        setup(conn, server.slot)
        conn.execute(r"INSERT INTO items (id, at, raw) VALUES (1, '2024-01-02 03:04:05+00', '\x00ff')")
        conn.execute(FLUSH)
        conn.execute("SET TimeZone = 'UTC'")
        [txn] = decode(peek(conn, server.slot))
        assert isinstance(txn, Transaction) and txn.changes[0].new is not None
        assert (txn.changes[0].new[6], txn.changes[0].new[4]) == ("2024-01-02 03:04:05+00", "\\x00ff")
        conn.execute("SET TimeZone = 'Asia/Tokyo'; SET DateStyle = 'SQL, DMY'; SET bytea_output = 'escape'")
        [txn] = decode(peek(conn, server.slot))
        assert isinstance(txn, Transaction) and txn.changes[0].new is not None
        assert (txn.changes[0].new[6], txn.changes[0].new[4]) == ("02/01/2024 12:04:05 JST", "\\000\\377")


def test_slot_created_with_an_exported_snapshot_on_a_replication_connection(server: Server) -> None:
    """(e) CREATE_REPLICATION_SLOT ... (SNAPSHOT 'export') over psycopg: the slot is free at once (peek works
    from another session while the replication connection holds the snapshot), other sessions import the
    snapshot before and after that peek, and the snapshot ends with the replication connection's next command."""
    with connect(server.dsn) as conn:
        conn.execute(SCHEMA.encode())
        conn.execute("INSERT INTO items (id) VALUES (1)")
        with psycopg.connect(server.dsn, replication="database", autocommit=True) as repl:
            cur = repl.execute(f"CREATE_REPLICATION_SLOT {server.slot} LOGICAL pgoutput (SNAPSHOT 'export')".encode())
            assert [d.name for d in cur.description or ()] == ["slot_name", "consistent_point", "snapshot_name",
                                                                "output_plugin"]
            row = cur.fetchone()
            assert row is not None
            slot, point, snapshot, plugin = row
            assert (slot, plugin) == (server.slot, "pgoutput")
            assert one(conn, "SELECT active, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                       (slot,)) == (False, point)
            conn.execute("INSERT INTO items (id) VALUES (2)")
            conn.execute(FLUSH)

            def visible_in_snapshot() -> list[int]:
                with psycopg.connect(server.dsn) as importer:
                    importer.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                    importer.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'".encode())
                    return [r[0] for r in importer.execute("SELECT id FROM items ORDER BY id").fetchall()]

            assert visible_in_snapshot() == [1]
            out = decode(peek(conn, slot))
            assert firsts(out) == ["2"]
            assert isinstance(out[0], Transaction) and out[0].final_lsn > lsn_to_int(point)
            assert visible_in_snapshot() == [1]
            repl.execute("IDENTIFY_SYSTEM").fetchall()
            with pytest.raises(psycopg.Error, match="snapshot"):
                visible_in_snapshot()
        assert one(conn, "SELECT active, temporary FROM pg_replication_slots WHERE slot_name = %s",
                   (server.slot,)) == (False, False)


def test_relation_is_sent_again_in_each_decoding_session(server: Server) -> None:
    """Relation messages come once per peek (and after a change of definition), not once per transaction:
    a decoder must keep its cache across the transactions of a peek, and may be new at each peek."""
    with connect(server.dsn) as conn:
        three_transactions(conn, server.slot)
        rows = peek(conn, server.slot)
        assert [chr(r.data[0]) for r in rows].count("R") == 1
        txn = peek(conn, server.slot, upto_nchanges=1)
        assert [chr(r.data[0]) for r in txn] == ["B", "Y", "Y", "R", "I", "I", "C"]
        assert [chr(r.data[0]) for r in peek(conn, server.slot)] == [chr(r.data[0]) for r in rows]
        with pytest.raises(ProtocolError, match="unknown relation oid"):  # a later transaction alone
            decode(rows[7:11])
        assert isinstance(decode(rows)[1], Transaction)
        rel = parse_message(rows[3].data)
        assert isinstance(rel, Relation) and rel.name == "items"
