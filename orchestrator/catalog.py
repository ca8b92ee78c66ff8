"""Read-only catalog introspection: tables, columns, constraints, indexes, sequences, and their diff.

Everything is read from ``pg_catalog`` with the server's own rendering (``format_type``,
``pg_get_constraintdef``, ``pg_get_indexdef``), so two databases on the same server major compare
text to text. :func:`diff` lists every difference, each as one readable line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import class_row


@dataclass(frozen=True, slots=True)
class Column:
    table: str
    name: str
    position: int
    type: str
    not_null: bool
    default: str | None
    identity: str
    generated: str
    collation: str | None


@dataclass(frozen=True, slots=True)
class Constraint:
    table: str
    name: str
    type: str  # p primary, u unique, f foreign, c check, n not null (PG 18), x exclusion
    definition: str
    validated: bool


@dataclass(frozen=True, slots=True)
class Index:
    table: str
    name: str
    definition: str
    unique: bool
    primary: bool
    valid: bool


@dataclass(frozen=True, slots=True)
class Sequence_:
    name: str
    owned_by: str | None


@dataclass
class Catalog:
    """The user objects of some schemas of one database."""

    tables: list[str] = field(default_factory=list)
    columns: list[Column] = field(default_factory=list)
    constraints: list[Constraint] = field(default_factory=list)
    indexes: list[Index] = field(default_factory=list)
    sequences: list[Sequence_] = field(default_factory=list)


_TABLES = """
SELECT format('%%I.%%I', n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(%(schemas)s)
ORDER BY 1
"""

_COLUMNS = """
SELECT format('%%I.%%I', n.nspname, c.relname) AS table, a.attname AS name,
       row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum)::int AS position,
       format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS not_null,
       pg_get_expr(d.adbin, d.adrelid) AS default, a.attidentity::text AS identity,
       a.attgenerated::text AS generated,
       CASE WHEN a.attcollation <> t.typcollation THEN co.collname END AS collation
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation
WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped AND n.nspname = ANY(%(schemas)s)
ORDER BY 1, 3
"""

_CONSTRAINTS = """
SELECT format('%%I.%%I', n.nspname, c.relname) AS table, k.conname AS name, k.contype::text AS type,
       pg_get_constraintdef(k.oid) AS definition, k.convalidated AS validated
FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%(schemas)s)
ORDER BY 1, 2
"""

_INDEXES = """
SELECT format('%%I.%%I', n.nspname, t.relname) AS table, ic.relname AS name,
       pg_get_indexdef(i.indexrelid) AS definition,
       i.indisunique AS unique, i.indisprimary AS primary, i.indisvalid AS valid
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = ANY(%(schemas)s)
ORDER BY 1, 2
"""

_SEQUENCES = """
SELECT format('%%I.%%I', n.nspname, c.relname) AS name,
       (SELECT format('%%I.%%I.%%I', tn.nspname, t.relname, a.attname)
          FROM pg_depend d JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = t.relnamespace
          JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
         WHERE d.objid = c.oid AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')) AS owned_by
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S' AND n.nspname = ANY(%(schemas)s)
ORDER BY 1
"""


def load(conn: psycopg.Connection[Any], schemas: Sequence[str] = ("public",)) -> Catalog:
    """Read the catalog of ``schemas`` (read-only queries)."""
    params = {"schemas": list(schemas)}
    catalog = Catalog()
    catalog.tables = [r[0] for r in conn.execute(_TABLES, params).fetchall()]
    with conn.cursor(row_factory=class_row(Column)) as cur:
        catalog.columns = cur.execute(_COLUMNS, params).fetchall()
    with conn.cursor(row_factory=class_row(Constraint)) as cur:
        catalog.constraints = cur.execute(_CONSTRAINTS, params).fetchall()
    with conn.cursor(row_factory=class_row(Index)) as cur:
        catalog.indexes = cur.execute(_INDEXES, params).fetchall()
    with conn.cursor(row_factory=class_row(Sequence_)) as cur:
        catalog.sequences = cur.execute(_SEQUENCES, params).fetchall()
    return catalog


def _keyed(items: Sequence[Any], *key: str) -> dict[tuple[Any, ...], Any]:
    return {tuple(getattr(item, k) for k in key): item for item in items}


def diff(a: Catalog, b: Catalog, names: tuple[str, str] = ("a", "b"), column_order: bool = True) -> list[str]:
    """Every difference between two catalogs, one line each (empty: the same schema).

    Columns compare by table and name (type, nullability, default, identity, generation, collation,
    and, with ``column_order``, their position in the table); constraints and indexes by table and
    name, through their definitions as the server prints them.
    """
    left, right = names
    out: list[str] = []
    for table in sorted(set(a.tables) - set(b.tables)):
        out.append(f"table {table}: only in {left}")
    for table in sorted(set(b.tables) - set(a.tables)):
        out.append(f"table {table}: only in {right}")
    for kind, items_a, items_b, key in (
        ("column", a.columns, b.columns, ("table", "name")),
        ("constraint", a.constraints, b.constraints, ("table", "name")),
        ("index", a.indexes, b.indexes, ("table", "name")),
        ("sequence", a.sequences, b.sequences, ("name",)),
    ):
        ka, kb = _keyed(items_a, *key), _keyed(items_b, *key)
        for k in sorted(set(ka) | set(kb)):
            label = ".".join(str(p) for p in k)
            if k not in kb:
                out.append(f"{kind} {label}: only in {left}")
            elif k not in ka:
                out.append(f"{kind} {label}: only in {right}")
            elif ka[k] != kb[k]:
                fields = [f for f in ka[k].__slots__ if getattr(ka[k], f) != getattr(kb[k], f)
                          and (column_order or f != "position")]
                if not fields:
                    continue
                changes = ", ".join(f"{f} {getattr(ka[k], f)!r} vs {getattr(kb[k], f)!r}" for f in fields)
                out.append(f"{kind} {label}: {changes}")
    return out
