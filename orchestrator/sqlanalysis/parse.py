"""Split SQL text into statements with their positions, using the Postgres grammar (pglast).

Nothing here executes SQL. A statement keeps the exact bytes it had in its file, so a rewrite
elsewhere can leave everything else untouched.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from pglast import parser

BOM = "\ufeff"
_COMMENTS = frozenset({"SQL_COMMENT", "C_COMMENT"})


@dataclass(frozen=True, slots=True)
class Statement:
    """One SQL statement: its text exactly as written and where it starts (1-based)."""

    text: str
    line: int
    column: int
    offset: int


class SqlSyntaxError(ValueError):
    """SQL that the Postgres grammar rejects; ``line`` and ``column`` are 1-based within ``source``."""

    def __init__(self, source: str, line: int, column: int, message: str) -> None:
        self.source = source
        self.line = line
        self.column = column
        self.message = message
        super().__init__(f"{source}:{line}:{column}: {message}")


def position(text: str, offset: int) -> tuple[int, int]:
    """Return the 1-based (line, column) of a character offset in ``text``."""
    before = text[:offset]
    line = before.count("\n") + 1
    column = offset - (before.rfind("\n") + 1) + 1
    return line, column


def split_statements(text: str, source: str = "<sql>") -> list[Statement]:
    """Split ``text`` into statements, refusing what Postgres would refuse.

    psql meta-commands (``\\set``, ``\\i``...) are not SQL and are refused with their position:
    bluegreen runs statements over the protocol, not through psql. A NUL character is refused too
    (Postgres rejects it, and the parser would silently stop reading there). A byte order mark at
    the very start is skipped, as psql skips it; it stays in the text, outside every statement.

    :param text: one or more SQL statements.
    :param source: a name for messages (a file path, or ``plan.yaml: steps[2].sql``).
    :raises SqlSyntaxError: where the grammar rejects the text.
    """
    nul = text.find("\x00")
    if nul >= 0:
        line, column = position(text, nul)
        raise SqlSyntaxError(source, line, column, "NUL byte (\\x00): not allowed in SQL text")
    parsed = " " + text[1:] if text.startswith(BOM) else text  # same length: offsets stay right
    try:
        slices = parser.split(parsed, with_parser=True, only_slices=True)
    except parser.ParseError as exc:
        message, at_ = (*exc.args, 0)[:2] if exc.args else ("syntax error", 0)
        at = at_ if isinstance(at_, int) else 0  # pglast reports str offsets
        if "at end of input" in str(message) and not at:
            at = len(text.rstrip())
        line, column = position(text, at)
        msg = str(message)
        if text[at : at + 1] == "\\":
            msg = "psql meta-command: bluegreen runs plain SQL, not psql scripts"
        elif text[at : at + 1] == BOM:
            msg = "a byte order mark (U+FEFF) in the middle of the text: " + msg
        elif msg.startswith("memory exhausted"):
            msg += " (nested too deeply for the Postgres parser)"
        raise SqlSyntaxError(source, line, column, msg) from None
    # a statement ends at its last token: the grammar's slice of the last one runs to the end of the text, over
    # any comment after it, and a ``;`` put after a ``-- comment`` would be commented out
    ends = [token.end + 1 for token in parser.scan(parsed) if token.name not in _COMMENTS]
    statements: list[Statement] = []
    for piece in slices:
        last = bisect.bisect_right(ends, piece.stop) - 1
        stop = ends[last] if last >= 0 and ends[last] > piece.start else piece.stop
        line, column = position(text, piece.start)
        statements.append(Statement(text[piece.start:stop], line, column, piece.start))
    return statements
