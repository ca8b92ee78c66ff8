"""``bluegreen rewrite-queries --schema``, offline (the --dsn side is in tests/func/test_queries_check.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "tests" / "data" / "queries" / "schema.sql"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEGREEN_")}
    return subprocess.run([sys.executable, "-m", "orchestrator", "rewrite-queries", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_check_diff_write_and_json(tmp_path: Path) -> None:
    queries = tmp_path / "queries"
    queries.mkdir()
    app = queries / "app.sql"
    app.write_text("-- lookups\nSELECT * FROM hydra_client WHERE id = %s;\nSELECT count(*) FROM hydra_client;\n",
                   encoding="utf-8")
    (queries / "clean.sql").write_text("SELECT id FROM hydra_client;\n", encoding="utf-8")

    printed = _cli("queries/app.sql", "--schema", str(SCHEMA), cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == ('-- lookups\nSELECT id, client_name, created_at, "Owner", "select" FROM hydra_client'
                              ' WHERE id = %s;\nSELECT count(*) FROM hydra_client;\n')
    assert "queries/app.sql:3:8: kept count(*): count(*) counts rows: it is not a column list" in printed.stderr
    assert "2 file(s)" not in printed.stderr and "1 file(s): would expand 1 star(s) in 1 file(s)" in printed.stderr

    check = _cli("queries", "--schema", str(SCHEMA), "--check", "--diff", cwd=tmp_path)
    assert check.returncode == 1
    assert check.stdout.startswith("--- a/queries/app.sql\n+++ b/queries/app.sql\n")
    assert "-SELECT * FROM hydra_client WHERE id = %s;\n+SELECT id, client_name," in check.stdout
    assert "2 file(s): would expand 1 star(s) in 1 file(s)" in check.stderr

    written = _cli("queries", "--schema", str(SCHEMA), "--write", cwd=tmp_path)
    assert written.returncode == 0 and "rewrote queries/app.sql" in written.stderr
    assert app.read_text().startswith('-- lookups\nSELECT id, client_name, created_at, "Owner", "select" FROM')
    clean = _cli("queries", "--schema", str(SCHEMA), "--check", "--json", cwd=tmp_path)
    assert clean.returncode == 0
    payload = json.loads(clean.stdout)
    assert payload["ok"] and payload["changed"] == 0 and len(payload["files"]) == 2


def test_usage_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sql"
    bad.write_text("SELECT 1;\nSELECT * FROM WHERE;\n", encoding="utf-8")
    result = _cli(str(bad), "--schema", str(SCHEMA), cwd=tmp_path)
    assert result.returncode == 2 and "bad.sql:2:15: syntax error at or near \"WHERE\"" in result.stderr
    result = _cli(str(bad), cwd=tmp_path)
    assert result.returncode == 2 and "--dsn DSN" in result.stderr
    result = _cli(str(tmp_path / "nope.sql"), "--schema", str(SCHEMA), cwd=tmp_path)
    assert result.returncode == 2 and "nope.sql: no such file" in result.stderr
    result = _cli(str(bad), "--schema", str(SCHEMA), "--check", "--write", cwd=tmp_path)
    assert result.returncode == 2 and "--check writes nothing" in result.stderr
