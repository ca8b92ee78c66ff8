"""``kind: validate``: checks on green after cutover, repeated every ``interval`` over ``watch``.

Checks: ``sql`` (a query on green, or the side given, that must return true), ``compare`` (the same
result on blue, fenced since the cutover, and on green; numeric results may differ by ``tolerance``),
``rows`` (every key the ``blue`` query returns must be returned by the ``green`` query: the check
that catches valid sessions a migration corrupted), ``http`` (expected status) and ``command``
(exit 0). A failing check raises ``ValidationFailed`` (exit 3); with ``on_failure: rollback`` the
runner then undoes the cutover and the steps before it.

Locks: none beyond what the checks' own read-only queries take; every query runs in a read-only
transaction. Idempotent: re-running re-checks. Undo: nothing to undo.
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any, Literal

import psycopg
from psycopg import sql
from pydantic import Field, model_validator

from .. import secrets
from ..actions import Action, CommandAction, NoteAction, SqlAction
from ..db import connect
from ..errors import ValidationFailed
from ..spec import Duration, Model, StepSpecBase, Target
from . import register
from .base import Step, StepContext


class RowsCheck(Model):
    blue: str = Field(description="query on blue returning the keys that are valid there")
    green: str = Field(description="query on green returning the keys that are valid there")


class HttpCheck(Model):
    url: str
    method: str = "GET"
    expect: int = 200
    timeout: Duration = timedelta(seconds=5)


class CheckSpec(Model):
    """Exactly one of ``sql``, ``compare``, ``rows``, ``http``, ``command``."""

    name: str | None = None
    sql: str | None = None
    on: Target = "green"
    compare: str | None = None
    tolerance: float = Field(0.0, ge=0, description="compare: allowed relative difference of numbers")
    rows: RowsCheck | None = None
    http: HttpCheck | None = None
    command: list[str] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> CheckSpec:
        given = [k for k in ("sql", "compare", "rows", "http", "command") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a check is exactly one of 'sql', 'compare', 'rows', 'http' or 'command'")
        return self

    def label(self, index: int) -> str:
        if self.name:
            return self.name
        kind = next(k for k in ("sql", "compare", "rows", "http", "command") if getattr(self, k) is not None)
        return f"{kind}-{index}"


class ValidateSpec(StepSpecBase):
    """Checks of green after cutover, over a watch window."""

    kind: Literal["validate"]
    checks: list[CheckSpec] = Field(min_length=1)
    watch: Duration | None = Field(None, description="keep checking this long (default: one pass)")
    interval: Duration = timedelta(seconds=5)
    sample: int = Field(5, ge=1, description="how many failing keys a rows check names")


@register("validate", ValidateSpec)
class Validate(Step[ValidateSpec]):
    """Run every check; again every ``interval`` until ``watch`` has passed; fail on the first failure."""

    def plan(self, ctx: StepContext) -> Sequence[Action]:
        actions: list[Action] = []
        for i, check in enumerate(self.spec.checks):
            aid = f"check:{self.id}:{check.label(i)}"
            if check.sql is not None:
                actions.append(SqlAction(aid, check.on, (sql.SQL(check.sql),), description="must be true"))
            elif check.compare is not None:
                actions.append(SqlAction(aid + ":blue", "blue", (sql.SQL(check.compare),)))
                actions.append(SqlAction(aid + ":green", "green", (sql.SQL(check.compare),)))
            elif check.rows is not None:
                actions.append(SqlAction(aid + ":blue", "blue", (sql.SQL(check.rows.blue),)))
                actions.append(SqlAction(aid + ":green", "green", (sql.SQL(check.rows.green),)))
            elif check.http is not None:
                actions.append(NoteAction(aid, "http", f"{check.http.method} {check.http.url}"
                                          f" expect {check.http.expect}"))
            elif check.command is not None:
                actions.append(CommandAction(aid, tuple(check.command)))
        if self.spec.watch:
            every, watch = self.spec.interval.total_seconds(), self.spec.watch.total_seconds()
            actions.append(NoteAction(f"watch:{self.id}", "green", f"repeat every {every:g}s for {watch:g}s"))
        return actions

    def apply(self, ctx: StepContext) -> None:
        if not ctx.live:
            ctx.run_actions(self.plan(ctx))
            return
        deadline = time.monotonic() + (self.spec.watch.total_seconds() if self.spec.watch else 0)
        passes = 0
        while True:
            passes += 1
            results = [self._run(ctx, i, check) for i, check in enumerate(self.spec.checks)]
            ctx.put(f"validate:{self.id}", {"passes": passes, "results": results})
            failures = [f"{r['name']}: {r['detail']}" for r in results if not r["ok"]]
            if failures:
                raise ValidationFailed(self.id, failures)
            if time.monotonic() >= deadline:
                break
            ctx.progress("watch", passes, None, "passes")
            time.sleep(min(self.spec.interval.total_seconds(), max(0.0, deadline - time.monotonic())))
        ctx.reporter.note(f"{self.id}: {len(self.spec.checks)} check(s) passed {passes} time(s)")

    def _run(self, ctx: StepContext, index: int, check: CheckSpec) -> dict[str, Any]:
        name = check.label(index)
        try:
            ok, detail = self._evaluate(ctx, check)
        except psycopg.Error as exc:
            ok, detail = False, f"query failed: {secrets.redact(str(exc).strip())}"
        return {"name": name, "ok": ok, "detail": secrets.redact(detail)}

    def _query(self, ctx: StepContext, side: str, text: str) -> list[tuple[Any, ...]]:
        with connect(ctx.dsns[side], side) as conn, conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            return list(conn.execute(text.encode()).fetchall())

    def _evaluate(self, ctx: StepContext, check: CheckSpec) -> tuple[bool, str]:
        if check.sql is not None:
            rows = self._query(ctx, check.on, check.sql)
            value = rows[0][0] if rows and rows[0] else None
            return value is True, f"returned {value!r}"
        if check.compare is not None:
            blue = self._query(ctx, "blue", check.compare)
            green = self._query(ctx, "green", check.compare)
            if blue == green:
                return True, f"equal ({_short(blue)})"
            if check.tolerance and _close(blue, green, check.tolerance):
                return True, f"within {check.tolerance:g}: blue {_short(blue)}, green {_short(green)}"
            return False, f"blue {_short(blue)} != green {_short(green)}"
        if check.rows is not None:
            valid_blue = {r[0] for r in self._query(ctx, "blue", check.rows.blue)}
            valid_green = {r[0] for r in self._query(ctx, "green", check.rows.green)}
            missing = sorted(valid_blue - valid_green, key=str)
            if missing:
                sample = ", ".join(str(k) for k in missing[: self.spec.sample])
                return False, f"{len(missing)} of {len(valid_blue)} keys valid on blue are not on green (e.g. {sample})"
            return True, f"all {len(valid_blue)} keys valid on blue are valid on green"
        if check.http is not None:
            request = urllib.request.Request(check.http.url, method=check.http.method)
            try:
                with urllib.request.urlopen(request, timeout=check.http.timeout.total_seconds()) as response:
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except (urllib.error.URLError, OSError) as exc:
                return False, f"{check.http.url}: {exc}"
            return status == check.http.expect, f"status {status}"
        assert check.command is not None
        try:
            proc = subprocess.run(check.command, capture_output=True, timeout=60, check=False,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, str(exc)
        tail = (proc.stdout + proc.stderr).decode("utf-8", "replace").strip()[-300:]
        return proc.returncode == 0, f"exit {proc.returncode}" + (f": {tail}" if tail else "")


def _short(rows: list[tuple[Any, ...]]) -> str:
    text = repr(rows[0][0] if len(rows) == 1 and len(rows[0]) == 1 else rows)
    return text if len(text) < 80 else text[:77] + "..."


def _close(blue: list[tuple[Any, ...]], green: list[tuple[Any, ...]], tolerance: float) -> bool:
    if len(blue) != len(green):
        return False
    for row_b, row_g in zip(blue, green, strict=True):
        for a, b in zip(row_b, row_g, strict=True):
            if isinstance(a, int | float | Decimal) and isinstance(b, int | float | Decimal):
                x, y = float(a), float(b)
                if abs(x - y) > tolerance * max(abs(x), abs(y), 1.0):
                    return False
            elif a != b:
                return False
    return True
