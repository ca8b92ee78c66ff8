"""``kind: sql``: run statements or files on blue or green.

Locks: whatever the statements take, bounded by ``lock_timeout`` (retried with backoff up to
``lock_retries``). With ``transaction: true`` (the default) each file or inline chunk is one
transaction, applied exactly once even across a crash; with ``transaction: false`` each statement
runs in autocommit (required by CONCURRENTLY, VACUUM...) and may run again after a crash, so write
it idempotently (IF NOT EXISTS). Undo: the step's ``rollback`` SQL, if the plan gives one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from psycopg import sql
from pydantic import Field

from ..actions import Action, SqlAction
from ..spec import SqlSource, StepSpecBase, Target
from ..sqlanalysis.parse import split_statements
from . import register
from .base import Step, StepContext


class SqlStepSpec(StepSpecBase, SqlSource):
    """Run SQL on one cluster: in one transaction per file/chunk, or statement by statement."""

    kind: Literal["sql"]
    on: Target
    transaction: bool = Field(True, description="false: each statement in autocommit (CONCURRENTLY, VACUUM)")
    rollback: SqlSource | None = Field(None, description="SQL that undoes this step, run by rollback")


@register("sql", SqlStepSpec)
class SqlStep(Step[SqlStepSpec]):
    """Statements on one cluster, in a transaction per file/chunk or one by one in autocommit."""

    def _actions(self, source: SqlSource, prefix: str, transactional: bool) -> list[Action]:
        actions: list[Action] = []
        for index, (name, text) in enumerate(source.texts(self.loaded.base_dir)):
            statements = [s.text for s in split_statements(text, name)]
            common = {
                "target": self.spec.on,
                "lock_timeout": self.setting("lock_timeout"),
                "statement_timeout": self.setting("statement_timeout"),
                "lock_retries": self.loaded.plan.defaults.lock_retries,
                "retry_backoff": self.loaded.plan.defaults.retry_backoff,
            }
            if transactional:
                actions.append(SqlAction(id=f"{prefix}:{self.id}:{index}",
                                         statements=tuple(sql.SQL(s) for s in statements),
                                         transactional=True, description=name, **common))
            else:
                actions.extend(
                    SqlAction(id=f"{prefix}:{self.id}:{index}.{n}", statements=(sql.SQL(s),),
                              transactional=False, description=f"{name} statement {n + 1}", **common)
                    for n, s in enumerate(statements))
        return actions

    def plan(self, ctx: StepContext) -> Sequence[Action]:
        return self._actions(self.spec, "sql", self.spec.transaction)

    def rollback(self, ctx: StepContext) -> Sequence[Action]:
        if self.spec.rollback is None:
            return []
        return self._actions(self.spec.rollback, "undo_sql", self.spec.transaction)
