"""Generated bad input thrown at the CLI: never a traceback, always a clear message and exit 2 (or 0 if valid).

Plans come from three strategies: mutations of valid plan text (characters and lines dropped,
duplicated, swapped, replaced), structured plans with wrong keys, types and values, and arbitrary
YAML documents. Each command gets at least 1,000 cases (hypothesis ``max_examples``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from fuzz_support import FUZZ, mutated, runner
from hypothesis import example, given
from hypothesis import strategies as st

from orchestrator.cli import app

ROOT = Path(__file__).resolve().parents[2]
SEEDS = [p.read_text() for p in sorted((ROOT / "tests" / "data" / "plans" / "good").glob("*.yaml"))]

KEYS = ["version", "name", "clusters", "blue", "green", "dsn", "defaults", "steps", "id", "kind", "on", "sql",
        "file", "argv", "env", "timeout", "lock_timeout", "rollback", "transaction", "on_failure", "control",
        "switches", "checks", "pause_budget", "lock_retries", "batch_size", "statement_timeout", "description"]
KINDS = ["sql", "command", "cutover", "validate", "snapshot", "capture", "replay", "migrate", "nope", ""]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                    st.text(max_size=30), st.sampled_from(["2s", "0s", "-1s", "1h30m", "${X}", "${UNSET_VAR_X}",
                                                           "blue", "green", "select 1", "selec 1", "\\set x 1",
                                                           "postgresql://u:p@h:1/d", "host=h port="]))
values = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=5)), max_leaves=20)


@st.composite
def structured_plans(draw: st.DrawFn) -> str:
    step = draw(st.dictionaries(st.sampled_from(KEYS), values, max_size=6))
    if draw(st.booleans()):
        step["kind"] = draw(st.sampled_from(KINDS))
    if draw(st.booleans()):
        step["id"] = draw(st.sampled_from(["a", "A b", "", "x" * 70, "ok-id"]))
    plan: dict[str, Any] = {
        "version": draw(st.sampled_from([1, 2, "1", None])),
        "name": draw(st.sampled_from(["demo", "Bad Name", "", 3])),
        "clusters": draw(st.one_of(values, st.just({"blue": {"dsn": "postgresql://u:pw@h:1/d"},
                                                   "green": {"dsn": "host=h dbname=d"}}))),
        "steps": draw(st.one_of(st.lists(st.just(step), max_size=3), values)),
    }
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=2)):
        plan[key] = draw(values)
    return yaml.safe_dump(plan, allow_unicode=True)


def mutated_plans() -> st.SearchStrategy[str]:
    return mutated(SEEDS)  # characters and lines dropped, duplicated, swapped, replaced (fuzz_support)


any_plan = st.one_of(mutated_plans(), structured_plans(), st.text(max_size=200))


def _invoke(args: list[str], text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        (Path(tmp) / "migrations").mkdir()
        result = runner.invoke(app, [*[a if a != "PLAN" else str(path) for a in args]],
                               env={"X": "x", "GREEN_DSN": "host=h dbname=d"})
    output = result.output
    assert "Traceback" not in output, output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 2), (result.exit_code, output)
    if result.exit_code == 2:
        assert "plan.yaml" in output, output  # the message names the file


@FUZZ
@given(any_plan)
@example("!0")  # a tag the safe loader does not know: was a ConstructorError traceback
@example("version: !!int abc\nname: x")  # a value its tag cannot read: was a ValueError
def test_validate_never_crashes(text: str) -> None:
    _invoke(["validate", "PLAN"], text)


@FUZZ
@given(any_plan)
@example("!0")  # a tag the safe loader does not know: was a ConstructorError traceback
@example("version: !!int abc\nname: x")  # a value its tag cannot read: was a ValueError
def test_dry_run_offline_never_crashes(text: str) -> None:
    _invoke(["run", "PLAN", "--dry-run", "--offline"], text)
