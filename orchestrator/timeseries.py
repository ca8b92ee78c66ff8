"""Time series of a run, as the journal stores them: compact batches of ticks, thinned when old.

A batch is what ``bluegreen.samples`` holds in one row's ``data`` (jsonb)::

    {"t": [epoch seconds of each tick, ...],
     "s": {"series name": [[tick index, value], ...], ...},     # a value only where it changed
     "m": [[epoch seconds, kind, step id, text], ...]}          # marks: phases, notes, failures

Each batch is self-contained: its first tick carries every series' current value (a key frame), and a
series' value holds until its next point (``None`` is a gap: the thing stopped, a COPY finished). So a
batch decodes alone, and an old stretch of batches can be replaced by one thinned batch
(:func:`thin`: one tick per ``resolution`` seconds, the largest value of each series in it) without
reading anything else. Series names are ``group/subject/metric`` (``db/blue/xact_commit``,
``copy/public.t/bytes``, ``capture/c1/pending``): the subject may itself contain ``/``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Value = float | int | None
MIN_RATE_WINDOW = 0.5  # seconds: a rate over a shorter interval is noise


def series_name(group: str, subject: str, metric: str) -> str:
    return f"{group}/{subject}/{metric}"


def split_name(name: str) -> tuple[str, str, str]:
    """``group/subject/metric`` back into its parts (the subject may contain ``/``)."""
    group, _, rest = name.partition("/")
    subject, _, metric = rest.rpartition("/")
    return group, subject, metric


def compact(value: Value) -> Value:
    """A value as stored: integers stay, floats keep 4 significant digits after the point at most."""
    if value is None or isinstance(value, bool):
        return None if value is None else int(value)
    if isinstance(value, int):
        return value
    if not math.isfinite(value):
        return None
    if value == int(value) and abs(value) < 2**53:
        return int(value)
    return round(value, 4)


@dataclass
class Points:
    """One series: its points in time order (no ``None``: a gap is an absence of points)."""

    t: list[float] = field(default_factory=list)
    v: list[float | int] = field(default_factory=list)


@dataclass
class Dense:
    """Decoded series, each with its own points, and the marks."""

    series: dict[str, Points] = field(default_factory=dict)
    marks: list[list[Any]] = field(default_factory=list)
    ticks: int = 0  # how many ticks the decoded batches held

    def add(self, name: str, at: float, value: Value) -> None:
        if value is not None:
            points = self.series.setdefault(name, Points())
            points.t.append(at)
            points.v.append(value)

    def extend(self, other: Dense) -> None:
        """Add ``other``'s points; each series stays in time order (batches may overlap in time)."""
        for name, points in other.series.items():
            mine = self.series.setdefault(name, Points())
            if mine.t and points.t and points.t[0] < mine.t[-1]:
                merged = sorted(zip(mine.t + points.t, mine.v + points.v, strict=True), key=lambda p: p[0])
                mine.t, mine.v = [p[0] for p in merged], [p[1] for p in merged]
            else:
                mine.t.extend(points.t)
                mine.v.extend(points.v)
        self.marks.extend(other.marks)
        self.ticks += other.ticks


class BatchWriter:
    """Accumulate ticks into one self-contained batch (sparse: points only where a value changes)."""

    def __init__(self) -> None:
        self.t: list[float] = []
        self.points: dict[str, list[list[Any]]] = {}
        self.marks: list[list[Any]] = []
        self._last: dict[str, Value] = {}

    def __len__(self) -> int:
        return len(self.t)

    def add(self, at: float, values: Mapping[str, Value]) -> None:
        """One tick. A series missing from ``values`` that had a value gets a gap (``None``)."""
        index = len(self.t)
        self.t.append(round(at, 3))
        for name, raw in values.items():
            value = compact(raw)
            if index == 0 or name not in self._last or self._last[name] != value:
                self.points.setdefault(name, []).append([index, value])
                self._last[name] = value
        for name in [n for n, v in self._last.items() if v is not None and n not in values]:
            self.points.setdefault(name, []).append([index, None])
            self._last[name] = None

    def mark(self, at: float, kind: str, step: str, text: str) -> None:
        self.marks.append([round(at, 3), kind, step, text[:300]])

    def take(self) -> dict[str, Any] | None:
        """The batch as stored, and start a new one (the next tick is a key frame again)."""
        if not self.t and not self.marks:
            return None
        data: dict[str, Any] = {"t": self.t, "s": self.points, "m": self.marks}
        self.t, self.points, self.marks = [], {}, []
        self._last = {n: v for n, v in self._last.items() if v is not None}
        return data


def decode(data: Mapping[str, Any]) -> Dense:
    """One stored batch: each series' value held from one point to the next, until a gap or the batch's end."""
    t = [float(x) for x in data.get("t") or []]
    out = Dense(marks=[list(m) for m in data.get("m") or []], ticks=len(t))
    for name, points in (data.get("s") or {}).items():
        current: Value = None
        j = 0
        for i, at in enumerate(t):
            while j < len(points) and points[j][0] <= i:
                current = points[j][1]
                j += 1
            out.add(name, at, current)
    return out


def decode_all(batches: Iterable[Mapping[str, Any]]) -> Dense:
    """Every batch of a run as one set of series, each in time order."""
    out = Dense()
    for batch in batches:
        out.extend(decode(batch))
    return out


def encode(dense: Dense) -> dict[str, Any]:
    """Series back into one self-contained batch, its ticks the union of their points' times."""
    at_tick: dict[float, dict[str, Value]] = {}
    for name, points in dense.series.items():
        for at, value in zip(points.t, points.v, strict=True):
            at_tick.setdefault(round(at, 3), {})[name] = value
    writer = BatchWriter()
    for at in sorted(at_tick):
        writer.add(at, at_tick[at])
    writer.marks = [list(m) for m in dense.marks]
    return writer.take() or {"t": [], "s": {}, "m": []}


def thin(dense: Dense, resolution: float) -> Dense:
    """One tick per ``resolution`` seconds, common to all series: each series' largest value in the bucket.

    The largest, not the mean: counters only grow (so it is their last value), and for gauges (a backlog,
    waiting sessions, a latency) the peak is what an operator looks for.
    """
    times = [at for points in dense.series.values() for at in points.t]
    out = Dense(marks=list(dense.marks))
    if not times:
        return out
    start = min(times)
    bucket_time: dict[int, float] = {}
    for at in times:
        k = int((at - start) // resolution)
        bucket_time[k] = max(bucket_time.get(k, at), at)
    for name, points in dense.series.items():
        best: dict[int, float | int] = {}
        for at, value in zip(points.t, points.v, strict=True):
            k = int((at - start) // resolution)
            best[k] = max(best[k], value) if k in best else value
        for k in sorted(best):
            out.add(name, bucket_time[k], best[k])
    out.ticks = len(bucket_time)
    return out


def reduce_points(t: Sequence[float], values: Sequence[Value], limit: int, how: str = "max"
                  ) -> tuple[list[float], list[Value]]:
    """At most ``limit`` points for a chart: buckets of equal count, their ``max`` or ``mean``."""
    if len(t) <= limit:
        return list(t), list(values)
    size = math.ceil(len(t) / limit)
    out_t: list[float] = []
    out_v: list[Value] = []
    for start in range(0, len(t), size):
        chunk = [v for v in values[start:start + size] if v is not None]
        out_t.append(t[min(start + size, len(t)) - 1])
        if not chunk:
            out_v.append(None)
        elif how == "mean":
            out_v.append(sum(chunk) / len(chunk))
        else:
            out_v.append(max(chunk))
    return out_t, out_v


def rate(t: Sequence[float], values: Sequence[Value]) -> list[Value]:
    """Per-second rate of a counter at each of its points (the first has none); where the counter went down
    (a COPY ended and the next began, a stats reset) it counts from 0 again."""
    out: list[Value] = [None] * len(t)
    for i in range(1, len(t)):
        j = i - 1
        while j > 0 and t[i] - t[j] < MIN_RATE_WINDOW:  # a last tick right after the one before (the stop)
            j -= 1
        a, b = values[j], values[i]
        dt = t[i] - t[j]
        if a is None or b is None or dt <= 0:
            continue
        out[i] = (b - (a if b >= a else 0)) / dt
    return out
