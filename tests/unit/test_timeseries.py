"""The journal's time series format: sparse self-contained batches, thinning, rates, and what 3 hours cost."""

from __future__ import annotations

import json
import random

import pytest

from orchestrator import timeseries
from orchestrator.timeseries import BatchWriter, Dense, decode, decode_all, encode, rate, reduce_points, thin


def test_a_batch_keeps_a_point_only_where_a_value_changes_and_decodes_back() -> None:
    writer = BatchWriter()
    writer.add(10.0, {"db/blue/xact_commit": 5, "copy/public.t/bytes": 100})
    writer.add(11.0, {"db/blue/xact_commit": 5, "copy/public.t/bytes": 300})
    writer.add(12.0, {"db/blue/xact_commit": 9})  # the COPY ended: a gap
    writer.mark(11.5, "phase", "cutover", "pausing")
    data = writer.take()
    assert data is not None
    assert data["s"]["db/blue/xact_commit"] == [[0, 5], [2, 9]]
    assert data["s"]["copy/public.t/bytes"] == [[0, 100], [1, 300], [2, None]]
    dense = decode(json.loads(json.dumps(data)))
    assert dense.series["db/blue/xact_commit"].t == [10.0, 11.0, 12.0]
    assert dense.series["db/blue/xact_commit"].v == [5, 5, 9]
    assert dense.series["copy/public.t/bytes"].v == [100, 300]  # nothing after the gap
    assert dense.marks == [[11.5, "phase", "cutover", "pausing"]]
    assert dense.ticks == 3


def test_every_batch_starts_with_a_key_frame() -> None:
    writer = BatchWriter()
    writer.add(1.0, {"a/x/n": 1, "b/y/n": 7})
    first = writer.take()
    writer.add(2.0, {"a/x/n": 1, "b/y/n": 7})  # nothing changed, still written: the batch decodes alone
    second = writer.take()
    assert first is not None and second is not None
    assert decode(second).series["b/y/n"].v == [7]
    merged = decode_all([first, second])
    assert merged.series["a/x/n"].t == [1.0, 2.0]


def test_overlapping_batches_merge_in_time_order() -> None:
    sampler = Dense()
    for t in (1.0, 2.0, 3.0):
        sampler.add("db/blue/xact_commit", t, int(t))
    client = Dense()
    for t in (0.5, 1.5, 2.5):
        client.add("client/pgbench/tps", t, 100)
    merged = decode_all([encode(sampler), encode(client), encode(sampler)])
    tps = merged.series["client/pgbench/tps"]
    assert tps.t == [0.5, 1.5, 2.5]
    commits = merged.series["db/blue/xact_commit"]
    assert commits.t == sorted(commits.t)


def test_thinning_keeps_one_tick_per_bucket_and_the_peak() -> None:
    dense = Dense()
    for i in range(60):
        dense.add("db/blue/xact_commit", 100.0 + i, i * 10)  # a counter: the bucket's last value
        dense.add("capture/c1/pending", 100.0 + i, 500 if i == 13 else 1)  # a gauge: its peak survives
    dense.marks.append([130.0, "note", "s", "kept"])
    thinned = thin(dense, 10.0)
    assert thinned.series["db/blue/xact_commit"].v == [90, 190, 290, 390, 490, 590]
    assert thinned.series["capture/c1/pending"].v == [1, 500, 1, 1, 1, 1]
    assert thinned.series["capture/c1/pending"].t == thinned.series["db/blue/xact_commit"].t
    assert thinned.marks == dense.marks
    again = decode(encode(thinned))
    assert again.series["capture/c1/pending"].v == [1, 500, 1, 1, 1, 1]


def test_rate_counts_from_zero_after_a_counter_went_down() -> None:
    t = [0.0, 1.0, 2.0, 3.0, 3.1]
    # the last point is 0.1 s after the one before: its rate is taken over the last half second at least
    assert rate(t, [0, 100, 300, 50, 60]) == [None, 100.0, 200.0, 50.0, pytest.approx(60 / 1.1)]


def test_reduce_points_buckets_keep_peaks_or_means() -> None:
    t = [float(i) for i in range(10)]
    v: list[timeseries.Value] = [1, 9, 1, 1, 1, 1, 1, 1, 1, 3]
    assert reduce_points(t, v, 5, "max") == ([1.0, 3.0, 5.0, 7.0, 9.0], [9, 1, 1, 1, 3])
    assert reduce_points(t, v, 5, "mean")[1] == [5.0, 1.0, 1.0, 1.0, 2.0]
    assert reduce_points(t, v, 20) == (t, v)


def test_three_hours_of_samples_stay_under_a_few_megabytes() -> None:
    """What a 3-hour run leaves in the journal: batches of 10 s at 1 Hz, the first 2 hours thinned to 10 s
    (the sampler's defaults), with a busy traffic's counters changing every second on both clusters."""
    rng = random.Random(7)
    counters = {f"db/{c}/{n}": 0 for c in ("blue", "green") for n in
                ("xact_commit", "xact_rollback", "temp_bytes", "tup_inserted", "tup_updated", "tup_deleted")}
    quiet = {f"locks/{c}/{n}": 0 for c in ("blue", "green") for n in ("bluegreen_waiting", "clients_waiting")}
    batches: list[dict[str, object]] = []
    writer = BatchWriter()
    start = 1_800_000_000.0
    for second in range(3 * 3600):
        for name in counters:
            counters[name] += rng.randrange(0, 5000)
        values: dict[str, timeseries.Value] = {**counters, **quiet}
        values["capture/c1/pending"] = rng.randrange(0, 2000)
        values["capture/c1/lag_s"] = round(rng.random() * 3, 1)
        writer.add(start + second, values)
        if second % 10 == 9:
            batch = writer.take()
            assert batch is not None
            batches.append(batch)
    horizon = start + 2 * 3600
    old = [b for b in batches if max(b["t"]) < horizon]  # type: ignore[call-overload]
    recent = batches[len(old):]
    thinned = [encode(thin(decode_all(old[i:i + 60]), 10.0)) for i in range(0, len(old), 60)]
    size = sum(len(json.dumps(b, separators=(",", ":"))) for b in thinned + recent)
    assert size < 4_000_000, f"{size:,} bytes"
    assert len(decode_all(thinned + recent).series["capture/c1/pending"].t) == 720 + 3600
