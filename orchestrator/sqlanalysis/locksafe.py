"""Lock hazards of migration statements, and their lock-safe rewrite, on the Postgres grammar (pglast).

Every statement of a file is classified by the locks it takes and the table rewrites it causes,
and each hazard is named with squawk's rule names (:mod:`.rules`). The lock-safe form of a
statement is a list of :class:`Piece` statements; ``transactional`` ones may share a transaction,
the others (``CONCURRENTLY``, ``VALIDATE CONSTRAINT``) each run alone outside any. Which pieces run
together, where the author's ``BEGIN`` ... ``COMMIT`` blocks are split and how the file says so is
the file's transaction plan (:mod:`.transactions`).

- ``CREATE INDEX`` -> ``CREATE INDEX CONCURRENTLY IF NOT EXISTS`` (alone);
- ``DROP INDEX`` -> ``DROP INDEX CONCURRENTLY IF EXISTS`` (alone; with CASCADE, the dependent
  constraints are dropped first, in the transaction);
- ``ADD FOREIGN KEY`` / ``ADD CHECK`` -> ``... NOT VALID`` then ``VALIDATE CONSTRAINT`` (alone);
- ``ADD UNIQUE`` / ``ADD PRIMARY KEY`` -> ``CREATE UNIQUE INDEX CONCURRENTLY`` (alone, moved
  before the statements of its transaction that do not touch the table, so a key swap stays atomic)
  then ``ADD CONSTRAINT ... USING INDEX``;
- ``SET NOT NULL`` -> ``CHECK (col IS NOT NULL) NOT VALID``, ``VALIDATE`` (alone), ``SET NOT NULL``
  (proved by the check: no scan), then the check is dropped;
- ``REINDEX`` -> ``REINDEX (CONCURRENTLY)`` (alone).

The bytes of every statement that is not rewritten are kept; each rewritten statement is printed by
pglast from a modified AST and parsed back, and must give that AST again (:func:`check_rewrite`).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pglast import ast, parse_plpgsql, parse_sql
from pglast.enums import (
    AlterTableType,
    ConstrType,
    DropBehavior,
    ObjectType,
    ReindexObjectType,
)
from pglast.visitors import Visitor
from psycopg import sql

from . import names
from .constraints import AddedConstraint, Key, TableRef, added_constraints, constraint_from, deparse, replace_node
from .parse import SqlSyntaxError, Statement, split_statements
from .rules import RULES

ACCESS_EXCLUSIVE = "ACCESS EXCLUSIVE"
EXCLUSIVE = "EXCLUSIVE"
SHARE_ROW_EXCLUSIVE = "SHARE ROW EXCLUSIVE"
SHARE = "SHARE"
SHARE_UPDATE_EXCLUSIVE = "SHARE UPDATE EXCLUSIVE"
ROW_EXCLUSIVE = "ROW EXCLUSIVE"
ACCESS_SHARE = "ACCESS SHARE"

_STRENGTH = [ACCESS_SHARE, "ROW SHARE", ROW_EXCLUSIVE, SHARE_UPDATE_EXCLUSIVE, SHARE, SHARE_ROW_EXCLUSIVE,
             EXCLUSIVE, ACCESS_EXCLUSIVE]

BLOCKS = {
    ACCESS_EXCLUSIVE: "reads and writes",
    EXCLUSIVE: "writes and row locks",
    SHARE_ROW_EXCLUSIVE: "writes",
    SHARE: "writes",
    SHARE_UPDATE_EXCLUSIVE: "other schema changes and VACUUM, not reads or writes",
    ROW_EXCLUSIVE: "only conflicting schema changes",
    "ROW SHARE": "only EXCLUSIVE locks",
    ACCESS_SHARE: "only ACCESS EXCLUSIVE locks",
}

REFUSED_RULES = frozenset({"adding-field-with-default", "changing-column-type"})
"""Hazards lock-safe mode cannot rewrite and refuses unless the plan allows them."""


@dataclass(frozen=True, slots=True)
class Lock:
    """A lock a statement takes on a relation (``target`` names a table, or ``index X``).

    :ivar table: the table, when the lock is on a table the statement names.
    """

    target: str
    mode: str
    table: TableRef | None = field(default=None, compare=False)

    @property
    def blocks(self) -> str:
        return BLOCKS.get(self.mode, "")

    def __str__(self) -> str:
        return f"{self.mode} on {self.target}"


@dataclass(frozen=True, slots=True)
class Hazard:
    """One hazard of one statement.

    :ivar fix: the lock-safe SQL replacing the statement, when bluegreen can rewrite it.
    :ivar refused: lock-safe mode refuses the statement (no safe form) unless the rule is allowed.
    """

    rule: str
    message: str
    source: str
    line: int
    column: int
    statement: int
    table: str | None = None
    lock: str | None = None
    fix: str | None = None
    refused: bool = False
    reason: str | None = None

    @property
    def help(self) -> str:
        rule = RULES.get(self.rule)
        return rule.help if rule else ""


@dataclass(frozen=True, slots=True)
class IndexBuild:
    """An index a piece builds: the step looks for an invalid leftover of an interrupted build."""

    schema: str | None
    name: str
    table: TableRef
    unique: bool = False

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name

    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name) if self.schema else sql.Identifier(self.name)


@dataclass(frozen=True, slots=True)
class Piece:
    """One statement to run: an original statement (its exact text) or part of a rewrite.

    :ivar transactional: False for statements Postgres runs only outside a transaction block
        (CONCURRENTLY) and for those that must not share a transaction (VALIDATE CONSTRAINT).
    :ivar origin: the index of the file's statement it comes from.
    :ivar cleanup: constraints whose violating rows must be cleaned up just before this piece.
    :ivar hoist: may run before the earlier statements of its transaction that do not touch
        its table (a unique index built before a key swap).
    :ivar parallel: an index build that may run at the same time as its neighbours (``mode: fast``).
    :ivar verb: what it does, for action ids: ``create_index_concurrently``, ``validate_constraint``, ``sql``...
    """

    sql: str
    transactional: bool = True
    origin: int = 0
    rule: str | None = None
    index: IndexBuild | None = None
    cleanup: tuple[AddedConstraint, ...] = ()
    hoist: bool = False
    rewritten: bool = False
    parallel: bool = False
    verb: str = "sql"


@dataclass
class StatementAnalysis:
    """What one statement of a file does to live tables, and its lock-safe form."""

    index: int
    statement: Statement
    node: Any
    locks: tuple[Lock, ...] = ()
    rewrites: tuple[str, ...] = ()
    hazards: list[Hazard] = field(default_factory=list)
    safe: list[Piece] | None = None
    constraints: list[AddedConstraint] = field(default_factory=list)

    @property
    def concurrent(self) -> bool:
        """Whether Postgres refuses to run this statement (as written) in a transaction block."""
        node = self.node
        if isinstance(node, ast.IndexStmt | ast.DropStmt):
            return bool(node.concurrent)
        if isinstance(node, ast.ReindexStmt):
            return any(getattr(p, "defname", None) == "concurrently" for p in node.params or ())
        if isinstance(node, ast.VacuumStmt):
            return True
        if isinstance(node, ast.DoStmt):
            return do_commits(self.statement.text)
        if isinstance(node, ast.AlterTableStmt):  # DETACH PARTITION ... CONCURRENTLY
            return any(_subtype(c) == AlterTableType.AT_DetachPartition and isinstance(c.def_, ast.PartitionCmd)
                       and c.def_.concurrent for c in node.cmds or ())
        return isinstance(node, ast.CreatedbStmt | ast.DropdbStmt | ast.AlterSystemStmt | ast.CreateTableSpaceStmt
                          | ast.DropTableSpaceStmt)

    def original(self) -> Piece:
        """The statement exactly as written, cleaned up for the constraints it adds."""
        index = None
        if isinstance(self.node, ast.IndexStmt) and self.node.idxname:
            table = TableRef.of(self.node.relation)
            index = IndexBuild(table.schema, str(self.node.idxname), table, bool(self.node.unique))
        verb = "sql"
        if isinstance(self.node, ast.IndexStmt):
            verb = "create_index_concurrently" if self.node.concurrent else "create_index"
        elif isinstance(self.node, ast.DropStmt) and self.node.concurrent:
            verb = "drop_index_concurrently"
        elif isinstance(self.node, ast.ReindexStmt):
            verb = "reindex"
        return Piece(self.statement.text, not self.concurrent, self.index, index=index,
                     cleanup=tuple(self.constraints), verb=verb)

    def fast(self) -> Piece:
        """The statement for ``mode: fast``: as written, except a named index build (``IF NOT EXISTS``,
        outside the transaction, built in parallel with its neighbours)."""
        node = self.node
        piece = self.original()
        if isinstance(node, ast.IndexStmt) and not node.concurrent and node.idxname:
            text = _print(_replace(node, if_not_exists=True))
            return Piece(text, False, self.index, index=piece.index, cleanup=piece.cleanup, parallel=True,
                         verb="create_index", rewritten=not node.if_not_exists)
        return piece

    def lock_safe(self) -> list[Piece]:
        """The lock-safe pieces of the statement (the statement itself when it is safe as written)."""
        return list(self.safe) if self.safe is not None else [self.original()]


def do_commits(text: str) -> bool:
    """Whether a ``DO`` block (PL/pgSQL) runs COMMIT or ROLLBACK, so that it must run outside a transaction."""
    try:
        tree = parse_plpgsql(text)
    except Exception:  # another language, or a body PL/pgSQL rejects: it fails the same way when run
        return False
    found = False

    def walk(value: Any) -> None:
        nonlocal found
        if isinstance(value, dict):
            if "PLpgSQL_stmt_commit" in value or "PLpgSQL_stmt_rollback" in value:
                found = True
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(tree)
    return found


class RewriteError(ValueError):
    """A rewrite printed SQL that does not parse back to the intended statement (a bug, never ignored)."""


# ----------------------------------------------------------------------------------------------------
# helpers on AST nodes


E = TypeVar("E", bound=enum.IntEnum)


def _enum(cls: type[E], value: Any) -> E:
    """A pglast enum field as its enum (the AST types them optional; the grammar always sets them)."""
    return cls(int(value or 0))


_replace = replace_node


@functools.cache
def _template(text: str) -> Any:  # the node class depends on the text
    """A statement parsed from a template: built nodes then carry the parser's defaults in every field."""
    return parse_sql(text)[0].stmt


def _alter(relation: ast.RangeVar, *cmds: ast.AlterTableCmd) -> ast.AlterTableStmt:
    template: ast.AlterTableStmt = _template("ALTER TABLE t VALIDATE CONSTRAINT c")
    return _replace(template, relation=relation, cmds=tuple(cmds))


def _cmd(template: str, **changes: Any) -> ast.AlterTableCmd:
    """The single command of ``ALTER TABLE t <template>``, with fields replaced."""
    cmd: ast.AlterTableCmd = _template(f"ALTER TABLE t {template}").cmds[0]
    return _replace(cmd, **changes)


def _validate(relation: ast.RangeVar, name: str) -> ast.AlterTableStmt:
    return _alter(relation, _cmd("VALIDATE CONSTRAINT c", name=name))


def _drop_constraint(relation: ast.RangeVar, name: str) -> ast.AlterTableStmt:
    return _alter(relation, _cmd("DROP CONSTRAINT c", name=name))


def _not_null_check(relation: ast.RangeVar, name: str, column: str) -> ast.AlterTableStmt:
    cmd = _template("ALTER TABLE t ADD CONSTRAINT c CHECK (x IS NOT NULL) NOT VALID").cmds[0]
    con = cmd.def_
    expr = _replace(con.raw_expr, arg=_colref(column))
    return _alter(relation, _replace(cmd, def_=_replace(con, conname=name, raw_expr=expr)))


def _add_constraint(con: ast.Constraint) -> ast.AlterTableCmd:
    return _cmd("ADD CONSTRAINT c CHECK (true)", def_=con)


def _using_index(con: ast.Constraint, name: str, index: str) -> ast.Constraint:
    primary = _enum(ConstrType, con.contype) == ConstrType.CONSTR_PRIMARY
    template = _template(f"ALTER TABLE t ADD CONSTRAINT c {'PRIMARY KEY' if primary else 'UNIQUE'} USING INDEX i")
    using: ast.Constraint = template.cmds[0].def_
    return _replace(using, conname=name, indexname=index, deferrable=con.deferrable,
                    initdeferred=con.initdeferred)


def _index_elem(column: str) -> ast.IndexElem:
    elem: ast.IndexElem = _template("CREATE INDEX i ON t (a)").indexParams[0]
    return _replace(elem, name=column)


def _colref(column: str) -> ast.ColumnRef:
    ref: ast.ColumnRef = _template("SELECT a").targetList[0].val
    return _replace(ref, fields=(ast.String(sval=column),))


def _drop_index_concurrently(obj: tuple[Any, ...]) -> ast.DropStmt:
    drop: ast.DropStmt = _template("DROP INDEX CONCURRENTLY IF EXISTS i")
    return _replace(drop, objects=(obj,))


def _subtype(cmd: ast.AlterTableCmd) -> AlterTableType:
    return _enum(AlterTableType, cmd.subtype)


class _Relations(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def visit_RangeVar(self, ancestors: Any, node: ast.RangeVar) -> None:
        self.names.add(str(node.relname))


def relations(node: Any) -> set[str]:
    """Names (without schema) of every relation a statement mentions."""
    visitor = _Relations()
    visitor(node)
    return visitor.names


def check_rewrite(text: str, expected: Any) -> str:
    """Parse ``text`` back and require exactly ``expected`` (the AST it was printed from).

    :raises RewriteError: the printed SQL is not one statement, or means something else.
    """
    try:
        parsed = parse_sql(text)
    except Exception as exc:  # pglast.parser.ParseError
        raise RewriteError(f"rewritten SQL does not parse: {exc}: {text}") from None
    if len(parsed) != 1:
        raise RewriteError(f"rewritten SQL is {len(parsed)} statements, expected 1: {text}")
    if parsed[0].stmt != expected:
        raise RewriteError(f"rewritten SQL parses to another statement than intended: {text}")
    return text


def _print(node: Any) -> str:
    return check_rewrite(deparse(node), node)


# ----------------------------------------------------------------------------------------------------
# locks


def _strongest(modes: Iterable[str]) -> str | None:
    found = [m for m in modes if m in _STRENGTH]
    return max(found, key=_STRENGTH.index) if found else None


_ALTER_LOCKS = {
    AlterTableType.AT_ValidateConstraint: SHARE_UPDATE_EXCLUSIVE,
    AlterTableType.AT_SetStatistics: SHARE_UPDATE_EXCLUSIVE,
    AlterTableType.AT_ClusterOn: SHARE_UPDATE_EXCLUSIVE,
    AlterTableType.AT_DropCluster: SHARE_UPDATE_EXCLUSIVE,
    AlterTableType.AT_SetRelOptions: SHARE_UPDATE_EXCLUSIVE,
    AlterTableType.AT_ResetRelOptions: SHARE_UPDATE_EXCLUSIVE,
    AlterTableType.AT_AttachPartition: SHARE_UPDATE_EXCLUSIVE,
    AlterTableType.AT_DetachPartitionFinalize: SHARE_UPDATE_EXCLUSIVE,
    AlterTableType.AT_EnableTrig: SHARE_ROW_EXCLUSIVE,
    AlterTableType.AT_EnableAlwaysTrig: SHARE_ROW_EXCLUSIVE,
    AlterTableType.AT_EnableReplicaTrig: SHARE_ROW_EXCLUSIVE,
    AlterTableType.AT_DisableTrig: SHARE_ROW_EXCLUSIVE,
    AlterTableType.AT_EnableTrigAll: SHARE_ROW_EXCLUSIVE,
    AlterTableType.AT_DisableTrigAll: SHARE_ROW_EXCLUSIVE,
    AlterTableType.AT_EnableTrigUser: SHARE_ROW_EXCLUSIVE,
    AlterTableType.AT_DisableTrigUser: SHARE_ROW_EXCLUSIVE,
    AlterTableType.AT_AlterConstraint: SHARE_ROW_EXCLUSIVE,
}

_SERIAL_TYPES = {"serial", "serial2", "serial4", "serial8", "smallserial", "bigserial"}
_STABLE_DEFAULTS = {"now", "current_timestamp", "transaction_timestamp", "statement_timestamp", "current_date",
                    "localtimestamp", "current_user", "session_user"}


def _volatile_default(coldef: ast.ColumnDef) -> str | None:
    """Why adding this column rewrites the table, or None (constant or stable default: no rewrite)."""
    type_names = [str(n.sval) for n in (coldef.typeName.names if coldef.typeName else ()) or ()
                  if isinstance(n, ast.String)]
    if type_names and type_names[-1].lower() in _SERIAL_TYPES:
        return f"a {type_names[-1]} column fills every row from a sequence"
    for con in coldef.constraints or ():
        contype = _enum(ConstrType, con.contype)
        if contype == ConstrType.CONSTR_IDENTITY:
            return "an identity column fills every row from a sequence"
        if contype == ConstrType.CONSTR_GENERATED:
            return "a stored generated column is computed for every row"
        if contype == ConstrType.CONSTR_DEFAULT and con.raw_expr is not None and not _constant(con.raw_expr):
            return f"the default {deparse(con.raw_expr)!r} is evaluated for every row"
    return None


def _constant(expr: Any) -> bool:
    """Whether a default is evaluated once (a constant, a cast of one, or a stable function like now())."""
    if isinstance(expr, ast.A_Const | ast.SQLValueFunction):
        return True
    if isinstance(expr, ast.TypeCast):
        return _constant(expr.arg)
    if isinstance(expr, ast.FuncCall):
        name = str(expr.funcname[-1].sval).lower() if expr.funcname else ""
        return name in _STABLE_DEFAULTS and not expr.args
    if isinstance(expr, ast.A_ArrayExpr):
        return all(_constant(e) for e in expr.elements or ())
    return False


def _locked(table: TableRef, mode: str) -> Lock:
    return Lock(str(table), mode, table)


def classify(node: Any) -> tuple[tuple[Lock, ...], tuple[str, ...]]:
    """The locks a statement takes and the tables it rewrites (copies in full)."""
    locks: list[Lock] = []
    rewrites: list[str] = []
    if isinstance(node, ast.IndexStmt):
        locks.append(_locked(TableRef.of(node.relation), SHARE_UPDATE_EXCLUSIVE if node.concurrent else SHARE))
    elif isinstance(node, ast.DropStmt):
        kind = _enum(ObjectType, node.removeType)
        for obj in node.objects or ():
            name = ".".join(str(p.sval) for p in obj if isinstance(p, ast.String)) if isinstance(obj, tuple) else ""
            if kind == ObjectType.OBJECT_INDEX:
                locks.append(Lock(f"the table of index {name}",
                                  SHARE_UPDATE_EXCLUSIVE if node.concurrent else ACCESS_EXCLUSIVE))
            elif kind in (ObjectType.OBJECT_TABLE, ObjectType.OBJECT_VIEW, ObjectType.OBJECT_MATVIEW,
                          ObjectType.OBJECT_SEQUENCE):
                parts = [str(p.sval) for p in obj if isinstance(p, ast.String)] if isinstance(obj, tuple) else []
                ref = TableRef(parts[-2] if len(parts) > 1 else None, parts[-1]) if parts else None
                locks.append(Lock(name, ACCESS_EXCLUSIVE, ref))
    elif isinstance(node, ast.AlterTableStmt) and node.relation is not None:
        altered = TableRef.of(node.relation)
        table = str(altered)
        modes: list[str] = []
        for cmd in node.cmds or ():
            subtype = _subtype(cmd)
            mode = _ALTER_LOCKS.get(subtype, ACCESS_EXCLUSIVE)
            if subtype == AlterTableType.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint) \
                    and _enum(ConstrType, cmd.def_.contype) == ConstrType.CONSTR_FOREIGN:
                mode = SHARE_ROW_EXCLUSIVE
                locks.append(_locked(TableRef.of(cmd.def_.pktable), SHARE_ROW_EXCLUSIVE))
            modes.append(mode)
            volatile = subtype == AlterTableType.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef) \
                and _volatile_default(cmd.def_) is not None
            if volatile or subtype in (AlterTableType.AT_AlterColumnType, AlterTableType.AT_SetLogged,
                                       AlterTableType.AT_SetUnLogged, AlterTableType.AT_SetAccessMethod):
                rewrites.append(table)
        strongest = _strongest(modes)
        if strongest:
            locks.insert(0, _locked(altered, strongest))
    elif isinstance(node, ast.CreateStmt):
        for element in node.tableElts or ():
            cons = element.constraints if isinstance(element, ast.ColumnDef) else (element,)
            for con in cons or ():
                if isinstance(con, ast.Constraint) and _enum(ConstrType, con.contype) == ConstrType.CONSTR_FOREIGN:
                    locks.append(_locked(TableRef.of(con.pktable), SHARE_ROW_EXCLUSIVE))
    elif isinstance(node, ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt) and node.relation is not None:
        locks.append(_locked(TableRef.of(node.relation), ROW_EXCLUSIVE))
    elif isinstance(node, ast.TruncateStmt):
        locks.extend(_locked(TableRef.of(r), ACCESS_EXCLUSIVE) for r in node.relations or ())
    elif isinstance(node, ast.RenameStmt) and node.relation is not None:
        locks.append(_locked(TableRef.of(node.relation), ACCESS_EXCLUSIVE))
    elif isinstance(node, ast.ReindexStmt) and node.relation is not None:
        concurrent = any(getattr(p, "defname", None) == "concurrently" for p in node.params or ())
        locks.append(_locked(TableRef.of(node.relation), SHARE_UPDATE_EXCLUSIVE if concurrent else SHARE))
    elif isinstance(node, ast.VacuumStmt):
        full = any(getattr(o, "defname", None) == "full" for o in node.options or ())
        for rel in node.rels or ():
            name = str(TableRef.of(rel.relation)) if getattr(rel, "relation", None) else "?"
            locks.append(Lock(name, ACCESS_EXCLUSIVE if full else SHARE_UPDATE_EXCLUSIVE))
            if full:
                rewrites.append(name)
    elif isinstance(node, ast.ClusterStmt) and node.relation is not None:
        ref = TableRef.of(node.relation)
        locks.append(_locked(ref, ACCESS_EXCLUSIVE))
        rewrites.append(str(ref))
    elif isinstance(node, ast.CreateTrigStmt) and node.relation is not None:
        locks.append(_locked(TableRef.of(node.relation), SHARE_ROW_EXCLUSIVE))
    elif isinstance(node, ast.LockStmt):
        mode = _LOCK_MODES.get(int(node.mode or 8), ACCESS_EXCLUSIVE)
        locks.extend(_locked(TableRef.of(r), mode) for r in node.relations or ())
    return tuple(locks), tuple(dict.fromkeys(rewrites))


_LOCK_MODES = {1: ACCESS_SHARE, 2: "ROW SHARE", 3: ROW_EXCLUSIVE, 4: SHARE_UPDATE_EXCLUSIVE, 5: SHARE,
               6: SHARE_ROW_EXCLUSIVE, 7: EXCLUSIVE, 8: ACCESS_EXCLUSIVE}


# ----------------------------------------------------------------------------------------------------
# the rewrite of one statement


@dataclass
class _Rewrite:
    """Hazards found in one statement and its lock-safe pieces (None: keep the statement as written)."""

    analysis: StatementAnalysis
    source: str
    pieces: list[Piece] | None = None

    def hazard(self, rule: str, table: str | None, lock: str | None, *, refused: bool = False,
               reason: str | None = None, message: str | None = None) -> None:
        st = self.analysis.statement
        self.analysis.hazards.append(Hazard(rule, message or RULES[rule].message, self.source, st.line, st.column,
                                            self.analysis.index, table, lock, None, refused, reason))

    def piece(self, text: str, transactional: bool = True, *, rule: str | None = None,
              index: IndexBuild | None = None, cleanup: Sequence[AddedConstraint] = (), hoist: bool = False,
              verb: str = "sql") -> Piece:
        return Piece(text, transactional, self.analysis.index, rule, index, tuple(cleanup), hoist, True, verb=verb)


class Rewriter:
    """Analyse the statements of migration files, remembering what earlier statements declared.

    One instance should see a set of files in apply order: a ``VALIDATE CONSTRAINT`` in a later file
    is cleaned up for the NOT VALID constraint an earlier one added.
    """

    def __init__(self) -> None:
        self.not_valid: dict[tuple[str, str], AddedConstraint] = {}

    def analyze_file(self, text: str, source: str) -> FileAnalysis:
        """Split, parse and analyse one file.

        :raises SqlSyntaxError: where the grammar rejects the text (psql meta-commands included), or a
            statement too deeply nested to analyse.
        """
        statements = split_statements(text, source)
        out: list[StatementAnalysis] = []
        for index, statement in enumerate(statements):
            try:
                out.append(self._analyze(index, statement, source))
            except RecursionError:
                # The grammar took it, but walking or printing its tree goes deeper than Python allows:
                # a statement whose locks are unknown cannot be called safe.
                raise SqlSyntaxError(source, statement.line, statement.column,
                                     "statement nested too deeply to analyse (an expression of more than a few "
                                     "hundred levels): split it, or run it outside bluegreen") from None
        return FileAnalysis(source, text, out)

    def _analyze(self, index: int, statement: Statement, source: str) -> StatementAnalysis:
        try:
            node = parse_sql(statement.text)[0].stmt
        except RecursionError:
            raise
        except Exception as exc:  # split already parsed it; keep the message if it ever fails
            raise SqlSyntaxError(source, statement.line, statement.column, str(exc)) from None
        analysis = StatementAnalysis(index, statement, node)
        analysis.locks, analysis.rewrites = classify(node)
        analysis.constraints = added_constraints(node, self.not_valid)
        rewrite = _Rewrite(analysis, source)
        self._rewrite(rewrite)
        analysis.safe = rewrite.pieces
        if analysis.safe is not None:
            fix = ";\n".join(p.sql for p in analysis.safe)
            analysis.hazards = [_with_fix(h, fix) for h in analysis.hazards]
        return analysis

    # -- per statement kind ------------------------------------------------------------------------

    def _rewrite(self, rw: _Rewrite) -> None:
        node = rw.analysis.node
        if isinstance(node, ast.IndexStmt):
            self._create_index(rw, node)
        elif isinstance(node, ast.DropStmt):
            self._drop(rw, node)
        elif isinstance(node, ast.AlterTableStmt) and node.relation is not None \
                and _enum(ObjectType, node.objtype) == ObjectType.OBJECT_TABLE:
            self._alter_table(rw, node)
        elif isinstance(node, ast.ReindexStmt):
            self._reindex(rw, node)
        elif isinstance(node, ast.RenameStmt):
            kind = _enum(ObjectType, node.renameType)
            table = str(TableRef.of(node.relation)) if node.relation is not None else None
            if kind == ObjectType.OBJECT_COLUMN:
                rw.hazard("renaming-column", table, ACCESS_EXCLUSIVE)
            elif kind == ObjectType.OBJECT_TABLE:
                rw.hazard("renaming-table", table, ACCESS_EXCLUSIVE)

    def _create_index(self, rw: _Rewrite, node: ast.IndexStmt) -> None:
        table = TableRef.of(node.relation)
        unique = [c for c in rw.analysis.constraints if c.kind == "unique"]
        build = IndexBuild(table.schema, str(node.idxname), table, bool(node.unique)) if node.idxname else None
        if not node.concurrent:
            rw.hazard("require-concurrent-index-creation", str(table), SHARE)
        elif node.idxname and not node.if_not_exists:
            rw.hazard("prefer-robust-stmts", str(table), SHARE_UPDATE_EXCLUSIVE,
                      message="CREATE INDEX CONCURRENTLY without IF NOT EXISTS cannot run again after an interruption")
        else:
            return
        safe = _replace(node, concurrent=True, if_not_exists=bool(node.if_not_exists or node.idxname))
        rw.pieces = [rw.piece(_print(safe), False, rule=rw.analysis.hazards[-1].rule, index=build, cleanup=unique,
                              verb="create_index_concurrently")]

    def _drop(self, rw: _Rewrite, node: ast.DropStmt) -> None:
        kind = _enum(ObjectType, node.removeType)
        objects = [obj for obj in node.objects or () if isinstance(obj, tuple)]
        if kind == ObjectType.OBJECT_TABLE:
            for obj in objects:
                rw.hazard("ban-drop-table", ".".join(str(p.sval) for p in obj), ACCESS_EXCLUSIVE)
            return
        if kind != ObjectType.OBJECT_INDEX:
            return
        if node.concurrent and node.missing_ok:
            return
        rule = "prefer-robust-stmts" if node.concurrent else "require-concurrent-index-deletion"
        for obj in objects:
            name = ".".join(str(p.sval) for p in obj)
            if node.concurrent:
                rw.hazard(rule, None, SHARE_UPDATE_EXCLUSIVE,
                          message=f"DROP INDEX CONCURRENTLY {name} without IF EXISTS cannot run again after an "
                                  "interruption")
            else:
                rw.hazard(rule, f"the table of index {name}", ACCESS_EXCLUSIVE)
        pieces: list[Piece] = []
        cascade = _enum(DropBehavior, node.behavior) == DropBehavior.DROP_CASCADE
        for obj in objects:
            if cascade:
                pieces.append(rw.piece(_drop_dependent_constraints(obj), rule=rule, verb="drop_dependent_constraints"))
            pieces.append(rw.piece(_print(_drop_index_concurrently(obj)), False, rule=rule,
                                   verb="drop_index_concurrently"))
        rw.pieces = pieces

    def _reindex(self, rw: _Rewrite, node: ast.ReindexStmt) -> None:
        if any(getattr(p, "defname", None) == "concurrently" for p in node.params or ()):
            return
        kind = _enum(ReindexObjectType, node.kind)
        table = str(TableRef.of(node.relation)) if node.relation is not None else node.name
        if kind == ReindexObjectType.REINDEX_OBJECT_SYSTEM:
            rw.hazard("require-concurrent-reindex", None, SHARE, refused=True,
                      reason="system catalogs cannot be reindexed concurrently")
            return
        rw.hazard("require-concurrent-reindex", str(table), SHARE)
        concurrently: ast.DefElem = _template("REINDEX (CONCURRENTLY) INDEX i").params[0]
        params = (*(node.params or ()), concurrently)
        safe = _replace(node, params=params)
        rw.pieces = [rw.piece(_print(safe), False, rule="require-concurrent-reindex", verb="reindex_concurrently")]

    def _alter_table(self, rw: _Rewrite, node: ast.AlterTableStmt) -> None:
        table = TableRef.of(node.relation)
        relation = node.relation
        assert relation is not None
        out: list[Piece] = []
        current: list[ast.AlterTableCmd] = []
        pre: list[Piece] = []
        post_inline: list[Piece] = []
        post_alone: list[Piece] = []
        changed = False

        def flush() -> None:
            if current:
                out.extend(pre)
                out.append(rw.piece(_print(_replace(node, cmds=tuple(current)))))
                out.extend(post_inline)
                out.extend(post_alone)
            else:
                out.extend(pre + post_inline + post_alone)
            current.clear()
            pre.clear()
            post_inline.clear()
            post_alone.clear()

        def adds_column(columns: Iterable[str]) -> bool:
            wanted = set(columns)
            return any(_subtype(c) == AlterTableType.AT_AddColumn and isinstance(c.def_, ast.ColumnDef)
                       and c.def_.colname in wanted for c in current)

        def constraint(con: ast.Constraint, column: str | None = None) -> bool:
            """Queue the lock-safe form of an added constraint; False if it is safe as written."""
            nonlocal changed
            contype = _enum(ConstrType, con.contype)
            added = constraint_from(con, table, column)
            if contype in (ConstrType.CONSTR_FOREIGN, ConstrType.CONSTR_CHECK) and not con.skip_validation:
                assert added is not None
                rw.hazard("constraint-missing-not-valid", str(table), SHARE_ROW_EXCLUSIVE
                          if contype == ConstrType.CONSTR_FOREIGN else ACCESS_EXCLUSIVE)
                rule = "constraint-missing-not-valid"
                if contype == ConstrType.CONSTR_FOREIGN:
                    rw.hazard("adding-foreign-key-constraint", str(table), SHARE_ROW_EXCLUSIVE)
                    rule = "adding-foreign-key-constraint"
                safe = _replace(con, conname=added.name, skip_validation=True, initially_valid=False)
                current.append(_add_constraint(safe))
                post_alone.append(rw.piece(_print(_validate(relation, added.name)), False, rule=rule, cleanup=[added],
                                           verb="validate_constraint"))
                changed = True
                return True
            if contype in (ConstrType.CONSTR_PRIMARY, ConstrType.CONSTR_UNIQUE) and not con.indexname:
                assert added is not None
                primary = contype == ConstrType.CONSTR_PRIMARY
                rule = "adding-serial-primary-key-field" if primary else "disallowed-unique-constraint"
                rw.hazard("constraint-missing-not-valid", str(table), ACCESS_EXCLUSIVE)
                rw.hazard(rule, str(table), ACCESS_EXCLUSIVE)
                columns = list(added.columns)
                if adds_column(columns):
                    flush()
                temp = names.helper_name(added.name, "bgnew")
                build = _replace(
                    _template("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a)"),
                    idxname=temp, relation=_replace(relation, inh=True),
                    tableSpace=con.indexspace, indexParams=tuple(_index_elem(c) for c in columns),
                    indexIncludingParams=tuple(_index_elem(str(c.sval)) for c in con.including or ()) or None,
                    options=con.options, nulls_not_distinct=bool(con.nulls_not_distinct))
                pre.append(rw.piece(_print(build), False, rule=rule, cleanup=[added], hoist=True,
                                    verb="create_index_concurrently",
                                    index=IndexBuild(table.schema, temp, table, True)))
                current.append(_add_constraint(_using_index(con, added.name, temp)))
                changed = True
                return True
            if contype == ConstrType.CONSTR_EXCLUSION:
                rw.hazard("constraint-missing-not-valid", str(table), ACCESS_EXCLUSIVE, refused=True,
                          reason="an exclusion constraint builds its index under ACCESS EXCLUSIVE; "
                                 "it has no concurrent form")
            return False

        for cmd in node.cmds or ():
            subtype = _subtype(cmd)
            if subtype == AlterTableType.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
                if not constraint(cmd.def_):
                    current.append(cmd)
            elif subtype == AlterTableType.AT_SetNotNull and cmd.name:
                column = str(cmd.name)
                rw.hazard("adding-not-nullable-field", str(table), ACCESS_EXCLUSIVE)
                if adds_column([column]):
                    flush()
                check = names.make_object_name(table.name, column, "bgnn")
                not_null = AddedConstraint("not_null", table, f"{table.name}.{column} NOT NULL",
                                           (Key(column=column),))
                pre.append(rw.piece(_print(_not_null_check(relation, check, column)), rule="adding-not-nullable-field"))
                pre.append(rw.piece(_print(_validate(relation, check)), False, rule="adding-not-nullable-field",
                                    cleanup=[not_null], verb="validate_constraint"))
                current.append(cmd)
                post_inline.append(rw.piece(_print(_drop_constraint(relation, check)),
                                            rule="adding-not-nullable-field"))
                changed = True
            elif subtype == AlterTableType.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
                coldef = cmd.def_
                column = str(coldef.colname)
                why = _volatile_default(coldef)
                if why:
                    rw.hazard("adding-field-with-default", str(table), ACCESS_EXCLUSIVE, refused=True,
                              reason=f"{why}: the table is rewritten under ACCESS EXCLUSIVE")
                cons = list(coldef.constraints or ())
                fills = (ConstrType.CONSTR_DEFAULT, ConstrType.CONSTR_IDENTITY, ConstrType.CONSTR_GENERATED)
                has_default = any(_enum(ConstrType, c.contype) in fills for c in cons)
                if any(_enum(ConstrType, c.contype) == ConstrType.CONSTR_NOTNULL for c in cons) and not has_default \
                        and not _serial(coldef):
                    rw.hazard("adding-required-field", str(table), ACCESS_EXCLUSIVE)
                movable = [c for c in cons if _enum(ConstrType, c.contype) in (
                    ConstrType.CONSTR_FOREIGN, ConstrType.CONSTR_CHECK, ConstrType.CONSTR_PRIMARY,
                    ConstrType.CONSTR_UNIQUE)]
                if not movable:
                    current.append(cmd)
                    continue
                kept = tuple(c for c in cons if c not in movable) or None
                current.append(_replace(cmd, def_=_replace(coldef, constraints=kept)))
                for con in movable:
                    table_con = _column_to_table_constraint(con, column)
                    if not constraint(table_con, column):
                        current.append(_add_constraint(table_con))
                changed = True
            elif subtype == AlterTableType.AT_AlterColumnType:
                rw.hazard("changing-column-type", str(table), ACCESS_EXCLUSIVE, refused=True,
                          reason="the table and its indexes are rewritten under ACCESS EXCLUSIVE (unless the new "
                                 "type is binary-coercible, which cannot be known without the catalog)")
                current.append(cmd)
            elif subtype == AlterTableType.AT_DropColumn:
                rw.hazard("ban-drop-column", str(table), ACCESS_EXCLUSIVE)
                current.append(cmd)
            elif subtype == AlterTableType.AT_ValidateConstraint and len(node.cmds or ()) == 1:
                # safe as written, but it must not share a transaction with the ADD ... NOT VALID
                known = self.not_valid.get((table.name, str(cmd.name)))
                rw.pieces = [Piece(rw.analysis.statement.text, False, rw.analysis.index,
                                   cleanup=(known,) if known else (), verb="validate_constraint")]
                return
            else:
                current.append(cmd)
        if not changed:
            return
        flush()
        rw.pieces = out


def _serial(coldef: ast.ColumnDef) -> bool:
    parts = [str(n.sval) for n in (coldef.typeName.names if coldef.typeName else ()) or () if isinstance(n, ast.String)]
    return bool(parts) and parts[-1].lower() in _SERIAL_TYPES


def _column_to_table_constraint(con: ast.Constraint, column: str) -> ast.Constraint:
    """``ADD COLUMN c ... REFERENCES t (x)`` as the table constraint ``FOREIGN KEY (c) REFERENCES t (x)``."""
    contype = _enum(ConstrType, con.contype)
    if contype == ConstrType.CONSTR_FOREIGN:
        return _replace(con, fk_attrs=(ast.String(sval=column),))
    if contype in (ConstrType.CONSTR_PRIMARY, ConstrType.CONSTR_UNIQUE):
        return _replace(con, keys=(ast.String(sval=column),))
    return con


def _drop_dependent_constraints(obj: tuple[Any, ...]) -> str:
    """A DO block dropping the constraints that depend on an index (what DROP INDEX ... CASCADE drops).

    ``DROP INDEX CONCURRENTLY`` refuses CASCADE; the foreign keys that use the index are dropped
    first, each under the statement's lock_timeout, then the index concurrently.
    """
    qualified = ".".join(sql.Identifier(str(p.sval)).as_string() for p in obj)
    body = sql.SQL(
        "DECLARE dep record; BEGIN"
        " FOR dep IN SELECT c.conrelid::regclass AS rel, c.conname FROM pg_depend d"
        " JOIN pg_constraint c ON d.classid = 'pg_constraint'::regclass AND d.objid = c.oid"
        " WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = to_regclass({}) AND d.deptype = 'n'"
        " ORDER BY c.conrelid, c.conname"
        " LOOP EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', dep.rel, dep.conname); END LOOP; END"
    ).format(sql.Literal(qualified)).as_string()
    text = f"DO $bluegreen$ {body} $bluegreen$"
    if body.count("$bluegreen$"):
        text = sql.SQL("DO {}").format(sql.Literal(body)).as_string()
    parsed = parse_sql(text)
    if len(parsed) != 1 or not isinstance(parsed[0].stmt, ast.DoStmt):
        raise RewriteError(f"dependent-constraint drop does not parse as one DO statement: {text}")
    return text


def _with_fix(hazard: Hazard, fix: str) -> Hazard:
    return Hazard(hazard.rule, hazard.message, hazard.source, hazard.line, hazard.column, hazard.statement,
                  hazard.table, hazard.lock, None if hazard.refused else fix, hazard.refused, hazard.reason)


# ----------------------------------------------------------------------------------------------------
# a whole file


@dataclass
class FileAnalysis:
    """The statements of one file with their hazards, and the file's lock-safe pieces and text."""

    source: str
    text: str
    statements: list[StatementAnalysis]

    @property
    def hazards(self) -> list[Hazard]:
        return [h for s in self.statements for h in s.hazards]

    def refused(self, allow: Iterable[str] = ()) -> list[Hazard]:
        """Hazards lock-safe mode cannot make safe, except the allowed rules."""
        allowed = set(allow)
        return [h for h in self.hazards if h.refused and h.rule not in allowed]

    def original_pieces(self) -> list[Piece]:
        """The statements as written (CONCURRENTLY ones outside the transaction), one piece each."""
        return [s.original() for s in self.statements]

    def fast_pieces(self) -> list[Piece]:
        """The pieces of ``mode: fast``, in file order (see :meth:`StatementAnalysis.fast`)."""
        return [s.fast() for s in self.statements]

    def safe_pieces(self) -> list[Piece]:
        """The lock-safe pieces of every statement, in file order (before any is moved: see :func:`hoist`).

        Which of them run together, and in what order, is the file's transaction plan
        (:func:`.transactions.plan_file`).
        """
        return [piece for s in self.statements for piece in s.lock_safe()]


_SAFE_TO_PASS = {AlterTableType.AT_DropConstraint, AlterTableType.AT_DropNotNull, AlterTableType.AT_ColumnDefault,
                 AlterTableType.AT_ValidateConstraint}


def _passable(statement: StatementAnalysis, table: str) -> bool:
    """Whether an index on ``table`` may be built before ``statement`` instead of after it."""
    node = statement.node
    if isinstance(node, ast.AlterTableStmt) and node.relation is not None and str(node.relation.relname) == table:
        return all(_subtype(c) in _SAFE_TO_PASS and (_subtype(c) != AlterTableType.AT_ColumnDefault
                                                     or c.def_ is None) for c in node.cmds or ())
    return table not in relations(node) and not isinstance(node, ast.DoStmt | ast.CreateFunctionStmt
                                                           | ast.TransactionStmt | ast.VariableSetStmt)


def hoist(pieces: Sequence[Piece], statements: Sequence[StatementAnalysis]) -> list[Piece]:
    """Move each ``hoist`` piece before the preceding pieces of its transaction it does not depend on.

    ``pieces`` are those of one transaction as its author wrote it (a ``BEGIN`` ... ``COMMIT`` block,
    or a whole file): a unique index is built before the statements that drop the old key, so the key
    swap stays in one transaction. A piece never moves past a statement outside a transaction, a
    statement of its own origin, a rewritten one or transaction control (``SAVEPOINT``...).
    """
    out = list(pieces)
    for piece in pieces:
        if not piece.hoist or piece.index is None:
            continue
        at = next(i for i, p in enumerate(out) if p is piece)
        table = piece.index.table.name
        target = at
        while target > 0:
            before = out[target - 1]
            if not before.transactional or before.origin == piece.origin or before.rewritten or before.origin < 0:
                break
            if not _passable(statements[before.origin], table):
                break
            target -= 1
        if target != at:
            out.pop(at)
            out.insert(target, piece)
    return out
