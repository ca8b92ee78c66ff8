"""check_queries and rewrite-queries against real clusters (acceptance 3 of issue 5).

Blue holds the schema the old application was built for; green gets a migration. A query file with
``SELECT *`` fails check_queries once green adds a column, passes after ``bluegreen rewrite-queries``
expanded it against blue, and fails again, naming the query and the column, when a migration drops a
column the queries use.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from orchestrator.localenv import Databases

from .helpers import bluegreen, cli_env, query, write_plan

SCHEMA = """
CREATE TABLE hydra_client (id text PRIMARY KEY, client_name text NOT NULL DEFAULT '');
CREATE TABLE hydra_oauth2_access (
    signature text PRIMARY KEY, request_id text NOT NULL, client_id text NOT NULL REFERENCES hydra_client (id),
    subject text NOT NULL DEFAULT '', expires_at timestamptz, active boolean NOT NULL DEFAULT true);
INSERT INTO hydra_client VALUES ('c1', 'one');
INSERT INTO hydra_oauth2_access VALUES ('s1', 'r1', 'c1', 'u1', now() + interval '1 hour', true);
"""

QUERIES = """\
-- token lookup
SELECT * FROM hydra_oauth2_access WHERE signature = %s;

-- clients of a subject
SELECT DISTINCT c.* FROM hydra_client c
JOIN hydra_oauth2_access a ON a.client_id = c.id WHERE a.subject = :subject;

UPDATE hydra_oauth2_access SET active = false WHERE request_id = $1;
SELECT count(*) FROM hydra_oauth2_access WHERE client_id = %(client)s;
CREATE INDEX IF NOT EXISTS never_run ON hydra_oauth2_access (subject);
"""

STEP = """\
  - {id: queries, kind: check_queries, files: app/*.sql, against: green, baseline: blue}
"""


def _setup(dbs: Databases, tmp_path: Path) -> tuple[Path, Path]:
    for dsn in (dbs.blue_dsn, dbs.green_dsn):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA.encode())
    app = tmp_path / "app"
    app.mkdir()
    queries_file = app / "queries.sql"
    queries_file.write_text(QUERIES, encoding="utf-8")
    return write_plan(tmp_path / "plan.yaml", "check", STEP), queries_file


def _green(dbs: Databases, statement: str) -> None:
    with psycopg.connect(dbs.green_dsn, autocommit=True) as conn:
        conn.execute(statement.encode())


def _checks(report_file: Path) -> list[dict[str, object]]:
    report = json.loads(report_file.read_text())
    return list(report["steps"][0]["checks"])


def test_select_star_fails_until_rewritten_and_a_dropped_column_fails(dbs: Databases, tmp_path: Path) -> None:
    plan, queries_file = _setup(dbs, tmp_path)
    env = cli_env(dbs)
    report = tmp_path / "report.json"

    # same schema on both sides: everything passes, nothing was executed
    ok = bluegreen(["run", str(plan), "--report", str(report)], env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    [summary] = _checks(report)
    assert summary["ok"]
    assert "4 statement(s) in 1 file(s) prepared and planned on green" in str(summary["detail"])
    assert "1 not a query, skipped (app/queries.sql:10)" in str(summary["detail"])
    assert "2 SELECT * / t.* that `bluegreen rewrite-queries` would expand" in str(summary["detail"])
    assert query(dbs.green_dsn, "SELECT active FROM hydra_oauth2_access") == [(True,)]  # the UPDATE never ran
    assert query(dbs.green_dsn, "SELECT to_regclass('never_run')") == [(None,)]

    # a migration adds a column on green: both SELECT * now return something the old code cannot read
    _green(dbs, "ALTER TABLE hydra_oauth2_access ADD COLUMN challenge_id text;"
                " ALTER TABLE hydra_client ADD COLUMN registration_token text")
    failed = bluegreen(["run", str(plan), "--restart", "--report", str(report)], env)
    assert failed.returncode == 1
    checks = {c["name"]: c for c in _checks(report)}
    assert not checks["queries"]["ok"]
    assert "2 would break" in str(checks["queries"]["detail"])
    assert "green adds column(s) challenge_id" in str(checks["app/queries.sql:2"]["detail"])
    assert "SELECT * FROM hydra_oauth2_access WHERE signature = %s" in str(checks["app/queries.sql:2"]["detail"])
    assert "green adds column(s) registration_token" in str(checks["app/queries.sql:5"]["detail"])
    assert "app/queries.sql:2" in failed.stderr and "challenge_id" in failed.stderr

    # rewrite the file against blue, the schema the old code was built for
    rewrite = bluegreen(["rewrite-queries", str(queries_file), "--dsn", dbs.blue_dsn, "--write"], env)
    assert rewrite.returncode == 0, rewrite.stderr
    text = queries_file.read_text()
    assert "SELECT signature, request_id, client_id, subject, expires_at, active FROM hydra_oauth2_access" \
        " WHERE signature = %s;" in text
    assert "SELECT DISTINCT c.id, c.client_name FROM hydra_client c" in text
    assert "SELECT count(*)" in text
    assert dbs.blue_dsn.split("@")[0].split(":")[-1] not in rewrite.stdout + rewrite.stderr  # no password

    passed = bluegreen(["run", str(plan), "--restart", "--report", str(report)], env)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert [c["ok"] for c in _checks(report)] == [True]

    # a migration drops a column the queries read: the failure names the query and the column
    _green(dbs, "ALTER TABLE hydra_oauth2_access DROP COLUMN subject")
    dropped = bluegreen(["run", str(plan), "--restart", "--report", str(report)], env)
    assert dropped.returncode == 1
    checks = {c["name"]: c for c in _checks(report)}
    assert set(checks) == {"queries", "app/queries.sql:2", "app/queries.sql:5"}
    first = str(checks["app/queries.sql:2"]["detail"])
    assert 'column "subject" does not exist [42703]' in first
    assert "fails on green at line 2, column 42" in first
    assert "SELECT signature, request_id, client_id, subject" in first
    assert 'column a.subject does not exist' in str(checks["app/queries.sql:5"]["detail"])


def test_type_change_and_ambiguous_name(dbs: Databases, tmp_path: Path) -> None:
    plan, queries_file = _setup(dbs, tmp_path)
    queries_file.write_text("SELECT signature, expires_at FROM hydra_oauth2_access WHERE signature = $1;\n"
                            "SELECT client_id FROM hydra_oauth2_access a JOIN hydra_client c ON c.id = a.client_id;\n",
                            encoding="utf-8")
    _green(dbs, "ALTER TABLE hydra_oauth2_access ALTER COLUMN expires_at TYPE text;"
                " ALTER TABLE hydra_client ADD COLUMN client_id text")
    report = tmp_path / "report.json"
    result = bluegreen(["run", str(plan), "--report", str(report)], cli_env(dbs))
    assert result.returncode == 1
    checks = {c["name"]: str(c["detail"]) for c in _checks(report)}
    assert "type change: column expires_at is timestamp with time zone on blue but text on green" \
        in checks["app/queries.sql:1"]
    assert 'column reference "client_id" is ambiguous [42702]' in checks["app/queries.sql:2"]
    assert "line 2, column 8" in checks["app/queries.sql:2"]


def test_rewrite_queries_cli(dbs: Databases, tmp_path: Path) -> None:
    _plan, queries_file = _setup(dbs, tmp_path)
    env = cli_env(dbs)
    check = bluegreen(["rewrite-queries", str(queries_file), "--dsn", dbs.blue_dsn, "--check", "--diff"], env)
    assert check.returncode == 1
    assert "-SELECT * FROM hydra_oauth2_access WHERE signature = %s;" in check.stdout
    assert "+SELECT signature, request_id, client_id, subject, expires_at, active FROM" in check.stdout
    assert "kept count(*)" in check.stderr
    assert queries_file.read_text() == QUERIES  # --check writes nothing

    as_json = bluegreen(["rewrite-queries", str(queries_file), "--dsn", dbs.blue_dsn, "--json",
                         "--save-schema", str(tmp_path / "blue.json")], env)
    assert as_json.returncode == 0, as_json.stderr
    payload = json.loads(as_json.stdout)
    [entry] = payload["files"]
    assert [(c["line"], c["column"], c["before"]) for c in entry["changes"]] == [(2, 8, "*"), (5, 17, "c.*")]
    assert [k["text"] for k in entry["kept"]] == ["count(*)"]

    # the saved catalog gives the same rewrite offline
    offline = bluegreen(["rewrite-queries", str(queries_file), "--schema", str(tmp_path / "blue.json"), "--json"], env)
    assert json.loads(offline.stdout)["files"] == payload["files"]

    bad = bluegreen(["rewrite-queries", str(queries_file), "--dsn",
                     dbs.blue_dsn.replace(dbs.blue_dsn.split(":")[-1].split("/")[0], "1")], env)
    assert bad.returncode == 2
    assert "cannot connect" in bad.stderr
    password = dbs.blue_dsn.split("://")[1].split("@")[0].split(":")[1]
    assert password not in bad.stderr + bad.stdout


def test_bad_query_files_are_refused_before_anything_connects(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "ok.sql").write_text("SELECT 1;\n", encoding="utf-8")
    (app / "bad.sql").write_text("SELECT 1;\nSELECT * FROM t WHERE a = :a AND AND b;\n", encoding="utf-8")
    env = {"BLUE_DSN": "postgresql://nobody@127.0.0.1:1/x", "GREEN_DSN": "postgresql://nobody@127.0.0.1:1/x",
           "PATH": "/usr/bin:/bin"}
    plan = write_plan(tmp_path / "plan.yaml", "bad-queries", STEP)
    result = bluegreen(["validate", str(plan)], env)
    assert result.returncode == 2
    assert "plan.yaml:8: steps[0].files:" in result.stderr
    assert "app/bad.sql:2:34: syntax error at or near \"AND\"" in result.stderr
    missing = write_plan(tmp_path / "missing.yaml", "missing-queries",
                         "  - {id: queries, kind: check_queries, files: nowhere/*.sql}\n")
    result = bluegreen(["validate", str(missing)], env)
    assert result.returncode == 2 and "nowhere/*.sql: no such file" in result.stderr
