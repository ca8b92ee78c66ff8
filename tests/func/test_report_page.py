"""The run as a page (`run --report x.html`, `bluegreen report --html`) opened in a real headless browser, and the
sampler that records the run's time series in the journal."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg

from orchestrator import timeseries
from orchestrator.localenv import Databases
from orchestrator.plan import load_plan
from orchestrator.sampler import Sampler

from .browser import opened
from .helpers import bluegreen, cli_env, query, scalar, write_plan

STEPS = """\
  - {id: make-table, kind: sql, on: green, sql: "CREATE TABLE items (id int PRIMARY KEY, v text)",
     rollback: {sql: "DROP TABLE IF EXISTS items"}}
  - {id: fill, kind: sql, on: green, sql: "INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 5000) g"}
  - {id: wait, kind: command, argv: [sleep, "2.5"]}
"""


def test_the_page_of_a_run_shows_what_its_json_report_says(dbs: Databases, tmp_path: Path, pg_password: str) -> None:
    plan = write_plan(tmp_path / "plan.yaml", "page", STEPS)
    page = tmp_path / "run.html"
    result = bluegreen(["run", str(plan), "--json", "--report", str(page)], cli_env(dbs))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert f"report page: {page.resolve()}" in result.stderr

    with opened(page) as seen:
        assert seen.console_errors == []
        assert seen.requests == []  # one file: nothing fetched, not even a font
        assert seen.metric("plan") == "page"
        assert seen.metric("status") == report["status"] == "done"
        for step in report["steps"]:
            assert seen.metric(f"step-{step['id']}") == step["status"]
        assert seen.metric("version-blue").startswith("15.")
        assert seen.metric("version-green").startswith("18.")
        assert seen.page.locator("#fig-timeline .main-svg").count() > 0  # plotly drew the timeline
        assert seen.page.locator("#fig-activity .main-svg").count() > 0  # and the clusters' counters
        assert seen.on_first_screen("#verdict")
    html = page.read_text(encoding="utf-8")
    assert pg_password not in html
    assert "<script src" not in html and "<link" not in html

    # the journal has the series the page drew: green's counters moved by the 5000 rows the run inserted
    batches = [r[0] for r in query(dbs.blue_dsn, "SELECT data FROM bluegreen.samples ORDER BY t0")]
    inserted = timeseries.decode_all(batches).series["db/green/tup_inserted"].v
    assert inserted[-1] - inserted[0] >= 5000

    again = tmp_path / "again.html"
    later = bluegreen(["report", str(plan), "--html", str(again)], cli_env(dbs))
    assert later.returncode == 0, later.stderr
    assert f"report page: {again.resolve()} (run {report['run_id']}, done" in later.stdout
    stored = json.loads(bluegreen(["report", str(plan), "--json"], cli_env(dbs)).stdout)
    assert stored["report"]["steps"] == report["steps"]
    with opened(again) as seen:
        assert seen.console_errors == [] and seen.requests == []
        assert seen.metric("status") == "done"


def test_a_failed_run_says_on_its_first_screen_what_failed_and_what_was_undone(dbs: Databases,
                                                                              tmp_path: Path) -> None:
    steps = STEPS + """\
  - id: check
    kind: validate
    checks: [{name: items-gone, sql: "SELECT count(*) = 0 FROM items"}]
"""
    plan = write_plan(tmp_path / "plan.yaml", "page-fails", steps, "{on_failure: rollback}")
    page = tmp_path / "failed.html"
    result = bluegreen(["run", str(plan), "--json", "--report", str(page)], cli_env(dbs))
    assert result.returncode == 3, result.stderr  # validation failed, rolled back
    report = json.loads(result.stdout)["report"]
    assert report["status"] == "rolled_back" and report["failed_step"] == "check"
    assert scalar(dbs.green_dsn, "SELECT to_regclass('items')") is None

    with opened(page) as seen:
        assert seen.console_errors == [] and seen.requests == []
        assert seen.metric("status") == "rolled_back"
        assert seen.on_first_screen("#verdict")
        assert seen.on_first_screen("[data-metric=failed_step]")
        assert seen.metric("failed_step") == report["failed_step"]
        verdict = seen.page.locator("#verdict").inner_text()
        assert "items-gone" in verdict and "returned False" in verdict
        assert seen.on_first_screen("[data-metric=undone]")
        undone = seen.metric("undone").splitlines()
        assert [line.split()[0] for line in undone] == report["rollback"] == ["make-table"]


CAPTURE = """\
  - {id: cap, kind: capture, method: trigger, on: blue, table: tok, events: [update]}
"""


def _sampled(sampler: Sampler, dbs: Databases, name: str) -> list[float | int]:
    rows = query(dbs.blue_dsn, "SELECT data FROM bluegreen.samples WHERE run_id = %s ORDER BY t0", (sampler.run_id,))
    return timeseries.decode_all(r[0] for r in rows).series[name].v


def test_the_sampler_counts_captured_events_exactly_though_a_late_commit_has_a_low_number(
        dbs: Databases, tmp_path: Path) -> None:
    """An event numbered before others but committed after them (the seq trap): the sampler's count of captured
    events must still end equal to the table's, so its watermark may not pass an open writer's events."""
    query(dbs.blue_dsn, "CREATE TABLE tok (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);"
                        " INSERT INTO tok SELECT g FROM generate_series(1, 100) g")
    plan = write_plan(tmp_path / "plan.yaml", "sampled", CAPTURE)
    assert bluegreen(["run", str(plan)], cli_env(dbs)).returncode == 0
    run_id = scalar(dbs.blue_dsn, "SELECT max(run_id) FROM bluegreen.runs")
    loaded = load_plan(plan, cli_env(dbs))
    sampler = Sampler(loaded, {"blue": dbs.blue_dsn, "green": dbs.green_dsn}, "blue", run_id, interval=0.1,
                      flush_every=0.5)
    with sampler, psycopg.connect(dbs.blue_dsn) as late, psycopg.connect(dbs.blue_dsn, autocommit=True) as busy:
        late.execute("UPDATE tok SET n = n + 1 WHERE id = 1")  # event k, not committed yet
        for i in range(2, 42):
            busy.execute("UPDATE tok SET n = n + 1 WHERE id = %s", (i,))  # events k+1..., committed
            time.sleep(0.02)
        time.sleep(0.5)  # ticks while the low-numbered event is still in flight
        late.commit()
        time.sleep(0.3)
        busy.execute("UPDATE tok SET n = n + 1 WHERE id <= 10")
        time.sleep(0.3)
    assert sampler.errors == 0
    captured = _sampled(sampler, dbs, "capture/cap/captured")
    assert captured[-1] == scalar(dbs.blue_dsn, "SELECT count(*) FROM bluegreen.capture_events WHERE capture = 'cap'")
    assert captured[-1] == 1 + 40 + 10
    assert captured == sorted(captured)
    pending = _sampled(sampler, dbs, "capture/cap/pending")
    assert pending[-1] == captured[-1]  # no replay: every event is pending


def test_a_cluster_the_sampler_cannot_reach_costs_it_samples_not_the_run(dbs: Databases, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.yaml", "half-sampled", STEPS)
    assert bluegreen(["run", str(plan)], cli_env(dbs)).returncode == 0
    run_id = scalar(dbs.blue_dsn, "SELECT max(run_id) FROM bluegreen.runs")
    unreachable = dbs.green_dsn.replace(f":{dbs.green.port}/", ":1/")
    sampler = Sampler(load_plan(plan, cli_env(dbs)), {"blue": dbs.blue_dsn, "green": unreachable}, "blue", run_id,
                      interval=0.1, flush_every=0.3)
    started = time.monotonic()
    with sampler:
        time.sleep(0.8)
    assert time.monotonic() - started < 8
    assert sampler.errors > 0  # every tick failed on green, and went on
    assert len(_sampled(sampler, dbs, "db/blue/xact_commit")) >= 5
