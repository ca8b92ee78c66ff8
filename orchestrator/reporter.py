"""The Reporter: how library code tells the outside world what it does (it never prints).

The CLI installs a rich implementation (``ui.RichReporter``); tests use ``RecordingReporter``.
"""

from __future__ import annotations

from typing import Any

from .actions import Action, ActionResult


class Reporter:
    """No-op base: override what you want to show."""

    def run_started(self, plan: str, run_id: int | None, mode: str, resumed: bool) -> None:
        """A run (or dry run, or rollback) begins."""

    def step_started(self, step_id: str, kind: str, phase: str) -> None:
        """A step enters ``apply``, ``verify`` or ``rollback``."""

    def step_skipped(self, step_id: str, reason: str) -> None:
        """A step needs nothing: an earlier attempt completed it."""

    def action_started(self, step_id: str, action: Action) -> None:
        """An action is about to run."""

    def action_finished(self, step_id: str, action: Action, result: ActionResult | None, skipped: str = "") -> None:
        """An action ran (``result``) or was skipped (``skipped`` says why)."""

    def step_finished(self, step_id: str, phase: str, ok: bool, detail: str = "") -> None:
        """A step's phase ended."""

    def note(self, message: str) -> None:
        """Something an operator should read (a retry, a recovery, a warning)."""

    def progress(self, step_id: str, task: str, done: float, total: float | None, unit: str) -> None:
        """Long work advanced: ``done`` of ``total`` (``None``: unknown) ``unit`` (rows, bytes...)."""


class RecordingReporter(Reporter):
    """Keep every event as a tuple, for tests."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def run_started(self, plan: str, run_id: int | None, mode: str, resumed: bool) -> None:
        self.events.append(("run_started", plan, run_id, mode, resumed))

    def step_started(self, step_id: str, kind: str, phase: str) -> None:
        self.events.append(("step_started", step_id, phase))

    def step_skipped(self, step_id: str, reason: str) -> None:
        self.events.append(("step_skipped", step_id, reason))

    def action_started(self, step_id: str, action: Action) -> None:
        self.events.append(("action_started", step_id, action.id))

    def action_finished(self, step_id: str, action: Action, result: ActionResult | None, skipped: str = "") -> None:
        self.events.append(("action_finished", step_id, action.id, skipped))

    def step_finished(self, step_id: str, phase: str, ok: bool, detail: str = "") -> None:
        self.events.append(("step_finished", step_id, phase, ok))

    def note(self, message: str) -> None:
        self.events.append(("note", message))

    def progress(self, step_id: str, task: str, done: float, total: float | None, unit: str) -> None:
        self.events.append(("progress", step_id, task, done, total, unit))
