"""squawk (the reference linter, PyPI squawk-cli) agrees with bluegreen: on Hydra's real migrations it finds
the hazards bluegreen finds, and on ``bluegreen rewrite``'s output (Hydra's, and our corpus of files with
explicit transactions) it finds none of the rules we rewrite, nor any about transactions or lock_timeout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from orchestrator.sqlanalysis.lint import lint
from orchestrator.sqlanalysis.parse import split_statements

ROOT = Path(__file__).resolve().parents[2]
HYDRA = Path(os.environ.get("HYDRA_CORPUS", ROOT.parent / "shared" / "corpus" / "hydra"))

# the squawk rules whose hazards bluegreen rewrites into a lock-safe form
REWRITTEN = ("require-concurrent-index-creation", "require-concurrent-index-deletion", "constraint-missing-not-valid",
             "adding-foreign-key-constraint", "adding-not-nullable-field", "adding-serial-primary-key-field",
             "disallowed-unique-constraint")
# what `bluegreen rewrite --out` must leave none of: the rules it rewrites, transactions, lock_timeout
CLEAN = (*REWRITTEN, "ban-concurrent-index-creation-in-transaction", "require-lock-timeout", "transaction-nesting")
ALLOWED = "changing-column-type,adding-field-with-default"  # no safe form: kept as written
# Hydra's statements that have no lock-safe form, per file, and why: the only ones kept as written (--allow)
HYDRA_REFUSED = {
    "20190100000009000000_client.postgres.up.sql": {"adding-field-with-default": "ADD COLUMN pk SERIAL fills every "
                                                    "row from a sequence: hydra_client is rewritten"},
    "20190200000004000000_jwk.postgres.up.sql": {"adding-field-with-default": "the same SERIAL pk on hydra_jwk"},
    "20190400000009000000_oauth2.postgres.up.sql": {"changing-column-type": "ten ALTER COLUMN TYPE on the five token "
                                                    "tables: each rewrites its table, no concurrent form"},
    "20211004110001000000_change_client_primary_key.postgres.up.sql": {
        "adding-field-with-default": "ADD COLUMN pk UUID DEFAULT uuid_in(md5(random() ...)): volatile, every row "
                                     "of hydra_client rewritten"},
    "20211011000001000000_change_jwk_primary_key.postgres.up.sql": {
        "adding-field-with-default": "the same volatile UUID default on hydra_jwk"},
}
TRANSACTIONS = ROOT / "tests" / "data" / "transactions"
ROLLBACKS = ROOT / "tests" / "data" / "transactions-rollback"


def _need(what: str, ok: bool) -> None:
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} is missing (CI=true)", pytrace=False)
        pytest.skip(f"{what} is missing")  # never under CI=true: failed above


@pytest.fixture(scope="module")
def squawk() -> str:
    found = shutil.which("squawk", path=str(Path(sys.executable).parent)) or shutil.which("squawk")
    _need("squawk (pip install squawk-cli)", found is not None)
    assert found is not None
    return found


@pytest.fixture(scope="module")
def corpus() -> list[Path]:
    _need(f"the Hydra corpus at {HYDRA}", (HYDRA / "migrations").is_dir())
    return sorted((HYDRA / "migrations").glob("*.up.sql"))


def findings(squawk: str, files: list[Path]) -> list[dict[str, object]]:
    result = subprocess.run([squawk, "--reporter", "json", *map(str, files)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode in (0, 1), result.stderr
    data: list[dict[str, object]] = json.loads(result.stdout)
    return data


def statement_of(path: Path, line0: int) -> int:
    """Index of the statement of ``path`` that holds 0-based line ``line0`` (squawk counts from 0)."""
    text = path.read_text(encoding="utf-8")
    statements = split_statements(text)
    for index, st in enumerate(statements):
        last = st.line + st.text.count("\n")
        if st.line <= line0 + 1 <= last:
            return index
    raise AssertionError(f"{path}:{line0 + 1} is in no statement")


def test_squawk_finds_nothing_we_rewrite_in_our_output(squawk: str, corpus: list[Path], tmp_path: Path) -> None:
    before = Counter(str(f["rule_name"]) for f in findings(squawk, corpus) if f["rule_name"] in REWRITTEN)
    assert set(before) == set(REWRITTEN) and all(n > 0 for n in before.values()), before

    out = tmp_path / "rewritten"
    result = subprocess.run([sys.executable, "-m", "orchestrator", "rewrite", *map(str, corpus), "--out", str(out),
                             "--allow", ALLOWED], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    written = sorted(out.glob("*.sql"))
    assert [p.name for p in written] == [p.name for p in corpus]

    after = Counter(str(f["rule_name"]) for f in findings(squawk, written) if f["rule_name"] in CLEAN)
    print(f"\nsquawk findings on Hydra's migrations, rules bluegreen rewrites: {sum(before.values())}"
          f" {dict(sorted(before.items()))}; after bluegreen rewrite, of {', '.join(CLEAN)}:"
          f" {sum(after.values())} {dict(after)}")
    assert after == Counter()


def test_only_the_declared_hydra_statements_are_kept_without_a_safe_form(corpus: list[Path]) -> None:
    refused: dict[str, set[str]] = {}
    for h in lint(corpus).hazards:
        if h.refused:
            refused.setdefault(Path(h.source).name, set()).add(h.rule)
    assert refused == {name: set(rules) for name, rules in HYDRA_REFUSED.items()}
    assert set(ALLOWED.split(",")) == {rule for rules in HYDRA_REFUSED.values() for rule in rules}


def test_squawk_finds_nothing_of_its_transaction_rules_in_our_rewritten_corpus(squawk: str, tmp_path: Path) -> None:
    sources = sorted(TRANSACTIONS.glob("*.sql"))
    assert len(sources) >= 12
    before = Counter(str(f["rule_name"]) for f in findings(squawk, sources) if f["rule_name"] in CLEAN)
    assert before["require-lock-timeout"] == len(sources) and before["transaction-nesting"] > 0, before
    out = tmp_path / "rewritten"
    result = subprocess.run([sys.executable, "-m", "orchestrator", "rewrite", str(TRANSACTIONS), "--out", str(out)],
                            capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    after = [(Path(str(f["file"])).name, f["rule_name"]) for f in findings(squawk, sorted(out.glob("*.sql")))
             if f["rule_name"] in CLEAN]
    print(f"\nsquawk on our corpus: {sum(before.values())} findings of {', '.join(CLEAN)}"
          f" {dict(sorted(before.items()))}; after bluegreen rewrite: {len(after)}")
    assert after == []


def test_squawk_misreads_rollback_and_rollback_to_savepoint(squawk: str, tmp_path: Path) -> None:
    """Two squawk 2.70 errors, shown on three-line files: ``ban-concurrent-index-creation-in-transaction`` ends
    a transaction only at COMMIT (not ROLLBACK), ``transaction-nesting`` takes ROLLBACK TO SAVEPOINT for the end
    of the transaction. So on ``transactions-rollback`` (which psql runs as written: tests/func/test_rewrite_psql.py)
    exactly those findings remain, and no other."""
    rolled_back = tmp_path / "rolled_back.sql"
    rolled_back.write_text("SET lock_timeout = '1s';\nBEGIN;\nSELECT 1;\nROLLBACK;\n"
                           "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a);\n")
    rolled_back_to = tmp_path / "rolled_back_to.sql"
    rolled_back_to.write_text("SET lock_timeout = '1s';\nBEGIN;\nSAVEPOINT s;\nROLLBACK TO SAVEPOINT s;\nCOMMIT;\n")
    assert sorted((Path(str(f["file"])).name, f["rule_name"]) for f in findings(squawk, [rolled_back, rolled_back_to])
                  if f["rule_name"] in CLEAN) == [("rolled_back.sql", "ban-concurrent-index-creation-in-transaction"),
                                                  ("rolled_back_to.sql", "transaction-nesting")]
    out = tmp_path / "rewritten"
    result = subprocess.run([sys.executable, "-m", "orchestrator", "rewrite", str(ROLLBACKS), "--out", str(out)],
                            capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    after = sorted((Path(str(f["file"])).name, str(f["rule_name"])) for f in findings(squawk, sorted(out.glob("*.sql")))
                   if f["rule_name"] in CLEAN)
    assert after == [("001_probe_rolled_back.sql", "ban-concurrent-index-creation-in-transaction"),
                     ("002_rollback_to_savepoint.sql", "transaction-nesting")]


def test_our_lint_flags_the_statements_squawk_flags(squawk: str, corpus: list[Path]) -> None:
    theirs = {(Path(str(f["file"])).name, statement_of(Path(str(f["file"])), int(str(f["line"]))), str(f["rule_name"]))
              for f in findings(squawk, corpus) if f["rule_name"] in REWRITTEN}
    ours = {(Path(h.source).name, h.statement, h.rule) for h in lint(corpus).hazards if h.rule in REWRITTEN}
    assert ours == theirs
