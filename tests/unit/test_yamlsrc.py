"""YAML with lines: keys keep their line, ``on`` stays a name, ``${VAR}`` expands, duplicates are errors."""

from __future__ import annotations

import pytest

from orchestrator.errors import PlanError
from orchestrator.yamlsrc import Located, format_loc, load


def problems(text: str, env: dict[str, str] | None = None) -> list[tuple[int | None, str, str]]:
    with pytest.raises(PlanError) as info:
        load(text, "f.yaml", env or {})
    return [(p.line, p.loc, p.message) for p in info.value.problems]


def test_on_key_stays_a_string() -> None:
    data = load("on: blue\nyes: 1\noff: 2\nno: 3\n", "f.yaml", {}).data
    assert data == {"on": "blue", "yes": 1, "off": 2, "no": 3}
    assert all(isinstance(key, str) for key in data)


def test_on_key_inside_a_step() -> None:
    data = load("steps:\n  - id: a\n    on: green\n", "f.yaml", {}).data
    assert data["steps"][0]["on"] == "green"
    assert True not in data["steps"][0]


def test_boolean_values_stay_booleans() -> None:
    data = load("transaction: false\nflag: on\n", "f.yaml", {}).data
    assert data == {"transaction": False, "flag": True}


def test_variable_expansion() -> None:
    data = load("a: ${A}\nb: x-${A}-y\nc: ${B:-fallback}\nd: ${A:-unused}\n", "f.yaml", {"A": "val"}).data
    assert data == {"a": "val", "b": "x-val-y", "c": "fallback", "d": "val"}


def test_default_may_be_empty_and_set_empty_wins() -> None:
    data = load('a: "${UNSET:-}"\nb: "${EMPTY:-dflt}"\n', "f.yaml", {"EMPTY": ""}).data
    assert data == {"a": "", "b": ""}


def test_default_with_uri() -> None:
    data = load('dsn: "${X:-postgresql://app@h:5432/db}"\n', "f.yaml", {}).data
    assert data == {"dsn": "postgresql://app@h:5432/db"}


def test_escaped_variable_stays_literal() -> None:
    data = load('a: "$${VAR}"\nb: "$${VAR:-x} and ${VAR}"\n', "f.yaml", {"VAR": "v"}).data
    assert data == {"a": "${VAR}", "b": "${VAR:-x} and v"}


def test_escaped_variable_needs_no_environment() -> None:
    assert load('a: "$${NOT_SET_ANYWHERE}"\n', "f.yaml", {}).data == {"a": "${NOT_SET_ANYWHERE}"}


def test_variables_expand_in_lists_and_nested_mappings_only_in_strings() -> None:
    data = load('a:\n  - "${V}"\n  - {k: "${V}"}\n  - 3\n', "f.yaml", {"V": "x"}).data
    assert data == {"a": ["x", {"k": "x"}, 3]}


def test_missing_variable_is_reported_with_line_and_key() -> None:
    assert problems("a: 1\nb:\n  c: ${NOPE}\n") == [(3, "b.c", "environment variable ${NOPE} is not set")]


def test_every_missing_variable_is_reported() -> None:
    found = problems("a: ${ONE} ${TWO}\nb: [\"${ONE}\"]\n")
    assert found == [(1, "a", "environment variable ${ONE} is not set"),
                     (1, "a", "environment variable ${TWO} is not set"),
                     (2, "b[0]", "environment variable ${ONE} is not set")]


def test_lines_of_nested_keys_and_items() -> None:
    text = (
        "# comment\n"            # 1
        "version: 1\n"           # 2
        "clusters:\n"            # 3
        "  blue:\n"              # 4
        "    dsn: x\n"           # 5
        "steps:\n"               # 6
        "  - id: a\n"            # 7
        "    kind: sql\n"        # 8
        "\n"                     # 9
        "  - id: b\n"            # 10
        "    argv:\n"            # 11
        "      - echo\n"         # 12
        "      - hi\n"           # 13
    )
    located = load(text, "f.yaml", {})
    assert located.lines[()] == 2
    assert located.lines[("version",)] == 2
    assert located.lines[("clusters",)] == 3
    assert located.lines[("clusters", "blue")] == 4
    assert located.lines[("clusters", "blue", "dsn")] == 5
    assert located.lines[("steps",)] == 6
    assert located.lines[("steps", 0)] == 7
    assert located.lines[("steps", 0, "kind")] == 8
    assert located.lines[("steps", 1)] == 10
    assert located.lines[("steps", 1, "argv")] == 11
    assert located.lines[("steps", 1, "argv", 0)] == 12
    assert located.lines[("steps", 1, "argv", 1)] == 13


def test_line_of_falls_back_to_nearest_ancestor() -> None:
    located = load("a:\n  b:\n    c: 1\n", "f.yaml", {})
    assert located.line_of(("a", "b", "missing", 3)) == 2
    assert located.line_of(("zzz",)) == 1
    assert Located({}, {}).line_of(("a",)) is None


def test_duplicate_key_is_an_error() -> None:
    assert problems("a: 1\nb:\n  c: 1\n  d: 2\n  c: 3\n") == \
        [(5, "b.c", "duplicate key (YAML would silently keep only the last)")]


def test_duplicate_top_level_key_is_an_error() -> None:
    assert problems("steps: []\nname: x\nsteps: [1]\n") == \
        [(3, "steps", "duplicate key (YAML would silently keep only the last)")]


def test_duplicate_on_keys_are_an_error_even_spelled_as_booleans() -> None:
    found = problems("on: blue\non: green\n")
    assert [(line, loc) for line, loc, _ in found] == [(2, "on")]


def test_non_string_key_is_an_error() -> None:
    found = problems("a: 1\n2: b\n")
    assert found == [(2, "", "keys must be strings, got int")]


def test_yaml_syntax_error_names_its_line() -> None:
    found = problems("a: 1\nb: [1, 2\nc: 3\n")
    assert len(found) == 1
    line, loc, message = found[0]
    assert loc == ""
    assert line == 3
    assert message.startswith("invalid YAML: ")


def test_empty_document() -> None:
    assert problems("# only a comment\n") == [(1, "", "the file is empty; a plan is a YAML mapping")]


def test_merge_keys_are_resolved() -> None:
    data = load("base: &b\n  x: 1\n  y: 2\nother:\n  <<: *b\n  z: 3\n", "f.yaml", {}).data
    assert data["other"] == {"x": 1, "y": 2, "z": 3}


def test_merge_key_can_be_overridden() -> None:
    data = load("base: &b\n  x: 1\n  y: 2\nother:\n  <<: *b\n  x: 3\n", "f.yaml", {}).data
    assert data["other"] == {"x": 3, "y": 2}


@pytest.mark.parametrize(
    ("loc", "text"),
    [((), ""), (("steps",), "steps"), (("steps", 3, "lock_timeout"), "steps[3].lock_timeout"),
     (("a", 0, 1, "b"), "a[0][1].b")],
)
def test_format_loc(loc: tuple[str | int, ...], text: str) -> None:
    assert format_loc(loc) == text
