"""Hydra's migration corpus: which files a release holds, and applying them the way popx does.

The corpus lives outside the repository (``../shared/corpus/hydra`` beside a checkout, or ``$HYDRA_CORPUS``);
it is read only. Applying takes the locks the files take (it is meant for a fresh database).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from ..errors import BluegreenError
from ..sqlanalysis.parse import split_statements
from ..sqlfiles import sql_dir

_NAME = re.compile(r"^(\d+)_")

# SOURCE.md, "Which Hydra release introduced which versions": everything up to v1.11.10.
V1_11_10_RANGE = ("20190100000001", "20200527215732")
V1_11_10_EXTRA = frozenset({"20200819163013", "20200913192340", "20201110104000", "20201116133000",
                            "20210928155900", "20211226155900", "20211226156000", "20220328111500",
                            "20210928175900"})

# Testdata written against the 2.x schema although its version belongs to a 1.x release: upstream
# runs it after the 2.0 migrations numbered below it (uuid ``hydra_jwk.pk``, ``nid`` columns), so it
# cannot load into a database at v1.11.10.
TESTDATA_NEEDS_2X = frozenset({"20211226155900", "20220328111500"})

RELEASES = ("v1.11.10", "v2.3.0")


class CorpusMissing(BluegreenError):
    """The Hydra corpus folder is not where it was looked for (exit 2: nothing was touched)."""

    exit_code = 2


def corpus_dir() -> Path:
    """``$HYDRA_CORPUS``, else ``shared/corpus/hydra`` beside the checkout.

    :raises CorpusMissing: no ``migrations/`` folder there.
    """
    default = sql_dir().parent.parent / "shared" / "corpus" / "hydra"
    found = Path(os.environ.get("HYDRA_CORPUS") or default)
    if not (found / "migrations").is_dir():
        raise CorpusMissing(f"Hydra corpus not found at {found} (set HYDRA_CORPUS)")
    return found


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


def _check_release(release: str) -> None:
    if release not in RELEASES:
        raise ValueError(f"unknown Hydra release {release!r} (known: {', '.join(RELEASES)})")


def migrations(release: str = "v2.3.0", corpus: Path | None = None) -> list[HydraFile]:
    """The up migrations of a release (``v1.11.10`` or ``v2.3.0``), in apply order."""
    _check_release(release)
    files = []
    for path in sorted(((corpus or corpus_dir()) / "migrations").glob("*.up.sql")):
        found = _NAME.match(path.name)
        if found is None:
            raise CorpusMissing(f"{path}: not a popx migration file name")
        if release == "v2.3.0" or in_v1_11_10(found.group(1)):
            files.append(HydraFile(path, found.group(1)))
    return files


def with_testdata(files: list[HydraFile], release: str = "v2.3.0", corpus: Path | None = None) -> list[HydraFile]:
    """``files`` interleaved with the testdata of their versions (SOURCE.md section 9)."""
    _check_release(release)
    prefixes = {f.version[:14] for f in files}
    extra = []
    for path in sorted(((corpus or corpus_dir()) / "testdata").glob("*_testdata.sql")):
        version = path.name.split("_", 1)[0]
        if release == "v1.11.10" and version in TESTDATA_NEEDS_2X:
            continue
        if version in prefixes:
            extra.append(HydraFile(path, version + "9", testdata=True))
    return sorted(files + extra, key=lambda f: (f.version, f.testdata))


def apply_like_popx(dsn: str, files: list[HydraFile], progress: Callable[[HydraFile], object] | None = None) -> None:
    """Apply files as Hydra's migrator does: one transaction per file (statement by statement for
    ``.autocommit.`` files), each version recorded in ``schema_migration`` with its file.

    Locks: whatever each file takes, held until its transaction ends. Not undone (a fresh database).
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migration (version varchar(48) PRIMARY KEY,"
                     " version_self int NOT NULL DEFAULT 0)")
        for item in files:
            statements = [s.text for s in split_statements(item.path.read_text(encoding="utf-8"), str(item.path))]
            if item.autocommit:
                for statement in statements:
                    conn.execute(statement.encode())
                conn.execute("INSERT INTO schema_migration (version) VALUES (%s)", (item.version,))
            else:
                with conn.transaction():
                    for statement in statements:
                        conn.execute(statement.encode())
                    if not item.testdata:
                        conn.execute("INSERT INTO schema_migration (version) VALUES (%s)", (item.version,))
            if progress is not None:
                progress(item)
