"""Every example plan in plans/ renders with --dry-run --offline, with no server and no environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.plan import load_plan

ROOT = Path(__file__).resolve().parents[2]
PLANS = sorted((ROOT / "plans").glob("*.yaml"))


def test_there_are_example_plans() -> None:
    assert ROOT / "plans" / "demo.yaml" in PLANS


@pytest.mark.parametrize("plan", PLANS, ids=[p.name for p in PLANS])
def test_plan_renders_offline(plan: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_DSN")}
    result = subprocess.run([sys.executable, "-m", "orchestrator", "run", str(plan), "--dry-run", "--offline",
                             "--json"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["status"] == "rendered"
    rendered = [r["action"] for r in payload["rendered"]]
    steps = load_plan(plan, env).plan.steps
    # every step renders at least one action, in plan order
    assert list(dict.fromkeys(a.split(":")[1] for a in rendered)) == [s.id for s in steps]


def test_demo_plan_offline_prints_every_action() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_DSN")}
    result = subprocess.run([sys.executable, "-m", "orchestrator", "run", "plans/demo.yaml", "--dry-run",
                             "--offline"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    for action in ("extend_ttl:extend-ttl:batches", "sql:migrate-columns:0", "sql:migrate-indexes:0.0",
                   "fence_blue:cutover", "switch:cutover:pgbouncer-demo",
                   "check:validate:revocations-carried-over:blue"):
        assert f"plan {action}" in result.stderr
    assert "CREATE INDEX CONCURRENTLY IF NOT EXISTS hydra_oauth2_access_request_id_idx" in result.stderr
    assert "PAUSE demo" in result.stderr and "RESUME demo" in result.stderr
    assert "actions rendered, nothing written" in result.stdout
