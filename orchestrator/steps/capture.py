"""``kind: capture``: a row trigger on one table appends each matching event to ``bluegreen.capture_events``.

Every insert, update or delete of the table (the ``events`` chosen, filtered by an optional ``when``
condition on ``OLD``/``NEW``) writes one event: OLD and NEW as json, the writer's
``pg_current_xact_id()``, a sequence number and the time. The ``replay`` step (and the cutover's
drain) apply those events to the other cluster; see ``orchestrator/replay.py`` for the exactness
contract.

Locks: ``CREATE TRIGGER`` takes SHARE ROW EXCLUSIVE on the table for the instant of its commit: it
waits for the table's open write transactions and blocks new writes while it waits, so it runs under
``lock_timeout`` (retried with backoff up to ``lock_retries``) and never queues traffic longer than
that. Waiting for the open writers is also what makes the capture exact: every write the trigger
misses was committed before the trigger was, hence before any later snapshot. The function and the
events table are created under an advisory lock and touch no application table.

Idempotent: the schema is ``IF NOT EXISTS`` / ``CREATE OR REPLACE``; the trigger is dropped and
created again in one transaction; both are transactional actions applied exactly once.
Undo: drop the trigger, then the function if no other capture uses it, and forget the capture's
registry row and events.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from psycopg import sql
from pydantic import Field, ValidationInfo, field_validator, model_validator

from ..actions import Action, SqlAction
from ..copy.names import QualifiedName, condition_references, condition_sql, parse_qualified_name
from ..spec import StepSpecBase, Target
from ..sqlanalysis.parse import split_statements
from ..sqlfiles import read_sql
from . import register
from .base import Check, Step, StepContext

Event = Literal["insert", "update", "delete"]
ALL_EVENTS: tuple[Event, ...] = ("insert", "update", "delete")
TRIGGER_PREFIX = "bluegreen_capture_"
SCHEMA_LOCK = sql.SQL("SELECT pg_advisory_xact_lock(25191, 3)")


class CaptureSpec(StepSpecBase):
    """Capture row events of one table into ``bluegreen.capture_events`` for replay on the other cluster."""

    kind: Literal["capture"]
    on: Target = Field("blue", description="the cluster whose writes are captured; events replay onto the other")
    table: str = Field(description="the table, schema-qualified or in public: hydra_oauth2_access, app.users")
    events: list[Event] = Field(default_factory=lambda: list(ALL_EVENTS), min_length=1,
                                description="which row events to capture")
    when: str | None = Field(None, description="a trigger WHEN condition on OLD and NEW, e.g. "
                                               "'OLD.active AND NOT NEW.active'")
    replay: str | None = Field(None, description="SQL file run on the other cluster per event, with named "
                                                 "parameters :col, :new.col, :old.col, :_op, :_seq; default: "
                                                 "upsert/delete by primary key over the shared columns")
    key: list[str] | None = Field(None, min_length=1, description="columns identifying a row for the default "
                                                                  "replay (default: the primary key)")
    fire_triggers: bool = Field(False, description="let the other cluster's triggers (and foreign-key actions) "
                                                   "fire while replaying; off by default, as in logical "
                                                   "replication")

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        parse_qualified_name(value)
        return value

    @field_validator("events")
    @classmethod
    def _unique_events(cls, value: list[Event]) -> list[Event]:
        if len(set(value)) != len(value):
            raise ValueError("an event is listed twice")
        return value

    @field_validator("replay")
    @classmethod
    def _replay_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        from ..replay import compile_replay_sql

        path = Path((info.context or {}).get("base_dir", ".")) / value
        if not path.is_file():
            raise ValueError(f"no such file: {path}")
        try:
            compile_replay_sql(path.read_text(encoding="utf-8"), str(path))
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not UTF-8 text ({exc.reason})") from None
        return value

    @model_validator(mode="after")
    def _condition(self) -> CaptureSpec:
        if self.replay is not None and self.key is not None:
            raise ValueError("'key' is for the default replay; a 'replay' file chooses its own rows")
        if self.when is None:
            return self
        condition_sql(self.when)
        refs = condition_references(self.when)
        if "old" in refs and "insert" in self.events:
            raise ValueError("'when' reads OLD, which an insert does not have: capture insert in another step")
        if "new" in refs and "delete" in self.events:
            raise ValueError("'when' reads NEW, which a delete does not have: capture delete in another step")
        return self

    @property
    def relation(self) -> QualifiedName:
        return parse_qualified_name(self.table)

    @property
    def replay_target(self) -> Target:
        return "green" if self.on == "blue" else "blue"


def trigger_name(capture_id: str) -> str:
    """The trigger's name: ``bluegreen_capture_<id>``, shortened with a hash beyond 63 bytes."""
    name = TRIGGER_PREFIX + capture_id
    if len(name.encode()) <= 63:
        return name
    digest = hashlib.sha256(capture_id.encode()).hexdigest()[:8]
    return f"{name[:54]}_{digest}"


def schema_statements() -> list[sql.SQL]:
    """The statements of ``sql/capture.sql``, each one a composable for an action."""
    return [sql.SQL(s.text) for s in split_statements(read_sql("capture.sql"), "sql/capture.sql")]


@register("capture", CaptureSpec)
class CaptureStep(Step[CaptureSpec]):
    """A capture trigger on one table, and the schema it writes into."""

    def _common(self) -> dict[str, Any]:
        return {"target": self.spec.on, "lock_timeout": self.setting("lock_timeout"),
                "statement_timeout": self.setting("statement_timeout"),
                "lock_retries": self.loaded.plan.defaults.lock_retries,
                "retry_backoff": self.loaded.plan.defaults.retry_backoff}

    def plan(self, ctx: StepContext) -> Sequence[Action]:
        rel = self.spec.relation
        trigger = sql.Identifier(trigger_name(self.id))
        events = sql.SQL(" OR ").join(sql.SQL(e.upper()) for e in self.spec.events)
        when = sql.SQL(" WHEN ({})").format(sql.SQL(condition_sql(self.spec.when))) if self.spec.when else sql.SQL("")
        create = sql.SQL("CREATE TRIGGER {} AFTER {} ON {} FOR EACH ROW{} EXECUTE FUNCTION "
                         "bluegreen.capture_event({})").format(
            trigger, events, rel.ident, when, sql.Literal(self.id))
        register_row = sql.SQL(
            "INSERT INTO bluegreen.captures (capture, relation, events, condition) VALUES ({}, {}, {}, {})"
            " ON CONFLICT (capture) DO UPDATE SET relation = EXCLUDED.relation, events = EXCLUDED.events,"
            " condition = EXCLUDED.condition, installed_at = clock_timestamp()").format(
            sql.Literal(self.id), sql.Literal(rel.display), sql.Literal(list(self.spec.events)),
            sql.Literal(self.spec.when))
        return [
            SqlAction(id=f"install_capture_schema:{self.id}", statements=(SCHEMA_LOCK, *schema_statements()),
                      description="bluegreen.capture_events and the trigger function", **self._common()),
            SqlAction(id=f"create_capture_trigger:{self.id}:{rel.display}",
                      statements=(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(trigger, rel.ident),
                                  create, register_row),
                      description=f"capture {', '.join(self.spec.events)} on {rel.display}", **self._common()),
        ]

    def verify(self, ctx: StepContext) -> Sequence[Check]:
        rel = self.spec.relation
        with ctx.connect(self.spec.on) as conn:
            row = conn.execute(
                "SELECT t.tgenabled, p.oid IS NOT NULL FROM pg_trigger t"
                " LEFT JOIN pg_proc p ON p.oid = t.tgfoid AND p.proname = 'capture_event'"
                " AND p.pronamespace = 'bluegreen'::regnamespace"
                " WHERE t.tgrelid = to_regclass(%s) AND t.tgname = %s",
                (rel.display, trigger_name(self.id))).fetchone()
        if row is None:
            return [Check("trigger", False, f"no trigger {trigger_name(self.id)} on {rel.display}")]
        return [Check("trigger", row[0] in ("O", "A") and bool(row[1]),
                      f"{trigger_name(self.id)} on {rel.display}"
                      + ("" if row[0] in ("O", "A") else " is disabled")
                      + ("" if row[1] else " does not call bluegreen.capture_event()"))]

    def rollback(self, ctx: StepContext) -> Sequence[Action]:
        rel = self.spec.relation
        drop_function = sql.SQL(
            "DO $$BEGIN IF to_regproc('bluegreen.capture_event') IS NOT NULL AND NOT EXISTS ("
            "SELECT FROM pg_trigger WHERE tgfoid = 'bluegreen.capture_event'::regproc)"
            " THEN DROP FUNCTION bluegreen.capture_event(); END IF; END$$")
        forget = sql.SQL(
            "DO $$BEGIN IF to_regclass('bluegreen.captures') IS NOT NULL THEN"
            " DELETE FROM bluegreen.captures WHERE capture = {id};"
            " DELETE FROM bluegreen.capture_events WHERE capture = {id}; END IF; END$$").format(
            id=sql.Literal(self.id))
        return [
            SqlAction(id=f"drop_capture_trigger:{self.id}:{rel.display}",
                      statements=(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                          sql.Identifier(trigger_name(self.id)), rel.ident),),
                      description=f"stop capturing {rel.display}", **self._common()),
            SqlAction(id=f"drop_capture_function:{self.id}", statements=(SCHEMA_LOCK, drop_function, forget),
                      description="the trigger function when no capture uses it", **self._common()),
        ]
