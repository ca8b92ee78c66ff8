"""SELECT * expansion: the golden corpus (tests/data/queries), the catalog from schema files, placeholders.

The corpus: ``cases/NN-name.sql`` is the input, ``NN-name.expected.sql`` the exact expected output and
``NN-name.notes`` the stars left untouched (``line:column kind text: reason``), all expanded against
``schema.sql`` read as a schema file. ``UPDATE_GOLDEN=1`` rewrites the expected files (review the diff!).
tests/func/test_queries_corpus.py runs every input and output against a real database.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.errors import UsageError
from orchestrator.querycatalog import QueryCatalog
from orchestrator.sqlanalysis.parse import SqlSyntaxError
from orchestrator.sqlanalysis.queryfiles import queries
from orchestrator.sqlanalysis.queryparams import convert
from orchestrator.sqlanalysis.selectstar import Relation, _safety_belt, _Splice, quote_ident, rewrite_sql

DATA = Path(__file__).resolve().parents[1] / "data" / "queries"
CASES = sorted(p for p in (DATA / "cases").glob("*.sql") if not p.name.endswith(".expected.sql"))
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


@pytest.fixture(scope="module")
def catalog() -> QueryCatalog:
    return QueryCatalog.from_files([DATA / "schema.sql"])


def _notes(result_kept: list[object]) -> str:
    return "".join(f"{k.line}:{k.column} {k.kind} {k.text}: {k.reason}\n" for k in result_kept)  # type: ignore[attr-defined]


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_golden_case(case: Path, catalog: QueryCatalog) -> None:
    result = rewrite_sql(case.read_text(encoding="utf-8"), catalog, case.name)
    expected_file = case.with_name(case.stem + ".expected.sql")
    notes_file = case.with_name(case.stem + ".notes")
    if UPDATE:
        expected_file.write_text(result.text, encoding="utf-8")
        if result.kept:
            notes_file.write_text(_notes(result.kept), encoding="utf-8")
        else:
            notes_file.unlink(missing_ok=True)
    assert result.text == expected_file.read_text(encoding="utf-8")
    assert _notes(result.kept) == (notes_file.read_text(encoding="utf-8") if notes_file.exists() else "")
    # every change is listed with where it was and what it became
    assert len(result.changes) == sum(1 for _ in result.changes)
    for change in result.changes:
        assert change.before.endswith("*") or change.before.upper() == "TABLE"
    # expanding the output again changes nothing: the rewrite is a fixed point
    again = rewrite_sql(result.text, catalog, case.name)
    assert not again.changed


def test_corpus_size_and_shapes() -> None:
    untouched = [c for c in CASES if c.read_text() == c.with_name(c.stem + ".expected.sql").read_text()]
    assert len(CASES) >= 40
    assert len(untouched) >= 5
    names = " ".join(c.stem for c in CASES)
    for shape in ("join-using", "natural-join", "cte", "recursive-cte", "subquery-in-from", "union",
                  "distinct", "view", "insert-returning", "update-returning", "delete-returning",
                  "schema-qualified", "quoted", "alias", "count-star", "exists", "placeholders", "lateral"):
        assert shape in names, shape


def test_every_byte_outside_the_star_is_kept(catalog: QueryCatalog) -> None:
    text = "  /* a */ SeLeCt\t*\n-- b\n  FrOm  Hydra_Client -- c\n;\n"
    result = rewrite_sql(text, catalog)
    assert result.text == ("  /* a */ SeLeCt\tid, client_name, created_at, \"Owner\", \"select\"\n-- b\n"
                           "  FrOm  Hydra_Client -- c\n;\n")
    [change] = result.changes
    assert (change.line, change.column, change.before) == (1, 18, "*")
    assert change.columns == ("id", "client_name", "created_at", "Owner", "select")


def test_unresolved_star_is_reported_with_its_position(catalog: QueryCatalog) -> None:
    text = "SELECT 1;\nSELECT a.*\n  FROM missing_table a;\n"
    result = rewrite_sql(text, catalog, "app.sql")
    assert not result.changed
    [kept] = result.kept
    assert (kept.line, kept.column, kept.text, kept.kind) == (2, 8, "a.*", "unresolved")
    assert kept.reason == "relation missing_table is not in the catalog"


def test_search_path_and_pg_catalog_first() -> None:
    catalog = QueryCatalog(search_path=("app", "public"))
    catalog.add(Relation("public", "t", ("a",)))
    catalog.add(Relation("app", "t", ("b",)))
    catalog.add(Relation("pg_catalog", "pg_class", ("oid", "relname")))
    catalog.add(Relation("public", "pg_class", ("shadowed",)))
    assert rewrite_sql("SELECT * FROM t", catalog).text == "SELECT b FROM t"
    assert rewrite_sql("SELECT * FROM public.t", catalog).text == "SELECT a FROM public.t"
    assert rewrite_sql("SELECT * FROM pg_class", catalog).text == "SELECT oid, relname FROM pg_class"


def test_cte_shadows_a_table_and_nested_scopes(catalog: QueryCatalog) -> None:
    text = ("WITH hydra_client AS (SELECT 1 AS only_col) "
            "SELECT * FROM hydra_client, (SELECT * FROM hydra_client) s")
    assert rewrite_sql(text, catalog).text == (
        "WITH hydra_client AS (SELECT 1 AS only_col) "
        "SELECT hydra_client.only_col, s.only_col FROM hydra_client, (SELECT only_col FROM hydra_client) s")


def test_figure_colname_rules(catalog: QueryCatalog) -> None:
    text = ("SELECT * FROM (SELECT 1, 'x'::text, CASE WHEN true THEN 1 END, CASE WHEN true THEN 1 ELSE id END,"
            " coalesce(id, ''), (SELECT max(id) FROM hydra_client), EXISTS (SELECT 1), ARRAY[1],"
            " current_timestamp, nullif(id, ''), c.client_name::varchar(3), greatest(1, 2)"
            " FROM hydra_client c) s")
    result = rewrite_sql(text, catalog)
    [change] = result.changes
    assert change.columns == ("?column?", "text", "case", "id", "coalesce", "max", "exists", "array",
                              "current_timestamp", "nullif", "client_name", "greatest")


def test_merged_columns_fall_back_to_a_side_when_ambiguous(catalog: QueryCatalog) -> None:
    text = "SELECT * FROM hydra_client c JOIN audit.hydra_client a USING (id), hydra_oauth2_access x"
    # "id" is unique here (access has no id): unqualified
    assert rewrite_sql(text, catalog).changes[0].after.startswith("id, c.client_name")
    text = "SELECT * FROM hydra_client c LEFT JOIN audit.hydra_client a USING (id), audit.hydra_client z"
    # z.id makes a bare "id" ambiguous: a LEFT JOIN's merged column is its left side's
    assert rewrite_sql(text, catalog).changes[0].after.startswith("c.id, c.client_name")
    text = "SELECT * FROM hydra_client c FULL JOIN audit.hydra_client a USING (id), audit.hydra_client z"
    [kept] = rewrite_sql(text, catalog).kept
    assert "FULL JOIN" in kept.reason


def test_returning_old_new_and_merge(catalog: QueryCatalog) -> None:
    text = "UPDATE tree SET label = 'x' RETURNING old.*, new.label"
    assert rewrite_sql(text, catalog).text == (
        "UPDATE tree SET label = 'x' RETURNING old.id, old.parent_id, old.label, old.depth_hint, new.label")
    text = ("MERGE INTO tree t USING (VALUES (1, 'a')) v(id, label) ON t.id = v.id"
            " WHEN MATCHED THEN UPDATE SET label = v.label RETURNING *")
    assert rewrite_sql(text, catalog).text.endswith(
        "RETURNING t.id, t.parent_id, t.label, t.depth_hint, v.id, v.label")


def test_safety_belt_refuses_a_wrong_splice() -> None:
    ok = _Splice(7, 8, "a, b", 7, ("a", "b"), ("a", "b"))
    assert _safety_belt("SELECT * FROM t", "SELECT a, b FROM t", [ok]) is None
    assert _safety_belt("SELECT * FROM t", "SELECT a, c FROM t", [ok]) is not None
    assert _safety_belt("SELECT * FROM t", "SELECT a, b FROM u", [ok]) is not None


def test_syntax_error_position_is_in_the_original_file(catalog: QueryCatalog) -> None:
    with pytest.raises(SqlSyntaxError) as info:
        rewrite_sql("SELECT 1;\nSELECT * FROM t WHERE a = %(long_name)s AND AND b\n", catalog, "q.sql")
    assert (info.value.line, info.value.column) == (2, 45)


def test_quote_ident() -> None:
    assert [quote_ident(n) for n in ("id", "Id", "select", "value", "my col", 'a"b', "é", "_x1", "1a", "user")] \
        == ["id", '"Id"', '"select"', "value", '"my col"', '"a""b"', '"é"', "_x1", '"1a"', '"user"']


# -- placeholders ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "converted", "count"), [
    ("WHERE a = %s AND b=%s", "WHERE a = $1 AND b=$2", 2),
    ("WHERE a = %(x)s AND b = %(y)s OR c = %(x)s", "WHERE a = $1 AND b = $2 OR c = $1", 2),
    ("WHERE a = :x AND b::int = :y AND c = :x AND d[1:n] = 1", "WHERE a = $1 AND b::int = $2 AND c = $1 AND d[1:n] = 1",
     2),
    ("WHERE a = $1 AND b = %s", "WHERE a = $1 AND b = $2", 1),
    ("WHERE s = '%s :x' -- %s\n AND a LIKE 'x%%' AND b = %s", "WHERE s = '%s :x' -- %s\n AND a LIKE 'x%' AND b = $1",
     1),
    ("SELECT %s; SELECT %s, %s", "SELECT $1; SELECT $1, $2", 3),
    ("SELECT a % b, x := 1", "SELECT a % b, x := 1", 0),
])
def test_placeholders_become_dollar_params(text: str, converted: str, count: int) -> None:
    result = convert(text)
    assert result.text == converted
    assert result.placeholders == count


def test_placeholder_offsets_map_back() -> None:
    text = "SELECT * FROM t WHERE a = %(name)s AND b = :other"
    result = convert(text)
    assert result.text == "SELECT * FROM t WHERE a = $1 AND b = $2"
    for original, new in ((7, 7), (26, 26), (34, 28), (len(text), len(result.text))):
        assert result.to_original(new) == original
    assert convert("a ? b", "qmark").text == "a $1 b"
    assert convert("a ? b").text == "a ? b"
    with pytest.raises(ValueError):
        convert("x", "nope")


def test_query_files_keep_original_text_and_position() -> None:
    text = "-- header\nSELECT * FROM t WHERE a = :a;\n\nUPDATE t SET b = %s WHERE a = %s"
    found = queries(text, "app.sql")
    assert [(q.line, q.column, q.kind, q.params) for q in found] == [(2, 1, "SelectStmt", 1), (4, 1, "UpdateStmt", 2)]
    assert found[0].text == "SELECT * FROM t WHERE a = :a"
    assert found[0].sql == "SELECT * FROM t WHERE a = $1"
    # a server error at "$2" (position 31 of the converted text) is line 4, column 31 of the file
    assert found[1].position_in_file(31, text) == (4, 31)


# -- the catalog from schema files -----------------------------------------------------------------------


def test_schema_replay(tmp_path: Path) -> None:
    first = tmp_path / "001.sql"
    first.write_text(
        "\\restrict abc\n"
        "SET search_path = app, public;\n"
        "CREATE SCHEMA app;\n"
        "CREATE TABLE parent (id int, note text);\n"
        "CREATE TABLE child (extra int) INHERITS (parent);\n"
        "CREATE TABLE part (k int, v text) PARTITION BY LIST (k);\n"
        "CREATE TABLE part_1 PARTITION OF part FOR VALUES IN (1);\n"
        "CREATE TABLE copy (LIKE parent, more int);\n"
        "CREATE FOREIGN TABLE ft (a int) SERVER s;\n"
        "CREATE VIEW v (renamed) AS SELECT p.*, 1 AS one FROM parent p;\n"
        "CREATE MATERIALIZED VIEW mv AS SELECT id FROM parent;\n"
        "CREATE TABLE t AS SELECT 1 AS x, 2 AS y;\n"
        "\\unrestrict abc\n")
    second = tmp_path / "002.sql"
    second.write_text(
        "ALTER TABLE parent ADD COLUMN created timestamptz, ADD COLUMN IF NOT EXISTS id int;\n"
        "ALTER TABLE copy DROP COLUMN more;\n"
        "ALTER TABLE copy RENAME COLUMN note TO body;\n"
        "ALTER TABLE t RENAME TO t2;\n"
        "ALTER TABLE mv SET SCHEMA public;\n"
        "DROP TABLE ft;\n"
        "CREATE INDEX ON parent (id);\n")
    catalog = QueryCatalog.from_files([first, second])
    cols = {f"{s}.{n}": r.columns for (s, n), r in catalog.relations.items()}
    assert cols == {
        "app.parent": ("id", "note", "created"),
        "app.child": ("id", "note", "extra"),
        "app.part": ("k", "v"),
        "app.part_1": ("k", "v"),
        "app.copy": ("id", "body"),
        "app.v": ("renamed", "note", "one"),
        "public.mv": ("id",),
        "app.t2": ("x", "y"),
    }
    assert catalog.relations[("app", "v")].kind == "view"
    # round trip through the JSON snapshot
    snap = tmp_path / "schema.json"
    snap.write_text(catalog.to_json())
    again = QueryCatalog.from_files([snap])
    assert again.relations == catalog.relations
    assert again.search_path == catalog.search_path


def test_schema_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sql"
    bad.write_text("CREATE TABLE t (a int);\nCREATE TABLE (;\n")
    with pytest.raises(UsageError, match=r"bad\.sql:2:14"):
        QueryCatalog.from_files([bad])
    with pytest.raises(UsageError, match="cannot read"):
        QueryCatalog.from_files([tmp_path / "missing.sql"])
    junk = tmp_path / "x.json"
    junk.write_text('{"a": 1}')
    with pytest.raises(UsageError, match="not a bluegreen-query-catalog"):
        QueryCatalog.from_files([junk])
