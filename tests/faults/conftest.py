"""Fixtures of the fault-injection suite: its own PgBouncer and its own green cluster, the plans under test.

``BLUEGREEN_FAULTS=all`` (what ``make faults`` sets) runs every fault point of every target; without it the
suite runs a small slice that ``make test`` can afford. ``BLUEGREEN_FAULTS_SAMPLE=N`` (with ``all``) runs a
seeded random sample of N SIGKILL points per target instead of all of them; ``BLUEGREEN_FAULTS_SEED`` sets
the seed (printed); ``BLUEGREEN_FAULTS_ONLY=a,b`` keeps the points containing ``a`` or ``b`` (to debug one).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from orchestrator.localenv import Databases, LocalCluster, LocalPgBouncer, embedded_pg

from .harness import TALLY, Target, own_pgbouncer

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without ``BLUEGREEN_FAULTS=all`` (make faults), the cases marked ``faults_all`` are not collected (not
    skipped): plain pytest runs only the slice ``make test`` can afford."""
    if os.environ.get("BLUEGREEN_FAULTS") == "all":
        return
    dropped = [item for item in items if item.get_closest_marker("faults_all")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not item.get_closest_marker("faults_all")]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TALLY.outcomes:
        terminalreporter.write_line(TALLY.summary())


@pytest.fixture(scope="session")
def fault_bouncer(servers_dir: Path, blue: LocalCluster, pg_password: str) -> Iterator[LocalPgBouncer]:
    """A PgBouncer of the suite's own in front of blue: every cutover rewrites its config file."""
    from conftest import need  # tests/conftest.py

    from orchestrator.localenv import pgbouncer_binary
    need(pgbouncer_binary)
    bouncer = own_pgbouncer(servers_dir, blue, pg_password, "pgb-faults")
    try:
        yield bouncer
    finally:
        bouncer.destroy()


@pytest.fixture(scope="session")
def restartable_green(servers_dir: Path, pg_password: str) -> Iterator[LocalCluster]:
    """A PostgreSQL 18 cluster of the suite's own, which a case may restart (never the shared green)."""
    from conftest import need

    cluster = LocalCluster("green-faults", need(embedded_pg), servers_dir, pg_password)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


def _load_blue(dbs: Databases) -> None:
    with psycopg.connect(dbs.blue_dsn, autocommit=True) as conn:
        conn.execute((HERE / "sql" / "blue.sql").read_bytes())


@pytest.fixture(scope="session")
def own_target(fault_bouncer: LocalPgBouncer) -> Target:
    """tests/faults/plan.yaml: every step kind of the Hydra runbook on a small fixed token store."""
    return Target("faults-plan", HERE / "plan.yaml", _load_blue,
                  lambda dbs: {"PGBOUNCER_ADMIN_DSN": fault_bouncer.admin_dsn(),
                               "PGBOUNCER_INI": str(fault_bouncer.ini_path), "FAULT_DB": dbs.name})


# -- Ory Hydra 1.11.10 -> 2.3.0 (plans/hydra.yaml), at a tiny scale ------------------------------------------

HYDRA_TOKENS = int(os.environ.get("BLUEGREEN_FAULTS_HYDRA_TOKENS") or 200)
HYDRA_BASE = datetime(2030, 1, 1)  # tokens are issued in the hour before it: the same rows in every case


@pytest.fixture(scope="session")
def hydra_target(blue: LocalCluster, fault_bouncer: LocalPgBouncer) -> Iterator[Target]:
    """plans/hydra.yaml on blue loaded once into a template database (Hydra v1.11.10 with its testdata, a
    population of ``HYDRA_TOKENS`` tokens at a fixed time, the rows that break 2.x); every case copies it."""
    plan = HERE.parents[1] / "plans" / "hydra.yaml"
    from orchestrator.hydra import (
        REVOCATION_LOG,
        Scale,
        apply_like_popx,
        inject_bad_rows,
        migrations,
        populate,
        with_testdata,
    )

    assert plan.exists(), f"{plan} is missing"
    template = f"faults_hydra_{os.getpid()}"
    blue.create_database(template)
    try:
        dsn = blue.dsn(template)
        apply_like_popx(dsn, with_testdata(migrations("v1.11.10"), "v1.11.10"))
        populate(dsn, Scale(HYDRA_TOKENS), base=HYDRA_BASE)
        inject_bad_rows(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(REVOCATION_LOG.encode())

        def prepare(dbs: Databases) -> None:
            with blue.connect() as conn:  # the fresh database again, as a copy of the template
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(dbs.name)))
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(dbs.name), sql.Identifier(template)))

        yield Target("hydra", plan, prepare,
                     lambda dbs: {"PGBOUNCER_ADMIN_DSN": fault_bouncer.admin_dsn(),
                                  "PGBOUNCER_INI": str(fault_bouncer.ini_path)},
                     timeout=900, volatile=HYDRA_VOLATILE, mask=UUID)
    finally:
        blue.drop_database(template)


# Hydra's 2.x migrations give green values at random: the network id (nid, on every row) and the uuid keys
# (pk) they add are gen_random_uuid(). Two uninterrupted runs differ there, so every uuid in a row's text is
# masked (the rows are still compared, and counted); test_hydra_runs_are_comparable names anything else
# that differs, to be listed in HYDRA_VOLATILE.
UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
HYDRA_VOLATILE: frozenset[tuple[str, str]] = frozenset()
