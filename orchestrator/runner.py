"""Run a plan: plan -> apply -> verify each step, journal every transition, resume, roll back.

Crash safety: every action is journaled ``started`` before it runs and ``done`` after. A resumed
run skips ``done`` actions; an action ``started`` but not ``done`` is checked against its marker on
the target (transactional actions commit the marker with their work, so they are never applied
twice); other actions run again and are idempotent by contract.

``BLUEGREEN_FAULT=before:<action-id>`` or ``after:<action-id>`` makes the process SIGKILL itself at
that point (after the action's commit, before its journal write, for ``after``): the fault-injection
hook of the crash tests.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from . import facts, secrets
from .actions import Action, ActionResult, SqlAction
from .db import Executor, LiveExecutor, SqlEmitter, connect, readonly
from .errors import (
    ActionFailed,
    BluegreenError,
    NothingToRollBack,
    PlanError,
    RollbackFailed,
    StepFailed,
    UsageError,
    ValidationFailed,
)
from .faults import fault
from .journal import Journal
from .logical import GuardedSlot, WalGuard, capture_name
from .plan import LoadedPlan
from .report import RunReport, StatsReader, StepReport, delta
from .reporter import Reporter
from .sampler import Sampler, SamplingReporter
from .steps import Step, StepContext, build_step
from .steps.base import PreflightContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    dry_run: bool = False
    offline: bool = False
    restart: bool = False
    sample: bool = True  # the time series of the run into the journal (orchestrator/sampler.py)


class Runner:
    """Drive one plan; the CLI's ``run``, ``rollback`` and ``status`` call into it."""

    def __init__(self, loaded: LoadedPlan, reporter: Reporter | None = None) -> None:
        self.loaded = loaded
        self.plan = loaded.plan
        self.reporter = reporter or Reporter()
        self.steps: list[Step[Any]] = [build_step(spec, loaded) for spec in self.plan.steps]
        self.dsns = {"blue": self.plan.clusters.blue.dsn, "green": self.plan.clusters.green.dsn}
        self.last_report: RunReport | None = None  # also set when a run fails, for --report

    # -- entry points ------------------------------------------------------------------------------

    def run(self, options: RunOptions = RunOptions()) -> RunReport:
        """Execute (or render, with ``dry_run``) the plan, resuming its unfinished run if any.

        :raises StepFailed: a step failed (``rolled_back`` tells whether the run was undone).
        :raises RunInProgress: another process holds this plan's lock.
        :raises PlanChanged: the file changed under an unfinished run (use ``restart``).
        """
        if options.dry_run:
            return self._dry_run(options.offline)
        if options.offline:
            raise UsageError("--offline renders only: use it with --dry-run")
        self._preflight()
        self._steps_preflight(options.restart)
        journal = Journal.open(self.dsns[self.plan.control], self.plan.control, self.plan.name)
        try:
            journal.ensure_schema()
            journal.lock(self.plan.name)
            if not options.restart:
                latest = journal.latest(self.plan.name)
                if latest and latest.finished_at and latest.status == "done" \
                        and latest.plan_sha256 == self.loaded.sha256:
                    report = RunReport(self.plan.name, "run", latest.run_id, "done")
                    report.error = (f"plan already completed by run {latest.run_id} at "
                                    f"{latest.finished_at:%Y-%m-%d %H:%M:%S %Z}; --restart runs it again")
                    return report
            abandoned = journal.unfinished(self.plan.name) if options.restart else None
            record, resumed = journal.begin(self.plan.name, self.loaded.sha256, options.restart)
            if abandoned is not None:  # what only a running plan needs (replication slots) goes with it
                _Execution(self, journal, abandoned.run_id, True, mode="abort").finish_steps()
            execution = _Execution(self, journal, record.run_id, resumed, sample=options.sample)
            self.last_report = execution.report
            return execution.run()
        finally:
            journal.close()

    def rollback(self, sample: bool = True) -> RunReport:
        """Undo the latest run's completed steps in reverse order (``bluegreen rollback``)."""
        self._preflight()
        journal = Journal.open(self.dsns[self.plan.control], self.plan.control, self.plan.name)
        try:
            if not journal.exists():
                raise NothingToRollBack(f"no journal on {self.plan.control}: plan {self.plan.name!r} never ran")
            journal.lock(self.plan.name)
            latest = journal.latest(self.plan.name)
            if latest is None or latest.status in ("rolled_back", "abandoned"):
                raise NothingToRollBack(f"plan {self.plan.name!r} has no run to roll back"
                                        + (f" (run {latest.run_id} is {latest.status})" if latest else ""))
            execution = _Execution(self, journal, latest.run_id, True, mode="rollback", sample=sample)
            self.last_report = execution.report
            return execution.rollback_only()
        finally:
            journal.close()

    def abort(self) -> RunReport:
        """End the plan's unfinished run where it stands (``bluegreen abort``): release what only a running plan
        holds (replication slots and publications), mark it abandoned, undo nothing else.

        Also drops ``bluegreen_`` slots of this plan's earlier runs that a crash left behind.
        """
        self._preflight()
        journal = Journal.open(self.dsns[self.plan.control], self.plan.control, self.plan.name)
        try:
            if not journal.exists():
                raise NothingToRollBack(f"no journal on {self.plan.control}: plan {self.plan.name!r} never ran")
            journal.lock(self.plan.name)
            runs = journal.runs_of(self.plan.name)
            current = next((r for r in runs if r.finished_at is None), None)
            report = RunReport(self.plan.name, "abort", current.run_id if current else None, "abandoned")
            self.last_report = report
            for run in runs:
                execution = _Execution(self, journal, run.run_id, True, mode="abort")
                execution.finish_steps()
            if current is not None:
                journal.set_status(current.run_id, "abandoned", error="aborted by 'bluegreen abort'")
            else:
                report.status = "nothing to abort"
            return report
        finally:
            journal.close()

    def status(self) -> dict[str, Any]:
        """The latest run of this plan from the journal, and the replication slots on both clusters, read-only."""
        with readonly(self.dsns[self.plan.control], self.plan.control) as conn:
            journal = Journal(conn)
            runs = journal.runs_of(self.plan.name) if journal.exists() else []
            run = runs[0] if runs else None
            out: dict[str, Any] = {"plan": self.plan.name, "run": None, "steps": [],
                                   "slots": self._slots({r.run_id: r for r in runs})}
            if run is None:
                return out
            states = journal.step_states(run.run_id)
            counts = journal.action_counts(run.run_id)
            steps = []
            for step in self.steps:
                phases = {phase: state for (sid, phase), (state, _) in states.items() if sid == step.id}
                detail = states.get((step.id, "verify"), ("", None))[1] or {}
                steps.append({"id": step.id, "kind": step.kind, "apply": phases.get("apply", "pending"),
                              "verify": phases.get("verify", "pending"), "rollback": phases.get("rollback", ""),
                              "seconds": detail.get("seconds"),
                              "actions_done": counts.get(step.id, 0)})
            out["run"] = {"run_id": run.run_id, "status": run.status, "attempt": run.attempt,
                          "started_at": run.started_at.isoformat(),
                          "finished_at": run.finished_at.isoformat() if run.finished_at else None,
                          "error": run.error}
            out["steps"] = steps
            return out

    def _slots(self, runs: dict[int, Any]) -> list[dict[str, Any]]:
        """Every ``bluegreen_`` slot on blue and green, with the WAL it retains and whose it is."""
        from .logical import capture_name, list_slots
        from .steps.capture import CaptureSpec

        ours = {capture_name(run_id, spec.id): run for run_id, run in runs.items()
                for spec in self.plan.steps if isinstance(spec, CaptureSpec) and spec.method == "logical"}
        out: list[dict[str, Any]] = []
        for cluster, dsn in self.dsns.items():
            try:
                with readonly(dsn, cluster) as conn:
                    slots = list_slots(conn)
            except BluegreenError:
                continue
            for slot in slots:
                run = ours.get(slot.name)
                if run is None:
                    owner = "not this plan's"
                elif run.finished_at is None:
                    owner = f"run {run.run_id} ({run.status})"
                else:
                    owner = f"left by run {run.run_id} ({run.status}): 'bluegreen abort' drops it"
                out.append({"cluster": cluster, "slot": slot.name, "database": slot.database, "active": slot.active,
                            "retained_wal_bytes": slot.retained, "owner": owner})
        return out

    # -- helpers -----------------------------------------------------------------------------------

    def _preflight(self) -> None:
        """Connect to every cluster before touching any: an unreachable DSN changes nothing."""
        for name, dsn in self.dsns.items():
            connect(dsn, name).close()

    def _steps_preflight(self, restart: bool) -> None:
        """Each step's read-only checks (``Step.preflight``) before the run touches anything, the journal included.

        Steps the unfinished run already completed are not checked again.

        :raises PlanError: every problem found, at its step's line (exit 2; nothing was created).
        """
        run_id: int | None = None
        done: set[str] = set()
        get: Any = lambda key: None  # noqa: E731
        with readonly(self.dsns[self.plan.control], self.plan.control) as conn:
            journal = Journal(conn)
            run = journal.unfinished(self.plan.name) if journal.exists() and not restart else None
            if run is not None and run.plan_sha256 == self.loaded.sha256:
                run_id = run.run_id
                done = {sid for (sid, phase), (state, _) in journal.step_states(run_id).items()
                        if phase == "verify" and state == "done"}
                states = {key: journal.get_state(run_id, key) for key in journal.state_keys(run_id)}
                get = states.get
        ctx = PreflightContext(dict(self.dsns), run_id, get)
        problems = [self.loaded.problem(i, loc, message)
                    for i, step in enumerate(self.steps) if step.id not in done
                    for loc, message in step.preflight(ctx)]
        if problems:
            raise PlanError(problems)

    def _dry_run(self, offline: bool) -> RunReport:
        report = RunReport(self.plan.name, "dry-run", status="rendered")
        done: set[str] = set()
        if not offline:
            self._preflight()
            with readonly(self.dsns[self.plan.control], self.plan.control) as conn:
                journal = Journal(conn)
                run = journal.unfinished(self.plan.name) if journal.exists() else None
                if run is not None and run.plan_sha256 == self.loaded.sha256:
                    done = journal.actions(run.run_id, "apply", "done")
                    report.run_id = run.run_id
                    report.resumed = True
        emitter = SqlEmitter()
        self.reporter.run_started(self.plan.name, report.run_id, "dry-run", report.resumed)
        for step in self.steps:
            step_report = StepReport(step.id, step.kind, "rendered")
            report.steps.append(step_report)
            self.reporter.step_started(step.id, step.kind, "apply")

            def render(actions: Sequence[Action], step_id: str = step.id, sr: StepReport = step_report) -> None:
                for action in actions:
                    if action.id in done:
                        sr.actions_skipped += 1
                        self.reporter.action_finished(step_id, action, None, "done in an earlier attempt")
                        continue
                    result = emitter.execute(action, None)
                    sr.actions_run += 1
                    report.rendered.append({"step": step_id, "action": action.id, "sql": result.rendered})
                    self.reporter.action_finished(step_id, action, result)

            ctx = StepContext(self.loaded, report.run_id, False, render,
                              self._no_connect if offline else self._readonly_connect,
                              dsns=dict(self.dsns), reporter=self.reporter, step_id=step.id)
            step.apply(ctx)
            self.reporter.step_finished(step.id, "apply", True)
        return report

    @staticmethod
    def _no_connect(target: str) -> Any:
        raise UsageError(f"this step needs to read {target} to plan; run --dry-run without --offline")

    def _readonly_connect(self, target: str) -> Any:
        return readonly(self.dsns[target], target)


class _Execution:
    """One live attempt at a run: owns the executor, the stats reader and the report."""

    def __init__(self, runner: Runner, journal: Journal, run_id: int, resumed: bool, mode: str = "run",
                 sample: bool = True) -> None:
        self.runner = runner
        self.journal = journal
        self.run_id = run_id
        self.sampler: Sampler | None = None
        self._phases: dict[str, str] = {}
        self.reporter = runner.reporter
        if sample:
            self.sampler = Sampler(runner.loaded, runner.dsns, runner.plan.control, run_id)
            self.reporter = SamplingReporter(runner.reporter, self.sampler)
        env = {"BLUEGREEN_BLUE_DSN": runner.dsns["blue"], "BLUEGREEN_GREEN_DSN": runner.dsns["green"],
               "BLUEGREEN_RUN_ID": str(run_id), "BLUEGREEN_PLAN": runner.plan.name}
        self.executor: Executor = LiveExecutor(runner.dsns, env)
        self.report = RunReport(runner.plan.name, mode, run_id, "running", resumed)
        self.guard = WalGuard(runner.dsns, [])
        self.report.steps = [StepReport(s.id, s.kind) for s in runner.steps]
        self.started = time.monotonic()

    def _ctx(self, step: Step[Any], phase: str) -> StepContext:
        def run_actions(actions: Sequence[Action]) -> None:
            self._run_actions(step, actions, phase)

        return StepContext(self.runner.loaded, self.run_id, True, run_actions,
                           lambda target: readonly(self.runner.dsns[target], target),
                           dsns=dict(self.runner.dsns),
                           put=lambda key, value: self._put(step, key, value),
                           get=lambda key: self.journal.get_state(self.run_id, key),
                           reporter=self.reporter, step_id=step.id)

    def _guard(self) -> WalGuard:
        """The WAL guard of this run's logical captures (``max_retained_wal`` each)."""
        from .steps.capture import CaptureSpec

        slots = [GuardedSlot(capture_name(self.run_id, spec.id), spec.on, spec.max_retained_wal)
                 for spec in self.runner.plan.steps if isinstance(spec, CaptureSpec) and spec.method == "logical"]
        return WalGuard(self.runner.dsns, slots, on_drop=self.reporter.note)

    def _put(self, step: Step[Any], key: str, value: Any) -> None:
        """Keep a step's run state; a change of its ``phase`` is also a mark on the run's timeline."""
        self.journal.put_state(self.run_id, key, value)
        phase = value.get("phase") if isinstance(value, dict) else None
        if self.sampler is not None and isinstance(phase, str) and self._phases.get(key) != phase:
            self._phases[key] = phase
            self.sampler.mark("phase", step.id, phase)

    @contextlib.contextmanager
    def _sampling(self) -> Iterator[None]:
        """The sampler runs while the block does, and stops (writing what is left) on every ending."""
        if self.sampler is not None:
            self.sampler.start()
        try:
            yield
        finally:
            if self.sampler is not None:
                self.sampler.stop()

    def run(self) -> RunReport:
        with self._sampling():
            return self._run()

    def _run(self) -> RunReport:
        self.reporter.run_started(self.runner.plan.name, self.run_id, "run", self.report.resumed)
        states = self.journal.step_states(self.run_id)
        stats = StatsReader(self.runner.dsns)
        self.guard = self._guard().start()
        try:
            for step in self.runner.steps:
                state = states.get((step.id, "verify"))
                if state is not None and state[0] == "done":
                    self._restore_step_report(step, state[1])
                    self.reporter.step_skipped(step.id, "completed in an earlier attempt")
                    continue
                self._check_guard()
                self._run_step(step, stats)
            self._check_guard()
        except BaseException as exc:
            self.guard.stop()
            self._fail(exc)
            raise
        finally:
            self.guard.stop()
            stats.close()
            self.executor.close()
        self.report.status = "done"
        self.report.seconds = time.monotonic() - self.started
        self.finish_steps()
        self.journal.set_status(self.run_id, "done", report=self.report.to_dict())
        return self.report

    def finish_steps(self) -> None:
        """Every step's :meth:`Step.finish` (the run is over): slots and publications go, last step first.

        A failure is reported and the others still run: nothing here undoes a step's effect.
        """
        for step in reversed(self.runner.steps):
            try:
                step.finish(self._ctx(step, "rollback"))
            except Exception as exc:
                self.reporter.note(f"step {step.id!r}: could not release what it held:"
                                   f" {secrets.redact(str(exc))}; 'bluegreen abort' tries again")

    def _check_guard(self) -> None:
        """Look at the slots now (one query per cluster) and fail if one retains too much WAL (or was dropped)."""
        if self.guard.slots:
            self.guard.poll()
        self.guard.check()

    def _restore_step_report(self, step: Step[Any], detail: dict[str, Any] | None) -> None:
        sr = self.report.step(step.id)
        sr.status = "done"
        detail = detail or {}
        sr.seconds = float(detail.get("seconds", 0.0))
        sr.actions_run = int(detail.get("actions_run", 0))
        sr.stats = detail.get("stats", {})
        sr.checks = detail.get("checks", [])
        sr.facts = detail.get("facts", {})

    def _run_step(self, step: Step[Any], stats: StatsReader) -> None:
        sr = self.report.step(step.id)
        before = stats.read()
        started = time.monotonic()
        self.reporter.step_started(step.id, step.kind, "apply")
        self.journal.record(self.run_id, step.id, "apply", "started")
        try:
            step.apply(self._ctx(step, "apply"))
        except BaseException as exc:
            sr.facts = facts.collect(step, self._ctx(step, "apply"))
            self.journal.record(self.run_id, step.id, "apply", "failed", detail={"error": str(exc)})
            self.reporter.step_finished(step.id, "apply", False, secrets.redact(str(exc)))
            raise self._step_error(step, "apply", exc) from exc
        self.journal.record(self.run_id, step.id, "apply", "done")
        self.reporter.step_finished(step.id, "apply", True)

        self.reporter.step_started(step.id, step.kind, "verify")
        try:
            checks = list(step.verify(self._ctx(step, "verify")))
        except BaseException as exc:
            self.journal.record(self.run_id, step.id, "verify", "failed", detail={"error": str(exc)})
            raise self._step_error(step, "verify", exc) from exc
        sr.checks = [{"name": c.name, "ok": c.ok, "detail": secrets.redact(c.detail)} for c in checks]
        sr.facts = facts.collect(step, self._ctx(step, "verify"))
        failed = [c for c in checks if not c.ok]
        self.reporter.step_finished(step.id, "verify", not failed,
                                    "; ".join(f"{c.name}: {c.detail}" for c in failed))
        if failed:
            self.journal.record(self.run_id, step.id, "verify", "failed", detail={"checks": sr.checks})
            raise StepFailed(step.id, "verify", "; ".join(f"{c.name}: {c.detail}" for c in failed))
        self.runner_backends_flush(stats)
        sr.stats = delta(before, stats.read())
        sr.seconds = time.monotonic() - started
        sr.status = "done"
        self.journal.record(self.run_id, step.id, "verify", "done",
                            detail={"seconds": sr.seconds, "actions_run": sr.actions_run, "stats": sr.stats,
                                    "checks": sr.checks, "facts": sr.facts})

    def runner_backends_flush(self, stats: StatsReader) -> None:
        """Close the executor's connections and wait for their backends to flush their stats."""
        stats.wait_gone(self.executor.close())

    def _step_error(self, step: Step[Any], phase: str, exc: BaseException) -> BaseException:
        sr = self.report.step(step.id)
        sr.status = "failed"
        sr.error = secrets.redact(str(exc))
        if isinstance(exc, StepFailed | ValidationFailed | KeyboardInterrupt):
            return exc
        if isinstance(exc, ActionFailed):
            return StepFailed(step.id, phase, str(exc), exc.action_id)
        if isinstance(exc, BluegreenError):
            return StepFailed(step.id, phase, str(exc))
        log.debug("unexpected error in step %s", step.id, exc_info=exc)
        return StepFailed(step.id, phase, f"{type(exc).__name__}: {exc}")

    def _run_actions(self, step: Step[Any], actions: Sequence[Action], phase: str) -> None:
        done = self.journal.actions(self.run_id, phase, "done")
        started = self.journal.actions(self.run_id, phase, "started")
        sr = self.report.step(step.id)
        for action in actions:
            if action.id in done:
                sr.actions_skipped += 1
                self.reporter.action_finished(step.id, action, None, "done in an earlier attempt")
                continue
            if action.id in started and isinstance(action, SqlAction) and action.transactional \
                    and self.executor.applied(action, self.run_id):
                self.journal.record(self.run_id, step.id, phase, "done", action_id=action.id,
                                    detail={"recovered": "committed before the crash; not run again"})
                sr.actions_skipped += 1
                self.reporter.action_finished(step.id, action, None, "committed before the interruption")
                continue
            self.journal.record(self.run_id, step.id, phase, "started", action_id=action.id)
            self.reporter.action_started(step.id, action)
            fault("before", action.id)
            try:
                result = self.executor.execute(action, self.run_id)
            except ActionFailed as exc:
                self.journal.record(self.run_id, step.id, phase, "failed", action_id=action.id,
                                    detail={"error": str(exc)})
                raise
            fault("after", action.id)
            self.journal.record(self.run_id, step.id, phase, "done", action_id=action.id,
                                detail=_result_detail(result))
            sr.actions_run += 1
            self.reporter.action_finished(step.id, action, result)

    def _fail(self, exc: BaseException) -> None:
        self.report.seconds = time.monotonic() - self.started
        self.report.status = "failed"
        self.report.error = secrets.redact(str(exc) or type(exc).__name__)
        if isinstance(exc, KeyboardInterrupt):
            self.report.error = "interrupted; run the same plan again to resume"
        failed_step = next((s for s in self.report.steps if s.status == "failed"), None)
        policy = self.runner.plan.defaults.on_failure
        if failed_step is not None:
            spec = next(s for s in self.runner.plan.steps if s.id == failed_step.id)
            policy = spec.on_failure or policy
        self.journal.set_status(self.run_id, "failed", error=self.report.error, report=self.report.to_dict())
        if policy != "rollback" or isinstance(exc, KeyboardInterrupt):
            return
        self.executor.close()
        try:
            self._rollback_steps()
        except RollbackFailed as rb:
            self.report.status = "rollback_failed"
            self.journal.set_status(self.run_id, "rollback_failed", error=str(rb), report=self.report.to_dict())
            raise
        self.report.status = "rolled_back"
        self.finish_steps()
        self.journal.set_status(self.run_id, "rolled_back", error=self.report.error, report=self.report.to_dict())
        if isinstance(exc, StepFailed | ValidationFailed):
            exc.rolled_back = True

    def rollback_only(self) -> RunReport:
        with self._sampling():
            return self._rollback_only()

    def _rollback_only(self) -> RunReport:
        self.reporter.run_started(self.runner.plan.name, self.run_id, "rollback", True)
        try:
            self._rollback_steps()
        except RollbackFailed as exc:
            self.report.status = "rollback_failed"
            self.journal.set_status(self.run_id, "rollback_failed", error=str(exc), report=self.report.to_dict())
            raise
        finally:
            self.executor.close()
        self.report.status = "rolled_back"
        self.report.seconds = time.monotonic() - self.started
        self.finish_steps()
        self.journal.set_status(self.run_id, "rolled_back", report=self.report.to_dict())
        return self.report

    def _rollback_steps(self) -> None:
        """Undo every step that did something, last first; each undo is journaled and resumable."""
        touched = self.journal.steps_touched(self.run_id)
        states = self.journal.step_states(self.run_id)
        for step in reversed(self.runner.steps):
            if step.id not in touched:
                continue
            if states.get((step.id, "rollback"), ("",))[0] == "done":
                continue
            self.reporter.step_started(step.id, step.kind, "rollback")
            self.journal.record(self.run_id, step.id, "rollback", "started")
            try:
                undone = step.undo(self._ctx(step, "rollback"))
                if not undone:
                    self.reporter.note(f"step {step.id!r} has no undo: what it did stays as it is")
            except BaseException as exc:
                self.journal.record(self.run_id, step.id, "rollback", "failed", detail={"error": str(exc)})
                self.reporter.step_finished(step.id, "rollback", False, secrets.redact(str(exc)))
                raise RollbackFailed(f"rolling back step {step.id!r} failed: {secrets.redact(str(exc))};"
                                     " fix the cause and run 'bluegreen rollback' again") from exc
            self.journal.record(self.run_id, step.id, "rollback", "done", detail={"undone": undone})
            self.report.step(step.id).facts.update(facts.collect(step, self._ctx(step, "rollback")))
            if undone:
                self.report.step(step.id).status = "rolled_back"
                self.report.rollback.append(step.id)
            self.reporter.step_finished(step.id, "rollback", True)


def _result_detail(result: ActionResult) -> dict[str, Any]:
    detail: dict[str, Any] = {"seconds": round(result.seconds, 4), "attempts": result.attempts}
    if result.rowcount is not None:
        detail["rows"] = result.rowcount
    if result.output:
        detail["output"] = result.output[-4000:]
    return detail

