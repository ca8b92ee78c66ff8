"""Constraints a migration statement adds, and the query that finds the rows violating each.

``cleanup`` (inline in ``migrate`` or a step of its own) runs these queries just before the
statement that would fail on such rows. A query is a predicate over the constrained table, composed
with ``psycopg.sql``: ``DELETE FROM <table> WHERE <predicate>`` removes exactly the violating rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pglast import ast
from pglast.enums import AlterTableType, ConstrType
from pglast.stream import RawStream
from pglast.visitors import Visitor
from psycopg import sql

from . import names

ConstraintKind = Literal["foreign_key", "unique", "primary_key", "not_null", "check", "custom"]


@dataclass(frozen=True, slots=True)
class TableRef:
    """A table as a migration names it: ``schema`` is None when the name is not qualified."""

    schema: str | None
    name: str

    @classmethod
    def of(cls, rangevar: ast.RangeVar | None) -> TableRef:
        if rangevar is None:
            raise ValueError("a statement without its table")
        return cls(rangevar.schemaname or None, str(rangevar.relname))

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name

    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name) if self.schema else sql.Identifier(self.name)

    def regclass(self) -> sql.Composed:
        """``'schema.name'::regclass`` resolved when the statement runs (the table may be new)."""
        return sql.SQL("{}::regclass").format(sql.Literal(self.ident().as_string()))


@dataclass(frozen=True, slots=True)
class Key:
    """One key part of a unique index: a column, or an expression (SQL text as the grammar printed it)."""

    column: str | None = None
    expression: str | None = None

    def composed(self) -> sql.Composable:
        return sql.Identifier(self.column) if self.column is not None else sql.SQL("({})").format(
            sql.SQL(self.expression or "NULL"))


@dataclass(frozen=True, slots=True)
class AddedConstraint:
    """A constraint a statement makes the table enforce, with what is needed to find its violations."""

    kind: ConstraintKind
    table: TableRef
    name: str
    keys: tuple[Key, ...] = ()
    ref_table: TableRef | None = None
    ref_columns: tuple[str, ...] = ()
    expression: str | None = None  # CHECK expression, a partial index's WHERE, or a custom predicate
    nulls_not_distinct: bool = False

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(k.column for k in self.keys if k.column is not None)

    def describe(self) -> str:
        cols = ", ".join(k.column or f"({k.expression})" for k in self.keys)
        if self.kind == "foreign_key":
            return f"FOREIGN KEY ({cols}) REFERENCES {self.ref_table}({', '.join(self.ref_columns)})"
        if self.kind == "check":
            return f"CHECK ({self.expression})"
        if self.kind == "custom":
            return f"WHERE {self.expression}"
        if self.kind == "not_null":
            return f"{cols} NOT NULL"
        label = "PRIMARY KEY" if self.kind == "primary_key" else "UNIQUE"
        return f"{label} ({cols})" + (f" WHERE {self.expression}" if self.expression else "")

    def violation_predicate(self) -> sql.Composable | None:
        """A predicate over the table, true for exactly the rows the constraint would reject.

        For UNIQUE and PRIMARY KEY one row per key (the first in table order) is kept and the
        others are violations. None when the violations cannot be derived statically (a foreign
        key whose referenced columns are not named).
        """
        table = sql.Identifier(self.table.name)
        if self.kind == "not_null":
            return sql.SQL(" OR ").join(sql.SQL("{}.{} IS NULL").format(table, sql.Identifier(c))
                                       for c in self.columns)
        if self.kind in ("check", "custom"):
            expr = sql.SQL(self.expression or "true")
            if self.kind == "custom":
                return sql.SQL("({})").format(expr)
            return sql.SQL("NOT COALESCE(({}), true)").format(expr)
        if self.kind == "foreign_key":
            if not self.ref_columns or self.ref_table is None or len(self.ref_columns) != len(self.columns):
                return None
            alias = sql.Identifier("bluegreen_ref")
            not_null = sql.SQL(" AND ").join(sql.SQL("{}.{} IS NOT NULL").format(table, sql.Identifier(c))
                                             for c in self.columns)
            match = sql.SQL(" AND ").join(
                sql.SQL("{}.{} = {}.{}").format(alias, sql.Identifier(r), table, sql.Identifier(c))
                for c, r in zip(self.columns, self.ref_columns, strict=True))
            return sql.SQL("{} AND NOT EXISTS (SELECT FROM {} AS {} WHERE {})").format(
                not_null, self.ref_table.ident(), alias, match)
        # unique / primary key: every row after the first of its key
        keys = [k.composed() for k in self.keys]
        conditions: list[sql.Composable] = []
        if not self.nulls_not_distinct:
            conditions.extend(sql.SQL("{} IS NOT NULL").format(k) for k in keys)
        if self.expression:
            conditions.append(sql.SQL("({})").format(sql.SQL(self.expression)))
        where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
        duplicates = sql.SQL(
            "{}.ctid IN (SELECT bluegreen_d.ctid FROM (SELECT ctid, row_number() OVER (PARTITION BY {} ORDER BY ctid)"
            " AS bluegreen_n FROM {}{}) AS bluegreen_d WHERE bluegreen_d.bluegreen_n > 1)").format(
            table, sql.SQL(", ").join(keys), self.table.ident(), where)
        if self.kind == "primary_key":
            nulls = sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(k) for k in keys)
            return sql.SQL("({} OR {})").format(nulls, duplicates)
        return duplicates


def deparse(node: Any) -> str:
    """SQL text of an AST node, as the Postgres grammar prints it."""
    return str(RawStream()(node)).strip()


class _Columns(Visitor):
    """Collect the column names an expression reads (last name part of each ColumnRef)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def visit_ColumnRef(self, ancestors: Any, node: ast.ColumnRef) -> None:
        last = node.fields[-1] if node.fields else None
        if isinstance(last, ast.String):
            self.found.append(str(last.sval))


def referenced_columns(expr: Any) -> list[str]:
    """Column names read by an expression, in the order they appear."""
    visitor = _Columns()
    visitor(expr)
    return visitor.found


def _names(values: Any) -> tuple[str, ...]:
    return tuple(str(v.sval) for v in values or () if isinstance(v, ast.String))


def index_keys(params: Any) -> tuple[Key, ...]:
    """The key parts of an index's ``IndexElem`` list."""
    keys: list[Key] = []
    for elem in params or ():
        if elem.name is not None:
            keys.append(Key(column=str(elem.name)))
        else:
            keys.append(Key(expression=deparse(elem.expr)))
    return tuple(keys)


def constraint_from(con: ast.Constraint, table: TableRef, column: str | None = None) -> AddedConstraint | None:
    """The ``AddedConstraint`` of a table (or column) constraint node that validates existing rows.

    NOT VALID constraints validate nothing and yield None; so do kinds with no row check.
    """
    contype = ConstrType(int(con.contype or 0))
    if contype == ConstrType.CONSTR_FOREIGN:
        if con.skip_validation:
            return None
        fk_cols = _names(con.fk_attrs) or ((column,) if column else ())
        name = con.conname or names.foreign_key_name(table.name, fk_cols)
        return AddedConstraint("foreign_key", table, str(name), tuple(Key(column=c) for c in fk_cols),
                               TableRef.of(con.pktable), _names(con.pk_attrs))
    if contype == ConstrType.CONSTR_CHECK:
        if con.skip_validation:
            return None
        cols = referenced_columns(con.raw_expr)
        name = con.conname or names.check_name(table.name, [column] if column else cols)
        return AddedConstraint("check", table, str(name), expression=deparse(con.raw_expr))
    if contype in (ConstrType.CONSTR_PRIMARY, ConstrType.CONSTR_UNIQUE):
        if con.indexname:
            return None  # USING INDEX: the index already enforces it
        keys = tuple(Key(column=c) for c in (_names(con.keys) or ((column,) if column else ())))
        primary = contype == ConstrType.CONSTR_PRIMARY
        cols = [k.column or "" for k in keys]
        name = con.conname or (names.primary_key_name(table.name) if primary else names.unique_name(table.name, cols))
        return AddedConstraint("primary_key" if primary else "unique", table, str(name), keys,
                               nulls_not_distinct=bool(con.nulls_not_distinct))
    if contype == ConstrType.CONSTR_NOTNULL and column is not None:
        return AddedConstraint("not_null", table, f"{table.name}.{column} NOT NULL", (Key(column=column),))
    return None


def unique_index_constraint(node: ast.IndexStmt) -> AddedConstraint | None:
    """The uniqueness a ``CREATE UNIQUE INDEX`` enforces, or None for a plain index."""
    if not node.unique:
        return None
    table = TableRef.of(node.relation)
    keys = index_keys(node.indexParams)
    name = node.idxname or names.index_name(table.name, [k.column or "expr" for k in keys])
    where = deparse(node.whereClause) if node.whereClause is not None else None
    return AddedConstraint("unique", table, str(name), keys, expression=where,
                           nulls_not_distinct=bool(node.nulls_not_distinct))


def added_constraints(node: Any, not_valid: dict[tuple[str, str], AddedConstraint] | None = None
                      ) -> list[AddedConstraint]:
    """Every constraint a statement (as written) makes Postgres check against existing rows.

    :param not_valid: constraints added ``NOT VALID`` earlier, by (table, name): a later
        ``VALIDATE CONSTRAINT`` checks them. Updated with the NOT VALID ones this statement adds.
    """
    found: list[AddedConstraint] = []
    if isinstance(node, ast.IndexStmt):
        unique = unique_index_constraint(node)
        return [unique] if unique else []
    if not isinstance(node, ast.AlterTableStmt) or node.relation is None:
        return found
    table = TableRef.of(node.relation)
    for cmd in node.cmds or ():
        subtype = AlterTableType(int(cmd.subtype or 0))
        if subtype == AlterTableType.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
            con = cmd.def_
            added = constraint_from(con, table)
            if added is not None:
                found.append(added)
            elif con.skip_validation and not_valid is not None and con.conname:
                validated = constraint_from(_validated(con), table)
                if validated is not None:
                    not_valid[(table.name, str(con.conname))] = validated
        elif subtype == AlterTableType.AT_SetNotNull and cmd.name:
            found.append(AddedConstraint("not_null", table, f"{table.name}.{cmd.name} NOT NULL",
                                         (Key(column=str(cmd.name)),)))
        elif subtype == AlterTableType.AT_ValidateConstraint and not_valid is not None and cmd.name:
            known = not_valid.get((table.name, str(cmd.name)))
            if known is not None:
                found.append(known)
    return found


N = TypeVar("N")


def replace_node(node: N, **changes: Any) -> N:
    """A copy of an AST node with some fields changed (pglast nodes list their fields in ``__slots__``)."""
    fields = {name: getattr(node, name) for name in getattr(node, "__slots__")}  # noqa: B009
    fields.update(changes)
    return type(node)(**fields)


def _validated(con: ast.Constraint) -> ast.Constraint:
    """A copy of a NOT VALID constraint node as if it were added valid."""
    return replace_node(con, skip_validation=False, initially_valid=True)


def custom_check(table: TableRef, name: str, where: str) -> AddedConstraint:
    """A violation query given by the plan: rows of ``table`` matching ``where``."""
    return AddedConstraint("custom", table, name, expression=where)
