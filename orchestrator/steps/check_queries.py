"""``kind: check_queries``: plan every statement of the application's query files on green, never run one.

Each statement (its ``$1`` / ``%s`` / ``%(name)s`` / ``:name`` placeholders turned into ``$n`` with
unknown types by the Postgres scanner) is prepared with ``PREPARE`` (parse analysis: every table,
column, function and operator must resolve), described (its result columns and their types), and
planned with ``EXPLAIN EXECUTE`` under a generic plan, inside a ``READ ONLY`` transaction that is
rolled back. With ``baseline`` (blue by default) the same is done on the baseline and the result
columns are compared: a query whose columns change (``SELECT *`` after a migration added one, a
column whose type changed) would break the old application reading it. Statements that are not
queries (DDL) are listed and skipped.

The step fails, in ``verify`` (before the cutover), naming each statement that would break by file
and line, with the query and Postgres' reason (missing column, ambiguous name, type change...).

Locks: ACCESS SHARE on the tables each statement reads or writes, for the instant of its check
(parse analysis takes them), each under ``lock_timeout``; nothing is written, nothing executed.
Idempotent: read-only; running it again checks again. Undo: none needed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql
from pydantic import Field, ValidationInfo, field_validator

from .. import secrets
from ..actions import Action, SqlAction, session_settings
from ..actions import Query as Query_
from ..errors import UsageError
from ..querycatalog import QueryCatalog
from ..spec import StepSpecBase, Target
from ..sqlanalysis.parse import SqlSyntaxError
from ..sqlanalysis.queryfiles import PLANNABLE, Query, expand_paths, queries, read_text
from ..sqlanalysis.queryparams import STYLES
from ..sqlanalysis.selectstar import rewrite_sql
from . import register
from .base import Check, Step, StepContext

STATEMENT = "bluegreen_check"
_INDETERMINATE = "42P18"  # could not determine data type of parameter $n


class CheckQueriesSpec(StepSpecBase):
    """Prepare and plan the application's queries on green (never execute them); fail on any that would break."""

    kind: Literal["check_queries"]
    placeholders: str = Field("auto", description="parameter style: " + ", ".join(STYLES))
    files: str | list[str] = Field(description="query files, folders or globs, relative to the plan: app/queries/*.sql")
    against: Target = Field("green", description="where the queries must work (green, after its migrations)")
    baseline: Target | None = Field("blue", description="also prepare them here and fail when their result columns"
                                                        " differ (the schema the old code was built for); null: off")

    @field_validator("placeholders")
    @classmethod
    def _style(cls, value: str) -> str:
        if value not in STYLES:
            raise ValueError(f"expected one of {', '.join(STYLES)}")
        return value

    @field_validator("files")
    @classmethod
    def _files(cls, value: str | list[str], info: ValidationInfo) -> str | list[str]:
        base = Path((info.context or {}).get("base_dir", "."))
        names = [value] if isinstance(value, str) else value
        if not names:
            raise ValueError("give at least one query file")
        try:
            paths = expand_paths(names, base)
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        style = (info.data or {}).get("placeholders", "auto")
        for path in paths:
            try:
                queries(read_text(path), str(path), style if style in STYLES else "auto")
            except (SqlSyntaxError, UsageError) as exc:
                raise ValueError(str(exc)) from None
        return value


@dataclass
class _Outcome:
    """What one cluster said about one statement."""

    error: str | None = None
    sqlstate: str | None = None
    position: tuple[int, int] | None = None
    columns: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _FileQueries:
    path: Path
    name: str
    text: str
    queries: list[Query]


def _oneline(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


@register("check_queries", CheckQueriesSpec)
class CheckQueriesStep(Step[CheckQueriesSpec]):
    """Prepare, describe and EXPLAIN each application query on green (and the baseline), rolled back."""

    def _files(self) -> list[_FileQueries]:
        names = [self.spec.files] if isinstance(self.spec.files, str) else self.spec.files
        out = []
        base = self.loaded.base_dir
        for path in expand_paths(names, base):
            text = read_text(path)
            shown = os.path.relpath(path, base)
            try:
                found = queries(text, shown, self.spec.placeholders)
            except SqlSyntaxError as exc:
                raise UsageError(str(exc)) from None
            out.append(_FileQueries(path, shown, text, found))
        return out

    def _settings(self) -> dict[str, Any]:
        return {"lock_timeout": self.setting("lock_timeout"), "statement_timeout": self.setting("statement_timeout")}

    @staticmethod
    def _statements(query: Query) -> list[Query_]:
        nulls = sql.SQL(", ").join([sql.NULL] * query.params)
        explain = sql.SQL("EXPLAIN (COSTS OFF) EXECUTE {}{}").format(
            sql.Identifier(STATEMENT), sql.SQL("({})").format(nulls) if query.params else sql.SQL(""))
        return [sql.SQL("BEGIN READ ONLY"),
                sql.SQL("SET LOCAL plan_cache_mode = force_generic_plan"),
                sql.SQL("PREPARE {} AS {}").format(sql.Identifier(STATEMENT), sql.SQL(query.sql)),
                explain,
                sql.SQL("DEALLOCATE {}").format(sql.Identifier(STATEMENT)),
                sql.SQL("ROLLBACK")]

    def plan(self, ctx: StepContext) -> Sequence[Action]:
        actions: list[Action] = []
        targets: list[Target] = [self.spec.against] + ([self.spec.baseline] if self.spec.baseline else [])
        for qf in self._files():
            planned = [q for q in qf.queries if q.kind in PLANNABLE]
            skipped = len(qf.queries) - len(planned)
            statements: list[Any] = [s for q in planned for s in self._statements(q)]
            if not statements:
                statements = [sql.SQL("SELECT 'no query to check in this file'")]
            for target in targets:
                suffix = "" if target == self.spec.against else f":{target}"
                actions.append(SqlAction(
                    id=f"check_queries:{self.id}:{qf.name}{suffix}", target=target, statements=tuple(statements),
                    transactional=False,
                    description=(f"{len(planned)} statement(s) of {qf.name} prepared and planned, never executed"
                                 + (f"; {skipped} not a query (skipped)" if skipped else "")
                                 + ("; result columns compared with " + target if target != self.spec.against
                                    else "")),
                    **self._settings()))
        return actions

    def apply(self, ctx: StepContext) -> None:
        if not ctx.live:
            ctx.run_actions(self.plan(ctx))
        # live: the checks are read-only and run in verify(), where a failure fails the step

    def _check(self, conn: psycopg.Connection[Any], query: Query, file_text: str) -> _Outcome:
        settings = SqlAction(id="", target=self.spec.against, statements=(), **self._settings())
        outcome = _Outcome()
        statements = self._statements(query)
        prepared = False
        try:
            for stmt in statements[:2]:
                conn.execute(stmt)
            for stmt in session_settings(settings, local=True):
                conn.execute(stmt)
            # prepared statements outlive transactions: clear one left on this server connection
            # (through a transaction pooler, the last failed check may have run on it)
            if conn.execute("SELECT EXISTS (SELECT FROM pg_prepared_statements WHERE name = %s)",
                            (STATEMENT,)).fetchone() == (True,):
                conn.execute(statements[4])
            prepare = statements[2].as_string(conn)
            prefix = len(prepare) - len(query.sql)  # PREPARE "bluegreen_check" AS
            try:
                conn.execute(prepare)
            except psycopg.Error as exc:
                position = getattr(exc.diag, "statement_position", None)
                if position and int(position) > prefix:
                    outcome.position = query.position_in_file(int(position) - prefix, file_text)
                raise
            prepared = True
            described = conn.pgconn.describe_prepared(STATEMENT.encode())
            oids = [described.ftype(i) for i in range(described.nfields)]
            mods = [described.fmod(i) for i in range(described.nfields)]
            names = [(described.fname(i) or b"").decode() for i in range(described.nfields)]
            types: list[str] = []
            if oids:
                rows = conn.execute("SELECT format_type(t, m) FROM unnest(%s::oid[], %s::int[])"
                                    " WITH ORDINALITY AS x(t, m, n) ORDER BY n", (oids, mods)).fetchall()
                types = [str(r[0]) for r in rows]
            outcome.columns = list(zip(names, types, strict=True))
            conn.execute(statements[3])
            conn.execute(statements[4])  # DEALLOCATE, in the transaction (same server connection)
            prepared = False
        except psycopg.Error as exc:
            diag = exc.diag
            text = diag.message_primary or str(exc).strip() or type(exc).__name__
            outcome.error = text + (f" ({diag.message_detail})" if diag.message_detail else "") \
                + (f"; hint: {diag.message_hint}" if diag.message_hint else "")
            outcome.sqlstate = exc.sqlstate
        finally:
            if not conn.broken:
                conn.execute("ROLLBACK")
                if prepared:  # it failed after PREPARE, in a transaction that is now rolled back
                    with contextlib.suppress(psycopg.Error):
                        conn.execute(statements[4])
        return outcome

    def verify(self, ctx: StepContext) -> Sequence[Check]:
        files = self._files()
        planned = [(qf, q) for qf in files for q in qf.queries if q.kind in PLANNABLE]
        skipped = [(qf, q) for qf in files for q in qf.queries if q.kind not in PLANNABLE]
        results: dict[str, list[_Outcome]] = {}
        targets: list[Target] = [self.spec.against] + ([self.spec.baseline] if self.spec.baseline else [])
        for target in targets:
            with ctx.connect(target) as conn:
                outcomes = []
                for index, (qf, q) in enumerate(planned):
                    outcomes.append(self._check(conn, q, qf.text))
                    ctx.progress(f"statements checked on {target}", index + 1, len(planned), "statements")
                results[target] = outcomes
        stars = 0
        if self.spec.baseline is not None:
            with ctx.connect(self.spec.baseline) as conn:
                catalog = QueryCatalog.from_connection(conn, self.spec.baseline)
            stars = sum(len(rewrite_sql(qf.text, catalog, qf.name, self.spec.placeholders).changes) for qf in files)

        checks: list[Check] = []
        notes: list[str] = []
        for index, (_qf, q) in enumerate(planned):
            green = results[self.spec.against][index]
            base = results[self.spec.baseline][index] if self.spec.baseline else None
            problem = self._problem(green, base)
            if problem is None:
                if green.sqlstate == _INDETERMINATE:
                    notes.append(f"{q.where}: not checked: {green.error}")
                continue
            checks.append(Check(q.where, False, f"{problem}; query: {_oneline(q.text)}"))
        against = self.spec.against
        summary = (f"{len(planned)} statement(s) in {len(files)} file(s) prepared and planned on {against}"
                   + (f", result columns compared with {self.spec.baseline}" if self.spec.baseline else "")
                   + f": {len(checks)} would break")
        if skipped:
            summary += f"; {len(skipped)} not a query, skipped ({', '.join(q.where for _, q in skipped[:5])})"
        if stars:
            summary += f"; {stars} SELECT * / t.* that `bluegreen rewrite-queries` would expand"
        if notes:
            summary += "; " + "; ".join(notes)
        ctx.put(f"{self.id}.result", {"statements": len(planned), "files": len(files), "failed": len(checks),
                                      "skipped": len(skipped), "stars": stars})
        return [Check("queries", not checks, secrets.redact(summary)), *checks]

    def _problem(self, green: _Outcome, base: _Outcome | None) -> str | None:
        """Why a statement would break on green, or None."""
        against = self.spec.against
        if green.error is not None:
            if green.sqlstate == _INDETERMINATE:
                return None
            where = f" at line {green.position[0]}, column {green.position[1]}" if green.position else ""
            also = ""
            if base is not None and base.error is not None:
                also = f" (it fails on {self.spec.baseline} too)"
            return f"fails on {against}{where}: {green.error} [{green.sqlstate}]{also}"
        if base is None or base.error is not None:
            return None
        if green.columns == base.columns:
            return None
        baseline = self.spec.baseline
        green_names = [n for n, _ in green.columns]
        base_names = [n for n, _ in base.columns]
        if green_names != base_names:
            added = [n for n in green_names if n not in base_names]
            dropped = [n for n in base_names if n not in green_names]
            parts = []
            if added:
                parts.append(f"{against} adds column(s) {', '.join(added)}")
            if dropped:
                parts.append(f"{against} drops column(s) {', '.join(dropped)}")
            if not parts:
                parts.append("the columns come in another order")
            return (f"its result columns differ between {baseline} and {against}: " + "; ".join(parts)
                    + f" (the old code reads {', '.join(base_names) or 'no column'}; name the columns:"
                      " bluegreen rewrite-queries)")
        changes = [f"column {n} is {bt} on {baseline} but {gt} on {against}"
                   for (n, bt), (_, gt) in zip(base.columns, green.columns, strict=True) if bt != gt]
        return "type change: " + "; ".join(changes)
