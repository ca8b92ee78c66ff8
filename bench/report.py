"""The run's page with a long journal: 10,000 samples (2.8 hours at 1 Hz) drawn in headless chromium.

Starts its own blue (PG 15), makes a journal there for plans/demo.yaml with one run whose report has every
section (copy per table, replay, cutover, validation, quarantine) and ``--samples`` ticks of what the
sampler records on a busy run (both clusters' pg_stat_database counters changing every tick, lock waits,
20 tables copied two at a time, 3 captures' backlog and lag, step progress, 300 notes, the cutover's
phases) plus the clients' per-second series, written in batches of 10 ticks as the sampler writes them
(none thinned: the worst case). Then it builds the page from the journal (``htmlreport.load`` +
``render``) and opens it in chromium (the flags of tests/func/browser.py), against the same page with no
samples (baseline), and times a zoom of every chart. Prints:

    report: 10,000 samples, N series, 300 marks; journal X MB (Y MB once the sampler thinned it)
    report: page X MB (plotly.js 4.8 MB), built in X s
    report: render ours X s, baseline (no samples) Y s, ratio Z; zoom of every chart X ms

Run: .venv/bin/python bench/report.py [--samples 10000] [--out page.html]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator import htmlreport, timeseries
from orchestrator.db import connect
from orchestrator.journal import Journal
from orchestrator.localenv import LocalCluster, debian_pg
from orchestrator.plan import load_plan
from orchestrator.sqlfiles import sql_dir

PASSWORD = "pw-bench-report"
DB = "bench"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _report(run_id: int, steps: list[tuple[str, str]]) -> dict[str, Any]:
    tables = [{"table": f"public.t{i:02d}", "rows": 1_000_000 * (20 - i), "bytes": 200_000_000 * (20 - i),
               "seconds": 30.0 * (20 - i)} for i in range(20)]
    facts: dict[str, dict[str, Any]] = {
        "snapshot": {"method": "copy", "tables": tables, "rows": sum(t["rows"] for t in tables),
                     "bytes": sum(t["bytes"] for t in tables)},
        "catch-up": {"events": 1_234_567, "quarantined_events": 3,
                     "captures": {"capture-refresh-revocations": {"applied": 1_234_567, "quarantined": 3, "rounds": 40,
                                                                  "lag_events": 120, "lag_seconds": 0.8,
                                                                  "seconds": 600.0}}},
        "cutover": {"pause_ms": 126.4, "budget_ms": 2000.0, "attempts": 1,
                    "phases_ms": {"PAUSE": 20.1, "fence": 9.8, "drain": 61.0, "sequences": 6.2, "switches": 18.0,
                                  "RESUME": 11.3}, "replayed": {"capture-refresh-revocations": 1_240_000}},
        "validate": {"passes": 60, "results": [{"name": f"check-{i}", "ok": True, "detail": "equal"}
                                               for i in range(5)]},
        "migrate-columns": {"cleanup": [{"constraint": "fk_client", "table": "public.tokens", "policy": "quarantine",
                                         "rows": 5, "cascade": False}], "quarantined": 5, "deleted": 0},
    }
    out = []
    for step_id, kind in steps:
        stats = {c: {"tup_inserted": 1000, "tup_updated": 2000, "tup_deleted": 10, "temp_bytes": 0,
                     "xact_commit": 500} for c in ("blue", "green")}
        out.append({"id": step_id, "kind": kind, "status": "done", "seconds": 100.0, "actions_run": 3,
                    "actions_skipped": 0, "stats": stats, "checks": [], "error": None,
                    "facts": facts.get(step_id, {})})
    return {"plan": "demo", "mode": "run", "run_id": run_id, "status": "done", "resumed": False,
            "seconds": 10_000.0, "steps": out, "rendered": [], "rollback": [], "error": None, "totals": {},
            "failed_step": None}


def _fill(journal: Journal, run_id: int, start: float, samples: int, steps: list[tuple[str, str]],
          seed: int = 7) -> tuple[int, int]:
    """Write ``samples`` ticks as the sampler would, the step events around them; returns (series, marks)."""
    rng = random.Random(seed)
    counters = {f"db/{c}/{n}": 0 for c in ("blue", "green") for n in
                ("xact_commit", "xact_rollback", "temp_bytes", "tup_inserted", "tup_updated", "tup_deleted")}
    names: set[str] = set()
    marks = 0
    writer = timeseries.BatchWriter()
    copy_until = samples // 3
    span = samples / len(steps)
    for i, (step_id, _) in enumerate(steps):
        began, applied, verified = (datetime.fromtimestamp(start + x * span, UTC) for x in (i, i + 0.9, i + 1))
        journal.conn.execute("INSERT INTO bluegreen.step_events (run_id, step_id, phase, status, at) VALUES"
                             " (%s, %s, 'apply', 'started', %s), (%s, %s, 'apply', 'done', %s),"
                             " (%s, %s, 'verify', 'done', %s)",
                             (run_id, step_id, began, run_id, step_id, applied, run_id, step_id, verified))
    for tick in range(samples):
        at = start + tick
        for name in counters:
            counters[name] += rng.randrange(0, 5000)
        values: dict[str, timeseries.Value] = dict(counters)
        for cluster in ("blue", "green"):
            values[f"locks/{cluster}/bluegreen_waiting"] = 1 if rng.random() < 0.01 else 0
            values[f"locks/{cluster}/clients_waiting"] = rng.randrange(0, 3) if rng.random() < 0.02 else 0
        if tick < copy_until:
            for part in range(2):
                table = (tick * 20 // copy_until + part * 10) % 20
                values[f"copy/public.t{table:02d}/bytes"] = (tick % (copy_until // 20)) * 30_000_000
                values[f"copy/public.t{table:02d}/rows"] = (tick % (copy_until // 20)) * 150_000
        for c in ("capture-refresh-revocations", "capture-green-accounts", "capture-green-revocations"):
            values[f"capture/{c}/captured"] = tick * 50
            values[f"capture/{c}/applied"] = max(0, tick * 50 - rng.randrange(0, 3000))
            values[f"capture/{c}/pending"] = rng.randrange(0, 3000)
            values[f"capture/{c}/lag_s"] = round(rng.random() * 5, 1)
        values["progress/extend-ttl: rows extended/rows"] = min(tick * 100, 500_000)
        names.update(values)
        writer.add(at, values)
        if tick % 33 == 0:
            writer.mark(at, "note", steps[min(len(steps) - 1, int(tick / span))][0], f"note {tick}: something happened")
            marks += 1
        if tick == samples - 300:
            for offset, phase in ((0.0, "pausing"), (0.02, "paused"), (0.09, "switching"), (0.13, "done")):
                writer.mark(at + offset, "phase", "cutover", phase)
                marks += 1
        if tick % 10 == 9 or tick == samples - 1:
            batch = writer.take()
            if batch is not None:
                journal.add_samples(run_id, batch)
    client = timeseries.Dense()
    for tick in range(samples):
        for metric, value in (("tps", 400 + rng.randrange(-20, 20)), ("latency_avg_ms", 2 + rng.random()),
                              ("latency_max_ms", 10 + rng.random() * 5), ("failed", 0)):
            client.add(f"client/pgbench/{metric}", start + tick + 0.5, value)
    journal.add_samples(run_id, timeseries.encode(client))
    return len(names) + 4, marks


def _render_seconds(path: Path) -> tuple[float, float, list[str]]:
    """Navigation to every chart drawn, and a zoom of every chart (ms), in a fresh headless chromium."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="bluegreen-bench-chromium-")
    errors: list[str] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                            args=FLAGS, viewport={"width": 1400, "height": 900})
            try:
                page = browser.new_page()
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                started = time.monotonic()
                page.goto(path.resolve().as_uri())
                page.wait_for_selector("body[data-ready=true]", timeout=120_000)
                seconds = time.monotonic() - started
                zoom = float(page.evaluate("""async () => {
                    const t0 = performance.now();
                    for (const el of document.querySelectorAll('.plot')) {
                        const r = el.layout.xaxis && el.layout.xaxis.range;
                        if (r && el.layout.xaxis.type === 'date') {
                            await Plotly.relayout(el, {'xaxis.range': [r[0], new Date((Date.parse(r[0] + 'Z')
                                + Date.parse(r[1] + 'Z')) / 2).toISOString()]});
                        }
                    }
                    return performance.now() - t0;
                }"""))
            finally:
                browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return seconds, zoom, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=None, help="keep the page there")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bluegreen-bench-report-"))
    blue = LocalCluster("blue", debian_pg(15), base, PASSWORD)
    try:
        blue.start()
        blue.create_database(DB)
        env = {"BLUE_DSN": blue.dsn(DB), "GREEN_DSN": blue.dsn(DB)}
        loaded = load_plan(sql_dir().parent / "plans" / "demo.yaml", env)
        steps = [(s.id, str(getattr(s, "kind", ""))) for s in loaded.plan.steps]
        start = time.time() - args.samples
        with connect(blue.dsn(DB), "blue") as conn:
            journal = Journal(conn)
            journal.ensure_schema()
            run_ids = []
            # ours, the baseline (the same run with no samples), and a copy of ours thinned as the sampler would
            for samples in (args.samples, 0, args.samples):
                record, _ = journal.begin("demo", "0" * 64, restart=True)
                run_ids.append(record.run_id)
                series, marks = _fill(journal, record.run_id, start, samples, steps) if samples else (0, 0)
                journal.set_status(record.run_id, "done", report=_report(record.run_id, steps))
                conn.execute("UPDATE bluegreen.runs SET started_at = %s, finished_at = %s WHERE run_id = %s",
                             (datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(start + args.samples, UTC),
                              record.run_id))
            journal.thin_samples(run_ids[2], start + args.samples - 3600, 10.0)
            sizes = dict(conn.execute("SELECT run_id, sum(pg_column_size(data))::bigint FROM bluegreen.samples"
                                      " GROUP BY run_id").fetchall())
        print(f"report: {args.samples:,} samples, {series} series, {marks} marks; journal {sizes[run_ids[0]] / 1e6:.1f}"
              f" MB ({sizes[run_ids[2]] / 1e6:.1f} MB once the sampler thinned what is older than an hour to 10 s)",
              flush=True)
        pages = []
        for run_id, name in ((run_ids[0], "ours"), (run_ids[1], "baseline")):
            began = time.monotonic()
            html = htmlreport.render(htmlreport.load(loaded, run_id))
            built = time.monotonic() - began
            path = base / f"{name}.html"
            path.write_text(html, encoding="utf-8")
            pages.append((path, built))
        ours, built = pages[0]
        js = len(htmlreport.plotly_js())
        print(f"report: page {ours.stat().st_size / 1e6:.1f} MB (plotly.js {js / 1e6:.1f} MB, the run's data"
              f" {(ours.stat().st_size - js) / 1e6:.1f} MB), built in {built:.2f} s", flush=True)
        ours_s, zoom, errors = _render_seconds(ours)
        base_s, _, base_errors = _render_seconds(pages[1][0])
        print(f"report: render ours {ours_s:.2f} s, baseline (no samples) {base_s:.2f} s, ratio {ours_s / base_s:.1f};"
              f" zoom of every chart {zoom:.0f} ms; console errors {len(errors) + len(base_errors)}")
        if args.out is not None:
            shutil.copy(ours, args.out)
        return 0 if not errors and not base_errors else 1
    finally:
        blue.destroy()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
