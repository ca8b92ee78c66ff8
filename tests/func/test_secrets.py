"""A DSN's password never appears: not in output, logs, errors, the journal, the report, or --json."""

from __future__ import annotations

from pathlib import Path

from orchestrator.localenv import Databases

from .helpers import bluegreen, cli_env, journal_dump, write_plan

STEPS = """\
  - {id: table, kind: sql, on: green, sql: "CREATE TABLE t (x int)", rollback: {sql: "DROP TABLE IF EXISTS t"}}
  - {id: show-env, kind: command, argv: [sh, -c, 'echo "blue=$BLUEGREEN_BLUE_DSN green=$BLUE_DSN pw=$PGPASSWORD"']}
  - {id: leak-and-fail, kind: command, argv: [sh, -c, 'echo "failing with $BLUEGREEN_GREEN_DSN" >&2; exit 4']}
"""


def test_password_never_printed_journaled_or_reported(dbs: Databases, tmp_path: Path, pg_password: str) -> None:
    assert pg_password in dbs.blue_dsn  # the DSNs the plan gets really carry it
    plan = write_plan(tmp_path / "plan.yaml", "secret", STEPS, "{on_failure: rollback}")
    env = cli_env(dbs, PGPASSWORD=pg_password)
    outputs: list[str] = []

    def run(*args: str, code: int | None = None, environ: dict[str, str] | None = None) -> None:
        result = bluegreen(list(args), environ or env)
        if code is not None:
            assert result.returncode == code, result.stdout + result.stderr
        outputs.extend([result.stdout, result.stderr])

    report = tmp_path / "report.json"
    run("run", str(plan), "--dry-run", code=0)
    run("run", str(plan), "--dry-run", "--json", code=0)
    run("run", str(plan), "--verbose", "--report", str(report), code=1)
    run("status", str(plan), code=0)
    run("status", str(plan), "--json", code=0)
    run("rollback", str(plan), "--json")
    run("run", str(plan), "--json", "--restart", code=1)
    wrong_port = cli_env(dbs, GREEN_DSN=dbs.green_dsn.replace(f":{dbs.green.port}/", ":1/"))
    run("run", str(plan), code=2, environ=wrong_port)
    run("validate", str(plan), "--json", code=0)
    wrong_password = cli_env(dbs, GREEN_DSN=dbs.green_dsn.replace(pg_password, pg_password + "x"))
    run("run", str(plan), code=2, environ=wrong_password)

    everything = "\n".join(outputs) + report.read_text() + journal_dump(dbs.blue_dsn) + journal_dump(dbs.green_dsn)
    assert "failing with" in everything and "blue=" in everything  # the leaky commands did run
    assert "***" in everything  # ... and what they printed was masked, not dropped
    assert "password authentication failed" in everything
    assert pg_password not in everything
