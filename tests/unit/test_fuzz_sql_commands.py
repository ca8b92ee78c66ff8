"""Generated SQL files thrown at ``lint``, ``rewrite``, ``rewrite-queries`` and plans that name SQL files.

Issue 7, acceptance 4: never a traceback; exit 0 (ok), 1 (lint: hazards; rewrite: a statement with no
lock-safe form; rewrite-queries --check: a file would change) or 2 (bad input) with a message naming
the file and the line. The files come from :mod:`fuzz_support`: mutations of Hydra's migrations and
of the golden queries, arbitrary text and bytes, deep nesting, valid-but-odd SQL. Each command gets
1,000 cases (``max_examples``), run in-process through typer's CliRunner, offline (``--schema``).

Besides the exit code, each test checks what the command must never do: ``rewrite`` writes only under
``--out``, writes nothing at all when it refuses a file, copies a file with no statement byte for byte and
starts every other with ``SET lock_timeout``; ``rewrite-queries`` prints (or, with ``--write``, leaves) an
unchanged file byte for byte.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from fuzz_support import FUZZ, ODD_SQL, ROOT, SQL_OPS, migration_seeds, mutated, query_seeds, runner, sql_files
from hypothesis import example, given, settings
from hypothesis import strategies as st
from typer.testing import Result

from orchestrator.cli import app
from orchestrator.querycatalog import QueryCatalog
from orchestrator.sqlanalysis.parse import BOM, split_statements

SCHEMA = ROOT / "tests" / "data" / "queries" / "schema.sql"
MIGRATIONS = migration_seeds()
QUERIES = query_seeds()
SCHEMAS = [*MIGRATIONS, SCHEMA.read_text(encoding="utf-8"), *ODD_SQL]
GOOD_MIGRATION = "CREATE INDEX idx_t_a ON t (a);\n"


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _check(result: Result, name: str, codes: tuple[int, ...]) -> str:
    """No traceback, an expected exit code, and for exit 2 a message naming ``name`` and a line."""
    output = result.output
    assert "Traceback" not in output, output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in codes, (result.exit_code, output)
    if result.exit_code == 2:
        assert re.search(re.escape(name) + r":\d+", output), output  # file:line
    return output


def _json(result: Result) -> dict[str, object]:
    payload = json.loads(result.stdout)
    assert isinstance(payload, dict)
    return payload


def _decoded(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


# -- lint -------------------------------------------------------------------------------------------

LINT_OPTIONS = st.sampled_from([[], ["--format", "squawk"], ["--json"],
                                ["--exclude", "require-concurrent-index-creation"]])


@FUZZ
@given(sql_files(MIGRATIONS), LINT_OPTIONS)
@example(b"SELECT '\xe9';", [])  # not UTF-8: the file and line are named
@example(b"SELECT 1;\nSELECT 2;\x00CREATE INDEX i ON t (a);", [])  # NUL would hide the rest from the parser
@example(b"ALTER TABLE t ADD CONSTRAINT c CHECK (a > 1" + b" + 1" * 1000 + b");", [])  # recursion
@example(b"CREATE INDEX i ON t ((1" + b" + 1" * 1000 + b"));", ["--json"])
@example(b"\xef\xbb\xbfCREATE INDEX i ON t (a);", [])  # a BOM, as Windows editors write (psql skips it)
def test_lint_never_crashes(data: bytes, options: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.sql"
        path.write_bytes(data)
        result = runner.invoke(app, ["lint", str(path), *options])
    _check(result, "in.sql", (0, 1, 2))
    if "--json" in options:
        assert _json(result)["ok"] is (result.exit_code == 0)


def test_lint_accepts_a_bom_and_names_its_hazard_line(tmp_path: Path) -> None:
    path = tmp_path / "in.sql"
    path.write_bytes(b"\xef\xbb\xbf-- add an index\r\nCREATE INDEX i ON t (a);\r\n")
    result = runner.invoke(app, ["lint", str(path)])
    assert result.exit_code == 1, result.output
    assert f"{path}:2:1: require-concurrent-index-creation" in result.output


def test_lint_refuses_nul_and_non_utf8_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "in.sql"
    path.write_bytes(b"SELECT 1;\nSELECT 2;\x00CREATE INDEX i ON t (a);")
    result = runner.invoke(app, ["lint", str(path)])
    assert result.exit_code == 2 and f"{path}:2:10: NUL byte" in result.output, result.output
    path.write_bytes(b"SELECT 1;\n\nSELECT '\xe9';\n")
    result = runner.invoke(app, ["lint", str(path)])
    assert result.exit_code == 2 and f"{path}:3: not UTF-8 text" in result.output, result.output


def test_lint_too_deep_to_analyse_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "in.sql"
    path.write_text("SELECT 1;\nALTER TABLE t ADD CONSTRAINT c CHECK (a > 1" + " + 1" * 3000 + ");\n")
    result = runner.invoke(app, ["lint", str(path)])
    assert result.exit_code == 2 and f"{path}:2:1: statement nested too deeply" in result.output, result.output


# -- rewrite ----------------------------------------------------------------------------------------


@FUZZ
@given(sql_files(MIGRATIONS), st.booleans(), st.sampled_from([[], ["--allow", "changing-column-type"]]))
@example(b"SELECT 1;\r\nCREATE INDEX i ON t (a);\r\nSELECT 'a\rb';\r\n", True, [])  # CR bytes are kept
@example(b"SELECT '\xe9';", False, [])
@example(b"ALTER TABLE t ADD COLUMN b int DEFAULT 1" + b" + 1" * 1000 + b";", True, [])
def test_rewrite_never_crashes_nor_writes_outside_out(data: bytes, as_json: bool, options: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        migrations = root / "migrations"
        migrations.mkdir()
        (migrations / "001_good.sql").write_text(GOOD_MIGRATION, encoding="utf-8")
        (migrations / "002_in.sql").write_bytes(data)
        out = root / "out"
        result = runner.invoke(app, ["rewrite", str(migrations), "--out", str(out), *options,
                                     *(["--json"] if as_json else [])])
        _check(result, "002_in.sql", (0, 1, 2))
        files = _files(root)
        assert (migrations / "002_in.sql").read_bytes() == data  # the input is never touched
        assert (migrations / "001_good.sql").read_text(encoding="utf-8") == GOOD_MIGRATION
        written = {f for f in files if not f.startswith("migrations/")}
        assert all(f.startswith("out/") for f in written), written  # nothing outside --out
        if result.exit_code != 0:
            assert written == set(), written  # a refused or rejected file: nothing written at all
            return
        assert written == {"out/001_good.sql", "out/002_in.sql"}, written
        if as_json:
            assert {Path(str(f["file"])).name for f in _json(result)["files"]} == {"001_good.sql", "002_in.sql"}  # type: ignore[attr-defined]
        text = _decoded(data)
        assert text is not None  # exit 0: it was read
        if not split_statements(text):
            assert (out / "002_in.sql").read_bytes() == data  # nothing to run: copied byte for byte
        else:  # a file to run as it is, under lock_timeout
            assert (out / "002_in.sql").read_text(encoding="utf-8").removeprefix(BOM).startswith(
                "SET lock_timeout = '2s';")


def test_rewrite_refuses_two_inputs_with_one_output_name(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "001.sql").write_text(GOOD_MIGRATION, encoding="utf-8")
    out = tmp_path / "out"
    result = runner.invoke(app, ["rewrite", str(tmp_path / "a" / "001.sql"), str(tmp_path / "b" / "001.sql"),
                                 "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "both be written to" in result.output and not out.exists()


def test_rewrite_never_overwrites_its_input(tmp_path: Path) -> None:
    path = tmp_path / "001.sql"
    path.write_text(GOOD_MIGRATION, encoding="utf-8")
    result = runner.invoke(app, ["rewrite", str(path), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "is one of the input files" in result.output, result.output
    assert path.read_text(encoding="utf-8") == GOOD_MIGRATION


def test_rewrite_never_follows_a_link_out_of_out(tmp_path: Path) -> None:
    path = tmp_path / "001.sql"
    path.write_text(GOOD_MIGRATION, encoding="utf-8")
    (tmp_path / "out").mkdir()
    elsewhere = tmp_path / "elsewhere.sql"
    (tmp_path / "out" / "001.sql").symlink_to(elsewhere)
    result = runner.invoke(app, ["rewrite", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "outside" in result.output, result.output
    assert not elsewhere.exists()


def test_rewrite_into_a_file_is_bad_usage(tmp_path: Path) -> None:
    path = tmp_path / "001.sql"
    path.write_text(GOOD_MIGRATION, encoding="utf-8")
    (tmp_path / "out").write_text("not a folder", encoding="utf-8")
    result = runner.invoke(app, ["rewrite", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "out" in result.output and "Traceback" not in result.output, result.output


# -- rewrite-queries --------------------------------------------------------------------------------

RQ_OPTIONS = st.sampled_from([[], ["--check"], ["--diff"], ["--json"], ["--write"], ["--placeholders", "dollar"],
                              ["--placeholders", "pyformat"], ["--placeholders", "colon"],
                              ["--placeholders", "qmark"], ["--search-path", "other,public"]])


@FUZZ
@given(sql_files(QUERIES), RQ_OPTIONS)
@example(b"SELECT * FROM hydra_client WHERE id = 1" + b" + 1" * 1000 + b";", [])  # recursion
@example(b"SELECT * FROM hydra_client" + b" UNION ALL SELECT * FROM hydra_client" * 1000 + b";", ["--json"])
@example(b"SELECT * FROM hydra_client;\r\nSELECT 'a\rb';\r\n", ["--write"])  # CR bytes are kept
@example(b"SELECT 1;\x00SELECT * FROM hydra_client;", [])
@example(b"SELECT s.* FROM (SELECT FROM hydra_client) AS s;", [])  # a star standing for no column
def test_rewrite_queries_never_crashes(data: bytes, options: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = root / "in.sql"
        path.write_bytes(data)
        result = runner.invoke(app, ["rewrite-queries", str(path), "--schema", str(SCHEMA), *options])
        _check(result, "in.sql", (0, 1, 2) if "--check" in options else (0, 2))
        assert _files(root) == {"in.sql"}  # nothing written beside the file
        after = path.read_bytes()
    if "--write" not in options:
        assert after == data
    if result.exit_code != 0:
        assert after == data
        return
    assert _decoded(data) is not None  # exit 0: the file was UTF-8
    if "--json" in options:
        payload = _json(result)
        changed = bool(payload["changed"])
    else:
        changed = "in 1 file(s)" in result.stderr
    if not changed:
        assert after == data
        if not options or options[0] in ("--placeholders", "--search-path"):
            assert result.stdout_bytes == data  # printed byte for byte (.stdout folds CRLF into LF)


def test_rewrite_queries_too_deep_is_left_as_written(tmp_path: Path) -> None:
    path = tmp_path / "in.sql"
    deep = "SELECT * FROM hydra_client WHERE id = 1" + " + 1" * 3000 + ";\n"
    path.write_text("SELECT * FROM hydra_client;\n" + deep, encoding="utf-8")
    result = runner.invoke(app, ["rewrite-queries", str(path), "--schema", str(SCHEMA)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith('SELECT id, client_name, created_at, "Owner", "select" FROM hydra_client;\n')
    assert result.stdout.endswith(deep)
    assert "in.sql:2:1: unresolved statement: nested too deeply to analyse" in result.stderr


# -- schema files (rewrite-queries --schema) ---------------------------------------------------------


@FUZZ
@given(sql_files(SCHEMAS))
@example(b"CREATE VIEW v AS SELECT 1" + b" + 1" * 1000 + b" AS x;")
@example(b"CREATE TABLE t (a int);\n\\restrict abc\nCREATE VIEW v AS SELECT * FROM t;\x00")
@example(b"CREATE TABLE t (a int);\n\xe9")
def test_schema_files_never_crash(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        schema = root / "in.sql"
        schema.write_bytes(data)
        queries = root / "q.sql"
        queries.write_text("SELECT * FROM t;\nSELECT * FROM hydra_client;\nSELECT * FROM v;\n", encoding="utf-8")
        result = runner.invoke(app, ["rewrite-queries", str(queries), "--schema", str(schema)])
        _check(result, "in.sql", (0, 2))
        assert _files(root) == {"in.sql", "q.sql"}


JSON_SEED = QueryCatalog.from_files([SCHEMA]).to_json()
json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                           max_leaves=10)
REL_KEYS = st.sampled_from(["schema", "name", "columns", "kind", "types", "x"])


@st.composite
def catalog_json(draw: st.DrawFn) -> bytes:
    """--save-schema snapshots: mutated, structurally wrong, deeply nested."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(mutated([JSON_SEED], ['"', "[", "]", "{", "}", ",", ":", "null", "1", "\\", "\x00"], SQL_OPS))\
            .encode("utf-8", errors="surrogatepass")
    if kind == 1:
        n = draw(st.sampled_from([10, 1000, 100_000]))
        return b'{"format": "bluegreen-query-catalog", "relations": ' + b"[" * n + b"]" * n + b"}"
    relations = draw(st.one_of(json_values, st.lists(st.one_of(json_values, st.dictionaries(REL_KEYS, json_values)),
                                                     max_size=3)))
    data = {"format": draw(st.sampled_from(["bluegreen-query-catalog", "other", 1])), "version": 1,
            "search_path": draw(st.one_of(json_values, st.just(["public"]))), "relations": relations}
    for key in draw(st.lists(st.sampled_from(list(data)), max_size=2)):
        data.pop(key, None)
    return json.dumps(data).encode()


@settings(FUZZ, max_examples=300)  # cheap bugs, found fast: a few hundred cases suffice
@given(catalog_json())
@example(b'{"format": "bluegreen-query-catalog", "relations": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
@example(b'{"format": "bluegreen-query-catalog", "search_path": [[1]], "relations": []}')  # unhashable
@example(b'{"format": "bluegreen-query-catalog", "relations": [{"schema": "public", "name": "t", "columns": [null]}]}')
def test_schema_json_never_crashes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        schema = root / "in.json"
        schema.write_bytes(data)
        queries = root / "q.sql"
        queries.write_text("SELECT * FROM t;\nSELECT * FROM hydra_client;\n", encoding="utf-8")
        result = runner.invoke(app, ["rewrite-queries", str(queries), "--schema", str(schema)])
    output = result.output
    assert "Traceback" not in output, output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 2), (result.exit_code, output)
    if result.exit_code == 2:
        assert re.search(r"in\.json(:\d+|: )", output), output  # names the file, and the line or the key


# -- SQL files named by plans (validate; run --dry-run --offline) ------------------------------------

PLAN = """\
version: 1
name: fuzz
clusters:
  blue: {dsn: "postgresql://u:pw@127.0.0.1:1/x"}
  green: {dsn: "postgresql://u:pw@127.0.0.1:1/y"}
steps:
  - {id: sql-file, kind: sql, on: green, file: migrations/001_in.sql}
  - {id: cleanup, kind: cleanup, on: green, policy: report, files: "migrations/*.sql"}
  - {id: migrate, kind: migrate, on: green, files: "migrations/*.sql", mode: lock-safe}
  - {id: queries, kind: check_queries, files: migrations/001_in.sql, baseline: null}
"""


@settings(FUZZ, max_examples=300)  # validate and run --dry-run --offline have 1,000 plan cases in test_fuzz_plans
@given(sql_files([*MIGRATIONS[:60], *QUERIES]), st.sampled_from([["validate"], ["run", "--dry-run", "--offline"]]))
@example(b"SELECT '\xe9';", ["validate"])  # a cleanup step read it without catching the decode error
@example(b"ALTER TABLE t ADD CONSTRAINT c CHECK (a > 1" + b" + 1" * 1000 + b");", ["validate"])
def test_plans_naming_bad_sql_files_never_crash(data: bytes, command: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "migrations").mkdir()
        (root / "migrations" / "001_in.sql").write_bytes(data)
        plan = root / "plan.yaml"
        plan.write_text(PLAN, encoding="utf-8")
        result = runner.invoke(app, [command[0], str(plan), *command[1:]])
    output = result.output
    assert "Traceback" not in output, output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 2), (result.exit_code, output)
    if result.exit_code == 2:
        assert re.search(r"001_in\.sql:\d+", output), output  # names the SQL file and its line
