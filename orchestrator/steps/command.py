"""``kind: command``: run a program (argv, no shell) with an environment and a timeout.

Locks nothing itself. Output is captured and redacted; a non-zero exit (outside ``ok_codes``) or
the timeout fails the step, and the process group is killed on timeout. The command may run again
after a crash between its exit and the journal write: make it idempotent. Undo: the ``rollback``
argv, if the plan gives one. Commands see ``BLUEGREEN_BLUE_DSN``, ``BLUEGREEN_GREEN_DSN``,
``BLUEGREEN_RUN_ID`` and ``BLUEGREEN_STEP_ID`` in their environment.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from .. import secrets
from ..actions import Action, CommandAction
from ..spec import Duration, StepSpecBase
from . import register
from .base import Step, StepContext


class CommandStepSpec(StepSpecBase):
    """Run a program (argv, no shell) with an environment and a timeout; output is captured."""

    kind: Literal["command"]
    argv: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    timeout: Duration = timedelta(minutes=10)
    ok_codes: list[int] = Field(default_factory=lambda: [0])
    rollback: list[str] | None = Field(None, min_length=1, description="argv that undoes this step")

    @field_validator("env")
    @classmethod
    def _register_secrets(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            secrets.register_env(name, value)
        return env


@register("command", CommandStepSpec)
class CommandStep(Step[CommandStepSpec]):
    """One program run; its argv is the action."""

    def _action(self, action_id: str, argv: Sequence[str]) -> CommandAction:
        cwd = self.loaded.base_dir / self.spec.cwd if self.spec.cwd else self.loaded.base_dir
        return CommandAction(id=action_id, argv=tuple(argv), env={**self.spec.env, "BLUEGREEN_STEP_ID": self.id},
                             cwd=Path(cwd), timeout=self.spec.timeout, ok_codes=tuple(self.spec.ok_codes),
                             description=" ".join(argv))

    def plan(self, ctx: StepContext) -> Sequence[Action]:
        return [self._action(f"command:{self.id}", self.spec.argv)]

    def rollback(self, ctx: StepContext) -> Sequence[Action]:
        return [self._action(f"undo_command:{self.id}", self.spec.rollback)] if self.spec.rollback else []
