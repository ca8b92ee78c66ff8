"""Actions: what a step says it will do, as data. An executor runs them or renders them.

An action id is stable across runs of the same plan (``sql:migrate:0``,
``create_index_concurrently:public.users:idx_users_email``): the journal records it, a resumed run
skips it, the report names it.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal

from psycopg import sql

from .secrets import redact

Target = Literal["blue", "green"]
Query = sql.SQL | sql.Composed


@dataclass(frozen=True, slots=True)
class SqlAction:
    """SQL on one cluster.

    ``transactional`` actions run in one transaction together with their journal marker on the
    target, so they are applied exactly once even across a crash. Others run statement by
    statement in autocommit (what ``CREATE INDEX CONCURRENTLY`` or ``VACUUM`` require) and must be
    safe to run again: a crash between the statement and the journal means it runs again.
    """

    id: str
    target: Target
    statements: tuple[Query, ...]
    transactional: bool = True
    lock_timeout: timedelta | None = None
    statement_timeout: timedelta | None = None
    lock_retries: int = 0
    retry_backoff: timedelta = timedelta(milliseconds=200)
    description: str = ""


@dataclass(frozen=True, slots=True)
class CommandAction:
    """A program run without a shell; stdout and stderr are captured and redacted.

    Commands may run twice after a crash (between their exit and the journal write): make them
    idempotent.
    """

    id: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    timeout: timedelta = timedelta(minutes=10)
    ok_codes: tuple[int, ...] = (0,)
    description: str = ""


@dataclass(frozen=True, slots=True)
class NoteAction:
    """A described step of work that a step performs itself (PgBouncer console, HTTP): rendered, never run."""

    id: str
    target: str
    text: str
    description: str = ""


Action = SqlAction | CommandAction | NoteAction


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What an executed (or rendered) action did."""

    action_id: str
    seconds: float
    attempts: int = 1
    rowcount: int | None = None
    output: str = ""
    rendered: str = ""


def action_target(action: Action) -> str:
    """Where an action runs: ``blue``, ``green`` or ``local`` (a command)."""
    if isinstance(action, SqlAction | NoteAction):
        return action.target
    return "local"


def ms(value: timedelta) -> str:
    """A timedelta as a Postgres setting value (``'2000ms'``)."""
    return f"{round(value.total_seconds() * 1000)}ms"


def session_settings(action: SqlAction, local: bool) -> list[Query]:
    """The ``SET [LOCAL]`` statements that bound an action's lock wait and run time."""
    verb = sql.SQL("SET LOCAL" if local else "SET")
    out: list[Query] = []
    if action.lock_timeout is not None:
        out.append(sql.SQL("{} lock_timeout = {}").format(verb, sql.Literal(ms(action.lock_timeout))))
    if action.statement_timeout is not None:
        out.append(sql.SQL("{} statement_timeout = {}").format(verb, sql.Literal(ms(action.statement_timeout))))
    return out


def session_resets(action: SqlAction) -> list[Query]:
    """Undo :func:`session_settings` (non-transactional actions set them for the session)."""
    out: list[Query] = []
    if action.lock_timeout is not None:
        out.append(sql.SQL("RESET lock_timeout"))
    if action.statement_timeout is not None:
        out.append(sql.SQL("RESET statement_timeout"))
    return out


def render(action: Action) -> str:
    """Render an action exactly as the live executor would run it, as a SQL/shell script."""
    if isinstance(action, NoteAction):
        return redact(f"-- {action.target}: {action.text}")
    if isinstance(action, CommandAction):
        env = " ".join(f"{k}={shlex.quote(redact(v))}" for k, v in sorted(action.env.items()))
        cwd = f"cd {shlex.quote(str(action.cwd))} && " if action.cwd else ""
        argv = " ".join(shlex.quote(a) for a in action.argv)
        return redact(f"{cwd}{env + ' ' if env else ''}{argv}  # timeout {action.timeout.total_seconds():g}s")
    lines: list[str] = []
    body = [s.as_string() for s in action.statements]
    if action.transactional:
        lines.append("BEGIN;")
        lines.extend(s.as_string() + ";" for s in session_settings(action, local=True))
        lines.extend(f"{text};" for text in body)
        lines.append("COMMIT;")
    else:
        lines.extend(s.as_string() + ";" for s in session_settings(action, local=False))
        lines.extend(f"{text};" for text in body)
        lines.extend(s.as_string() + ";" for s in session_resets(action))
    return redact("\n".join(lines))
