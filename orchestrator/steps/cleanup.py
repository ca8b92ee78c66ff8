"""``kind: cleanup``: find and move away the rows that would make a migration's new constraints fail.

The constraints come from migration files (every FOREIGN KEY, UNIQUE / unique index, PRIMARY KEY,
NOT NULL and CHECK they add, see :mod:`..sqlanalysis.constraints`) and from ``checks`` the plan
declares for what static analysis cannot see. The same cleanup runs inline in ``migrate``
(``cleanup: quarantine``), just before the statement that adds each constraint.

Policies: ``quarantine`` moves the rows into ``bluegreen_quarantine.<table>`` (as jsonb, with the
constraint, the reason and the time; rows that reference them through a foreign key go with them),
``delete`` deletes them, ``report`` fails with a count and a sample of their keys. Every cleaned row
is counted per constraint in ``bluegreen.cleanup_log``, which the report shows.

Locks: ROW EXCLUSIVE on the cleaned tables (and those whose rows follow by foreign key), one batch
of ``batch_size`` rows per transaction. Idempotent: a batch commits with its journal marker; a
constraint with no violating row left does nothing. Undo: ``bluegreen quarantine restore`` puts
quarantined rows back (deleted rows are gone; ``report`` changes nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psycopg
from pglast import ast, parse_sql
from psycopg import sql
from psycopg.types.json import Jsonb
from pydantic import Field, ValidationInfo, field_validator

from ..actions import Action, SqlAction
from ..errors import UsageError
from ..spec import Model, StepSpecBase, Target
from ..sqlanalysis.constraints import AddedConstraint, TableRef, custom_check
from ..sqlanalysis.files import MigrationFilesError, find
from ..sqlanalysis.locksafe import Rewriter
from ..sqlanalysis.parse import SqlSyntaxError
from ..sqlfiles import read_sql
from . import register
from .base import Check, Step, StepContext

Policy = Literal["quarantine", "delete", "report"]


def parse_table(value: str) -> TableRef:
    """A table name as SQL writes it (``t``, ``s.t``, ``"My T"``), parsed by the grammar."""
    try:
        stmt = parse_sql(f"SELECT FROM {value}")
    except Exception:
        raise ValueError(f"not a table name: {value!r}") from None
    node = stmt[0].stmt if len(stmt) == 1 else None
    sources = tuple(node.fromClause or ()) if isinstance(node, ast.SelectStmt) else ()
    if len(sources) != 1 or not isinstance(sources[0], ast.RangeVar) or getattr(node, "whereClause", None) is not None:
        raise ValueError(f"not a table name: {value!r}")
    return TableRef.of(sources[0])


class ViolationCheck(Model):
    """A violation query the plan declares: rows of ``table`` matching ``where`` must go."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,63}$", description="named in the report and the quarantine")
    table: str = Field(description="the table whose rows are checked: t, schema.t")
    where: str = Field(description="SQL predicate over the table (it may name the table); matching rows violate")
    before: str | None = Field(None, description="migrate only: the version of the file to run this check before"
                                                 " (default: before the first pending file)")

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        parse_table(value)
        return value

    @field_validator("where")
    @classmethod
    def _where(cls, value: str) -> str:
        try:
            parsed = parse_sql(f"SELECT FROM t WHERE ({value})")
        except Exception as exc:
            raise ValueError(f"not a SQL predicate: {exc}") from None
        if len(parsed) != 1:
            raise ValueError("not a single SQL predicate")
        return value

    def constraint(self) -> AddedConstraint:
        return custom_check(parse_table(self.table), self.name, self.where)


def install_action(step_id: str, target: Target) -> SqlAction:
    """The action that installs (or updates) the cleanup functions and tables on ``target``."""
    return SqlAction(id=f"install_cleanup:{step_id}", target=target, statements=(sql.SQL(read_sql("quarantine.sql")),),
                     transactional=True, description="cleanup functions and tables (sql/quarantine.sql)")


def cleanup_statement(constraint: AddedConstraint, policy: Policy, run_id: int | None, step_id: str,
                      limit: int | None = None) -> sql.Composed | None:
    """The statement that cleans ``constraint``'s violating rows, or None if they cannot be derived."""
    predicate = constraint.violation_predicate()
    if predicate is None:
        return None
    return sql.SQL("SELECT bluegreen_quarantine.clean({}, {}, {}, {}, {}, {}, {})").format(
        constraint.table.regclass(), sql.Literal(predicate.as_string()), sql.Literal(constraint.name),
        sql.Literal(policy), sql.Literal(run_id), sql.Literal(step_id), sql.Literal(limit))


def cleanup_checks(ctx: StepContext, step_id: str, target: Target) -> list[Check]:
    """One check per cleaned constraint and table: how many rows this run moved, deleted or found."""
    if not ctx.live or ctx.run_id is None:
        return []
    with ctx.connect(target) as conn:
        if not conn.execute("SELECT to_regclass('bluegreen.cleanup_log') IS NOT NULL").fetchone()[0]:
            return []
        rows = conn.execute(
            "SELECT constraint_name, table_name, policy, sum(rows)::bigint, bool_or(cascade_of IS NOT NULL)"
            " FROM bluegreen.cleanup_log WHERE run_id = %s AND step_id = %s"
            " GROUP BY 1, 2, 3 ORDER BY min(id)", (ctx.run_id, step_id)).fetchall()
    verbs = {"quarantine": "moved to bluegreen_quarantine", "delete": "deleted", "report": "found"}
    return [Check(f"cleanup {name}", True,
                  f"{count} row(s) of {table} {verbs.get(policy, policy)}" + (" (following a foreign key)"
                                                                             if cascade else ""))
            for name, table, policy, count, cascade in rows]


class CleanupSpec(StepSpecBase):
    """Clean the rows that would violate the constraints migration files add, or declared checks."""

    kind: Literal["cleanup"]
    on: Target = "green"
    policy: Policy = "quarantine"
    files: str | list[str] | None = Field(None, description="migration files whose added constraints to check "
                                                            "(globs, relative to the plan)")
    checks: list[ViolationCheck] = Field(default_factory=list, description="violation queries of your own")
    batch_size: int | None = Field(None, ge=1, description="rows per transaction (default: defaults.batch_size)")

    @field_validator("files")
    @classmethod
    def _files(cls, value: str | list[str] | None, info: ValidationInfo) -> str | list[str] | None:
        if value is None:
            return value
        base = (info.context or {}).get("base_dir", ".")
        try:
            files = find(Path(base), value)
            rewriter = Rewriter()
            for item in files:
                rewriter.analyze_file(item.read(), str(item.path))
        except (MigrationFilesError, SqlSyntaxError) as exc:
            raise ValueError(str(exc)) from None
        return value


@register("cleanup", CleanupSpec)
class CleanupStep(Step[CleanupSpec]):
    """Clean violating rows now, in batches, for constraints of migration files and declared checks."""

    def _constraints(self) -> list[AddedConstraint]:
        found: list[AddedConstraint] = []
        if self.spec.files is not None:
            rewriter = Rewriter()
            for item in find(self.loaded.base_dir, self.spec.files):
                for statement in rewriter.analyze_file(item.read(), str(item.path)).statements:
                    found.extend(statement.constraints)
        found.extend(check.constraint() for check in self.spec.checks)
        return found

    def _batch(self) -> int:
        return int(self.spec.batch_size or self.loaded.plan.defaults.batch_size)

    def _action(self, constraint: AddedConstraint, n: int, run_id: int | None) -> SqlAction | None:
        limit = None if self.spec.policy == "report" else self._batch()
        statement = cleanup_statement(constraint, self.spec.policy, run_id, self.id, limit)
        if statement is None:
            return None
        return SqlAction(id=f"cleanup:{self.id}:{constraint.name}:{n}", target=self.spec.on, statements=(statement,),
                         transactional=True, lock_timeout=self.setting("lock_timeout"),
                         statement_timeout=self.setting("statement_timeout"),
                         lock_retries=self.loaded.plan.defaults.lock_retries,
                         retry_backoff=self.loaded.plan.defaults.retry_backoff,
                         description=f"{self.spec.policy} rows of {constraint.table} violating {constraint.describe()}"
                                     + ("" if self.spec.policy == "report" else
                                        f" ({self._batch()} per batch, repeated until none is left)"))

    def plan(self, ctx: StepContext) -> Sequence[Action]:
        actions: list[Action] = [install_action(self.id, self.spec.on)]
        for constraint in self._constraints():
            action = self._action(constraint, 0, ctx.run_id)
            if action is not None:
                actions.append(action)
        return actions

    def apply(self, ctx: StepContext) -> None:
        if not ctx.live:
            super().apply(ctx)
            return
        ctx.run_actions([install_action(self.id, self.spec.on)])
        for constraint in self._constraints():
            predicate = constraint.violation_predicate()
            if predicate is None:
                ctx.reporter.note(f"{self.id}: cannot derive the violations of {constraint.name} "
                                  f"({constraint.describe()}): name the referenced columns")
                continue
            if not self._exists(ctx, constraint):
                ctx.reporter.note(f"{self.id}: {constraint.table} does not exist yet; {constraint.name} "
                                  "is checked when the migration that adds it runs (migrate cleanup)")
                continue
            n = 0
            while self._violations(ctx, constraint, predicate):
                action = self._action(constraint, n, ctx.run_id)
                assert action is not None
                ctx.run_actions([action])
                ctx.progress(f"cleanup {constraint.name}", n + 1, None, "batches")
                n += 1
                if self.spec.policy == "report":
                    break

    def _exists(self, ctx: StepContext, constraint: AddedConstraint) -> bool:
        with ctx.connect(self.spec.on) as conn:
            row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (constraint.table.ident().as_string(),)).fetchone()
        return bool(row and row[0])

    def _violations(self, ctx: StepContext, constraint: AddedConstraint, predicate: sql.Composable) -> bool:
        query = sql.SQL("SELECT EXISTS (SELECT FROM {} WHERE {})").format(constraint.table.ident(), predicate)
        with ctx.connect(self.spec.on) as conn:
            row: Any = conn.execute(query).fetchone()
        return bool(row and row[0])

    def verify(self, ctx: StepContext) -> Sequence[Check]:
        checks = cleanup_checks(ctx, self.id, self.spec.on)
        if not ctx.live:
            return checks
        for constraint in self._constraints():
            predicate = constraint.violation_predicate()
            if predicate is None or not self._exists(ctx, constraint):
                continue
            left = self._violations(ctx, constraint, predicate)
            checks.append(Check(f"no row violates {constraint.name}", not left,
                                "rows still violate it" if left else ""))
        return checks




# --------------------------------------------------------------------------------------------------
# restore: the undo of quarantine (``bluegreen quarantine restore``)


@dataclass
class RestoreResult:
    """Rows put back per source table: ``restored`` inserted, ``skipped`` already there (same key)."""

    tables: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def restored(self) -> int:
        return sum(t["restored"] for t in self.tables.values())

    @property
    def skipped(self) -> int:
        return sum(t["skipped"] for t in self.tables.values())


@dataclass(frozen=True, slots=True)
class QuarantinedRow:
    quarantine_table: str
    quarantine_id: int
    schema: str
    table: str
    constraint: str
    depth: int
    row: dict[str, Any]


def quarantined(conn: psycopg.Connection[Any], tables: Sequence[str] = (), constraints: Sequence[str] = (),
                run_id: int | None = None, include_restored: bool = False) -> list[QuarantinedRow]:
    """The quarantined rows on ``conn``, parents before the rows that reference them.

    :param tables: only rows of these source tables (``t`` or ``schema.t``).
    :param constraints: only rows quarantined for these constraints (or checks).
    """
    names = [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'bluegreen_quarantine' AND c.relkind = 'r' ORDER BY 1").fetchall()]
    wanted = {parse_table(t) for t in tables}
    rows: list[QuarantinedRow] = []
    for name in names:
        query = sql.SQL("SELECT quarantine_id, source_schema, source_table, constraint_name, depth, row_data"
                        " FROM {} WHERE ({} OR restored_at IS NULL) AND ({} IS NULL OR run_id = {})").format(
            sql.Identifier("bluegreen_quarantine", name), sql.Literal(include_restored), sql.Literal(run_id),
            sql.Literal(run_id))
        for qid, schema, table, constraint, depth, data in conn.execute(query).fetchall():
            if wanted and TableRef(schema, table) not in wanted and TableRef(None, table) not in wanted:
                continue
            if constraints and constraint not in constraints:
                continue
            rows.append(QuarantinedRow(name, int(qid), schema, table, constraint, int(depth), dict(data)))
    rows.sort(key=lambda r: (r.depth, r.quarantine_id))
    return rows


def restore(source: psycopg.Connection[Any], target: psycopg.Connection[Any] | None = None, *,
            tables: Sequence[str] = (), constraints: Sequence[str] = (), run_id: int | None = None,
            disable_triggers: bool = False) -> RestoreResult:
    """Insert quarantined rows back into their tables, in one transaction on the target.

    :param source: the cluster holding ``bluegreen_quarantine``.
    :param target: where to put the rows back (a copy); None: into ``source`` itself, and the rows are
        then marked restored (``restored_at``) in the same transaction.
    :param disable_triggers: ``session_replication_role = replica`` (superuser): foreign keys and
        triggers are not checked, as ``pg_restore --disable-triggers`` does, for rows that violate
        constraints the target still has.
    :raises UsageError: a source table is missing on the target.
    """
    rows = quarantined(source, tables, constraints, run_id)
    into = target or source
    result = RestoreResult()
    columns: dict[tuple[str, str], list[str]] = {}
    with into.transaction():
        if disable_triggers:
            into.execute("SET LOCAL session_replication_role = replica")
        for row in rows:
            key = (row.schema, row.table)
            if key not in columns:
                found = into.execute(
                    "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0"
                    " AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum",
                    (sql.Identifier(row.schema, row.table).as_string(),)).fetchall()
                if not found:
                    raise UsageError(f"table {row.schema}.{row.table} does not exist on the target: restore into"
                                     " a copy at the version the rows were quarantined from")
                columns[key] = [r[0] for r in found]
            cols = [c for c in columns[key] if c in row.row]
            ident = sql.Identifier(row.schema, row.table)
            names = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
            cur = into.execute(sql.SQL(
                "INSERT INTO {t} ({c}) OVERRIDING SYSTEM VALUE SELECT {c} FROM jsonb_populate_record(NULL::{t}, {r})"
                " ON CONFLICT DO NOTHING").format(t=ident, c=names, r=sql.Literal(Jsonb(row.row))))
            counts = result.tables.setdefault(f"{row.schema}.{row.table}", {"restored": 0, "skipped": 0})
            counts["restored" if cur.rowcount > 0 else "skipped"] += 1
            if target is None:
                into.execute(sql.SQL("UPDATE {} SET restored_at = clock_timestamp() WHERE quarantine_id = {}").format(
                    sql.Identifier("bluegreen_quarantine", row.quarantine_table), sql.Literal(row.quarantine_id)))
    return result
