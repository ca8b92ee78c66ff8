"""The step contract: ``plan()`` returns actions, ``apply()`` runs them, ``verify()`` checks, ``rollback()`` undoes.

A step describes; an executor acts. ``apply()`` by default hands ``plan()``'s actions to the
context, which journals each one and skips those a previous attempt completed, so a step that only
plans is resumable and dry-runnable for free.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from ..actions import Action
from ..reporter import Reporter
from ..spec import StepSpecBase

if TYPE_CHECKING:
    from ..plan import LoadedPlan

SpecT = TypeVar("SpecT", bound=StepSpecBase)


@dataclass(frozen=True, slots=True)
class Check:
    """One read-only assertion made by ``verify()``."""

    name: str
    ok: bool
    detail: str = ""


@dataclass
class StepContext:
    """What a step may use while it runs: the plan, the run, and the action runner.

    :ivar live: False in a dry run: ``run_actions`` renders, ``put`` keeps nothing, ``get`` finds
        nothing, and ``connect`` may refuse (``--offline``).
    :ivar dsns: ``{"blue": dsn, "green": dsn}``, for steps that open their own connections or run
        programs (pg_dump, COPY workers). Never print them: pass through ``secrets.redact``.
    """

    loaded: LoadedPlan
    run_id: int | None
    live: bool
    run_actions: Callable[[Sequence[Action]], None]
    connect: Callable[[str], Any]
    dsns: dict[str, str] = field(default_factory=dict)
    put: Callable[[str, Any], None] = field(default=lambda key, value: None)
    get: Callable[[str], Any] = field(default=lambda key: None)
    reporter: Reporter = field(default_factory=Reporter)
    step_id: str = ""

    @property
    def base_dir(self) -> Path:
        return self.loaded.base_dir

    def progress(self, task: str, done: float, total: float | None = None, unit: str = "") -> None:
        """Report progress of long work (rows copied, batches done) to the operator."""
        self.reporter.progress(self.step_id, task, done, total, unit)


@dataclass(frozen=True)
class PreflightContext:
    """What :meth:`Step.preflight` may read: the clusters, and the unfinished run it would resume (if any).

    :ivar run_id: the unfinished run of this plan, or None for a new one.
    :ivar get: that run's state (``StepContext.get``); finds nothing for a new run.
    """

    dsns: dict[str, str]
    run_id: int | None
    get: Callable[[str], Any] = field(default=lambda key: None)


class Step(ABC, Generic[SpecT]):
    """Base of every step kind; subclasses register with ``@register("kind")``."""

    kind: ClassVar[str]

    def __init__(self, spec: SpecT, loaded: LoadedPlan) -> None:
        self.spec = spec
        self.loaded = loaded

    @property
    def id(self) -> str:
        return self.spec.id

    def setting(self, name: str) -> Any:
        """The step's value for a setting shared with ``defaults`` (lock_timeout, ...)."""
        return self.loaded.plan.step_setting(self.spec, name)

    def preflight(self, ctx: PreflightContext) -> list[tuple[tuple[str | int, ...], str]]:
        """Read-only checks the run makes before it touches anything, the journal included.

        :returns: ``(key path inside this step, message)`` pairs; the run refuses with exit 2, reporting
            them at the step's line, and nothing is created on any cluster.
        """
        return []

    def finish(self, ctx: StepContext) -> None:
        """The run ended (done, rolled back, or aborted by ``bluegreen abort``): release what only a running
        plan needs (a capture's replication slot). Idempotent; never undoes the step's effect."""

    @abstractmethod
    def plan(self, ctx: StepContext) -> Sequence[Action]:
        """Return the actions this step would take; reads at most, never writes."""

    def apply(self, ctx: StepContext) -> None:
        """Run the planned actions through the context (journaled, resumable)."""
        ctx.run_actions(self.plan(ctx))

    def verify(self, ctx: StepContext) -> Sequence[Check]:
        """Read-only checks of the outcome; an empty list means nothing to check."""
        return []

    def rollback(self, ctx: StepContext) -> Sequence[Action]:
        """Actions that undo this step; idempotent (safe on a half-applied step)."""
        return []

    def undo(self, ctx: StepContext) -> bool:
        """Undo this step; return False when it has nothing to undo.

        The default runs :meth:`rollback`'s actions (journaled, resumable); steps whose undo is not a
        list of actions (a cutover switching traffic back) override this instead.
        """
        actions = list(self.rollback(ctx))
        if actions:
            ctx.run_actions(actions)
        return bool(actions)
