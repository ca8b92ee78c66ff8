"""``kind: replay``: catch up captured events onto the other cluster before cutover; report the lag.

For each capture (``steps/capture.py``), the events whose transaction is not visible in the
snapshot its table was copied under are applied on the other cluster, exactly once and for every
row in commit order (``orchestrator/replay.py`` explains how), in rounds until the lag is at most
``max_lag`` events. With several captures it works in passes, one capture after another, until at the
end of a pass every capture's lag is under ``max_lag`` (:func:`catch_up_all`). The cutover drains the
rest once blue is fenced (``replay.drain``).

Locks: on the source, none (reads of ``bluegreen.capture_events``). On the target, row locks of the
rows replayed, one batch transaction at a time; no table lock.

Idempotent: progress is a row of ``bluegreen.replay_progress`` on the target, updated in the same
transaction as the events it covers; a re-run (after a crash too) continues from it and never applies
an event twice.

Undo: none. Replayed writes stay; undoing the snapshot step drops the copy and this progress with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal, Protocol

from psycopg import sql
from pydantic import Field

from ..actions import Action, SqlAction
from ..copy import PreconditionFailed
from ..errors import BluegreenError, UsageError
from ..logical import format_bytes, list_slots
from ..logical_replay import LogicalCaptureInfo, LogicalReplayer
from ..pgoutput import int_to_lsn
from ..replay import (
    AnyReplayer,
    CaptureInfo,
    Lag,
    RoundResult,
    captures_of,
    close_replayer,
    open_replayer,
    snapshot_for,
)
from ..spec import Duration, StepSpecBase
from . import register
from .base import Check, Step, StepContext


class ReplaySpec(StepSpecBase):
    """Apply captured events to the other cluster until the lag is small; report it."""

    kind: Literal["replay"]
    captures: list[str] | None = Field(None, min_length=1, description="capture step ids (default: every capture "
                                                                       "step of the plan)")
    snapshot: str | None = Field(None, description="the snapshot step whose snapshot green was copied under "
                                                   "(default: the plan's snapshot step before this one)")
    batch_size: int | None = Field(None, ge=1, le=100_000, description="events per target transaction "
                                                                      "(default: defaults.batch_size)")
    max_lag: int = Field(1000, ge=0, description="stop catching up once at most this many events are pending")
    timeout: Duration = Field(timedelta(minutes=30), description="fail if the lag is still above max_lag by then")


@register("replay", ReplaySpec)
class ReplayStep(Step[ReplaySpec]):
    """Catch-up of captured events; progress on the target, exactly once."""

    def _captures(self) -> list[CaptureInfo | LogicalCaptureInfo]:
        known = captures_of(self.loaded)
        ids = self.spec.captures if self.spec.captures is not None else list(known)
        unknown = [c for c in ids if c not in known]
        if unknown:
            raise UsageError(f"step {self.id!r}: no capture step {', '.join(map(repr, unknown))} in the plan"
                             f" (captures: {', '.join(known) or 'none'})")
        if not ids:
            raise UsageError(f"step {self.id!r}: the plan has no capture step to replay")
        return [known[c] for c in ids]

    def _snapshot_step(self) -> tuple[str, str] | None:
        """``(step id, source cluster)`` of the snapshot step this replay follows."""
        from .snapshot import SnapshotSpec

        steps = self.loaded.plan.steps
        if self.spec.snapshot is not None:
            for spec in steps:
                if spec.id == self.spec.snapshot and isinstance(spec, SnapshotSpec):
                    return spec.id, spec.from_
            raise UsageError(f"step {self.id!r}: no snapshot step {self.spec.snapshot!r} in the plan")
        found: tuple[str, str] | None = None
        for spec in steps:
            if spec.id == self.id:
                break
            if isinstance(spec, SnapshotSpec):
                found = (spec.id, spec.from_)
        return found

    @property
    def batch_size(self) -> int:
        return self.spec.batch_size or self.loaded.plan.defaults.batch_size

    def _logical_actions(self, ctx: StepContext, cap: LogicalCaptureInfo) -> list[Action]:
        name = cap.name(ctx.run_id)
        read = sql.SQL(
            "SELECT lsn, data FROM pg_logical_slot_peek_binary_changes({n}, <flushed LSN>, NULL, 'proto_version',"
            " '1', 'publication_names', {n})  -- a server-side cursor, {batch} changes per target transaction").format(
            n=sql.Literal(name), batch=sql.SQL(str(self.batch_size)))
        files = [f"{table}: {rule.replay.source}" for table, rule in cap.rules.items() if rule.replay is not None]
        apply = sql.SQL(
            "DELETE FROM <table> t USING unnest(<keys of the rows deleted>) d WHERE <key> = <key>;"
            " INSERT INTO <table> (<shared columns>) SELECT <each cast to its type> FROM unnest(<last image of each"
            " key>) ON CONFLICT (<key>) DO UPDATE SET ...  -- per table" + (
                "; replay files: " + ", ".join(files) if files else ""))
        return [
            SqlAction(id=f"read_changes:{self.id}:{cap.id}", target=cap.source, transactional=False,
                      statements=(read,), description="decoded by pgoutput, whole transactions in commit order"),
            SqlAction(id=f"apply_changes:{self.id}:{cap.id}", target=cap.target, transactional=True,
                      statements=(sql.SQL("SET LOCAL session_replication_role = replica") if not cap.fire_triggers
                                  else sql.SQL("SET LOCAL session_replication_role = origin"), apply,
                                  sql.SQL("UPDATE bluegreen.replay_progress SET applied_lsn = <commit LSN of the last"
                                          " transaction applied>, ... WHERE capture = {}").format(sql.Literal(cap.id))),
                      description="whole source transactions per target transaction, exactly once"),
            SqlAction(id=f"advance_slot:{self.id}:{cap.id}", target=cap.source, transactional=False,
                      statements=(sql.SQL("SELECT pg_replication_slot_advance({}, <what green has committed>)").format(
                          sql.Literal(name)),),
                      description="only after the target committed: the slot never passes what green holds")]

    def plan(self, ctx: StepContext) -> Sequence[Action]:
        actions: list[Action] = []
        for cap in self._captures():
            if isinstance(cap, LogicalCaptureInfo):
                actions.extend(self._logical_actions(ctx, cap))
                continue
            rel = cap.relation.ident
            read = sql.SQL(
                "SELECT seq, op, old, new FROM bluegreen.capture_events WHERE capture = {} AND seq > <after_seq>"
                " AND NOT pg_visible_in_snapshot(xid, <base_snapshot>)"
                " AND pg_visible_in_snapshot(xid, <round_snapshot>)"
                " ORDER BY seq  -- one cursor per round, fetched {} at a time").format(
                sql.Literal(cap.id), sql.SQL(str(self.batch_size)))
            actions.append(SqlAction(id=f"read_events:{self.id}:{cap.id}", target=cap.source, transactional=False,
                                     statements=(read,),
                                     description="round snapshot = pg_current_snapshot(); base = the copy's snapshot"))
            if cap.replay is None:
                apply: tuple[sql.Composed | sql.SQL, ...] = (
                    sql.SQL("DELETE FROM {} t USING jsonb_populate_recordset(NULL::{}, <last image of each deleted"
                            " key>) d WHERE <key> = <key>").format(rel, rel),
                    sql.SQL("INSERT INTO {} (<shared columns>) SELECT <shared columns> FROM jsonb_populate_recordset("
                            "NULL::{}, <last image of each upserted key>) ON CONFLICT (<key>) DO UPDATE SET ...")
                    .format(rel, rel))
            else:
                apply = tuple(sql.SQL(s.text + " /* per event, pipelined */")
                              for s in cap.replay.statements)
            actions.append(SqlAction(
                id=f"apply_events:{self.id}:{cap.id}", target=cap.target, transactional=True,
                statements=(sql.SQL("SET LOCAL session_replication_role = replica") if not cap.fire_triggers
                            else sql.SQL("SET LOCAL session_replication_role = origin"), *apply,
                            sql.SQL("UPDATE bluegreen.replay_progress SET after_seq = <last seq>, ..."
                                    " WHERE capture = {}").format(sql.Literal(cap.id))),
                description=f"batches of {self.batch_size} events, exactly once"))
        return actions

    def apply(self, ctx: StepContext) -> None:
        if not ctx.live:
            ctx.run_actions(self.plan(ctx))
            return
        assert ctx.run_id is not None
        snapshot_step = self._snapshot_step()
        state = ctx.get(f"snapshot:{snapshot_step[0]}") if snapshot_step else None
        deadline = time.monotonic() + self.spec.timeout.total_seconds()
        bases: list[tuple[CaptureInfo | LogicalCaptureInfo, str | None]] = []
        for cap in self._captures():
            base: str | None = None
            if isinstance(cap, LogicalCaptureInfo):  # the slot is the boundary; tables copied again say theirs
                bases.append((cap, None))
                continue
            if snapshot_step is not None and snapshot_step[1] == cap.source:
                base = snapshot_for(state, cap.relation)
                if base is None:
                    raise PreconditionFailed(
                        f"capture {cap.id!r}: snapshot step {snapshot_step[0]!r} recorded no snapshot for "
                        f"{cap.relation.display} (has it run, and does it copy that table?)")
            elif snapshot_step is None and cap.source == "blue":
                raise PreconditionFailed(f"capture {cap.id!r}: no snapshot step before {self.id!r} to say which "
                                         "events green already has; name one with 'snapshot:'")
            bases.append((cap, base))
        replayers: list[AnyReplayer] = []
        tallies: list[_Tally] = []
        try:
            for cap, base in bases:
                replayers.append(open_replayer(cap, ctx.dsns, ctx.run_id, self.batch_size,
                                               self._on_batch(ctx, cap, tallies, len(tallies)), get=ctx.get))
                if isinstance(replayers[-1], LogicalReplayer):
                    replayers[-1].fault_point = f"apply_changes:{self.id}:{cap.id}"
                replayers[-1].setup(base)
                tallies.append(_Tally(cap, replayers[-1]))
            passes = catch_up_all(tallies, self.spec.max_lag, deadline, lambda t: self._on_round(ctx, t))
            for tally, replayer in zip(tallies, replayers, strict=True):
                self._finish(ctx, tally, replayer.progress().applied, passes)
        finally:
            for replayer in replayers:
                close_replayer(replayer)

    @staticmethod
    def _on_batch(ctx: StepContext, cap: CaptureInfo | LogicalCaptureInfo, tallies: list[_Tally], index: int
                  ) -> Callable[[int, int], None]:
        """Progress within a round: the capture's events applied so far in this step (``tallies[index]``)."""
        logical = isinstance(cap, LogicalCaptureInfo)

        def on_batch(done: int, position: int) -> None:
            before = tallies[index].applied if index < len(tallies) else 0
            where = f"up to {int_to_lsn(position)}" if logical else f"up to seq {position}"
            ctx.progress(f"replay {cap.id} (round, {where})", before + done, None,
                         "changes" if logical else "events")
        return on_batch

    @staticmethod
    def _on_round(ctx: StepContext, tally: _Tally) -> None:
        ctx.progress(f"replay {tally.capture.id}: lag {tally.lag.events:,} events, {tally.lag.seconds:.1f}s",
                     tally.applied, None, "events applied")

    def _finish(self, ctx: StepContext, tally: _Tally, total_applied: int, passes: int) -> None:
        cap, lag = tally.capture, tally.lag
        seconds = time.monotonic() - tally.started
        rate = tally.applied / seconds if seconds else 0.0
        ctx.put(f"replay:{self.id}:{cap.id}", {"applied": tally.applied, "total_applied": total_applied,
                                               "quarantined": tally.quarantined, "rounds": tally.rounds,
                                               "passes": passes, "lag_events": lag.events,
                                               "lag_seconds": round(lag.seconds, 3), "seconds": round(seconds, 3)})
        held = f", {tally.quarantined:,} of them added to the quarantine" if tally.quarantined else ""
        ctx.reporter.note(f"replay {cap.id} onto {cap.target}: {tally.applied:,} events in {tally.rounds} round(s) "
                          f"({rate:,.0f}/s){held}; lag {lag.events:,} events, oldest {lag.seconds:.1f}s")
        if lag.events > self.spec.max_lag:
            raise BluegreenError(f"replay of {cap.id!r} did not catch up within {self.spec.timeout}: "
                                 f"{lag.events:,} events still pending (max_lag {self.spec.max_lag:,})")

    def verify(self, ctx: StepContext) -> Sequence[Check]:
        assert ctx.run_id is not None
        checks: list[Check] = []
        for cap in self._captures():
            with ctx.connect(cap.target) as conn:
                row = conn.execute(
                    "SELECT rounds, applied, round_snapshot IS NULL FROM bluegreen.replay_progress"
                    " WHERE run_id = %s AND capture = %s", (ctx.run_id, cap.id)).fetchone()
            if row is None:
                checks.append(Check(f"replay {cap.id}", False, f"no progress on {cap.target}"))
                continue
            checks.append(Check(f"replay {cap.id}", int(row[0]) >= 1,
                                f"{row[1]} events applied in {row[0]} round(s) on {cap.target}"))
            if isinstance(cap, LogicalCaptureInfo):
                checks.append(self._slot_check(ctx, cap))
        return checks

    def _slot_check(self, ctx: StepContext, cap: LogicalCaptureInfo) -> Check:
        """The WAL the capture's slot holds on its cluster, against its ``max_retained_wal``."""
        from ..steps.capture import CaptureSpec

        spec = next(s for s in self.loaded.plan.steps if isinstance(s, CaptureSpec) and s.id == cap.id)
        with ctx.connect(cap.source) as conn:
            slot = next((s for s in list_slots(conn) if s.name == cap.name(ctx.run_id)), None)
        if slot is None:
            return Check(f"slot {cap.id}", False, f"slot {cap.name(ctx.run_id)} is gone from {cap.source}")
        retained = slot.retained or 0
        return Check(f"slot {cap.id}", retained <= spec.max_retained_wal,
                     f"{slot.name} retains {format_bytes(retained)} of WAL on {cap.source}"
                     f" (max_retained_wal {format_bytes(spec.max_retained_wal)})")


class _Catcher(Protocol):
    def catch_up(self, max_lag: int, deadline: float,
                 on_round: Callable[[RoundResult, Lag], None] | None = None) -> Lag: ...

    def lag(self) -> Lag: ...


@dataclass
class _Tally:
    """One capture's replayer and what it has done in this step."""

    capture: CaptureInfo | LogicalCaptureInfo
    replayer: _Catcher
    applied: int = 0
    quarantined: int = 0
    rounds: int = 0
    lag: Lag = field(default_factory=lambda: Lag(0, 0.0))
    started: float = field(default_factory=time.monotonic)


def catch_up_all(tallies: Sequence[_Tally], max_lag: int, deadline: float,
                 on_round: Callable[[_Tally], None] = lambda tally: None) -> int:
    """Catch every capture up in passes until, at the end of a pass, each one's lag is at most ``max_lag``.

    A pass catches up each capture in turn; while it works on one, the others' backlogs grow again with
    the traffic, so one pass is not enough when several tables are busy (at 1M Hydra tokens a single pass
    left the first capture thousands of events behind). The lag of every capture is measured again after
    the pass; if one is above ``max_lag``, another pass starts (cheap for those already caught up: one
    round). Stops at the deadline too. Returns the number of passes.
    """
    passes = 0
    while True:
        passes += 1
        for tally in tallies:
            def counted(result: RoundResult, lag: Lag, tally: _Tally = tally) -> None:
                tally.applied += result.events
                tally.quarantined += result.quarantined
                tally.rounds += 1
                tally.lag = lag
                on_round(tally)

            tally.lag = tally.replayer.catch_up(max_lag, deadline, counted)
        for tally in tallies:
            tally.lag = tally.replayer.lag()
        if all(t.lag.events <= max_lag for t in tallies) or time.monotonic() > deadline:
            return passes
