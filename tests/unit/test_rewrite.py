"""Lock-safe rewriting: exact rewritten SQL, bytes kept outside rewritten statements, transaction grouping."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pglast import parse_sql

from orchestrator.sqlanalysis import names
from orchestrator.sqlanalysis.locksafe import Piece, RewriteError, Rewriter, check_rewrite
from orchestrator.sqlanalysis.parse import split_statements
from orchestrator.sqlanalysis.transactions import HEADER_NOTE, plan_file

HEADER = f"SET lock_timeout = '2s';\n{HEADER_NOTE}\n"


def rewritten(text: str) -> str:
    """The lock-safe statements of ``text``, one after the other (what each statement becomes)."""
    return ";\n".join(p.sql for p in Rewriter().analyze_file(text, "m.sql").safe_pieces()) + ";"


def rendered(text: str) -> str:
    """The file ``bluegreen rewrite`` writes for ``text``, without its two header lines."""
    out = plan_file(Rewriter().analyze_file(text, "m.sql")).render(timedelta(seconds=2))
    assert out.startswith(HEADER)
    return out[len(HEADER):]


def groups(text: str) -> list[list[tuple[bool, str]]]:
    """The file's lock-safe units: (transactional, SQL) of each piece."""
    units = plan_file(Rewriter().analyze_file(text, "m.sql")).units
    return [[(p.transactional, p.sql) for p in unit.pieces] for unit in units]


GOLDEN = [
    ("CREATE INDEX users_email_idx ON users (email);",
     "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email);"),
    ("CREATE UNIQUE INDEX u ON s.t USING btree (lower(email)) WHERE deleted_at IS NULL;",
     "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS u ON s.t ((lower(email))) WHERE deleted_at IS NULL;"),
    ("DROP INDEX users_email_idx;", "DROP INDEX CONCURRENTLY IF EXISTS users_email_idx;"),
    ("DROP INDEX a, s.b;", "DROP INDEX CONCURRENTLY IF EXISTS a;\nDROP INDEX CONCURRENTLY IF EXISTS s.b;"),
    ("ALTER TABLE orders ADD CONSTRAINT orders_account_fk FOREIGN KEY (account_id) REFERENCES accounts (id)"
     " ON DELETE CASCADE;",
     "ALTER TABLE orders ADD CONSTRAINT orders_account_fk FOREIGN KEY (account_id) REFERENCES accounts (id)"
     " ON DELETE CASCADE NOT VALID;\nALTER TABLE orders VALIDATE CONSTRAINT orders_account_fk;"),
    ("ALTER TABLE ONLY orders ADD FOREIGN KEY (account_id, nid) REFERENCES accounts (id, nid);",
     "ALTER TABLE ONLY orders ADD CONSTRAINT orders_account_id_nid_fkey FOREIGN KEY (account_id, nid)"
     " REFERENCES accounts (id, nid) NOT VALID;\n"
     "ALTER TABLE ONLY orders VALIDATE CONSTRAINT orders_account_id_nid_fkey;"),
    ("ALTER TABLE orders ADD CHECK (total >= 0);",
     "ALTER TABLE orders ADD CONSTRAINT orders_total_check CHECK (total >= 0) NOT VALID;\n"
     "ALTER TABLE orders VALIDATE CONSTRAINT orders_total_check;"),
    ("ALTER TABLE orders ALTER COLUMN status SET NOT NULL;",
     "ALTER TABLE orders ADD CONSTRAINT orders_status_bgnn CHECK (status IS NOT NULL) NOT VALID;\n"
     "ALTER TABLE orders VALIDATE CONSTRAINT orders_status_bgnn;\n"
     "ALTER TABLE orders ALTER COLUMN status SET NOT NULL;\n"
     "ALTER TABLE orders DROP CONSTRAINT orders_status_bgnn;"),
    ("ALTER TABLE accounts ADD CONSTRAINT accounts_email_key UNIQUE (email);",
     "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS accounts_email_key_bgnew ON accounts (email);\n"
     "ALTER TABLE accounts ADD CONSTRAINT accounts_email_key UNIQUE USING INDEX accounts_email_key_bgnew;"),
    ("ALTER TABLE jti ADD PRIMARY KEY (signature, nid);",
     "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS jti_pkey_bgnew ON jti (signature, nid);\n"
     "ALTER TABLE jti ADD CONSTRAINT jti_pkey PRIMARY KEY USING INDEX jti_pkey_bgnew;"),
    ("REINDEX INDEX users_email_idx;", "REINDEX (CONCURRENTLY) INDEX users_email_idx;"),
    ("ALTER TABLE t ADD COLUMN owner_id bigint REFERENCES users (id) ON DELETE SET NULL;",
     "ALTER TABLE t ADD COLUMN owner_id bigint, ADD CONSTRAINT t_owner_id_fkey FOREIGN KEY (owner_id)"
     " REFERENCES users (id) ON DELETE SET NULL NOT VALID;\nALTER TABLE t VALIDATE CONSTRAINT t_owner_id_fkey;"),
    ("CREATE INDEX CONCURRENTLY i ON t (a);", "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a);"),
]


@pytest.mark.parametrize(("original", "expected"), GOLDEN, ids=[g[0][:40] for g in GOLDEN])
def test_golden_rewrites(original: str, expected: str) -> None:
    assert rewritten(original) == expected


def test_bytes_outside_rewritten_statements_are_kept() -> None:
    text = ("-- header comment, kept\n"
            "CREATE TABLE t (id int,   x  text);   /* odd   spacing kept */\n\n"
            "create index u_x on u(x);\n"
            "UPDATE t SET x = 'a;b' WHERE id = 1 ;\n"
            "-- trailing comment")
    assert rendered(text) == (
        "-- header comment, kept\n"
        "CREATE TABLE t (id int,   x  text);   /* odd   spacing kept */\n\n"
        "-- bluegreen: CREATE INDEX CONCURRENTLY cannot run inside a transaction block: it runs outside the file's"
        " transaction (atomicity changed)\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS u_x ON u (x);\n"
        "UPDATE t SET x = 'a;b' WHERE id = 1 ;\n"
        "-- trailing comment")


def test_file_without_hazard_is_kept_byte_for_byte_in_its_transaction() -> None:
    text = "SELECT 1;\n  UPDATE t SET a = 1 ;-- c\n"
    analysis = Rewriter().analyze_file(text, "m.sql")
    assert analysis.hazards == []
    assert rendered(text) == "BEGIN;\n" + text + "COMMIT;\n"  # one transaction, as migrate runs the file


def test_primary_key_swap_builds_the_index_before_dropping_the_old_key() -> None:
    text = ("ALTER TABLE hydra_client DROP CONSTRAINT hydra_client_pkey;\n\n"
            "ALTER TABLE hydra_client ALTER COLUMN pk DROP NOT NULL;\n\n"
            "ALTER TABLE hydra_client ADD PRIMARY KEY (id, nid);\n")
    assert rendered(text) == (
        "-- bluegreen: the unique index is built first (CREATE INDEX CONCURRENTLY cannot run inside a transaction), so"
        " the key change stays in one transaction: it runs outside the file's transaction (atomicity changed)\n"
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS hydra_client_pkey_bgnew ON hydra_client (id, nid);\n"
        "BEGIN;\n"
        "ALTER TABLE hydra_client DROP CONSTRAINT hydra_client_pkey;\n\n"
        "ALTER TABLE hydra_client ALTER COLUMN pk DROP NOT NULL;\n\n"
        "ALTER TABLE hydra_client ADD CONSTRAINT hydra_client_pkey PRIMARY KEY USING INDEX hydra_client_pkey_bgnew;\n"
        "COMMIT;\n")
    # the drop of the old key and the new key commit together: the table never lacks a primary key
    assert [[t for t, _ in unit] for unit in groups(text)] == [[False], [True, True, True]]


def test_index_is_not_built_before_the_statement_that_adds_its_column() -> None:
    text = ("ALTER TABLE c ADD COLUMN pk uuid;\n"
            "ALTER TABLE c DROP CONSTRAINT c_pkey;\n"
            "ALTER TABLE c ADD PRIMARY KEY (pk);\n")
    units_ = groups(text)
    assert [u[0][1].split()[:3] for u in units_] == [["ALTER", "TABLE", "c"], ["CREATE", "UNIQUE", "INDEX"],
                                                      ["ALTER", "TABLE", "c"]]
    assert "ADD COLUMN pk" in units_[0][0][1]
    assert "DROP CONSTRAINT c_pkey" in units_[2][0][1]


def test_validate_never_shares_a_transaction_with_its_not_valid_add() -> None:
    text = ("ALTER TABLE a ADD CONSTRAINT a_b_fk FOREIGN KEY (b) REFERENCES b (id);\n"
            "ALTER TABLE a ADD CONSTRAINT a_c_check CHECK (c > 0) NOT VALID;\n"
            "ALTER TABLE a VALIDATE CONSTRAINT a_c_check;\n"
            "UPDATE a SET c = 1;\n")
    units_ = groups(text)
    assert [[(t, s.split()[3]) for t, s in unit] for unit in units_] == [
        [(True, "ADD")], [(False, "VALIDATE")], [(True, "ADD")], [(False, "VALIDATE")], [(True, "c")]]


def test_multi_command_alter_is_split_around_its_hazards() -> None:
    text = "ALTER TABLE t ADD COLUMN c int, ALTER COLUMN b SET NOT NULL, ADD CONSTRAINT t_c_fk FOREIGN KEY (c) " \
           "REFERENCES p (id);"
    assert rewritten(text) == (
        "ALTER TABLE t ADD CONSTRAINT t_b_bgnn CHECK (b IS NOT NULL) NOT VALID;\n"
        "ALTER TABLE t VALIDATE CONSTRAINT t_b_bgnn;\n"
        "ALTER TABLE t ADD COLUMN c integer, ALTER COLUMN b SET NOT NULL, ADD CONSTRAINT t_c_fk FOREIGN KEY (c)"
        " REFERENCES p (id) NOT VALID;\n"
        "ALTER TABLE t DROP CONSTRAINT t_b_bgnn;\n"
        "ALTER TABLE t VALIDATE CONSTRAINT t_c_fk;")


def test_drop_index_cascade_drops_dependent_constraints_first() -> None:
    pieces = Rewriter().analyze_file("DROP INDEX hydra_client_idx_id_uq CASCADE;", "m.sql").safe_pieces()
    assert [p.transactional for p in pieces] == [True, False]
    assert pieces[0].sql.startswith("DO $bluegreen$ DECLARE dep record;")
    assert "to_regclass('\"hydra_client_idx_id_uq\"')" in pieces[0].sql
    assert pieces[1].sql == "DROP INDEX CONCURRENTLY IF EXISTS hydra_client_idx_id_uq"


@pytest.mark.parametrize(("text", "rule"), [
    ("ALTER TABLE t ALTER COLUMN c TYPE bigint;", "changing-column-type"),
    ("ALTER TABLE t ADD COLUMN n bigserial;", "adding-field-with-default"),
    ("ALTER TABLE t ADD COLUMN u uuid DEFAULT gen_random_uuid();", "adding-field-with-default"),
    ("ALTER TABLE t ADD COLUMN n int GENERATED ALWAYS AS IDENTITY;", "adding-field-with-default"),
])
def test_hazards_without_a_safe_form_are_refused_unless_allowed(text: str, rule: str) -> None:
    analysis = Rewriter().analyze_file(text, "m.sql")
    refused = analysis.refused()
    assert [(h.rule, h.line, h.column) for h in refused] == [(rule, 1, 1)]
    assert refused[0].reason
    assert analysis.refused([rule]) == []
    assert rendered(text) == text  # kept as written


@pytest.mark.parametrize("text", [
    "ALTER TABLE t ADD COLUMN c text DEFAULT 'x' NOT NULL;",
    "ALTER TABLE t ADD COLUMN c timestamptz DEFAULT now();",
    "ALTER TABLE t ADD COLUMN c boolean DEFAULT false;",
])
def test_constant_defaults_are_not_hazards(text: str) -> None:
    assert Rewriter().analyze_file(text, "m.sql").hazards == []


def test_locks_and_rewrites_are_classified() -> None:
    analysis = Rewriter().analyze_file(
        "CREATE INDEX i ON t (a); CREATE INDEX CONCURRENTLY j ON t (a);"
        " ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES p (id);"
        " ALTER TABLE t ALTER COLUMN a TYPE bigint; UPDATE t SET a = 1; VACUUM FULL t;", "m.sql")
    got = [([str(lock) for lock in s.locks], list(s.rewrites)) for s in analysis.statements]
    assert got == [
        (["SHARE on t"], []),
        (["SHARE UPDATE EXCLUSIVE on t"], []),
        (["SHARE ROW EXCLUSIVE on t", "SHARE ROW EXCLUSIVE on p"], []),
        (["ACCESS EXCLUSIVE on t"], ["t"]),
        (["ROW EXCLUSIVE on t"], []),
        (["ACCESS EXCLUSIVE on t"], ["t"]),
    ]


def test_every_rewritten_piece_parses_back_to_itself() -> None:
    text = "\n".join(g[0] for g in GOLDEN)
    for piece in Rewriter().analyze_file(text, "m.sql").safe_pieces():
        parsed = parse_sql(piece.sql)
        assert len(parsed) == 1, piece.sql


def test_a_rewrite_that_means_something_else_is_caught() -> None:
    intended = parse_sql("CREATE INDEX CONCURRENTLY i ON t (a)")[0].stmt
    assert check_rewrite("CREATE INDEX CONCURRENTLY i ON t (a)", intended)
    with pytest.raises(RewriteError, match="another statement"):
        check_rewrite("CREATE INDEX i ON t (a)", intended)
    with pytest.raises(RewriteError, match="2 statements"):
        check_rewrite("SELECT 1; SELECT 2", intended)


def test_cleanup_goes_before_validate_and_before_unique_builds() -> None:
    text = ("ALTER TABLE o ADD CONSTRAINT o_fk FOREIGN KEY (a) REFERENCES p (id);\n"
            "ALTER TABLE o ALTER COLUMN s SET NOT NULL;\n"
            "ALTER TABLE o ADD UNIQUE (code);\n")
    pieces: list[Piece] = Rewriter().analyze_file(text, "m.sql").safe_pieces()
    cleaned = [(p.sql.split()[3], [c.kind for c in p.cleanup]) for p in pieces if p.cleanup]
    assert cleaned == [("VALIDATE", ["foreign_key"]), ("VALIDATE", ["not_null"]), ("CONCURRENTLY", ["unique"])]


def test_output_splits_into_the_planned_pieces() -> None:
    text = "\n".join(g[0] for g in GOLDEN) + "\n"
    plan = plan_file(Rewriter().analyze_file(text, "m.sql"))
    written = split_statements(plan.render(timedelta(seconds=2)))
    control = {"SET lock_timeout = '2s'", "BEGIN", "COMMIT"}
    assert [s.text for s in written if s.text not in control] == [p.sql for u in plan.units for p in u.pieces]


@pytest.mark.parametrize(("got", "expected"), [
    # the names PostgreSQL 18 gave (checked on a server): long names are truncated like makeObjectName
    (names.foreign_key_name("a_very_long_table_name_that_goes_on_and_on_and_on_for_ever_x",
                            ["some_rather_long_column_name", "k"]),
     "a_very_long_table_name_that_g_some_rather_long_column_name_fkey"),
    (names.check_name("a_very_long_table_name_that_goes_on_and_on_and_on_for_ever_x", ["other"]),
     "a_very_long_table_name_that_goes_on_and_on_and_on_f_other_check"),
    (names.check_name("a_very_long_table_name_that_goes_on_and_on_and_on_for_ever_x", ["other", "k"]),
     "a_very_long_table_name_that_goes_on_and_on_and_on_for_eve_check"),
    (names.primary_key_name("a_very_long_table_name_that_goes_on_and_on_and_on_for_ever_x"),
     "a_very_long_table_name_that_goes_on_and_on_and_on_for_ever_pkey"),
    (names.unique_name("a_very_long_table_name_that_goes_on_and_on_and_on_for_ever_x",
                       ["other", "some_rather_long_column_name"]),
     "a_very_long_table_name_that_g_other_some_rather_long_column_key"),
    (names.index_name("a_very_long_table_name_that_goes_on_and_on_and_on_for_ever_x", ["k", "other"]),
     "a_very_long_table_name_that_goes_on_and_on_and_on_f_k_other_idx"),
])
def test_default_names_match_postgres(got: str, expected: str) -> None:
    assert got == expected
