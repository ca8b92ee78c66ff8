"""Step kinds, registered by name with their spec: ``@register("kind", KindSpec)`` on the step class.

Every module of this package is imported here, so a new kind is one new file: its spec (a pydantic
model with ``kind: Literal["kind"]``) and its ``Step`` subclass. ``plan.py`` builds the plan's
discriminated union from ``SPECS``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..spec import StepSpecBase
from .base import Check, Step, StepContext

if TYPE_CHECKING:
    from ..plan import LoadedPlan

REGISTRY: dict[str, type[Step[Any]]] = {}
SPECS: dict[str, type[StepSpecBase]] = {}


def register(kind: str, spec: type[StepSpecBase]) -> Callable[[type[Step[Any]]], type[Step[Any]]]:
    """Class decorator: make a step class (and its spec) the implementation of ``kind``."""

    def decorate(cls: type[Step[Any]]) -> type[Step[Any]]:
        if kind in REGISTRY:
            raise RuntimeError(f"step kind {kind!r} is registered twice")
        cls.kind = kind
        REGISTRY[kind] = cls
        SPECS[kind] = spec
        return cls

    return decorate


def build_step(spec: Any, loaded: LoadedPlan) -> Step[Any]:
    """Instantiate the registered step class for a validated spec."""
    return REGISTRY[spec.kind](spec, loaded)


for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base":
        importlib.import_module(f"{__name__}.{_module}")

__all__ = ["REGISTRY", "SPECS", "Check", "Step", "StepContext", "build_step", "register"]
