"""Hydra v1.11.10 (PG 15) -> v2.3.0 (PG 18) end to end (`make hydra-e2e`): plans/hydra.yaml on Hydra's corpus
with its testdata, a generated population and 5 injected bad rows, under Hydra 1.x token traffic through
PgBouncer before and after the cutover, plus consent revocations on blue until its fence.

Asserted: the run is done; 0 failed client transactions; every revocation made on blue (the traffic's own log,
written in the revoking transaction) is effective on green; the quarantine holds exactly the injected rows; the
run's page, in a real browser, shows its JSON report's numbers (pause, rows copied, events replayed, rows
quarantined) and the clients' series.
SCALE comes from ``$HYDRA_E2E_SCALE`` (`make hydra-e2e SCALE=n`); the default is small enough for CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .browser import opened
from .helpers import ROOT
from .migrate_support import hydra

SCALE = int(os.environ.get("HYDRA_E2E_SCALE", "10000"))
TIMEOUT = max(280, SCALE // 250)  # about 70 minutes for 1M tokens on 2 cores; the CI scale stays in the default


def _e2e(*args: str) -> tuple[int, dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_DSN")}
    env["HYDRA_CORPUS"] = str(hydra())
    markdown = os.environ.get("HYDRA_E2E_MARKDOWN")
    extra = ["--markdown", markdown] if markdown else []
    log = os.environ.get("HYDRA_E2E_LOG")  # the run's progress, for a long run outside CI
    with open(log or os.devnull, "w", encoding="utf-8") as progress:
        result = subprocess.run([sys.executable, "-m", "orchestrator", "hydra-e2e", "--scale", str(SCALE),
                                 "--duration", "3", "--json", *extra, *args],
                                env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=progress if log else subprocess.PIPE, text=True, timeout=TIMEOUT - 20,
                                check=False)
    return result.returncode, json.loads(result.stdout), result.stdout + (result.stderr or "")


@pytest.mark.timeout(TIMEOUT)
def test_hydra_1_11_10_to_2_3_0_under_traffic_loses_no_revocation(tmp_path: Path) -> None:
    page = tmp_path / "hydra.html"
    code, payload, output = _e2e("--html", str(page))
    assert code == 0, output[-4000:]
    assert payload["status"] == "done"
    steps = {s["id"]: s for s in payload["steps"]}
    assert list(steps) == ["capture", "snapshot", "migrate", "green-v1-compat", "check-old-queries",
                           "check-new-queries", "catch-up", "cutover", "validate"]
    assert all(s["status"] == "done" for s in payload["steps"])
    assert steps["snapshot"]["stats"]["green"]["tup_inserted"] >= 2 * SCALE
    assert any(c["name"] == "pause" for c in steps["cutover"]["checks"])
    assert any(c["name"] == "publication" for c in steps["capture"]["checks"])  # captured by logical decoding

    traffic = payload["traffic"]
    assert traffic["transactions"] > 0
    assert traffic["failed"] == 0 and traffic["aborted_clients"] == 0

    outcome = payload["hydra"]
    assert outcome["token_revocations_on_blue"] > 0
    assert outcome["token_revocations_not_effective_on_green"] == []
    assert outcome["consent_revocations_on_blue"] > 0
    assert outcome["consent_revocations_on_blue"] == len(outcome["consents_revoked_on_blue"])
    assert outcome["consent_revocations_not_effective_on_green"] == []
    assert outcome["quarantined"] == [
        ["hydra_client", "bad-client-backslash", "client-list-not-json"],
        ["hydra_client", "bad-client-quote", "client-list-not-json"],
        ["hydra_oauth2_access", "bad-orphan-access", "hydra_oauth2_access_client_id_fk"],
        ["hydra_oauth2_consent_request", "bad-dup-consent", "duplicate-login-challenge"],
        ["hydra_oauth2_refresh", "bad-orphan-refresh", "hydra_oauth2_refresh_client_id_fk"],
    ]
    assert "pw-" not in output

    facts = {s["id"]: s["facts"] for s in payload["steps"]}
    cleaned = {c["constraint"]: c["rows"] for c in facts["migrate"]["cleanup"] if c["policy"] == "quarantine"}
    assert sum(cleaned.values()) == facts["migrate"]["quarantined"] == len(outcome["quarantined"])
    with opened(page) as seen:
        assert seen.console_errors == [] and seen.requests == []
        assert seen.metric("status") == "done"
        assert seen.number("pause_ms") == facts["cutover"]["pause_ms"]
        assert seen.number("rows_copied") == facts["snapshot"]["rows"] >= 2 * SCALE
        assert seen.number("events_replayed") == facts["catch-up"]["events"] > 0
        assert seen.number("quarantined_rows") == facts["migrate"]["quarantined"] == 5
        assert seen.number("client_failed") == 0
        table = seen.page.locator("#quarantine").inner_text()
        assert all(constraint in table for constraint in cleaned)
        for fid in ("timeline", "cutover", "client", "capture"):
            assert seen.page.locator(f"#fig-{fid} .main-svg").count() > 0, fid
