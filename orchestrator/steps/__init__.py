"""Step kinds, registered by name: ``build_step(spec, loaded)`` picks the class for ``spec.kind``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..plan import LoadedPlan
from .base import Check, Step, StepContext

REGISTRY: dict[str, type[Step[Any]]] = {}


def register(kind: str) -> Callable[[type[Step[Any]]], type[Step[Any]]]:
    """Class decorator: make a step class the implementation of ``kind``."""

    def decorate(cls: type[Step[Any]]) -> type[Step[Any]]:
        cls.kind = kind
        REGISTRY[kind] = cls
        return cls

    return decorate


def build_step(spec: Any, loaded: LoadedPlan) -> Step[Any]:
    """Instantiate the registered step class for a validated spec."""
    return REGISTRY[spec.kind](spec, loaded)


from . import command, sqlstep  # noqa: E402  (registration side effects)

__all__ = ["REGISTRY", "Check", "Step", "StepContext", "build_step", "command", "register", "sqlstep"]
