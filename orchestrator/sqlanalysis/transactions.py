"""Transaction plans of migration files: which statements run together, and a file that runs them so.

How a file runs as written. A file that controls its transactions (``BEGIN``, ``START TRANSACTION``,
``COMMIT``, ``END``, ``ROLLBACK``, in any case, with ``AND CHAIN`` or not) runs as ``psql -f`` runs it:
each block is one transaction, every statement outside a block runs alone. A file without transaction
control is one transaction (as ``migrate`` and popx run a file), or one statement at a time when its
name says ``.autocommit.``. :func:`structure` reads that from the statements (``DO`` bodies and
functions with ``BEGIN`` in them are single statements to the grammar, so they are never mistaken for
control), refusing what Postgres would refuse or silently undo (a block never committed, a savepoint
outside a block, two-phase commit).

What the plan changes. :func:`plan_file` keeps each of those transactions where that is lock-safe and
splits it where it is not, in as few places as it can:

- a statement Postgres runs only outside a transaction block (``CREATE INDEX CONCURRENTLY``, ``DROP
  INDEX CONCURRENTLY``, ``REINDEX CONCURRENTLY``, ``VACUUM``, a ``DO`` block that commits) runs alone,
  between the parts of its block; ``VALIDATE CONSTRAINT`` too, after the ``NOT VALID`` one committed;
- a backfill (``UPDATE t SET c = ... WHERE c IS NULL ...``) runs in committed batches (lock-safe mode);
- a statement that may write many rows (``UPDATE``, ``DELETE``, ``INSERT ... SELECT``, ``MERGE``) never
  shares a transaction with a lock that blocks writes to a table (SHARE or stronger), taken before it
  (held for the whole write) or after it (waited for while its row locks are held), unless that table
  was created earlier in the same transaction (nobody else sees it yet);
- a unique index built for a key swap goes before the transaction, which keeps the swap atomic; an
  index or constraint on a table created earlier in the same transaction stays in it, as written; a
  ``VALIDATE`` waits for the end of the statements after it that name neither of its tables;
- a ``CALL`` outside any block runs alone, as psql runs it (its procedure may commit);
- a ``SET LOCAL`` of a split block is repeated in each later part (as a session ``SET``, reset after,
  around a statement that runs alone); a savepoint the split crosses is dropped when it is only
  released, and nothing is split inside a savepoint that is rolled back to, nor after the author's own
  ``LOCK TABLE``; a block that ends in ``ROLLBACK`` and a savepoint rolled back to are kept as written.

:meth:`FilePlan.render` writes the plan as a file that psql runs as planned: it starts with ``SET
lock_timeout``, says each split in a ``-- bluegreen:`` comment (the statements before commit without
those after: atomicity changed), keeps every byte of what it does not change, and is read back to
check that it runs exactly the plan's transactions. ``migrate`` runs the same units
(:mod:`orchestrator.steps.migrate`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Literal

from pglast import ast, parse_sql, parser
from pglast.enums import BoolExprType, NullTestType, TransactionStmtKind, VariableSetKind
from pglast.visitors import Visitor
from psycopg import sql

from .constraints import TableRef, deparse, replace_node
from .locksafe import (
    _STRENGTH,
    SHARE,
    FileAnalysis,
    Piece,
    RewriteError,
    Rewriter,
    StatementAnalysis,
    check_rewrite,
    classify,
    do_commits,
    hoist,
    relations,
)
from .parse import BOM, SqlSyntaxError

Mode = Literal["lock-safe", "fast", "as-written"]
GroupKind = Literal["block", "file", "statement"]

DEFAULT_BATCH = 5000
"""Rows per batch of a backfill (the plan default ``batch_size``)."""

HEADER_NOTE = ("-- bluegreen rewrite: run this file as it is (psql -v ON_ERROR_STOP=1 -f FILE): each BEGIN ... COMMIT"
               " is one transaction, every other statement runs alone")

KEEPABLE = frozenset({"require-concurrent-index-creation", "constraint-missing-not-valid",
                      "adding-foreign-key-constraint", "disallowed-unique-constraint",
                      "adding-serial-primary-key-field"})
"""Hazards that are none on a table created earlier in the same transaction (nobody else sees it yet)."""

_BLOCK_KINDS = frozenset({TransactionStmtKind.TRANS_STMT_BEGIN, TransactionStmtKind.TRANS_STMT_START,
                          TransactionStmtKind.TRANS_STMT_COMMIT, TransactionStmtKind.TRANS_STMT_ROLLBACK})
_SAVEPOINT_KINDS = frozenset({TransactionStmtKind.TRANS_STMT_SAVEPOINT, TransactionStmtKind.TRANS_STMT_RELEASE,
                              TransactionStmtKind.TRANS_STMT_ROLLBACK_TO})
_WORDS = {TransactionStmtKind.TRANS_STMT_SAVEPOINT: "SAVEPOINT", TransactionStmtKind.TRANS_STMT_RELEASE: "RELEASE",
          TransactionStmtKind.TRANS_STMT_ROLLBACK_TO: "ROLLBACK TO SAVEPOINT"}
_PL_NAMES = frozenset({"found", "bluegreen_rows", "bluegreen_set", "bluegreen_batch", "bluegreen_filled"})


class TransactionError(SqlSyntaxError):
    """Transaction control that cannot run as written (``line`` and ``column`` name the statement)."""


# ----------------------------------------------------------------------------------------------------
# how the file runs as written


@dataclass
class Group:
    """Statements that run as one transaction as written: a block, the whole file, or one statement.

    :ivar members: indexes of its statements (savepoint statements included, ``BEGIN``/``COMMIT`` not).
    :ivar begin: the statement that opens the block (None for a file or a statement, or after AND CHAIN).
    :ivar end: the statement that ends it (``COMMIT``, ``END``, ``ROLLBACK``, with or without AND CHAIN).
    :ivar chained: it ends with AND CHAIN: the next group starts with its characteristics.
    :ivar begin_text: how a transaction of this group is opened (the author's ``BEGIN ...`` text).
    :ivar characteristics: ``SET TRANSACTION`` statements equal to the options of that ``BEGIN``.
    :ivar inherited: ``SET TRANSACTION`` statements of the blocks this one is chained from.
    """

    index: int
    kind: GroupKind
    line: int
    members: list[int] = field(default_factory=list)
    begin: int | None = None
    end: int | None = None
    chained: bool = False
    rollback: bool = False
    begin_text: str = "BEGIN"
    characteristics: tuple[str, ...] = ()
    inherited: tuple[str, ...] = ()


@dataclass
class Structure:
    """The groups of a file, and the control statements that do nothing as written (with why)."""

    groups: list[Group]
    dropped: dict[int, str]


def _kind(node: Any) -> TransactionStmtKind | None:
    return TransactionStmtKind(int(node.kind or 0)) if isinstance(node, ast.TransactionStmt) else None


@functools.cache
def _template(text: str) -> Any:
    return parse_sql(text)[0].stmt


def _characteristics(node: ast.TransactionStmt) -> tuple[str, ...]:
    """``BEGIN ISOLATION LEVEL ...`` as the ``SET TRANSACTION`` statement that gives a transaction the same."""
    if not node.options:
        return ()
    stmt = replace_node(_template("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"), args=node.options)
    return (check_rewrite(deparse(stmt), stmt),)


def _is_set_transaction(node: Any) -> bool:
    return isinstance(node, ast.VariableSetStmt) and str(node.name or "").upper() == "TRANSACTION"


def _scoped(node: Any) -> bool:
    """Whether a statement sets something for the rest of its transaction only (``SET LOCAL``, ...)."""
    return (isinstance(node, ast.VariableSetStmt) and (bool(node.is_local) or _is_set_transaction(node))) \
        or isinstance(node, ast.ConstraintsSetStmt)


def structure(analysis: FileAnalysis, autocommit: bool = False) -> Structure:
    """How the statements of a file run as written: its groups (see :class:`Group`).

    :param autocommit: the file's name says ``.autocommit.``: without control, each statement runs alone.
    :raises TransactionError: two-phase commit; a savepoint outside a block; AND CHAIN with no
        transaction; a block never committed (psql rolls it back at the end of the file).
    """
    statements = analysis.statements

    def fail(i: int, message: str) -> None:
        st = statements[i].statement
        raise TransactionError(analysis.source, st.line, st.column, message)

    groups: list[Group] = []
    dropped: dict[int, str] = {}

    def new(kind: GroupKind, line: int, **kw: Any) -> Group:
        group = Group(len(groups), kind, line, **kw)
        groups.append(group)
        return group

    for i, s in enumerate(statements):
        if _kind(s.node) in (TransactionStmtKind.TRANS_STMT_PREPARE, TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED,
                             TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED):
            fail(i, "two-phase commit (PREPARE TRANSACTION, COMMIT PREPARED) has no place in a migration file")
    if not any(_kind(s.node) in _BLOCK_KINDS for s in statements):
        if autocommit:
            for i, s in enumerate(statements):
                kind = _kind(s.node)
                if kind is not None:
                    fail(i, f"{_WORDS[kind]} outside a transaction block: Postgres refuses it (an .autocommit. file "
                            "runs statement by statement)")
                new("statement", s.statement.line, members=[i])
        elif statements:
            new("file", statements[0].statement.line, members=list(range(len(statements))))
        return Structure(groups, dropped)

    current: Group | None = None
    opened_at = 0
    for i, s in enumerate(statements):
        kind, line = _kind(s.node), s.statement.line
        if kind in (TransactionStmtKind.TRANS_STMT_BEGIN, TransactionStmtKind.TRANS_STMT_START):
            if current is not None:
                dropped[i] = (f"BEGIN dropped: the transaction begun at line {current.line} is still open "
                              "(Postgres ignores it, with a warning)")
                continue
            current = new("block", line, begin=i, begin_text=s.statement.text, characteristics=_characteristics(s.node))
            opened_at = i
        elif kind in (TransactionStmtKind.TRANS_STMT_COMMIT, TransactionStmtKind.TRANS_STMT_ROLLBACK):
            word = "COMMIT" if kind == TransactionStmtKind.TRANS_STMT_COMMIT else "ROLLBACK"
            chain = bool(s.node.chain)
            if current is None:
                if chain:
                    fail(i, f"{word} AND CHAIN with no transaction open: Postgres refuses it")
                dropped[i] = f"{word} dropped: no transaction is open here (Postgres ignores it, with a warning)"
                continue
            current.end, current.rollback = i, kind == TransactionStmtKind.TRANS_STMT_ROLLBACK
            if chain:
                current.chained = True
                settings = tuple(statements[m].statement.text for m in current.members
                                 if _is_set_transaction(statements[m].node))
                current = new("block", line, begin_text=current.begin_text, characteristics=current.characteristics,
                              inherited=current.inherited + settings)
                opened_at = i
            else:
                current = None
        elif kind in _SAVEPOINT_KINDS:
            if current is None:
                fail(i, f"{_WORDS[kind]} outside a transaction block: Postgres refuses it")
            else:
                current.members.append(i)
        elif current is not None:
            current.members.append(i)
        else:
            new("statement", line, members=[i])
    if current is not None:
        fail(opened_at, "this transaction is never committed: psql rolls it back when the file ends "
                        "(end it with COMMIT)")
    return Structure(groups, dropped)


@dataclass
class _Span:
    """A savepoint within a group: from its SAVEPOINT to the statement that ends it (None: the group's end)."""

    name: str
    start: int
    release: int | None = None  # the RELEASE naming it (dropped with it, when it is dropped)
    closed: int | None = None  # where it ends: its RELEASE, or an outer RELEASE / ROLLBACK TO
    rolled_back: bool = False


def _savepoints(analysis: FileAnalysis, group: Group) -> list[_Span]:
    """The savepoints of a group; the ones rolled back to are kept as written.

    :raises TransactionError: a RELEASE or ROLLBACK TO names no open savepoint.
    """
    stack: list[_Span] = []
    spans: list[_Span] = []
    for i in group.members:
        node = analysis.statements[i].node
        kind = _kind(node)
        if kind == TransactionStmtKind.TRANS_STMT_SAVEPOINT:
            stack.append(_Span(str(node.savepoint_name), i))
            spans.append(stack[-1])
        elif kind in (TransactionStmtKind.TRANS_STMT_RELEASE, TransactionStmtKind.TRANS_STMT_ROLLBACK_TO):
            name = str(node.savepoint_name)
            at = next((n for n in range(len(stack) - 1, -1, -1) if stack[n].name == name), None)
            if at is None:
                st = analysis.statements[i].statement
                raise TransactionError(analysis.source, st.line, st.column,
                                       f"no savepoint {name!r} is open here: Postgres refuses it")
            if kind == TransactionStmtKind.TRANS_STMT_RELEASE:
                stack[at].release = i
                for span in stack[at:]:
                    span.closed = i
                del stack[at:]
            else:
                stack[at].rolled_back = True
                for span in stack[at + 1:]:
                    span.closed, span.rolled_back = i, True
                del stack[at + 1:]
    return spans


# ----------------------------------------------------------------------------------------------------
# what a piece does to tables


@dataclass(frozen=True, slots=True)
class _Effects:
    writes: tuple[TableRef, ...] = ()  # tables whose rows it may write in bulk
    locks: tuple[tuple[TableRef, str], ...] = ()  # write-blocking locks (SHARE or stronger) on tables
    creates: tuple[TableRef, ...] = ()


class _Writes(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[TableRef] = []

    def _add(self, relation: Any) -> None:
        if isinstance(relation, ast.RangeVar):
            self.tables.append(TableRef.of(relation))

    def visit_UpdateStmt(self, ancestors: Any, node: ast.UpdateStmt) -> None:
        self._add(node.relation)

    def visit_DeleteStmt(self, ancestors: Any, node: ast.DeleteStmt) -> None:
        self._add(node.relation)

    def visit_MergeStmt(self, ancestors: Any, node: ast.MergeStmt) -> None:
        self._add(node.relation)

    def visit_InsertStmt(self, ancestors: Any, node: ast.InsertStmt) -> None:
        select = node.selectStmt
        if isinstance(select, ast.SelectStmt) and not select.valuesLists:  # INSERT ... SELECT, not VALUES
            self._add(node.relation)


@functools.lru_cache(maxsize=8192)
def _statement(text: str) -> Any:
    """The parsed node of a piece (None if it does not parse, which a piece always does)."""
    try:
        return parse_sql(text)[0].stmt
    except Exception:
        return None


@functools.lru_cache(maxsize=8192)
def _effects(text: str) -> _Effects:
    node = _statement(text)
    if node is None:
        return _Effects()
    writes = _Writes()
    writes(node)
    locks: list[tuple[TableRef, str]] = []
    if not isinstance(node, ast.LockStmt):  # an explicit LOCK is the author's intent: see conflict_cuts
        for lock in classify(node)[0]:
            if lock.table is not None and lock.mode in _STRENGTH \
                    and _STRENGTH.index(lock.mode) >= _STRENGTH.index(SHARE):
                locks.append((lock.table, lock.mode))
    creates: list[TableRef] = []
    if isinstance(node, ast.CreateStmt):
        creates.append(TableRef.of(node.relation))
    elif isinstance(node, ast.CreateTableAsStmt) and node.into is not None:
        creates.append(TableRef.of(node.into.rel))
    elif isinstance(node, ast.SelectStmt) and node.intoClause is not None:
        creates.append(TableRef.of(node.intoClause.rel))
    return _Effects(tuple(writes.tables), tuple(locks), tuple(creates))


@functools.lru_cache(maxsize=8192)
def _mentions(text: str) -> frozenset[str] | None:
    """The relations a piece names (None: it may touch anything, like a DO block or a function)."""
    node = _statement(text)
    if node is None:
        return None
    if isinstance(node, ast.DoStmt | ast.CreateFunctionStmt | ast.TransactionStmt | ast.VariableSetStmt
                  | ast.CallStmt):
        return None
    return frozenset(relations(node))


def sink(pieces: Sequence[Piece]) -> list[Piece]:
    """Move each ``VALIDATE CONSTRAINT`` to the end of the statements after it that do not name its table.

    A validation runs alone, outside the transaction; run after what follows instead of in its middle,
    it leaves the rest of the author's transaction in one piece. It never passes a statement that names
    its table or the table its foreign key references (which may drop, rename or rely on the validated
    constraint, as ``SET NOT NULL`` relies on its check), a statement outside a transaction other than
    another validation, or one whose effects are unknown (a DO block, a function, a savepoint, a SET).
    """
    out: list[Piece] = []
    run: list[Piece] = []

    def flush() -> None:
        # each validation goes just before the first later statement naming its table (or to the end)
        before: dict[int, list[Piece]] = {}
        for n, piece in enumerate(run):
            if piece.verb != "validate_constraint":
                continue
            names = (_mentions(piece.sql) or frozenset()) | {c.ref_table.name for c in piece.cleanup if c.ref_table}
            stop = next((m for m in range(n + 1, len(run)) if run[m].verb != "validate_constraint"
                         and (not names or (_mentions(run[m].sql) or frozenset()) & names)), len(run))
            before.setdefault(stop, []).append(piece)
        for n, piece in enumerate(run):
            out.extend(before.get(n, []))
            if piece.verb != "validate_constraint":
                out.append(piece)
        out.extend(before.get(len(run), []))
        run.clear()

    for piece in pieces:
        validate = piece.verb == "validate_constraint" and not piece.transactional
        if validate or (piece.transactional and piece.origin >= 0 and _mentions(piece.sql) is not None):
            run.append(piece)
        else:
            flush()
            out.append(piece)
    flush()
    return out


def _same(a: TableRef, b: TableRef) -> bool:
    return a.name == b.name and (a.schema is None or b.schema is None or a.schema == b.schema)


def _conflict(first: _Effects, second: _Effects,
              created: Sequence[TableRef]) -> tuple[TableRef, str, TableRef, bool] | None:
    """Why ``first`` and ``second`` must not share a transaction: (written table, lock mode, locked table,
    write first?), or None. A table created earlier in the transaction is seen by no one else: its lock
    blocks no one, nor do the row locks of a write into it."""
    def new(table: TableRef) -> bool:
        return any(_same(table, c) for c in created)

    for written in first.writes:
        for locked, mode in second.locks:
            if not new(locked) and not new(written):
                return written, mode, locked, True
    for locked, mode in first.locks:
        for written in second.writes:
            if not new(locked):
                return written, mode, locked, False
    return None


# ----------------------------------------------------------------------------------------------------
# backfills in batches


class _Columns(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def visit_ColumnRef(self, ancestors: Any, node: ast.ColumnRef) -> None:
        self.names.update(str(f.sval).lower() for f in node.fields or () if isinstance(f, ast.String))


def _conjuncts(expr: Any) -> list[Any]:
    if isinstance(expr, ast.BoolExpr) and BoolExprType(int(expr.boolop or 0)) == BoolExprType.AND_EXPR:
        return list(expr.args or ())
    return [expr] if expr is not None else []


def backfill_column(node: Any) -> str | None:
    """The column an ``UPDATE`` backfills, if it is one that batches are sure to finish.

    That is ``UPDATE t SET c = <expr> WHERE c IS NULL [AND ...]`` with one target column, no FROM,
    RETURNING or WITH: a row it fills no longer matches, and a row it leaves NULL is dealt with once
    (see :func:`batched_backfill`).
    """
    if not isinstance(node, ast.UpdateStmt) or node.fromClause or node.returningClause or node.withClause \
            or node.relation is None or not node.targetList or len(node.targetList) != 1:
        return None
    target = node.targetList[0]
    if not isinstance(target, ast.ResTarget) or target.indirection or isinstance(target.val, ast.MultiAssignRef) \
            or not target.name:
        return None
    column = str(target.name)
    names = {str(node.relation.relname)}
    if node.relation.alias is not None:
        names = {str(node.relation.alias.aliasname)}
    for conjunct in _conjuncts(node.whereClause):
        if isinstance(conjunct, ast.NullTest) and isinstance(conjunct.arg, ast.ColumnRef) \
                and NullTestType(int(conjunct.nulltesttype or 0)) == NullTestType.IS_NULL:
            fields = [str(f.sval) for f in conjunct.arg.fields or () if isinstance(f, ast.String)]
            if fields and fields[-1] == column and (len(fields) == 1 or (len(fields) == 2 and fields[0] in names)):
                columns = _Columns()
                columns(node)
                return None if columns.names & _PL_NAMES else column
    return None


def batched_backfill(statement: StatementAnalysis, batch_size: int = DEFAULT_BATCH) -> Piece | None:
    """A backfill ``UPDATE`` as a ``DO`` block that updates ``batch_size`` rows per committed transaction.

    Each batch takes the rows that still match (by ``ctid``) and updates them under the original
    WHERE, so a row changed meanwhile is checked again. When a whole batch leaves the column NULL (the
    expression gives NULL for those rows), the original statement runs once on what is left, so the
    result is the original's and the loop ends. None if the statement is not such a backfill.
    """
    node = statement.node
    column = backfill_column(node)
    if column is None:
        return None
    template = _template("UPDATE t SET a = 1 WHERE ctid = ANY (ARRAY(SELECT ctid FROM t WHERE true LIMIT "
                         f"{int(batch_size)})) AND true RETURNING a IS NOT NULL AS bluegreen_filled")
    where = template.whereClause
    any_ = where.args[0]
    inner = replace_node(any_.rexpr.subselect, fromClause=(node.relation,), whereClause=node.whereClause)
    any_ = replace_node(any_, rexpr=replace_node(any_.rexpr, subselect=inner))
    where = replace_node(where, args=(any_, *_conjuncts(node.whereClause)))
    clause = template.returningClause
    returning = clause.exprs[0]
    filled = replace_node(returning.val, arg=replace_node(returning.val.arg, fields=(ast.String(sval=column),)))
    batch = replace_node(template, relation=node.relation, targetList=node.targetList, whereClause=where,
                         returningClause=replace_node(clause, exprs=(replace_node(returning, val=filled),)))
    body = sql.SQL(
        "\nDECLARE\n  bluegreen_rows bigint;\n  bluegreen_set bigint;\nBEGIN\n  LOOP\n"
        "    WITH bluegreen_batch AS (\n      {batch}\n    )\n"
        "    SELECT count(*), count(*) FILTER (WHERE bluegreen_filled) INTO bluegreen_rows, bluegreen_set"
        " FROM bluegreen_batch;\n"
        "    COMMIT;\n    EXIT WHEN bluegreen_rows = 0;\n"
        "    IF bluegreen_set = 0 THEN  -- these rows stay NULL: run the statement once, as written\n"
        "      {original};\n      EXIT;\n    END IF;\n  END LOOP;\nEND\n"
    ).format(batch=sql.SQL(check_rewrite(deparse(batch), batch)),
             original=sql.SQL(check_rewrite(deparse(node), node))).as_string()
    text = f"DO $bluegreen${body}$bluegreen$"
    if "$bluegreen$" in body:
        text = sql.SQL("DO {}").format(sql.Literal(body)).as_string()
    parsed = parse_sql(text)
    if len(parsed) != 1 or not isinstance(parsed[0].stmt, ast.DoStmt) or not do_commits(text):
        raise RewriteError(f"batched backfill does not parse as one DO block that commits: {text}")
    return Piece(text, False, statement.index, rule="backfill", rewritten=True, verb="backfill_in_batches")


# ----------------------------------------------------------------------------------------------------
# the plan


@dataclass(frozen=True, slots=True)
class Unit:
    """What runs together: a transaction of pieces, or one piece outside any transaction.

    :ivar begin: how the file opens this transaction (the author's ``BEGIN ...``, or ``BEGIN``).
    :ivar characteristics: ``SET TRANSACTION`` equal to that ``BEGIN``'s options (run first by ``migrate``).
    :ivar carried: statements repeated from earlier in the author's block (``SET LOCAL``, ``SET TRANSACTION``).
    :ivar setup: for a piece outside a transaction: the block's ``SET LOCAL`` as session ``SET`` ...
    :ivar teardown: ... and how the session gets its values back afterwards.
    :ivar rollback: the author's block ends in ROLLBACK: it runs, then is undone.
    :ivar opener: the author's statement written as this transaction's ``BEGIN`` (statement index).
    :ivar closer: the author's statement written as its ``COMMIT`` / ``ROLLBACK``.
    :ivar wrap: the file writes ``BEGIN`` / ``COMMIT`` around it (otherwise it is one statement, alone).
    :ivar notes: why the author's transaction is split here (written as ``-- bluegreen:`` comments).
    """

    pieces: tuple[Piece, ...]
    transaction: bool
    group: int
    begin: str = "BEGIN"
    characteristics: tuple[str, ...] = ()
    carried: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()
    teardown: tuple[str, ...] = ()
    rollback: bool = False
    opener: int | None = None
    closer: int | None = None
    wrap: bool = False
    notes: tuple[str, ...] = ()

    def statements(self) -> list[str]:
        """The SQL of the unit in order, as ``migrate`` runs it (inside its transaction, if it is one)."""
        if not self.transaction:
            return [*self.setup, self.pieces[0].sql, *self.teardown]
        body = [p.sql for p in self.pieces]
        if self.rollback:
            body = ["SAVEPOINT bluegreen_discard", *body, "ROLLBACK TO SAVEPOINT bluegreen_discard"]
        return [*self.characteristics, *self.carried, *body]


@dataclass
class FilePlan:
    """The transaction plan of one file.

    :ivar units: what runs, in order.
    :ivar dropped: statements of the file that the plan does not run (control with no effect, a BEGIN
        or COMMIT of a block split away, a savepoint a split crosses), with why.
    :ivar changed: statements the plan runs in another form than written (rewritten, batched, dropped).
    :ivar kept: statements kept as written because their table is created earlier in their transaction.
    """

    analysis: FileAnalysis
    mode: Mode
    autocommit: bool
    batch_size: int
    units: list[Unit]
    dropped: dict[int, str]
    changed: set[int]
    kept: set[int]
    skip: frozenset[int] = frozenset()

    @property
    def splits(self) -> int:
        """How many ``-- bluegreen:`` notes the file gets (splits of transactions, dropped control)."""
        return sum(len(u.notes) for u in self.units) + len(self.dropped)

    def canonical(self) -> list[tuple[str, tuple[str, ...]]]:
        """What runs, as ``(kind, statements)``: ``tx`` (one transaction), ``rollback`` (one, undone) or
        ``auto`` (one statement alone; a transaction of a single statement is the same thing)."""
        out: list[tuple[str, tuple[str, ...]]] = []
        for unit in self.units:
            if unit.transaction:
                stmts = tuple(unit.statements())
                out.append(("rollback" if unit.rollback else "tx" if len(stmts) > 1 else "auto", stmts))
            else:
                out.extend(("auto", (s,)) for s in unit.statements())
        return out

    def render(self, lock_timeout: timedelta) -> str:
        """The file that runs this plan when psql runs it (``psql -v ON_ERROR_STOP=1 -f``).

        It starts with ``SET lock_timeout``; a file with no statement is returned as it is.

        :raises RewriteError: the text does not read back as exactly these units (a bug, never ignored).
        """
        if not self.analysis.statements:
            return self.analysis.text
        header = sql.SQL("SET lock_timeout = {}").format(sql.Literal(pg_duration(lock_timeout))).as_string()
        text = _Renderer(self, header).run()
        try:
            back = Rewriter().analyze_file(text, self.analysis.source)
            # as psql runs it: blocks as written, every other statement alone (the first is the SET above)
            again = plan_file(back, "as-written", autocommit=True, skip=frozenset({0}))
        except SqlSyntaxError as exc:
            raise RewriteError(f"{self.analysis.source}: the rewritten file does not read back: {exc}") from None
        if back.statements[0].statement.text != header or again.canonical() != self.canonical():
            raise RewriteError(f"{self.analysis.source}: the rewritten file would not run the planned transactions")
        return text


def pg_duration(value: timedelta) -> str:
    """A timedelta as a Postgres duration setting: ``2s``, ``500ms``."""
    ms = max(1, round(value.total_seconds() * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def plan_file(analysis: FileAnalysis, mode: Mode = "lock-safe", *, autocommit: bool = False,
              batch_size: int = DEFAULT_BATCH, before: Callable[[Piece], Sequence[Piece]] | None = None,
              prefix: Sequence[Piece] = (), skip: frozenset[int] = frozenset()) -> FilePlan:
    """Plan the transactions of one analysed file (see the module docstring).

    :param mode: ``lock-safe`` (rewrites, batches, splits), ``fast`` (as written but named index
        builds, taken out to run in parallel), ``as-written``.
    :param autocommit: the file's name says ``.autocommit.``.
    :param before: pieces to run just before a piece, in its transaction (``migrate``'s cleanup).
    :param prefix: pieces to run first, in the file's first transaction (``migrate``'s declared checks).
    :param skip: statements to leave out (the ``SET lock_timeout`` of a rendered file read back).
    :raises TransactionError: see :func:`structure`; a statement that must run outside a transaction
        inside a savepoint that is rolled back to.
    """
    found = structure(analysis, autocommit)
    spans = {g.index: _savepoints(analysis, g) for g in found.groups}
    frozen: set[int] = set()
    for g in found.groups:
        if g.rollback:
            frozen.update(g.members)
        for span in spans[g.index]:
            if span.rolled_back:
                last = span.closed if span.closed is not None else g.members[-1]
                frozen.update(m for m in g.members if span.start <= m <= last)
    kept = _keepable(analysis, found, frozen) if mode == "lock-safe" else {}
    while True:
        plan = _Builder(analysis, found, spans, frozen, kept, mode, autocommit, batch_size, before, prefix,
                        skip).build()
        unit_of: dict[int, set[int]] = {}
        for n, unit in enumerate(plan.units):
            for piece in unit.pieces:
                unit_of.setdefault(piece.origin, set()).add(n)
        broken = {i for i, creator in kept.items() if unit_of.get(i) != unit_of.get(creator)}
        if not broken:
            return plan
        kept = {i: c for i, c in kept.items() if i not in broken}


def _keepable(analysis: FileAnalysis, found: Structure, frozen: set[int]) -> dict[int, int]:
    """Statements that may stay as written because their table is created earlier in their group.

    :returns: statement -> the statement creating its table. They stay as written only while the plan
        keeps them in the creating statement's transaction.
    """
    out: dict[int, int] = {}
    for g in found.groups:
        created: dict[str, int] = {}
        for i in g.members:
            s = analysis.statements[i]
            if i not in frozen:
                tables = {h.table for h in s.hazards}
                if s.safe is not None and s.hazards and all(h.rule in KEEPABLE for h in s.hazards) \
                        and len(tables) == 1 and next(iter(tables)) in created and s.original().transactional:
                    out[i] = created[str(next(iter(tables)))]
                elif backfill_column(s.node) is not None and str(TableRef.of(s.node.relation)) in created:
                    out[i] = created[str(TableRef.of(s.node.relation))]
            for table in _effects(s.statement.text).creates:
                created.setdefault(str(table), i)
    return out


class _Builder:
    """One pass of :func:`plan_file` for a given set of statements kept as written."""

    def __init__(self, analysis: FileAnalysis, found: Structure, spans: dict[int, list[_Span]], frozen: set[int],
                 kept: dict[int, int], mode: Mode, autocommit: bool, batch_size: int,
                 before: Callable[[Piece], Sequence[Piece]] | None, prefix: Sequence[Piece],
                 skip: frozenset[int]) -> None:
        self.analysis = analysis
        self.found = found
        self.spans = spans
        self.frozen = frozen
        self.kept = kept
        self.mode = mode
        self.autocommit = autocommit
        self.batch_size = batch_size
        self.before = before
        self.prefix = list(prefix)
        self.skip = skip
        self.dropped = dict(found.dropped)
        self.changed: set[int] = set(found.dropped)

    def fail(self, i: int, message: str) -> None:
        st = self.analysis.statements[i].statement
        raise TransactionError(self.analysis.source, st.line, st.column, message)

    def pieces_of(self, i: int) -> list[Piece]:
        s = self.analysis.statements[i]
        if self.mode == "as-written" or i in self.frozen:
            return [s.original()]
        if self.mode == "fast":
            return [s.fast()]
        if i in self.kept:
            return [s.original()]
        batched = batched_backfill(s, self.batch_size)
        return [batched] if batched is not None else s.lock_safe()

    def build(self) -> FilePlan:
        units: list[Unit] = []
        for n, g in enumerate(self.found.groups):
            units.extend(self.group(g, self.prefix if n == 0 else []))
        if not self.found.groups and self.prefix:
            units.append(Unit(tuple(self.prefix), True, -1))
        statements = self.analysis.statements

        def needs_block(piece: Piece) -> bool:  # a savepoint or a SET LOCAL means nothing outside a block
            node = statements[piece.origin].node if piece.origin >= 0 else None
            return _kind(node) in _SAVEPOINT_KINDS or _scoped(node)

        plain = [replace(u, wrap=u.transaction and (u.opener is not None or u.closer is not None or u.rollback
                                                    or len(u.statements()) > 1 or any(map(needs_block, u.pieces))))
                 for u in units]
        if not any(u.wrap for u in plain):  # no control in the file: adjacent transactions must say where they end
            plain = [replace(u, wrap=u.transaction and any(
                0 <= m < len(plain) and plain[m].transaction for m in (n - 1, n + 1))) for n, u in enumerate(plain)]
        return FilePlan(self.analysis, self.mode, self.autocommit, self.batch_size, plain, self.dropped,
                        self.changed, set(self.kept), self.skip)

    def group(self, g: Group, prefix: list[Piece]) -> list[Unit]:
        statements = self.analysis.statements
        lock_safe = self.mode == "lock-safe"
        pieces = list(prefix)
        for i in g.members:
            if i in self.skip:
                continue
            own = self.pieces_of(i)
            if g.kind == "statement" and isinstance(statements[i].node, ast.CallStmt):
                # alone, as psql runs it: a procedure may COMMIT, which it cannot inside a transaction block
                own = [replace(p, transactional=False) for p in own]
            if any(p.rewritten or p.sql != statements[i].statement.text for p in own):
                self.changed.add(i)
            pieces.extend(own)
        if lock_safe and not g.rollback:
            pieces = sink(hoist(pieces, statements))
        if self.before is not None:
            pieces = [q for p in pieces for q in (*self.before(p), p)]
        n = len(pieces)
        where = (f"the transaction of line {g.line}" if g.kind == "block" else
                 "the file's transaction" if g.kind == "file" else "")

        def position(i: int | None) -> int | None:
            return None if i is None else next((k for k, p in enumerate(pieces) if p.origin == i), None)

        spans = self.spans[g.index]
        frozen_ranges: list[tuple[int, int]] = []
        for span in spans:
            if span.rolled_back:
                a, b = position(span.start), position(span.closed)
                if a is not None:
                    frozen_ranges.append((a, b if b is not None else n - 1))

        def inside_frozen(k: int) -> bool:
            return any(a < k <= b for a, b in frozen_ranges)

        cuts: dict[int, str] = {}
        for k, p in enumerate(pieces):
            if not p.transactional:
                for at in (k, k + 1):
                    if 0 < at < n:
                        if inside_frozen(at):
                            self.fail(p.origin, "this statement must run outside a transaction, but it is inside a "
                                                "savepoint that is rolled back to: keep it out of that savepoint")
                        cuts.setdefault(at, "")
        if g.rollback and cuts:
            self.fail(next(p.origin for p in pieces if not p.transactional),
                      "this statement must run outside a transaction, but its block ends in ROLLBACK: "
                      "take it out of the block")
        if lock_safe and not g.rollback:
            self.conflict_cuts(pieces, cuts, inside_frozen)

        removed: set[int] = set()
        for span in spans:
            if span.rolled_back:
                continue
            a = position(span.start)
            b = position(span.closed) if span.closed is not None else n - 1
            if a is not None and b is not None and any(a < k <= b for k in cuts):
                removed.add(a)
                self.dropped[span.start] = (f"SAVEPOINT {span.name} dropped: the transaction is split inside it, and "
                                            "it is only released, never rolled back to (nothing changes)")
                self.changed.add(span.start)
                r = position(span.release)
                if r is not None and span.release is not None:
                    removed.add(r)
                    self.dropped[span.release] = f"RELEASE {span.name} dropped with its SAVEPOINT"
                    self.changed.add(span.release)

        segments: list[tuple[int, list[Piece]]] = []
        for k, p in enumerate(pieces):
            if k == 0 or k in cuts:
                segments.append((k, []))
            if k not in removed:
                segments[-1][1].append(p)
        segments = [(k, seg) for k, seg in segments if seg]

        units: list[Unit] = []
        scoped: list[Piece] = []
        seen_transaction = False
        any_transaction = any(seg[0].transactional for _, seg in segments)
        for number, (k, seg) in enumerate(segments):
            last = number == len(segments) - 1
            notes: list[str] = []
            if seg[0].transactional:
                if cuts.get(k) and where:
                    notes.append(f"{where} is split here: {cuts[k]} (atomicity changed)")
                opener = g.begin if g.kind == "block" and not seen_transaction else None
                closer = g.end if g.kind == "block" and last and not g.chained else None
                carried = g.inherited if not seen_transaction else g.inherited + tuple(
                    statements[p.origin].statement.text for p in scoped)
                units.append(Unit(tuple(seg), True, g.index, g.begin_text if g.kind == "block" else "BEGIN",
                                  g.characteristics if g.kind == "block" else (), carried, rollback=g.rollback,
                                  opener=opener, closer=closer, notes=tuple(notes)))
                seen_transaction = True
                scoped.extend(p for p in seg if p.origin >= 0 and not p.rewritten
                              and _scoped(statements[p.origin].node))
            else:
                piece = seg[0]
                if where and any_transaction:
                    notes.append(f"{self.why(piece)}: it runs outside {where} (atomicity changed)")
                setup, teardown = self.session(scoped, piece)
                units.append(Unit((piece,), False, g.index, setup=setup, teardown=teardown, notes=tuple(notes)))
        if g.kind == "block":
            self.control(g, units)
        return units

    def conflict_cuts(self, pieces: list[Piece], cuts: dict[int, str], inside_frozen: Callable[[int], bool]) -> None:
        """Split runs of transactional pieces between bulk writes and write-blocking locks, as few times as can be."""
        effects = [_effects(p.sql) for p in pieces]
        locks = [isinstance(_statement(p.sql), ast.LockStmt) for p in pieces]
        start = 0
        for j, piece in enumerate(pieces):
            if j in cuts:
                start = j
            if not piece.transactional:
                continue
            i, created = start, list[TableRef]()
            while i < j:
                hit = _conflict(effects[i], effects[j], created)
                if hit is not None:
                    # as late as can be, but never inside a savepoint rolled back to, nor after the author's
                    # explicit LOCK TABLE (what follows it in the transaction is what it guards)
                    at = next((k for k in range(j, i, -1) if not inside_frozen(k) and not any(locks[start:k])),
                              None)
                    if at is not None:
                        cuts[at] = self.clash(hit, pieces[i], pieces[j])
                        start, i, created = at, at, []
                        continue
                created.extend(effects[i].creates)
                i += 1

    def clash(self, hit: tuple[TableRef, str, TableRef, bool], first: Piece, second: Piece) -> str:
        written, mode, locked, write_first = hit
        a, b = self.line(first), self.line(second)
        if write_first:
            return (f"the write of {written} at line {a} would hold its row locks while line {b} waits for "
                    f"{mode} on {locked}")
        return (f"the {mode} lock on {locked} taken at line {a} would be held through the write of {written} "
                f"at line {b}")

    def line(self, piece: Piece) -> int:
        return self.analysis.statements[piece.origin].statement.line if piece.origin >= 0 else 0

    def why(self, piece: Piece) -> str:
        """Why a piece runs outside the transaction of its block."""
        verb = piece.verb
        if piece.hoist:
            return ("the unique index is built first (CREATE INDEX CONCURRENTLY cannot run inside a transaction), so "
                    "the key change stays in one transaction")
        if verb == "validate_constraint":
            return "VALIDATE CONSTRAINT runs alone, once the NOT VALID constraint is committed"
        if verb == "backfill_in_batches":
            node = self.analysis.statements[piece.origin].node
            return (f"the backfill of {TableRef.of(node.relation)}.{backfill_column(node)} runs in batches of "
                    f"{self.batch_size} rows, each committed")
        words = {"create_index_concurrently": "CREATE INDEX CONCURRENTLY", "create_index": "CREATE INDEX CONCURRENTLY",
                 "drop_index_concurrently": "DROP INDEX CONCURRENTLY", "reindex_concurrently": "REINDEX CONCURRENTLY",
                 "reindex": "REINDEX CONCURRENTLY"}
        if verb in words:
            if self.mode == "fast" and piece.parallel:
                return "the index is built outside the transaction, in parallel with its neighbours (fast mode)"
            return f"{words[verb]} cannot run inside a transaction block"
        node = self.analysis.statements[piece.origin].node if piece.origin >= 0 else None
        what = {ast.DoStmt: "this DO block commits, so it", ast.VacuumStmt: "VACUUM",
                ast.CreatedbStmt: "CREATE DATABASE", ast.DropdbStmt: "DROP DATABASE",
                ast.AlterSystemStmt: "ALTER SYSTEM"}.get(type(node), "this statement")
        return f"{what} cannot run inside a transaction block"

    def session(self, scoped: list[Piece], piece: Piece) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The block's ``SET LOCAL`` settings as session settings around a piece that runs alone."""
        statements = self.analysis.statements
        settings: dict[str, tuple[int, Any]] = {}
        for p in scoped:
            node = statements[p.origin].node
            if isinstance(node, ast.VariableSetStmt) and node.is_local and node.name:
                settings[str(node.name).lower()] = (p.origin, node)
        setup: list[str] = []
        teardown: list[str] = []
        for name, (origin, node) in settings.items():
            stmt = replace_node(node, is_local=False)
            setup.append(check_rewrite(deparse(stmt), stmt))
            teardown.append(self.restore(name, origin))
        return tuple(setup), tuple(teardown)

    def restore(self, name: str, before: int) -> str:
        """How to give the session back the value it had for ``name`` before statement ``before``."""
        for s in reversed(self.analysis.statements[:before]):
            node = s.node
            if isinstance(node, ast.VariableSetStmt) and not node.is_local and str(node.name or "").lower() == name:
                if VariableSetKind(int(node.kind or 0)) == VariableSetKind.VAR_SET_VALUE:
                    return s.statement.text
                break
        stmt = replace_node(_template("RESET work_mem"), name=name)
        return check_rewrite(deparse(stmt), stmt)

    def control(self, g: Group, units: list[Unit]) -> None:
        """Record the author's BEGIN / COMMIT that the block's units do not write as they are."""
        transactions = [u for u in units if u.transaction]
        if g.begin is not None and not transactions:
            self.dropped[g.begin] = ("BEGIN dropped: nothing of this block can run inside a transaction" if units
                                     else "BEGIN dropped: an empty transaction")
            self.changed.add(g.begin)
        if g.end is None:
            return
        if g.chained:
            self.dropped[g.end] = ("COMMIT AND CHAIN written as COMMIT, then BEGIN with the same characteristics"
                                   if not g.rollback else "ROLLBACK AND CHAIN written as ROLLBACK, then BEGIN with the "
                                   "same characteristics")
        elif not transactions:
            self.dropped[g.end] = "COMMIT dropped with its BEGIN"
        elif not units[-1].transaction:
            self.dropped[g.end] = "COMMIT moved up: it ends the transaction before the statements that run outside it"
        else:
            return
        self.changed.add(g.end)


# ----------------------------------------------------------------------------------------------------
# the file


class _Renderer:
    """Write a plan as a file: the author's bytes around the statements it keeps, the plan's around the rest."""

    def __init__(self, plan: FilePlan, header: str) -> None:
        self.plan = plan
        self.header = header
        analysis = plan.analysis
        self.text = analysis.text
        self.nl = "\r\n" if "\r\n" in self.text else "\n"
        self.statements = analysis.statements
        self.parts: list[str] = []
        self.pending: list[str] = []
        self.led: set[int] = set()
        self.next = 0
        self.begin_at = 1 if self.text.startswith(BOM) else 0
        self.ends: list[tuple[int, int, int]] = [self._bounds(i) for i in range(len(self.statements))]

    def _bounds(self, i: int) -> tuple[int, int, int]:
        """(end of the statement, end of its ``;``, end of its line's trailing comment and newline)."""
        st = self.statements[i].statement
        end = st.offset + len(st.text)
        stop = self.statements[i + 1].statement.offset if i + 1 < len(self.statements) else len(self.text)
        gap = self.text[end:stop]
        tokens = parser.scan(gap) if gap.strip() else []
        semi = next((t for t in tokens if t.name == "ASCII_59"), None)
        if semi is None:
            return end, end, end
        term = end + semi.end + 1
        trail = term
        line_end = len(gap)
        for c in ("\n", "\r"):
            at = gap.find(c, semi.end + 1)
            if at >= 0:
                line_end = min(line_end, at)
        after = [t for t in tokens if t.start > semi.end and t.start < line_end]
        if all(t.name == "SQL_COMMENT" or (t.name == "C_COMMENT" and t.end < line_end) for t in after):
            trail = end + line_end
            if gap.startswith("\r\n", line_end):
                trail += 2
            elif line_end < len(gap):
                trail += 1
        return end, term, trail

    def _leader(self, i: int) -> str:
        start = self.ends[i - 1][2] if i > 0 else self.begin_at
        return self.text[start:self.statements[i].statement.offset]

    def raw(self, text: str) -> None:
        if text:
            self.parts.append(text)

    def line(self, text: str) -> None:
        if self.parts and not self.parts[-1].endswith(("\n", "\r", BOM)):
            self.parts.append(self.nl)
        self.parts.append(text + self.nl)

    def flush(self, upto: int) -> None:
        """Write the leaders of statements up to ``upto``, and the statements dropped among them."""
        for j in range(self.next, upto + 1):
            if j in self.led:
                continue
            self.led.add(j)
            self.raw(self._leader(j))
            if j in self.plan.dropped or j in self.plan.skip:
                _, term, trail = self.ends[j]
                if j in self.plan.dropped:
                    self.raw(f"-- bluegreen: {self.plan.dropped[j]}")
                rest = self.text[term:trail]
                self.raw(rest)
                if not rest.endswith(("\n", "\r")):
                    self.raw(self.nl)
        self.next = max(self.next, upto + 1)

    def statement(self, i: int, text: str, *, last: bool, anchor: int | None = None, late: Sequence[str] = ()) -> None:
        """Write statement ``i`` (or one of its pieces: ``text``).

        :param anchor: the piece is written before that statement (it moved up): its own leader waits.
        :param late: lines to write after the statement's leader, just before it.
        """
        if i < 0:
            for line in [*self.pending, *late]:
                self.line(line)
            self.pending.clear()
            self.line(text + ";")
            return
        self.flush((anchor if anchor is not None else i) - 1)
        for line in self.pending:
            self.line(line)
        self.pending.clear()
        if anchor is None and i not in self.led:
            self.led.add(i)
            self.raw(self._leader(i))
            if self.next == i:
                self.next = i + 1
        for line in late:
            self.line(line)
        if self.parts and not self.parts[-1].endswith(("\n", "\r", " ", "\t")):
            self.raw(self.nl)
        self.raw(text)
        end, term, trail = self.ends[i]
        if last and term > end:
            self.raw(self.text[end:trail])
        else:
            self.raw(";")
            if not last:
                self.raw(self.nl)

    def run(self) -> str:
        plan = self.plan
        self.raw(BOM if self.begin_at else "")
        self.line(self.header + ";")
        self.parts.append(HEADER_NOTE + self.nl)
        order = [p for u in plan.units for p in u.pieces]
        lasts: dict[int, int] = {p.origin: k for k, p in enumerate(order)}
        after: list[int] = [len(self.statements)] * (len(order) + 1)
        for k in range(len(order) - 1, -1, -1):  # validations moved down (sink) make nothing before them early
            origin = order[k].origin if order[k].verb != "validate_constraint" else -1
            after[k] = min(after[k + 1], origin if origin >= 0 else after[k + 1])
        k = 0
        for unit in plan.units:
            notes = [f"-- bluegreen: {note}" for note in unit.notes]
            late: list[str] = []
            if unit.transaction:
                self.pending.extend(notes)
                if unit.opener is not None:
                    self.statement(unit.opener, self.statements[unit.opener].statement.text, last=True)
                elif unit.wrap:
                    self.pending.append(f"{unit.begin};")
                if unit.wrap or unit.opener is not None:
                    self.pending.extend(f"{c};" for c in unit.carried)
            else:
                late = [*notes, *(f"{s};" for s in unit.setup)]
            for piece in unit.pieces:
                early = piece.origin >= 0 and after[k + 1] < piece.origin
                self.statement(piece.origin, piece.sql, last=lasts[piece.origin] == k,
                               anchor=after[k + 1] if early else None, late=late)
                late = []
                k += 1
            if unit.transaction:
                if unit.closer is not None:
                    self.statement(unit.closer, self.statements[unit.closer].statement.text, last=True)
                elif unit.wrap or unit.opener is not None:
                    self.line("ROLLBACK;" if unit.rollback else "COMMIT;")
            else:
                for s in unit.teardown:
                    self.line(f"{s};")
        self.flush(len(self.statements) - 1)
        for line in self.pending:
            self.line(line)
        self.raw(self.text[self.ends[-1][2]:])
        return "".join(self.parts)
