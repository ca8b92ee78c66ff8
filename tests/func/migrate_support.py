"""Hydra's corpus for migrate tests: a thin layer over ``orchestrator.hydra`` (release file lists, popx's apply).

The corpus lives outside the repository (``../shared/corpus/hydra`` or ``$HYDRA_CORPUS``); tests that
need it skip without it, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from psycopg import sql

from orchestrator import hydra as corpus
from orchestrator.hydra import (
    TESTDATA_NEEDS_2X,
    V1_11_10_EXTRA,
    V1_11_10_RANGE,
    HydraFile,
    apply_like_popx,
    in_v1_11_10,
)
from orchestrator.localenv import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
HYDRA = Path(os.environ.get("HYDRA_CORPUS", ROOT.parent / "shared" / "corpus" / "hydra"))

__all__ = ["HYDRA", "TESTDATA_NEEDS_2X", "V1_11_10_EXTRA", "V1_11_10_RANGE", "HydraFile", "apply_like_popx",
           "extra_database", "hydra", "in_v1_11_10", "migrations", "with_testdata"]


def hydra() -> Path:
    """The corpus folder; skips the test (fails it under CI=true) when it is missing."""
    if not (HYDRA / "migrations").is_dir():
        reason = f"Hydra corpus not found at {HYDRA} (set HYDRA_CORPUS)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)  # never under CI=true: failed above
    return HYDRA


def migrations(release: str = "v2.3.0") -> list[HydraFile]:
    """The up migrations of a release (``v1.11.10`` or ``v2.3.0``), in apply order."""
    return corpus.migrations(release, hydra())


def with_testdata(files: list[HydraFile], release: str = "v2.3.0") -> list[HydraFile]:
    """``files`` interleaved with the testdata of their versions (SOURCE.md section 9)."""
    return corpus.with_testdata(files, release, hydra())


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
