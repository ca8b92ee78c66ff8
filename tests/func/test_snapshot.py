"""The snapshot step, PG 15 -> PG 18, both methods, against real servers: contents, checksums, resume, refusals."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from orchestrator.copy.catalog import read_catalog
from orchestrator.copy.engine import SourceSnapshot
from orchestrator.copy.verify import checksum_query, verify_tables
from orchestrator.localenv import Databases

from .helpers import bluegreen, cli_env, query, scalar, write_plan
from .snapshot_support import RICH_SCHEMA, relation_filenodes, table_rows

TABLES = {  # table -> ORDER BY giving one order on both sides
    "kinds": "id", "owners": "id", "pets": "id", "readings": "id, region", "nokey": "t::text COLLATE \"C\"",
    "app.settings": "name COLLATE \"C\"", "empty_one": "id",
}


def _load(dsn: str, text: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(text.encode())


def _run(dbs: Databases, tmp_path: Path, steps: str, name: str = "snap", **env: str) -> tuple[Any, dict[str, Any]]:
    plan = write_plan(tmp_path / "plan.yaml", name, steps)
    report = tmp_path / "report.json"
    result = bluegreen(["run", str(plan), "--report", str(report)], cli_env(dbs, **env), timeout=300)
    return result, (json.loads(report.read_text()) if report.exists() else {})


def _checks(report: dict[str, Any], step: str) -> dict[str, dict[str, Any]]:
    found = next(s for s in report["steps"] if s["id"] == step)
    return {c["name"]: c for c in found["checks"]}


@pytest.mark.parametrize("method", ["copy", "dump"])
def test_snapshot_copies_every_type_and_verifies_checksums(dbs: Databases, tmp_path: Path, method: str) -> None:
    # a type made and dropped first: blue's user types get other OIDs than green's, as on any real pair
    _load(dbs.blue_dsn, "CREATE TYPE oid_shift AS ENUM ('x'); DROP TYPE oid_shift;")
    _load(dbs.blue_dsn, RICH_SCHEMA)
    result, report = _run(dbs, tmp_path, f"  - {{id: snap, kind: snapshot, method: {method}, jobs: 2}}\n")
    assert result.returncode == 0, result.stdout + result.stderr

    # every table equal row for row, compared here independently of the step's own verify
    for table, order in TABLES.items():
        blue_rows = table_rows(dbs.blue_dsn, table, order)
        assert blue_rows == table_rows(dbs.green_dsn, table, order), table
        assert table in ("empty_one",) or blue_rows
    # the step's verify compared counts AND checksums, and they match what this test computes
    checks = _checks(report, "snap")
    with psycopg.connect(dbs.blue_dsn) as conn:
        catalog = read_catalog(conn)
    for table in catalog.tables:
        check = checks[f"table {table.display}"]
        assert check["ok"], check
        with psycopg.connect(dbs.green_dsn, autocommit=True) as conn:
            conn.execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 1;"
                         " SET IntervalStyle = 'postgres'; SET bytea_output = 'hex'")
            rows, digest = conn.execute(checksum_query(table)).fetchone()  # type: ignore[misc]
        assert check["detail"] == f"{rows} rows, checksum {digest or '-'}"
    assert checks["table public.kinds"]["detail"].startswith("303 rows, checksum ")
    assert {c["name"] for c in checks.values() if not c["ok"]} == set()
    assert checks["indexes"]["ok"] and "0 invalid" in checks["indexes"]["detail"]

    # schema objects made it: views, functions, triggers, enums, the matview's data, sequences
    assert scalar(dbs.green_dsn, "SELECT sum(pets) FROM owner_pets") == 500
    assert scalar(dbs.green_dsn, "SELECT sum(n) FROM kind_moods") == 303
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM pg_trigger WHERE tgname = 'pets_touch'") == 1
    assert scalar(dbs.green_dsn, "SELECT last_value FROM pets_id_seq") == 501
    assert scalar(dbs.green_dsn, "SELECT nextval('kinds_id_seq')") == 304
    assert scalar(dbs.green_dsn, "SELECT current_setting('server_version_num')::int") >= 180000
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0
    # the recorded snapshot is the one the journal hands to the replay
    state = scalar(dbs.blue_dsn, "SELECT value FROM bluegreen.run_state WHERE key = 'snapshot:snap'")
    assert state["method"] == method
    assert set(state["tables"]) >= {"public.kinds", "public.readings", "public.readings_1", "app.settings"}
    assert len(set(state["tables"].values())) == 1 and state["snapshot"] in state["tables"].values()
    assert state["snapshot"].count(":") == 2
    # aclitem has no binary send/receive: that table is copied as text, the others binary; an enum[] and a
    # composite too, though their binary forms name blue's type OIDs, not green's: PostgreSQL 18's receiving
    # functions do not check them (this test shifts the OIDs on purpose)
    assert not catalog.table("app.settings").binary and catalog.table("public.kinds").binary
    assert scalar(dbs.blue_dsn, "SELECT 'mood'::regtype::oid") != scalar(dbs.green_dsn, "SELECT 'mood'::regtype::oid")
    assert scalar(dbs.green_dsn, "SELECT grants::text FROM app.settings WHERE name = 'a'") == "{postgres=r/postgres}"


def test_checksum_catches_a_changed_row(dbs: Databases) -> None:
    _load(dbs.blue_dsn, RICH_SCHEMA)
    _load(dbs.green_dsn, RICH_SCHEMA)
    snap = SourceSnapshot(dbs.blue_dsn, "blue")
    try:
        catalog = read_catalog(snap.conn)
        kinds = [t for t in catalog.tables if t.display == "public.kinds"]
        dsns = {"blue": dbs.blue_dsn, "green": dbs.green_dsn}
        same = verify_tables(dsns, "blue", "green", catalog, snap.id, {"public.kinds"}, {}, 1, True)
        assert [c.ok for c in same if c.name == "table public.kinds"] == [True]
        query(dbs.green_dsn, "UPDATE kinds SET amount = amount + 0.0001 WHERE id = 17")
        changed = verify_tables(dsns, "blue", "green", catalog, snap.id, {"public.kinds"}, {}, 1, True)
        [check] = [c for c in changed if c.name == "table public.kinds"]
        assert not check.ok and "303 rows" in check.detail
        assert kinds
    finally:
        snap.close()


def test_copy_killed_mid_table_resumes_only_unfinished_tables(dbs: Databases, tmp_path: Path) -> None:
    _load(dbs.blue_dsn, RICH_SCHEMA + """
        CREATE TABLE big (id int PRIMARY KEY, pad text);
        INSERT INTO big SELECT g, repeat(md5(g::text), 20) FROM generate_series(1, 40000) g;
        CREATE TABLE lonely (id int PRIMARY KEY);
        INSERT INTO lonely SELECT generate_series(1, 10);
    """)
    steps = "  - {id: snap, kind: snapshot, jobs: 1}\n"
    # largest first, one at a time: 'big', then 'kinds'; the process dies right after kinds' commit
    killed, _ = _run(dbs, tmp_path, steps, BLUEGREEN_FAULT="after:copy_table:snap:public.kinds")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = dict(query(dbs.green_dsn, "SELECT relation, bool_and(done) FROM bluegreen.snapshot_tables"
                                     " GROUP BY relation"))
    assert done["public.big"] and done["public.kinds"]
    assert not done["public.lonely"] and not done["public.pets"]
    finished = [t for t, ok in done.items() if ok]
    before = relation_filenodes(dbs.green_dsn, sorted(done))
    first = scalar(dbs.blue_dsn, "SELECT value->>'snapshot' FROM bluegreen.run_state WHERE key = 'snapshot:snap'")

    query(dbs.blue_dsn, "INSERT INTO lonely VALUES (11)")  # a change between the two snapshots
    resumed, report = _run(dbs, tmp_path, steps)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "were copied by an earlier attempt and are kept" in resumed.stderr

    after = relation_filenodes(dbs.green_dsn, sorted(done))
    groups = dict(query(dbs.green_dsn, "SELECT DISTINCT relation, copy_group FROM bluegreen.snapshot_tables"))
    kept = {t for t in done if before[t] == after[t]}
    # 'kinds' is linked by a foreign key to 'pets' (unfinished): its whole group was copied again
    assert groups["public.kinds"] == groups["public.pets"]
    assert kept == {t for t in finished if groups[t] != groups["public.pets"]}
    assert "public.big" in kept and "public.kinds" not in kept
    attempts = dict(query(dbs.green_dsn, "SELECT relation, max(attempt) FROM bluegreen.snapshot_tables"
                                         " GROUP BY relation"))
    assert attempts["public.big"] == 1 and attempts["public.lonely"] == 2 and attempts["public.kinds"] == 2

    state = scalar(dbs.blue_dsn, "SELECT value FROM bluegreen.run_state WHERE key = 'snapshot:snap'")
    assert state["tables"]["public.big"] == first != state["snapshot"]
    assert state["tables"]["public.lonely"] == state["snapshot"]
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM lonely") == 11
    checks = _checks(report, "snap")
    assert all(c["ok"] for c in checks.values()), [c for c in checks.values() if not c["ok"]]
    assert "earlier attempt's snapshot" in checks["table public.big"]["detail"]
    assert "checksum" in checks["table public.lonely"]["detail"]
    for table, order in TABLES.items():
        assert table_rows(dbs.blue_dsn, table, order) == table_rows(dbs.green_dsn, table, order), table


def test_copy_killed_inside_a_copy_leaves_nothing_half_done(dbs: Databases, tmp_path: Path) -> None:
    _load(dbs.blue_dsn, """
        CREATE TABLE big (id int PRIMARY KEY, pad text);
        INSERT INTO big SELECT g, repeat(md5(g::text), 20) FROM generate_series(1, 40000) g;
        CREATE TABLE small (id int PRIMARY KEY);
        INSERT INTO small SELECT generate_series(1, 10);
    """)
    steps = "  - {id: snap, kind: snapshot, jobs: 1}\n"
    killed, _ = _run(dbs, tmp_path, steps, BLUEGREEN_FAULT="during:copy_table:snap:public.big")
    assert killed.returncode == -signal.SIGKILL
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM big") == 0  # its transaction died with the process
    assert not scalar(dbs.green_dsn, "SELECT bool_or(done) FROM bluegreen.snapshot_tables")
    resumed, report = _run(dbs, tmp_path, steps)
    assert resumed.returncode == 0, resumed.stderr
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM big") == 40000
    assert all(c["ok"] for c in _checks(report, "snap").values())


def test_resumed_post_data_keeps_what_is_already_there(dbs: Databases, tmp_path: Path) -> None:
    _load(dbs.blue_dsn, RICH_SCHEMA)
    steps = "  - {id: snap, kind: snapshot, jobs: 2}\n"
    killed, _ = _run(dbs, tmp_path, steps, BLUEGREEN_FAULT="before:restore_post_data:snap")
    assert killed.returncode == -signal.SIGKILL
    # each table's own indexes and keys were built as soon as its rows were in; the foreign keys of pets (to
    # owners and kinds) as soon as all three had theirs, before the final pass the process died in
    early = scalar(dbs.green_dsn, "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
                                  " WHERE c.relnamespace IN ('public'::regnamespace, 'app'::regnamespace)"
                                  " AND c.relkind = 'r'")
    assert early >= 10 and scalar(dbs.green_dsn, "SELECT to_regclass('kinds_doc') IS NOT NULL")
    assert sorted(r[0] for r in query(dbs.green_dsn, "SELECT confrelid::regclass::text FROM pg_constraint"
                                                     " WHERE contype = 'f' AND convalidated")) == ["kinds", "owners"]
    assert query(dbs.green_dsn, "SELECT DISTINCT conrelid::regclass::text FROM pg_constraint WHERE contype = 'f'"
                 ) == [("pets",)]
    # and as if the killed final pg_restore had made one more object
    query(dbs.green_dsn, "CREATE TRIGGER pets_touch BEFORE INSERT ON pets FOR EACH ROW EXECUTE FUNCTION pets_touch()")
    resumed, report = _run(dbs, tmp_path, steps)
    assert resumed.returncode == 0, resumed.stderr
    kept = re.search(r"(\d+) index\(es\)/constraint\(s\) were restored by an earlier attempt", resumed.stderr)
    assert kept and int(kept.group(1)) >= 11  # the early ones (indexes and key constraints) and the trigger
    assert "kept from an earlier attempt" in resumed.stderr and "0 table(s) copied" in resumed.stderr
    checks = _checks(report, "snap")
    assert all(c["ok"] for c in checks.values()), [c for c in checks.values() if not c["ok"]]
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM pg_constraint WHERE conrelid = 'owners'::regclass") >= 2


def test_a_dump_killed_after_its_restore_starts_over_clean(dbs: Databases, tmp_path: Path) -> None:
    _load(dbs.blue_dsn, RICH_SCHEMA)
    steps = "  - {id: snap, kind: snapshot, method: dump}\n"
    killed, _ = _run(dbs, tmp_path, steps, BLUEGREEN_FAULT="after:pg_restore:snap")
    assert killed.returncode == -signal.SIGKILL
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM kinds") == 303
    query(dbs.blue_dsn, "INSERT INTO owners VALUES (41, 'late')")  # the new snapshot sees it
    resumed, report = _run(dbs, tmp_path, steps)
    assert resumed.returncode == 0, resumed.stderr
    assert "cleaned, restored again from a new snapshot" in resumed.stderr
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM owners") == 41
    assert all(c["ok"] for c in _checks(report, "snap").values())


def test_split_tables_are_copied_in_ranges(dbs: Databases, tmp_path: Path) -> None:
    _load(dbs.blue_dsn, """
        CREATE TABLE big (id int PRIMARY KEY, pad text);
        INSERT INTO big SELECT g, repeat(md5(g::text), 30) FROM generate_series(1, 30000) g;
        DELETE FROM big WHERE id % 7 = 0;
    """)
    result, report = _run(dbs, tmp_path, "  - {id: snap, kind: snapshot, jobs: 2, split_tables_above: 10MB}\n")
    assert result.returncode == 0, result.stderr
    parts = query(dbs.green_dsn, "SELECT part, parts, rows FROM bluegreen.snapshot_tables WHERE relation = 'public.big'"
                                 " ORDER BY part")
    want = -(-scalar(dbs.blue_dsn, "SELECT pg_relation_size('big')") // (10 << 20))
    assert want >= 2 and len(parts) == want and all(p[1] == want for p in parts)
    assert all(p[2] > 0 for p in parts)
    assert sum(p[2] for p in parts) == 30000 - 30000 // 7
    assert table_rows(dbs.blue_dsn, "big", "id") == table_rows(dbs.green_dsn, "big", "id")
    assert _checks(report, "snap")["table public.big"]["ok"]


def test_a_role_that_may_not_skip_wal_zero_fill_still_copies(dbs: Databases, tmp_path: Path) -> None:
    """The copy turns wal_init_zero off in its own sessions on green (every other test here runs as a
    superuser, which may); a role that may not gets a note and the same copy; green's setting is untouched."""
    _load(dbs.blue_dsn, "CREATE TABLE t (id int PRIMARY KEY, v text);"
                        " INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g; CREATE INDEX ON t (v)")
    role = f"loader_{dbs.name}"
    query(dbs.green_dsn, f"CREATE ROLE \"{role}\" LOGIN PASSWORD 'pw-loader';"
                         f' ALTER DATABASE "{dbs.name}" OWNER TO "{role}"')
    try:
        green = make_conninfo(dbs.green_dsn, user=role, password="pw-loader")
        result, _ = _run(dbs, tmp_path, "  - {id: snap, kind: snapshot, owners: false, privileges: false}\n",
                         GREEN_DSN=green)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "(wal_init_zero = on) and this role may not turn that off" in result.stderr
        assert table_rows(dbs.blue_dsn, "t", "id") == table_rows(dbs.green_dsn, "t", "id")
        assert scalar(dbs.green_dsn, "SHOW wal_init_zero") == "on"  # per session only: the server's is untouched
    finally:
        query(dbs.green_dsn, f'ALTER DATABASE "{dbs.name}" OWNER TO postgres; DROP OWNED BY "{role}";'
                             f' DROP ROLE "{role}"')


def test_snapshot_refuses_a_green_database_that_is_not_empty(dbs: Databases, tmp_path: Path) -> None:
    _load(dbs.blue_dsn, "CREATE TABLE t (id int PRIMARY KEY)")
    _load(dbs.green_dsn, "CREATE TABLE already_here (id int)")
    result, _ = _run(dbs, tmp_path, "  - {id: snap, kind: snapshot}\n")
    assert result.returncode == 1
    assert "not empty" in result.stderr and "public.already_here" in result.stderr
    assert scalar(dbs.green_dsn, "SELECT to_regclass('t')") is None


def test_xml_columns_are_refused_before_copying(dbs: Databases, tmp_path: Path) -> None:
    _load(dbs.blue_dsn, "CREATE TABLE docs (id int PRIMARY KEY, body xml); INSERT INTO docs VALUES (1, '<a/>')")
    result, _ = _run(dbs, tmp_path, "  - {id: snap, kind: snapshot}\n")
    assert result.returncode == 1
    assert "public.docs.body" in result.stderr and "without libxml" in result.stderr
    assert scalar(dbs.green_dsn, "SELECT to_regclass('docs')") is None


def test_icu_collations_are_refused_before_copying(dbs: Databases, tmp_path: Path) -> None:
    if not scalar(dbs.blue_dsn, "SELECT count(*) FROM pg_collation WHERE collprovider = 'i'"):
        if os.environ.get("CI") == "true":  # Debian's PostgreSQL 15 has ICU: its absence is a broken setup
            pytest.fail("blue is built without ICU (CI=true)", pytrace=False)
        pytest.skip("blue is built without ICU")  # never under CI=true: failed above
    _load(dbs.blue_dsn, 'CREATE COLLATION german (provider = icu, locale = \'de-DE\');'
                        ' CREATE TABLE names (id int PRIMARY KEY, n text COLLATE german)')
    result, _ = _run(dbs, tmp_path, "  - {id: snap, kind: snapshot}\n")
    assert result.returncode == 1
    assert "ICU collations in use" in result.stderr and "public.german" in result.stderr
    assert "names" in result.stderr


def test_rollback_empties_green_again(dbs: Databases, tmp_path: Path) -> None:
    _load(dbs.blue_dsn, RICH_SCHEMA)
    plan = write_plan(tmp_path / "plan.yaml", "snap-undo", "  - {id: snap, kind: snapshot}\n")
    assert bluegreen(["run", str(plan)], cli_env(dbs), timeout=300).returncode == 0
    undone = bluegreen(["rollback", str(plan)], cli_env(dbs))
    assert undone.returncode == 0, undone.stderr
    assert scalar(dbs.green_dsn, "SELECT to_regclass('kinds')") is None
    assert scalar(dbs.green_dsn, "SELECT to_regnamespace('app')") is None
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM pg_type WHERE typname = 'mood'") == 0
    assert scalar(dbs.green_dsn, "SELECT has_schema_privilege('public', 'USAGE')")
    # and a second run starts from scratch into the emptied database
    again = bluegreen(["run", str(plan), "--restart"], cli_env(dbs), timeout=300)
    assert again.returncode == 0, again.stderr
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM kinds") == 303


def test_snapshot_dry_run_lists_each_table(dbs: Databases, tmp_path: Path) -> None:
    _load(dbs.blue_dsn, RICH_SCHEMA)
    plan = write_plan(tmp_path / "plan.yaml", "snap-dry", "  - {id: snap, kind: snapshot, jobs: 3}\n")
    result = bluegreen(["run", str(plan), "--dry-run"], cli_env(dbs))
    assert result.returncode == 0, result.stderr
    for action in ("export_snapshot:snap", "dump_schema:snap", "restore_pre_data:snap", "copy_table:snap:public.kinds",
                   "copy_table:snap:public.readings_1", "restore_post_data:snap", "set_sequences:snap"):
        assert f"plan {action}" in result.stderr
    assert "--jobs=3" in result.stderr and dbs.blue.password not in result.stderr + result.stdout
    assert 'COPY "public"."kinds" (' in result.stderr
    assert scalar(dbs.green_dsn, "SELECT to_regclass('kinds')") is None
