"""`bluegreen demo` (what `make demo` runs) goes from nothing to its report, with 0 failed client transactions;
its page, opened in a real browser, shows the numbers of its JSON report.

``BLUEGREEN_REPORT_PNG=docs/report.png`` (``make report-png``) saves the page's screenshot for the README.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .browser import Opened, opened
from .helpers import ROOT


def _demo(*args: str) -> tuple[int, dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_DSN")}
    result = subprocess.run([sys.executable, "-m", "orchestrator", "demo", "--duration", "3", "--json", *args],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    return result.returncode, json.loads(result.stdout), result.stdout + result.stderr


def _drawn(seen: Opened, *figures: str) -> None:
    for fid in figures:
        assert seen.page.locator(f"#fig-{fid} .main-svg").count() > 0, f"chart {fid} not drawn"


def test_demo_runs_the_whole_story_to_its_report(tmp_path: Path) -> None:
    page = tmp_path / "demo.html"
    code, payload, output = _demo("--html", str(page))
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

    facts = {s["id"]: s["facts"] for s in payload["steps"]}
    assert facts["cutover"]["pause_ms"] > 0 and facts["snapshot"]["rows"] >= 140_000
    assert payload["page"] == str(page.resolve())
    assert "pw-" not in page.read_text(encoding="utf-8")
    with opened(page) as seen:
        assert seen.console_errors == []
        assert seen.requests == []
        assert seen.metric("status") == "done"
        assert seen.number("pause_ms") == facts["cutover"]["pause_ms"]
        assert seen.number("rows_copied") == facts["snapshot"]["rows"]
        assert seen.number("events_replayed") == facts["catch-up"]["events"] > 0
        assert seen.number("client_transactions") == traffic["transactions"]
        assert seen.number("client_failed") == traffic["failed"] == 0
        for name, n in facts["cutover"]["replayed"].items():
            assert seen.number(f"replayed-{name}") == n >= facts["catch-up"]["events"]
        _drawn(seen, "timeline", "cutover", "client", "capture", "activity")
        pause_bands = seen.page.evaluate("document.getElementById('fig-client').layout.shapes.length")
        assert pause_bands == 1  # the pause, marked on the clients' latency
        png = os.environ.get("BLUEGREEN_REPORT_PNG")
        if png:
            seen.page.screenshot(path=str(ROOT / png), full_page=True,
                                 clip={"x": 0, "y": 0, "width": 1400, "height": 2400})


def test_demo_with_a_failing_check_rolls_back_to_blue(tmp_path: Path) -> None:
    page = tmp_path / "failed.html"
    code, payload, output = _demo("--fail-validation", "--html", str(page))
    assert code == 3, output[-4000:]
    assert payload["status"] == "rolled_back"
    assert "cutover" in payload["rollback"]
    assert payload["traffic"]["failed"] == 0
    assert "operator-check: returned False" in output
    assert "traffic is back on blue, blue is writable" in output
    assert "event(s) captured on green back onto blue" in output  # the reverse captures drained first
    # the captures' undo released both slots, forward (blue) and reverse (green)
    assert "done drop_slot:capture on blue" in output and "done drop_slot:capture-green on green" in output

    cutover = next(s for s in payload["steps"] if s["id"] == "cutover")
    with opened(page) as seen:
        assert seen.console_errors == [] and seen.requests == []
        assert seen.metric("status") == "rolled_back"
        assert seen.on_first_screen("[data-metric=failed_step]") and seen.on_first_screen("[data-metric=undone]")
        assert seen.metric("failed_step") == payload["failed_step"] == "validate"
        assert "operator-check" in seen.page.locator("#verdict").inner_text()
        undone = seen.metric("undone")
        assert [line.split()[0] for line in undone.splitlines()] == payload["rollback"]
        assert f"{cutover['facts']['reverse_replayed']:,} event(s) written on green replayed onto blue" in undone
