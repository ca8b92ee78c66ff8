"""Turn application placeholders (``%s``, ``%(name)s``, ``:name``, ``?``) into ``$n`` Postgres can plan.

Application query files carry their driver's placeholders: psycopg's ``%s`` / ``%(name)s``, sqlx's
``:name``, JDBC's ``?``, or Postgres' own ``$1``. Only ``$n`` is SQL, so before a query can be parsed
(``rewrite-queries``) or prepared (``check_queries``) each placeholder becomes ``$n`` (numbered per
statement; a repeated name reuses its number). The work is done on the tokens of Postgres' own
scanner (``pglast.parser.scan``), never on raw text: a ``%s`` or ``:name`` inside a string literal, a
comment or a dollar-quoted body is left alone, ``::`` casts and ``:=`` are other tokens, and ``:n``
inside brackets (an array slice) is not a placeholder.

The result keeps a map of every edit so a position in the converted text (a parse tree location,
an error position from the server) maps back to the original file.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Literal

from pglast import parser

Style = Literal["auto", "dollar", "pyformat", "colon", "qmark"]
STYLES: tuple[str, ...] = ("auto", "dollar", "pyformat", "colon", "qmark")

_PYFORMAT_TYPES = ("s", "b", "t")  # psycopg: %s (auto), %b (binary), %t (text)


@dataclass(frozen=True, slots=True)
class Edit:
    """One replaced span: ``original[orig_start:orig_end]`` became ``converted[new_start:new_end]``."""

    orig_start: int
    orig_end: int
    new_start: int
    new_end: int


@dataclass(frozen=True, slots=True)
class Converted:
    """Text whose placeholders are ``$n``, with the edits that map it back to the original."""

    original: str
    text: str
    edits: tuple[Edit, ...] = ()
    placeholders: int = 0
    _starts: tuple[int, ...] = field(default=(), repr=False)

    def to_original(self, offset: int) -> int:
        """Map an offset in :attr:`text` to the offset in :attr:`original` (inside an edit: its start)."""
        index = bisect_right(self._starts, offset) - 1
        if index < 0:
            return offset
        edit = self.edits[index]
        if offset < edit.new_end:
            return edit.orig_start
        return offset - edit.new_end + edit.orig_end

    def slice_original(self, start: int, end: int) -> str:
        """The original text of the converted span ``[start, end)``."""
        return self.original[self.to_original(start):self.to_original(end) if end < len(self.text)
                             else len(self.original)]


def _word(text: str) -> bool:
    return bool(text) and (text[0].isalpha() or text[0] == "_") and all(c.isalnum() or c in "_$" for c in text)


def convert(text: str, style: str = "auto") -> Converted:
    """Replace driver placeholders by ``$n`` (per statement), keeping a map back to ``text``.

    :param style: ``auto`` (``$n``, ``%s``, ``%(name)s`` and ``:name``), ``dollar`` (``$n`` only: no
        change), ``pyformat``, ``colon`` or ``qmark`` (``?``, only on request: jsonb has ``?`` operators).
    :raises ValueError: an unknown style.
    """
    if style not in STYLES:
        raise ValueError(f"unknown placeholder style {style!r}; use one of {', '.join(STYLES)}")
    if style == "dollar":
        return Converted(text, text)
    try:
        tokens = parser.scan(text)
    except parser.ParseError:
        return Converted(text, text)  # the parser will report the error with its position
    pyformat = style in ("auto", "pyformat")
    colon = style in ("auto", "colon")
    qmark = style == "qmark"

    # (start, end, replacement) in original offsets, plus per-statement numbering
    replacements: list[tuple[int, int, str]] = []
    total = 0
    statements: list[list[int]] = [[]]  # token indexes per statement (split on top-level ';')
    depth = 0
    for i, tok in enumerate(tokens):
        tok_text = text[tok.start:tok.end + 1]
        if tok_text in ("(", "["):
            depth += 1
        elif tok_text in (")", "]"):
            depth = max(0, depth - 1)
        if tok_text == ";" and depth == 0:
            statements.append([])
            continue
        statements[-1].append(i)

    for indexes in statements:
        found: list[tuple[int, int, str | None]] = []  # (start, end, name or None for positional)
        highest = 0
        bracket = 0
        uses_pyformat = False
        toks = [tokens[i] for i in indexes]
        n = 0
        while n < len(toks):
            tok = toks[n]
            tok_text = text[tok.start:tok.end + 1]
            nxt = toks[n + 1] if n + 1 < len(toks) else None
            adjacent = nxt is not None and nxt.start == tok.end + 1
            nxt_text = text[nxt.start:nxt.end + 1] if nxt is not None else ""
            if tok_text == "[":
                bracket += 1
            elif tok_text == "]":
                bracket = max(0, bracket - 1)
            if tok.name == "PARAM":
                highest = max(highest, int(tok_text[1:]))
            elif pyformat and tok_text.endswith("%") and adjacent and tok_text.count("%") == 1 \
                    and nxt_text in _PYFORMAT_TYPES:
                found.append((tok.end, nxt.end + 1, None))  # type: ignore[union-attr]
                uses_pyformat = True
                n += 2
                continue
            elif pyformat and tok_text.endswith("%") and tok_text.count("%") == 1 and adjacent \
                    and nxt_text == "(" and n + 4 < len(toks):
                name_tok, close, kind = toks[n + 2], toks[n + 3], toks[n + 4]
                name = text[name_tok.start:name_tok.end + 1]
                if (name_tok.start == nxt.end + 1 and close.start == name_tok.end + 1  # type: ignore[union-attr]
                        and text[close.start:close.end + 1] == ")" and kind.start == close.end + 1
                        and text[kind.start:kind.end + 1] in _PYFORMAT_TYPES and _word(name)):
                    found.append((tok.end, kind.end + 1, "%" + name))
                    uses_pyformat = True
                    n += 5
                    continue
            elif colon and tok_text == ":" and adjacent and bracket == 0 and _word(nxt_text):
                found.append((tok.start, nxt.end + 1, ":" + nxt_text))  # type: ignore[union-attr]
                n += 2
                continue
            elif qmark and tok_text == "?":
                found.append((tok.start, tok.end + 1, None))
            n += 1
        numbers: dict[str, int] = {}
        next_number = highest
        for start, end, key in found:
            if key is None:
                next_number += 1
                number = next_number
            else:
                if key not in numbers:
                    next_number += 1
                    numbers[key] = next_number
                number = numbers[key]
            replacements.append((start, end, f"${number}"))
        total += next_number - highest
        if uses_pyformat:  # psycopg sends '%%' as '%', in literals too
            for tok in toks:
                tok_text = text[tok.start:tok.end + 1]
                if "%%" in tok_text and tok.name in ("SCONST", "Op", "IDENT"):
                    replacements.append((tok.start, tok.end + 1, tok_text.replace("%%", "%")))

    if not replacements:
        return Converted(text, text)
    replacements.sort()
    out: list[str] = []
    edits: list[Edit] = []
    pos = 0
    new_len = 0
    for start, end, repl in replacements:
        out.append(text[pos:start])
        new_len += start - pos
        edits.append(Edit(start, end, new_len, new_len + len(repl)))
        out.append(repl)
        new_len += len(repl)
        pos = end
    out.append(text[pos:])
    return Converted(text, "".join(out), tuple(edits), total, tuple(e.new_start for e in edits))
