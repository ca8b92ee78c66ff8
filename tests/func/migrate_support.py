"""Hydra's corpus for migrate tests: which files a release holds, and applying them the way popx does.

The corpus lives outside the repository (``../shared/corpus/hydra`` or ``$HYDRA_CORPUS``); tests that
need it skip without it, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from orchestrator.localenv import LocalCluster
from orchestrator.sqlanalysis.parse import split_statements

ROOT = Path(__file__).resolve().parents[2]
HYDRA = Path(os.environ.get("HYDRA_CORPUS", ROOT.parent / "shared" / "corpus" / "hydra"))
_NAME = re.compile(r"^(\d+)_")

# SOURCE.md, "Which Hydra release introduced which versions": everything up to v1.11.10.
V1_11_10_RANGE = ("20190100000001", "20200527215732")
V1_11_10_EXTRA = {"20200819163013", "20200913192340", "20201110104000", "20201116133000", "20210928155900",
                  "20211226155900", "20211226156000", "20220328111500", "20210928175900"}


def hydra() -> Path:
    """The corpus folder; skips the test (fails it under CI=true) when it is missing."""
    if not (HYDRA / "migrations").is_dir():
        reason = f"Hydra corpus not found at {HYDRA} (set HYDRA_CORPUS)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)  # never under CI=true: failed above
    return HYDRA


@dataclass(frozen=True)
class HydraFile:
    path: Path
    version: str  # 20 digits for migrations; testdata: its 14 digits + "9" (popx's test ordering)
    testdata: bool = False

    @property
    def autocommit(self) -> bool:
        return ".autocommit." in self.path.name


def in_v1_11_10(version: str) -> bool:
    prefix = version[:14]
    return V1_11_10_RANGE[0] <= prefix <= V1_11_10_RANGE[1] or prefix in V1_11_10_EXTRA


def migrations(release: str = "v2.3.0") -> list[HydraFile]:
    """The up migrations of a release (``v1.11.10`` or ``v2.3.0``), in apply order."""
    files = []
    for path in sorted((hydra() / "migrations").glob("*.up.sql")):
        found = _NAME.match(path.name)
        assert found, path
        if release == "v2.3.0" or in_v1_11_10(found.group(1)):
            files.append(HydraFile(path, found.group(1)))
    return files


# Testdata written against the 2.x schema although its version belongs to a 1.x release: upstream
# runs it after the 2.0 migrations numbered below it (uuid ``hydra_jwk.pk``, ``nid`` columns), so it
# cannot load into a database at v1.11.10.
TESTDATA_NEEDS_2X = {"20211226155900", "20220328111500"}


def with_testdata(files: list[HydraFile], release: str = "v2.3.0") -> list[HydraFile]:
    """``files`` interleaved with the testdata of their versions (SOURCE.md section 9)."""
    prefixes = {f.version[:14] for f in files}
    extra = []
    for path in sorted((hydra() / "testdata").glob("*_testdata.sql")):
        version = path.name.split("_", 1)[0]
        if release == "v1.11.10" and version in TESTDATA_NEEDS_2X:
            continue
        if version in prefixes:
            extra.append(HydraFile(path, version + "9", testdata=True))
    return sorted(files + extra, key=lambda f: (f.version, f.testdata))


def apply_like_popx(dsn: str, files: list[HydraFile]) -> None:
    """Apply files as Hydra's migrator does: one transaction per file (statement by statement for
    ``.autocommit.`` files), each version recorded in ``schema_migration`` with its file."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migration (version varchar(48) PRIMARY KEY,"
                     " version_self int NOT NULL DEFAULT 0)")
        for item in files:
            statements = [s.text for s in split_statements(item.path.read_text(encoding="utf-8"), str(item.path))]
            if item.autocommit:
                for statement in statements:
                    conn.execute(statement.encode())
                conn.execute("INSERT INTO schema_migration (version) VALUES (%s)", (item.version,))
                continue
            with conn.transaction():
                for statement in statements:
                    conn.execute(statement.encode())
                if not item.testdata:
                    conn.execute("INSERT INTO schema_migration (version) VALUES (%s)", (item.version,))


@contextmanager
def extra_database(cluster: LocalCluster, name: str, template: str | None = None) -> Iterator[str]:
    """A fresh database on ``cluster`` (a copy of ``template`` if given); yields its DSN, drops it afterwards."""
    if template is None:
        cluster.create_database(name)
    else:
        with cluster.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name),
                                                                          sql.Identifier(template)))
    try:
        yield cluster.dsn(name)
    finally:
        cluster.drop_database(name)
