"""orchestrator.hydra without a database: release file lists, the population's shape, the report's Markdown."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.hydra import INJECTED, CorpusMissing, Scale, in_v1_11_10, migrations, with_testdata
from orchestrator.hydra.markdown import render
from orchestrator.hydra.traffic import consent_pool, keep_flows

CORPUS = Path(os.environ.get("HYDRA_CORPUS", Path(__file__).resolve().parents[3] / "shared" / "corpus" / "hydra"))


def corpus() -> Path:
    if not (CORPUS / "migrations").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"Hydra corpus not found at {CORPUS}", pytrace=False)
        pytest.skip(f"Hydra corpus not found at {CORPUS}")  # never under CI=true: failed above
    return CORPUS


def test_release_file_lists_follow_source_md() -> None:
    v1 = migrations("v1.11.10", corpus())
    assert len(v1) == 55 and len(migrations("v2.3.0", corpus())) == 212
    assert all(in_v1_11_10(f.version) for f in v1)
    files = with_testdata(v1, "v1.11.10", corpus())
    assert [f.version for f in files] == sorted(f.version for f in files)  # popx's order, testdata as V + "9"
    assert not any(f.testdata and f.version[:14] in {"20211226155900", "20220328111500"} for f in files)
    with pytest.raises(ValueError, match="unknown Hydra release"):
        migrations("v3", corpus())


def test_missing_corpus_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYDRA_CORPUS", str(tmp_path))
    with pytest.raises(CorpusMissing, match="set HYDRA_CORPUS") as raised:
        migrations()
    assert raised.value.exit_code == 2


def test_scale_derives_every_table_and_a_disjoint_consent_pool() -> None:
    scale = Scale(1_000_000)
    assert scale.counts()["hydra_oauth2_access"] == scale.counts()["hydra_oauth2_refresh"] == 1_000_000
    assert (scale.clients, scale.flows, scale.sessions) == (500, 100_000, 100_000)
    pool = consent_pool(scale)
    assert len(pool) == 1_000 and pool[0] == f"e2e-cc-{keep_flows(scale)}"
    with pytest.raises(ValueError, match="at least 1 token"):
        Scale(0)


def test_markdown_report_has_the_published_table_and_the_outcome() -> None:
    quarantined = sorted([t, k, c] for t, (_, keys, c) in INJECTED.items() for k in keys)
    text = render({
        "status": "done", "seconds": 12.5,
        "steps": [{"id": "snapshot", "kind": "snapshot", "seconds": 3.0,
                   "stats": {"green": {"tup_inserted": 2_000_000, "tup_updated": 0, "tup_deleted": 0,
                                       "temp_bytes": 3 * 1024 * 1024, "xact_commit": 42}},
                   "checks": [{"name": "pause", "detail": "1200 ms", "ok": True}]}],
        "totals": {},
        "traffic": {"transactions": 1000, "failed": 0, "aborted_clients": 0, "tps": 400.0, "latency_max_ms": 1300.0},
        "hydra": {"token_revocations_on_blue": 7, "token_revocations_not_effective_on_green": [],
                  "consent_revocations_on_blue": 2, "consent_revocations_not_effective_on_green": [],
                  "quarantined": quarantined, "quarantined_exactly_injected": True},
    }, 1_000_000)
    assert "| snapshot | snapshot | 3.0 | green | 2,000,000 | 0 | 0 | 3.0 MB | 42 |" in text
    assert "2,000,000 rows written on green in 3.0 s, 666,667 rows/s" in text
    assert "failed transactions: **0**" in text
    assert "token revocations made on blue during the run: 7; not effective on green: 0" in text
    assert "| hydra_client | bad-client-quote | client-list-not-json |" in text
    assert "Exactly the injected rows: **True**." in text
