"""Read-only introspection of the source of a snapshot, and the checks before anything is copied.

Everything here reads inside the snapshot transaction (catalog tables are read with its MVCC
snapshot), so the list of tables, their columns and the sequence values all belong to that snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from .names import QualifiedName

SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")
OWN_SCHEMAS = ("bluegreen", "bluegreen_quarantine")


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    generated: bool
    collatable: bool


@dataclass
class Table:
    """A table whose rows are copied: a plain table or a partition (a leaf)."""

    oid: int
    relation: QualifiedName
    root: int
    pages: int
    bytes: int
    columns: list[Column] = field(default_factory=list)
    key: list[str] = field(default_factory=list)
    binary: bool = True
    group: int = 0

    @property
    def display(self) -> str:
        return self.relation.display

    @property
    def copy_columns(self) -> list[str]:
        """Columns COPY can write (generated columns are computed by the target)."""
        return [c.name for c in self.columns if not c.generated]


@dataclass(frozen=True, slots=True)
class SequenceValue:
    relation: QualifiedName
    last_value: int
    is_called: bool


@dataclass
class Catalog:
    """What a snapshot copies: schemas, tables (grouped), partitioned parents and sequences."""

    schemas: list[str]
    tables: list[Table]
    parents: dict[str, list[str]]  # partitioned table -> its leaves (display names)
    sequences: list[SequenceValue]

    def table(self, display: str) -> Table:
        return next(t for t in self.tables if t.display == display)


def _schema_filter(include: Sequence[str] | None,
                   exclude: Sequence[str]) -> tuple[sql.Composed | sql.SQL, dict[str, Any]]:
    skip = [*OWN_SCHEMAS, *exclude]
    cond: sql.Composed | sql.SQL = sql.SQL(
        "n.nspname <> ALL (%(system)s) AND n.nspname !~ '^pg_(toast|temp)' AND n.nspname <> ALL (%(skip)s)")
    params: dict[str, Any] = {"system": list(SYSTEM_SCHEMAS), "skip": skip}
    if include:
        cond = cond + sql.SQL(" AND n.nspname = ANY (%(include)s)")
        params["include"] = list(include)
    return cond, params


_NOT_EXTENSION_MEMBER = sql.SQL(
    " AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid"
    " AND d.deptype = 'e')")

# Every type reachable from a column (domain base, array element, composite attribute, range subtype)
# must have binary send and receive functions for a binary COPY.
_BINARY_OK = """
WITH RECURSIVE reach(t) AS (
    SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = %(rel)s AND a.attnum > 0 AND NOT a.attisdropped
  UNION
    SELECT x FROM reach JOIN pg_type ty ON ty.oid = reach.t
    CROSS JOIN LATERAL (
        SELECT ty.typbasetype WHERE ty.typtype = 'd'
        UNION ALL SELECT ty.typelem WHERE ty.typelem <> 0 AND ty.typlen = -1
        UNION ALL SELECT a2.atttypid FROM pg_attribute a2 WHERE ty.typtype = 'c' AND a2.attrelid = ty.typrelid
              AND a2.attnum > 0 AND NOT a2.attisdropped
        UNION ALL SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = ty.oid
    ) AS next(x)
)
SELECT bool_and(ty.typsend <> 0 AND ty.typreceive <> 0) FROM reach JOIN pg_type ty ON ty.oid = reach.t
"""


def read_catalog(conn: psycopg.Connection[Any], include: Sequence[str] | None = None,
                 exclude: Sequence[str] = ()) -> Catalog:
    """Read what to copy from the source, inside the current (snapshot) transaction."""
    cond, params = _schema_filter(include, exclude)
    schemas = [r[0] for r in conn.execute(
        sql.SQL("SELECT n.nspname FROM pg_namespace n WHERE ") + cond + sql.SQL(" ORDER BY 1"), params).fetchall()]
    rows = conn.execute(sql.SQL(
        "SELECT c.oid, n.nspname, c.relname, COALESCE(pg_partition_root(c.oid), c.oid)::oid, c.relpages,"
        " pg_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind = 'r' AND ") + cond + _NOT_EXTENSION_MEMBER + sql.SQL(" ORDER BY 2, 3"), params).fetchall()
    tables = {int(r[0]): Table(int(r[0]), QualifiedName(r[1], r[2]), int(r[3]), int(r[4]), int(r[5])) for r in rows}
    if tables:
        for oid, name, generated, collatable in conn.execute(
                "SELECT a.attrelid, a.attname, a.attgenerated <> '', a.attcollation <> 0 FROM pg_attribute a"
                " WHERE a.attrelid = ANY (%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attrelid, a.attnum",
                (list(tables),)).fetchall():
            tables[int(oid)].columns.append(Column(name, bool(generated), bool(collatable)))
        for oid, name in conn.execute(
                "SELECT i.indrelid, a.attname FROM pg_index i"
                " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n)"
                " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
                " WHERE i.indisprimary AND i.indrelid = ANY (%s) ORDER BY i.indrelid, k.n", (list(tables),)).fetchall():
            tables[int(oid)].key.append(name)
        for table in tables.values():
            row = conn.execute(_BINARY_OK.encode(), {"rel": table.oid}).fetchone()
            table.binary = bool(row[0]) if row and row[0] is not None else True
    _group(conn, tables)
    parents: dict[str, list[str]] = {}
    for oid, schema, name in conn.execute(sql.SQL(
            "SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind = 'p' AND ") + cond + sql.SQL(" ORDER BY 2, 3"), params).fetchall():
        leaves = conn.execute("SELECT relid::oid FROM pg_partition_tree(%s) WHERE isleaf", (oid,)).fetchall()
        parents[QualifiedName(schema, name).display] = [tables[int(r[0])].display for r in leaves
                                                       if int(r[0]) in tables]
    seqs = conn.execute(sql.SQL(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind = 'S' AND ") + cond + _NOT_EXTENSION_MEMBER + sql.SQL(" ORDER BY 1, 2"), params).fetchall()
    sequences: list[SequenceValue] = []
    for schema, name in seqs:
        rel = QualifiedName(schema, name)
        value = conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(rel.ident)).fetchone()
        assert value is not None
        sequences.append(SequenceValue(rel, int(value[0]), bool(value[1])))
    ordered = sorted(tables.values(), key=lambda t: (t.relation.schema, t.relation.name))
    return Catalog(schemas, ordered, parents, sequences)


def _group(conn: psycopg.Connection[Any], tables: dict[int, Table]) -> None:
    """Number the copy groups: tables linked by a foreign key, or in one partition tree, share a group.

    A resumed copy restarts whole groups under one new snapshot, so a foreign key never sees a child
    row from one snapshot and its parent from another.
    """
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for table in tables.values():
        parent[find(table.oid)] = find(table.root)
    for child, referenced in conn.execute(
            "SELECT COALESCE(pg_partition_root(conrelid), conrelid)::oid,"
            " COALESCE(pg_partition_root(confrelid), confrelid)::oid"
            " FROM pg_constraint WHERE contype = 'f'").fetchall():
        parent[find(int(child))] = find(int(referenced))
    numbers: dict[int, int] = {}
    for table in sorted(tables.values(), key=lambda t: t.display):
        table.group = numbers.setdefault(find(table.oid), len(numbers) + 1)


# -- checks before copying ----------------------------------------------------------------------


def preflight(source: psycopg.Connection[Any], target: psycopg.Connection[Any], catalog: Catalog,
              method: str, owners: bool, privileges: bool) -> list[str]:
    """Everything that would make the restore fail on the target, as messages (empty: all clear)."""
    problems: list[str] = []
    schemas = catalog.schemas
    xml_columns = [f"{r[0]}.{r[1]}" for r in source.execute(
        "SELECT format('%%I.%%I', n.nspname, c.relname), a.attname FROM pg_attribute a"
        " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_type t ON t.oid = a.atttypid"
        " LEFT JOIN pg_type e ON e.oid = t.typelem LEFT JOIN pg_type b ON b.oid = t.typbasetype"
        " WHERE n.nspname = ANY (%s) AND c.relkind IN ('r', 'p', 'm', 'c', 'v', 'f') AND a.attnum > 0"
        " AND NOT a.attisdropped AND 'xml'::regtype IN (t.oid, e.oid, b.oid) ORDER BY 1, 2",
        (schemas,)).fetchall()]
    if xml_columns:
        try:
            with target.transaction():
                target.execute("SELECT xmlparse(document '<a/>')")
        except psycopg.errors.FeatureNotSupported:
            problems.append(
                f"column(s) of type xml: {', '.join(xml_columns)}; the target server was built without libxml, "
                "so it cannot store xml values: convert them (ALTER TABLE ... TYPE text) or drop them before the "
                "snapshot, or use a target server built with libxml")
    if not _has_icu(target):
        icu_uses = [r[0] for r in source.execute(
            "SELECT DISTINCT what FROM ("
            " SELECT format('column %%I.%%I.%%I (collation %%s)', n.nspname, c.relname, a.attname, co.collname) AS what"
            "  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            "  JOIN pg_collation co ON co.oid = a.attcollation"
            "  WHERE n.nspname = ANY (%(s)s) AND a.attnum > 0 AND NOT a.attisdropped AND co.collprovider = 'i'"
            " UNION ALL SELECT format('collation %%I.%%I', n.nspname, co.collname) FROM pg_collation co"
            "  JOIN pg_namespace n ON n.oid = co.collnamespace WHERE n.nspname = ANY (%(s)s) AND co.collprovider = 'i'"
            " UNION ALL SELECT format('index %%I.%%I (collation %%s)', n.nspname, ic.relname, co.collname)"
            "  FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ic.relnamespace"
            "  CROSS JOIN LATERAL unnest(i.indcollation::oid[]) k(coll) JOIN pg_collation co ON co.oid = k.coll"
            "  WHERE n.nspname = ANY (%(s)s) AND co.collprovider = 'i'"
            " UNION ALL SELECT format('the database default (locale provider icu)') FROM pg_database"
            "  WHERE datname = current_database() AND datlocprovider = 'i'"
            ") x ORDER BY 1", {"s": schemas}).fetchall()]
        if icu_uses:
            problems.append(f"ICU collations in use: {'; '.join(icu_uses)}; the target server was built without "
                            "ICU, so they cannot be restored there: switch them to a libc collation first, or use "
                            "a target server built with ICU")
    missing_ext = [r[0] for r in source.execute(
        "SELECT extname FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1").fetchall()]
    if missing_ext:
        available = {r[0] for r in target.execute("SELECT name FROM pg_available_extensions").fetchall()}
        missing_ext = [e for e in missing_ext if e not in available]
        if missing_ext:
            problems.append(f"extension(s) not installed on the target server: {', '.join(missing_ext)}")
    if method == "copy":
        lo = source.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
        if lo and lo[0]:
            problems.append(f"{lo[0]} large object(s): method copy does not copy large objects; use method: dump")
    if owners or privileges:
        roles = [r[0] for r in source.execute(
            "SELECT DISTINCT r.rolname FROM ("
            " SELECT c.relowner AS who, c.relacl AS acl, c.relnamespace AS ns FROM pg_class c"
            " UNION ALL SELECT p.proowner, p.proacl, p.pronamespace FROM pg_proc p"
            " UNION ALL SELECT t.typowner, t.typacl, t.typnamespace FROM pg_type t"
            " UNION ALL SELECT n.nspowner, n.nspacl, n.oid FROM pg_namespace n"
            ") o JOIN pg_namespace n ON n.oid = o.ns"
            " CROSS JOIN LATERAL (SELECT o.who WHERE %(owners)s UNION ALL"
            "   SELECT a.grantee FROM aclexplode(o.acl) a WHERE %(privileges)s AND a.grantee <> 0"
            "   UNION ALL SELECT a.grantor FROM aclexplode(o.acl) a WHERE %(privileges)s) w(role)"
            " JOIN pg_roles r ON r.oid = w.role WHERE n.nspname = ANY (%(s)s) ORDER BY 1",
            {"s": schemas, "owners": owners, "privileges": privileges}).fetchall()]
        if roles:
            present = {r[0] for r in target.execute("SELECT rolname FROM pg_roles").fetchall()}
            absent = [r for r in roles if r not in present]
            if absent:
                problems.append(f"role(s) missing on the target server: {', '.join(absent)} (they own or are granted "
                                "objects): create them there first, or set owners: false / privileges: false")
    return problems


class _Rollback(Exception):
    pass


def _has_icu(conn: psycopg.Connection[Any]) -> bool:
    """Whether the server can create an ICU collation (its catalog lists ``unicode`` even without ICU)."""
    try:
        with conn.transaction():
            conn.execute("CREATE COLLATION pg_temp.bluegreen_icu_probe (provider = icu, locale = 'und')")
            raise _Rollback
    except psycopg.errors.FeatureNotSupported:
        return False
    except (_Rollback, psycopg.Error):
        return True


def target_leftovers(target: psycopg.Connection[Any], schemas: Sequence[str]) -> list[str]:
    """Objects already in the target's schemas that the snapshot would restore into (it must start empty)."""
    rows = target.execute(
        "SELECT format('%%s %%I.%%I', kind, nspname, name) FROM ("
        " SELECT 'relation' AS kind, n.nspname, c.relname AS name FROM pg_class c"
        "  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY (%(s)s)"
        " UNION ALL SELECT 'function', n.nspname, p.proname FROM pg_proc p"
        "  JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = ANY (%(s)s)"
        " UNION ALL SELECT 'type', n.nspname, t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
        "  WHERE n.nspname = ANY (%(s)s) AND t.typtype IN ('e', 'd', 'r', 'm', 'b')"
        "  AND NOT EXISTS (SELECT FROM pg_type e WHERE e.typarray = t.oid)"
        " UNION ALL SELECT 'schema', n.nspname, n.nspname FROM pg_namespace n"
        "  WHERE n.nspname = ANY (%(s)s) AND n.nspname <> 'public'"
        ") x ORDER BY 1 LIMIT 20", {"s": list(schemas)}).fetchall()
    return [r[0] for r in rows]
