"""The run as a page: one self-contained HTML file, drawn from the journal, that needs no network to view.

``load`` reads a run from the journal (its report, its step events, the sampler's time series, the
clusters' versions and, for ``bluegreen demo``, the client traffic), during the run or after it;
``render`` makes the page: the verdict first (what failed and what was undone, or the key numbers), the
step timeline, the per-step counters table, copy throughput per table, capture backlog and replay lag,
the cutover's pause by phase against its budget, the clients' latency and tps with the pause marked,
cluster activity, validation results and quarantined rows, the rollback. Charts are Plotly figures (its
JavaScript is inlined from the ``plotly`` package) built here as plain JSON; the template is Jinja2
(``orchestrator/templates/report.html.j2``), autoescaped. Every number comes from the same report dict
as ``--report x.json`` (``steps[].facts``, ``steps[].stats``), and every text is redacted again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import secrets, timeseries
from .db import connect, readonly
from .errors import UsageError
from .journal import Journal, RunRecord
from .report import COUNTERS
from .timeseries import Dense, Points, Value, split_name

if TYPE_CHECKING:
    from .plan import LoadedPlan

MAX_POINTS = 2000  # per series on a chart: more are bucketed (peaks kept)
COLORS = {"apply": "#3b82f6", "verify": "#93c5fd", "rollback": "#f59e0b", "failed": "#dc2626",
          "running": "#a3a3a3"}
LABELS = {"tup_inserted": "inserted", "tup_updated": "updated", "tup_deleted": "deleted",
          "temp_bytes": "temp bytes", "xact_commit": "commits"}
PAUSE_PHASES = ("PAUSE", "fence", "drain", "sequences", "switches", "RESUME")


@dataclass
class RunData:
    """One run as the journal has it."""

    plan: str
    run: RunRecord
    report: dict[str, Any]
    events: list[dict[str, Any]]
    series: Dense
    kinds: dict[str, str]  # step id -> kind, in the plan's order
    clusters: dict[str, Any] = field(default_factory=dict)
    client: dict[str, Any] = field(default_factory=dict)
    generated: float = field(default_factory=time.time)


# -- reading ----------------------------------------------------------------------------------------


def _control(loaded: LoadedPlan) -> tuple[str, str]:
    plan = loaded.plan
    return plan.control, plan.clusters.blue.dsn if plan.control == "blue" else plan.clusters.green.dsn


def load(loaded: LoadedPlan, run_id: int | None = None) -> RunData:
    """Read a run of the plan (the latest by default) from the journal on its control cluster, read-only.

    :raises UsageError: there is no journal, or no such run of this plan.
    """
    name, dsn = _control(loaded)
    plan = loaded.plan
    with readonly(dsn, name) as conn:
        journal = Journal(conn)
        if not journal.exists():
            raise UsageError(f"no journal on {name}: plan {plan.name!r} never ran")
        run = journal.latest(plan.name) if run_id is None else journal.run_of(plan.name, run_id)
        if run is None:
            raise UsageError(f"plan {plan.name!r} has no run" + (f" {run_id}" if run_id is not None else ""))
        events = journal.events(run.run_id)
        kinds = {s.id: str(getattr(s, "kind", "")) for s in plan.steps}
        report = run.report or _report_from_events(plan.name, run, kinds, events)
        series = timeseries.decode_all(journal.samples(run.run_id))
        clusters = journal.get_state(run.run_id, "report:clusters") or {}
        client = journal.get_state(run.run_id, "report:client") or {}
    return RunData(plan.name, run, report, events, series, kinds, clusters, client)


def _report_from_events(plan: str, run: RunRecord, kinds: dict[str, str], events: list[dict[str, Any]]
                        ) -> dict[str, Any]:
    """The report of a run still going (the journal has its report only at the end): from the step events."""
    steps = []
    for step_id, kind in kinds.items():
        mine = [e for e in events if e["step_id"] == step_id and e["action_id"] is None]
        step: dict[str, Any] = {"id": step_id, "kind": kind, "status": "pending", "seconds": 0.0,
                                "actions_run": sum(1 for e in events if e["step_id"] == step_id
                                                   and e["action_id"] and e["status"] == "done"),
                                "actions_skipped": 0, "stats": {}, "checks": [], "error": None, "facts": {}}
        for e in mine:
            detail = e["detail"] or {}
            if e["status"] == "started":
                step["status"] = "running" if e["phase"] == "apply" else step["status"]
            elif e["status"] == "failed":
                step["status"] = "failed"
                step["error"] = detail.get("error") or "; ".join(
                    f"{c.get('name')}: {c.get('detail')}" for c in detail.get("checks", []) if not c.get("ok"))
            elif e["phase"] == "verify" and e["status"] == "done":
                step.update(status="done", seconds=float(detail.get("seconds", 0.0)),
                            stats=detail.get("stats", {}), checks=detail.get("checks", []),
                            facts=detail.get("facts", {}))
            elif e["phase"] == "rollback" and e["status"] == "done" and detail.get("undone"):
                step["status"] = "rolled_back"
        steps.append(step)
    return {"plan": plan, "mode": "run", "run_id": run.run_id, "status": run.status, "resumed": run.attempt > 1,
            "seconds": ((run.finished_at or datetime.now(UTC)) - run.started_at).total_seconds(),
            "steps": steps, "rendered": [], "error": run.error,
            "rollback": [s["id"] for s in steps if s["status"] == "rolled_back"],
            "failed_step": next((s["id"] for s in steps if s["error"]), None), "totals": {}}


def record_client(loaded: LoadedPlan, run_id: int, per_second: Sequence[Sequence[float]],
                  summary: dict[str, Any]) -> None:
    """Keep the client side of a run (pgbench, one row a second: epoch second, transactions, summed and max
    latency in ms, failed) in the journal, for the page: ``client/pgbench/*`` series and a summary."""
    dense = Dense()
    names = ("tps", "latency_avg_ms", "latency_max_ms", "failed")
    for second, count, latency_sum, latency_max, failed in per_second:
        for name, value in zip(names, (count, latency_sum / count if count else None,
                                       latency_max if count else None, failed), strict=True):
            dense.add(timeseries.series_name("client", "pgbench", name), second + 0.5, value)
    name, dsn = _control(loaded)
    with connect(dsn, name) as conn:
        journal = Journal(conn)
        if dense.series:
            journal.add_samples(run_id, timeseries.encode(dense))
        journal.put_state(run_id, "report:client", summary)


def write(loaded: LoadedPlan, path: Path, run_id: int | None = None) -> Path:
    """Render a run of the plan into ``path`` (one file); returns the path."""
    path.write_text(render(load(loaded, run_id)), encoding="utf-8")
    return path


# -- the page ---------------------------------------------------------------------------------------


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _epoch(at: datetime) -> float:
    return at.timestamp()


@cache
def plotly_js() -> str:
    """plotly.js, minified, from the ``plotly`` package (no network, ever)."""
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


def _script_json(value: Any) -> str:
    """JSON safe inside a ``<script>`` element."""
    return json.dumps(value, separators=(",", ":"), default=str).replace("<", "\\u003c")


class _Page:
    """Everything the template shows, computed once from a RunData."""

    def __init__(self, data: RunData) -> None:
        self.data = data
        self.report = data.report
        self.steps: list[dict[str, Any]] = list(self.report.get("steps") or [])
        self.by_kind: dict[str, list[dict[str, Any]]] = {}
        for step in self.steps:
            self.by_kind.setdefault(str(step.get("kind")), []).append(step)
        self.series = data.series
        self.pauses = self._pauses()
        self.figures: list[dict[str, Any]] = []
        run = data.run
        self.start = _epoch(run.started_at)
        stopped = run.finished_at or (run.updated_at if run.status != "running" else None)
        self.end = _epoch(stopped) if stopped else data.generated

    # -- numbers -------------------------------------------------------------------------------

    def facts(self, kind: str) -> list[dict[str, Any]]:
        return [s.get("facts") or {} for s in self.by_kind.get(kind, [])]

    def metrics(self) -> dict[str, Any]:
        """The headline numbers (each shown with ``data-metric=<key>``)."""
        out: dict[str, Any] = {}
        cut = next((f for f in self.facts("cutover") if "pause_ms" in f), None)
        if cut is not None:
            out["pause_ms"] = cut["pause_ms"]
            out["pause_budget_ms"] = cut.get("budget_ms")
        copies = [f for f in self.facts("snapshot") if "rows" in f]
        if copies:
            out["rows_copied"] = sum(int(f["rows"]) for f in copies)
            out["bytes_copied"] = sum(int(f.get("bytes", 0)) for f in copies)
        replays = [f for f in self.facts("replay") if "events" in f]
        if replays:
            out["events_replayed"] = sum(int(f["events"]) for f in replays)
        cleaned = [f for kind in ("migrate", "cleanup") for f in self.facts(kind) if "quarantined" in f]
        if cleaned:
            out["quarantined_rows"] = sum(int(f["quarantined"]) for f in cleaned)
        checks = [c for s in self.by_kind.get("validate", []) for c in s.get("checks") or []]
        results = [r for f in self.facts("validate") for r in f.get("results") or []]
        if results or checks:
            rows = results or checks
            out["checks_passed"] = sum(1 for r in rows if r.get("ok"))
            out["checks_total"] = len(rows)
        if self.data.client:
            out["client_transactions"] = self.data.client.get("transactions")
            out["client_failed"] = self.data.client.get("failed")
        return out

    def failed_step(self) -> dict[str, Any] | None:
        name = self.report.get("failed_step") or next((s["id"] for s in self.steps if s.get("error")), None)
        return next((s for s in self.steps if s["id"] == name), None)

    def failed_phase(self, step_id: str) -> str:
        failed = [e for e in self.data.events if e["step_id"] == step_id and e["action_id"] is None
                  and e["status"] == "failed" and e["phase"] in ("apply", "verify")]
        return str(failed[-1]["phase"]) if failed else ""

    def failed_checks(self, step: dict[str, Any]) -> list[dict[str, Any]]:
        results = (step.get("facts") or {}).get("results") or step.get("checks") or []
        return [r for r in results if not r.get("ok")]

    def undone(self) -> list[dict[str, Any]]:
        """The steps the rollback undid, in the order it undid them, with what it said about each."""
        out = []
        for step_id in self.report.get("rollback") or []:
            step = next((s for s in self.steps if s["id"] == step_id), {"id": step_id, "kind": "?"})
            facts = step.get("facts") or {}
            what = ""
            if step.get("kind") == "cutover":
                what = "traffic back on blue, blue writable"
                if "reverse_replayed" in facts:
                    what += f"; {facts['reverse_replayed']:,} event(s) written on green replayed onto blue first"
            out.append({"id": step_id, "kind": step.get("kind"), "what": what})
        return out

    def cluster_rows(self) -> list[dict[str, Any]]:
        rows = []
        for name in ("blue", "green"):
            info = self.data.clusters.get(name) or {}
            rows.append({"name": name, "dsn": info.get("dsn", ""), "version": info.get("version", "?"),
                         "database": info.get("database", "")})
        return rows

    def stats_rows(self) -> list[dict[str, Any]]:
        rows = []
        for step in self.steps:
            stats = step.get("stats") or {}
            for i, cluster in enumerate(sorted(stats) or [""]):
                rows.append({"first": i == 0, "span": max(1, len(stats)), "step": step, "cluster": cluster,
                             "counts": [(stats.get(cluster) or {}).get(c) for c in COUNTERS]})
        return rows

    def totals(self) -> list[tuple[str, list[Any]]]:
        totals = self.report.get("totals") or {}
        return [(cluster, [totals[cluster].get(c) for c in COUNTERS]) for cluster in sorted(totals)]

    def copy_tables(self) -> list[dict[str, Any]]:
        out = []
        for step in self.by_kind.get("snapshot", []):
            for t in (step.get("facts") or {}).get("tables") or []:
                seconds = float(t.get("seconds") or 0.0)
                out.append({**t, "step": step["id"],
                            "mb_s": (t.get("bytes", 0) / 1e6 / seconds) if seconds else None})
        return out

    def copy_phases(self) -> list[dict[str, Any]]:
        """Each snapshot step's time by phase (``phases_s``), in the order the engine ran them."""
        return [{"step": s["id"], "seconds": (s.get("facts") or {}).get("seconds"),
                 "phases": list(((s.get("facts") or {}).get("phases_s") or {}).items())}
                for s in self.by_kind.get("snapshot", []) if (s.get("facts") or {}).get("phases_s")]

    def cleanup_rows(self) -> list[dict[str, Any]]:
        return [{**c, "step": s["id"]} for kind in ("migrate", "cleanup") for s in self.by_kind.get(kind, [])
                for c in (s.get("facts") or {}).get("cleanup") or []]

    def replay_rows(self) -> list[dict[str, Any]]:
        rows = []
        for s in self.by_kind.get("replay", []):
            for cap, c in ((s.get("facts") or {}).get("captures") or {}).items():
                rows.append({"step": s["id"], "capture": cap, **c})
        return rows

    def validation_rows(self) -> list[dict[str, Any]]:
        rows = []
        for s in self.by_kind.get("validate", []):
            facts = s.get("facts") or {}
            for r in facts.get("results") or s.get("checks") or []:
                rows.append({"step": s["id"], "passes": facts.get("passes"), **r})
        return rows

    def notes(self) -> list[dict[str, Any]]:
        return [{"at": iso(float(m[0])), "kind": m[1], "step": m[2], "text": m[3]}
                for m in sorted(self.series.marks, key=lambda m: float(m[0]))]

    def cutover(self) -> dict[str, Any] | None:
        cut = next((f for f in self.facts("cutover") if "pause_ms" in f), None)
        if cut is None:
            return None
        phases = cut.get("phases_ms") or {}
        inside = sum(float(v) for k, v in phases.items() if k != "switches")
        ordered = [(name, phases[name]) for name in [*PAUSE_PHASES, *sorted(set(phases) - set(PAUSE_PHASES))]
                   if name in phases]
        return {**cut, "phases": phases, "ordered": ordered, "inside_budget_ms": round(inside, 1),
                "replayed_total": sum((cut.get("replayed") or {}).values())}

    # -- times ---------------------------------------------------------------------------------

    def _pauses(self) -> list[tuple[float, float, str]]:
        """The cutover pauses: ``(start, end, label)``, from the phase marks and the measured pause."""
        cut = next((f for f in self.facts("cutover") if "pause_ms" in f), None)
        marks = sorted((m for m in self.series.marks if m[1] == "phase"
                        and self.data.kinds.get(str(m[2])) == "cutover"), key=lambda m: float(m[0]))
        out: list[tuple[float, float, str]] = []
        opened: float | None = None
        for at, _, _, phase in marks:
            if phase == "pausing":
                opened = float(at)
            elif opened is not None and phase == "reverted":
                out.append((opened, float(at), "pause (attempt put back on blue)"))
                opened = None
            elif opened is not None and phase == "done":
                end = opened + float(cut["pause_ms"]) / 1000 if cut else float(at)
                out.append((opened, end, f"pause {cut['pause_ms']:g} ms" if cut else "pause"))
                opened = None
        return out

    def _shapes(self, labelled: bool = True) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        shapes, notes = [], []
        visible = max(0.05, (self.end - self.start) * 0.003)  # a pause of a few ms on an hour-long axis
        for start, end, label in self.pauses:
            end = max(end, start + visible)
            shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": iso(start), "x1": iso(end),
                           "y0": 0, "y1": 1, "fillcolor": "rgba(220,38,38,0.25)", "line": {"width": 1,
                                                                                             "color": "#dc2626"}})
            if labelled:
                notes.append({"x": iso(start), "y": 1, "xref": "x", "yref": "paper", "text": label,
                              "showarrow": False, "yanchor": "bottom", "font": {"size": 10, "color": "#dc2626"}})
        return shapes, notes

    def _figure(self, fid: str, title: str, traces: list[dict[str, Any]], layout: dict[str, Any],
                note: str = "", time_axis: bool = True) -> None:
        if not traces:
            return
        base: dict[str, Any] = {"margin": {"l": 60, "r": 60, "t": 30, "b": 40}, "height": 320,
                                "legend": {"orientation": "h", "y": -0.2}, "hovermode": "x unified",
                                "paper_bgcolor": "white", "plot_bgcolor": "#fafafa"}
        if time_axis:
            shapes, annotations = self._shapes()
            margin = max(1.0, (self.end - self.start) * 0.01)  # every time chart on the run's own span
            base["xaxis"] = {"type": "date", "title": {"text": "UTC"},
                             "range": [iso(self.start - margin), iso(self.end + margin)]}
            base["shapes"] = shapes
            base["annotations"] = annotations
        for key, value in layout.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        self.figures.append({"id": fid, "title": title, "note": note, "data": traces, "layout": base})

    def _line(self, name: str, t: Sequence[float], values: Sequence[Value], how: str = "max", yaxis: str = "y",
              **extra: Any) -> dict[str, Any] | None:
        kept = [(a, v) for a, v in zip(t, values, strict=True) if v is not None]
        if not kept:
            return None
        tt, vv = timeseries.reduce_points([a for a, _ in kept], [v for _, v in kept], MAX_POINTS, how)
        return {"type": "scatter", "mode": "lines", "name": name, "x": [iso(x) for x in tt], "y": vv,
                "yaxis": yaxis, "connectgaps": False, **extra}

    def _named(self, group: str) -> Iterable[tuple[str, str, Points]]:
        for name, points in sorted(self.series.series.items()):
            g, subject, metric = split_name(name)
            if g == group:
                yield subject, metric, points

    def _get(self, name: str) -> Points:
        return self.series.series.get(name) or Points()

    # -- charts --------------------------------------------------------------------------------

    def build(self) -> None:
        self._timeline()
        self._cutover_chart()
        self._client_chart()
        self._copy_chart()
        self._capture_chart()
        self._activity_chart()
        self._locks_chart()
        self._progress_chart()

    def _timeline(self) -> None:
        spans = self._spans()
        order = list(self.data.kinds)
        traces = []
        for kind in ("apply", "verify", "rollback", "failed", "running"):
            mine = [s for s in spans if s[3] == kind]
            if not mine:
                continue
            traces.append({"type": "bar", "orientation": "h", "name": kind, "y": [s[0] for s in mine],
                           "base": [iso(s[1]) for s in mine], "x": [max(1.0, (s[2] - s[1]) * 1000) for s in mine],
                           "marker": {"color": COLORS[kind]}, "hovertext": [s[4] for s in mine],
                           "hoverinfo": "text"})
        marks = self._action_marks()
        for mark, symbol, color in (("retry", "triangle-up", "#f97316"), ("failed", "x", "#dc2626")):
            points = [m for m in marks if m[2] == mark]
            if points:
                marker: dict[str, Any] = {"symbol": symbol, "size": 11, "color": color}
                traces.append({"type": "scatter", "mode": "markers", "name": "lock retries" if mark == "retry"
                               else "failed action", "x": [iso(m[0]) for m in points], "y": [m[1] for m in points],
                               "marker": marker, "hovertext": [m[3] for m in points], "hoverinfo": "text"})
        height = max(220, 36 * len(order) + 80)
        self._figure("timeline", "Steps", traces, {
            "barmode": "overlay", "height": height, "hovermode": "closest",
            "yaxis": {"categoryorder": "array", "categoryarray": order, "autorange": "reversed",
                      "type": "category", "automargin": True}},
            note="apply, then verify, per attempt; rollbacks in orange; a red bar or cross is a failure, an orange "
                 "triangle an action that waited for locks and retried; the red band is the cutover's pause")

    def _spans(self) -> list[tuple[str, float, float, str, str]]:
        """``(step, start, end, kind, hover)`` of every step phase in the journal."""
        spans: list[tuple[str, float, float, str, str]] = []
        opened: dict[tuple[str, str], float] = {}
        applied_at: dict[str, float] = {}
        for e in self.data.events:
            if e["action_id"] is not None:
                continue
            step, phase, status, at = e["step_id"], e["phase"], e["status"], _epoch(e["at"])
            error = secrets.redact(str((e["detail"] or {}).get("error") or ""))[:300]
            if status == "started":
                opened[(step, phase)] = at
                continue
            start = opened.pop((step, phase), None)
            if phase == "verify":
                start = applied_at.pop(step, at)
            if start is None:
                start = at
            kind = "failed" if status == "failed" else phase
            hover = f"{step} {phase} {status}: {at - start:.2f}s" + (f"<br>{error}" if error else "")
            spans.append((step, start, at, kind, hover))
            if phase == "apply" and status == "done":
                applied_at[step] = at
        running = self.data.run.status == "running"
        stopped = self.data.run.finished_at or self.data.run.updated_at
        end = self.data.generated if running or stopped is None else _epoch(stopped)
        for (step, phase), start in opened.items():
            spans.append((step, start, end, "running" if running else "failed",
                          f"{step} {phase} " + ("still running" if running else "never finished (interrupted)")))
        return spans

    def _action_marks(self) -> list[tuple[float, str, str, str]]:
        out = []
        for e in self.data.events:
            if e["action_id"] is None:
                continue
            detail = e["detail"] or {}
            at = _epoch(e["at"])
            if e["status"] == "failed":
                out.append((at, e["step_id"], "failed",
                            secrets.redact(f"{e['action_id']}: {str(detail.get('error', ''))[:300]}")))
            elif e["status"] == "done" and int(detail.get("attempts", 1) or 1) > 1:
                out.append((at, e["step_id"], "retry",
                            f"{e['action_id']}: {int(detail['attempts']) - 1} lock retries"))
        return out

    def _cutover_chart(self) -> None:
        cut = self.cutover()
        if cut is None:
            return
        phases = cut["phases"]
        traces = [{"type": "bar", "orientation": "h", "name": name, "y": ["pause"], "x": [phases[name]],
                   "hovertemplate": f"{name}: %{{x}} ms<extra></extra>"}
                  for name in [*PAUSE_PHASES, *[p for p in phases if p not in PAUSE_PHASES]] if name in phases]
        budget = float(cut.get("budget_ms") or 0)
        self._figure("cutover", "Cutover pause by phase", traces, {
            "barmode": "stack", "height": 200, "hovermode": "closest",
            "xaxis": {"title": {"text": "ms"}, "range": [0, max(budget, float(cut["pause_ms"])) * 1.05]},
            "shapes": [{"type": "line", "x0": budget, "x1": budget, "y0": 0, "y1": 1, "yref": "paper",
                        "line": {"color": "#dc2626", "dash": "dash", "width": 2}}],
            "annotations": [{"x": budget, "y": 1, "yref": "paper", "text": f"budget {budget:g} ms",
                             "showarrow": False, "yanchor": "bottom", "font": {"color": "#dc2626"}}]},
            note="PAUSE, fence, drain and sequences count against the budget; the switches run after it "
                 "(all-or-nothing, never cut short)", time_axis=False)

    def _client_chart(self) -> None:
        def line(label: str, metric: str, **extra: Any) -> dict[str, Any] | None:
            points = self._get(f"client/pgbench/{metric}")
            return self._line(label, points.t, points.v, **extra)

        traces = [x for x in (
            line("tps", "tps", how="mean", line={"color": "#16a34a"}),
            line("latency avg (ms)", "latency_avg_ms", how="max", yaxis="y2", line={"color": "#2563eb"}),
            line("latency max (ms)", "latency_max_ms", how="max", yaxis="y2", line={"color": "#9333ea", "dash": "dot"}),
            line("failed", "failed", how="max", line={"color": "#dc2626"}),
        ) if x is not None]
        self._figure("client", "Clients: pgbench through PgBouncer, per second", traces,
                     _two_axes("transactions/s", "ms"),
                     note="from pgbench's per-transaction logs; a transaction counts in the second it completed")

    def _copy_chart(self) -> None:
        traces = []
        for table, metric, points in self._named("copy"):
            if metric != "bytes":
                continue
            mb = [None if v is None else v / 1e6 for v in timeseries.rate(points.t, points.v)]
            line = self._line(table, points.t, mb, how="mean")
            if line is not None:
                traces.append(line)
        self._figure("copy", "Copy throughput per table (MB/s into the target)", traces, {
            "yaxis": {"title": {"text": "MB/s"}, "rangemode": "tozero"}},
            note="COPY FROM in flight on the target (pg_stat_progress_copy), sampled about once a second")

    def _capture_chart(self) -> None:
        traces = []
        for capture, metric, points in self._named("capture"):
            if metric == "pending":
                line = self._line(f"{capture}: pending events", points.t, points.v)
            elif metric == "lag_s":
                line = self._line(f"{capture}: lag (s)", points.t, points.v, yaxis="y2", line={"dash": "dot"})
            else:
                continue
            if line is not None:
                traces.append(line)
        for slot, metric, points in self._named("slot"):
            if metric == "pending_bytes":
                line = self._line(f"slot {slot}: WAL not confirmed (MB)", points.t,
                                  [v / 1e6 for v in points.v], yaxis="y3")
                if line is not None:
                    traces.append(line)
        layout = _two_axes("events", "seconds")
        if any(tr["yaxis"] == "y3" for tr in traces):
            layout["yaxis3"] = {"title": {"text": "MB"}, "overlaying": "y", "side": "right", "anchor": "free",
                                "position": 0.97, "rangemode": "tozero"}
        self._figure("capture", "Capture backlog and replay lag", traces, layout,
                     note="pending: events committed on the captured cluster and not replayed yet (those the copy "
                          "already had excluded); lag: how long ago the oldest of them was captured")

    def _activity_chart(self) -> None:
        traces = []
        colors = {"blue": "#2563eb", "green": "#16a34a"}
        for cluster in ("blue", "green"):
            commit_points = self._get(f"db/{cluster}/xact_commit")
            if not commit_points.t:
                continue
            t = commit_points.t  # every db/<cluster>/ series is sampled by the same query: the same ticks

            def per_second(metric: str, cluster: str = cluster, t: list[float] = t) -> list[Value]:
                points = self._get(f"db/{cluster}/{metric}")
                return timeseries.rate(t, points.v) if points.t == t else [None] * len(t)

            commits = per_second("xact_commit")
            written: list[Value] = [None] * len(t)
            for metric in ("tup_inserted", "tup_updated", "tup_deleted"):
                for i, v in enumerate(per_second(metric)):
                    if v is not None:
                        written[i] = (written[i] or 0) + v
            temp = [None if v is None else v / 1e6 for v in per_second("temp_bytes")]
            rollbacks = per_second("xact_rollback")
            color = colors[cluster]
            for line in (self._line(f"{cluster} commits/s", t, commits, how="mean", line={"color": color}),
                         self._line(f"{cluster} rows written/s", t, written, how="mean", yaxis="y2",
                                    line={"color": color, "dash": "dot"}),
                         self._line(f"{cluster} temp MB/s", t, temp, how="mean", yaxis="y2",
                                    line={"color": color, "dash": "dash"}),
                         self._line(f"{cluster} rollbacks/s", t, rollbacks, how="mean",
                                    line={"color": "#dc2626", "dash": "dot"})):
                if line is not None:
                    traces.append(line)
        self._figure("activity", "Cluster activity (pg_stat_database of the plan's database)", traces,
                     _two_axes("transactions/s", "rows/s, MB/s"),
                     note="database-wide: client traffic and bluegreen's own work together, as in the table below")

    def _locks_chart(self) -> None:
        traces = []
        for cluster, metric, points in self._named("locks"):
            if not any(points.v):
                continue
            label = "bluegreen waiting for a lock" if metric == "bluegreen_waiting" else "clients waiting for a lock"
            line = self._line(f"{cluster}: {label}", points.t, points.v, line={"shape": "hv"})
            if line is not None:
                traces.append(line)
        self._figure("locks", "Lock waits (sessions waiting for a heavyweight lock)", traces, {
            "yaxis": {"title": {"text": "sessions"}, "rangemode": "tozero", "dtick": 1}},
            note="lock retries of actions are marked on the step timeline")

    def _progress_chart(self) -> None:
        traces = []
        for subject, unit, points in self._named("progress"):
            step = subject.partition(":")[0]
            if self.data.kinds.get(step) in ("snapshot", "replay", "cutover"):
                continue  # drawn above, from the clusters themselves
            line = self._line(f"{subject} ({unit})", points.t, points.v, line={"shape": "hv"})
            if line is not None:
                traces.append(line)
        self._figure("progress", "Step progress (TTL, cleanup, checks...)", traces, {
            "yaxis": {"title": {"text": "done"}, "rangemode": "tozero"}},
            note="what the steps reported as they went (rows extended, batches cleaned, passes)")


def _two_axes(left: str, right: str) -> dict[str, Any]:
    """A plotly layout with a y axis on each side, both from zero: ``left`` for ``y`` traces, ``right`` for ``y2``."""
    return {"yaxis": {"title": {"text": left}, "rangemode": "tozero"},
            "yaxis2": {"title": {"text": right}, "overlaying": "y", "side": "right", "rangemode": "tozero"}}


def render(data: RunData) -> str:
    """The page of a run: one HTML document with everything inlined."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    page = _Page(data)
    page.build()
    env = Environment(loader=PackageLoader("orchestrator", "templates"), autoescape=select_autoescape(["j2", "html"]))
    env.filters["num"] = _num
    env.filters["ms"] = lambda v: "" if v is None else f"{float(v):,.1f}"
    env.filters["bytes"] = _bytes
    run = data.run
    started = _epoch(run.started_at)
    finished = _epoch(run.finished_at) if run.finished_at else None
    html = env.get_template("report.html.j2").render(
        page=page, run=run, report=data.report, metrics=page.metrics(), failed=page.failed_step(),
        started=iso(started), finished=iso(finished) if finished else None,
        duration=(finished or (_epoch(run.updated_at) if run.status != "running" and run.updated_at
                               else data.generated)) - started,
        generated=iso(data.generated),
        counters=[LABELS.get(c, c) for c in COUNTERS],
        figures_json=_script_json(page.figures), plotly_js=plotly_js().replace("</script", "<\\/script"))
    return secrets.redact(html)


def _num(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)


def _bytes(value: Any) -> str:
    if value is None:
        return ""
    n = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return str(value)
