"""Traffic switches of a cutover: repoint a PgBouncer, run a command, call an HTTP endpoint.

Each switch sends its traffic to a side: green, or back to blue (which is also its undo, so a
``bluegreen rollback`` in a new process needs no memory of the cutover). :func:`switch_all` runs
them concurrently and all-or-nothing: if one fails, those that moved are sent back and the error
is raised. Locks nothing in Postgres.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from . import secrets
from .errors import BluegreenError
from .pgbouncer import PgBouncerControl, repoint


class SwitchFailed(BluegreenError):
    """A switch could not be applied (the others were reverted)."""


def other(side: str) -> str:
    return "blue" if side == "green" else "green"


@dataclass
class Switch:
    """One switch: ``to(side)`` sends its traffic to ``side``; ``check()`` tests it is usable."""

    name: str
    to: Callable[[str], None]
    check: Callable[[], None] = field(default=lambda: None)


def pgbouncer_switch(name: str, admin_dsn: str, ini: Path, database: str, dsns: dict[str, str]) -> Switch:
    """Point ``database`` in ``ini`` at the side's host, port and dbname, then RELOAD."""
    control = PgBouncerControl(admin_dsn, database, name)

    def to(side: str) -> None:
        params = conninfo_to_dict(dsns[side])
        entry = (f"host={params.get('host') or '127.0.0.1'} port={params.get('port') or 5432}"
                 f" dbname={params.get('dbname') or database}")
        repoint(ini, database, entry)
        control.reload()

    def check() -> None:
        if not ini.is_file() or not os.access(ini, os.W_OK):
            raise SwitchFailed(f"{name}: {ini} is not a writable file")
        control.show("VERSION")

    return Switch(name, to, check)


def command_switch(name: str, argv: Sequence[str], back_argv: Sequence[str] | None, env: dict[str, str],
                   timeout: float) -> Switch:
    """Run ``argv`` to go to green and ``back_argv`` to go back to blue; ``BLUEGREEN_SIDE`` is set."""

    def to(side: str) -> None:
        args = argv if side == "green" else back_argv
        if not args:
            return
        try:
            proc = subprocess.run(list(args), env={**os.environ, **env, "BLUEGREEN_SIDE": side},
                                  capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SwitchFailed(f"{name}: {secrets.redact(str(exc))}") from None
        if proc.returncode != 0:
            tail = secrets.redact((proc.stdout + proc.stderr).decode("utf-8", "replace").strip()[-500:])
            raise SwitchFailed(f"{name}: {args[0]} exited with {proc.returncode}: {tail or '(no output)'}")

    def check() -> None:
        for args in (argv, back_argv):
            if args and shutil.which(args[0]) is None and not Path(args[0]).is_file():
                raise SwitchFailed(f"{name}: {args[0]!r} is not an executable on PATH")

    return Switch(name, to, check)


def http_switch(name: str, url: str, method: str, body: str | None, expect: int, back_url: str | None,
                back_method: str, timeout: float) -> Switch:
    """Call ``url`` to go to green and ``back_url`` to go back; ``{side}`` in URL or body is replaced."""

    def to(side: str) -> None:
        target, verb = (url, method) if side == "green" else (back_url, back_method)
        if not target:
            return
        data = body.replace("{side}", side).encode() if body is not None else None
        request = urllib.request.Request(target.replace("{side}", side), data=data, method=verb)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError) as exc:
            raise SwitchFailed(f"{name}: {verb} {secrets.redact(target)}: {exc}") from None
        if status != expect:
            raise SwitchFailed(f"{name}: {verb} {secrets.redact(target)} answered {status}, expected {expect}")

    return Switch(name, to)


def switch_all(switches: Sequence[Switch], side: str) -> None:
    """Send every switch to ``side`` concurrently; if any fails, send those that moved back.

    :raises SwitchFailed: naming every switch that failed; the others were reverted.
    """
    if not switches:
        return
    with ThreadPoolExecutor(max_workers=len(switches), thread_name_prefix="switch") as pool:
        futures = [(s, pool.submit(s.to, side)) for s in switches]
        errors = []
        moved = []
        for switch, future in futures:
            exc = future.exception()
            if exc is None:
                moved.append(switch)
            else:
                errors.append(secrets.redact(str(exc)))
    if not errors:
        return
    revert_errors = []
    for switch in reversed(moved):
        try:
            switch.to(other(side))
        except Exception as exc:  # keep reverting the others
            revert_errors.append(f"{switch.name}: {secrets.redact(str(exc))}")
    message = "switch failed: " + "; ".join(errors)
    if moved:
        message += f"; reverted: {', '.join(s.name for s in moved)}"
    if revert_errors:
        message += "; REVERT FAILED for " + "; ".join(revert_errors)
    raise SwitchFailed(message)
