"""``split_statements``: exact statement text with 1-based positions; psql scripts and bad SQL are refused."""

from __future__ import annotations

import pytest

from orchestrator.sqlanalysis.parse import SqlSyntaxError, Statement, position, split_statements

SCRIPT = (
    "-- leading comment\n"                                                       # 1
    "SELECT 1;\n"                                                                # 2
    "  CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$\n"             # 3
    "BEGIN\n"                                                                    # 4
    "  -- ; not the end\n"                                                       # 5
    "  RETURN 1; /* ; */\n"                                                      # 6
    "END\n"                                                                      # 7
    "$body$;\n"                                                                  # 8
    "/* block ; comment */ UPDATE t SET s = 'a;b' WHERE x = $$;$$; SELECT  2\n"  # 9
)


def test_statements_keep_exact_text_and_positions() -> None:
    statements = split_statements(SCRIPT, "x.sql")
    assert [(s.line, s.column) for s in statements] == [(2, 1), (3, 3), (9, 23), (9, 63)]
    assert [s.text for s in statements] == [
        "SELECT 1",
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$\nBEGIN\n  -- ; not the end\n"
        "  RETURN 1; /* ; */\nEND\n$body$",
        "UPDATE t SET s = 'a;b' WHERE x = $$;$$",
        "SELECT  2",
    ]


def test_offsets_point_at_the_text() -> None:
    for statement in split_statements(SCRIPT):
        assert SCRIPT[statement.offset:statement.offset + len(statement.text)] == statement.text
        assert position(SCRIPT, statement.offset) == (statement.line, statement.column)


def test_non_ascii_positions_are_in_characters() -> None:
    text = "SELECT 'ééé';\nSELECT '日本語' AS x; SELECT 3"
    statements = split_statements(text)
    assert statements == [
        Statement("SELECT 'ééé'", 1, 1, 0),
        Statement("SELECT '日本語' AS x", 2, 1, 14),
        Statement("SELECT 3", 2, 20, 33),
    ]


@pytest.mark.parametrize("text", ["", "   \n", "-- only a comment\n", "/* c */", ";;"])
def test_nothing_to_run(text: str) -> None:
    assert split_statements(text) == []


def test_single_statement_without_semicolon() -> None:
    assert split_statements("VACUUM ANALYZE t") == [Statement("VACUUM ANALYZE t", 1, 1, 0)]


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("SELECT 1;\n\\i other.sql\n", 2, 1),
        ("SELECT 1;\n  \\set x 1\nSELECT 2;", 2, 3),
        ("SELECT 1 \\gset", 1, 10),
        ("-- psql\n\\connect db\n", 2, 1),
    ],
)
def test_psql_meta_command_is_refused(text: str, line: int, column: int) -> None:
    with pytest.raises(SqlSyntaxError) as info:
        split_statements(text, "m.sql")
    error = info.value
    assert (error.line, error.column) == (line, column)
    assert error.source == "m.sql"
    assert "psql meta-command" in error.message
    assert str(error) == f"m.sql:{line}:{column}: {error.message}"


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"),
    [
        ("SELECT 1;\nSELEC 2;", 2, 1, 'syntax error at or near "SELEC"'),
        ("SELECT 1;\n  SELECT FROM WHERE;", 2, 15, 'syntax error at or near "WHERE"'),
        ("SELECT 1;\nSELECT 2 +;", 2, 11, 'syntax error at or near ";"'),
        ("SELECT 'abc", 1, 8, "unterminated quoted string"),
        ("SELECT $$abc", 1, 8, "unterminated dollar-quoted string"),
        ("SELECT 'éééééé'; SELEC 1", 1, 18, 'syntax error at or near "SELEC"'),
    ],
)
def test_syntax_error_has_line_and_column(text: str, line: int, column: int, fragment: str) -> None:
    with pytest.raises(SqlSyntaxError) as info:
        split_statements(text, "s.sql")
    error = info.value
    assert (error.line, error.column) == (line, column)
    assert fragment in error.message
    assert str(error).startswith(f"s.sql:{line}:{column}: ")


def test_syntax_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="syntax error"):
        split_statements("SELEC 1")


def test_error_at_end_of_input_points_at_the_end() -> None:
    text = "SELECT 1;\nALTER TABLE users ADD COLUMN"
    with pytest.raises(SqlSyntaxError) as info:
        split_statements(text)
    assert "end of input" in info.value.message
    assert info.value.line == 2


@pytest.mark.parametrize(
    ("offset", "expected"),
    [(0, (1, 1)), (3, (1, 4)), (4, (2, 1)), (6, (2, 3)), (7, (3, 1))],
)
def test_position(offset: int, expected: tuple[int, int]) -> None:
    assert position("abc\nde\nf", offset) == expected


@pytest.mark.parametrize("text", ["SELECT 1 -- trailing\n", "SELECT 1 /* c */ -- d\n", "SELECT 1 -- c\n;\n"])
def test_a_statement_ends_at_its_last_token_not_at_a_comment_after_it(text: str) -> None:
    assert [s.text for s in split_statements(text)] == ["SELECT 1"]
