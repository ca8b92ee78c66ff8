"""``kind: cutover``: switch every client from blue to green inside one bounded pause.

Order: gates (no session on blue idle in a transaction or older than ``max_xact_age``, no invalid
index on green, every switch target usable, sequences readable), a catch-up of the ``drain`` captures
outside the pause (its connections are kept for the drain inside it), then PAUSE every PgBouncer with our
own deadline (PAUSE has none; past it the pool is RESUMEd and the attempt is retried, then the step
fails cleanly), fence blue, drain the captured events, set green's sequences past blue's, run all
switches concurrently (all-or-nothing), RESUME. The pause (PAUSE issued to RESUME returned) is
measured and reported.

The stall is bounded by ``pause_budget``: PAUSE, the fence, the drain and the sequences must all fit in
it, counted from the first PAUSE. Past it, the drain stops (between batches, or by cancelling the batch
running on green, which rolls back with its progress), blue is unfenced, the pool RESUMEd on blue, and the
attempt retried like a PAUSE that timed out; what the drain applied stays applied, so the next attempt has
less to do. The switches are not cut short (they are all-or-nothing): the stall is at most the budget
plus the switches' own time.

Locks: fencing sets ``default_transaction_read_only`` on blue's database (all roles, new sessions)
and terminates the other sessions of that database (not bluegreen's own); ``setval`` on green takes
a row lock on each sequence for an instant. Clients see a stall, never an error.

Idempotent and crash-safe: each phase is recorded in the run state before it starts; a re-run after
a crash inside the pause first puts everything back to blue (switches, fence, RESUME), then runs the
whole cutover again. Undo (rollback): PAUSE, fence green and replay onto blue what the ``reverse``
captures recorded on green since the cutover (reverse capture), switches back to blue, unfence both,
RESUME.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql
from pydantic import Field, model_validator

from .. import replay, secrets
from ..actions import Action, CommandAction, NoteAction, SqlAction
from ..db import connect
from ..errors import BluegreenError
from ..faults import fault
from ..logical import SchemaChanged, SlotLost
from ..logical_replay import LogicalReplayer
from ..pgbouncer import PauseTimeout, PgBouncerControl, PgBouncerError
from ..spec import Duration, Model, StepSpecBase, Target
from ..switches import Switch, command_switch, http_switch, pgbouncer_switch, switch_all
from . import register
from .base import Check, Step, StepContext

GATES = ("sessions", "invalid_indexes", "targets", "sequences", "lag")


class PauseBudgetSpent(PauseTimeout):
    """The phases inside the pause outran ``pause_budget``; everything was put back on blue (retried)."""


class PgBouncerSwitchSpec(Model):
    admin_dsn: str = Field(description="the PgBouncer admin console (dbname=pgbouncer)")
    ini: str = Field(description="pgbouncer.ini: its [databases] entry is rewritten, then RELOAD")
    database: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,63}$", description="the database entry clients use")


class HttpSwitchSpec(Model):
    url: str
    method: str = "POST"
    body: str | None = None
    expect: int = 200
    back_url: str | None = Field(None, description="called to send traffic back to blue")
    back_method: str = "POST"


class SwitchSpec(Model):
    """Exactly one of ``pgbouncer``, ``command`` or ``http``."""

    name: str | None = None
    pgbouncer: PgBouncerSwitchSpec | None = None
    command: list[str] | None = Field(None, min_length=1, description="argv run to switch to green")
    back: list[str] | None = Field(None, min_length=1, description="argv run to switch back to blue")
    env: dict[str, str] = Field(default_factory=dict)
    http: HttpSwitchSpec | None = None
    timeout: Duration = timedelta(seconds=30)

    @model_validator(mode="after")
    def _exactly_one(self) -> SwitchSpec:
        given = [k for k in ("pgbouncer", "command", "http") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a switch is exactly one of 'pgbouncer', 'command' or 'http'")
        if self.back is not None and self.command is None:
            raise ValueError("'back' goes with 'command'")
        return self


class CutoverSpec(StepSpecBase):
    """The simultaneous switch from blue to green inside a bounded pause."""

    kind: Literal["cutover"]
    switches: list[SwitchSpec] = Field(min_length=1)
    pause_budget: Duration = Field(timedelta(seconds=2), description="how long clients may stall: PAUSE, fence, "
                                   "drain and sequences must fit in it, or traffic resumes on blue and it retries")
    pause_retries: int = Field(2, ge=0, le=20)
    retry_wait: Duration = timedelta(seconds=1)
    max_xact_age: Duration = Field(timedelta(seconds=5), description="gate: longest transaction on blue")
    max_lag: int = Field(10_000, ge=0, description="gate: most captured events not yet replayed (drain)")
    fence: bool = Field(True, description="make blue read-only and end its other sessions")
    sequences: Literal["sync", "skip"] = "sync"
    drain: list[str] = Field(default_factory=list, description="captures on blue whose last events are replayed "
                                                              "onto green inside the pause")
    reverse: list[str] = Field(default_factory=list, description="captures on green (installed before the "
                                                                "cutover) whose events are replayed onto blue "
                                                                "when the cutover is rolled back")
    skip_gates: list[Literal["sessions", "invalid_indexes", "targets", "sequences", "lag"]] = Field(
        default_factory=list)

    def reference_problems(self, before: Sequence[StepSpecBase]) -> list[tuple[tuple[str | int, ...], str]]:
        from .capture import CaptureSpec

        captures = {step.id: step for step in before if isinstance(step, CaptureSpec)}
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for key, side, why in (("drain", "blue", "replayed onto green inside the pause"),
                               ("reverse", "green", "replayed onto blue on rollback")):
            for i, capture_id in enumerate(getattr(self, key)):
                capture = captures.get(capture_id)
                if capture is None:
                    problems.append(((key, i), f"no capture step {capture_id!r} before this cutover"
                                               f" ('{key}' lists captures on {side}, {why})"))
                elif capture.on != side:
                    problems.append(((key, i), f"capture {capture_id!r} is on {capture.on}: '{key}' lists"
                                               f" captures on {side}, {why}"))
        return problems


class GateFailed(BluegreenError):
    """A cutover precondition does not hold; nothing was paused."""


@register("cutover", CutoverSpec)
class Cutover(Step[CutoverSpec]):
    """Gates, PAUSE, fence, drain, sequences, switches, RESUME."""

    # -- description (dry run) ---------------------------------------------------------------------

    def _db(self, ctx: StepContext, side: str) -> str:
        from psycopg.conninfo import conninfo_to_dict

        return str(conninfo_to_dict(ctx.dsns[side]).get("dbname") or "postgres")

    def plan(self, ctx: StepContext) -> Sequence[Action]:
        blue_db = sql.Identifier(self._db(ctx, "blue"))
        actions: list[Action] = [NoteAction(f"gates:{self.id}", "blue+green", "gates: " + ", ".join(
            g for g in GATES if g not in self.spec.skip_gates))]
        bouncers = self._pgbouncers()
        for step in self._reverse_logical():
            actions.append(NoteAction(f"create_slot:{step.id}", step.spec.on, "SELECT pg_create_logical_replication"
                                      "_slot(<the reverse capture's slot>, 'pgoutput')  -- what clients write on "
                                      f"{step.spec.on} from the switch on, replayed onto blue if this is undone"))
        if self.spec.drain:
            actions.append(NoteAction(f"catch_up:{self.id}", "green", "before the pause, replay what "
                                      + ", ".join(self.spec.drain) + " captured so far (the drain inside it then"
                                      " has only the last events)"))
        actions.extend(NoteAction(f"pause:{self.id}:{b.database}", "pgbouncer",
                                  f"PAUSE {b.database}  -- deadline {self.spec.pause_budget.total_seconds():g}s,"
                                  f" {self.spec.pause_retries} retries") for b in bouncers)
        if self.spec.fence:
            actions.append(SqlAction(id=f"fence_blue:{self.id}", target="blue", transactional=False, statements=(
                sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(blue_db),
                sql.SQL("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        " AND application_name NOT LIKE 'bluegreen%'"))))
        if self.spec.drain:
            actions.append(NoteAction(f"drain:{self.id}", "green", "replay the events left in "
                                      + ", ".join(self.spec.drain)))
        if self.spec.sequences == "sync":
            actions.append(NoteAction(f"sync_sequences:{self.id}", "green",
                                      "SELECT setval(seq, greatest(<blue's last_value>, last_value), true)"
                                      " for every sequence of blue"))
        for i, switch in enumerate(self.spec.switches):
            name = self._switch_name(i, switch)
            if switch.command:
                actions.append(CommandAction(id=f"switch:{self.id}:{name}", argv=tuple(switch.command),
                                             env={**switch.env, "BLUEGREEN_SIDE": "green"},
                                             timeout=switch.timeout))
            elif switch.pgbouncer:
                actions.append(NoteAction(f"switch:{self.id}:{name}", "pgbouncer",
                                          f"{switch.pgbouncer.ini}: [databases] {switch.pgbouncer.database} ="
                                          " green's host, port, dbname; RELOAD"))
            elif switch.http:
                actions.append(NoteAction(f"switch:{self.id}:{name}", "http",
                                          f"{switch.http.method} {switch.http.url} (expect {switch.http.expect})"))
        actions.extend(NoteAction(f"resume:{self.id}:{b.database}", "pgbouncer", f"RESUME {b.database}")
                       for b in bouncers)
        return actions

    def _pgbouncers(self) -> list[PgBouncerSwitchSpec]:
        return [sw.pgbouncer for sw in self.spec.switches if sw.pgbouncer is not None]

    @staticmethod
    def _switch_name(index: int, sw: SwitchSpec) -> str:
        if sw.name:
            return sw.name
        if sw.pgbouncer:
            return f"pgbouncer-{sw.pgbouncer.database}"
        return f"{'command' if sw.command else 'http'}-{index}"

    def _switches(self, ctx: StepContext) -> list[Switch]:
        out: list[Switch] = []
        for i, sw in enumerate(self.spec.switches):
            name = self._switch_name(i, sw)
            timeout = sw.timeout.total_seconds()
            if sw.pgbouncer is not None:
                ini = Path(sw.pgbouncer.ini)
                out.append(pgbouncer_switch(name, sw.pgbouncer.admin_dsn,
                                            ini if ini.is_absolute() else ctx.base_dir / ini,
                                            sw.pgbouncer.database, ctx.dsns))
            elif sw.command is not None:
                argv = [str(ctx.base_dir / a) if a.startswith("./") else a for a in sw.command]
                back = [str(ctx.base_dir / a) if a.startswith("./") else a for a in sw.back or []]
                out.append(command_switch(name, argv, back or None, sw.env, timeout))
            elif sw.http is not None:
                out.append(http_switch(name, sw.http.url, sw.http.method, sw.http.body, sw.http.expect,
                                       sw.http.back_url, sw.http.back_method, timeout))
        return out

    def _controls(self) -> list[PgBouncerControl]:
        return [PgBouncerControl(p.admin_dsn, p.database, f"pgbouncer-{p.database}") for p in self._pgbouncers()]

    # -- the cutover -------------------------------------------------------------------------------

    def apply(self, ctx: StepContext) -> None:
        if not ctx.live:
            ctx.run_actions(self.plan(ctx))
            return
        key = f"cutover:{self.id}"
        state = ctx.get(key) or {}
        if state.get("phase") not in (None, "done", "reverted"):
            ctx.reporter.note(f"{self.id}: an earlier attempt stopped in phase {state['phase']!r};"
                              " sending traffic back to blue before trying again")
            self._back_to_blue(ctx, state)
            ctx.put(key, {"phase": "reverted"})
        switches = self._switches(ctx)
        self._gates(ctx, switches)
        controls = self._controls()
        attempts = self.spec.pause_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                pause, phases = self._attempt(ctx, key, switches, controls)
            except PauseTimeout as exc:
                ctx.put(key, {"phase": "reverted"})
                if attempt == attempts:
                    raise BluegreenError(f"{exc}; gave up after {attempts} attempt(s): traffic stays on blue") from None
                ctx.reporter.note(f"{exc}; retrying in {self.spec.retry_wait.total_seconds():g}s "
                                  f"(attempt {attempt + 1} of {attempts})")
                time.sleep(self.spec.retry_wait.total_seconds())
                continue
            breakdown = ", ".join(f"{name} {seconds * 1000:.0f}" for name, seconds in phases.items())
            ctx.put(key, {"phase": "done", "pause_ms": round(pause * 1000, 1), "attempts": attempt,
                          "phases_ms": [[name, round(seconds * 1000, 1)] for name, seconds in phases.items()]})
            ctx.reporter.note(f"{self.id}: clients paused for {pause * 1000:.0f} ms ({breakdown} ms);"
                              " traffic is on green")
            return

    def _attempt(self, ctx: StepContext, key: str, switches: list[Switch],
                 controls: list[PgBouncerControl]) -> tuple[float, dict[str, float]]:
        """One try: catch up, then PAUSE ... RESUME; returns the pause and its phases' seconds. On any failure,
        everything is back on blue when it raises."""
        assert ctx.run_id is not None
        self._start_reverse_slots(ctx)
        with replay.drainers(ctx.loaded, ctx.dsns, ctx.run_id, self.spec.drain, get=ctx.get) as drain_with:
            if drain_with:  # outside the pause: the drain inside it is left with only the last events
                with self._boundary(f"catch_up:{self.id}"):
                    caught = sum(replayer.drain().events for _, replayer in drain_with)
                ctx.reporter.note(f"{self.id}: caught up {caught} captured event(s) before the pause")
            return self._paused(ctx, key, switches, controls, drain_with)

    def _reverse_logical(self) -> list[Any]:
        from .capture import CaptureSpec, CaptureStep

        return [CaptureStep(spec, self.loaded) for spec in self.loaded.plan.steps
                if isinstance(spec, CaptureSpec) and spec.id in self.spec.reverse and spec.method == "logical"]

    def _start_reverse_slots(self, ctx: StepContext) -> None:
        """The slots of the ``reverse`` captures, made now (outside the pause): they decode what clients write on
        green from the switch on (and the drain's last few changes, which carry blue's own values back)."""
        for step in self._reverse_logical():
            with self._boundary(f"create_slot:{step.id}"):
                if step.start_slot(ctx):
                    ctx.reporter.note(f"{self.id}: slot of reverse capture {step.id} created on {step.spec.on}")

    def _paused(self, ctx: StepContext, key: str, switches: list[Switch], controls: list[PgBouncerControl],
                drain_with: list[tuple[str, replay.AnyReplayer]]) -> tuple[float, dict[str, float]]:
        """PAUSE ... RESUME (``drain_with``: the drain captures' open replayers)."""
        started = time.monotonic()
        budget = self.spec.pause_budget.total_seconds()
        deadline = started + budget
        paused: list[PgBouncerControl] = []
        fenced = False
        phases: dict[str, float] = {}

        @contextmanager
        def phase(name: str, action_id: str) -> Iterator[None]:
            """A phase of the pause: its crash points, and its time added to ``phases[name]``."""
            begun = time.monotonic()
            with self._boundary(action_id):
                yield
            phases[name] = phases.get(name, 0.0) + time.monotonic() - begun

        def within_budget(before: str) -> None:
            if time.monotonic() > deadline:
                raise PauseBudgetSpent(f"{self.id}: the pause budget ({budget:g}s) ran out before {before}")

        try:
            ctx.put(key, {"phase": "pausing"})
            for control in controls:
                with phase("PAUSE", f"pause:{self.id}:{control.database}"):
                    control.pause(self.spec.pause_budget.total_seconds())
                    paused.append(control)
            ctx.put(key, {"phase": "paused"})
            if self.spec.fence:
                with phase("fence", f"fence_blue:{self.id}"):
                    previous = self._fence(ctx)
                    fenced = True
                    ctx.put(key, {"phase": "fenced", "read_only_before": previous})
            if self.spec.drain:
                with phase("drain", f"drain:{self.id}"):
                    self._drain(ctx, drain_with, deadline)
            if self.spec.sequences == "sync":
                with phase("sequences", f"sync_sequences:{self.id}"):
                    self._sync_sequences(ctx)
            within_budget("the switches")
            ctx.put(key, {"phase": "switching", "read_only_before": None})
            names = [f"switch:{self.id}:{self._switch_name(i, sw)}" for i, sw in enumerate(self.spec.switches)]
            for name in names:
                fault("before", name)
            begun = time.monotonic()
            switch_all(switches, "green")
            phases["switches"] = time.monotonic() - begun
            for name in names:
                fault("after", name)
            ctx.put(key, {"phase": "switched"})
        except BaseException:
            if fenced:
                self._unfence(ctx)
            for control in paused:
                control.resume()
            raise
        for control in paused:
            with phase("RESUME", f"resume:{self.id}:{control.database}"):
                control.resume()
        return time.monotonic() - started, phases

    @staticmethod
    @contextmanager
    def _boundary(action_id: str) -> Iterator[None]:
        """The crash points of a phase the dry run renders as ``action_id`` (``orchestrator/faults.py``)."""
        fault("before", action_id)
        yield
        fault("after", action_id)

    # -- pieces ------------------------------------------------------------------------------------

    def _gates(self, ctx: StepContext, switches: list[Switch]) -> None:
        problems: list[str] = []
        checks: dict[str, Callable[[], list[str]]] = {
            "sessions": lambda: self._long_sessions(ctx),
            "invalid_indexes": lambda: self._invalid_indexes(ctx),
            "targets": lambda: self._targets(switches),
            "sequences": lambda: self._sequences_readable(ctx),
            "lag": lambda: self._lag(ctx),
        }
        for name in GATES:
            if name in self.spec.skip_gates:
                ctx.reporter.note(f"{self.id}: gate {name} skipped by the plan")
                continue
            found = checks[name]()
            if found:
                problems.append(f"{name}: " + "; ".join(found))
        if problems:
            raise GateFailed("cutover refused, nothing was paused: " + "; ".join(problems))

    def _long_sessions(self, ctx: StepContext) -> list[str]:
        age = self.spec.max_xact_age.total_seconds()
        with connect(ctx.dsns["blue"], "blue") as conn:
            rows = conn.execute(
                "SELECT pid, usename, application_name, coalesce(client_addr::text, 'local'), state,"
                " extract(epoch FROM now() - xact_start)::numeric(12, 1)"
                " FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend' AND application_name NOT LIKE 'bluegreen%%'"
                " AND state <> 'idle' AND xact_start < now() - %s * interval '1s'"
                " ORDER BY xact_start",
                (age,)).fetchall()
        return [f"session pid {r[0]} (user {r[1]}, application {r[2] or '-'}, from {r[3]}) is {r[4]}, in a"
                f" transaction for {r[5]}s (max_xact_age {age:g}s): it would stall PAUSE" for r in rows]

    def _invalid_indexes(self, ctx: StepContext) -> list[str]:
        with connect(ctx.dsns["green"], "green") as conn:
            rows = conn.execute("SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid").fetchall()
        return [f"index {r[0]} on green is invalid" for r in rows]

    @staticmethod
    def _targets(switches: list[Switch]) -> list[str]:
        problems = []
        for switch in switches:
            try:
                switch.check()
            except (BluegreenError, psycopg.Error, OSError) as exc:
                problems.append(secrets.redact(str(exc)))
        return problems

    def _sequences_readable(self, ctx: StepContext) -> list[str]:
        if self.spec.sequences == "skip":
            return []
        problems = []
        for side in ("blue", "green"):
            try:
                with connect(ctx.dsns[side], side) as conn:
                    conn.execute("SELECT count(last_value) FROM pg_sequences")
            except psycopg.Error as exc:
                problems.append(f"cannot read sequences on {side}: {secrets.redact(str(exc).strip())}")
        return problems

    def _lag(self, ctx: StepContext) -> list[str]:
        if not self.spec.drain or ctx.run_id is None:
            return []
        try:
            lags = replay.lags(ctx.loaded, ctx.dsns, ctx.run_id, self.spec.drain, get=ctx.get,
                               cap=self.spec.max_lag + 1)
        except (SchemaChanged, SlotLost) as exc:
            return [str(exc)]
        return [f"capture {cid} has {'more than ' if lag.events > self.spec.max_lag else ''}{lag.events}"
                f" changes not replayed (max_lag {self.spec.max_lag}), the oldest {lag.seconds:.0f}s old: run its"
                " replay step first" for cid, lag in lags.items() if lag.events > self.spec.max_lag]

    def _fence(self, ctx: StepContext, side: Target = "blue") -> str | None:
        """Make a side read-only for every role and end its other sessions; return the previous setting."""
        db = self._db(ctx, side)
        with connect(ctx.dsns[side], side) as conn:
            row = conn.execute(
                "SELECT s.setting FROM pg_db_role_setting r CROSS JOIN unnest(r.setconfig) AS s(setting)"
                " WHERE r.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND r.setrole = 0 AND s.setting LIKE 'default_transaction_read_only=%'").fetchone()
            conn.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on")
                         .format(sql.Identifier(db)))
            others = ("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                      " AND backend_type = 'client backend' AND application_name NOT LIKE 'bluegreen%'")
            conn.execute(f"SELECT pg_terminate_backend(pid) FROM ({others}) s")
            # wait (up to 1 s) until they are gone: a write one committed after the drain's fence would be lost
            for _ in range(100):
                if not conn.execute(others).fetchone():
                    break
                time.sleep(0.01)
        return str(row[0]) if row else None

    def _unfence(self, ctx: StepContext, side: Target = "blue") -> None:
        db = self._db(ctx, side)
        with connect(ctx.dsns[side], side) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(sql.Identifier(db)))

    def _drain(self, ctx: StepContext, drain_with: list[tuple[str, replay.AnyReplayer]], deadline: float) -> None:
        """Replay the drain captures' last events onto green, within the pause budget (``deadline``)."""
        events = 0
        try:
            for _, replayer in drain_with:
                if isinstance(replayer, LogicalReplayer):
                    replayer.fault_point = f"drain:{self.id}"  # its crash point, after each batch it commits
                events += replayer.drain(deadline).events
        except replay.DrainDeadline as exc:
            raise PauseBudgetSpent(f"{self.id}: the pause budget ({self.spec.pause_budget.total_seconds():g}s)"
                                   f" ran out during the drain ({exc})") from None
        ctx.reporter.note(f"{self.id}: drained {events} captured event(s) onto green inside the pause")

    def _sync_sequences(self, ctx: StepContext) -> None:
        with connect(ctx.dsns["blue"], "blue") as blue:
            rows = blue.execute("SELECT schemaname, sequencename, last_value FROM pg_sequences"
                                " WHERE last_value IS NOT NULL AND schemaname NOT LIKE 'bluegreen%'").fetchall()
        if not rows:
            return
        with connect(ctx.dsns["green"], "green") as green, green.transaction():
            for schema, name, value in rows:
                exists = green.execute("SELECT to_regclass(%s) IS NOT NULL",
                                       (sql.Identifier(schema, name).as_string(green),)).fetchone()
                if exists and exists[0]:
                    green.execute(sql.SQL("SELECT setval({}, greatest({}, (SELECT last_value FROM {})), true)")
                                  .format(sql.Literal(sql.Identifier(schema, name).as_string(green)),
                                          sql.Literal(value), sql.Identifier(schema, name)))
        ctx.reporter.note(f"{self.id}: {len(rows)} sequence(s) on green set past blue's values")

    def _back_to_blue(self, ctx: StepContext, state: dict[str, Any]) -> int:
        """Undo an interrupted or completed cutover: PAUSE, reverse drain, switches to blue, unfence, RESUME.

        With ``reverse`` captures, green is fenced first (read-only, its other sessions ended) so that
        nothing is written there after the drain, then every event those captures recorded on green is
        replayed onto blue (blue's fence does not stop bluegreen's own sessions), and green is unfenced
        once traffic is back on blue. If the drain or a switch fails, traffic stays on green (switch_all
        reverts the switches it did), green is unfenced and blue keeps its fence, so exactly one side is
        writable; ``bluegreen rollback`` again retries, the drain where it stopped (its progress is kept
        on blue). Returns the events replayed onto blue.
        """
        controls = self._controls()
        for control in controls:
            try:
                control.pause(self.spec.pause_budget.total_seconds())
            except PgBouncerError as exc:
                ctx.reporter.note(f"{self.id}: {exc}; switching back without a pause")
        replayed = 0
        green_fenced = back = False
        try:
            # a reverse capture by logical decoding whose slot the cutover never made has nothing to carry back
            unstarted = {step.id for step in self._reverse_logical()
                         if (ctx.get(step.state_key) or {}).get("slot") != "created"}
            reverse = [c for c in self.spec.reverse if c not in unstarted]
            if reverse:
                if self.spec.fence:
                    self._fence(ctx, "green")
                    green_fenced = True
                assert ctx.run_id is not None
                results = replay.drain(ctx.loaded, ctx.dsns, ctx.run_id, reverse, from_start=True, get=ctx.get)
                replayed = sum(r.events for r in results.values())
                ctx.reporter.note(f"{self.id}: replayed {replayed} event(s) captured on green back onto blue")
            switch_all(self._switches(ctx), "blue")
            back = True
        finally:
            # one writable side: blue once traffic is back there, else green keeps it (and blue its fence)
            if self.spec.fence and back:
                self._unfence(ctx)
            if green_fenced:
                self._unfence(ctx, "green")
            for control in controls:
                control.resume()
        return replayed

    # -- verify and undo ---------------------------------------------------------------------------

    def verify(self, ctx: StepContext) -> Sequence[Check]:
        state = ctx.get(f"cutover:{self.id}") or {}
        checks = [Check("cutover finished", state.get("phase") == "done", f"phase {state.get('phase')!r}")]
        if "pause_ms" in state:
            phases = ", ".join(f"{name} {ms}" for name, ms in state.get("phases_ms") or [])
            checks.append(Check("pause", True, f"{state['pause_ms']} ms" + (f" ({phases} ms)" if phases else "")))
        green_params = _host_port(ctx.dsns["green"])
        for control in self._controls():
            backend = control.backend()
            where = (backend.host, str(backend.port)) if backend else None
            checks.append(Check(f"{control.name} points at green", where == green_params,
                                f"points at {where[0]}:{where[1]}" if where else "no entry"))
        if self.spec.fence:
            with connect(ctx.dsns["blue"], "blue") as conn:
                row = conn.execute("SELECT count(*) FROM pg_db_role_setting r CROSS JOIN unnest(r.setconfig) s(v)"
                                   " WHERE r.setdatabase = (SELECT oid FROM pg_database"
                                   " WHERE datname = current_database()) AND s.v = 'default_transaction_read_only=on'"
                                   ).fetchone()
            checks.append(Check("blue is fenced (read-only)", bool(row and row[0]), ""))
        return checks

    def undo(self, ctx: StepContext) -> bool:
        """Rollback: traffic back to blue through the same machinery, blue writable again."""
        if not ctx.live:
            return True
        replayed = self._back_to_blue(ctx, ctx.get(f"cutover:{self.id}") or {})
        ctx.put(f"cutover:{self.id}", {"phase": "reverted", "reverse_replayed": replayed})
        ctx.reporter.note(f"{self.id}: traffic is back on blue, blue is writable")
        return True


def _host_port(dsn: str) -> tuple[str, str]:
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)
    return str(params.get("host") or "127.0.0.1"), str(params.get("port") or "5432")

