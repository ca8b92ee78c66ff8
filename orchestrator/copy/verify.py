"""Verify a snapshot: per table, the row count and a checksum of every row in primary-key order, read on
the source under the snapshot the table was copied under and on the target now; indexes valid and as
many as on the source; sequences at their values as of the snapshot.

The checksum is ``md5`` over the ``md5`` of each row's text form (``ROW(...)::text``), ordered by the
primary key (``COLLATE "C"`` for text keys, so both sides sort alike whatever their collations), or
by the row hashes themselves for a table without one. Both sessions use the same output settings
(UTC, ISO dates, shortest-exact floats, hex bytea), so equal rows print alike on both majors.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from psycopg import sql

from ..db import connect
from ..steps.base import Check
from .catalog import Catalog, Table

OUTPUT_SETTINGS = (
    "SET TimeZone = 'UTC'", "SET DateStyle = 'ISO, YMD'", "SET IntervalStyle = 'postgres'",
    "SET extra_float_digits = 1", "SET bytea_output = 'hex'", "SET statement_timeout = 0",
)


def checksum_query(table: Table) -> sql.Composed:
    """``SELECT count(*), md5(...)`` of one table's rows (all columns, generated ones included)."""
    rel = table.relation.ident
    row = sql.SQL("md5(ROW({})::text)").format(sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns)) \
        if table.columns else sql.SQL("md5('')")
    if table.key:
        collatable = {c.name for c in table.columns if c.collatable}
        order = sql.SQL(", ").join(
            sql.SQL("{} COLLATE \"C\"").format(sql.Identifier(k)) if k in collatable else sql.Identifier(k)
            for k in table.key)
        return sql.SQL("SELECT count(*), md5(string_agg({}, '' ORDER BY {})) FROM ONLY {}").format(row, order, rel)
    return sql.SQL("SELECT count(*), md5(string_agg(h, '' ORDER BY h COLLATE \"C\"))"
                   " FROM (SELECT {} AS h FROM ONLY {}) x").format(row, rel)


def _prepare(conn: psycopg.Connection[Any]) -> None:
    for statement in OUTPUT_SETTINGS:
        conn.execute(statement.encode())


def _count_query(table: Table) -> sql.Composed:
    return sql.SQL("SELECT count(*), NULL FROM ONLY {}").format(table.relation.ident)


def _source_side(dsn: str, name: str, snapshot_id: str, table: Table,
                 with_checksum: bool) -> tuple[int, str | None] | None:
    """Rows (and checksum) of ``table`` in the snapshot; None when the table was rewritten since the snapshot.

    TRUNCATE (or VACUUM FULL, CLUSTER) is not MVCC-safe: a snapshot older than it reads the new, rewritten
    file, so the table is no longer readable as it was. The table's file in the snapshot's catalog then
    differs from the current one (``pg_relation_filenode`` reads the current catalog).
    """
    with connect(dsn, name, application_name="bluegreen verify") as conn:
        _prepare(conn)
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_id)))
        moved = conn.execute("SELECT relfilenode IS DISTINCT FROM pg_relation_filenode(oid) FROM pg_class"
                             " WHERE oid = %s", (table.oid,)).fetchone()
        row = None if moved and moved[0] else \
            conn.execute(checksum_query(table) if with_checksum else _count_query(table)).fetchone()
        conn.execute("COMMIT")
    if moved and moved[0]:
        return None
    assert row is not None
    return int(row[0]), row[1]


def _target_side(dsn: str, name: str, table: Table, with_checksum: bool) -> tuple[int, str | None]:
    with connect(dsn, name, application_name="bluegreen verify") as conn:
        _prepare(conn)
        row = conn.execute(checksum_query(table) if with_checksum else _count_query(table)).fetchone()
    assert row is not None
    return int(row[0]), row[1]


def verify_tables(dsns: dict[str, str], source: str, target: str, catalog: Catalog, live_snapshot: str | None,
                  live_tables: set[str], recorded_rows: dict[str, int], jobs: int, checksums: bool) -> list[Check]:
    """One check per table: counts (and checksums) equal.

    :param live_snapshot: the exported snapshot id still open, for the tables copied under it
        (``live_tables``); other tables were copied under a snapshot that ended with an earlier
        process and are checked against the row count their COPY reported (``recorded_rows``).
    """

    def one(table: Table) -> Check:
        name = f"table {table.display}"
        live = live_snapshot is not None and table.display in live_tables
        got_rows, got_sum = _target_side(dsns[target], target, table, checksums and live)
        source_side = _source_side(dsns[source], source, live_snapshot, table, checksums) \
            if live and live_snapshot is not None else None
        if live and source_side is None:
            want = recorded_rows.get(table.display)
            return Check(name, want == got_rows,
                         f"{got_rows} rows on {target}, {want} copied; {table.display} was rewritten on {source} since"
                         " the snapshot (TRUNCATE is not MVCC-safe): the snapshot no longer reads it, so only the"
                         " count the copy read is checked (the capture carries the TRUNCATE)")
        if not live:
            want = recorded_rows.get(table.display)
            if want is None:
                return Check(name, False, f"no record of its copy; {target} has {got_rows} rows")
            return Check(name, want == got_rows,
                         f"{got_rows} rows on {target}, {want} copied under an earlier attempt's snapshot"
                         " (that snapshot is gone: rows counted, checksum not recomputable)")
        assert source_side is not None
        want_rows, want_sum = source_side
        if not checksums:
            return Check(name, want_rows == got_rows, f"{got_rows} rows on {target}, {want_rows} on {source}"
                                                      " in the snapshot")
        ok = want_rows == got_rows and want_sum == got_sum
        detail = f"{got_rows} rows, checksum {got_sum or '-'}" if ok else \
            f"{source}: {want_rows} rows, checksum {want_sum}; {target}: {got_rows} rows, checksum {got_sum}"
        return Check(name, ok, detail)

    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="bluegreen-verify") as pool:
        return list(pool.map(one, sorted(catalog.tables, key=lambda t: -t.bytes)))


def _counts(conn: psycopg.Connection[Any], schemas: Sequence[str]) -> tuple[int, int, int, int]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
        "        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY (%(s)s)),"
        " (SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
        "        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY (%(s)s) AND NOT i.indisvalid),"
        " (SELECT count(*) FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace"
        "        WHERE n.nspname = ANY (%(s)s) AND k.contype IN ('p', 'u', 'f', 'c', 'x') AND k.conislocal),"
        " (SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
        "        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY (%(s)s) AND NOT t.tgisinternal"
        "        AND t.tgname NOT LIKE 'bluegreen\\_%%' AND t.tgparentid = 0)", {"s": list(schemas)}).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def verify_objects(source: psycopg.Connection[Any], target: psycopg.Connection[Any], catalog: Catalog,
                   sequences: dict[str, list[Any]]) -> list[Check]:
    """Indexes (all valid, as many as on the source), constraints, triggers, and sequence values."""
    src = _counts(source, catalog.schemas)
    dst = _counts(target, catalog.schemas)
    checks = [
        Check("indexes", dst[0] == src[0] and dst[1] == 0,
              f"{dst[0]} on the target ({dst[1]} invalid), {src[0]} on the source"),
        Check("constraints", dst[2] == src[2], f"{dst[2]} on the target, {src[2]} on the source"),
        Check("triggers", dst[3] == src[3], f"{dst[3]} on the target, {src[3]} on the source (captures excluded)"),
    ]
    wrong: list[str] = []
    for name, (last_value, is_called) in sorted(sequences.items()):
        row = target.execute("SELECT to_regclass(%s) IS NOT NULL, pg_sequence_last_value(to_regclass(%s))",
                             (name, name)).fetchone()
        want = int(last_value) if is_called else None
        if row is None or not row[0]:
            wrong.append(f"{name} is missing")
        elif row[1] != want:
            wrong.append(f"{name} is at {row[1] if row[1] is not None else 'its start (never called)'}, "
                         f"want {want if want is not None else 'its start'}")
    checks.append(Check("sequences", not wrong, "; ".join(wrong) if wrong else
                        f"{len(sequences)} at their value as of the snapshot"))
    return checks
