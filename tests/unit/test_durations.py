"""Durations in plans: ``2s``, ``500ms``, ``1h30m``, ``6h`` or a number of seconds; always positive."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest

from orchestrator.actions import ms
from orchestrator.plan import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2s", timedelta(seconds=2)),
        ("500ms", timedelta(milliseconds=500)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("6h", timedelta(hours=6)),
        ("1.5s", timedelta(milliseconds=1500)),
        ("2d", timedelta(days=2)),
        ("5m", timedelta(minutes=5)),
        ("1m5s", timedelta(seconds=65)),
        ("1h 30m", timedelta(minutes=90)),
        (" 2s ", timedelta(seconds=2)),
        ("1ms", timedelta(milliseconds=1)),
    ],
)
def test_parse_text(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("number", "expected"),
    [(3, timedelta(seconds=3)), (0.25, timedelta(milliseconds=250)), (86400, timedelta(days=1))],
)
def test_parse_number_is_seconds(number: float, expected: timedelta) -> None:
    assert parse_duration(number) == expected


def test_parse_timedelta_passes_through() -> None:
    assert parse_duration(timedelta(minutes=3)) == timedelta(minutes=3)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (0, "must be positive"),
        (0.0, "must be positive"),
        ("0s", "must be positive"),
        ("0ms", "must be positive"),
        (-1, "must be positive"),
        (timedelta(0), "must be positive"),
        ("-5s", "expected a duration"),
        ("2x", "expected a duration"),
        ("", "expected a duration"),
        ("   ", "expected a duration"),
        ("s", "expected a duration"),
        ("2", "expected a duration"),
        ("1.5.5s", "expected a duration"),
        ("PT2S", "expected a duration"),
        (True, "boolean"),
        (False, "boolean"),
        (None, "expected a duration"),
        ([1], "expected a duration"),
    ],
)
def test_parse_rejects(value: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(seconds=2), "2s"),
        (timedelta(milliseconds=500), "500ms"),
        (timedelta(milliseconds=1500), "1500ms"),
        (timedelta(hours=6), "6h"),
        (timedelta(minutes=90), "90m"),
        (timedelta(minutes=5), "5m"),
        (timedelta(days=1), "24h"),
        (timedelta(seconds=61), "61s"),
    ],
)
def test_format(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


@pytest.mark.parametrize("text", ["2s", "500ms", "1h30m", "6h", "1.5s", "2d", "1m5s", "123ms"])
def test_format_round_trips(text: str) -> None:
    value = parse_duration(text)
    assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize("value", ["0.4ms", "0.0000001s", 1e-7])
def test_sub_millisecond_duration_is_refused(value: Any) -> None:
    try:
        parsed = parse_duration(value)
    except ValueError:
        return
    assert ms(parsed) != "0ms"
    assert format_duration(parsed) != "0h"


@pytest.mark.parametrize("value", [float("inf"), 10**20, "99999999999d"])
def test_huge_duration_raises_value_error(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)
