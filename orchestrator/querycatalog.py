"""The column catalog ``SELECT *`` expansion reads: tables and views with their columns, in order.

Three sources, one model:

- a live database (``QueryCatalog.from_dsn``): ``pg_attribute`` of every table, view, materialized
  view and foreign table, and the connection's ``search_path``; read-only;
- schema files (``QueryCatalog.from_files``): a ``pg_dump --schema-only`` dump, or the migrations
  the old code was built for, replayed in order: CREATE TABLE (columns, LIKE, INHERITS, PARTITION OF),
  CREATE VIEW / MATERIALIZED VIEW / TABLE AS (columns of the query, resolved like any query),
  ALTER TABLE ADD / DROP / RENAME COLUMN, RENAME, SET SCHEMA, DROP; psql meta-commands (pg_dump's
  ``\\restrict``) are skipped; everything else (indexes, functions, grants) is ignored;
- a JSON snapshot written by :meth:`QueryCatalog.to_json` (``rewrite-queries --save-schema``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from pglast import ast, parse_sql, parser
from pglast.enums import AlterTableType, ObjectType

from .db import readonly
from .errors import UsageError
from .sqlanalysis.files import SqlFileError, read_sql_text
from .sqlanalysis.parse import SqlSyntaxError, split_statements
from .sqlanalysis.selectstar import Relation, statement_columns

__all__ = ["QueryCatalog"]

_RELKINDS = {"r": "table", "p": "partitioned table", "v": "view", "m": "materialized view", "f": "foreign table"}
_CATALOG_QUERY = """
SELECT n.nspname, c.relname, c.relkind::text,
       coalesce(array_agg(a.attname::text ORDER BY a.attnum) FILTER (WHERE a.attnum IS NOT NULL), '{}'),
       coalesce(array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum)
                FILTER (WHERE a.attnum IS NOT NULL), '{}')
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
GROUP BY n.nspname, c.relname, c.relkind
"""
_TABLE_TYPES = {ObjectType.OBJECT_TABLE: "table", ObjectType.OBJECT_VIEW: "view",
                ObjectType.OBJECT_MATVIEW: "materialized view", ObjectType.OBJECT_FOREIGN_TABLE: "foreign table"}
FORMAT = "bluegreen-query-catalog"


@dataclass
class QueryCatalog:
    """Relations by ``(schema, name)`` and the search path unqualified names resolve through.

    As in Postgres, ``pg_catalog`` is searched first unless the path names it.
    """

    relations: dict[tuple[str, str], Relation] = field(default_factory=dict)
    search_path: tuple[str, ...] = ("public",)
    source: str = ""

    def lookup(self, schema: str | None, name: str) -> Relation | None:
        if schema is not None:
            return self.relations.get((schema, name))
        path = self.search_path if "pg_catalog" in self.search_path else ("pg_catalog", *self.search_path)
        for candidate in path:
            found = self.relations.get((candidate, name))
            if found is not None:
                return found
        return None

    def add(self, relation: Relation) -> None:
        self.relations[(relation.schema, relation.name)] = relation

    # -- live ------------------------------------------------------------------------------------

    @classmethod
    def from_connection(cls, conn: psycopg.Connection[Any], source: str = "database") -> QueryCatalog:
        """Read every table and view with its columns, and the session's search path."""
        catalog = cls(source=source)
        for schema, name, relkind, columns, types in conn.execute(_CATALOG_QUERY).fetchall():
            catalog.add(Relation(schema, name, tuple(columns), _RELKINDS.get(relkind, "table"), tuple(types)))
        row = conn.execute("SELECT current_schemas(false)").fetchone()
        catalog.search_path = tuple(row[0]) if row and row[0] else ()
        return catalog

    @classmethod
    def from_dsn(cls, dsn: str, name: str = "database") -> QueryCatalog:
        """Connect read-only to ``dsn`` and read its catalog.

        :raises ConnectionFailed: the database cannot be reached (the DSN is redacted).
        """
        with readonly(dsn, name) as conn:
            return cls.from_connection(conn, name)

    # -- files -----------------------------------------------------------------------------------

    @classmethod
    def from_files(cls, paths: Iterable[Path | str], search_path: tuple[str, ...] = ("public",)) -> QueryCatalog:
        """Build the catalog from schema files: ``.json`` snapshots, or SQL replayed in the given order.

        :raises UsageError: a file cannot be read, or SQL the Postgres grammar rejects (file:line:column).
        """
        catalog = cls(search_path=search_path)
        replay = _SchemaReplay(catalog, search_path)  # a SET search_path carries over to later files
        names = []
        for path in paths:
            path = Path(path)
            names.append(str(path))
            try:
                text = read_sql_text(path)
            except SqlFileError as exc:
                raise UsageError(str(exc)) from None
            if path.suffix == ".json":
                loaded = cls.from_json(text, str(path))
                catalog.relations.update(loaded.relations)
                if loaded.search_path:
                    catalog.search_path = loaded.search_path
            else:
                replay.run(text, str(path))
        catalog.source = ", ".join(names)
        return catalog

    def to_json(self) -> str:
        """A snapshot :meth:`from_json` (and ``--schema FILE.json``) reads back."""
        relations = [{"schema": r.schema, "name": r.name, "kind": r.kind, "columns": list(r.columns),
                      "types": list(r.types)}
                     for r in sorted(self.relations.values(), key=lambda r: (r.schema, r.name))
                     if r.schema not in ("pg_catalog", "information_schema")]
        return json.dumps({"format": FORMAT, "version": 1, "search_path": list(self.search_path),
                           "relations": relations}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "<json>") -> QueryCatalog:
        """Read a snapshot written by :meth:`to_json`.

        :raises UsageError: not such a snapshot: the file, and the line (bad JSON) or the key (bad content).
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{source}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}") from None
        except RecursionError:
            raise UsageError(f"{source}: not a {FORMAT} file: JSON nested too deeply") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UsageError(f"{source}: not a {FORMAT} file (write one with rewrite-queries --save-schema)")
        catalog = cls(search_path=_strings(data, "search_path", source) or ("public",), source=source)
        relations = data.get("relations")
        if not isinstance(relations, list):
            raise UsageError(f"{source}: relations: expected a list of tables and views")
        for i, rel in enumerate(relations):
            where = f"relations[{i}]"
            if not isinstance(rel, dict):
                raise UsageError(f"{source}: {where}: expected an object with schema, name and columns")
            names = []
            for key in ("schema", "name"):
                if not isinstance(rel.get(key), str) or not rel[key]:
                    raise UsageError(f"{source}: {where}.{key}: expected a name")
                names.append(rel[key])
            kind = rel.get("kind", "table")
            if not isinstance(kind, str):
                raise UsageError(f"{source}: {where}.kind: expected a string")
            if "columns" not in rel:
                raise UsageError(f"{source}: {where}.columns: missing")
            catalog.add(Relation(names[0], names[1], _strings(rel, "columns", source, f"{where}."), kind,
                                 _strings(rel, "types", source, f"{where}.")))
        return catalog


def _strings(data: dict[str, Any], key: str, source: str, prefix: str = "") -> tuple[str, ...]:
    """``data[key]`` as a tuple of strings (empty when absent).

    :raises UsageError: it is not a list of strings.
    """
    value = data.get(key, [])
    if value is None:
        value = []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{source}: {prefix}{key}: expected a list of strings")
    return tuple(value)


def _strip_meta_commands(text: str, source: str) -> list[Any]:
    """Split ``text``; psql meta-command lines (``\\restrict``, ``\\connect``) are blanked, not parsed."""
    for _ in range(10_000):
        try:
            return split_statements(text, source)
        except SqlSyntaxError as exc:
            if not exc.message.startswith("psql meta-command"):
                raise UsageError(str(exc)) from None
            lines = text.split("\n")
            lines[exc.line - 1] = " " * len(lines[exc.line - 1])
            text = "\n".join(lines)
    raise UsageError(f"{source}: too many psql meta-commands")


def _is(node: Any, cls: type) -> bool:
    """``isinstance`` without narrowing: pglast's stubs make every field Optional."""
    return isinstance(node, cls)


class _SchemaReplay:
    """Apply the DDL of a schema file to a catalog, statement by statement."""

    def __init__(self, catalog: QueryCatalog, search_path: tuple[str, ...]) -> None:
        self.catalog = catalog
        self.path = tuple(search_path) or ("public",)

    def run(self, text: str, source: str) -> None:
        for stmt in _strip_meta_commands(text, source):
            try:
                raws = parse_sql(stmt.text)
            except RecursionError:
                raise UsageError(f"{source}:{stmt.line}:{stmt.column}: statement nested too deeply to read") from None
            except parser.ParseError as exc:  # split accepted it; keep the message anyway
                raise UsageError(f"{source}:{stmt.line}:{stmt.column}: {exc}") from None
            try:
                for raw in raws:
                    self.apply(raw.stmt)
            except RecursionError:  # a view's query deeper than Python can walk: its columns are unknown
                raise UsageError(f"{source}:{stmt.line}:{stmt.column}: statement nested too deeply to read its"
                                 " columns (an expression of more than a few hundred levels)") from None

    def lookup(self, schema: str | None, name: str) -> Relation | None:
        """Resolve names in a view's query with the replay's own search path."""
        if schema is not None:
            return self.catalog.relations.get((schema, name))
        for candidate in ("pg_catalog", *self.path):
            found = self.catalog.relations.get((candidate, name))
            if found is not None:
                return found
        return None

    def _schema_for_create(self, rv: Any) -> str:
        return rv.schemaname or self.path[0]

    def _find(self, rv: Any) -> Relation | None:
        if rv.schemaname:
            return self.catalog.relations.get((rv.schemaname, rv.relname))
        for schema in self.path:
            found = self.catalog.relations.get((schema, rv.relname))
            if found is not None:
                return found
        return None

    def _replace(self, old: Relation, **changes: Any) -> None:
        values: dict[str, Any] = {"schema": old.schema, "name": old.name, "columns": old.columns,
                                  "kind": old.kind, "types": ()}
        values.update(changes)
        del self.catalog.relations[(old.schema, old.name)]
        self.catalog.add(Relation(**values))

    def apply(self, node: Any) -> None:
        if _is(node, ast.VariableSetStmt) and node.name == "search_path" and node.args:
            path = tuple(str(a.val.sval) for a in node.args if isinstance(a, ast.A_Const)
                         and isinstance(a.val, ast.String))
            self.path = path or self.path
        elif _is(node, ast.CreateForeignTableStmt):
            self._create(node.base, "foreign table")
        elif _is(node, ast.CreateStmt):
            self._create(node, "table")
        elif _is(node, ast.CreateTableAsStmt):
            rel = node.into.rel
            columns = [c.sval for c in node.into.colNames or ()] or statement_columns(node.query, self)
            if columns is not None:
                kind = "materialized view" if node.objtype == ObjectType.OBJECT_MATVIEW else "table"
                self.catalog.add(Relation(self._schema_for_create(rel), rel.relname, tuple(columns), kind))
        elif _is(node, ast.ViewStmt):
            columns = statement_columns(node.query, self)
            aliases = [a.sval for a in node.aliases or ()]
            if columns is not None:
                columns = aliases + list(columns[len(aliases):])
                self.catalog.add(Relation(self._schema_for_create(node.view), node.view.relname,
                                          tuple(columns), "view"))
        elif _is(node, ast.AlterTableStmt) and node.relation is not None:
            rel = self._find(node.relation)
            if rel is None:
                return
            columns = list(rel.columns)
            for cmd in node.cmds or ():
                if cmd.subtype in (AlterTableType.AT_AddColumn, AlterTableType.AT_AddColumnToView) \
                        and _is(cmd.def_, ast.ColumnDef):
                    if cmd.def_.colname not in columns:
                        columns.append(cmd.def_.colname)
                elif cmd.subtype == AlterTableType.AT_DropColumn and cmd.name in columns:
                    columns.remove(cmd.name)
            self._replace(rel, columns=tuple(columns))
        elif _is(node, ast.RenameStmt) and node.relation is not None:
            rel = self._find(node.relation)
            if rel is None:
                return
            if node.renameType == ObjectType.OBJECT_COLUMN:
                self._replace(rel, columns=tuple(node.newname if c == node.subname else c for c in rel.columns))
            elif node.renameType in _TABLE_TYPES:
                self._replace(rel, name=node.newname)
        elif _is(node, ast.AlterObjectSchemaStmt) and node.relation is not None \
                and node.objectType in _TABLE_TYPES:
            rel = self._find(node.relation)
            if rel is not None:
                self._replace(rel, schema=node.newschema)
        elif _is(node, ast.DropStmt):
            if node.removeType in _TABLE_TYPES:
                for obj in node.objects or ():
                    names = [s.sval for s in obj if isinstance(s, ast.String)]
                    rv = ast.RangeVar(schemaname=names[-2] if len(names) > 1 else None, relname=names[-1])
                    rel = self._find(rv)
                    if rel is not None:
                        del self.catalog.relations[(rel.schema, rel.name)]
            elif node.removeType == ObjectType.OBJECT_SCHEMA:
                dropped = {o.sval for o in node.objects or () if isinstance(o, ast.String)}
                for key in [k for k in self.catalog.relations if k[0] in dropped]:
                    del self.catalog.relations[key]

    def _create(self, node: Any, kind: str) -> None:
        rel = node.relation
        schema = self._schema_for_create(rel)
        if node.if_not_exists and (schema, rel.relname) in self.catalog.relations:
            return
        columns: list[str] = []
        for parent in node.inhRelations or ():
            found = self._find(parent)
            for name in found.columns if found is not None else ():
                if name not in columns:
                    columns.append(name)
        if node.partbound is None:
            for element in node.tableElts or ():
                if _is(element, ast.ColumnDef) and element.colname not in columns:
                    columns.append(element.colname)
                elif _is(element, ast.TableLikeClause):
                    found = self._find(element.relation)
                    for name in found.columns if found is not None else ():
                        if name not in columns:
                            columns.append(name)
        if node.partspec is not None:
            kind = "partitioned table"
        self.catalog.add(Relation(schema, rel.relname, tuple(columns), kind))
