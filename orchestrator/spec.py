"""Building blocks of step specs: durations, targets, names, the step base, SQL sources.

Each step kind declares its own spec (a pydantic model with ``kind: Literal[...]``) next to its
implementation in ``steps/``; ``plan.py`` gathers them into the discriminated union of a plan.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from .sqlanalysis.files import SqlFileError, read_sql_text
from .sqlanalysis.parse import SqlSyntaxError, split_statements

_MAX_SECONDS = 365 * 86400.0
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: Any) -> timedelta:
    """Parse ``2s``, ``500ms``, ``1h30m``, ``6h`` or a number of seconds into a positive timedelta."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueError("expected a duration such as 2s, 500ms, 5m or 6h, got a boolean")
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        if not text or _DURATION.sub("", text) != "":
            raise ValueError(f"expected a duration such as 2s, 500ms, 5m, 1h30m or 6h, got {value!r}")
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(text))
    else:
        raise ValueError(f"expected a duration such as 2s or 6h, got {type(value).__name__}")
    if not math.isfinite(seconds) or seconds > _MAX_SECONDS:
        raise ValueError(f"a duration must be at most 365d, got {value!r}")
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    if seconds < 0.001:
        raise ValueError(f"a duration must be at least 1ms (Postgres timeouts count milliseconds), got {value!r}")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Render a timedelta the way plans write it (``1500ms``, ``2s``, ``6h``)."""
    ms = round(value.total_seconds() * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": ["string", "number"], "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d))+$",
                    "description": "a duration: 500ms, 2s, 5m, 1h30m, 6h, or seconds as a number"}),
]
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|kB|KB|MB|GB|TB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}


def parse_size(value: Any) -> int:
    """``500MB``, ``1GB``, ``1.5GB`` or a number of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512MB or 1GB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (found := _SIZE.match(value)):
        size = int(float(found.group(1)) * _SIZE_UNITS[(found.group(2) or "b").lower()])
    else:
        raise ValueError(f"expected a size such as 512MB or 1GB, got {value!r}")
    if size < 1 << 20:
        raise ValueError(f"a size must be at least 1MB, got {value!r}")
    return size


Size = Annotated[int, BeforeValidator(parse_size),
                 WithJsonSchema({"type": ["string", "integer"], "description": "a size: 512MB, 1GB, or bytes"})]


Target = Literal["blue", "green"]
OnFailure = Literal["rollback", "stop"]
Identifier = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StepSpecBase(Model):
    id: Identifier = Field(description="unique in the plan; the journal and the report name steps by it")
    description: str | None = None
    on_failure: OnFailure | None = None
    lock_timeout: Duration | None = None
    statement_timeout: Duration | None = None

    def reference_problems(self, before: Sequence[StepSpecBase]) -> list[tuple[tuple[str | int, ...], str]]:
        """What is wrong with the steps this one names among the steps ``before`` it.

        :returns: ``(key path inside this step, message)`` pairs; :func:`orchestrator.plan.load_plan`
            reports them at their line.
        """
        return []


class SqlSource(Model):
    """Statements given inline (``sql``) or as files (``file``), relative to the plan's folder."""

    sql: str | list[str] | None = None
    file: str | list[str] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SqlSource:
        if (self.sql is None) == (self.file is None):
            raise ValueError("give exactly one of 'sql' (statements) or 'file' (paths)")
        return self

    @field_validator("sql")
    @classmethod
    def _parse_sql(cls, value: str | list[str] | None, info: ValidationInfo) -> str | list[str] | None:
        for text in [value] if isinstance(value, str) else value or []:
            try:
                if not split_statements(text, "inline SQL"):
                    raise ValueError("no SQL statement")
            except SqlSyntaxError as exc:
                raise ValueError(f"SQL line {exc.line} column {exc.column}: {exc.message}") from None
        return value

    @field_validator("file")
    @classmethod
    def _check_files(cls, value: str | list[str] | None, info: ValidationInfo) -> str | list[str] | None:
        base = Path((info.context or {}).get("base_dir", "."))
        for name in [value] if isinstance(value, str) else value or []:
            path = base / name
            if not path.is_file():
                raise ValueError(f"no such file: {path}")
            try:
                split_statements(read_sql_text(path), str(path))
            except (SqlSyntaxError, SqlFileError) as exc:
                raise ValueError(str(exc)) from None
        return value

    def texts(self, base_dir: Path) -> list[tuple[str, str]]:
        """Return ``(source name, SQL text)`` pairs in order."""
        if self.file is not None:
            names = [self.file] if isinstance(self.file, str) else self.file
            return [(name, read_sql_text(base_dir / name)) for name in names]
        chunks = [self.sql] if isinstance(self.sql, str) else list(self.sql or [])
        return [(f"sql[{i}]", text) for i, text in enumerate(chunks)]
