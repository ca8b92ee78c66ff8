"""Passwords never leave bluegreen: DSN redaction and the process-wide set of registered secrets.

Every secret here is random so that registering it (process-wide) cannot mask text of another test.
"""

from __future__ import annotations

import secrets as stdlib_secrets
from pathlib import Path
from urllib.parse import quote

import pytest

from orchestrator import secrets
from orchestrator.errors import PlanError
from orchestrator.plan import load_plan
from orchestrator.yamlsrc import load


def fresh(prefix: str = "pw") -> str:
    """A random secret no other test uses."""
    return f"{prefix}-{stdlib_secrets.token_hex(6)}"


def test_redact_dsn_uri() -> None:
    password = fresh()
    out = secrets.redact_dsn(f"postgresql://app:{password}@db.example:5432/hydra?sslmode=require")
    assert password not in out
    assert "password=***" in out
    for part in ("user=app", "host=db.example", "port=5432", "dbname=hydra", "sslmode=require"):
        assert part in out


def test_redact_dsn_docstring_example() -> None:
    assert secrets.redact_dsn("postgresql://app:s3cret@db:5432/hydra") == \
        "user=app password=*** dbname=hydra host=db port=5432"


def test_redact_dsn_key_value() -> None:
    password = fresh()
    out = secrets.redact_dsn(f"host=db port=5432 user=app password={password} dbname=x")
    assert password not in out
    assert "password=***" in out
    assert "host=db" in out and "user=app" in out and "dbname=x" in out


def test_redact_dsn_key_value_quoted_password_with_spaces() -> None:
    password = fresh("two words")
    out = secrets.redact_dsn(f"host=db user=app password='{password}' dbname=x")
    assert "two words" not in out
    assert password.split()[1] not in out
    assert "password=***" in out


def test_redact_dsn_url_quoted_password() -> None:
    password = "p@ss:w/rd-" + stdlib_secrets.token_hex(4)
    quoted = quote(password, safe="")
    dsn = f"postgresql://app:{quoted}@db:5432/x"
    assert secrets.dsn_password(dsn) == password
    out = secrets.redact_dsn(dsn)
    assert password not in out
    assert quoted not in out
    assert "password=***" in out


def test_redact_dsn_without_password_is_unchanged_in_content() -> None:
    out = secrets.redact_dsn("postgresql://app@db/x")
    assert "password" not in out
    assert "user=app" in out and "host=db" in out and "dbname=x" in out


def test_redact_dsn_that_does_not_parse_masks_uri_password() -> None:
    password = fresh()
    out = secrets.redact_dsn(f"postgresql://app:{password}@[::1/x")  # unbalanced IPv6 bracket
    assert password not in out
    assert out == "postgresql://app:***@[::1/x"


def test_redact_dsn_that_does_not_parse_masks_key_value_password() -> None:
    password = fresh()
    out = secrets.redact_dsn(f"host=db password={password} bogus")
    assert password not in out


def test_dsn_password() -> None:
    password = fresh()
    assert secrets.dsn_password(f"postgresql://app:{password}@db/x") == password
    assert secrets.dsn_password(f"host=db password={password}") == password
    assert secrets.dsn_password("postgresql://app@db/x") is None


def test_redact_masks_registered_secret_and_its_quoted_form() -> None:
    password = "p@ss:w/rd-" + stdlib_secrets.token_hex(4)
    quoted = quote(password, safe="")
    text = f"a {password} b {quoted} c"
    assert secrets.redact(text) == text  # not registered yet
    secrets.register(password)
    assert secrets.redact(text) == "a *** b *** c"


def test_redact_longest_secret_first() -> None:
    short = fresh("abcd")
    long = short + "-longer"
    secrets.register(short)
    secrets.register(long)
    assert secrets.redact(f"x {long} y") == "x *** y"


def test_register_ignores_short_values() -> None:
    secrets.register("ab")
    secrets.register("")
    secrets.register(None)
    assert secrets.redact("ab cd") == "ab cd"


def test_register_dsn_registers_password() -> None:
    password = fresh()
    assert password in secrets.redact(f"leak {password}")
    secrets.register_dsn(f"postgresql://app:{password}@db/x")
    assert secrets.redact(f"leak {password}") == "leak ***"


def test_redact_obj() -> None:
    password = fresh()
    secrets.register(password)
    data = {"a": [password, 1, {"b": f"x{password}x"}], "n": None}
    assert secrets.redact_obj(data) == {"a": ["***", 1, {"b": "x***x"}], "n": None}


@pytest.mark.parametrize("name", ["DB_PASSWORD", "PGPASSWORD", "API_TOKEN", "BLUE_DSN", "MY_SECRET",
                                  "API_KEY", "DATABASE_URL", "PGPASSFILE"])
def test_secret_names(name: str) -> None:
    assert secrets.is_secret_name(name)


@pytest.mark.parametrize("name", ["HOME", "PGHOST", "PGPORT", "USER", "KEYBOARD"])
def test_not_secret_names(name: str) -> None:
    assert not secrets.is_secret_name(name)


def _plan(tmp_path: Path, blue: str, green: str, argv: str = '["echo"]') -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(
        "version: 1\n"
        "name: secrets\n"
        "clusters:\n"
        f"  blue: {{dsn: \"{blue}\"}}\n"
        f"  green: {{dsn: \"{green}\"}}\n"
        "steps:\n"
        "  - id: one\n"
        "    kind: command\n"
        f"    argv: {argv}\n",
        encoding="utf-8")
    return path


def test_loading_a_plan_registers_dsn_passwords(tmp_path: Path) -> None:
    uri_password = fresh("uri")
    kv_password = fresh("kv")
    path = _plan(tmp_path, f"postgresql://app:{uri_password}@127.0.0.1:1/x",
                 f"host=127.0.0.1 port=1 user=app password={kv_password} dbname=x")
    text = f"blue {uri_password} green {kv_password}"
    assert secrets.redact(text) == text
    loaded = load_plan(path, env={})
    assert loaded.plan.clusters.blue.dsn.endswith("@127.0.0.1:1/x")
    assert secrets.redact(text) == "blue *** green ***"


def test_loading_a_plan_registers_url_quoted_dsn_password(tmp_path: Path) -> None:
    password = "p@ss:w/rd-" + stdlib_secrets.token_hex(4)
    quoted = quote(password, safe="")
    path = _plan(tmp_path, f"postgresql://app:{quoted}@127.0.0.1:1/x", "postgresql://app@127.0.0.1:1/x")
    load_plan(path, env={})
    assert secrets.redact(f"{password} {quoted}") == "*** ***"


def test_dsn_from_environment_registers_password(tmp_path: Path) -> None:
    password = fresh("env")
    path = _plan(tmp_path, "${BLUE_DSN}", "postgresql://app@127.0.0.1:1/x")
    load_plan(path, env={"BLUE_DSN": f"postgresql://app:{password}@127.0.0.1:1/x"})
    assert secrets.redact(password) == "***"


def test_password_variable_is_registered(tmp_path: Path) -> None:
    password = fresh("var")
    path = _plan(tmp_path, "postgresql://app@127.0.0.1:1/x", "postgresql://app@127.0.0.1:1/x",
                 argv='["tool", "--password", "${DB_PASSWORD}"]')
    loaded = load_plan(path, env={"DB_PASSWORD": password})
    assert password in str(loaded.plan.steps[0])
    assert secrets.redact(f"--password {password}") == "--password ***"


@pytest.mark.parametrize("name", ["API_KEY", "DB_PASSWD", "MY_CREDENTIAL"])
def test_every_secret_named_variable_is_registered(name: str) -> None:
    value = fresh("val")
    load(f'a: "${{{name}}}"\n', "f.yaml", {name: value})
    assert secrets.redact(value) == "***"


def test_invalid_dsn_error_does_not_leak_password(tmp_path: Path) -> None:
    password = fresh("bad")
    path = _plan(tmp_path, f"postgresql://app:{password}@127.0.0.1:1/x", "host=x port")
    with pytest.raises(PlanError) as info:
        load_plan(path, env={})
    assert password not in str(info.value)
    assert "clusters.green.dsn: not a valid connection string" in str(info.value)
