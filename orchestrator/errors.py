"""The error tree of bluegreen: every error the library raises on purpose, with its exit code.

The CLI is the one place these become exit codes (``cli._exit_code``): 0 ok, 1 a step failed
(rolled back if the plan asks), 2 bad plan or usage (nothing was touched), 3 validation failed,
4 rollback failed (a human is needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class BluegreenError(Exception):
    """Base of every error the user can act on; its message is meant for an operator."""

    exit_code = 1


class UsageError(BluegreenError):
    """The command line or its inputs are wrong; nothing was touched."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class PlanProblem:
    """One problem found in a plan file, located by line and key path."""

    file: str
    line: int | None
    loc: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.loc}: {self.message}" if self.loc else f"{where}: {self.message}"


class PlanError(UsageError):
    """A plan file cannot be used: it lists every problem as ``file:line: key.path: message``."""

    def __init__(self, problems: Sequence[PlanProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def single(cls, file: str, line: int | None, loc: str, message: str) -> PlanError:
        return cls([PlanProblem(file, line, loc, message)])


class PlanChanged(UsageError):
    """The plan file changed since the unfinished run was started; ``--restart`` abandons that run."""


class ConnectionFailed(UsageError):
    """A cluster named in the plan cannot be reached (the DSN in the message is redacted)."""


class RunInProgress(BluegreenError):
    """Another process is running this plan right now (exit 1: nothing was touched, try later)."""


class NothingToRollBack(UsageError):
    """``bluegreen rollback`` found no run of this plan with completed steps."""


class StepFailed(BluegreenError):
    """A step failed in one of its phases; ``rolled_back`` says whether the run was undone."""

    def __init__(self, step_id: str, phase: str, message: str, action_id: str | None = None) -> None:
        self.step_id = step_id
        self.phase = phase
        self.action_id = action_id
        self.rolled_back = False
        where = f"step {step_id!r} ({phase}" + (f", action {action_id}" if action_id else "") + ")"
        super().__init__(f"{where}: {message}")


class ActionFailed(BluegreenError):
    """One action failed; the runner wraps it into a ``StepFailed``."""

    def __init__(self, action_id: str, message: str) -> None:
        self.action_id = action_id
        super().__init__(message)


class ValidationFailed(BluegreenError):
    """A ``validate`` step's checks failed after cutover."""

    exit_code = 3

    def __init__(self, step_id: str, failures: Sequence[str]) -> None:
        self.step_id = step_id
        self.failures = list(failures)
        self.rolled_back = False
        super().__init__(f"step {step_id!r}: validation failed: " + "; ".join(self.failures))


class RollbackFailed(BluegreenError):
    """Undoing the run failed part-way: the journal says what is left; a human is needed."""

    exit_code = 4


class LocalEnvError(BluegreenError):
    """A local server of the demo or the test suite could not be started."""


class MissingBinary(LocalEnvError):
    """A program bluegreen needs (initdb, pgbouncer, pg_dump, ...) is not installed."""
