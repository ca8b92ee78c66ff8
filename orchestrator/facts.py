"""The numbers a step leaves behind, for the report: rows copied, events replayed, the pause, quarantined rows.

``collect`` reads what the step recorded in the run state and in its own ``bluegreen`` tables on the
target (read-only, after the step); the JSON report (``steps[].facts``) and the HTML page show the same
dict. A fact that cannot be read is left out (and logged): the report never fails a run.

    snapshot      {"method", "rows", "bytes", "tables": [{"table", "rows", "bytes", "seconds"}], "seconds",
                   "phases_s": {phase: seconds} (schema, data with the indexes built meanwhile, ...)}
    replay        {"events", "quarantined_events", "captures": {id: {"applied", "rounds", "lag_events", ...}}}
    cutover       {"pause_ms", "budget_ms", "phases_ms": {phase: ms}, "attempts", "replayed": {capture: n},
                   "reverse_replayed" (after a rollback)}
    migrate, cleanup  {"cleanup": [{"constraint", "table", "policy", "rows", "cascade"}], "quarantined", "deleted"}
    validate      {"passes", "results": [{"name", "ok", "detail"}]}
    extend_ttl, restore_ttl, check_queries   the step's ``<id>.result``
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .steps import Step, StepContext

log = logging.getLogger(__name__)


def collect(step: Step[Any], ctx: StepContext) -> dict[str, Any]:
    """The step's facts now (an empty dict for kinds that have none, or when nothing can be read)."""
    collector = _COLLECTORS.get(step.kind)
    if collector is None or not ctx.live or ctx.run_id is None:
        return {}
    try:
        return collector(step, ctx)
    except Exception as exc:
        log.info("facts of step %s not collected: %s", step.id, exc)
        return {}


def _has(conn: Any, table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])


def _snapshot(step: Step[Any], ctx: StepContext) -> dict[str, Any]:
    spec = step.spec
    method = str(getattr(spec, "method", "copy"))
    out: dict[str, Any] = {"method": method}
    with ctx.connect(str(getattr(spec, "to", "green"))) as conn:
        if not _has(conn, "bluegreen.snapshot_tables"):
            return out
        rows = conn.execute(
            "SELECT relation, sum(rows)::bigint, sum(bytes)::bigint, max(seconds), bool_and(done)"
            " FROM bluegreen.snapshot_tables WHERE run_id = %s AND step_id = %s GROUP BY relation"
            " ORDER BY sum(bytes) DESC NULLS LAST, relation", (ctx.run_id, step.id)).fetchall()
    tables = [{"table": r[0], "rows": int(r[1] or 0), "bytes": int(r[2] or 0),
               "seconds": round(float(r[3] or 0.0), 3)} for r in rows if r[4]]
    if tables:
        out.update(tables=tables, rows=sum(t["rows"] for t in tables), bytes=sum(t["bytes"] for t in tables))
    copied = (ctx.get(f"snapshot:{step.id}") or {}).get("copied") or {}
    if copied.get("phases"):
        out["seconds"] = copied.get("seconds")
        out["phases_s"] = {str(name): seconds for name, seconds in copied["phases"].items()}
    return out


def _capture_ids(step: Step[Any], ctx: StepContext) -> list[str]:
    ids = getattr(step.spec, "captures", None)
    if ids is not None:
        return list(ids)
    return [s.id for s in ctx.loaded.plan.steps if getattr(s, "kind", None) == "capture"]


def _replay(step: Step[Any], ctx: StepContext) -> dict[str, Any]:
    captures: dict[str, Any] = {}
    for cap in _capture_ids(step, ctx):
        state = ctx.get(f"replay:{step.id}:{cap}")
        if isinstance(state, dict):
            captures[cap] = state
    return {"events": sum(int(c.get("applied", 0)) for c in captures.values()),
            "quarantined_events": sum(int(c.get("quarantined", 0)) for c in captures.values()),
            "captures": captures}


def _cutover(step: Step[Any], ctx: StepContext) -> dict[str, Any]:
    spec = step.spec
    state = ctx.get(f"cutover:{step.id}") or {}
    out: dict[str, Any] = {"budget_ms": round(spec.pause_budget.total_seconds() * 1000, 1),
                           "phase": state.get("phase")}
    if "pause_ms" in state:
        out["pause_ms"] = state["pause_ms"]
        out["phases_ms"] = {str(name): ms for name, ms in state.get("phases_ms") or []}
        out["attempts"] = state.get("attempts", 1)
    if "reverse_replayed" in state:
        out["reverse_replayed"] = state["reverse_replayed"]
    drains = list(getattr(spec, "drain", None) or [])
    if drains and "pause_ms" in state:
        out["replayed"] = _applied(ctx, drains)
    return out


def _applied(ctx: StepContext, capture_ids: list[str]) -> dict[str, int]:
    """Events applied so far per capture (catch-up, the cutover's catch-up and drain), from the target."""
    targets: dict[str, list[str]] = {}
    for spec in ctx.loaded.plan.steps:
        if spec.id in capture_ids:
            source = str(getattr(spec, "on", "blue"))
            targets.setdefault("green" if source == "blue" else "blue", []).append(spec.id)
    out: dict[str, int] = {}
    for target, ids in targets.items():
        with ctx.connect(target) as conn:
            if not _has(conn, "bluegreen.replay_progress"):
                continue
            for capture, applied in conn.execute(
                    "SELECT capture, applied FROM bluegreen.replay_progress WHERE run_id = %s AND capture = ANY(%s)",
                    (ctx.run_id, ids)).fetchall():
                out[str(capture)] = int(applied)
    return out


def _cleanup(step: Step[Any], ctx: StepContext) -> dict[str, Any]:
    target = str(getattr(step.spec, "on", "green"))
    with ctx.connect(target) as conn:
        if not _has(conn, "bluegreen.cleanup_log"):
            return {}
        rows = conn.execute(
            "SELECT constraint_name, table_name, policy, sum(rows)::bigint, bool_or(cascade_of IS NOT NULL)"
            " FROM bluegreen.cleanup_log WHERE run_id = %s AND step_id = %s GROUP BY 1, 2, 3 ORDER BY min(id)",
            (ctx.run_id, step.id)).fetchall()
    cleaned = [{"constraint": r[0], "table": r[1], "policy": r[2], "rows": int(r[3] or 0), "cascade": bool(r[4])}
               for r in rows]
    return {"cleanup": cleaned,
            "quarantined": sum(c["rows"] for c in cleaned if c["policy"] == "quarantine"),
            "deleted": sum(c["rows"] for c in cleaned if c["policy"] == "delete")}


def _state(key: str) -> Callable[[Step[Any], StepContext], dict[str, Any]]:
    def read(step: Step[Any], ctx: StepContext) -> dict[str, Any]:
        value = ctx.get(key.format(id=step.id))
        return dict(value) if isinstance(value, dict) else {}
    return read


_COLLECTORS: dict[str, Callable[[Step[Any], StepContext], dict[str, Any]]] = {
    "snapshot": _snapshot,
    "replay": _replay,
    "cutover": _cutover,
    "migrate": _cleanup,
    "cleanup": _cleanup,
    "validate": _state("validate:{id}"),
    "extend_ttl": _state("{id}.result"),
    "restore_ttl": _state("{id}.result"),
    "check_queries": _state("{id}.result"),
}
