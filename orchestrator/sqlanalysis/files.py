"""Migration files: find them by glob, give each its version (the file name's prefix), order them.

A version is the file name up to its first ``_`` (``20211019000001000002`` for
``20211019000001000002_merge.postgres.up.sql``, ``001`` for ``001_add.sql``), else up to its first
``.``. Files apply in version order (numbers compare as numbers). A file whose name contains
``.autocommit.`` runs statement by statement outside a transaction (popx's convention); any other
file runs in one transaction. :func:`read_sql_text` reads any SQL file (migrations, query files,
schema files) exactly as written, or says which file and line is not UTF-8.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_NUMBER = re.compile(r"\d+|\D+")


@dataclass(frozen=True, slots=True)
class MigrationFile:
    """One migration file and its version."""

    path: Path
    version: str

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def autocommit(self) -> bool:
        return is_autocommit(self.path.name)

    def read(self) -> str:
        """The file's text exactly as written (see :func:`read_sql_text`).

        :raises MigrationFilesError: the file cannot be read or is not UTF-8 (file and line named).
        """
        try:
            return read_sql_text(self.path)
        except SqlFileError as exc:
            raise MigrationFilesError(str(exc)) from None


class MigrationFilesError(ValueError):
    """The files of a migrate step cannot be used (none found, two with one version, one unreadable)."""


class SqlFileError(ValueError):
    """A SQL file that cannot be read, or is not UTF-8 text; the message names the file (and the line)."""

    def __init__(self, path: Path, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


def read_sql_text(path: Path) -> str:
    """The text of a SQL file exactly as written: UTF-8, line ends (CRLF, a lone CR) and a BOM kept.

    No newline translation: a rewrite must give back every byte it does not change, and a CR inside
    a string literal is data.

    :raises SqlFileError: the file cannot be read, or is not UTF-8 (with the line of the first bad byte).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SqlFileError(path, None, f"cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SqlFileError(path, line, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def is_autocommit(name: str) -> bool:
    """Whether a migration file runs statement by statement outside a transaction (popx's ``.autocommit.``)."""
    return ".autocommit." in name


def version_of(name: str) -> str:
    """The version of a migration file name: its prefix before the first ``_`` (or ``.``)."""
    stem = name.split("_", 1)[0] if "_" in name else name.split(".", 1)[0]
    return stem


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key of a version: digit runs compare as numbers, the rest as text."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in _NUMBER.findall(version))


def find(base_dir: Path, patterns: str | Iterable[str]) -> list[MigrationFile]:
    """The files matching ``patterns`` (globs relative to ``base_dir``), in version order.

    :raises MigrationFilesError: a pattern matches nothing, or two files share a version.
    """
    found: dict[Path, MigrationFile] = {}
    for pattern in [patterns] if isinstance(patterns, str) else list(patterns):
        full = pattern if Path(pattern).is_absolute() else str(base_dir / pattern)
        matches = sorted(Path(p) for p in glob.glob(full) if Path(p).is_file())
        if not matches:
            raise MigrationFilesError(f"no file matches {pattern!r} (in {base_dir})")
        for path in matches:
            found[path.resolve()] = MigrationFile(path, version_of(path.name))
    by_version: dict[str, MigrationFile] = {}
    for item in found.values():
        other = by_version.get(item.version)
        if other is not None:
            raise MigrationFilesError(f"{other.name} and {item.name} have the same version {item.version}: "
                                      "narrow the glob (e.g. *.up.sql)")
        if not item.version:
            raise MigrationFilesError(f"{item.name}: no version prefix (name files like 001_add_index.sql)")
        by_version[item.version] = item
    return sorted(by_version.values(), key=lambda f: (version_key(f.version), f.name))


def applied(version: str, recorded: set[str], prefix: int | None = None) -> bool:
    """Whether ``version`` is in ``recorded`` (or, with ``prefix``, its first ``prefix`` characters are)."""
    return version in recorded or (prefix is not None and version[:prefix] in recorded)
