"""``kind: migrate``: run migration files in version order, lock-safe or fast, with inline cleanup.

Files are found by glob; a file's version is its name's prefix (``files.py``). Versions already in
the history table (``bluegreen.schema_versions`` on the target by default, or the application's own,
such as popx's ``schema_migration``) are skipped: pending migrations are a set difference, not
"everything above the highest version".

Locks. ``mode: lock-safe`` (a cluster with traffic): every hazardous statement is rewritten
(:mod:`..sqlanalysis.locksafe`): indexes are built and dropped ``CONCURRENTLY`` (SHARE UPDATE
EXCLUSIVE, reads and writes go on), foreign keys and checks are added ``NOT VALID`` (a brief lock)
and validated in their own transaction (SHARE UPDATE EXCLUSIVE), unique and primary keys are
attached to an index built concurrently, SET NOT NULL is proved by a validated CHECK. What
remains takes its lock for milliseconds, under ``lock_timeout`` with ``lock_retries`` jittered
retries, never queueing behind a long transaction. Statements with no safe form (a type change
that rewrites the table, a volatile default) are refused with the reason unless ``allow`` lists
their rule. ``mode: fast`` (green before cutover, no traffic): the statements as written, one
transaction per file, named index builds taken out of it and run ``parallel`` at a time with a
raised ``maintenance_work_mem``.

Transactions. Each file runs as its transaction plan (:mod:`..sqlanalysis.transactions`): the
transactions the file asks for (its ``BEGIN`` ... ``COMMIT`` blocks as psql runs them; otherwise one per
file, or one per statement for ``.autocommit.`` files), split only where lock safety needs it. It is
the plan ``bluegreen rewrite`` writes as a file; here each of its units is one action (a transaction,
or one statement in autocommit), with the cleanup before the statement that needs it.

Idempotent: the untouched statements of a file run in transactions that commit with their journal
marker (exactly once); the version is recorded with the file's last transaction. Statements that
run outside a transaction are written to run again safely (``IF NOT EXISTS``, ``IF EXISTS``,
``VALIDATE``), and an invalid index left by an interrupted concurrent build is detected
(``pg_index.indisvalid``), dropped concurrently and built again. A resumed run skips recorded
versions and the units the journal has as done.

Cleanup (``cleanup: quarantine | delete | report``): just before each statement that adds a
constraint (after its NOT VALID form, before its VALIDATE), the rows violating it are cleaned
(:mod:`.cleanup`); ``checks`` run before the file they name.

Undo: the ``down`` files of the versions this run applied, newest first, each with the removal of
its version. Without ``down`` there is no undo (green is discarded instead).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from psycopg import errors as pgerrors
from psycopg import sql
from pydantic import Field, ValidationInfo, field_validator, model_validator

from ..actions import Action, ActionResult, Query, SqlAction
from ..db import LiveExecutor
from ..errors import ActionFailed, UsageError
from ..spec import Model, StepSpecBase, Target
from ..sqlanalysis.files import MigrationFile, MigrationFilesError, applied, find
from ..sqlanalysis.locksafe import FileAnalysis, IndexBuild, Piece, Rewriter
from ..sqlanalysis.parse import SqlSyntaxError, split_statements
from ..sqlanalysis.rules import RULES
from ..sqlanalysis.transactions import FilePlan, plan_file, structure
from . import register
from .base import Check, Step, StepContext
from .cleanup import ViolationCheck, cleanup_checks, cleanup_statement, install_action, parse_table

DEFAULT_HISTORY = "bluegreen.schema_versions"


class MigrationRefused(UsageError):
    """Lock-safe mode found statements it cannot make safe, and the plan does not allow their rules."""


class HistorySpec(Model):
    """Where applied versions are recorded (and read): bluegreen's own table, or the application's."""

    table: str = Field(DEFAULT_HISTORY, description="table of applied versions, e.g. schema_migration (popx)")
    column: str = Field("version", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    prefix: int | None = Field(None, ge=1, le=64, description="a version also counts as applied when its first "
                                                              "N characters are recorded (popx: 14)")

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        parse_table(value)
        return value


class MigrateSpec(StepSpecBase):
    """Apply migration files in version order on one cluster."""

    kind: Literal["migrate"]
    on: Target = "green"
    files: str | list[str] = Field(description="globs of the up migrations, relative to the plan (*.up.sql)")
    mode: Literal["lock-safe", "fast"] = Field(
        "lock-safe", description="lock-safe: rewrite hazards for live traffic; fast: as written, indexes in parallel")
    allow: list[str] = Field(default_factory=list, description="hazard rules (squawk names) to run as written")
    cleanup: Literal["none", "quarantine", "delete", "report"] = Field(
        "none", description="what to do with rows that violate a constraint a migration adds")
    checks: list[ViolationCheck] = Field(default_factory=list, description="violation queries of your own")
    history: HistorySpec = HistorySpec()
    parallel: int = Field(2, ge=1, le=64, description="fast mode: index builds at once")
    maintenance_work_mem: str = Field("256MB", pattern=r"^\d+\s*(kB|MB|GB)$", description="fast mode")
    down: str | list[str] | None = Field(None, description="globs of the down migrations, for rollback")

    @field_validator("files", "down")
    @classmethod
    def _files(cls, value: str | list[str] | None, info: ValidationInfo) -> str | list[str] | None:
        if value is None:
            return value
        base = Path((info.context or {}).get("base_dir", "."))
        try:
            rewriter = Rewriter()
            for item in find(base, value):
                structure(rewriter.analyze_file(_read(item), str(item.path)), item.autocommit)
        except (MigrationFilesError, SqlSyntaxError, ValueError) as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("allow")
    @classmethod
    def _allow(cls, value: list[str]) -> list[str]:
        unknown = [rule for rule in value if rule not in RULES]
        if unknown:
            raise ValueError(f"unknown rule(s) {', '.join(unknown)}; known: {', '.join(sorted(RULES))}")
        return value

    @model_validator(mode="after")
    def _checks(self, info: ValidationInfo) -> MigrateSpec:
        if self.checks and self.cleanup == "none":
            raise ValueError("checks need a cleanup policy: set cleanup: quarantine, delete or report")
        befores = [c.before for c in self.checks if c.before is not None]
        if befores:
            base = Path((info.context or {}).get("base_dir", "."))
            versions = {f.version for f in find(base, self.files)}
            missing = [b for b in befores if b not in versions]
            if missing:
                raise ValueError(f"checks: before {', '.join(missing)}: no migration file has that version")
        return self


def _read(item: MigrationFile) -> str:
    try:
        return item.read()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{item.path}: not UTF-8 text ({exc.reason})") from None


@dataclass(frozen=True, slots=True)
class _Item:
    """An action with what ``apply`` must know beyond it."""

    action: SqlAction
    index: IndexBuild | None = None  # a concurrent build: repair an invalid leftover, retry here
    parallel: bool = False


@register("migrate", MigrateSpec)
class MigrateStep(Step[MigrateSpec]):
    """Apply pending migration files, rewritten lock-safe or as written (fast)."""

    # -- building the actions --------------------------------------------------------------------

    def _common(self) -> dict[str, Any]:
        return {"target": self.spec.on, "lock_timeout": self.setting("lock_timeout"),
                "statement_timeout": self.setting("statement_timeout"),
                "lock_retries": self.loaded.plan.defaults.lock_retries,
                "retry_backoff": self.loaded.plan.defaults.retry_backoff}

    def _history(self) -> tuple[sql.Composable, sql.Identifier]:
        return parse_table(self.spec.history.table).ident(), sql.Identifier(self.spec.history.column)

    def _own_history(self) -> bool:
        return parse_table(self.spec.history.table) == parse_table(DEFAULT_HISTORY)

    def recorded(self, ctx: StepContext) -> set[str]:
        """Versions recorded as applied on the target (none when offline or the table is missing)."""
        table, column = self._history()
        try:
            with ctx.connect(self.spec.on) as conn:
                exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table.as_string(),)).fetchone()
                if not exists or not exists[0]:
                    return set()
                rows = conn.execute(sql.SQL("SELECT {}::text FROM {}").format(column, table)).fetchall()
        except UsageError:
            return set()  # --offline: nothing can be read, every file is pending
        return {str(r[0]) for r in rows}

    def _ensure_history(self) -> SqlAction:
        table, column = self._history()
        ref = parse_table(self.spec.history.table)
        statements: list[Query] = []
        if ref.schema:
            statements.append(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(ref.schema)))
        if self._own_history():
            statements.append(sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (version text PRIMARY KEY, file text NOT NULL, mode text NOT NULL,"
                " step_id text NOT NULL, run_id bigint, applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
            ).format(table))
        else:
            statements.append(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({} text PRIMARY KEY)").format(table, column))
        return SqlAction(id=f"ensure_history:{self.id}", statements=tuple(statements), transactional=True,
                         description=f"history of applied versions: {self.spec.history.table}",
                         **self._common())

    def _record(self, item: MigrationFile, run_id: int | None) -> sql.Composed:
        table, column = self._history()
        if self._own_history():
            return sql.SQL("INSERT INTO {} (version, file, mode, step_id, run_id) VALUES ({}, {}, {}, {}, {})"
                           " ON CONFLICT (version) DO NOTHING").format(
                table, sql.Literal(item.version), sql.Literal(item.name), sql.Literal(self.spec.mode),
                sql.Literal(self.id), sql.Literal(run_id))
        return sql.SQL("INSERT INTO {t} ({c}) SELECT {v} WHERE NOT EXISTS (SELECT FROM {t} WHERE {c}::text = {v})"
                       ).format(t=table, c=column, v=sql.Literal(item.version))

    def analyses(self) -> list[tuple[MigrationFile, FileAnalysis]]:
        """Every file in order, analysed with the context of the files before it."""
        rewriter = Rewriter()
        return [(item, rewriter.analyze_file(_read(item), str(item.path)))
                for item in find(self.loaded.base_dir, self.spec.files)]

    def pending(self, ctx: StepContext) -> list[tuple[MigrationFile, FileAnalysis]]:
        recorded = self.recorded(ctx)
        return [(f, a) for f, a in self.analyses() if not applied(f.version, recorded, self.spec.history.prefix)]

    def plan_of(self, item: MigrationFile, analysis: FileAnalysis, first: bool, run_id: int | None) -> FilePlan:
        """The file's transaction plan (what ``bluegreen rewrite`` writes), with the cleanup of this step in it."""
        prefix: list[Piece] = []
        before = None
        if self.spec.cleanup != "none":
            policy = self.spec.cleanup
            for check in self.spec.checks:
                if check.before == item.version or (check.before is None and first):
                    statement = cleanup_statement(check.constraint(), policy, run_id, self.id)
                    assert statement is not None
                    prefix.append(Piece(statement.as_string(), True, -1, rule="cleanup", rewritten=True,
                                        verb="cleanup"))

            def before(piece: Piece) -> list[Piece]:
                out: list[Piece] = []
                for constraint in piece.cleanup:
                    statement = cleanup_statement(constraint, policy, run_id, self.id)
                    if statement is not None:
                        out.append(Piece(statement.as_string(), True, piece.origin, rule="cleanup", rewritten=True,
                                         verb="cleanup"))
                return out

        return plan_file(analysis, self.spec.mode, autocommit=item.autocommit,
                         batch_size=self.loaded.plan.defaults.batch_size, before=before, prefix=prefix)

    def items(self, ctx: StepContext) -> list[_Item]:
        """The actions of the pending files, with what ``apply`` needs to run them.

        :raises MigrationRefused: in lock-safe mode, statements with no safe form whose rule is not allowed.
        """
        pending = self.pending(ctx)
        if self.spec.mode == "lock-safe":
            refused = [h for _, a in pending for h in a.refused(self.spec.allow)]
            if refused:
                problems = [f"{h.source}:{h.line}:{h.column}: {h.rule}: {h.reason}" for h in refused]
                raise MigrationRefused(
                    f"step {self.id!r}: {len(refused)} statement(s) cannot be made lock-safe:\n  "
                    + "\n  ".join(problems)
                    + "\nrewrite them, or run them as written with allow: ["
                    + ", ".join(sorted({h.rule for h in refused})) + "]")
        out = [_Item(self._ensure_history())]
        if self.spec.cleanup != "none":
            out.append(_Item(install_action(self.id, self.spec.on)))
        lock_safe = self.spec.mode == "lock-safe"
        for position, (item, analysis) in enumerate(pending):
            units = self.plan_of(item, analysis, position == 0, ctx.run_id).units
            if not units:  # only comments: the version is recorded all the same (as popx does)
                out.append(_Item(SqlAction(id=f"record_version:{self.id}:{item.version}",
                                           statements=(self._record(item, ctx.run_id),), transactional=True,
                                           description=f"{item.name}: no statement; record the version",
                                           **self._common())))
            for n, unit in enumerate(units):
                last = n == len(units) - 1
                lines = sorted({analysis.statements[p.origin].statement.line for p in unit.pieces if p.origin >= 0})
                where = f"{item.name}" + (f" line {lines[0]}" if len(lines) == 1 else
                                          f" lines {lines[0]}-{lines[-1]}" if lines else "")
                if unit.transaction:
                    statements: list[Query] = [sql.SQL(s) for s in unit.characteristics]
                    if not lock_safe:
                        statements.append(sql.SQL("SET LOCAL maintenance_work_mem = {}").format(
                            sql.Literal(self.spec.maintenance_work_mem)))
                    statements.extend(sql.SQL(s) for s in unit.statements()[len(unit.characteristics):])
                    if last:
                        statements.append(self._record(item, ctx.run_id))
                    out.append(_Item(SqlAction(id=f"migrate:{self.id}:{item.version}:{n}",
                                               statements=tuple(statements), transactional=True,
                                               description=where + (" (records the version)" if last else ""),
                                               **self._common())))
                    continue
                piece = unit.pieces[0]
                common = self._common()
                statements = [sql.SQL(s) for s in unit.statements()]
                if piece.parallel:
                    statements = [sql.SQL("SET maintenance_work_mem = {}").format(
                        sql.Literal(self.spec.maintenance_work_mem)), *statements,
                        sql.SQL("RESET maintenance_work_mem")]
                repair = lock_safe and piece.index is not None and piece.verb == "create_index_concurrently"
                if repair:
                    common["lock_retries"] = 0  # retried by apply(), which first drops an invalid leftover
                out.append(_Item(SqlAction(id=f"{piece.verb}:{self.id}:{item.version}:{n}",
                                           statements=tuple(statements), transactional=False,
                                           description=where + (" (outside a transaction)" if not piece.parallel
                                                                else " (built in parallel)"), **common),
                                 piece.index if repair else None, piece.parallel))
                if last:
                    out.append(_Item(SqlAction(id=f"record_version:{self.id}:{item.version}",
                                               statements=(self._record(item, ctx.run_id),), transactional=True,
                                               description=f"{item.name}: record the version", **self._common())))
        return out

    def plan(self, ctx: StepContext) -> Sequence[Action]:
        return [item.action for item in self.items(ctx)]

    # -- running them ----------------------------------------------------------------------------

    def apply(self, ctx: StepContext) -> None:
        if not ctx.live:
            super().apply(ctx)
            return
        pending = [f.version for f, _ in self.pending(ctx)]
        key = f"migrate:{self.id}:versions"
        ctx.put(key, list(dict.fromkeys([*(ctx.get(key) or []), *pending])))
        items = self.items(ctx)
        i = 0
        while i < len(items):
            item = items[i]
            if item.parallel:
                batch = [item]
                while i + len(batch) < len(items) and items[i + len(batch)].parallel:
                    batch.append(items[i + len(batch)])
                self._parallel(ctx, batch)
                i += len(batch)
            elif item.index is not None:
                self._build_index(ctx, item.action, item.index)
                i += 1
            else:
                plain = [item.action]
                while i + len(plain) < len(items) and not items[i + len(plain)].parallel \
                        and items[i + len(plain)].index is None:
                    plain.append(items[i + len(plain)].action)
                ctx.run_actions(plain)
                i += len(plain)

    def _build_index(self, ctx: StepContext, action: SqlAction, index: IndexBuild) -> None:
        """Run a CONCURRENTLY build: drop an invalid leftover first; retry a lock timeout with backoff."""
        retries = self.loaded.plan.defaults.lock_retries
        backoff = self.loaded.plan.defaults.retry_backoff.total_seconds()
        attempt = 0
        while True:
            self._drop_invalid(ctx, index)
            try:
                ctx.run_actions([action])
                return
            except ActionFailed as exc:
                if not isinstance(exc.__cause__, pgerrors.LockNotAvailable) or attempt >= retries:
                    if attempt:
                        raise ActionFailed(action.id, f"{exc} (after {attempt + 1} attempts)") from exc
                    raise
                attempt += 1
                ctx.reporter.note(f"{action.id}: lock not available, retry {attempt} of {retries}")
                time.sleep(random.uniform(0, min(30.0, backoff * 2 ** attempt)))

    def _drop_invalid(self, ctx: StepContext, index: IndexBuild) -> None:
        with ctx.connect(self.spec.on) as conn:
            row = conn.execute("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
                               (index.ident().as_string(),)).fetchone()
        if not row or not row[0]:
            return
        key = f"migrate:{self.id}:invalid:{index.qualified}"
        n = int(ctx.get(key) or 0) + 1
        ctx.put(key, n)
        ctx.reporter.note(f"{self.id}: index {index.qualified} is invalid (an interrupted concurrent build): "
                          "dropping it concurrently to build it again")
        common = self._common()
        ctx.run_actions([SqlAction(
            id=f"drop_invalid_index:{self.id}:{index.qualified}:{n}",
            statements=(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(index.ident()),), transactional=False,
            description=f"drop the invalid index {index.qualified} left by an interrupted build", **common)])

    def _parallel(self, ctx: StepContext, batch: list[_Item]) -> None:
        """Run index builds ``parallel`` at a time, each on its own connection (fast mode)."""
        todo = [item for item in batch if not ctx.get(f"migrate:{self.id}:built:{item.action.id}")]
        if not todo:
            for item in batch:
                ctx.reporter.action_finished(self.id, item.action, None, "done in an earlier attempt")
            return
        failure: BaseException | None = None
        with ThreadPoolExecutor(max_workers=self.spec.parallel) as pool:
            futures = {}
            for item in todo:
                ctx.reporter.action_started(self.id, item.action)
                futures[pool.submit(_run_alone, ctx.dsns[self.spec.on], item.action, ctx.run_id)] = item
            for future in as_completed(futures):
                item = futures[future]
                try:
                    result = future.result()
                except BaseException as exc:  # keep the first; let the others finish
                    failure = failure or exc
                    continue
                ctx.put(f"migrate:{self.id}:built:{item.action.id}", True)
                ctx.reporter.action_finished(self.id, item.action, result)
        if failure is not None:
            raise failure

    # -- checking and undoing --------------------------------------------------------------------

    def verify(self, ctx: StepContext) -> Sequence[Check]:
        if not ctx.live:
            return []
        recorded = self.recorded(ctx)
        files = find(self.loaded.base_dir, self.spec.files)
        missing = [f.version for f in files if not applied(f.version, recorded, self.spec.history.prefix)]
        checks = [Check("every migration applied", not missing,
                        f"{len(files)} versions recorded in {self.spec.history.table}" if not missing
                        else "not recorded: " + ", ".join(missing[:10]))]
        with ctx.connect(self.spec.on) as conn:
            row = conn.execute(
                "SELECT string_agg(i.indexrelid::regclass::text, ', ') FROM pg_index i"
                " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE NOT i.indisvalid AND n.nspname NOT IN ('pg_catalog', 'information_schema')").fetchone()
        invalid = row[0] if row else None
        checks.append(Check("no invalid index", not invalid, f"invalid: {invalid}" if invalid else ""))
        checks.extend(cleanup_checks(ctx, self.id, self.spec.on))
        return checks

    def rollback(self, ctx: StepContext) -> Sequence[Action]:
        if self.spec.down is None:
            return []
        versions = list(ctx.get(f"migrate:{self.id}:versions") or [])
        if not ctx.live:
            versions = [f.version for f in find(self.loaded.base_dir, self.spec.files)]
        recorded = self.recorded(ctx) if ctx.live else set(versions)
        downs = {f.version: f for f in find(self.loaded.base_dir, self.spec.down)}
        table, column = self._history()
        actions: list[Action] = []
        for version in reversed(versions):
            if version not in recorded:
                continue
            forget = sql.SQL("DELETE FROM {} WHERE {}::text = {}").format(table, column, sql.Literal(version))
            down = downs.get(version)
            statements: list[Query] = []
            if down is not None:
                statements.extend(sql.SQL(s.text) for s in split_statements(_read(down), str(down.path)))
            statements.append(forget)
            actions.append(SqlAction(id=f"migrate_down:{self.id}:{version}", statements=tuple(statements),
                                     transactional=True, description=(down.name if down else version) + " (down)",
                                     **self._common()))
        return actions


def _run_alone(dsn: str, action: SqlAction, run_id: int | None) -> ActionResult:
    executor = LiveExecutor({action.target: dsn})
    try:
        return executor.execute(action, run_id)
    finally:
        executor.close()
