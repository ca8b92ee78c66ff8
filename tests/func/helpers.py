"""Helpers for functional tests: write plans, run the real CLI as a process, read the journal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from orchestrator.localenv import Databases

ROOT = Path(__file__).resolve().parents[2]


def write_plan(path: Path, name: str, steps: str, defaults: str = "{}") -> Path:
    """Write a plan whose clusters come from ``$BLUE_DSN`` / ``$GREEN_DSN``; ``steps`` is YAML text."""
    path.write_text(
        f"version: 1\nname: {name}\n"
        'clusters:\n  blue: {dsn: "${BLUE_DSN}"}\n  green: {dsn: "${GREEN_DSN}"}\n'
        f"defaults: {defaults}\nsteps:\n{steps}",
        encoding="utf-8",
    )
    return path


def cli_env(dbs: Databases, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEGREEN_")}
    env.update({"BLUE_DSN": dbs.blue_dsn, "GREEN_DSN": dbs.green_dsn, "COLUMNS": "200"})
    env.update(extra)
    return env


def bluegreen(args: Sequence[str], env: dict[str, str], timeout: float = 120,
              cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``bluegreen ARGS`` as a real process and wait for it."""
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=env, cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def spawn(args: Sequence[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def query(dsn: str, text: str | sql.Composable, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(text.encode() if isinstance(text, str) else text, params)
        return list(cur.fetchall()) if cur.description is not None else []


def scalar(dsn: str, text: str | sql.Composable, params: Sequence[Any] | None = None) -> Any:
    return query(dsn, text, params)[0][0]


def wait_for(predicate: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def journal_started(dsn: str, action_id: str) -> bool:
    """Whether the journal on ``dsn`` shows ``action_id`` started (False while it does not exist)."""
    try:
        return bool(scalar(dsn, "SELECT to_regclass('bluegreen.step_events') IS NOT NULL AND EXISTS ("
                                "SELECT FROM bluegreen.step_events WHERE action_id = %s AND status = 'started')",
                           (action_id,)))
    except psycopg.errors.UndefinedTable:
        return False


def journal_dump(dsn: str) -> str:
    """Every row of every bluegreen table on ``dsn``, as JSON text (empty if there is none)."""
    tables = query(dsn, "SELECT schemaname, tablename FROM pg_tables WHERE schemaname = 'bluegreen'")
    out = []
    for schema, table in tables:
        rows = query(dsn, sql.SQL("SELECT row_to_json(t) FROM {} t").format(sql.Identifier(schema, table)))
        out.extend(json.dumps(r[0]) for r in rows)
    return "\n".join(out)
