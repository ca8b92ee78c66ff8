"""``kind: migrate`` on real servers: versions, resumption, fast mode, refusals, dry runs, rollback."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.localenv import Databases

from .helpers import bluegreen, cli_env, query, scalar, write_plan

FILES = {
    "001_accounts.sql": "CREATE TABLE accounts (id bigint PRIMARY KEY, email text, team int);\n"
                        "INSERT INTO accounts SELECT g, 'u' || g || '@x', g % 7 FROM generate_series(1, 3000) g;\n",
    "002_indexes.sql": "CREATE INDEX accounts_email_idx ON accounts (email);\n"
                       "CREATE INDEX accounts_team_idx ON accounts (team);\n"
                       "CREATE UNIQUE INDEX accounts_email_team_key ON accounts (email, team);\n"
                       "ALTER TABLE accounts ALTER COLUMN email SET NOT NULL;\n",
    "010_comment_only.sql": "-- nothing to do in this version\n",
}


def migrations(tmp_path: Path, files: dict[str, str]) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def plan(tmp_path: Path, name: str, extra: str = "", defaults: str = "{}") -> Path:
    return write_plan(tmp_path / f"{name}.yaml", name, f"""\
  - id: migrate
    kind: migrate
    on: green
    files: "migrations/*.sql"
{extra}""", defaults)


def actions_done(dsn: str, run_id: int) -> list[str]:
    return [r[0] for r in query(dsn, "SELECT action_id FROM bluegreen.step_events WHERE run_id = %s AND status = 'done'"
                                     " AND action_id IS NOT NULL ORDER BY event_id", (run_id,))]


def test_applied_versions_are_skipped_by_a_later_run(dbs: Databases, tmp_path: Path) -> None:
    migrations(tmp_path, FILES)
    path = plan(tmp_path, "versions", "    mode: lock-safe\n")
    first = bluegreen(["run", str(path)], cli_env(dbs))
    assert first.returncode == 0, first.stderr
    assert query(dbs.green_dsn, "SELECT version, file, mode, step_id FROM bluegreen.schema_versions ORDER BY 1") == [
        ("001", "001_accounts.sql", "lock-safe", "migrate"), ("002", "002_indexes.sql", "lock-safe", "migrate"),
        ("010", "010_comment_only.sql", "lock-safe", "migrate")]

    # a new release brings one more file: the next run applies it alone
    migrations(tmp_path, {"011_more.sql": "ALTER TABLE accounts ADD COLUMN note text;\n"})
    dry = bluegreen(["run", str(path), "--dry-run", "--restart"], cli_env(dbs))
    assert dry.returncode == 0, dry.stderr
    assert "migrate:migrate:011:0" in dry.stderr and "migrate:migrate:001" not in dry.stderr
    second = bluegreen(["run", str(path), "--restart"], cli_env(dbs))
    assert second.returncode == 0, second.stderr
    assert actions_done(dbs.blue_dsn, 2) == ["ensure_history:migrate", "migrate:migrate:011:0"]
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM accounts") == 3000  # 001's INSERT did not run again
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM bluegreen.schema_versions") == 4


def test_fast_mode_builds_indexes_in_parallel_outside_the_file_transaction(dbs: Databases, tmp_path: Path) -> None:
    migrations(tmp_path, FILES)
    path = plan(tmp_path, "fast", "    mode: fast\n    parallel: 3\n    maintenance_work_mem: 64MB\n")
    dry = bluegreen(["run", str(path), "--dry-run", "--offline"], cli_env(dbs))
    assert dry.returncode == 0, dry.stderr
    assert "SET maintenance_work_mem = '64MB';\n      CREATE INDEX IF NOT EXISTS accounts_email_idx ON accounts" \
           in dry.stderr
    result = bluegreen(["run", str(path), "--json"], cli_env(dbs))
    assert result.returncode == 0, result.stderr
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM pg_index WHERE indrelid = 'accounts'::regclass"
                                 " AND indisvalid") == 4
    built = {r[0] for r in query(dbs.blue_dsn, "SELECT key FROM bluegreen.run_state"
                                               " WHERE key LIKE 'migrate:%:built:%'")}
    assert built == {f"migrate:migrate:built:create_index:migrate:002:{n}" for n in range(3)}
    assert scalar(dbs.green_dsn, "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'accounts'::regclass"
                                 " AND attname = 'email'") is True
    assert scalar(dbs.green_dsn, "SELECT mode FROM bluegreen.schema_versions WHERE version = '002'") == "fast"


def test_statements_with_no_safe_form_are_refused_before_anything_runs(dbs: Databases, tmp_path: Path) -> None:
    migrations(tmp_path, {**FILES, "003_type.sql": "ALTER TABLE accounts ALTER COLUMN team TYPE bigint;\n"})
    result = bluegreen(["run", str(plan(tmp_path, "refused", "    mode: lock-safe\n"))], cli_env(dbs))
    assert result.returncode == 1
    assert "003_type.sql:1:1: changing-column-type:" in result.stderr
    assert "allow: [changing-column-type]" in result.stderr
    assert scalar(dbs.green_dsn, "SELECT to_regclass('accounts')") is None

    allowed = bluegreen(["run", str(plan(tmp_path, "allowed", "    mode: lock-safe\n"
                                                            "    allow: [changing-column-type]\n"))], cli_env(dbs))
    assert allowed.returncode == 0, allowed.stderr
    assert scalar(dbs.green_dsn, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
                                 " WHERE attrelid = 'accounts'::regclass AND attname = 'team'") == "bigint"


def test_a_failed_run_rolls_back_with_the_down_files(dbs: Databases, tmp_path: Path) -> None:
    migrations(tmp_path, {"001_accounts.up.sql": FILES["001_accounts.sql"],
                          "002_bad.up.sql": "ALTER TABLE accounts ADD COLUMN x int;\nSELECT 1/0;\n"})
    (tmp_path / "down").mkdir()
    (tmp_path / "down" / "001_accounts.down.sql").write_text("DROP TABLE accounts;\n")
    path = write_plan(tmp_path / "down.yaml", "down", """\
  - {id: migrate, kind: migrate, on: green, files: "migrations/*.up.sql", down: "down/*.down.sql"}
""", "{on_failure: rollback}")
    result = bluegreen(["run", str(path)], cli_env(dbs))
    assert result.returncode == 1
    assert "division by zero" in result.stderr and "rolled back" in result.stderr
    assert scalar(dbs.green_dsn, "SELECT to_regclass('accounts')") is None
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM bluegreen.schema_versions") == 0
    assert "migrate_down:migrate:001" in [r[0] for r in query(
        dbs.blue_dsn, "SELECT action_id FROM bluegreen.step_events WHERE phase = 'rollback' AND status = 'done'")]


def test_plan_errors_name_the_file_and_line(dbs: Databases, tmp_path: Path) -> None:
    migrations(tmp_path, {"001_bad.sql": "SELECT 1;\nCREATE INDEX ON ;\n"})
    result = bluegreen(["run", str(plan(tmp_path, "bad"))], cli_env(dbs))
    assert result.returncode == 2
    assert "001_bad.sql:2:" in result.stderr and "steps[0].files" in result.stderr
    none = bluegreen(["run", str(write_plan(tmp_path / "none.yaml", "none", """\
  - {id: migrate, kind: migrate, on: green, files: "nowhere/*.sql"}
"""))], cli_env(dbs))
    assert none.returncode == 2 and "no file matches 'nowhere/*.sql'" in none.stderr
    rule = bluegreen(["run", str(plan(tmp_path, "rule", "    allow: [not-a-rule]\n"))], cli_env(dbs))
    assert rule.returncode == 2 and "unknown rule(s) not-a-rule" in rule.stderr


def test_online_dry_run_shows_only_pending_files(dbs: Databases, tmp_path: Path) -> None:
    migrations(tmp_path, FILES)
    path = plan(tmp_path, "dry")
    assert bluegreen(["run", str(path)], cli_env(dbs)).returncode == 0
    migrations(tmp_path, {"011_more.sql": "CREATE INDEX accounts_more ON accounts (team, id);\n"})
    dry = bluegreen(["run", str(path), "--dry-run", "--json"], cli_env(dbs))
    assert dry.returncode == 0, dry.stderr
    rendered = [r["action"] for r in json.loads(dry.stdout)["rendered"]]
    assert rendered == ["ensure_history:migrate", "create_index_concurrently:migrate:011:0",
                        "record_version:migrate:011"]
    assert scalar(dbs.green_dsn, "SELECT to_regclass('accounts_more')") is None


def test_killed_after_a_commit_resumes_without_applying_twice(dbs: Databases, tmp_path: Path) -> None:
    migrations(tmp_path, FILES)
    path = plan(tmp_path, "crash", "    mode: lock-safe\n")
    # SIGKILL right after 001's transaction (INSERT of 3000 rows + its version) committed, before the journal knew
    killed = bluegreen(["run", str(path)], cli_env(dbs, BLUEGREEN_FAULT="after:migrate:migrate:001:0"))
    assert killed.returncode == -9
    # and then in the middle of 002, after a concurrent index build, outside any transaction
    killed = bluegreen(["run", str(path)],
                       cli_env(dbs, BLUEGREEN_FAULT="after:create_index_concurrently:migrate:002:1"))
    assert killed.returncode == -9
    resumed = bluegreen(["run", str(path)], cli_env(dbs))
    assert resumed.returncode == 0, resumed.stderr
    assert "committed before the interruption" in resumed.stderr or "done in an earlier attempt" in resumed.stderr
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM accounts") == 3000
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM bluegreen.schema_versions") == 3
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM pg_index WHERE indrelid = 'accounts'::regclass"
                                 " AND indisvalid") == 4
    assert scalar(dbs.blue_dsn, "SELECT count(*) FROM bluegreen.runs") == 1
