"""Application query files: find them, read them, parse their statements with placeholders converted.

Shared by ``bluegreen rewrite-queries`` and the ``check_queries`` step. A query file is a plain ``.sql``
file holding one or more statements, with the driver's placeholders (see :mod:`.queryparams`).
"""

from __future__ import annotations

import contextlib
import glob
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pglast import parse_sql, parser

from ..errors import UsageError
from .files import SqlFileError, read_sql_text
from .parse import SqlSyntaxError, position, split_statements
from .queryparams import convert
from .selectstar import Catalog, FileRewrite, rewrite_sql


@dataclass(frozen=True, slots=True)
class Query:
    """One statement of a query file, ready to plan.

    :ivar text: the statement exactly as written in the file.
    :ivar sql: the same with placeholders as ``$n`` (what Postgres is given).
    :ivar kind: the parse tree's statement type (``SelectStmt``, ``InsertStmt``...).
    :ivar params: how many ``$n`` parameters :attr:`sql` takes.
    :ivar offset: where :attr:`text` starts in the file.
    """

    source: str
    line: int
    column: int
    text: str
    sql: str
    kind: str
    params: int
    offset: int
    style: str = "auto"

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def position_in_file(self, sql_position: int, file_text: str) -> tuple[int, int]:
        """Map a 1-based character position in :attr:`sql` (a server error's) to the file's line, column."""
        converted = convert(self.text, self.style)
        offset = converted.to_original(max(0, sql_position - 1))
        return position(file_text, self.offset + offset)


PLANNABLE = ("SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt")


def expand_paths(paths: Iterable[Path | str], base: Path | None = None) -> list[Path]:
    """Files from paths, folders (their ``*.sql``, recursively) and glob patterns, in a stable order.

    :raises UsageError: a path or pattern that matches nothing.
    """
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        full = path if base is None or path.is_absolute() else base / path
        if full.is_dir():
            found = sorted(p for p in full.rglob("*.sql") if p.is_file())
        elif full.is_file():
            found = [full]
        elif glob.has_magic(str(raw)):
            found = sorted(Path(p) for p in glob.glob(str(full), recursive=True) if Path(p).is_file())
        else:
            found = []
        if not found:
            raise UsageError(f"{raw}: no such file" + (" (or no .sql file in it)" if full.is_dir() else ""))
        out.extend(p for p in found if p not in out)
    return out


def read_text(path: Path) -> str:
    """A query file's text, exactly as written (line ends kept).

    :raises UsageError: unreadable or not UTF-8 (the file and line named).
    """
    try:
        return read_sql_text(path)
    except SqlFileError as exc:
        raise UsageError(str(exc)) from None


def queries(text: str, source: str, placeholders: str = "auto") -> list[Query]:
    """The statements of a query file with their placeholders converted.

    :raises SqlSyntaxError: where the Postgres grammar rejects the file (original positions).
    """
    out: list[Query] = []
    converted = convert(text, placeholders)
    try:
        statements = split_statements(converted.text, source)
    except SqlSyntaxError as exc:
        lines = converted.text.split("\n")
        offset = sum(len(line) + 1 for line in lines[:exc.line - 1]) + exc.column - 1
        line, column = position(text, converted.to_original(offset))
        raise SqlSyntaxError(source, line, column, exc.message) from None
    for stmt in statements:
        start = converted.to_original(stmt.offset)
        end = converted.to_original(stmt.offset + len(stmt.text))
        original = text[start:end]
        try:
            raw = parse_sql(stmt.text)
        except parser.ParseError as exc:  # pragma: no cover - split_statements parsed it already
            line, column = position(text, start)
            raise SqlSyntaxError(source, line, column, str(exc)) from None
        kind = type(raw[0].stmt).__name__ if raw else "?"
        line, column = position(text, start)
        out.append(Query(source, line, column, original, stmt.text, kind, _dollar_params(stmt.text), start,
                         placeholders))
    return out


def _dollar_params(text: str) -> int:
    highest = 0
    for tok in parser.scan(text):
        if tok.name == "PARAM":
            highest = max(highest, int(text[tok.start + 1:tok.end + 1]))
    return highest


def rewrite_files(paths: Sequence[Path], catalog: Catalog, placeholders: str = "auto",
                  display: Path | None = None) -> list[FileRewrite]:
    """Expand the stars of every file (nothing is written).

    :param display: show paths relative to this folder when they are inside it.
    :raises UsageError: a file cannot be read or does not parse (file:line:column).
    """
    results = []
    for path in paths:
        text = read_text(path)
        name = str(path)
        if display is not None:
            with contextlib.suppress(ValueError):
                name = str(path.resolve().relative_to(display.resolve()))
        try:
            results.append(rewrite_sql(text, catalog, name, placeholders))
        except SqlSyntaxError as exc:
            raise UsageError(str(exc)) from None
    return results
