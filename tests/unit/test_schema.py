"""``bluegreen schema``: the plan's JSON Schema, listing every step kind; the good plans conform to it."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.plan import parse_duration, plan_json_schema
from orchestrator.yamlsrc import load

GOOD = sorted((Path(__file__).resolve().parent.parent / "data" / "plans" / "good").glob("*.yaml"))

runner = CliRunner()


def cli_schema() -> dict[str, Any]:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def plan_data(path: Path) -> Any:
    """A good plan as the loader sees it (``on`` as a key, ``${VAR:-default}`` expanded)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEGREEN_TEST_SURELY_UNSET")}
    return load(path.read_text(encoding="utf-8"), str(path), env).data


def step_defs(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Step kind -> its definition, from the discriminator mapping of ``steps``."""
    items = schema["properties"]["steps"]["items"]
    mapping = items["discriminator"]["mapping"]
    out = {}
    for kind, ref in mapping.items():
        assert ref.startswith("#/$defs/")
        out[kind] = schema["$defs"][ref.removeprefix("#/$defs/")]
    return out


def test_schema_title_and_dialect() -> None:
    schema = cli_schema()
    assert schema["title"] == "bluegreen plan"
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"version", "name", "clusters", "steps"}


def test_schema_lists_step_kinds() -> None:
    schema = cli_schema()
    kinds = {d["properties"]["kind"]["const"] for d in schema["$defs"].values()
             if "kind" in d.get("properties", {})}
    assert {"sql", "command"} <= kinds
    defs = step_defs(schema)
    assert {"sql", "command"} <= set(defs)
    assert defs["sql"]["properties"]["kind"]["const"] == "sql"
    assert defs["command"]["properties"]["kind"]["const"] == "command"
    refs = {alt["$ref"] for alt in schema["properties"]["steps"]["items"]["oneOf"]}
    assert {"#/$defs/SqlStepSpec", "#/$defs/CommandStepSpec"} <= refs


def test_step_definitions() -> None:
    defs = step_defs(cli_schema())
    sql, command = defs["sql"], defs["command"]
    assert set(sql["required"]) == {"id", "kind", "on"}
    assert sql["properties"]["on"]["enum"] == ["blue", "green"]
    assert {"sql", "file", "transaction", "rollback", "lock_timeout"} <= set(sql["properties"])
    assert set(command["required"]) == {"id", "kind", "argv"}
    assert command["properties"]["argv"]["minItems"] == 1
    assert {"env", "timeout", "rollback", "ok_codes", "cwd"} <= set(command["properties"])
    for definition in (sql, command):
        assert definition["additionalProperties"] is False
        assert definition["properties"]["id"]["pattern"] == r"^[a-z0-9][a-z0-9_.-]{0,62}$"


def test_cli_matches_library() -> None:
    assert cli_schema() == plan_json_schema()


def test_out_writes_the_same(tmp_path: Path) -> None:
    out = tmp_path / "plan.schema.json"
    result = runner.invoke(app, ["schema", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert json.loads(out.read_text(encoding="utf-8")) == cli_schema()
    assert out.read_text(encoding="utf-8") == runner.invoke(app, ["schema"]).stdout


def _durations(node: Any) -> list[dict[str, Any]]:
    """Every duration schema (recognized by its pattern) in the schema."""
    found = []
    if isinstance(node, dict):
        if node.get("type") == ["string", "number"] and "pattern" in node:
            found.append(node)
        for value in node.values():
            found.extend(_durations(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_durations(value))
    return found


def test_duration_pattern_matches_what_the_parser_accepts() -> None:
    durations = _durations(plan_json_schema())
    assert len(durations) >= 5
    pattern = re.compile(durations[0]["pattern"])
    for text in ("2s", "500ms", "1h30m", "6h", "1.5s"):
        assert pattern.fullmatch(text)
        parse_duration(text)
    for text in ("2x", "", "-1s"):
        assert not pattern.fullmatch(text)


def test_duration_defaults_are_valid_durations() -> None:
    defaults = [d["default"] for d in _durations(plan_json_schema()) if d.get("default") is not None]
    assert defaults
    for value in defaults:
        parse_duration(value)


def _check(instance: Any, schema: dict[str, Any], root: dict[str, Any], where: str) -> None:
    """A small structural check of the subset of JSON Schema that pydantic writes (no jsonschema needed)."""
    if "$ref" in schema:
        _check(instance, root["$defs"][schema["$ref"].removeprefix("#/$defs/")], root, where)
        return
    if "discriminator" in schema:
        ref = schema["discriminator"]["mapping"][instance[schema["discriminator"]["propertyName"]]]
        _check(instance, {"$ref": ref}, root, where)
        return
    if "anyOf" in schema:
        errors = []
        for alternative in schema["anyOf"]:
            try:
                _check(instance, alternative, root, where)
                return
            except AssertionError as exc:
                errors.append(str(exc))
        raise AssertionError(f"{where}: no alternative matches: {errors}")
    types = schema.get("type")
    types = [types] if isinstance(types, str) else types
    python: dict[str, type | tuple[type, ...]] = {
        "object": dict, "array": list, "string": str, "integer": int, "number": (int, float), "boolean": bool,
        "null": type(None)}
    if types:
        assert any(isinstance(instance, python[t]) for t in types), f"{where}: {instance!r} is not {types}"
    if "const" in schema:
        assert instance == schema["const"], where
    if "enum" in schema:
        assert instance in schema["enum"], where
    if "pattern" in schema and isinstance(instance, str):
        assert re.search(schema["pattern"], instance), f"{where}: {instance!r} !~ {schema['pattern']}"
    if "minItems" in schema and isinstance(instance, list):
        assert len(instance) >= schema["minItems"], where
    if isinstance(instance, dict):
        properties = schema.get("properties", {})
        for key in schema.get("required", []):
            assert key in instance, f"{where}: {key} is required"
        if schema.get("additionalProperties") is False:
            assert set(instance) <= set(properties), f"{where}: unknown {set(instance) - set(properties)}"
        for key, value in instance.items():
            if key in properties:
                _check(value, properties[key], root, f"{where}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                _check(value, schema["additionalProperties"], root, f"{where}.{key}")
    if isinstance(instance, list) and "items" in schema:
        for i, value in enumerate(instance):
            _check(value, schema["items"], root, f"{where}[{i}]")


def test_good_plans_exist() -> None:
    assert len(GOOD) >= 3


@pytest.mark.parametrize("path", GOOD, ids=[p.stem for p in GOOD])
def test_good_plan_conforms_structurally(path: Path) -> None:
    schema = plan_json_schema()
    _check(plan_data(path), schema, schema, path.name)


def test_structural_check_can_fail() -> None:
    schema = plan_json_schema()
    data = plan_data(GOOD[0])
    with pytest.raises(AssertionError, match="unknown"):
        _check({**data, "stepz": []}, schema, schema, "plan")
    with pytest.raises(AssertionError, match="on"):
        broken = {**data, "steps": [{**data["steps"][0], "kind": "sql", "on": "purple"}]}
        _check(broken, schema, schema, "plan")


@pytest.mark.parametrize("path", GOOD, ids=[p.stem for p in GOOD])
def test_good_plan_validates_with_jsonschema(path: Path) -> None:
    import jsonschema

    schema = plan_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(plan_data(path))
