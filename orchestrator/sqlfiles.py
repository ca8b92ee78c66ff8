"""Find the SQL files bluegreen itself runs (``sql/`` in a checkout, ``orchestrator/sql`` in a wheel)."""

from __future__ import annotations

from functools import cache
from pathlib import Path


@cache
def sql_dir() -> Path:
    """The folder holding bluegreen's own SQL files."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql", here.parent / "sql"):
        if (candidate / "journal.sql").is_file():
            return candidate
    raise FileNotFoundError(f"bluegreen's sql/ folder is missing (looked in {here} and {here.parent})")


def read_sql(name: str) -> str:
    """The text of one of bluegreen's SQL files, e.g. ``read_sql("journal.sql")``."""
    return (sql_dir() / name).read_text(encoding="utf-8")
