"""`bluegreen demo` (what `make demo` runs) goes from nothing to its report, with 0 failed client transactions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .helpers import ROOT


def test_demo_runs_to_its_report() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_DSN")}
    result = subprocess.run([sys.executable, "-m", "orchestrator", "demo", "--duration", "3", "--json"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    payload = json.loads(result.stdout)
    assert payload["status"] == "done"
    steps = {s["id"]: s for s in payload["steps"]}
    assert [s["status"] for s in payload["steps"]] == ["done"] * 8
    assert steps["copy-data"]["stats"]["green"]["tup_inserted"] >= 40_000  # the token rows reached green
    assert steps["extend-ttl"]["stats"]["blue"]["tup_updated"] > 0  # expiry pushed on blue
    assert any("0 would break" in c["detail"] for c in steps["check-queries"]["checks"])
    traffic = payload["traffic"]
    assert traffic["transactions"] > 0
    assert traffic["failed"] == 0 and traffic["aborted_clients"] == 0
    assert "pw-" not in result.stdout + result.stderr
