"""Migration files: versions from file names, apply order, popx's 14-digit versions, ambiguous globs."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.sqlanalysis.files import MigrationFilesError, applied, find, version_of


@pytest.mark.parametrize(("name", "version"), [
    ("20211019000001000002_merge_authentication_request_tables.postgres.up.sql", "20211019000001000002"),
    ("001_add_index.sql", "001"),
    ("V3__users.sql", "V3"),
    ("7.sql", "7"),
])
def test_version_is_the_name_prefix(name: str, version: str) -> None:
    assert version_of(name) == version


def test_files_apply_in_numeric_version_order(tmp_path: Path) -> None:
    for name in ("10_c.sql", "9_b.sql", "1_a.sql", "2_x.autocommit.up.sql"):
        (tmp_path / name).write_text("SELECT 1;")
    found = find(tmp_path, "*.sql")
    assert [f.version for f in found] == ["1", "2", "9", "10"]
    assert [f.autocommit for f in found] == [False, True, False, False]  # popx: .autocommit. runs outside a transaction


def test_two_files_with_one_version_are_refused(tmp_path: Path) -> None:
    (tmp_path / "001_a.up.sql").write_text("SELECT 1;")
    (tmp_path / "001_a.down.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationFilesError, match="same version 001: narrow the glob"):
        find(tmp_path, "*.sql")
    assert [f.name for f in find(tmp_path, "*.up.sql")] == ["001_a.up.sql"]
    with pytest.raises(MigrationFilesError, match="no file matches"):
        find(tmp_path, "*.nothing")


def test_popx_counts_a_version_applied_by_its_first_14_digits() -> None:
    recorded = {"20190100000001", "20211019000001000002"}
    assert applied("20211019000001000002", recorded)
    assert not applied("20190100000001000000", recorded)
    assert applied("20190100000001000000", recorded, prefix=14)
    assert not applied("20190100000002000000", recorded, prefix=14)
