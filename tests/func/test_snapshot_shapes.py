"""The snapshot step on bench/shapes.py's database (small scale), PG 15 -> PG 18: every table equal.

The shapes are the kinds of a production database that the Hydra-shaped bench does not have: a quoted
schema with mixed-case, spaced names, an enum and an array of it, a composite and domains, a STORED
generated column, dropped columns still in every heap tuple, a range-partitioned table with a default
leaf, a 64-column table, an UNLOGGED table and foreign keys. Checked independently of the step's own
verify: the rows of every table (as text, in one order) hash the same on both sides; the keys,
indexes and foreign keys are all there and valid; the statistics the step's ANALYZE leaves exist for
every leaf and for the partitioned parent; and the report gives the copy's time by phase.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import psycopg

from orchestrator.localenv import Databases

from .helpers import bluegreen, cli_env, scalar, write_plan

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import shapes  # bench/ holds scripts, not a package

_SETTINGS = ("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 1;"
             " SET IntervalStyle = 'postgres'; SET bytea_output = 'hex'")


def _digest(dsn: str, table: str) -> tuple[int, str]:
    """Row count and md5 of a table's rows as text, sorted bytewise: no key, no engine code involved."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_SETTINGS)
        row = conn.execute(f"SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY t::text COLLATE \"C\"))"
                           f" FROM ONLY {table} AS t").fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


_OBJECTS = ("SELECT (SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE n.nspname IN ('public', 'Quoted Schema') AND i.indisvalid),"
            " (SELECT count(*) FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace"
            " WHERE n.nspname IN ('public', 'Quoted Schema') AND k.contype = 'f' AND k.convalidated),"
            " (SELECT relpersistence FROM pg_class WHERE oid = 'public.session_cache'::regclass)")


def test_shapes_copy_equal_table_by_table(dbs: Databases, tmp_path: Path) -> None:
    shapes.generate_small(dbs.blue_dsn)
    plan = write_plan(tmp_path / "plan.yaml", "shapes", "  - {id: snap, kind: snapshot, method: copy, jobs: 2}\n")
    report_path = tmp_path / "report.json"
    result = bluegreen(["run", str(plan), "--report", str(report_path)], cli_env(dbs), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr

    for table in shapes.TABLES:
        rows, digest = _digest(dbs.blue_dsn, table)
        assert rows > 0, table
        assert _digest(dbs.green_dsn, table) == (rows, digest), table
    # the generated column was computed again on green, from the copied columns, to the same values
    assert scalar(dbs.green_dsn, f'SELECT count(*) FROM {shapes.LINES} WHERE total IS NULL') == 0

    # keys, indexes (the partitioned one's leaves too) and foreign keys: as many as on blue, all valid
    with psycopg.connect(dbs.blue_dsn) as b, psycopg.connect(dbs.green_dsn) as g:
        on_blue = b.execute(_OBJECTS).fetchone()
        on_green = g.execute(_OBJECTS).fetchone()
    assert on_blue is not None and on_green == on_blue and on_blue[2] == "u", (on_blue, on_green)

    # the step's ANALYZE reached every leaf (during the copy) and the partitioned parent (at the end)
    analyzed = scalar(dbs.green_dsn,
                      "SELECT array_agg(DISTINCT format('%I.%I', schemaname, tablename) ORDER BY"
                      " format('%I.%I', schemaname, tablename)) FROM pg_stats"
                      " WHERE schemaname IN ('public', 'Quoted Schema') AND NOT inherited")
    assert set(shapes.TABLES) <= set(analyzed), set(shapes.TABLES) - set(analyzed)
    assert scalar(dbs.green_dsn, "SELECT count(*) FROM pg_stats WHERE tablename = 'events' AND inherited") > 0

    # the report gives the time by phase (the JSON facts, and the line the page shows)
    report = json.loads(report_path.read_text())
    facts = next(s for s in report["steps"] if s["id"] == "snap")["facts"]
    assert {"schema", "data", "analyze"} <= set(facts["phases_s"]), facts
    assert facts["seconds"] >= sum(facts["phases_s"].values()) * 0.99
