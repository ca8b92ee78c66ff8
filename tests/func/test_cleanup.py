"""``kind: cleanup`` and quarantine restore on real servers: the rows that would break a migration's new
constraints are found, moved (with the rows that reference them), counted per constraint, and put back."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from orchestrator.localenv import Databases

from .helpers import bluegreen, cli_env, query, scalar, write_plan

DATA = """
CREATE TABLE accounts (id bigint PRIMARY KEY, name text);
CREATE TABLE orders (id bigint PRIMARY KEY, account_id bigint REFERENCES accounts ON DELETE CASCADE,
                     status text, code text);
CREATE TABLE payments (id bigint PRIMARY KEY, order_id bigint);
INSERT INTO accounts VALUES (1, 'ann'), (2, 'bob'), (3, 'cy'), (4, '');
INSERT INTO orders SELECT g, 1 + g % 3, 'paid', 'code-' || g FROM generate_series(1, 8) g;
UPDATE orders SET code = 'code-5' WHERE id = 6;               -- a duplicate code (the second one goes)
UPDATE orders SET status = NULL WHERE id = 7;                 -- a missing status
INSERT INTO orders VALUES (9, 4, 'paid', 'code-9'), (10, 4, 'paid', 'code-10');   -- orders of account 4
INSERT INTO payments VALUES (1, 1), (2, 999);                 -- a payment of no order
"""

MIGRATION = """\
ALTER TABLE accounts ADD CONSTRAINT accounts_name_nonempty CHECK (length(name) > 0);
ALTER TABLE orders ALTER COLUMN status SET NOT NULL;
ALTER TABLE orders ADD CONSTRAINT orders_code_key UNIQUE (code);
ALTER TABLE payments ADD CONSTRAINT payments_order_fk FOREIGN KEY (order_id) REFERENCES orders (id);
CREATE TABLE audit (id bigint, at timestamptz);
ALTER TABLE audit ADD CONSTRAINT audit_at_check CHECK (at > '2000-01-01');
"""


def setup(dbs: Databases, tmp_path: Path) -> None:
    with psycopg.connect(dbs.green_dsn, autocommit=True) as conn:
        conn.execute(DATA.encode())
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "002_constraints.sql").write_text(MIGRATION)


def cleanup_plan(tmp_path: Path, policy: str, batch_size: int = 1) -> Path:
    return write_plan(tmp_path / f"cleanup-{policy}.yaml", f"cleanup-{policy}", f"""\
  - {{id: clean, kind: cleanup, on: green, policy: {policy}, files: "migrations/*.sql", batch_size: {batch_size}}}
""")


def ids(dsn: str, table: str) -> list[int]:
    return [r[0] for r in query(dsn, f"SELECT id FROM {table} ORDER BY id")]


def test_quarantine_moves_violating_rows_and_what_references_them(dbs: Databases, tmp_path: Path) -> None:
    setup(dbs, tmp_path)
    result = bluegreen(["run", str(cleanup_plan(tmp_path, "quarantine")), "--json"], cli_env(dbs))
    assert result.returncode == 0, result.stderr
    assert "audit does not exist yet" in result.stderr

    assert ids(dbs.green_dsn, "accounts") == [1, 2, 3]
    assert ids(dbs.green_dsn, "orders") == [1, 2, 3, 4, 5, 8]
    assert ids(dbs.green_dsn, "payments") == [1]
    moved = query(dbs.green_dsn, "SELECT source_table, (row_data->>'id')::int, constraint_name, cascade_of, depth"
                                 " FROM (SELECT * FROM bluegreen_quarantine.accounts UNION ALL"
                                 " SELECT * FROM bluegreen_quarantine.orders UNION ALL"
                                 " SELECT * FROM bluegreen_quarantine.payments) q ORDER BY quarantine_id")
    assert moved == [
        ("orders", 9, "accounts_name_nonempty", "public.accounts (orders_account_id_fkey)", 1),
        ("orders", 10, "accounts_name_nonempty", "public.accounts (orders_account_id_fkey)", 1),
        ("accounts", 4, "accounts_name_nonempty", None, 0),
        ("orders", 7, "orders.status NOT NULL", None, 0),
        ("orders", 6, "orders_code_key", None, 0),
        ("payments", 2, "payments_order_fk", None, 0),
    ]
    checks = {c["name"]: (c["ok"], c["detail"]) for c in json.loads(result.stdout)["steps"][0]["checks"]}
    assert checks["cleanup accounts_name_nonempty"] == (True, "1 row(s) of public.accounts moved to"
                                                              " bluegreen_quarantine")
    assert checks["cleanup orders_code_key"] == (True, "1 row(s) of public.orders moved to bluegreen_quarantine")
    assert all(ok for ok, _ in checks.values())
    assert checks["no row violates payments_order_fk"] == (True, "")

    # restore puts the rows back where they came from, parents first
    listed = bluegreen(["quarantine", "list", "--dsn", dbs.green_dsn, "--json"], cli_env(dbs))
    assert listed.returncode == 0, listed.stderr
    assert sum(r["rows"] for r in json.loads(listed.stdout)["quarantined"]) == 6
    missing = bluegreen(["quarantine", "restore", "--dsn", dbs.green_dsn, "--into", dbs.blue_dsn], cli_env(dbs))
    assert missing.returncode == 2 and "table public.accounts does not exist on the target" in missing.stderr
    restored = bluegreen(["quarantine", "restore", "--dsn", dbs.green_dsn, "--table", "accounts", "--table", "orders"],
                         cli_env(dbs))
    assert restored.returncode == 0, restored.stderr
    assert "5 row(s) restored" in restored.stdout
    assert ids(dbs.green_dsn, "accounts") == [1, 2, 3, 4]
    assert ids(dbs.green_dsn, "orders") == list(range(1, 11))
    assert query(dbs.green_dsn, "SELECT status, code FROM orders WHERE id IN (6, 7) ORDER BY id") == [
        ("paid", "code-5"), (None, "code-7")]
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM bluegreen_quarantine.orders WHERE restored_at IS NULL") == 0
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM bluegreen_quarantine.payments WHERE restored_at IS NULL") == 1
    again = bluegreen(["quarantine", "restore", "--dsn", dbs.green_dsn, "--table", "orders"], cli_env(dbs))
    assert again.returncode == 0 and "0 row(s) restored" in again.stdout


def test_after_cleanup_the_migration_applies(dbs: Databases, tmp_path: Path) -> None:
    setup(dbs, tmp_path)
    migrate = write_plan(tmp_path / "migrate.yaml", "cleanup-then-migrate", """\
  - {id: clean, kind: cleanup, on: green, files: "migrations/*.sql"}
  - {id: migrate, kind: migrate, on: green, files: "migrations/*.sql"}
""")
    result = bluegreen(["run", str(migrate)], cli_env(dbs))
    assert result.returncode == 0, result.stderr
    assert query(dbs.green_dsn, "SELECT conname, convalidated FROM pg_constraint WHERE contype IN ('c', 'u', 'f')"
                                " AND conrelid::regclass::text IN ('accounts', 'orders', 'payments') ORDER BY 1") == [
        ("accounts_name_nonempty", True), ("orders_account_id_fkey", True), ("orders_code_key", True),
        ("payments_order_fk", True)]


def test_report_fails_naming_keys_and_changes_nothing(dbs: Databases, tmp_path: Path) -> None:
    setup(dbs, tmp_path)
    result = bluegreen(["run", str(cleanup_plan(tmp_path, "report"))], cli_env(dbs))
    assert result.returncode == 1
    assert "1 row(s) of public.accounts violate accounts_name_nonempty; e.g. id = (4)" in result.stderr
    assert ids(dbs.green_dsn, "accounts") == [1, 2, 3, 4]
    assert scalar(dbs.green_dsn, "SELECT to_regclass('bluegreen_quarantine.accounts')") is None


def test_delete_in_batches_counts_per_constraint(dbs: Databases, tmp_path: Path) -> None:
    setup(dbs, tmp_path)
    with psycopg.connect(dbs.green_dsn, autocommit=True) as conn:
        conn.execute("UPDATE orders SET status = NULL WHERE id IN (1, 2, 3)")
    result = bluegreen(["run", str(cleanup_plan(tmp_path, "delete", batch_size=2)), "--json"], cli_env(dbs))
    assert result.returncode == 0, result.stderr
    assert ids(dbs.green_dsn, "orders") == [4, 5, 8]  # 9 and 10 went with account 4 (ON DELETE CASCADE)
    batches = query(dbs.green_dsn, "SELECT rows FROM bluegreen.cleanup_log WHERE constraint_name ="
                                   " 'orders.status NOT NULL' ORDER BY id")
    assert batches == [(2,), (2,)]
    checks = {c["name"]: c["detail"] for c in json.loads(result.stdout)["steps"][0]["checks"]}
    assert checks["cleanup orders.status NOT NULL"] == "4 row(s) of public.orders deleted"
    assert scalar(dbs.green_dsn, "SELECT to_regclass('bluegreen_quarantine.orders')") is None
