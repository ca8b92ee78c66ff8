"""``actions.render``: what a dry run prints is exactly what the executor would run."""

from __future__ import annotations

import secrets as stdlib_secrets
import shlex
from datetime import timedelta
from pathlib import Path

from psycopg import sql

from orchestrator import secrets
from orchestrator.actions import CommandAction, SqlAction, action_target, ms, render

STATEMENTS = ("ALTER TABLE users ADD COLUMN nickname text", "UPDATE users SET nickname = 'it''s {x}'")


def sql_action(transactional: bool, lock_timeout: timedelta | None = None,
               statement_timeout: timedelta | None = None) -> SqlAction:
    return SqlAction(id="sql:s:0", target="blue", statements=tuple(sql.SQL(s) for s in STATEMENTS),
                     transactional=transactional, lock_timeout=lock_timeout,
                     statement_timeout=statement_timeout)


def test_transactional_with_timeouts() -> None:
    action = sql_action(True, lock_timeout=timedelta(seconds=2), statement_timeout=timedelta(minutes=1))
    assert render(action) == (
        "BEGIN;\n"
        "SET LOCAL lock_timeout = '2000ms';\n"
        "SET LOCAL statement_timeout = '60000ms';\n"
        "ALTER TABLE users ADD COLUMN nickname text;\n"
        "UPDATE users SET nickname = 'it''s {x}';\n"
        "COMMIT;"
    )


def test_transactional_without_timeouts() -> None:
    assert render(sql_action(True)) == (
        "BEGIN;\n"
        "ALTER TABLE users ADD COLUMN nickname text;\n"
        "UPDATE users SET nickname = 'it''s {x}';\n"
        "COMMIT;"
    )


def test_transactional_lock_timeout_only() -> None:
    rendered = render(sql_action(True, lock_timeout=timedelta(milliseconds=1500)))
    assert rendered.splitlines()[:2] == ["BEGIN;", "SET LOCAL lock_timeout = '1500ms';"]
    assert "statement_timeout" not in rendered


def test_non_transactional_uses_session_set() -> None:
    action = sql_action(False, lock_timeout=timedelta(seconds=2), statement_timeout=timedelta(hours=6))
    rendered = render(action)
    lines = rendered.splitlines()
    assert lines[:4] == [
        "SET lock_timeout = '2000ms';",
        "SET statement_timeout = '21600000ms';",
        "ALTER TABLE users ADD COLUMN nickname text;",
        "UPDATE users SET nickname = 'it''s {x}';",
    ]
    assert "BEGIN" not in rendered
    assert "COMMIT" not in rendered
    assert "SET LOCAL" not in rendered


def test_non_transactional_without_timeouts_is_the_statements() -> None:
    assert render(sql_action(False)) == (
        "ALTER TABLE users ADD COLUMN nickname text;\n"
        "UPDATE users SET nickname = 'it''s {x}';"
    )


def test_sql_is_redacted() -> None:
    password = "pw-" + stdlib_secrets.token_hex(6)
    secrets.register(password)
    action = SqlAction(id="a", target="green", statements=(sql.SQL(f"ALTER ROLE app PASSWORD '{password}'"),))
    rendered = render(action)
    assert password not in rendered
    assert "ALTER ROLE app PASSWORD '***';" in rendered


def test_ms() -> None:
    assert ms(timedelta(seconds=2)) == "2000ms"
    assert ms(timedelta(milliseconds=1)) == "1ms"
    assert ms(timedelta(hours=1)) == "3600000ms"


def test_command_is_shell_quoted_with_env_and_redacted_password() -> None:
    password = "Hunter-" + stdlib_secrets.token_hex(6)
    secrets.register(password)
    argv = ("pg_dump", "--file", "out file.sql", "it's", "$HOME", "a;b")
    action = CommandAction(id="command:c", argv=argv, env={"PGPASSWORD": password, "B": "two words"},
                           cwd=Path("/tmp/x y"), timeout=timedelta(seconds=90))
    rendered = render(action)
    assert password not in rendered
    assert rendered == (
        "cd '/tmp/x y' && B='two words' PGPASSWORD='***' "
        "pg_dump --file 'out file.sql' 'it'\"'\"'s' '$HOME' 'a;b'  # timeout 90s"
    )
    command, comment = rendered.split("  # ")
    assert comment == "timeout 90s"
    words = shlex.split(command)
    assert words[:3] == ["cd", "/tmp/x y", "&&"]
    assert words[3:5] == ["B=two words", "PGPASSWORD=***"]
    assert tuple(words[5:]) == argv


def test_command_without_env_or_cwd() -> None:
    rendered = render(CommandAction(id="command:t", argv=("true",)))
    assert rendered == "true  # timeout 600s"


def test_command_argv_secret_is_redacted() -> None:
    token = "tok-" + stdlib_secrets.token_hex(6)
    secrets.register(token)
    rendered = render(CommandAction(id="command:t", argv=("curl", "-H", f"Authorization: Bearer {token}")))
    assert token not in rendered
    assert "'Authorization: Bearer ***'" in rendered


def test_action_target() -> None:
    assert action_target(sql_action(True)) == "blue"
    assert action_target(CommandAction(id="c", argv=("true",))) == "local"
