"""Replay throughput: 200k captured update events applied from blue (PG 15) onto green (PG 18).

Starts its own blue and green, creates ``items`` (200k rows) on both, captures blue, then updates every row
once on blue in transactions of 10k rows: 200k events, each of a distinct row (so the in-batch
de-duplication of the default replay gains nothing). Then, on two fresh green copies:

- ours: the replay engine, default upsert/delete by primary key, batches of ``--batch`` events;
- baseline: one round trip per event (an ``INSERT ... ON CONFLICT`` per update event, 5k per
  transaction), what a naive replay loop does.

``--method logical`` (default, as the ``capture`` step): the capture is the publication and ``pgoutput`` slot
``orchestrator.logical`` makes, created before the updates (two: one read by ours, one by the baseline);
ours is ``orchestrator.logical_replay.LogicalReplayer`` (decoding, parsing and applying, all timed), the
baseline decodes the same changes and parses them with the same reader. ``--method trigger``: the capture
trigger (``sql/capture.sql``) and ``orchestrator.replay.Replayer``.

Prints:

    replay: ours X events/s, baseline Y events/s, ratio X/Y
    replay: 200000 events in X s (target >= 100000 events/s logical, 50000 trigger)

Run: .venv/bin/python bench/replay.py [--method logical|trigger] [--events 200000] [--batch 5000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from orchestrator import pgoutput
from orchestrator.copy.names import QualifiedName
from orchestrator.localenv import LocalCluster, debian_pg, embedded_pg
from orchestrator.logical import capture_name, create_slot, drop_capture, fingerprint, publication_sql
from orchestrator.logical_replay import LogicalCaptureInfo, LogicalReplayer
from orchestrator.replay import CaptureInfo, Replayer, RoundResult
from orchestrator.sqlfiles import read_sql

PASSWORD = "pw-bench-replay"
TABLE = ("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, note text NOT NULL,"
         " at timestamptz NOT NULL DEFAULT '2024-01-01')")


def _fill(dsn: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(TABLE)
        conn.execute("INSERT INTO items SELECT g, g, 'note ' || g FROM generate_series(1, %s) g", (rows,))
        conn.execute("VACUUM ANALYZE items")


def _baseline(blue: str, green: str, base: str) -> tuple[int, float]:
    """One statement (one round trip) per event."""
    started = time.monotonic()
    count = 0
    with psycopg.connect(blue, autocommit=True) as source, psycopg.connect(green) as target:
        rows = source.execute(
            "SELECT new->>'id', new->>'v', new->>'note', new->>'at' FROM bluegreen.capture_events"
            " WHERE NOT pg_visible_in_snapshot(xid, %s::pg_snapshot) ORDER BY seq", (base,)).fetchall()
        with target.cursor() as cur:
            for row in rows:
                cur.execute("INSERT INTO items (id, v, note, at) VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO UPDATE"
                            " SET v = EXCLUDED.v, note = EXCLUDED.note, at = EXCLUDED.at", row, prepare=True)
                count += 1
                if count % 5000 == 0:
                    target.commit()
        target.commit()
    return count, time.monotonic() - started


def _logical_baseline(blue: str, green: str, slot: str) -> tuple[int, float]:
    """Decode the same changes, then one statement (one round trip) per event."""
    started = time.monotonic()
    count = 0
    with psycopg.connect(blue, autocommit=True) as source, psycopg.connect(green) as target:
        rows = source.execute("SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, 'proto_version',"
                              " '1', 'publication_names', %s)", (slot, slot)).fetchall()
        with target.cursor() as cur:
            for (data,) in rows:
                msg = pgoutput.parse_message(data)
                if not isinstance(msg, pgoutput.Update):
                    continue
                cur.execute("INSERT INTO items (id, v, note, at) VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO UPDATE"
                            " SET v = EXCLUDED.v, note = EXCLUDED.note, at = EXCLUDED.at", msg.new, prepare=True)
                count += 1
                if count % 5000 == 0:
                    target.commit()
        target.commit()
    return count, time.monotonic() - started


def logical(args: argparse.Namespace, blue: LocalCluster, green: LocalCluster) -> tuple[RoundResult, float, int,
                                                                                          float]:
    """Ours and the baseline on changes decoded from two slots made before the updates."""
    ours_slot, base_slot = capture_name(1, "items"), capture_name(2, "items")
    with psycopg.connect(blue.dsn("bench"), autocommit=True) as conn:
        for slot in (ours_slot, base_slot):
            conn.execute(publication_sql(slot, [QualifiedName("public", "items")]))
            create_slot(conn, slot)
        prints = fingerprint(conn, [QualifiedName("public", "items")])
        for start in range(1, args.events + 1, 10_000):
            conn.execute("UPDATE items SET v = v + 1, note = note || '!', at = at + interval '1 day'"
                         " WHERE id BETWEEN %s AND %s", (start, start + 9_999))
    print(f"replay: {args.events} rows updated on blue (PostgreSQL 15), decoded by slot {ours_slot}", flush=True)
    state = {"capture:items": {"tables": ["public.items"], "fingerprint": prints}}
    capture = LogicalCaptureInfo("items", "blue", "green")
    with psycopg.connect(blue.dsn("bench"), autocommit=True) as source, \
            psycopg.connect(green.dsn("ours"), autocommit=True) as target:
        replayer = LogicalReplayer(capture, source, target, run_id=1, batch_size=args.batch, get=state.get)
        replayer.setup()
        started = time.monotonic()
        result = replayer.drain()
        ours_s = time.monotonic() - started
    baseline_n, baseline_s = _logical_baseline(blue.dsn("bench"), green.dsn("baseline"), base_slot)
    with psycopg.connect(blue.dsn("bench"), autocommit=True) as conn:
        for slot in (ours_slot, base_slot):
            drop_capture(conn, slot)
    return result, ours_s, baseline_n, baseline_s


def trigger(args: argparse.Namespace, blue: LocalCluster, green: LocalCluster) -> tuple[RoundResult, float, int,
                                                                                          float]:
    """Ours and the baseline on events the capture trigger queued."""
    with psycopg.connect(blue.dsn("bench"), autocommit=True) as conn:
        conn.execute(read_sql("capture.sql").encode())
        conn.execute("CREATE TRIGGER bluegreen_capture_items AFTER INSERT OR UPDATE OR DELETE ON items"
                     " FOR EACH ROW EXECUTE FUNCTION bluegreen.capture_event('items')")
        base = conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0]  # type: ignore[index]
        for start in range(1, args.events + 1, 10_000):
            conn.execute("UPDATE items SET v = v + 1, note = note || '!', at = at + interval '1 day'"
                         " WHERE id BETWEEN %s AND %s", (start, start + 9_999))
        captured = conn.execute("SELECT count(*) FROM bluegreen.capture_events").fetchone()[0]  # type: ignore[index]
    print(f"replay: {captured} update events captured on blue (PostgreSQL 15)", flush=True)
    capture = CaptureInfo("items", QualifiedName("public", "items"), "blue", "green")
    with psycopg.connect(blue.dsn("bench"), autocommit=True) as source, \
            psycopg.connect(green.dsn("ours"), autocommit=True) as target:
        replayer = Replayer(capture, source, target, run_id=1, batch_size=args.batch)
        replayer.setup(base)
        started = time.monotonic()
        result = replayer.drain()
        ours_s = time.monotonic() - started
    baseline_n, baseline_s = _baseline(blue.dsn("bench"), green.dsn("baseline"), base)
    return result, ours_s, baseline_n, baseline_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=("logical", "trigger"), default="logical")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args()

    base_dir = Path(tempfile.mkdtemp(prefix="bluegreen-bench-replay-"))
    blue = LocalCluster("blue", debian_pg(15), base_dir, PASSWORD)
    green = LocalCluster("green", embedded_pg(), base_dir, PASSWORD)
    try:
        blue.start()
        green.start()
        for cluster, names in ((blue, ["bench"]), (green, ["ours", "baseline"])):
            for name in names:
                cluster.create_database(name)
        _fill(blue.dsn("bench"), args.events)
        for name in ("ours", "baseline"):
            _fill(green.dsn(name), args.events)
        result, ours_s, baseline_n, baseline_s = (logical if args.method == "logical" else trigger)(args, blue, green)

        with psycopg.connect(blue.dsn("bench")) as b, psycopg.connect(green.dsn("ours")) as g1, \
                psycopg.connect(green.dsn("baseline")) as g2:
            want = b.execute("SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM items t").fetchone()
            got = g1.execute("SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM items t").fetchone()
            got2 = g2.execute("SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM items t").fetchone()
        if want != got or want != got2:
            print("replay: ERROR green differs from blue after the replay", file=sys.stderr)
            return 1
        ours_rate = result.events / ours_s
        base_rate = baseline_n / baseline_s
        print(f"replay: ours {ours_rate:,.0f} events/s, baseline {base_rate:,.0f} events/s"
              f" (one round trip per event), ratio {ours_rate / base_rate:.2f}")
        target = 100_000 if args.method == "logical" else 50_000
        print(f"replay: {result.events} events in {ours_s:.2f} s, {result.batches} batches of {args.batch},"
              f" {result.fallbacks} fallbacks (method {args.method}; target >= {target} events/s:"
              f" {'met' if ours_rate >= target else 'MISSED'})")
        return 0
    finally:
        green.destroy()
        blue.destroy()
        shutil.rmtree(base_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
