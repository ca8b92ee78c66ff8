"""``kind: capture``: record the writes made on one cluster, for replay on the other.

``method: logical`` (the default) decodes the WAL: one publication listing the captured tables
(``tables: all``, every table the snapshot copies, unless ``exclude``d) and one ``pgoutput`` slot,
both named from the run id and the step id (``orchestrator/logical.py``). When a snapshot step copies
from this cluster later in the plan, that step creates the slot on a replication connection and copies
under the snapshot the slot exports, so a change is in the copy iff it committed before the slot's
consistent point; otherwise (a reverse capture on green) this step creates the slot, and capture starts
then. Before anything is created, :meth:`CaptureStep.preflight` checks ``wal_level``, a free slot and WAL
sender, the role's REPLICATION attribute and a replica identity on every captured table (the run
refuses with exit 2 and touches nothing when one is missing). Nothing is added to the write path.
The ``replay`` step and the cutover's drain read the slot (``orchestrator/logical_replay.py``).

``method: trigger``, for a cluster that cannot run with ``wal_level = logical``: a row trigger on one
``table`` writes each matching event (the ``events`` chosen, filtered by an optional ``when`` condition
on ``OLD``/``NEW``) into ``bluegreen.capture_events``: OLD and NEW as json, the writer's
``pg_current_xact_id()``, a sequence number and the time (``orchestrator/replay.py``). It costs every
captured write an INSERT (docs/capture-cost.md).

Locks: logical: ``CREATE PUBLICATION`` takes SHARE ROW EXCLUSIVE on each listed table for the instant
of its commit, under ``lock_timeout`` (retried with backoff up to ``lock_retries``); ``replica_identity``
runs ``ALTER TABLE ... REPLICA IDENTITY`` under the same bounds; the slot waits for the transactions
running when it is created and locks no table. Trigger: ``CREATE TRIGGER`` takes SHARE ROW EXCLUSIVE
on the table for the instant of its commit: it waits for the table's open write transactions and
blocks new writes while it waits, so it runs under ``lock_timeout`` too. Waiting for the open writers
is also what makes that capture exact: every write the trigger misses was committed before the trigger
was, hence before any later snapshot.

Idempotent: the publication is created if missing, the slot if missing; the trigger is dropped and
created again in one transaction. Undo: drop the slot and the publication (and put back any replica
identity it set), or drop the trigger (and the function if no other capture uses it) and forget the
capture's events. Every ending of a run drops the slot and the publication (:meth:`CaptureStep.finish`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from psycopg import sql
from pydantic import Field, ValidationInfo, field_validator, model_validator

from ..actions import Action, SqlAction
from ..copy.catalog import read_catalog
from ..copy.names import QualifiedName, condition_columns, condition_references, condition_sql, parse_qualified_name
from ..db import connect
from ..errors import UsageError
from ..logical import (
    DEFAULT_MAX_RETAINED_WAL,
    capture_name,
    create_slot,
    drop_capture,
    drop_publication_sql,
    drop_slot_statements,
    fingerprint,
    preflight,
    publication_sql,
    replica_identity_sql,
    restore_identity_sql,
    slot_exists,
    table_identities,
)
from ..spec import Model, Size, StepSpecBase, Target
from ..sqlanalysis.parse import split_statements
from ..sqlfiles import read_sql
from . import register
from .base import Check, PreflightContext, Step, StepContext

if TYPE_CHECKING:
    from ..plan import LoadedPlan
    from .snapshot import SnapshotSpec

Event = Literal["insert", "update", "delete", "truncate"]
ALL_EVENTS: tuple[Event, ...] = ("insert", "update", "delete", "truncate")
ROW_EVENTS: tuple[Event, ...] = ("insert", "update", "delete")
TRIGGER_PREFIX = "bluegreen_capture_"
SCHEMA_LOCK = sql.SQL("SELECT pg_advisory_xact_lock(25191, 3)")


def _table_name(value: str) -> str:
    """A table name as the plan writes it, checked with the Postgres grammar; kept as ``schema.table``."""
    return parse_qualified_name(value).display


def _check_replay_file(value: str, info: ValidationInfo) -> str:
    from ..replay import compile_replay_sql

    path = Path((info.context or {}).get("base_dir", ".")) / value
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    try:
        compile_replay_sql(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason})") from None
    return value


def _check_when(when: str | None, events: Sequence[str]) -> None:
    if when is None:
        return
    condition_sql(when)
    refs = condition_references(when)
    if "old" in refs and "insert" in events:
        raise ValueError("'when' reads OLD, which an insert does not have: capture insert in another step")
    if "new" in refs and "delete" in events:
        raise ValueError("'when' reads NEW, which a delete does not have: capture delete in another step")
    if "truncate" in events:
        raise ValueError("'when' filters rows, and a TRUNCATE has none: leave truncate out of 'events'")


class TableRule(Model):
    """How one captured table's changes are replayed (logical capture of several tables)."""

    replay: str | None = Field(None, description="SQL file run on the other cluster per change (named parameters"
                                                 " as for a capture's 'replay'); default: upsert/delete by key")
    key: list[str] | None = Field(None, min_length=1, description="columns identifying a row for the default "
                                                                  "replay (default: the replica identity's)")
    events: list[Event] = Field(default_factory=lambda: list(ALL_EVENTS), min_length=1,
                                description="which changes to replay (the others are skipped)")
    when: str | None = Field(None, description="replay only the changes for which this condition on OLD and NEW "
                                               "holds (evaluated by Postgres on the decoded rows)")

    @field_validator("replay")
    @classmethod
    def _replay_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return value if value is None else _check_replay_file(value, info)

    @model_validator(mode="after")
    def _rule(self) -> TableRule:
        if self.replay is not None and self.key is not None:
            raise ValueError("'key' is for the default replay; a 'replay' file chooses its own rows")
        _check_when(self.when, self.events)
        return self


class CaptureSpec(StepSpecBase):
    """Capture the writes made on one cluster, for replay on the other.

    ``method: logical`` (default): a publication and a pgoutput slot decode every change of the captured
    tables (``tables: all`` by default: every table the snapshot copies), at no cost to the write path.
    ``method: trigger``: a row trigger on one ``table`` queues its events in ``bluegreen.capture_events``,
    for a cluster that cannot run with ``wal_level = logical``.
    """

    kind: Literal["capture"]
    on: Target = Field("blue", description="the cluster whose writes are captured; changes replay onto the other")
    method: Literal["logical", "trigger"] = Field("logical", description="logical decoding (a pgoutput slot), or "
                                                                         "a row trigger on one table")
    table: str | None = Field(None, description="capture one table (method trigger: required): "
                                                "hydra_oauth2_access, app.users")
    tables: Literal["all"] | list[str] = Field("all", description="method logical: 'all' (every table of the "
                                               "copied schemas) or a list of tables")
    exclude: list[str] = Field(default_factory=list, description="method logical: tables not captured")
    events: list[Event] | None = Field(None, min_length=1, description="with 'table': which changes to capture "
                                                                       "(default: all of them)")
    when: str | None = Field(None, description="with 'table': a condition on OLD and NEW, e.g. "
                                               "'OLD.active AND NOT NEW.active'")
    replay: str | None = Field(None, description="with 'table': SQL file run on the other cluster per change, with "
                                                 "named parameters :col, :new.col, :old.col, :_op, :_seq, :_at, "
                                                 ":_xid; default: upsert/delete by key over the shared columns")
    key: list[str] | None = Field(None, min_length=1, description="with 'table': columns identifying a row for the "
                                                                  "default replay (default: the primary key)")
    rules: dict[str, TableRule] = Field(default_factory=dict, description="method logical: per table, how its "
                                                                          "changes are replayed")
    replica_identity: dict[str, str] = Field(default_factory=dict, description="method logical: per table, 'full' or"
                                             " a unique index's name, set on the captured cluster for the capture"
                                             " (and put back by its undo)")
    max_retained_wal: Size = Field(DEFAULT_MAX_RETAINED_WAL, description="method logical: the most WAL the slot may "
                                   "hold on its cluster; past it the slot is dropped and the run fails (default 2GB)")
    fire_triggers: bool = Field(False, description="let the other cluster's triggers (and foreign-key actions) "
                                                   "fire while replaying; off by default, as in logical "
                                                   "replication")

    @field_validator("table")
    @classmethod
    def _table(cls, value: str | None) -> str | None:
        if value is not None:
            parse_qualified_name(value)
        return value

    @field_validator("tables")
    @classmethod
    def _tables(cls, value: Literal["all"] | list[str]) -> Literal["all"] | list[str]:
        if isinstance(value, list):
            if not value:
                raise ValueError("list at least one table, or write 'all'")
            names = [_table_name(v) for v in value]
            if len(set(names)) != len(names):
                raise ValueError("a table is listed twice")
            return names
        return value

    @field_validator("exclude")
    @classmethod
    def _exclude(cls, value: list[str]) -> list[str]:
        return [_table_name(v) for v in value]

    @field_validator("rules", "replica_identity")
    @classmethod
    def _by_table(cls, value: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, item in value.items():
            display = _table_name(name)
            if display in out:
                raise ValueError(f"table {display} is named twice")
            out[display] = item
        return out

    @field_validator("events")
    @classmethod
    def _unique_events(cls, value: list[Event] | None) -> list[Event] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("an event is listed twice")
        return value

    @field_validator("replay")
    @classmethod
    def _replay_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return value if value is None else _check_replay_file(value, info)

    @model_validator(mode="after")
    def _condition(self) -> CaptureSpec:
        single = ("events", "when", "replay", "key")
        if self.table is None:
            given = [k for k in single if getattr(self, k) is not None]
            if given:
                raise ValueError(f"'{given[0]}' goes with 'table' (one captured table); for several tables give "
                                 "per-table 'rules'")
        if self.method == "trigger":
            if self.table is None:
                raise ValueError("method trigger captures one 'table': name it")
            extra = [k for k in ("exclude", "rules", "replica_identity") if getattr(self, k)]
            if extra or self.tables != "all":
                raise ValueError(f"'{extra[0] if extra else 'tables'}' is for method logical; a trigger captures"
                                 " one 'table'")
            if "truncate" in (self.events or ()):
                raise ValueError("a row trigger does not see TRUNCATE: capture it with method logical")
        elif self.table is not None and (self.tables != "all" or self.exclude or self.rules):
            raise ValueError("'table' captures one table: use either it or 'tables'/'exclude'/'rules'")
        if self.replay is not None and self.key is not None:
            raise ValueError("'key' is for the default replay; a 'replay' file chooses its own rows")
        _check_when(self.when, self.row_events)
        named = set(self.tables) if isinstance(self.tables, list) else None
        for key in ("rules", "replica_identity"):
            for display in getattr(self, key):
                if display in self.exclude:
                    raise ValueError(f"{key}: table {display} is excluded from the capture")
                if named is not None and display not in named:
                    raise ValueError(f"{key}: table {display} is not among 'tables'")
        return self

    @property
    def row_events(self) -> list[Event]:
        """The events of the one-table form (default: every row event; with logical capture, TRUNCATE too)."""
        if self.events is not None:
            return list(self.events)
        return list(ALL_EVENTS if self.method == "logical" else ROW_EVENTS)

    @property
    def relation(self) -> QualifiedName:
        """The one captured table (the one-table form)."""
        assert self.table is not None
        return parse_qualified_name(self.table)

    @property
    def replay_target(self) -> Target:
        return "green" if self.on == "blue" else "blue"

    def table_rules(self) -> dict[str, TableRule]:
        """Per table, how it replays: the one-table form's settings as a rule, or ``rules``."""
        if self.table is not None:
            rule = TableRule.model_construct(replay=self.replay, key=self.key, events=self.row_events,
                                             when=self.when)
            return {self.relation.display: rule}
        return dict(self.rules)

    def reference_problems(self, before: Sequence[StepSpecBase]) -> list[tuple[tuple[str | int, ...], str]]:
        if self.method != "logical":
            return []
        for step in before:
            if isinstance(step, CaptureSpec) and step.method == "logical" and step.on == self.on:
                return [(("on",), f"capture {step.id!r} already captures {self.on} by logical decoding (one slot"
                                  " per cluster and run): give its tables to that step")]
        return []


def trigger_name(capture_id: str) -> str:
    """The trigger's name: ``bluegreen_capture_<id>``, shortened with a hash beyond 63 bytes."""
    name = TRIGGER_PREFIX + capture_id
    if len(name.encode()) <= 63:
        return name
    digest = hashlib.sha256(capture_id.encode()).hexdigest()[:8]
    return f"{name[:54]}_{digest}"


def snapshot_after(loaded: LoadedPlan, capture: CaptureSpec) -> SnapshotSpec | None:
    """The first snapshot step after ``capture`` that copies from its cluster (it creates a logical capture's slot)."""
    from .snapshot import SnapshotSpec

    seen = False
    for spec in loaded.plan.steps:
        if spec.id == capture.id:
            seen = True
        elif seen and isinstance(spec, SnapshotSpec) and spec.from_ == capture.on:
            return spec
    return None


def logical_capture_before(loaded: LoadedPlan, snapshot: SnapshotSpec) -> CaptureSpec | None:
    """The logical capture whose slot ``snapshot`` creates (on its source, before it in the plan), if any."""
    for spec in loaded.plan.steps:
        if spec.id == snapshot.id:
            return None
        if isinstance(spec, CaptureSpec) and spec.method == "logical" and spec.on == snapshot.from_ \
                and snapshot_after(loaded, spec) is snapshot:
            return spec
    return None


def reads_of_old(capture: CaptureSpec, base_dir: Path) -> dict[str, set[str]]:
    """Per table, the columns of the old row that its ``when`` condition or replay file reads."""
    from ..replay import compile_replay_sql

    out: dict[str, set[str]] = {}
    for display, rule in capture.table_rules().items():
        cols: set[str] = set()
        if rule.when:
            cols |= {col for qualifier, col in condition_columns(rule.when) if qualifier == "old"}
        if rule.replay:
            compiled = compile_replay_sql((base_dir / rule.replay).read_text(encoding="utf-8"), rule.replay)
            cols |= {name[4:] for name in compiled.params if name.startswith("old.")}
        if cols:
            out[display] = cols
    return out


def schema_statements() -> list[sql.SQL]:
    """The statements of ``sql/capture.sql``, each one a composable for an action."""
    return [sql.SQL(s.text) for s in split_statements(read_sql("capture.sql"), "sql/capture.sql")]


@register("capture", CaptureSpec)
class CaptureStep(Step[CaptureSpec]):
    """A publication and a pgoutput slot (method logical), or a capture trigger on one table (method trigger)."""

    @property
    def state_key(self) -> str:
        return f"capture:{self.id}"

    def plan(self, ctx: StepContext) -> Sequence[Action]:
        if self.spec.method == "trigger":
            return self._trigger_plan()
        return self._logical_plan(ctx, ctx.get(self.state_key) or {})

    def apply(self, ctx: StepContext) -> None:
        if self.spec.method == "trigger" or not ctx.live:
            ctx.run_actions(self.plan(ctx))
            return
        state = ctx.get(self.state_key) or {}
        if not state.get("tables"):
            problems = self.preflight(PreflightContext(ctx.dsns, ctx.run_id, ctx.get))
            if problems:  # the run's preflight saw the cluster before earlier steps (a snapshot) filled it
                raise UsageError("; ".join(message for _, message in problems))
            state = self._resolve(ctx)
            ctx.put(self.state_key, state)
        ctx.run_actions(self._logical_plan(ctx, state))
        if not state.get("fingerprint"):  # after the replica identities are set: the DDL check starts from here
            with connect(ctx.dsns[self.spec.on], self.spec.on) as conn:
                tables = [parse_qualified_name(t) for t in state["tables"]]
                state = {**state, "fingerprint": fingerprint(conn, tables, state.get("schemas"))}
            ctx.put(self.state_key, state)
        if self.standalone:
            with connect(ctx.dsns[self.spec.on], self.spec.on) as conn:
                row = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                                   (state["name"],)).fetchone()
            ctx.put(self.state_key, {**state, "slot": "created", "consistent_point": row[0] if row else None})
            ctx.reporter.note(f"capture {self.id}: slot {state['name']} decodes every change of"
                              f" {len(state['tables'])} table(s) on {self.spec.on} from now on")
        elif self.snapshot_step is not None:
            ctx.reporter.note(f"capture {self.id}: publication {state['name']} lists {len(state['tables'])} table(s)"
                              f" on {self.spec.on}; snapshot step {self.snapshot_step.id!r} creates the slot and"
                              " copies under the snapshot it exports")
        else:
            ctx.reporter.note(f"capture {self.id}: publication {state['name']} lists {len(state['tables'])} table(s)"
                              f" on {self.spec.on}; cutover {self.reversed_by!r} creates the slot right before its"
                              " pause")

    def preflight(self, ctx: PreflightContext) -> list[tuple[tuple[str | int, ...], str]]:
        """Method logical: what decoding needs from the captured cluster, read-only (``logical.preflight``)."""
        if self.spec.method != "logical":
            return []
        state = ctx.get(self.state_key) or {}
        with connect(ctx.dsns[self.spec.on], self.spec.on) as conn:
            own = ctx.run_id is not None and slot_exists(conn, capture_name(ctx.run_id, self.id))
            unknown: list[str] = []
            if state.get("tables"):
                tables = [parse_qualified_name(t) for t in state["tables"]]
            else:
                tables, unknown, _ = self.resolve_tables(conn)
            problems = preflight(conn, self.spec.on, self.id, tables, unknown, self.spec.replica_identity, own,
                                 needs_sender=not self.standalone and state.get("slot") != "created",
                                 reads_old=reads_of_old(self.spec, self.loaded.base_dir))
        return [((), p) for p in problems]

    def verify(self, ctx: StepContext) -> Sequence[Check]:
        if self.spec.method == "trigger":
            return self._trigger_verify(ctx)
        return self._logical_verify(ctx)

    def rollback(self, ctx: StepContext) -> Sequence[Action]:
        if self.spec.method == "trigger":
            return self._trigger_rollback()
        return self._logical_rollback(ctx)

    def start_slot(self, ctx: StepContext) -> bool:
        """Create the slot now if it does not exist (a cutover does, for a reverse capture); True if it did."""
        state = ctx.get(self.state_key) or {}
        name = state.get("name") or capture_name(ctx.run_id, self.id)
        with connect(ctx.dsns[self.spec.on], self.spec.on) as conn:
            if slot_exists(conn, name):
                return False
            point = create_slot(conn, name)
        ctx.put(self.state_key, {**state, "slot": "created", "consistent_point": point})
        return True

    def finish(self, ctx: StepContext) -> None:
        """The run ended (done, rolled back or aborted): drop the slot and the publication (method logical)."""
        if self.spec.method != "logical":
            return
        with connect(ctx.dsns[self.spec.on], self.spec.on) as conn:
            dropped = drop_capture(conn, capture_name(ctx.run_id, self.id))
        if dropped:
            ctx.reporter.note(f"capture {self.id}: dropped {' and '.join(dropped)} on {self.spec.on}")

    # -- method logical ---------------------------------------------------------------------------

    @property
    def snapshot_step(self) -> SnapshotSpec | None:
        """The snapshot step after this capture that copies from its cluster: it creates the slot."""
        return snapshot_after(self.loaded, self.spec)

    @property
    def reversed_by(self) -> str | None:
        """The cutover after this capture that lists it in ``reverse``: it creates the slot just before its pause."""
        from .cutover import CutoverSpec

        seen = False
        for spec in self.loaded.plan.steps:
            seen = seen or spec.id == self.id
            if seen and isinstance(spec, CutoverSpec) and self.id in spec.reverse:
                return spec.id
        return None

    @property
    def standalone(self) -> bool:
        """The capture creates the slot itself: no snapshot step copies from its cluster after it, and no cutover
        creates it (a reverse capture's slot is made by its cutover, so that it holds only what clients write on
        green after the switch, not the replay's own writes)."""
        return self.snapshot_step is None and self.reversed_by is None

    def _schemas(self) -> tuple[list[str] | None, list[str]]:
        snap = self.snapshot_step
        if snap is None:
            return None, []
        return (list(snap.schemas) if snap.schemas else None), list(snap.exclude_schemas)

    def resolve_tables(self, conn: Any) -> tuple[list[QualifiedName], list[str], list[str]]:
        """The tables to capture on ``conn``'s cluster, the names given that do not exist, and the schemas read."""
        include, exclude_schemas = self._schemas()
        catalog_tables = read_catalog(conn, include, exclude_schemas).tables
        schemas = sorted({t.relation.schema for t in catalog_tables})
        if self.spec.table is not None:
            wanted: list[str] | None = [self.spec.relation.display]
        elif isinstance(self.spec.tables, list):
            wanted = list(self.spec.tables)
        else:
            wanted = None
        if wanted is None:
            tables = [t.relation for t in catalog_tables if t.display not in self.spec.exclude]
            return tables, [], schemas
        existing = {r[0]: QualifiedName(r[1], r[2]) for r in conn.execute(
            "SELECT t, n.nspname, c.relname FROM unnest(%s::text[]) t JOIN pg_class c ON c.oid = to_regclass(t)"
            " JOIN pg_namespace n ON n.oid = c.relnamespace", (wanted,)).fetchall()}
        return [existing[w] for w in wanted if w in existing], [w for w in wanted if w not in existing], schemas

    def _resolve(self, ctx: StepContext) -> dict[str, Any]:
        """What the capture covers, read from its cluster: tables, their identities before, the fingerprint."""
        name = capture_name(ctx.run_id, self.id)
        with connect(ctx.dsns[self.spec.on], self.spec.on) as conn:
            tables, unknown, schemas = self.resolve_tables(conn)
            if unknown:
                raise UsageError(f"capture {self.id!r}: no table {', '.join(unknown)} on {self.spec.on}")
            before = table_identities(conn, tables)
            identities: dict[str, list[str | None]] = {}
            for display in self.spec.replica_identity:
                info = before[display]
                index = conn.execute(
                    "SELECT x.relname FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid"
                    " WHERE i.indrelid = to_regclass(%s) AND i.indisreplident", (display,)).fetchone()
                identities[display] = [info.identity, index[0] if index else None]
        return {"method": "logical", "name": name, "tables": [t.display for t in tables],
                "schemas": schemas if self._all_tables else None, "identities": identities, "fingerprint": None,
                "slot": "pending"}

    @property
    def _all_tables(self) -> bool:
        return self.spec.table is None and self.spec.tables == "all"

    def _common(self) -> dict[str, Any]:
        return {"target": self.spec.on, "lock_timeout": self.setting("lock_timeout"),
                "statement_timeout": self.setting("statement_timeout"),
                "lock_retries": self.loaded.plan.defaults.lock_retries,
                "retry_backoff": self.loaded.plan.defaults.retry_backoff}

    def _logical_plan(self, ctx: StepContext, state: dict[str, Any]) -> list[Action]:
        name = state.get("name") or capture_name(ctx.run_id, self.id)
        tables = [parse_qualified_name(t) for t in state.get("tables") or []]
        actions: list[Action] = []
        for display, wanted in self.spec.replica_identity.items():
            actions.append(SqlAction(id=f"set_replica_identity:{self.id}:{display}",
                                     statements=(replica_identity_sql(parse_qualified_name(display), wanted),),
                                     description="the WAL carries the old row as the replay needs it",
                                     **self._common()))
        if tables:
            create: sql.Composed = publication_sql(name, tables)
        else:
            what = ("every table of the copied schemas" if self._all_tables else
                    ", ".join(self.spec.tables if isinstance(self.spec.tables, list) else [str(self.spec.table)]))
            excluded = f" except {', '.join(self.spec.exclude)}" if self.spec.exclude else ""
            create = sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert, update, delete, truncate')"
                             ).format(sql.Identifier(name), sql.SQL(f"<{what}{excluded}>"))
        actions.append(SqlAction(id=f"create_publication:{self.id}", statements=(create,),
                                 description="the tables the slot decodes", **self._common()))
        if self.standalone:
            actions.append(SqlAction(
                id=f"create_slot:{self.id}", target=self.spec.on, transactional=False,
                statements=(sql.SQL("SELECT pg_create_logical_replication_slot({n}, 'pgoutput') WHERE NOT EXISTS ("
                                    "SELECT FROM pg_replication_slots WHERE slot_name = {n})").format(
                    n=sql.Literal(name)),),
                statement_timeout=self.setting("statement_timeout"),
                description="waits for the transactions running now to end (its consistent point)"))
        return actions

    def _logical_verify(self, ctx: StepContext) -> list[Check]:
        state = ctx.get(self.state_key) or {}
        name = state.get("name") or capture_name(ctx.run_id, self.id)
        with connect(ctx.dsns[self.spec.on], self.spec.on) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_publication_tables WHERE pubname = %s", (name,)).fetchone()
            published = int(row[0]) if row else 0
            checks = [Check("publication", published == len(state.get("tables") or []),
                            f"{name} lists {published} of {len(state.get('tables') or [])} table(s)")]
            if self.standalone:
                checks.append(Check("slot", slot_exists(conn, name), f"slot {name} on {self.spec.on}"))
            for display, wanted in self.spec.replica_identity.items():
                found = table_identities(conn, [parse_qualified_name(display)]).get(display)
                expected = "f" if wanted.lower() == "full" else "i"
                ok = found is not None and found.identity == expected
                checks.append(Check(f"replica identity {display}", ok, wanted))
        return checks

    def _logical_rollback(self, ctx: StepContext) -> list[Action]:
        state = ctx.get(self.state_key) or {}
        name = state.get("name") or capture_name(ctx.run_id, self.id)
        actions: list[Action] = [
            SqlAction(id=f"drop_slot:{self.id}", target=self.spec.on, transactional=False,
                      statements=drop_slot_statements(name), description=f"stop decoding {self.spec.on}"),
            SqlAction(id=f"drop_publication:{self.id}", target=self.spec.on, transactional=False,
                      statements=(drop_publication_sql(name),))]
        for display, (identity, index) in (state.get("identities") or {}).items():
            actions.append(SqlAction(id=f"restore_replica_identity:{self.id}:{display}",
                                     statements=(restore_identity_sql(parse_qualified_name(display), identity, index),),
                                     description="the replica identity the table had", **self._common()))
        return actions

    # -- method trigger ---------------------------------------------------------------------------

    def _trigger_plan(self) -> list[Action]:
        rel = self.spec.relation
        trigger = sql.Identifier(trigger_name(self.id))
        events = sql.SQL(" OR ").join(sql.SQL(e.upper()) for e in self.spec.row_events)
        when = sql.SQL(" WHEN ({})").format(sql.SQL(condition_sql(self.spec.when))) if self.spec.when else sql.SQL("")
        create = sql.SQL("CREATE TRIGGER {} AFTER {} ON {} FOR EACH ROW{} EXECUTE FUNCTION "
                         "bluegreen.capture_event({})").format(
            trigger, events, rel.ident, when, sql.Literal(self.id))
        register_row = sql.SQL(
            "INSERT INTO bluegreen.captures (capture, relation, events, condition) VALUES ({}, {}, {}, {})"
            " ON CONFLICT (capture) DO UPDATE SET relation = EXCLUDED.relation, events = EXCLUDED.events,"
            " condition = EXCLUDED.condition, installed_at = clock_timestamp()").format(
            sql.Literal(self.id), sql.Literal(rel.display), sql.Literal(list(self.spec.row_events)),
            sql.Literal(self.spec.when))
        return [
            SqlAction(id=f"install_capture_schema:{self.id}", statements=(SCHEMA_LOCK, *schema_statements()),
                      description="bluegreen.capture_events and the trigger function", **self._common()),
            SqlAction(id=f"create_capture_trigger:{self.id}:{rel.display}",
                      statements=(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(trigger, rel.ident),
                                  create, register_row),
                      description=f"capture {', '.join(self.spec.row_events)} on {rel.display}", **self._common()),
        ]

    def _trigger_verify(self, ctx: StepContext) -> list[Check]:
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

    def _trigger_rollback(self) -> list[Action]:
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
