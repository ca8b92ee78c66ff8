"""Acceptance 2 of issue 5: every query of the golden corpus returns, rewritten, exactly what it returned before.

The corpus schema and rows are loaded into a fresh database on blue (PostgreSQL 15) and green
(PostgreSQL 18); each input statement and its expected rewrite run there (DML inside a transaction
that is rolled back) and must give the same column names, in order, and the same rows. The live
catalog of that database must also give the same rewrites as the schema file does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from orchestrator.localenv import Databases
from orchestrator.querycatalog import QueryCatalog
from orchestrator.sqlanalysis.queryfiles import Query, queries
from orchestrator.sqlanalysis.selectstar import rewrite_sql

DATA = Path(__file__).resolve().parents[1] / "data" / "queries"
CASES = sorted(p for p in (DATA / "cases").glob("*.sql") if not p.name.endswith(".expected.sql"))
# parameters for the statements of the cases that have placeholders, statement by statement
PARAMS: dict[str, list[list[str]]] = {"42-placeholders": [["c1", "user-1"], ["a2"], ["a3"]]}


def _load(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in ("schema.sql", "data.sql"):
            conn.execute((DATA / name).read_text(encoding="utf-8").encode())


def _run(conn: psycopg.Connection[Any], query: Query, params: list[str]) -> tuple[list[str], list[str]]:
    """Column names and rows (as sorted reprs) of one statement, rolled back afterwards."""
    with conn.transaction(force_rollback=True), conn.cursor() as cur:
        if query.params:
            cur.execute(sql.SQL("PREPARE corpus_q AS {}").format(sql.SQL(query.sql)))  # type: ignore[arg-type]
            values = params + [""] * (query.params - len(params))
            cur.execute(sql.SQL("EXECUTE corpus_q ({})").format(sql.SQL(", ").join(map(sql.Literal, values))))
        else:
            cur.execute(query.sql.encode())
        names = [d.name for d in cur.description or ()]
        rows = sorted(repr(r) for r in cur.fetchall()) if cur.description is not None else []
        if query.params:
            cur.execute("DEALLOCATE corpus_q")
    return names, rows


@pytest.fixture
def corpus_dbs(dbs: Databases) -> Databases:
    _load(dbs.blue_dsn)
    _load(dbs.green_dsn)
    return dbs


def test_rewritten_queries_return_the_same_rows_and_columns(corpus_dbs: Databases) -> None:
    compared = 0
    changed = 0
    for dsn in (corpus_dbs.blue_dsn, corpus_dbs.green_dsn):
        with psycopg.connect(dsn) as conn:
            for case in CASES:
                original = queries(case.read_text(encoding="utf-8"), case.name)
                rewritten = queries(case.with_name(case.stem + ".expected.sql").read_text(encoding="utf-8"),
                                    case.name)
                assert len(original) == len(rewritten), case.name
                for index, (before, after) in enumerate(zip(original, rewritten, strict=True)):
                    params = PARAMS.get(case.stem, [])[index:index + 1] or [[]]
                    names_before, rows_before = _run(conn, before, params[0])
                    names_after, rows_after = _run(conn, after, params[0])
                    assert names_after == names_before, f"{case.name} statement {index + 1}: column names"
                    assert rows_after == rows_before, f"{case.name} statement {index + 1}: rows"
                    compared += 1
                    changed += before.text != after.text
    # both clusters, every statement; most of them really were rewritten
    assert compared >= 2 * 64
    assert changed >= 2 * 55


def test_live_catalog_rewrites_like_the_schema_file(corpus_dbs: Databases) -> None:
    live = QueryCatalog.from_dsn(corpus_dbs.blue_dsn)
    assert live.search_path == ("public",)
    assert live.relations[("public", "tree")].columns == ("id", "parent_id", "label", "depth_hint")
    assert live.relations[("public", "active_access")].kind == "view"
    for case in CASES:
        result = rewrite_sql(case.read_text(encoding="utf-8"), live, case.name)
        assert result.text == case.with_name(case.stem + ".expected.sql").read_text(encoding="utf-8"), case.name
