"""The malformed-plan corpus: every file in tests/data/plans/bad is refused with exit 2, naming line and key.

Each bad plan's first line says what to expect: ``# expect: <line>: <key.path>: <message fragment>``
(an empty key path for problems of the whole file, e.g. invalid YAML).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from orchestrator.cli import app

PLANS = Path(__file__).resolve().parent.parent / "data" / "plans"
BAD = sorted((PLANS / "bad").glob("*.yaml"))
GOOD = sorted((PLANS / "good").glob("*.yaml"))
EXPECT = re.compile(r"^# expect: (\d+): ([^ ]*): (.+)$")
UNSET = ("BLUEGREEN_TEST_SURELY_UNSET", "BLUEGREEN_TEST_SURELY_UNSET_BLUE", "BLUEGREEN_TEST_SURELY_UNSET_DB",
         "BLUEGREEN_TEST_SURELY_UNSET_TARGET")

runner = CliRunner()


@dataclass(frozen=True)
class Expectation:
    line: int
    loc: str
    fragment: str

    def prefix(self, file: str) -> str:
        """The start of the problem's message: ``file:line: key.path: `` (no key path: ``file:line: ``)."""
        return f"{file}:{self.line}: {self.loc}: " if self.loc else f"{file}:{self.line}: "


def expectation(path: Path) -> Expectation:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    match = EXPECT.match(first)
    assert match, f"{path.name}: the first line must be '# expect: <line>: <key.path>: <fragment>': {first!r}"
    return Expectation(int(match.group(1)), match.group(2), match.group(3))


@pytest.fixture(autouse=True)
def _unset_test_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def assert_refused(result: Result, file: str, expect: Expectation) -> None:
    output = result.output
    assert result.exit_code == 2, f"exit {result.exit_code}:\n{output}\nexception: {result.exception!r}"
    assert "Traceback" not in output
    assert expect.prefix(file) in output, f"{expect.prefix(file)!r} not in:\n{output}"
    problem_line = next(line for line in output.splitlines() if expect.prefix(file) in line)
    assert expect.fragment in problem_line, f"{expect.fragment!r} not in {problem_line!r}"


def test_corpus_is_large_enough() -> None:
    assert len(BAD) >= 20
    assert len({p.name.split("-", 1)[0] for p in BAD}) == len(BAD), "file numbers must be unique"


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_every_bad_plan_has_an_expectation(path: Path) -> None:
    expect = expectation(path)
    assert 1 <= expect.line <= max(1, len(path.read_text(encoding="utf-8").splitlines()))
    assert expect.fragment.strip()


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_validate_refuses(path: Path) -> None:
    expect = expectation(path)
    result = invoke("validate", str(path))
    assert_refused(result, str(path), expect)
    assert "ok, plan" not in result.output


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_dry_run_refuses(path: Path) -> None:
    expect = expectation(path)
    result = invoke("run", str(path), "--dry-run", "--offline")
    assert_refused(result, str(path), expect)
    assert "dry run of plan" not in result.output


def _json(result: Result) -> dict[str, Any]:
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("command", [("validate", "--json"), ("run", "--dry-run", "--offline", "--json")],
                         ids=["validate", "run"])
@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_json_refusal(path: Path, command: tuple[str, ...]) -> None:
    expect = expectation(path)
    result = invoke(command[0], str(path), *command[1:])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    data = _json(result)
    assert data["ok"] is False
    assert data["exit_code"] == 2
    assert data["error_type"] == "PlanError"
    problems = data["problems"]
    assert len(problems) == 1, f"a bad plan of the corpus is wrong in one way only: {problems}"
    problem = problems[0]
    assert problem["file"] == str(path)
    assert problem["line"] == expect.line
    assert problem["loc"] == expect.loc
    assert expect.fragment in problem["message"]
    assert data["error"].startswith(expect.prefix(str(path)))


def test_relative_path_is_reported_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(PLANS)
    result = invoke("validate", "bad/14-duration-2x.yaml")
    assert result.exit_code == 2
    assert "bad/14-duration-2x.yaml:11: steps[0].lock_timeout: expected a duration" in result.output


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_bytes(b"")
    result = invoke("validate", str(path))
    assert result.exit_code == 2
    assert f"{path}:1: the file is empty" in result.output
    assert "Traceback" not in result.output


def test_missing_plan_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    result = invoke("validate", str(path))
    assert result.exit_code == 2
    assert f"{path}: cannot read the plan" in result.output
    assert "Traceback" not in result.output


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"version: 1\nname: caf\xe9\n")
    result = invoke("validate", str(path))
    assert result.exit_code == 2
    assert f"{path}: not UTF-8 text" in result.output
    assert "Traceback" not in result.output


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text(
        "version: 1\n"
        "name: many\n"
        "clusters:\n"
        "  blue: {dsn: 'postgresql://app:pw@127.0.0.1:1/x'}\n"
        "  green: {dsn: 'postgresql://app:pw@127.0.0.1:1/x'}\n"
        "steps:\n"
        "  - id: one\n"
        "    kind: sql\n"
        "    on: red\n"
        "    sql: SELECT 1\n"
        "  - id: two\n"
        "    kind: command\n"
        "    argv: [echo]\n"
        "    timeout: 2x\n",
        encoding="utf-8")
    result = invoke("validate", "--json", str(path))
    assert result.exit_code == 2
    problems = _json(result)["problems"]
    assert [(p["line"], p["loc"]) for p in problems] == [(9, "steps[0].on"), (14, "steps[1].timeout")]


@pytest.mark.parametrize("path", GOOD, ids=[p.stem for p in GOOD])
def test_good_plans_validate_and_render(path: Path) -> None:
    result = invoke("validate", str(path))
    assert result.exit_code == 0, result.output
    assert f"{path}: ok, plan " in result.output
    result = invoke("run", str(path), "--dry-run", "--offline")
    assert result.exit_code == 0, result.output
    assert "nothing written" in result.output.replace("\n", " ")


def test_good_corpus_present() -> None:
    assert len(GOOD) >= 3


@pytest.mark.parametrize("value", [".inf", "99999999999999999999", "99999999999d"])
def test_overflowing_duration_is_a_plan_error(tmp_path: Path, value: str) -> None:
    path = tmp_path / "overflow.yaml"
    path.write_text(
        "version: 1\n"
        "name: overflow\n"
        "clusters:\n"
        "  blue: {dsn: 'postgresql://app:pw@127.0.0.1:1/x'}\n"
        "  green: {dsn: 'postgresql://app:pw@127.0.0.1:1/x'}\n"
        "steps:\n"
        "  - id: one\n"
        "    kind: command\n"
        "    argv: [echo]\n"
        f"    timeout: {value}\n",
        encoding="utf-8")
    result = invoke("validate", str(path))
    assert result.exit_code == 2, repr(result.exception)
    assert f"{path}:10: steps[0].timeout: " in result.output


def test_problem_messages_are_single_lines() -> None:
    path = PLANS / "bad" / "32-invalid-dsn.yaml"
    problem = _json(invoke("validate", "--json", str(path)))["problems"][0]
    assert problem["message"] == problem["message"].strip()
