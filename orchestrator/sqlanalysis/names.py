"""The names Postgres gives unnamed constraints and indexes, so a rewrite can name them the same way.

A lock-safe rewrite must name what the original left unnamed (``VALIDATE CONSTRAINT`` needs a name,
``ADD CONSTRAINT ... USING INDEX`` renames the index to the constraint's name): these functions
reproduce ``makeObjectName`` and the ``Choose*Name`` rules of ``src/backend/commands/indexcmds.c``
and ``src/backend/catalog/pg_constraint.c``. Postgres appends a digit when the name is already taken
in the schema; offline we cannot know that, so the first choice is returned.
"""

from __future__ import annotations

from collections.abc import Sequence

NAMEDATALEN = 64


def _clip(name: str, nbytes: int) -> str:
    """The longest prefix of ``name`` that fits in ``nbytes`` UTF-8 bytes (``pg_mbcliplen``)."""
    out = name.encode("utf-8")[:nbytes].decode("utf-8", errors="ignore")
    return out


def make_object_name(name1: str, name2: str | None, label: str | None) -> str:
    """Postgres' ``makeObjectName``: ``name1_name2_label`` truncated to 63 bytes, longer part first."""
    n1 = len(name1.encode("utf-8"))
    n2 = len(name2.encode("utf-8")) if name2 else 0
    overhead = (len(label.encode("utf-8")) + 1 if label else 0) + (1 if name2 else 0)
    avail = NAMEDATALEN - 1 - overhead
    while n1 + n2 > avail:
        if n1 > n2:
            n1 -= 1
        else:
            n2 -= 1
    out = _clip(name1, n1)
    if name2:
        out += "_" + _clip(name2, n2)
    if label:
        out += "_" + label
    return out


def _join_columns(columns: Sequence[str]) -> str:
    """Postgres joins column names with ``_`` into a buffer of ``NAMEDATALEN * 2`` bytes."""
    out = ""
    for column in columns:
        piece = ("_" if out else "") + column
        if len((out + piece).encode("utf-8")) >= NAMEDATALEN * 2:
            break
        out += piece
    return out


def foreign_key_name(table: str, columns: Sequence[str]) -> str:
    """The name of ``ALTER TABLE table ADD FOREIGN KEY (columns) ...``: ``table_col1_col2_fkey``."""
    return make_object_name(table, _join_columns(columns), "fkey")


def check_name(table: str, columns: Sequence[str]) -> str:
    """The name of an unnamed CHECK: ``table_col_check`` if it reads exactly one column, else ``table_check``."""
    distinct = list(dict.fromkeys(columns))
    return make_object_name(table, distinct[0] if len(distinct) == 1 else None, "check")


def primary_key_name(table: str) -> str:
    """The name of an unnamed primary key (and of its index): ``table_pkey``."""
    return make_object_name(table, None, "pkey")


def unique_name(table: str, columns: Sequence[str]) -> str:
    """The name of an unnamed UNIQUE constraint (and of its index): ``table_col1_col2_key``."""
    return make_object_name(table, _join_columns(columns), "key")


def index_name(table: str, columns: Sequence[str]) -> str:
    """The name of an unnamed ``CREATE INDEX`` (expressions count as ``expr``): ``table_col_idx``."""
    return make_object_name(table, _join_columns(columns), "idx")


def helper_name(base: str, label: str) -> str:
    """A name for an object bluegreen adds for a while (a NOT NULL check, a new index): ``base_label``."""
    return make_object_name(base, None, label)
