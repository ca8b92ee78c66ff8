"""``bluegreen lint`` and ``bluegreen rewrite`` as an operator runs them: output, JSON, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from orchestrator.sqlanalysis.transactions import HEADER_NOTE

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "sql" / "examples" / "migrations"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60, check=False, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})


def test_lint_reports_hazards_with_position_lock_and_safe_rewrite() -> None:
    result = run("lint", str(EXAMPLES))
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert f"{EXAMPLES}/002_order_constraints.sql:2:1: require-concurrent-index-creation: CREATE INDEX takes a SHARE" \
           " lock: writes to the table block while the index builds" in lines
    at = lines.index(f"{EXAMPLES}/002_order_constraints.sql:7:1: adding-not-nullable-field: SET NOT NULL scans the"
                     " whole table under an ACCESS EXCLUSIVE lock: reads and writes block")
    assert lines[at + 1] == "  lock: ACCESS EXCLUSIVE on orders (blocks reads and writes)"
    assert lines[at + 2:at + 6] == [
        "  safe: ALTER TABLE orders ADD CONSTRAINT orders_status_bgnn CHECK (status IS NOT NULL) NOT VALID;",
        "        ALTER TABLE orders VALIDATE CONSTRAINT orders_status_bgnn;",
        "        ALTER TABLE orders ALTER COLUMN status SET NOT NULL;",
        "        ALTER TABLE orders DROP CONSTRAINT orders_status_bgnn"]
    assert lines[-1] == ("9 hazard(s) in 3 file(s), 9 statement(s): 9 rewritten by lock-safe mode, 0 refused,"
                         " 0 to review")


def test_lint_json_and_exclude() -> None:
    result = run("lint", str(EXAMPLES / "003_order_status_index.sql"), "--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["ok"] is False
    assert data["by_rule"] == {"require-concurrent-index-creation": 1, "require-concurrent-index-deletion": 1}
    first = data["hazards"][0]
    assert (first["rule"], first["line"], first["column"], first["lock"]) == \
           ("require-concurrent-index-deletion", 1, 1, "ACCESS EXCLUSIVE")
    assert first["fix"] == "DROP INDEX CONCURRENTLY IF EXISTS orders_account_id_idx"
    assert {"target": "orders", "mode": "SHARE", "blocks": "writes"} in data["locks"][1]["locks"]

    clean = run("lint", str(EXAMPLES / "003_order_status_index.sql"), "--exclude",
                "require-concurrent-index-creation,require-concurrent-index-deletion")
    assert clean.returncode == 0, clean.stdout
    assert "0 hazard(s)" in clean.stdout


def test_lint_squawk_format() -> None:
    result = run("lint", "--format", "squawk", str(EXAMPLES / "003_order_status_index.sql"))
    assert result.returncode == 1
    assert result.stdout.splitlines()[:6] == [
        "warning[require-concurrent-index-deletion]: DROP INDEX takes an ACCESS EXCLUSIVE lock on the table: reads"
        " and writes block",
        f"  --> {EXAMPLES}/003_order_status_index.sql:1:1",
        "  |",
        "1 | DROP INDEX orders_account_id_idx;",
        "  |",
        "  = help: DROP INDEX CONCURRENTLY, outside a transaction"]


def test_lint_bad_input_is_a_usage_error(tmp_path: Path) -> None:
    script = tmp_path / "001_psql.sql"
    script.write_text("SELECT 1;\n\\set x 1\n")
    result = run("lint", str(script))
    assert result.returncode == 2
    assert f"{script}:2:1: psql meta-command" in result.stderr
    missing = run("lint", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no such file or directory" in missing.stderr
    unknown = run("lint", str(EXAMPLES), "--exclude", "no-such-rule")
    assert unknown.returncode == 2 and "unknown rule(s): no-such-rule" in unknown.stderr


def test_rewrite_writes_every_file_and_refuses_what_has_no_safe_form(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run("rewrite", str(EXAMPLES), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in EXAMPLES.iterdir())
    # a file with nothing to rewrite: its bytes, in the one transaction migrate runs it in, under lock_timeout
    assert (out / "001_accounts.sql").read_bytes() == (
        f"SET lock_timeout = '2s';\n{HEADER_NOTE}\nBEGIN;\n".encode() + (EXAMPLES / "001_accounts.sql").read_bytes()
        + b"COMMIT;\n")
    assert "CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_account_status_idx" in \
           (out / "003_order_status_index.sql").read_text()
    assert "7 statement(s) rewritten in 2 file(s), 5 transaction change(s) noted" in result.stdout
    slower = run("rewrite", str(EXAMPLES), "--out", str(tmp_path / "slow"), "--lock-timeout", "1500ms")
    assert slower.returncode == 0, slower.stderr
    assert (tmp_path / "slow" / "003_order_status_index.sql").read_text().startswith("SET lock_timeout = '1500ms';\n")
    bad = run("rewrite", str(EXAMPLES), "--out", str(tmp_path / "bad"), "--lock-timeout", "soon")
    assert bad.returncode == 2 and "--lock-timeout: expected a duration" in bad.stderr

    src = tmp_path / "src"
    src.mkdir()
    (src / "001_type.sql").write_text("CREATE INDEX i ON t (a);\nALTER TABLE t ALTER COLUMN a TYPE bigint;\n")
    refused = run("rewrite", str(src), "--out", str(tmp_path / "refused"))
    assert refused.returncode == 1
    assert f"{src}/001_type.sql:2:1: changing-column-type: refused:" in refused.stdout
    assert "--allow changing-column-type" in refused.stdout
    assert not (tmp_path / "refused").exists()
    allowed = run("rewrite", str(src), "--out", str(tmp_path / "allowed"), "--allow", "changing-column-type")
    assert allowed.returncode == 0
    assert (tmp_path / "allowed" / "001_type.sql").read_text() == (
        f"SET lock_timeout = '2s';\n{HEADER_NOTE}\n"
        "-- bluegreen: CREATE INDEX CONCURRENTLY cannot run inside a transaction block: it runs outside the file's"
        " transaction (atomicity changed)\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a);\nALTER TABLE t ALTER COLUMN a TYPE bigint;\n")
