"""Hypothesis strategies shared by the bad-input suites (tests/unit/test_fuzz_*.py).

- :func:`mutated` mutates real text (plans, SQL files): characters and lines dropped, duplicated,
  swapped, replaced, cut mid-token;
- :data:`sql_files` are SQL files as bytes: mutations of real SQL (Hydra's migrations, the golden
  queries), arbitrary text and bytes (non-UTF-8, NUL, BOM, CRLF, huge identifiers, deep nesting,
  nothing but comments), and valid-but-odd SQL (DO blocks, COPY FROM stdin, transaction control,
  stars in CTEs, RETURNING *, unknown tables).

Every example stays small (a few kB), and :data:`runner` builds the click command once, so a
thousand of them run in seconds.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock

import typer.main
import typer.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

ROOT = Path(__file__).resolve().parents[2]
HYDRA = Path(os.environ.get("HYDRA_CORPUS", ROOT.parent / "shared" / "corpus" / "hydra"))

#: one thousand examples per test, no deadline (the first call imports and warms pglast), no database
FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), database=None)



@cache
def _command(app: typer.Typer) -> Any:
    return typer.main.get_command(app)


class FastRunner(CliRunner):
    """typer's CliRunner with each app's click command built once.

    typer builds the click command from the annotations on every ``invoke``: that is 80% of a call's
    time here (40 ms of 50), and a thousand cases per command cannot afford it. The command is
    stateless, so reusing it changes nothing else.
    """

    def invoke(self, app: typer.Typer, args: Any = None, *extra: Any, **kwargs: Any) -> Result:  # type: ignore[override]
        command = _command(app)
        with mock.patch.object(typer.testing, "_get_command", lambda _: command):
            return super().invoke(app, args, *extra, **kwargs)


runner = FastRunner()

PLAN_INSERTS = ["{", "}", "[", ":", "-", "\t", " ", "'", '"', "&a", "*a", "\x00", "${", "\n", "é", "#"]
PLAN_OPS = ("drop_char", "insert", "drop_line", "dup_line", "swap", "indent")
SQL_INSERTS = ["'", '"', "$$", "$x$", "$1", "%s", ":name", "?", "(", ")", ";", "*", ",", "--", "/*", "*/", "\\",
               "\\set x 1\n", "\\i other.sql\n", "\\.\n", "\x00", "\ufeff", "\r\n", "\r", "é", "𝄞", "E'\\", 'U&"',
               "::", "[", "ARRAY[", "\t", "\n", " CONCURRENTLY ", " NOT VALID ", " IF NOT EXISTS ", " ONLY ",
               "BEGIN;\n", "COMMIT;\n", "SELECT * FROM hydra_client;\n", "RETURNING *", "x" * 70]
SQL_OPS = ("drop_char", "insert", "drop_line", "dup_line", "swap", "indent", "dup_char", "truncate", "cut_dollar",
           "swap_chars")


@st.composite
def mutated(draw: st.DrawFn, seeds: Sequence[str], inserts: Sequence[str] = PLAN_INSERTS,
            ops: Sequence[str] = PLAN_OPS, most: int = 4) -> str:
    """One of ``seeds`` after 1 to ``most`` random edits drawn from ``ops``."""
    text = draw(st.sampled_from(list(seeds)))
    for _ in range(draw(st.integers(1, most))):
        lines = text.split("\n")
        op = draw(st.sampled_from(list(ops)))
        if op == "drop_char" and text:
            i = draw(st.integers(0, len(text) - 1))
            text = text[:i] + text[i + 1:]
        elif op == "dup_char" and text:
            i = draw(st.integers(0, len(text) - 1))
            text = text[:i] + text[i] + text[i:]
        elif op == "swap_chars" and len(text) > 1:
            i = draw(st.integers(0, len(text) - 2))
            text = text[:i] + text[i + 1] + text[i] + text[i + 2:]
        elif op == "insert":
            i = draw(st.integers(0, len(text)))
            text = text[:i] + draw(st.sampled_from(list(inserts))) + text[i:]
        elif op == "truncate" and text:
            text = text[:draw(st.integers(0, len(text) - 1))]
        elif op == "cut_dollar" and "$" in text:
            starts = [m.start() for m in re.finditer(r"\$[A-Za-z_]*\$", text)] or [text.index("$")]
            text = text[:draw(st.sampled_from(starts)) + draw(st.integers(1, 12))]
        elif op == "drop_line" and len(lines) > 1:
            del lines[draw(st.integers(0, len(lines) - 1))]
            text = "\n".join(lines)
        elif op == "dup_line":
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
            text = "\n".join(lines)
        elif op == "swap" and len(lines) > 1:
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        elif op == "indent":
            i = draw(st.integers(0, len(lines) - 1))
            lines[i] = "  " + lines[i]
            text = "\n".join(lines)
    return text


# -- SQL seeds ---------------------------------------------------------------------------------------


def _read_all(paths: Sequence[Path], limit: int = 2000) -> list[str]:
    return [text for p in paths if len(text := p.read_text(encoding="utf-8")) <= limit]


def migration_seeds() -> list[str]:
    """Hydra's PostgreSQL migrations (``$HYDRA_CORPUS``), else the repository's example migrations."""
    paths = sorted((HYDRA / "migrations").glob("*.sql")) if (HYDRA / "migrations").is_dir() else []
    paths += sorted((ROOT / "sql" / "examples" / "migrations").glob("*.sql"))
    return _read_all(paths)


def query_seeds() -> list[str]:
    """The golden query corpus (tests/data/queries/cases) and the demo application's queries."""
    cases = ROOT / "tests" / "data" / "queries" / "cases"
    paths = sorted(p for p in cases.glob("*.sql") if not p.name.endswith(".expected.sql"))
    paths += sorted((ROOT / "sql" / "demo" / "queries").glob("*.sql"))
    return _read_all(paths)


ODD_SQL = [
    "",
    "-- only a comment\n",
    "/* a block comment */\n-- and a line comment",
    "/* nested /* comment */ still inside */ SELECT 1;",
    ";;;",
    "BEGIN;\nCREATE INDEX idx_a ON hydra_client (client_name);\nCOMMIT;",
    "START TRANSACTION ISOLATION LEVEL SERIALIZABLE; SAVEPOINT s; ROLLBACK TO SAVEPOINT s; END;",
    "DO $$ BEGIN PERFORM 1; END $$;",
    "DO $body$\nBEGIN\n  EXECUTE 'CREATE INDEX i ON t (a)';\nEND\n$body$ LANGUAGE plpgsql;",
    "CREATE FUNCTION f() RETURNS int AS $f$ SELECT 1 $f$ LANGUAGE sql;",
    "COPY hydra_client (id) FROM stdin;\n1\n2\n\\.\n",
    "COPY hydra_client FROM STDIN WITH (FORMAT csv);",
    "COPY (SELECT * FROM hydra_client) TO STDOUT;",
    "WITH c AS (SELECT * FROM hydra_client) SELECT * FROM c;",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r;",
    "INSERT INTO hydra_client (id) VALUES ($1) RETURNING *;",
    "UPDATE hydra_client SET client_name = %s WHERE id = %(id)s RETURNING *;",
    "DELETE FROM hydra_client WHERE id = :id RETURNING hydra_client.*;",
    "SELECT * FROM no_such_table JOIN other_missing USING (id);",
    "SELECT t.* FROM missing_schema.t AS t;",
    "SELECT * FROM hydra_client c, LATERAL (SELECT * FROM nowhere WHERE x = c.id) s;",
    "SELECT count(*), EXISTS (SELECT * FROM hydra_client) FROM hydra_client;",
    "SELECT row_to_json(c.*) FROM hydra_client c;",
    "SELECT * FROM generate_series(1, 3);",
    "SELECT * FROM (VALUES (1, 2)) AS v (a, b);",
    "TABLE hydra_client;",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a);",
    "CREATE UNIQUE INDEX i ON t (a) WHERE b IS NOT NULL;",
    "DROP INDEX i; DROP TABLE t CASCADE;",
    "ALTER TABLE t ADD COLUMN c int NOT NULL DEFAULT 0, ADD CONSTRAINT u UNIQUE (c);",
    "ALTER TABLE t ALTER COLUMN c TYPE bigint USING c::bigint;",
    "ALTER TABLE t ALTER COLUMN c SET NOT NULL;",
    "ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (a) REFERENCES u (b) ON DELETE CASCADE;",
    "ALTER TABLE t ADD CONSTRAINT ck CHECK (a > 0) NOT VALID; ALTER TABLE t VALIDATE CONSTRAINT ck;",
    "ALTER TABLE t ADD PRIMARY KEY (id);",
    "ALTER TABLE t RENAME COLUMN a TO b; ALTER TABLE t RENAME TO u;",
    "ALTER TABLE ONLY t ADD CONSTRAINT c CHECK (a IS NOT NULL);",
    "REINDEX TABLE t; VACUUM FULL t; CLUSTER t USING i;",
    "CREATE TABLE t (id serial PRIMARY KEY, a text UNIQUE REFERENCES u (a), b int CHECK (b > 0));",
    "CREATE TABLE p (id int) PARTITION BY RANGE (id); CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (1) TO (9);",
    "CREATE VIEW v AS SELECT * FROM hydra_client; SELECT * FROM v;",
    "SET search_path = other, public; SELECT * FROM hydra_client;",
    "SET lock_timeout = '2s'; RESET ALL;",
    "LOCK TABLE t IN ACCESS EXCLUSIVE MODE;",
    "PREPARE q AS SELECT * FROM hydra_client; EXECUTE q; DEALLOCATE q;",
    "EXPLAIN ANALYZE SELECT * FROM hydra_client;",
    "SELECT 'unterminated",
    'SELECT "unterminated',
    "SELECT $$unterminated",
    "CREATE FUNCTION g() RETURNS int AS $$ SELECT 1",
    "SELECT E'\\x41', U&'\\0041', B'101', X'1F';",
    "SELECT 1 /* unterminated",
    "\\set ON_ERROR_STOP on\nSELECT 1;",
    "\\i other.sql",
    "\\connect db\n\\restrict abc\nCREATE TABLE t (a int);",
    "SELECT :'var', :\"ident\", :var;",
    "SELECT ?, ? FROM hydra_client WHERE id = ?;",
    "SELECT * FROM hydra_client WHERE id = ANY(%(ids)s) AND x::text = %s;",
    "SELECT 1\\gset",
]

IDENT_CHARS = st.characters(codec="utf-8", exclude_characters="\x00")


@st.composite
def deep_sql(draw: st.DrawFn) -> str:
    """Deeply nested SQL: the grammar's limits (libpg_query's stack) and our own recursion's."""
    shape = draw(st.integers(0, 9))
    n = draw(st.sampled_from([1, 10, 100, 250, 400, 1000] + ([12_000] if shape == 0 else [])))
    plus = "1" + " + 1" * n
    return [
        f"SELECT {'(' * n}1{')' * n};",
        f"SELECT {plus};",
        f"SELECT * FROM hydra_client WHERE id = {plus};",
        "SELECT * FROM " + "(SELECT * FROM " * n + "hydra_client" + ") s" * n + ";",
        f"CREATE INDEX i ON t (({plus}));",
        f"ALTER TABLE t ADD CONSTRAINT c CHECK (a > {plus});",
        f"ALTER TABLE t ADD COLUMN b int DEFAULT {plus};",
        f"CREATE VIEW v AS SELECT {plus} AS x; SELECT * FROM v;",
        "SELECT * FROM hydra_client" + " UNION ALL SELECT * FROM hydra_client" * n + ";",
        f"SELECT {'ARRAY[' * n}1{']' * n};",
    ][shape]


@st.composite
def odd_text(draw: st.DrawFn) -> str:
    """Huge identifiers, odd characters, deep nesting (one time in five), several odd statements together."""
    kind = draw(st.integers(0, 4))
    if kind == 4:
        return draw(deep_sql())
    if kind == 0:
        name = draw(st.text(IDENT_CHARS, min_size=60, max_size=300))
        quoted = '"' + name.replace('"', '""') + '"'
        return draw(st.sampled_from([f"CREATE TABLE {quoted} (id int);", f"SELECT * FROM {quoted};",
                                     f"CREATE INDEX {quoted} ON t (a);", f"SELECT 1 AS {name};",
                                     f"ALTER TABLE t ADD COLUMN {'c' * draw(st.integers(60, 400))} int;"]))
    if kind == 1:
        return draw(st.text(max_size=300))
    return "\n".join(draw(st.lists(st.sampled_from(ODD_SQL), min_size=1, max_size=5)))


def _encode(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogatepass")


@st.composite
def as_bytes(draw: st.DrawFn, texts: st.SearchStrategy[str]) -> bytes:
    """Text encoded as bytes, sometimes with a BOM, CRLF line ends, Latin-1, or a raw byte spliced in."""
    text = draw(texts)
    how = draw(st.sampled_from(["utf8", "utf8", "utf8", "bom", "crlf", "cr", "latin1", "raw", "nul"]))
    if how == "bom":
        return b"\xef\xbb\xbf" + _encode(text)
    if how == "crlf":
        return _encode(text.replace("\n", "\r\n"))
    if how == "cr":
        return _encode(text.replace("\n", "\r"))
    if how == "latin1":
        return text.encode("latin-1", errors="replace") + b"\xe9"
    data = _encode(text)
    if how == "utf8":
        return data
    i = draw(st.integers(0, len(data)))
    raw = b"\x00" if how == "nul" else draw(st.sampled_from([b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80",
                                                             b"\x80", b"\xfe\xff"]))
    return data[:i] + raw + data[i:]


def sql_texts(seeds: Sequence[str]) -> st.SearchStrategy[str]:
    """SQL text: mutated seeds, odd but valid SQL, deep nesting, arbitrary text."""
    return st.one_of(mutated(seeds, SQL_INSERTS, SQL_OPS), odd_text())


def sql_files(seeds: Sequence[str]) -> st.SearchStrategy[bytes]:
    """SQL files as bytes: mostly UTF-8 text, sometimes not; sometimes arbitrary bytes."""
    return st.one_of(as_bytes(sql_texts(seeds)), st.binary(max_size=200))
