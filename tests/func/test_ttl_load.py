"""Acceptance 4 of issue 5: extend_ttl on 1M rows under pgbench load, then restore_ttl restores exactly.

pgbench clients keep refreshing (updating the expiry of) random tokens, reading them, and updating
two rows per transaction, for the whole extension. Asserted: no client transaction fails, the
extension never waits on a lock (it skips locked rows and comes back for them; a table lock it
would wait for at most lock_timeout is tested in test_ttl.py), every active token is extended
exactly once by exactly 6h, and restore_ttl puts back exactly the rows whose expiry nobody changed
since, leaving every other row as it is.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import psycopg

from orchestrator.localenv import Databases, LocalCluster, Pgbench, PgbenchResult

from .helpers import bluegreen, cli_env, scalar, spawn, write_plan

ROWS = 1_000_000
ACTIVE = ROWS - ROWS // 10

CLIENTS = """\
\\set id random(1, 1000000)
BEGIN;
SELECT id, active, expires_at FROM tokens WHERE id = :id;
UPDATE tokens SET expires_at = now() + interval '1 hour' WHERE id = :id;
END;
\\set a random(1, 1000000)
\\set b random(1, 1000000)
\\set lo least(:a, :b)
\\set hi greatest(:a, :b)
BEGIN;
UPDATE tokens SET subject = subject || '' WHERE id = :lo;
UPDATE tokens SET subject = subject || '' WHERE id = :hi;
END;
"""


def test_extend_a_million_rows_under_load_then_restore_exactly_the_untouched(
        dbs: Databases, blue: LocalCluster, pg_password: str, tmp_path: Path) -> None:
    with psycopg.connect(dbs.blue_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE tokens (id bigint PRIMARY KEY, active boolean NOT NULL,"
                     " expires_at timestamptz NOT NULL, subject text NOT NULL)")
        conn.execute("INSERT INTO tokens SELECT g, g %% 10 <> 0, now() + (10 + g %% 240) * interval '1 minute',"
                     " 'user-' || (g %% 1000) FROM generate_series(1, %s) g", (ROWS,))
        conn.execute("VACUUM ANALYZE tokens")
    script = tmp_path / "clients.sql"
    script.write_text(CLIENTS, encoding="utf-8")
    plan = write_plan(tmp_path / "extend.yaml", "ttl-load",
                      "  - {id: extend, kind: extend_ttl, on: blue, table: tokens, column: expires_at, by: 6h,"
                      " where: active, window: 3h, batch_size: 10000, backup: load}\n",
                      "{lock_timeout: 2s, lock_retries: 5}")
    env = cli_env(dbs)

    rounds: list[PgbenchResult] = []
    our_lock_waits: Counter[str] = Counter()  # wait_event of each sample of ours waiting on a lock
    clients_blocked_by_us = 0
    started = time.monotonic()
    proc = spawn(["run", str(plan)], env)
    try:
        with psycopg.connect(dbs.blue_dsn, autocommit=True) as watch:
            while proc.poll() is None:
                bench = Pgbench(blue.bins, blue.host, blue.port, dbs.name, pg_password, workdir=tmp_path / "bench",
                                clients=4, jobs=2, duration_s=3, script=script, name=f"round{len(rounds)}",
                                extra_args=["--rate", "400"])
                bench.start()
                while bench.is_running():
                    row = watch.execute(
                        "SELECT array_agg(wait_event) FILTER (WHERE application_name LIKE 'bluegreen extend_ttl%'"
                        " AND wait_event_type = 'Lock'),"
                        " count(*) FILTER (WHERE application_name = 'pgbench' AND EXISTS (SELECT FROM"
                        " pg_stat_activity e WHERE e.pid = ANY (pg_blocking_pids(a.pid))"
                        " AND e.application_name LIKE 'bluegreen extend_ttl%'))"
                        " FROM pg_stat_activity a WHERE datname = current_database()").fetchone()
                    assert row is not None
                    our_lock_waits.update(row[0] or ())
                    clients_blocked_by_us += int(row[1])
                    time.sleep(0.05)
                rounds.append(bench.wait(60))
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err
    extend_seconds = time.monotonic() - started

    # the load: every client transaction of every round committed
    assert len(rounds) >= 2
    assert all(r.ok for r in rounds), [(r.failed, r.aborted_clients, r.stderr[-500:]) for r in rounds]
    transactions = sum(r.transactions for r in rounds)
    assert transactions > 1000
    print(f"pgbench: {len(rounds)} rounds, {transactions} transactions, 0 failed, max latency"
          f" {max((r.latency_max_ms or 0) for r in rounds):.0f} ms; samples with a client waiting on"
          f" the extension: {clients_blocked_by_us}")
    # the extension never waited on a row, a transaction or the table: it skips locked rows. A wait on
    # the relation extension lock ("extend": two backends adding a page at once, held for microseconds)
    # is not a wait on the application and can be sampled when the clients' updates fill pages too.
    print(f"extension samples waiting on a lock, by wait_event: {dict(our_lock_waits)}")
    assert not {event: n for event, n in our_lock_waits.items() if event != "extend"}, our_lock_waits

    result = scalar(dbs.blue_dsn, "SELECT value FROM bluegreen.run_state WHERE key = 'extend.result'")
    with psycopg.connect(dbs.blue_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE snap AS SELECT id, expires_at FROM tokens")
        conn.execute("CREATE UNIQUE INDEX ON snap (id)")
        # every active token extended once (none expires during the test), by exactly 6 hours
        assert result["rows_extended"] + result["left_locked"] == ACTIVE, result
        assert result["left_locked"] <= 10
        counts = conn.execute(
            "SELECT count(*), count(DISTINCT key), count(*) FILTER (WHERE new_value <> old_value + interval '6h'),"
            " count(*) FILTER (WHERE s.expires_at = b.old_value + interval '12h')"
            " FROM bluegreen.ttl_backup b JOIN snap s ON s.id = (b.key ->> 'id')::bigint").fetchone()
        assert counts == (result["rows_extended"], result["rows_extended"], 0, 0)
        inactive = conn.execute("SELECT count(*) FROM bluegreen.ttl_backup b JOIN tokens t"
                                " ON t.id = (b.key ->> 'id')::bigint WHERE NOT t.active").fetchone()
        assert inactive == (0,)
        untouched, touched = conn.execute(
            "SELECT count(*) FILTER (WHERE s.expires_at = b.new_value), count(*) FILTER (WHERE s.expires_at <>"
            " b.new_value) FROM bluegreen.ttl_backup b JOIN snap s ON s.id = (b.key ->> 'id')::bigint").fetchone()
    assert touched > 0  # the clients refreshed some tokens after they were extended

    restore = write_plan(tmp_path / "restore.yaml", "ttl-load-restore",
                         "  - {id: restore, kind: restore_ttl, backup: load, backup_on: blue, batch_size: 20000}\n",
                         "{lock_timeout: 2s, lock_retries: 5}")
    report = tmp_path / "report.json"
    started = time.monotonic()
    restored = bluegreen(["run", str(restore), "--report", str(report)], env, timeout=300)
    print(f"extend_ttl of {ACTIVE:,} rows under load: {extend_seconds:.1f}s; restore_ttl:"
          f" {time.monotonic() - started:.1f}s")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    with psycopg.connect(dbs.blue_dsn, autocommit=True) as conn:
        wrong = conn.execute(
            "SELECT count(*) FILTER (WHERE s.expires_at = b.new_value AND t.expires_at <> b.old_value),"
            " count(*) FILTER (WHERE s.expires_at <> b.new_value AND t.expires_at <> s.expires_at)"
            " FROM bluegreen.ttl_backup b JOIN snap s ON s.id = (b.key ->> 'id')::bigint"
            " JOIN tokens t ON t.id = s.id").fetchone()
        assert wrong == (0, 0)  # untouched rows restored, touched rows kept
        others = conn.execute(
            "SELECT count(*) FROM tokens t JOIN snap s USING (id) WHERE t.expires_at <> s.expires_at AND NOT EXISTS"
            " (SELECT FROM bluegreen.ttl_backup b WHERE (b.key ->> 'id')::bigint = t.id)").fetchone()
        assert others == (0,)
        statuses = dict(conn.execute("SELECT status, count(*) FROM bluegreen.ttl_backup GROUP BY status").fetchall())
    assert statuses == {"restored": untouched, "kept": touched}
    [check] = json.loads(report.read_text())["steps"][0]["checks"]
    assert check["ok"] and check["detail"] == (f"backup load: {untouched:,} restored, {touched:,} kept (changed by"
                                               " the application since), 0 deleted since")
