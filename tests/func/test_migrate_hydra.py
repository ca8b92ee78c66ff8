"""Ory Hydra's real migrations through ``migrate`` on PostgreSQL 18 (green).

- Applied as written (the way Hydra's own migrator does), rewritten lock-safe, run fast, and as the files
  ``bluegreen rewrite`` writes, run with psql: every way gives the same schema (catalog diff empty).
- A database at Hydra v1.11.10 with its testdata plus injected bad rows reaches v2.3.0 with inline cleanup,
  quarantining exactly the injected rows, which ``bluegreen quarantine restore`` puts back into a copy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg

from orchestrator import catalog
from orchestrator.localenv import Databases, LocalCluster

from .helpers import bluegreen, cli_env, query, scalar, write_plan
from .migrate_support import apply_like_popx, extra_database, hydra, migrations, with_testdata
from .psql_support import apply_files

ALLOW = "[changing-column-type, adding-field-with-default]"


def schema(dsn: str) -> catalog.Catalog:
    with psycopg.connect(dsn) as conn:
        found = catalog.load(conn)
    # the migrator's own bookkeeping is not part of Hydra's schema
    found.tables = [t for t in found.tables if t != "public.schema_migration"]
    found.columns = [c for c in found.columns if c.table != "public.schema_migration"]
    found.constraints = [c for c in found.constraints if c.table != "public.schema_migration"]
    found.indexes = [i for i in found.indexes if i.table != "public.schema_migration"]
    return found


def migrate_plan(tmp_path: Path, name: str, mode: str, extra: str = "") -> Path:
    return write_plan(tmp_path / f"{name}.yaml", name, f"""\
  - id: migrate
    kind: migrate
    on: green
    files: {hydra() / "migrations"}/*.up.sql
    mode: {mode}
    allow: {ALLOW}
{extra}""")


def test_original_lock_safe_fast_and_rewritten_files_give_one_schema(dbs: Databases, green: LocalCluster,
                                                                      tmp_path: Path) -> None:
    files = migrations()
    assert len(files) == 212
    apply_like_popx(dbs.green_dsn, files)
    original = schema(dbs.green_dsn)
    assert len(original.tables) == 14 and len(original.indexes) == 46

    with extra_database(green, dbs.name + "_ls") as lock_safe, extra_database(green, dbs.name + "_fast") as fast, \
            extra_database(green, dbs.name + "_rw") as rewritten:
        for mode, dsn in (("lock-safe", lock_safe), ("fast", fast)):
            result = bluegreen(["run", str(migrate_plan(tmp_path, f"hydra-{mode}", mode)), "--json"],
                               cli_env(dbs, GREEN_DSN=dsn), timeout=300)
            assert result.returncode == 0, result.stderr[-3000:]
            report = json.loads(result.stdout)
            checks = {c["name"]: c for c in report["steps"][0]["checks"]}
            assert checks["every migration applied"]["ok"]
            assert checks["no invalid index"]["ok"]
            assert scalar(dsn, "SELECT count(*) FROM bluegreen.schema_versions") == 212
            assert catalog.diff(original, schema(dsn), ("original", mode)) == []

        # bluegreen rewrite's files, run as they say: with psql, as they are
        out = tmp_path / "rewritten"
        result = bluegreen(["rewrite", str(hydra() / "migrations"), "--out", str(out), "--allow",
                            "changing-column-type,adding-field-with-default"], cli_env(dbs))
        assert result.returncode == 0, result.stdout + result.stderr
        apply_files(green, dbs.name + "_rw", sorted(out.glob("*.up.sql")))
        assert catalog.diff(original, schema(rewritten), ("original", "rewritten files")) == []


# Rows that break the 2.x migrations (ANALYSIS.md section 3), injected into a database at v1.11.10.
BAD_ROWS = """
-- A: a second consent request for one login challenge (older than the one testdata has): the flow merge
--    (20211019000001000001) would turn it into a duplicate flow and the flow's keys would fail
INSERT INTO hydra_oauth2_consent_request (challenge, verifier, client_id, subject, request_url, skip, requested_scope,
    csrf, requested_at, oidc_context, login_challenge)
SELECT 'bad-dup-consent', 'bad-dup-verifier', client_id, subject, request_url, skip, requested_scope, 'bad-dup-csrf',
       '2000-01-01', oidc_context, login_challenge
FROM hydra_oauth2_consent_request WHERE challenge = 'challenge-0003';
-- C: client list values that the text-to-JSON conversion (20220513000001000002) cannot cast
INSERT INTO hydra_client SELECT (jsonb_populate_record(NULL::hydra_client, to_jsonb(c)
    || jsonb_build_object('pk', nextval(pg_get_serial_sequence('hydra_client', 'pk')), 'id', 'bad-client-quote',
                          'redirect_uris', 'https://app.example/cb?x="1"'))).*
FROM hydra_client c WHERE id = 'client-0001';
INSERT INTO hydra_client SELECT (jsonb_populate_record(NULL::hydra_client, to_jsonb(c)
    || jsonb_build_object('pk', nextval(pg_get_serial_sequence('hydra_client', 'pk')), 'id', 'bad-client-backslash',
                          'contacts', 'ops\\team@example.com'))).*
FROM hydra_client c WHERE id = 'client-0001';
-- E: tokens of a client deleted behind the foreign key's back: the 2.x FOREIGN KEY (client_id, nid) fails
SET session_replication_role = replica;
INSERT INTO hydra_oauth2_access (signature, request_id, client_id, scope, granted_scope, form_data, session_data,
    subject)
VALUES ('bad-orphan-access', 'bad-orphan-req', 'bad-deleted-client', 'openid', 'openid', '', '', 'someone');
INSERT INTO hydra_oauth2_refresh (signature, request_id, client_id, scope, granted_scope, form_data, session_data,
    subject)
VALUES ('bad-orphan-refresh', 'bad-orphan-req', 'bad-deleted-client', 'openid', 'openid', '', '', 'someone');
SET session_replication_role = DEFAULT;
"""

# table -> (key column, injected keys)
INJECTED = {
    "hydra_oauth2_consent_request": ("challenge", {"bad-dup-consent"}),
    "hydra_client": ("id", {"bad-client-quote", "bad-client-backslash"}),
    "hydra_oauth2_access": ("signature", {"bad-orphan-access"}),
    "hydra_oauth2_refresh": ("signature", {"bad-orphan-refresh"}),
}

CHECKS = r"""    history: {table: schema_migration}
    cleanup: quarantine
    checks:
      - name: duplicate-login-challenge
        table: hydra_oauth2_consent_request
        before: "20211019000001000001"
        where: >-
          EXISTS (SELECT FROM hydra_oauth2_consent_request newer
                  WHERE newer.login_challenge = hydra_oauth2_consent_request.login_challenge
                    AND (newer.requested_at, newer.challenge)
                        > (hydra_oauth2_consent_request.requested_at, hydra_oauth2_consent_request.challenge))
      - name: client-list-not-json
        table: hydra_client
        before: "20211004110001000000"
        where: >-
          redirect_uris ~ '["\\[:cntrl:]]' OR grant_types ~ '["\\[:cntrl:]]' OR response_types ~ '["\\[:cntrl:]]'
          OR audience ~ '["\\[:cntrl:]]' OR allowed_cors_origins ~ '["\\[:cntrl:]]' OR contacts ~ '["\\[:cntrl:]]'
          OR request_uris ~ '["\\[:cntrl:]]' OR post_logout_redirect_uris ~ '["\\[:cntrl:]]'
"""


def injected_rows(dsn: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for table, (key, keys) in INJECTED.items():
        rows = query(dsn, f"SELECT to_jsonb(t) FROM {table} t WHERE {key} = ANY(%s) ORDER BY {key}", (list(keys),))
        out[table] = [r[0] for r in rows]
    return out


def test_hydra_1_11_10_with_bad_rows_reaches_2_3_0_quarantining_exactly_them(dbs: Databases, green: LocalCluster,
                                                                              tmp_path: Path) -> None:
    setup = with_testdata(migrations("v1.11.10"), "v1.11.10")
    assert len([f for f in setup if not f.testdata]) == 55
    apply_like_popx(dbs.green_dsn, setup)
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM hydra_oauth2_access") > 0

    with extra_database(green, dbs.name + "_copy", template=dbs.name) as copy, \
            extra_database(green, dbs.name + "_clean") as clean:
        with psycopg.connect(dbs.green_dsn, autocommit=True) as conn:
            conn.execute(BAD_ROWS.encode())
        injected = injected_rows(dbs.green_dsn)
        assert sum(len(rows) for rows in injected.values()) == 5
        good_tokens = scalar(dbs.green_dsn, "SELECT count(*) FROM hydra_oauth2_access") - 1

        # without cleanup the upgrade fails on the first bad row
        plain = migrate_plan(tmp_path, "hydra-plain", "lock-safe", "    history: {table: schema_migration}\n")
        with extra_database(green, dbs.name + "_plain", template=dbs.name) as doomed:
            failed = bluegreen(["run", str(plain)], cli_env(dbs, GREEN_DSN=doomed), timeout=300)
            assert failed.returncode == 1
            assert "could not create unique index" in failed.stderr

        plan = migrate_plan(tmp_path, "hydra-upgrade", "lock-safe", CHECKS)
        result = bluegreen(["run", str(plan), "--json"], cli_env(dbs), timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]

        # v2.3.0 reached: every version recorded, and the same schema as a fresh v2.3.0 (but for the order of
        # columns: an upgrade adds 20211226155900's column before 20211004110001's, a fresh install after)
        assert scalar(dbs.green_dsn, "SELECT count(*) FROM schema_migration") == 212
        apply_like_popx(clean, migrations())
        assert catalog.diff(schema(clean), schema(dbs.green_dsn), ("fresh v2.3.0", "upgraded"),
                            column_order=False) == []

        # exactly the injected rows are in quarantine, each with its constraint
        quarantined = {(table, r[0], r[1]) for table, (key, _) in INJECTED.items()
                       for r in query(dbs.green_dsn, f"SELECT row_data->>'{key}', constraint_name"
                                                     f" FROM bluegreen_quarantine.{table}")}
        assert quarantined == {
            ("hydra_oauth2_consent_request", "bad-dup-consent", "duplicate-login-challenge"),
            ("hydra_client", "bad-client-quote", "client-list-not-json"),
            ("hydra_client", "bad-client-backslash", "client-list-not-json"),
            ("hydra_oauth2_access", "bad-orphan-access", "hydra_oauth2_access_client_id_fk"),
            ("hydra_oauth2_refresh", "bad-orphan-refresh", "hydra_oauth2_refresh_client_id_fk"),
        }
        assert scalar(dbs.green_dsn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'bluegreen_quarantine'") == 4
        assert scalar(dbs.green_dsn, "SELECT count(*) FROM hydra_oauth2_access") == good_tokens
        checks = {c["name"]: c["detail"] for c in json.loads(result.stdout)["steps"][0]["checks"]}
        assert checks["cleanup client-list-not-json"] == "2 row(s) of public.hydra_client moved to bluegreen_quarantine"
        assert checks["cleanup hydra_oauth2_access_client_id_fk"] == \
               "1 row(s) of public.hydra_oauth2_access moved to bluegreen_quarantine"

        # restore into the copy taken at v1.11.10 before the bad rows: they come back exactly as injected
        assert injected_rows(copy) == {table: [] for table in INJECTED}
        restored = bluegreen(["quarantine", "restore", "--dsn", dbs.green_dsn, "--into", copy, "--disable-triggers"],
                             cli_env(dbs))
        assert restored.returncode == 0, restored.stderr
        assert "5 row(s) restored into the copy" in restored.stdout
        assert injected_rows(copy) == injected
        assert dbs.green_dsn.split("@")[0].split(":")[-1] not in restored.stdout + restored.stderr  # no password
