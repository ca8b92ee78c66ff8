"""A "real shapes" dataset for the snapshot-copy benchmark: the kinds of tables a production database has.

It mirrors a held-out database on which ``method: copy`` was slow. :func:`generate` creates on a
PostgreSQL 15 database about ``size_gb`` GB (``pg_database_size``; default 0.7) of:

- ``"Quoted Schema"`` (a schema name that needs quotes) holding an enum ``"Order Status"``, a composite
  type ``address`` and three tables with mixed-case, spaced names and columns:
  ``"Customers"`` (an identity column, the composite, a domain with a CHECK, a uuid, a jsonb profile of
  which every 50th is a ~4 kB incompressible blob, so TOAST holds rows too), ``"Orders"`` (a key fed by a
  sequence owned by the column, the enum and an array of it, a foreign key to ``"Customers"``) and
  ``"Order Lines"`` (four lines per order: a composite primary key, a domain-typed quantity, numeric
  prices, a STORED generated ``total``, bytea and uuid columns, a foreign key to ``"Orders"``, and two
  columns dropped after the rows were written, so every heap tuple still carries them);
- ``public.narrow_readings``: ``(id bigint, a int, b int, c timestamptz)``, 4.3 million rows per GB and
  never fewer than 3 million from 0.6 GB up (about half the database at 0.7 GB), with three secondary
  indexes besides the primary key;
- ``public.events``: range-partitioned by ``occurred_at`` (four monthly leaves and a default one that
  gets about a tenth of the rows), a primary key ``(id, occurred_at)`` and a partitioned index;
- ``public.wide_facts``: 66 columns of 15 types (some with NULLs, some with quoted names), two of them
  dropped after the load;
- ``public.session_cache``: an UNLOGGED table.

Rows come from ``INSERT ... SELECT ... FROM generate_series`` in chunks, run on ``workers`` autocommit
connections at once, and are deterministic (no ``random()``): the same size gives the same rows. Then
the dropped columns are dropped, the primary keys and indexes are built (in parallel), the foreign
keys are added, the sequences are set past the keys, and ``VACUUM (ANALYZE, FREEZE)`` runs.

:data:`SCHEMA` is the pre-data DDL (types, tables, partitions, sequence; no keys or indexes);
:data:`DROP_COLUMNS`, :data:`INDEXES`, :data:`FOREIGN_KEYS` and :data:`SEQUENCES` are the statements
that follow the data, in that order; :func:`generate_small` runs the whole thing with a few thousand
rows per table, for a test.
:data:`TABLES` names every table that holds rows (leaf partitions, not the partitioned parent) as
``regclass`` accepts it, for row counts and checksums.

Run: .venv/bin/python bench/shapes.py DSN [--size 0.7] [--workers 3] [--small]
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
import time
from dataclasses import dataclass

import psycopg

# --------------------------------------------------------------------------------------------------
# The schema

QS = '"Quoted Schema"'
CUSTOMERS = f'{QS}."Customers"'
ORDERS = f'{QS}."Orders"'
LINES = f'{QS}."Order Lines"'
ORDERS_SEQ = f'{QS}."Orders_id_seq"'
STATUS = f'{QS}."Order Status"'
NARROW = "public.narrow_readings"
EVENTS = "public.events"
WIDE = "public.wide_facts"
SESSIONS = "public.session_cache"

# public.events: four monthly leaves; rows run this many days past their end, into the default leaf
EVENT_MONTHS = ("2024-01", "2024-02", "2024-03", "2024-04")
EVENT_START = "2024-01-01 00:00:00+00"
EVENT_LEAF_DAYS = 121  # 2024-01-01 .. 2024-05-01
EVENT_SPAN_DAYS = 134  # the last 13 days (about a tenth of the rows) fall in the default leaf

# public.wide_facts: (SQL type, expression of g and the column number i); the columns cycle through them
_WIDE_TYPES: tuple[tuple[str, str], ...] = (
    ("integer", "(g * {i}) % 100000"),
    ("bigint", "g * 1000003 + {i}"),
    ("text", "'value {i} ' || (g % 1000)"),
    ("numeric(12,3)", "((g % 100000) * {i})::numeric / 1000"),
    ("boolean", "(g + {i}) % 3 = 0"),
    ("double precision", "g * 0.25 + {i}"),
    ("date", "'2020-01-01'::date + ((g + {i}) % 1500)::int"),
    ("timestamptz", "'2020-01-01 00:00:00+00'::timestamptz + (g * {i}) * interval '1 second'"),
    ("uuid", "md5('{i}-' || g)::uuid"),
    ("jsonb", "jsonb_build_object('i', {i}, 'g', g % 100, 'ok', g % 2 = 0)"),
    ("smallint", "((g + {i}) % 30000)::smallint"),
    ("real", "((g % 1000) / 7.0)::real"),
    ("varchar(40)", "'name ' || g || ' #{i}'"),
    ("bytea", "decode(lpad(to_hex((g + {i}) % 4294967296), 8, '0'), 'hex')"),
    ("interval", "(g % 1000) * interval '1 minute'"),
)
_WIDE_COLUMNS = 65  # besides id; two are dropped after the load, leaving 64 columns
_WIDE_DROPPED = (7, 33)


def _wide_name(i: int) -> str:
    return f'"Col {i:02d} Mixed"' if i % 10 == 0 else f"c{i:02d}"


def _wide_expr(i: int) -> str:
    expr = _WIDE_TYPES[(i - 1) % len(_WIDE_TYPES)][1].format(i=i)
    return f"CASE WHEN (g + {i}) % 10 = 0 THEN NULL ELSE {expr} END" if i % 4 == 0 else expr


_WIDE_DDL = ",\n    ".join(
    ["id bigint NOT NULL"]
    + [f"{_wide_name(i)} {_WIDE_TYPES[(i - 1) % len(_WIDE_TYPES)][0]}" for i in range(1, _WIDE_COLUMNS + 1)])

_EVENT_LEAVES = "\n".join(
    f"CREATE TABLE public.events_{month.replace('-', '_')} PARTITION OF {EVENTS}"
    f" FOR VALUES FROM ('{month}-01 00:00:00+00') TO ('{nxt}-01 00:00:00+00');"
    for month, nxt in zip(EVENT_MONTHS, (*EVENT_MONTHS[1:], "2024-05"), strict=True))

SCHEMA = f"""
CREATE SCHEMA {QS};
CREATE TYPE {STATUS} AS ENUM ('new', 'paid', 'shipped', 'cancelled', 'returned');
CREATE TYPE {QS}.address AS (street text, city text, zip text);
CREATE DOMAIN public.email_address AS text CHECK (VALUE LIKE '%_@_%');
CREATE DOMAIN public.positive_qty AS integer CHECK (VALUE > 0);

CREATE TABLE {CUSTOMERS} (
    id bigint GENERATED ALWAYS AS IDENTITY,
    "Display Name" text NOT NULL,
    email public.email_address NOT NULL,
    "Home Address" {QS}.address,
    external_id uuid NOT NULL,
    profile jsonb NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE SEQUENCE {ORDERS_SEQ};
CREATE TABLE {ORDERS} (
    id bigint NOT NULL DEFAULT nextval('{ORDERS_SEQ}'),
    customer_id bigint NOT NULL,
    status {STATUS} NOT NULL,
    "Status History" {STATUS}[] NOT NULL,
    ship_to {QS}.address,
    placed_at timestamptz NOT NULL,
    "Note" text
);
ALTER SEQUENCE {ORDERS_SEQ} OWNED BY {ORDERS}.id;
CREATE TABLE {LINES} (
    order_id bigint NOT NULL,
    "Line No" integer NOT NULL,
    sku text NOT NULL,
    legacy_flag boolean,
    qty public.positive_qty NOT NULL,
    "Unit Price" numeric(12,2) NOT NULL,
    total numeric GENERATED ALWAYS AS (qty * "Unit Price") STORED,
    "Legacy Note" text,
    discount numeric(5,2),
    line_hash bytea NOT NULL,
    line_uuid uuid NOT NULL
);

CREATE TABLE {NARROW} (id bigint NOT NULL, a integer NOT NULL, b integer NOT NULL, c timestamptz NOT NULL);

CREATE TABLE {EVENTS} (
    id bigint NOT NULL,
    occurred_at timestamptz NOT NULL,
    kind text NOT NULL,
    actor uuid,
    "Source IP" inet,
    payload jsonb NOT NULL
) PARTITION BY RANGE (occurred_at);
{_EVENT_LEAVES}
CREATE TABLE public.events_default PARTITION OF {EVENTS} DEFAULT;

CREATE TABLE {WIDE} (
    {_WIDE_DDL}
);

CREATE UNLOGGED TABLE {SESSIONS} (
    token text NOT NULL,
    customer_id bigint NOT NULL,
    data jsonb NOT NULL,
    expires_at timestamptz NOT NULL
);
"""

DROP_COLUMNS = [
    f'ALTER TABLE {LINES} DROP COLUMN legacy_flag, DROP COLUMN "Legacy Note"',
    f"ALTER TABLE {WIDE} " + ", ".join(f"DROP COLUMN {_wide_name(i)}" for i in _WIDE_DROPPED),
]
"""Run after the rows are in: the dropped columns' values stay in every heap tuple."""

PRIMARY_KEYS = [
    f"ALTER TABLE {CUSTOMERS} ADD PRIMARY KEY (id)",
    f"ALTER TABLE {ORDERS} ADD PRIMARY KEY (id)",
    f'ALTER TABLE {LINES} ADD PRIMARY KEY (order_id, "Line No")',
    f"ALTER TABLE {NARROW} ADD PRIMARY KEY (id)",
    f"ALTER TABLE {EVENTS} ADD PRIMARY KEY (id, occurred_at)",
    f"ALTER TABLE {WIDE} ADD PRIMARY KEY (id)",
    f"ALTER TABLE {SESSIONS} ADD PRIMARY KEY (token)",
]
SECONDARY_INDEXES = [
    f"CREATE INDEX narrow_readings_a_idx ON {NARROW} (a)",
    f"CREATE INDEX narrow_readings_b_idx ON {NARROW} (b)",
    f"CREATE INDEX narrow_readings_c_idx ON {NARROW} (c)",
    f'CREATE INDEX "Order Lines_sku_idx" ON {LINES} (sku)',
    f"CREATE INDEX orders_customer_idx ON {ORDERS} (customer_id, placed_at)",
    f'CREATE UNIQUE INDEX "Customers_email_key" ON {CUSTOMERS} (email)',
    f"CREATE INDEX events_kind_at_idx ON {EVENTS} (kind, occurred_at)",  # a partitioned index
    f"CREATE INDEX session_cache_expires_idx ON {SESSIONS} (expires_at)",
    f"CREATE INDEX wide_facts_c02_idx ON {WIDE} (c02)",
]
INDEXES = PRIMARY_KEYS + SECONDARY_INDEXES
"""Primary keys first (the foreign keys need them), then the secondary indexes."""

FOREIGN_KEYS = [
    f"ALTER TABLE {ORDERS} ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES {CUSTOMERS} (id)",
    f"ALTER TABLE {LINES} ADD CONSTRAINT order_lines_order_fk FOREIGN KEY (order_id) REFERENCES {ORDERS} (id)"
    " ON DELETE CASCADE",
]
# the identity column and the owned sequence continue after the keys the generator wrote explicitly
SEQUENCES = [
    f"SELECT setval(pg_get_serial_sequence('{CUSTOMERS}', 'id'), (SELECT max(id) FROM {CUSTOMERS}))",
    f"SELECT setval('{ORDERS_SEQ}', (SELECT max(id) FROM {ORDERS}))",
]

TABLES: list[str] = [
    CUSTOMERS, LINES, ORDERS,
    *(f"public.events_{month.replace('-', '_')}" for month in EVENT_MONTHS), "public.events_default",
    NARROW, SESSIONS, WIDE,
]
"""Every table holding rows (leaves, not ``public.events`` itself), quoted as ``regclass`` accepts it."""

# --------------------------------------------------------------------------------------------------
# The rows

# a ~4 kB value that pglz cannot shrink (hex of md5s): stored out of line, in the TOAST table
_TOAST_BLOB = " || ".join(f"md5(g::text || 'bio{i}')" for i in range(128))

_FILLS: dict[str, str] = {
    CUSTOMERS: f"""INSERT INTO {CUSTOMERS} (id, "Display Name", email, "Home Address", external_id, profile,
                                          created_at) OVERRIDING SYSTEM VALUE
        SELECT g, 'Customer ' || g, 'user' || g || '@example.com',
               ROW('Street ' || g, 'City ' || (g % 500), lpad((g % 99999)::text, 5, '0'))::{QS}.address,
               md5('customer' || g)::uuid,
               jsonb_build_object('tier', g % 4, 'newsletter', g % 3 = 0, 'locale', 'en-' || (g % 30),
                                  'bio', CASE WHEN g % 50 = 0 THEN {_TOAST_BLOB} END),
               '2023-01-01 00:00:00+00'::timestamptz + g * interval '37 seconds'
        FROM generate_series({{lo}}::bigint, {{hi}}) g""",
    ORDERS: f"""INSERT INTO {ORDERS} (id, customer_id, status, "Status History", ship_to, placed_at, "Note")
        SELECT g, 1 + (g * 7919) % {{customers}},
               (enum_range(NULL::{STATUS}))[1 + g % 5], (enum_range(NULL::{STATUS}))[1:1 + g % 5],
               CASE WHEN g % 7 <> 0 THEN ROW('Dock ' || (g % 97), 'City ' || (g % 500), NULL)::{QS}.address END,
               '2023-06-01 00:00:00+00'::timestamptz + g * interval '11 seconds',
               CASE WHEN g % 3 = 0 THEN 'please deliver after ' || (g % 24) || ':00' END
        FROM generate_series({{lo}}::bigint, {{hi}}) g""",
    # line g is line 1 + (g - 1) % 4 of order 1 + (g - 1) / 4
    LINES: f"""INSERT INTO {LINES} (order_id, "Line No", sku, legacy_flag, qty, "Unit Price", "Legacy Note",
                                   discount, line_hash, line_uuid)
        SELECT 1 + (g - 1) / 4, 1 + (g - 1) % 4, 'SKU-' || lpad((g * 31 % 20000)::text, 6, '0'), g % 2 = 0,
               1 + g % 9, 1 + ((g * 37) % 100000)::numeric / 100, 'legacy import batch ' || (g % 977) || ' ok',
               CASE WHEN g % 5 = 0 THEN (g % 20)::numeric / 100 END, decode(md5('line' || g), 'hex'),
               md5('uuid' || g)::uuid
        FROM generate_series({{lo}}::bigint, {{hi}}) g""",
    NARROW: f"""INSERT INTO {NARROW}
        SELECT g, (g * 7) % 50000, ((g * 2654435761) % 1000003)::int,
               '2022-01-01 00:00:00+00'::timestamptz + g * interval '3 seconds'
        FROM generate_series({{lo}}::bigint, {{hi}}) g""",
    EVENTS: f"""INSERT INTO {EVENTS}
        SELECT g, '{EVENT_START}'::timestamptz + ((g * 7919) % {{events}}) * {{step}} * interval '1 second',
               (ARRAY['login', 'logout', 'purchase', 'view', 'search', 'error'])[1 + g % 6],
               CASE WHEN g % 4 <> 0 THEN md5('actor' || (g % 20000))::uuid END,
               ('10.' || (g % 256) || '.' || (g / 256 % 256) || '.' || (g % 251))::inet,
               jsonb_build_object('n', g, 'path', '/items/' || (g % 5000), 'ms', g % 1000,
                                  'tags', jsonb_build_array('a', g % 7, 'b'))
        FROM generate_series({{lo}}::bigint, {{hi}}) g""",
    WIDE: f"INSERT INTO {WIDE} (id, " + ", ".join(_wide_name(i) for i in range(1, _WIDE_COLUMNS + 1))
          + ")\n        SELECT g, " + ", ".join(_wide_expr(i) for i in range(1, _WIDE_COLUMNS + 1))
          + "\n        FROM generate_series({lo}::bigint, {hi}) g",
    SESSIONS: f"""INSERT INTO {SESSIONS}
        SELECT md5('session' || g), 1 + g % {{customers}},
               jsonb_build_object('csrf', md5('csrf' || g), 'cart', jsonb_build_array(g % 11, g % 13), 'v', 2),
               '2024-06-01 00:00:00+00'::timestamptz + g * interval '5 seconds'
        FROM generate_series({{lo}}::bigint, {{hi}}) g""",
}

# rows per INSERT: about the same time each, a second or so
_CHUNKS = {CUSTOMERS: 20_000, ORDERS: 100_000, LINES: 100_000, NARROW: 250_000, EVENTS: 100_000,
           WIDE: 15_000, SESSIONS: 50_000}

# bytes per row in pg_database_size (heap, FSM and VM, TOAST, indexes), measured at 0.7 GB
_NARROW_ROWS_PER_GB = 4_300_000  # but at least 3 million from 0.6 GB up
_NARROW_MIN_ROWS = 3_000_000
_NARROW_BYTES = 118.0
_ORDER_BYTES = 911.0  # an order and its four lines
_CUSTOMER_BYTES = 397.0
_EVENT_BYTES = 252.0
_WIDE_BYTES = 866.0
_SESSION_BYTES = 284.0
# the shares of what is not the narrow table
_SHARES = {ORDERS: 0.55, EVENTS: 0.22, WIDE: 0.13, CUSTOMERS: 0.07, SESSIONS: 0.03}
_OVERHEAD_BYTES = 8e6  # the catalogs of an empty database


@dataclass(frozen=True)
class Rows:
    """How many rows each table gets (the lines are four per order; events spread over the leaves)."""

    customers: int
    orders: int
    narrow: int
    events: int
    wide: int
    sessions: int

    @property
    def lines(self) -> int:
        return 4 * self.orders

    @classmethod
    def for_size(cls, size_gb: float) -> Rows:
        target = size_gb * 1e9
        narrow = max(1000, int(size_gb * _NARROW_ROWS_PER_GB))
        if size_gb >= 0.6:
            narrow = max(narrow, _NARROW_MIN_ROWS)
        rest = max(0.0, target - _OVERHEAD_BYTES - narrow * _NARROW_BYTES)
        return cls(customers=max(1000, int(rest * _SHARES[CUSTOMERS] / _CUSTOMER_BYTES)),
                   orders=max(1000, int(rest * _SHARES[ORDERS] / _ORDER_BYTES)),
                   narrow=narrow,
                   events=max(1000, int(rest * _SHARES[EVENTS] / _EVENT_BYTES)),
                   wide=max(1000, int(rest * _SHARES[WIDE] / _WIDE_BYTES)),
                   sessions=max(1000, int(rest * _SHARES[SESSIONS] / _SESSION_BYTES)))

    def counts(self) -> dict[str, int]:
        """Rows per table (``public.events`` as a whole, not per leaf)."""
        return {CUSTOMERS: self.customers, ORDERS: self.orders, LINES: self.lines, NARROW: self.narrow,
                EVENTS: self.events, WIDE: self.wide, SESSIONS: self.sessions}


SMALL = Rows(customers=2000, orders=2000, narrow=5000, events=5000, wide=2000, sessions=1000)


def fill_statements(rows: Rows) -> list[str]:
    """The INSERTs that fill the tables, in chunks, interleaved so that parallel workers write different tables."""
    step = EVENT_SPAN_DAYS * 86400 / rows.events
    per_table: list[list[str]] = []
    for table, total in rows.counts().items():
        chunk = _CHUNKS[table]
        per_table.append([
            _FILLS[table].format(lo=lo, hi=min(lo + chunk - 1, total), customers=rows.customers,
                                 events=rows.events, step=f"{step:.6f}")
            for lo in range(1, total + 1, chunk)])
    interleaved: list[str] = []
    for n in range(max(len(chunks) for chunks in per_table)):
        interleaved += [chunks[n] for chunks in per_table if n < len(chunks)]
    return interleaved


# --------------------------------------------------------------------------------------------------
# Running it

_SESSION_SETUP = ("SET maintenance_work_mem = '256MB'", "SET statement_timeout = 0")


def run_parallel(dsn: str, statements: list[str], workers: int) -> None:
    """Run ``statements`` on ``workers`` connections at once; raise the first error."""
    pending = list(statements)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                for setup in _SESSION_SETUP:
                    conn.execute(setup.encode())
                while True:
                    with lock:
                        if not pending or errors:
                            return
                        statement = pending.pop(0)
                    conn.execute(statement.encode())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(max(1, min(workers, len(statements))))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _build(dsn: str, rows: Rows, workers: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA.encode())
    run_parallel(dsn, fill_statements(rows), workers)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in DROP_COLUMNS:
            conn.execute(statement.encode())
    run_parallel(dsn, PRIMARY_KEYS, workers)
    run_parallel(dsn, SECONDARY_INDEXES, workers)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in FOREIGN_KEYS + SEQUENCES:
            conn.execute(statement.encode())
        conn.execute(b"VACUUM (ANALYZE, FREEZE)")


def generate(dsn: str, size_gb: float = 0.7, workers: int = 3) -> None:
    """Create the schema in the (empty) database ``dsn`` and fill it to about ``size_gb`` GB.

    The rows go in on ``workers`` connections at once, then the dropped columns are dropped, the keys
    and indexes built, the foreign keys added and the sequences set; last, ``VACUUM (ANALYZE, FREEZE)``.
    """
    if not math.isfinite(size_gb) or size_gb <= 0:
        raise ValueError(f"size_gb must be positive, not {size_gb!r}")
    _build(dsn, Rows.for_size(size_gb), workers)


def generate_small(dsn: str) -> None:
    """The same schema and steps as :func:`generate`, with a few thousand rows per table (a second or so)."""
    _build(dsn, SMALL, workers=2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dsn", help="an empty database")
    parser.add_argument("--size", type=float, default=0.7, help="GB (pg_database_size)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="a few thousand rows per table")
    args = parser.parse_args()
    started = time.monotonic()
    if args.small:
        generate_small(args.dsn)
    else:
        generate(args.dsn, args.size, args.workers)
    elapsed = time.monotonic() - started
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        size = row[0] if row else 0
    print(f"shapes: {size / 1e6:,.0f} MB in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
