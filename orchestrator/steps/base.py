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
    """What a step may use while it runs: the plan, the run, and the action runner."""

    loaded: LoadedPlan
    run_id: int | None
    live: bool
    run_actions: Callable[[Sequence[Action]], None]
    connect: Callable[[str], Any]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        return self.loaded.base_dir


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
