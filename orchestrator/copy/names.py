"""Names and expressions from a plan, read with the Postgres grammar (pglast): tables, trigger conditions."""

from __future__ import annotations

from dataclasses import dataclass

from pglast import ast, parse_sql
from pglast.parser import ParseError
from pglast.stream import maybe_double_quote_name
from pglast.visitors import Visitor
from psycopg import sql


@dataclass(frozen=True, slots=True)
class QualifiedName:
    """A schema-qualified relation name, as Postgres would resolve it (folded, unquoted)."""

    schema: str
    name: str

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def display(self) -> str:
        """``schema.name``, each part double-quoted where Postgres needs it (what ``regclass`` accepts)."""
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"


def quote_ident(name: str) -> str:
    """Double-quote ``name`` if Postgres needs it (like ``quote_ident``)."""
    return str(maybe_double_quote_name(name))


def parse_qualified_name(text: str, default_schema: str = "public") -> QualifiedName:
    """Read ``table``, ``schema.table`` or quoted forms as Postgres does (unquoted parts fold to lower case).

    :raises ValueError: not exactly one (optionally schema-qualified) table name.
    """
    try:
        stmts = parse_sql(f"TABLE {text}")  # only to read the name with the real grammar
    except ParseError:
        raise ValueError(f"{text!r} is not a table name (write it as table or schema.table)") from None
    if len(stmts) != 1 or not isinstance(stmts[0].stmt, ast.SelectStmt):
        raise ValueError(f"{text!r} is not a table name")
    select = stmts[0].stmt
    from_clause = select.fromClause or ()
    if len(from_clause) != 1 or not isinstance(from_clause[0], ast.RangeVar) or select.whereClause is not None:
        raise ValueError(f"{text!r} is not a table name")
    rv = from_clause[0]
    if rv.catalogname or rv.alias is not None or not rv.inh:
        raise ValueError(f"{text!r} is not a plain table name (no database, alias or ONLY)")
    return QualifiedName(rv.schemaname or default_schema, str(rv.relname))


def parse_condition(text: str) -> ast.Node:
    """Parse a boolean SQL expression (a trigger's WHEN); return its AST.

    :raises ValueError: it is not exactly one expression.
    """
    try:
        stmts = parse_sql(f"SELECT WHERE ({text})")  # only to validate the expression with the grammar
    except ParseError as exc:
        raise ValueError(f"not a valid SQL condition: {exc.args[0] if exc.args else exc}") from None
    if len(stmts) != 1 or not isinstance(stmts[0].stmt, ast.SelectStmt) or stmts[0].stmt.targetList \
            or stmts[0].stmt.fromClause or stmts[0].stmt.whereClause is None:
        raise ValueError(f"not a single SQL condition: {text!r}")
    node: ast.Node = stmts[0].stmt.whereClause
    return node


class _Refs(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.found: set[str] = set()

    def visit_ColumnRef(self, ancestors: object, node: ast.ColumnRef) -> None:
        fields = node.fields or ()
        if len(fields) >= 2 and isinstance(fields[0], ast.String) and fields[0].sval:
            self.found.add(fields[0].sval.lower())


class _Columns(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.found: set[tuple[str, str]] = set()

    def visit_ColumnRef(self, ancestors: object, node: ast.ColumnRef) -> None:
        fields = node.fields or ()
        if len(fields) == 2 and all(isinstance(f, ast.String) and f.sval for f in fields):
            self.found.add((str(fields[0].sval).lower(), str(fields[1].sval)))


def condition_columns(text: str) -> set[tuple[str, str]]:
    """The ``(qualifier, column)`` pairs a condition reads (``OLD.active`` is ``("old", "active")``)."""
    cols = _Columns()
    cols(parse_condition(text))
    return cols.found


def condition_references(text: str) -> set[str]:
    """The lower-cased first names of qualified column references in a condition (``old``, ``new``...)."""
    refs = _Refs()
    refs(parse_condition(text))
    return refs.found


def condition_sql(text: str) -> str:
    """The condition printed back from its AST: exactly one expression, whatever the text around it."""
    from pglast.stream import RawStream

    return str(RawStream()(parse_condition(text)))
