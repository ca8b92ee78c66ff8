"""Load blue for the Hydra end-to-end run: Hydra v1.11.10 (the corpus with its testdata, popx's order), the
generated population, the 5 injected bad rows, and the traffic's revocation log. Idempotent: a database already
at v1.11.10 is not migrated again, and the population and bad rows are only added where missing.

Locks: those of the migration files (on a fresh database), then row locks of inserted rows. Not undone.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from .corpus import HydraFile, apply_like_popx, migrations, with_testdata
from .population import Progress, Scale, inject_bad_rows, populate

# The traffic writes each revocation here in the same transaction (sql/hydra/traffic.pgbench): the record the
# end-to-end test compares with green. It exists in both schemas (the snapshot copies it; the capture carries
# what is logged on blue during the window, by its key).
REVOCATION_LOG = """
CREATE TABLE IF NOT EXISTS e2e_revocation_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id text NOT NULL,
    kind text NOT NULL,
    revoked_at timestamptz NOT NULL DEFAULT clock_timestamp()
)"""


def at_v1_11_10(dsn: str) -> bool:
    """Whether the database already holds Hydra's schema at v1.11.10 (its last 1.x version recorded)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass('schema_migration') IS NOT NULL").fetchone()
        if row is None or not row[0]:
            return False
        found = conn.execute("SELECT count(*) FROM schema_migration WHERE version = '20220328111500000000'"
                             ).fetchone()
        return found is not None and found[0] > 0


def load(dsn: str, scale: Scale, note: Callable[[str], object] | None = None,
         progress: Progress | None = None, bad_rows: bool = True) -> dict[str, int]:
    """Bring ``dsn`` (an empty database, or one this function loaded before) to the end-to-end blue.

    :returns: rows the population inserted per table (0s on a rerun).
    """
    def say(text: str) -> None:
        if note is not None:
            note(text)

    if at_v1_11_10(dsn):
        say("Hydra v1.11.10 schema already there")
    else:
        files = with_testdata(migrations("v1.11.10"), "v1.11.10")
        say(f"Hydra v1.11.10: {sum(not f.testdata for f in files)} migrations with "
            f"{sum(f.testdata for f in files)} testdata files, in popx's order")

        def applied(item: HydraFile) -> None:
            return None

        apply_like_popx(dsn, files, applied)
    say(f"population: {scale.tokens} access and {scale.tokens} refresh tokens, {scale.flows} login and consent "
        f"flows, {scale.sessions} login sessions, {scale.clients} clients")
    inserted = populate(dsn, scale, progress=progress)
    if bad_rows:
        say(f"injected rows that break the 2.x migrations: {inject_bad_rows(dsn)}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(REVOCATION_LOG)
    return inserted
