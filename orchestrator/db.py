"""Connections and executors: ``LiveExecutor`` runs actions, ``SqlEmitter`` renders them.

Both implement one ``Executor`` interface, and the runner calls it the same way in a run and in
a dry run, so ``--dry-run`` shows exactly what ``run`` would do (alembic's offline mode).

Locks: a transactional action holds whatever its statements take until it commits, bounded by
``SET LOCAL lock_timeout``; on ``lock_not_available`` the whole transaction is retried with
jittered exponential backoff, ``lock_retries`` times, then the action fails cleanly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from . import secrets
from .actions import Action, ActionResult, CommandAction, SqlAction, render, session_resets, session_settings
from .errors import ActionFailed, ConnectionFailed

log = logging.getLogger(__name__)

APPLICATION_NAME = "bluegreen"
MARKER_DDL = sql.SQL(
    "CREATE SCHEMA IF NOT EXISTS bluegreen;"
    " CREATE TABLE IF NOT EXISTS bluegreen.applied_actions ("
    "run_id bigint NOT NULL, action_id text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),"
    " PRIMARY KEY (run_id, action_id))"
)


def connect(dsn: str, name: str, *, autocommit: bool = True, connect_timeout: int = 10,
            application_name: str = APPLICATION_NAME) -> psycopg.Connection[Any]:
    """Open a connection whose errors never show the password.

    :param name: what the cluster is called in messages (``blue``, ``green``).
    :raises ConnectionFailed: with the redacted DSN and the server's reason.
    """
    try:
        # bluegreen's own sessions stay writable when a cutover fences the database read-only
        return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=connect_timeout,
                               application_name=application_name,
                               options="-c default_transaction_read_only=off")
    except psycopg.Error as exc:
        reason = secrets.redact(str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__)
        raise ConnectionFailed(f"cannot connect to {name} ({secrets.redact_dsn(dsn)}): {reason}") from None


class Marker(Protocol):
    """Where a transactional action records that it was applied (its own transaction)."""

    run_id: int


class Executor(Protocol):
    """Runs (or renders) actions; the runner does not know which."""

    live: bool

    def execute(self, action: Action, run_id: int | None) -> ActionResult: ...

    def applied(self, action: SqlAction, run_id: int) -> bool: ...

    def close(self) -> list[tuple[str, int]]: ...


class LiveExecutor:
    """Execute actions on the real clusters, one connection per cluster, opened lazily.

    :param dsns: ``{"blue": dsn, "green": dsn}``.
    :param extra_env: added to every command's environment (the run's DSNs, ids).
    """

    live = True

    def __init__(self, dsns: Mapping[str, str], extra_env: Mapping[str, str] | None = None,
                 application_name: str = APPLICATION_NAME) -> None:
        self._dsns = dict(dsns)
        self._conns: dict[str, psycopg.Connection[Any]] = {}
        self._marker_ready: set[str] = set()
        self._extra_env = dict(extra_env or {})
        self._application_name = application_name

    def connection(self, target: str) -> psycopg.Connection[Any]:
        conn = self._conns.get(target)
        if conn is None or conn.closed or conn.broken:
            conn = connect(self._dsns[target], target, application_name=self._application_name)
            self._conns[target] = conn
            self._marker_ready.discard(target)
        return conn

    def close(self) -> list[tuple[str, int]]:
        """Close every connection; return ``(target, backend pid)`` of those closed."""
        closed: list[tuple[str, int]] = []
        for target, conn in self._conns.items():
            if not conn.closed:
                closed.append((target, conn.info.backend_pid))
                conn.close()
        self._conns.clear()
        self._marker_ready.clear()
        return closed

    def execute(self, action: Action, run_id: int | None) -> ActionResult:
        if isinstance(action, CommandAction):
            return self._command(action)
        if isinstance(action, SqlAction):
            return self._sql(action, run_id)
        raise ActionFailed(action.id, "a described action cannot be executed; its step performs it itself")

    def applied(self, action: SqlAction, run_id: int) -> bool:
        """Tell whether ``action`` committed in ``run_id`` (its marker is on the target)."""
        conn = self.connection(action.target)
        if not self._has_marker_table(conn):
            return False
        row = conn.execute("SELECT EXISTS (SELECT FROM bluegreen.applied_actions WHERE run_id = %s"
                           " AND action_id = %s)", (run_id, action.id)).fetchone()
        return bool(row and row[0])

    @staticmethod
    def _has_marker_table(conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute("SELECT to_regclass('bluegreen.applied_actions') IS NOT NULL").fetchone()
        return bool(row and row[0])

    def _ensure_marker(self, target: str, conn: psycopg.Connection[Any]) -> None:
        if target not in self._marker_ready:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(25191, 1)")
                conn.execute(MARKER_DDL)
            self._marker_ready.add(target)

    def _sql(self, action: SqlAction, run_id: int | None) -> ActionResult:
        conn = self.connection(action.target)
        if action.transactional and run_id is not None:
            self._ensure_marker(action.target, conn)
        started = time.monotonic()
        attempts = 0
        rowcount = 0
        retry = Retrying(
            retry=retry_if_exception_type(pgerrors.LockNotAvailable),
            stop=stop_after_attempt(action.lock_retries + 1),
            wait=wait_random_exponential(multiplier=action.retry_backoff.total_seconds(), max=30),
            reraise=True,
        )
        try:
            for attempt in retry:
                with attempt:
                    attempts += 1
                    if attempts > 1:
                        log.info("%s: lock not available, retry %d of %d", action.id, attempts - 1,
                                 action.lock_retries)
                    rowcount = self._sql_once(conn, action, run_id)
        except pgerrors.LockNotAvailable as exc:
            raise ActionFailed(action.id, f"lock not available after {attempts} attempt(s) "
                               f"(lock_timeout {render_timeout(action)}): {_pg_message(exc)}") from exc
        except pgerrors.QueryCanceled as exc:
            raise ActionFailed(action.id, f"canceled (statement_timeout?): {_pg_message(exc)}") from exc
        except psycopg.OperationalError as exc:
            raise ActionFailed(action.id, f"connection to {action.target} lost: {_pg_message(exc)}") from exc
        except psycopg.Error as exc:
            raise ActionFailed(action.id, _pg_message(exc)) from exc
        return ActionResult(action.id, time.monotonic() - started, attempts, rowcount)

    def _sql_once(self, conn: psycopg.Connection[Any], action: SqlAction, run_id: int | None) -> int:
        rowcount = 0
        if action.transactional:
            with conn.transaction(), conn.cursor() as cur:
                for stmt in session_settings(action, local=True):
                    cur.execute(stmt)
                for stmt in action.statements:
                    cur.execute(stmt)
                    rowcount += max(cur.rowcount, 0)
                if run_id is not None:
                    cur.execute("INSERT INTO bluegreen.applied_actions (run_id, action_id) VALUES (%s, %s)"
                                " ON CONFLICT DO NOTHING", (run_id, action.id))
            return rowcount
        with conn.cursor() as cur:
            for stmt in session_settings(action, local=False):
                cur.execute(stmt)
            try:
                for stmt in action.statements:
                    cur.execute(stmt)
                    rowcount += max(cur.rowcount, 0)
            finally:
                if not conn.broken:
                    for stmt in session_resets(action):
                        cur.execute(stmt)
        return rowcount

    def _command(self, action: CommandAction) -> ActionResult:
        env = {**os.environ, **self._extra_env, **action.env}
        started = time.monotonic()
        try:
            proc = subprocess.Popen(action.argv, env=env, cwd=action.cwd, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            raise ActionFailed(action.id, f"cannot start {action.argv[0]!r}: {exc.strerror}") from None
        try:
            out, _ = proc.communicate(timeout=action.timeout.total_seconds())
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, _ = proc.communicate()
            raise ActionFailed(action.id, f"timed out after {action.timeout.total_seconds():g}s; output: "
                               + _tail(out)) from None
        except BaseException:
            _kill_group(proc)
            raise
        text = secrets.redact(out.decode("utf-8", errors="replace"))
        if proc.returncode not in action.ok_codes:
            raise ActionFailed(action.id, f"{action.argv[0]} exited with {proc.returncode}; output: "
                               + _tail(out))
        return ActionResult(action.id, time.monotonic() - started, 1, None, text)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _tail(out: bytes | None, lines: int = 10) -> str:
    text = (out or b"").decode("utf-8", errors="replace").strip()
    return secrets.redact("\n".join(text.splitlines()[-lines:])) or "(none)"


def _pg_message(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    sqlstate = getattr(exc, "sqlstate", None)
    text = primary or str(exc).strip() or type(exc).__name__
    return secrets.redact(f"{text} [{sqlstate}]" if sqlstate else text)


def render_timeout(action: SqlAction) -> str:
    return f"{action.lock_timeout.total_seconds():g}s" if action.lock_timeout else "none"


class SqlEmitter:
    """Render actions instead of running them; ``on_render`` receives each action's script."""

    live = False

    def __init__(self, on_render: Callable[[Action, str], None] | None = None) -> None:
        self.rendered: list[tuple[Action, str]] = []
        self._on_render = on_render

    def execute(self, action: Action, run_id: int | None) -> ActionResult:
        text = render(action)
        self.rendered.append((action, text))
        if self._on_render is not None:
            self._on_render(action, text)
        return ActionResult(action.id, 0.0, 0, None, "", text)

    def applied(self, action: SqlAction, run_id: int) -> bool:
        return False

    def close(self) -> list[tuple[str, int]]:
        return []


@contextmanager
def readonly(dsn: str, name: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection for reading (catalog, stats) whose session refuses writes."""
    conn = connect(dsn, name)
    try:
        conn.execute("SET default_transaction_read_only = on")
        yield conn
    finally:
        conn.close()
