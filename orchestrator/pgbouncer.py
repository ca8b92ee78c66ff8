"""Drive a PgBouncer: PAUSE with our own deadline, RESUME, repoint a database entry and RELOAD.

PgBouncer's admin console takes simple queries without parameters only, so statements here are
fixed words plus a database name checked against PgBouncer's identifier rules. ``PAUSE`` waits for
every server connection of the database to be released (in transaction pooling: for running
transactions to end) and has no timeout of its own; a client idle in a transaction makes it wait
forever. So :meth:`PgBouncerControl.pause` runs it on a thread with a deadline; past it, ``RESUME``
is sent from a second admin connection (which PgBouncer accepts while the PAUSE is pending) and the
stuck connection's socket is shut down. Clients never see an error: they see a stall.

PgBouncer reads databases only from its ini file, so :func:`repoint` rewrites that file's
``[databases]`` entry atomically (write, fsync, rename; owner and mode kept), and ``RELOAD`` makes
PgBouncer use it for new server connections.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from . import secrets
from .errors import BluegreenError

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")


class PgBouncerError(BluegreenError):
    """PgBouncer could not be reached or did not do what was asked."""


class PauseTimeout(PgBouncerError):
    """PAUSE did not complete within its deadline; the pool was resumed."""


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise PgBouncerError(f"{name!r} is not a database name bluegreen sends to the PgBouncer console")
    return name


@dataclass(frozen=True)
class Backend:
    """Where a PgBouncer database entry points."""

    host: str
    port: int
    dbname: str

    def connstring(self) -> str:
        return f"host={self.host} port={self.port} dbname={self.dbname}"


class PgBouncerControl:
    """One PgBouncer's admin console, for one database entry."""

    def __init__(self, admin_dsn: str, database: str, name: str = "pgbouncer") -> None:
        self.admin_dsn = admin_dsn
        self.database = _check_name(database)
        self.name = name

    def connect(self, timeout: int = 5) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=timeout,
                                   cursor_factory=psycopg.ClientCursor)
        except psycopg.Error as exc:
            raise PgBouncerError(f"cannot reach the {self.name} admin console "
                                 f"({secrets.redact_dsn(self.admin_dsn)}): {secrets.redact(str(exc).strip())}"
                                 ) from None

    def command(self, verb: str) -> None:
        """Send ``PAUSE``, ``RESUME``, ``RELOAD``... (``verb`` is one of our fixed words)."""
        with self.connect() as conn:
            conn.execute(verb.encode())

    def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW DATABASES``, ``SHOW POOLS``... as dicts."""
        with self.connect() as conn:
            cur = conn.execute(f"SHOW {what}".encode())
            cols = [c.name for c in cur.description or []]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def pause(self, deadline: float) -> float:
        """PAUSE the database; return the seconds it took.

        :raises PauseTimeout: not paused within ``deadline`` seconds; the pool was RESUMEd.
        """
        conn = self.connect()
        outcome: dict[str, BaseException | None] = {}
        started = time.monotonic()

        def run() -> None:
            try:
                conn.execute(f"PAUSE {self.database}".encode())
                outcome["error"] = None
            except BaseException as exc:  # reported below
                outcome["error"] = exc

        thread = threading.Thread(target=run, name="pgbouncer-pause", daemon=True)
        thread.start()
        thread.join(deadline)
        if thread.is_alive():
            self.resume()
            _shutdown(conn)
            thread.join(5)
            with contextlib.suppress(Exception):
                conn.close()
            raise PauseTimeout(f"PAUSE {self.database} on {self.name} did not finish within {deadline:g}s "
                               "(a client holds a transaction open); the pool was resumed")
        with contextlib.suppress(Exception):
            conn.close()
        error = outcome.get("error")
        if error is not None:
            raise PgBouncerError(f"PAUSE {self.database} on {self.name} failed: "
                                 f"{secrets.redact(str(error).strip())}")
        return time.monotonic() - started

    def resume(self) -> None:
        """RESUME the database (a no-op error 'not paused' is ignored)."""
        try:
            self.command(f"RESUME {self.database}")
        except psycopg.Error as exc:
            if "not paused" not in str(exc):
                raise PgBouncerError(f"RESUME {self.database} on {self.name} failed: {exc}") from None

    def reload(self) -> None:
        self.command("RELOAD")

    def backend(self) -> Backend | None:
        """Where the database entry points now, from ``SHOW DATABASES``."""
        for row in self.show("DATABASES"):
            if row.get("name") == self.database:
                return Backend(str(row.get("host")), int(row.get("port") or 5432),
                               str(row.get("database") or self.database))
        return None


def _shutdown(conn: psycopg.Connection[Any]) -> None:
    """Break a connection that is blocked in a query, from another thread."""
    with contextlib.suppress(OSError, psycopg.Error):
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


def read_entry(ini: Path, database: str) -> str | None:
    """The connection string of ``database`` in the ``[databases]`` section of ``ini``, or None."""
    section = None
    for raw in ini.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
        elif section == "databases" and "=" in line and not line.startswith((";", "#")):
            key, _, value = line.partition("=")
            if key.strip() == database:
                return value.strip()
    return None


def repoint(ini: Path, database: str, connstring: str) -> str | None:
    """Set ``database = connstring`` in the ``[databases]`` section; return the previous value.

    Every other line keeps its bytes. The file is replaced atomically (temp file in the same folder,
    fsync, rename) with the original's owner and mode, so PgBouncer never reads half a file.
    """
    _check_name(database)
    text = ini.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    section = None
    previous: str | None = None
    insert_at: int | None = None
    for i, raw in enumerate(lines):
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
            if section == "databases":
                insert_at = i + 1
            continue
        if section == "databases" and "=" in line and not line.startswith((";", "#")):
            key, _, value = line.partition("=")
            if key.strip() == database:
                previous = value.strip()
                newline = "\n" if raw.endswith("\n") else ""
                lines[i] = f"{database} = {connstring}{newline}"
                break
    else:
        if insert_at is None:
            raise PgBouncerError(f"{ini} has no [databases] section")
        lines.insert(insert_at, f"{database} = {connstring}\n")
    _atomic_write(ini, "".join(lines))
    return previous


def _atomic_write(path: Path, text: str) -> None:
    stat = path.stat()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, stat.st_mode & 0o7777)
        with contextlib.suppress(PermissionError):
            os.chown(tmp, stat.st_uid, stat.st_gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_entry(ini: Path, database: str) -> None:
    """Delete ``database``'s line from ``[databases]`` (undo of a repoint that added it)."""
    text = ini.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    section = None
    for i, raw in enumerate(lines):
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
        elif section == "databases" and "=" in line and line.partition("=")[0].strip() == database:
            del lines[i]
            _atomic_write(ini, "".join(lines))
            return
