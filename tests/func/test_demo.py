"""`bluegreen demo` (what `make demo` runs) goes from nothing to its report, with 0 failed client transactions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from .helpers import ROOT


def _demo(*args: str) -> tuple[int, dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_DSN")}
    result = subprocess.run([sys.executable, "-m", "orchestrator", "demo", "--duration", "3", "--json", *args],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    return result.returncode, json.loads(result.stdout), result.stdout + result.stderr


def test_demo_runs_the_whole_story_to_its_report() -> None:
    code, payload, output = _demo()
    assert code == 0, output[-4000:]
    assert payload["status"] == "done"
    steps = {s["id"]: s for s in payload["steps"]}
    assert list(steps) == ["capture", "extend-ttl", "snapshot", "migrate-columns", "migrate-indexes",
                           "check-queries", "catch-up", "capture-green", "cutover", "validate"]
    assert all(s["status"] == "done" for s in payload["steps"])
    assert steps["snapshot"]["stats"]["green"]["tup_inserted"] >= 140_000  # blue's rows reached green
    assert steps["extend-ttl"]["stats"]["blue"]["tup_updated"] > 0  # expiry pushed on blue
    assert any("0 would break" in c["detail"] for c in steps["check-queries"]["checks"])
    pause = next(c for c in steps["cutover"]["checks"] if c["name"] == "pause")
    assert "PAUSE" in pause["detail"] and "drain" in pause["detail"]  # the pause, phase by phase
    assert "captured event(s) before the pause" in output  # the cutover caught up outside the pause first
    assert "dropped slot bluegreen_" in output and "on blue" in output and "on green" in output  # both captures
    traffic = payload["traffic"]
    assert traffic["transactions"] > 0
    assert traffic["failed"] == 0 and traffic["aborted_clients"] == 0
    assert "pw-" not in output


def test_demo_with_a_failing_check_rolls_back_to_blue() -> None:
    code, payload, output = _demo("--fail-validation")
    assert code == 3, output[-4000:]
    assert payload["status"] == "rolled_back"
    assert "cutover" in payload["rollback"]
    assert payload["traffic"]["failed"] == 0
    assert "operator-check: returned False" in output
    assert "traffic is back on blue, blue is writable" in output
    assert "event(s) captured on green back onto blue" in output  # the reverse captures drained first
    # the captures' undo released both slots, forward (blue) and reverse (green)
    assert "done drop_slot:capture on blue" in output and "done drop_slot:capture-green on green" in output
