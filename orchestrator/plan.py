"""The plan file: the Plan model, loading with file:line:key errors, hashing, the JSON Schema.

A plan is validated once, here, before anything connects anywhere: a bad plan touches nothing.
Each step kind's spec lives beside its implementation in ``steps/`` and registers there; the
union of all of them is built here, so ``bluegreen schema`` always lists every kind.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, field_validator

from . import secrets
from .errors import PlanError, PlanProblem
from .spec import (
    Duration,
    Identifier,
    Model,
    OnFailure,
    StepSpecBase,
    Target,
    format_duration,
    parse_duration,
)
from .steps import SPECS
from .yamlsrc import Loc, Located, format_loc, load

__all__ = ["STEP_SPECS", "Duration", "LoadedPlan", "Plan", "format_duration", "load_plan", "parse_duration",
           "plan_json_schema"]

STEP_SPECS: dict[str, type[StepSpecBase]] = SPECS

if TYPE_CHECKING:
    StepSpec = StepSpecBase
else:
    StepSpec = Annotated[Union[tuple(SPECS.values())], Field(discriminator="kind")]  # noqa: UP007


class Cluster(Model):
    """A PostgreSQL cluster the plan acts on. The DSN's password is registered as a secret."""

    dsn: str = Field(min_length=1, description="libpq connection string or URI; ${VAR} expands")

    @field_validator("dsn")
    @classmethod
    def _check_dsn(cls, value: str) -> str:
        from psycopg.conninfo import conninfo_to_dict

        secrets.register_dsn(value)
        try:
            conninfo_to_dict(value)
        except Exception as exc:
            reason = " ".join(str(exc).split())
            raise ValueError(f"not a valid connection string: {secrets.redact(reason)}") from None
        return value


class Clusters(Model):
    blue: Cluster
    green: Cluster


class Defaults(Model):
    """Values every step inherits unless it sets its own."""

    lock_timeout: Duration = timedelta(seconds=2)
    statement_timeout: Duration | None = None
    lock_retries: int = Field(5, ge=0, le=100, description="retries of a statement that hit lock_timeout")
    retry_backoff: Duration = Field(timedelta(milliseconds=200), description="first backoff; doubles, jittered")
    batch_size: int = Field(5000, ge=1)
    on_failure: OnFailure = "stop"



class Plan(Model):
    """A runbook: clusters, defaults and the ordered steps of one blue-green upgrade."""

    version: Literal[1]
    name: Identifier
    description: str | None = None
    clusters: Clusters
    control: Target = Field("blue", description="the cluster that holds the journal (schema bluegreen)")
    defaults: Defaults = Defaults()
    steps: list[StepSpec] = Field(min_length=1)

    @field_validator("steps")
    @classmethod
    def _unique_ids(cls, steps: list[StepSpec]) -> list[StepSpec]:
        seen: set[str] = set()
        for step in steps:
            if step.id in seen:
                raise ValueError(f"duplicate step id {step.id!r}")
            seen.add(step.id)
        return steps

    def step_setting(self, step: StepSpecBase, name: str) -> Any:
        """The step's own value for ``name``, else the plan default."""
        value = getattr(step, name, None)
        return value if value is not None else getattr(self.defaults, name)


@dataclass(frozen=True)
class LoadedPlan:
    """A validated plan with where it came from and the hash that guards resumption."""

    plan: Plan
    path: Path
    sha256: str
    located: Located | None = field(default=None, compare=False, repr=False)
    source: str = ""  # the file's name as given (messages name it so)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def problem(self, step_index: int, loc: tuple[str | int, ...], message: str) -> PlanProblem:
        """A problem found about step ``step_index`` after loading (a preflight), at its line in the file."""
        full = ("steps", step_index, *loc)
        line = self.located.line_of(full) if self.located is not None else None
        return PlanProblem(self.source or str(self.path), line, format_loc(full), message)


def load_plan(path: str | Path, env: Mapping[str, str] | None = None) -> LoadedPlan:
    """Read, expand and validate a plan file.

    :param path: the YAML file.
    :param env: where ``${VAR}`` values come from (default: the process environment).
    :raises PlanError: naming the file, line and key path of every problem found.
    """
    path = Path(path)
    name = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PlanError.single(name, None, "", f"cannot read the plan: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlanError.single(name, None, "", f"not UTF-8 text ({exc.reason})") from None
    located = load(text, name, os.environ if env is None else env)
    if not isinstance(located.data, dict):
        raise PlanError.single(name, located.line_of(()), "", "a plan is a YAML mapping (version, name, ...)")
    try:
        plan = Plan.model_validate(located.data, context={"base_dir": str(path.parent)})
    except ValidationError as exc:
        raise PlanError(_problems(exc, located, name)) from None
    # what steps name of earlier steps (a cutover's captures, ...): known only once every step is valid
    references = [PlanProblem(name, located.line_of(("steps", i, *loc)), format_loc(("steps", i, *loc)), message)
                  for i, step in enumerate(plan.steps) for loc, message in step.reference_problems(plan.steps[:i])]
    if references:
        raise PlanError(references)
    return LoadedPlan(plan, path.resolve(), hashlib.sha256(raw).hexdigest(), located, name)


def _problems(exc: ValidationError, located: Located, filename: str) -> list[PlanProblem]:
    by_loc: dict[Loc, list[str]] = {}
    for err in exc.errors(include_url=False):
        loc = _data_loc(tuple(err["loc"]), located.data)
        message = _message(err, loc, located.data)
        if message not in by_loc.setdefault(loc, []):
            by_loc[loc].append(message)
    problems = [PlanProblem(filename, located.line_of(loc), format_loc(loc), " or ".join(messages))
                for loc, messages in by_loc.items()]
    problems.sort(key=lambda p: (p.line or 0, p.loc))
    return problems


def _data_loc(loc: tuple[Any, ...], data: Any) -> Loc:
    """Map pydantic's error path onto the file's key path.

    Pydantic inserts the discriminator (``steps, 3, 'sql', ...``) and union branch labels
    (``..., 'sql', 'list[str]'``); neither is a key in the file.
    """
    out: list[str | int] = []
    node = data
    skip_tag = False
    for part in loc:
        if skip_tag:
            skip_tag = False
            if isinstance(node, dict) and part == node.get("kind"):
                continue
        if isinstance(part, str) and not isinstance(node, dict):
            continue  # a union branch label below a scalar or list
        if isinstance(node, dict) and isinstance(part, str) and part not in node and ("[" in part or "(" in part):
            continue
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            skip_tag = len(out) == 2 and out[0] == "steps"
        else:
            node = None
    return tuple(out)


def _model_at(loc: Loc, data: Any) -> type[BaseModel] | None:
    """The model whose fields apply at ``loc`` (to suggest keys), following ``kind`` for steps."""
    model: type[BaseModel] | None = Plan
    node = data
    for part in loc:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("kind"), str):
                model = STEP_SPECS.get(node["kind"])
            continue
        field = model.model_fields.get(part) if model is not None else None
        node = node.get(part) if isinstance(node, dict) else None
        if field is None:
            return None
        models = _field_models(field.annotation)
        model = models[0] if models else None
    return model


def _field_models(annotation: Any) -> list[type[BaseModel]]:
    args = getattr(annotation, "__args__", None) or [annotation]
    return [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]


_SHOW_INPUT = {"string_type", "int_type", "int_parsing", "bool_type", "bool_parsing", "list_type", "dict_type",
               "model_type", "too_short", "greater_than_equal", "less_than_equal", "float_type",
               "model_attributes_type"}


def _message(err: Any, loc: Loc, data: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1], data)
        key = str(loc[-1]) if loc else ""
        if model is not None:
            known = sorted(model.model_fields)
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(known)})"
            return f"unknown key {key!r}{hint}"
        return f"unknown key {key!r}"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        got = err.get("ctx", {}).get("tag")
        return f"unknown step kind {got!r}; known kinds: {', '.join(sorted(STEP_SPECS))}"
    if kind == "union_tag_not_found":
        return f"a step needs 'kind' (one of: {', '.join(sorted(STEP_SPECS))})"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"must be {expected}, got {secrets.redact(repr(err.get('input')))}"
    if kind == "string_pattern_mismatch" and loc and loc[-1] in ("id", "name"):
        return (f"{secrets.redact(repr(err.get('input')))} is not a valid name: use lowercase letters, digits, "
                "'_', '-' and '.', starting with a letter or digit (63 at most)")
    message = str(err["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if kind in _SHOW_INPUT:
        message += f", got {secrets.redact(repr(err.get('input')))}"
    return secrets.redact(message)


_ISO_DURATION = re.compile(r"^P(?:\d+D)?(?:T(?:\d+H)?(?:\d+M)?(?:\d+(?:\.\d+)?S)?)?$")


def _plan_style_defaults(node: Any) -> None:
    """Pydantic writes timedelta defaults as ISO 8601 (``PT2S``); plans write ``2s``."""
    if isinstance(node, dict):
        default = node.get("default")
        if isinstance(default, str) and _ISO_DURATION.match(default):
            node["default"] = format_duration(TypeAdapter(timedelta).validate_python(default))
        for value in node.values():
            _plan_style_defaults(value)
    elif isinstance(node, list):
        for value in node:
            _plan_style_defaults(value)


def plan_json_schema() -> dict[str, Any]:
    """The JSON Schema of a plan file, for editors (``bluegreen schema``)."""
    schema = Plan.model_json_schema(mode="validation")
    _plan_style_defaults(schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "bluegreen plan"
    return schema
