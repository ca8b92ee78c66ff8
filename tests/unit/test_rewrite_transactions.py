"""Transaction plans: how a file runs as written, where the rewrite splits it and why, the file it writes,
and that ``migrate`` runs exactly the transactions of that file (one code path)."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from orchestrator.actions import SqlAction
from orchestrator.errors import UsageError
from orchestrator.plan import load_plan
from orchestrator.sqlanalysis.locksafe import Rewriter
from orchestrator.sqlanalysis.transactions import (
    FilePlan,
    TransactionError,
    batched_backfill,
    plan_file,
    structure,
)
from orchestrator.steps import build_step
from orchestrator.steps.base import StepContext
from orchestrator.steps.migrate import MigrateStep

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "rewrite-golden"
CORPORA = [ROOT / "tests" / "data" / "transactions", ROOT / "tests" / "data" / "transactions-rollback"]
HYDRA = Path(os.environ.get("HYDRA_CORPUS", ROOT.parent / "shared" / "corpus" / "hydra"))


def plan(text: str, name: str = "m.sql", mode: str = "lock-safe") -> FilePlan:
    return plan_file(Rewriter().analyze_file(text, name), mode, autocommit=".autocommit." in name)  # type: ignore[arg-type]


def shape(text: str, name: str = "m.sql") -> list[tuple[str, list[str]]]:
    """Each unit as ('tx' or 'alone', the first three words of each piece)."""
    return [("tx" if u.transaction else "alone", [" ".join(p.sql.split()[:3]) for p in u.pieces])
            for u in plan(text, name).units]


# -- how a file runs as written --------------------------------------------------------------------


@pytest.mark.parametrize(("begin", "end"), [
    ("BEGIN", "COMMIT"), ("begin", "commit"), ("BEGIN WORK", "COMMIT WORK"), ("BEGIN TRANSACTION", "END"),
    ("START TRANSACTION", "END TRANSACTION"), ("Start Transaction Isolation Level Serializable", "Commit"),
    ("BEGIN READ WRITE", "COMMIT AND NO CHAIN"),
])
def test_every_spelling_of_a_block_is_one_transaction(begin: str, end: str) -> None:
    text = f"SELECT 0;\n{begin};\nSELECT 1;\nSELECT 2;\n{end};\nSELECT 3;\n"
    groups = structure(Rewriter().analyze_file(text, "m.sql")).groups
    assert [(g.kind, g.members) for g in groups] == [("statement", [0]), ("block", [2, 3]), ("statement", [5])]


def test_bodies_with_begin_are_statements_not_transaction_control() -> None:
    text = ("DO $$ BEGIN PERFORM 1; END $$;\n"
            "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $f$ BEGIN RETURN 1; END $f$;\n"
            "CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;\n"
            "CREATE INDEX i ON t (a);\n")
    found = structure(Rewriter().analyze_file(text, "m.sql"))
    assert [(g.kind, g.members) for g in found.groups] == [("file", [0, 1, 2, 3])]  # no control: one transaction
    assert shape(text) == [("tx", ["DO $$ BEGIN", "CREATE FUNCTION f()", "CREATE FUNCTION g()"]),
                           ("alone", ["CREATE INDEX CONCURRENTLY"])]


def test_a_file_without_control_is_one_transaction_and_an_autocommit_file_runs_statement_by_statement() -> None:
    text = "ALTER TABLE t ADD COLUMN a int;\nALTER TABLE t ADD COLUMN b int;\n"
    assert shape(text) == [("tx", ["ALTER TABLE t", "ALTER TABLE t"])]
    assert shape(text, "001_x.autocommit.sql") == [("tx", ["ALTER TABLE t"]), ("tx", ["ALTER TABLE t"])]


def test_a_call_outside_any_block_runs_alone_as_psql_runs_it() -> None:
    assert [u.transaction for u in plan("BEGIN;\nCALL p();\nCOMMIT;\nCALL p();\n").units] == [True, False]
    assert [u.transaction for u in plan("CALL p();\nSELECT 1;\n").units] == [True]  # the file's transaction


def test_a_do_block_that_commits_runs_outside_any_transaction() -> None:
    text = ("ALTER TABLE t ADD COLUMN a int;\n"
            "DO $$ BEGIN LOOP UPDATE t SET a = 1 WHERE a IS NULL; EXIT WHEN NOT FOUND; COMMIT; END LOOP; END $$;\n"
            "ALTER TABLE t ADD COLUMN b int;\n")
    assert [kind for kind, _ in shape(text)] == ["tx", "alone", "tx"]


@pytest.mark.parametrize(("text", "where", "message"), [
    ("SELECT 1;\nBEGIN;\nSELECT 2;\n", "2:1", "this transaction is never committed: psql rolls it back"),
    ("SELECT 1;\nBEGIN;\nCOMMIT;\nSAVEPOINT a;\n", "4:1", "SAVEPOINT outside a transaction block"),
    ("BEGIN;\nSELECT 1;\nCOMMIT;\nRELEASE a;\n", "4:1", "RELEASE outside a transaction block"),
    ("BEGIN;\nRELEASE a;\nCOMMIT;\n", "2:1", "no savepoint 'a' is open here"),
    ("SELECT 1;\nCOMMIT AND CHAIN;\n", "2:1", "COMMIT AND CHAIN with no transaction open"),
    ("BEGIN;\nSELECT 1;\nPREPARE TRANSACTION 'x';\n", "3:1", "two-phase commit"),
    ("BEGIN;\nSAVEPOINT a;\nCREATE INDEX CONCURRENTLY i ON t (a);\nROLLBACK TO a;\nCOMMIT;\n", "3:1",
     "inside a savepoint that is rolled back to"),
    ("BEGIN;\nCREATE INDEX CONCURRENTLY i ON t (a);\nSELECT 1;\nROLLBACK;\n", "2:1", "its block ends in ROLLBACK"),
])
def test_transaction_control_that_cannot_run_is_refused_at_its_line(text: str, where: str, message: str) -> None:
    with pytest.raises(TransactionError, match=message) as info:
        plan(text)
    assert str(info.value).startswith(f"m.sql:{where}: ")


# -- where the plan splits a transaction ----------------------------------------------------------


def test_validate_runs_after_its_not_valid_constraint_committed_and_after_what_does_not_touch_its_tables() -> None:
    text = ("BEGIN;\nALTER TABLE a ADD CONSTRAINT a_b_fk FOREIGN KEY (b) REFERENCES b (id);\n"
            "ALTER TABLE c ADD COLUMN x int;\n"   # another table: the validation waits for the end of the block
            "ALTER TABLE d ADD CONSTRAINT d_x_check CHECK (x > 0);\n"
            "ALTER TABLE d ADD COLUMN y int;\n"   # d: its validation goes before this one
            "COMMIT;\n")
    assert shape(text) == [("tx", ["ALTER TABLE a", "ALTER TABLE c", "ALTER TABLE d"]),
                           ("alone", ["ALTER TABLE d"]), ("tx", ["ALTER TABLE d"]), ("alone", ["ALTER TABLE a"])]
    assert [p.sql for u in plan(text).units for p in u.pieces if not u.transaction] == [
        "ALTER TABLE d VALIDATE CONSTRAINT d_x_check", "ALTER TABLE a VALIDATE CONSTRAINT a_b_fk"]
    # a statement naming the referenced table keeps the validation before it
    text = ("BEGIN;\nALTER TABLE a ADD CONSTRAINT a_b_fk FOREIGN KEY (b) REFERENCES b (id);\n"
            "ALTER TABLE b DROP CONSTRAINT b_pkey CASCADE;\nCOMMIT;\n")
    assert shape(text) == [("tx", ["ALTER TABLE a"]), ("alone", ["ALTER TABLE a"]), ("tx", ["ALTER TABLE b"])]


def test_a_bulk_write_never_shares_a_transaction_with_a_write_blocking_lock() -> None:
    text = ("BEGIN;\n"
            "ALTER TABLE t ADD COLUMN c int;\n"          # ACCESS EXCLUSIVE on t ...
            "UPDATE t SET c = 1;\n"                      # ... would be held through this write
            "UPDATE u SET x = 1;\n"                      # writes only: they stay together
            "ALTER TABLE t ALTER COLUMN c SET DEFAULT 0;\n"  # waited for while their rows are locked
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS w_idx ON w (a);\n"
            "ALTER TABLE v ALTER COLUMN a SET DEFAULT 0;\n"
            "LOCK TABLE v IN EXCLUSIVE MODE;\n"          # the author's LOCK stays with what it guards
            "DELETE FROM v;\n"
            "COMMIT;\n")
    assert shape(text) == [("tx", ["ALTER TABLE t"]), ("tx", ["UPDATE t SET", "UPDATE u SET"]),
                           ("tx", ["ALTER TABLE t"]), ("alone", ["CREATE INDEX CONCURRENTLY"]),
                           ("tx", ["ALTER TABLE v"]), ("tx", ["LOCK TABLE v", "DELETE FROM v"])]
    notes = [u.notes for u in plan(text).units]
    assert notes[1] == ("the transaction of line 1 is split here: the ACCESS EXCLUSIVE lock on t taken at line 2 "
                        "would be held through the write of t at line 3 (atomicity changed)",)
    assert notes[2] == ("the transaction of line 1 is split here: the write of t at line 3 would hold its row locks "
                        "while line 5 waits for ACCESS EXCLUSIVE on t (atomicity changed)",)
    assert notes[5] == ("the transaction of line 1 is split here: the ACCESS EXCLUSIVE lock on v taken at line 7 "
                        "would be held through the write of v at line 9 (atomicity changed)",)


def test_what_touches_a_table_created_in_the_same_transaction_stays_in_it_as_written() -> None:
    text = ("BEGIN;\nCREATE TABLE n (id int, p int);\nCREATE INDEX n_p_idx ON n (p);\n"
            "INSERT INTO n SELECT g, g FROM generate_series(1, 10) g;\nALTER TABLE n ADD PRIMARY KEY (id);\n"
            "UPDATE n SET p = 1 WHERE p IS NULL;\nALTER TABLE n ADD CONSTRAINT n_p_check CHECK (p > 0);\n"
            "ALTER TABLE n ADD CONSTRAINT n_p_fk FOREIGN KEY (p) REFERENCES p (id);\nCOMMIT;\n")
    assert shape(text) == [("tx", ["CREATE TABLE n", "CREATE INDEX n_p_idx", "INSERT INTO n", "ALTER TABLE n",
                                   "UPDATE n SET", "ALTER TABLE n", "ALTER TABLE n"])]
    assert [p.sql for p in plan(text).units[0].pieces][1:] == [
        "CREATE INDEX n_p_idx ON n (p)", "INSERT INTO n SELECT g, g FROM generate_series(1, 10) g",
        "ALTER TABLE n ADD PRIMARY KEY (id)", "UPDATE n SET p = 1 WHERE p IS NULL",
        "ALTER TABLE n ADD CONSTRAINT n_p_check CHECK (p > 0)",
        "ALTER TABLE n ADD CONSTRAINT n_p_fk FOREIGN KEY (p) REFERENCES p (id)"]
    # a foreign key to a live table locks that table: not through the write into the new one
    text = ("BEGIN;\nCREATE TABLE n (id int, p int REFERENCES p (id));\n"
            "INSERT INTO n SELECT g, g FROM generate_series(1, 10) g;\nCOMMIT;\n")
    assert shape(text) == [("tx", ["CREATE TABLE n"]), ("tx", ["INSERT INTO n"])]
    # once something splits the new table from its index, the index is built concurrently after all
    split = "BEGIN;\nCREATE TABLE n (id int);\nDROP INDEX old_idx;\nCREATE INDEX n_id_idx ON n (id);\nCOMMIT;\n"
    assert shape(split) == [("tx", ["CREATE TABLE n"]), ("alone", ["DROP INDEX CONCURRENTLY"]),
                            ("alone", ["CREATE INDEX CONCURRENTLY"])]


def test_fast_mode_keeps_the_blocks_and_takes_only_named_index_builds_out() -> None:
    text = "BEGIN;\nALTER TABLE t ADD COLUMN c int;\nUPDATE t SET c = 1;\nCREATE INDEX t_c ON t (c);\nCOMMIT;\n"
    units = plan(text, mode="fast").units
    assert [(u.transaction, [p.sql for p in u.pieces]) for u in units] == [
        (True, ["ALTER TABLE t ADD COLUMN c int", "UPDATE t SET c = 1"]),
        (False, ["CREATE INDEX IF NOT EXISTS t_c ON t (c)"])]


# -- backfills in batches -------------------------------------------------------------------------


def test_a_backfill_runs_in_committed_batches_and_ends_like_the_statement() -> None:
    analysis = Rewriter().analyze_file("UPDATE shop.orders AS o SET note = 'n' || id WHERE o.note IS NULL AND id > 0;",
                                       "m.sql")
    piece = batched_backfill(analysis.statements[0], 1000)
    assert piece is not None and not piece.transactional and piece.verb == "backfill_in_batches"
    assert piece.sql == (
        "DO $bluegreen$\n"
        "DECLARE\n  bluegreen_rows bigint;\n  bluegreen_set bigint;\nBEGIN\n  LOOP\n"
        "    WITH bluegreen_batch AS (\n"
        "      UPDATE shop.orders AS o SET note = 'n' || id WHERE ctid = ANY(ARRAY(SELECT ctid FROM shop.orders AS o"
        " WHERE o.note IS NULL AND id > 0 LIMIT 1000)) AND o.note IS NULL AND id > 0"
        " RETURNING note IS NOT NULL AS bluegreen_filled\n"
        "    )\n"
        "    SELECT count(*), count(*) FILTER (WHERE bluegreen_filled) INTO bluegreen_rows, bluegreen_set"
        " FROM bluegreen_batch;\n"
        "    COMMIT;\n    EXIT WHEN bluegreen_rows = 0;\n"
        "    IF bluegreen_set = 0 THEN  -- these rows stay NULL: run the statement once, as written\n"
        "      UPDATE shop.orders AS o SET note = 'n' || id WHERE o.note IS NULL AND id > 0;\n"
        "      EXIT;\n    END IF;\n  END LOOP;\nEND\n$bluegreen$")


@pytest.mark.parametrize("text", [
    "UPDATE t SET c = 1;",                                    # no WHERE c IS NULL: rows that never leave the set
    "UPDATE t SET c = 1 WHERE c IS NULL OR d;",               # not a conjunct
    "UPDATE t SET c = 1, d = 2 WHERE c IS NULL;",             # two columns
    "UPDATE t SET c = 1 WHERE d IS NULL;",                    # another column
    "UPDATE t SET c = u.x FROM u WHERE t.c IS NULL;",         # a join
    "UPDATE t SET c = 1 WHERE c IS NULL RETURNING id;",       # its result is used
    "UPDATE t SET c[1] = 1 WHERE c IS NULL;",                 # part of the column
    "UPDATE t SET found = 1 WHERE found IS NULL;",            # a name PL/pgSQL would take for its own
])
def test_updates_that_batches_might_not_finish_are_not_batched(text: str) -> None:
    assert batched_backfill(Rewriter().analyze_file(text, "m.sql").statements[0]) is None


# -- the file ------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", sorted(GOLDEN.glob("*.in.sql")), ids=lambda p: p.name.split(".")[0])
def test_rewritten_file_is_exactly_the_golden_one(source: Path) -> None:
    text = source.read_bytes().decode("utf-8")
    expected = source.with_name(source.name.replace(".in.", ".out.")).read_bytes().decode("utf-8")
    assert plan(text, source.name).render(timedelta(seconds=2)) == expected


def test_a_file_with_no_statement_is_written_as_it_is() -> None:
    assert plan("-- nothing to do\n").render(timedelta(seconds=2)) == "-- nothing to do\n"


def test_a_last_statement_followed_by_a_comment_gets_its_semicolon_before_the_comment() -> None:
    # found by the fuzz test: the ``;`` went after ``-- only a comment`` and was commented out
    written = plan("SELECT 'a\nSELECT 'b\n-- only a comment\n").render(timedelta(seconds=2))
    assert written.endswith("SELECT 'a\nSELECT 'b;\n-- only a comment\n")

def test_the_lock_timeout_is_written_first() -> None:
    assert plan("SELECT 1;").render(timedelta(milliseconds=1500)).startswith("SET lock_timeout = '1500ms';\n")
    assert plan("SELECT 1;").render(timedelta(minutes=1)).startswith("SET lock_timeout = '60s';\n")


# -- one code path: migrate runs the transactions the rewritten file runs --------------------------


def _offline(loaded: object) -> StepContext:
    def refuse(target: str) -> None:
        raise UsageError("offline")

    return StepContext(loaded, None, False, lambda actions: None, refuse, dsns={})  # type: ignore[arg-type]


def _migrate_units(folder: Path, tmp_path: Path) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    """What a lock-safe migrate step runs for each file: (kind, statements), as FilePlan.canonical says it."""
    path = tmp_path / "plan.yaml"
    path.write_text('version: 1\nname: t\nclusters:\n  blue: {dsn: "postgresql://b"}\n  green: {dsn: "postgresql://g"}\n'
                    f'steps:\n  - {{id: m, kind: migrate, files: "{folder}/*.sql", mode: lock-safe,'
                    " allow: [changing-column-type, adding-field-with-default]}\n", encoding="utf-8")
    loaded = load_plan(path, {})
    step = build_step(loaded.plan.steps[0], loaded)
    assert isinstance(step, MigrateStep)
    out: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    for item in step.items(_offline(loaded)):
        action = item.action
        assert isinstance(action, SqlAction)
        kind, _, rest = action.id.partition(":")
        if kind in ("ensure_history", "record_version"):
            continue
        version = rest.split(":")[1]
        # leave out the version's record, which the file's last transaction carries
        texts = [t for t in (s.as_string() for s in action.statements) if '"schema_versions"' not in t]
        if action.transactional:
            if texts:
                kind = "rollback" if "SAVEPOINT bluegreen_discard" in texts else "tx" if len(texts) > 1 else "auto"
                out.setdefault(version, []).append((kind, tuple(texts)))
        else:
            out.setdefault(version, []).extend(("auto", (t,)) for t in texts)
    return out


@pytest.mark.parametrize("folder", [*CORPORA, HYDRA / "migrations"], ids=["corpus", "rollback", "hydra"])
def test_migrate_runs_exactly_the_transactions_of_the_rewritten_files(folder: Path, tmp_path: Path) -> None:
    if not folder.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{folder} is missing (CI=true)", pytrace=False)
        pytest.skip(f"{folder} is missing")  # never under CI=true: failed above
    if folder.name == "migrations":
        folder = tmp_path / "hydra"  # the up files only
        folder.mkdir()
        for source in sorted((HYDRA / "migrations").glob("*.up.sql")):
            (folder / source.name).write_bytes(source.read_bytes())
    migrate = _migrate_units(folder, tmp_path)
    rewriter = Rewriter()
    checked = 0
    for source in sorted(folder.glob("*.sql")):
        analysis = rewriter.analyze_file(source.read_text(encoding="utf-8"), str(source))
        written = plan_file(analysis, "lock-safe", autocommit=".autocommit." in source.name).render(
            timedelta(seconds=2))
        # the rewritten file, read the way psql runs it
        back = plan_file(Rewriter().analyze_file(written, source.name), "as-written", autocommit=True,
                         skip=frozenset({0}) if written != analysis.text else frozenset())
        canonical = back.canonical()
        version = source.name.split("_")[0]
        assert migrate.get(version, []) == canonical, source.name
        checked += bool(canonical)
    assert checked >= min(12, len(list(folder.glob("*.sql"))))
