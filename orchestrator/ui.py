"""Everything the operator sees: live progress, tables, the report, errors. Only the CLI imports this."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.status import Status
from rich.table import Table

from .actions import Action, ActionResult, action_target
from .logical import format_bytes
from .report import COUNTERS, RunReport
from .reporter import Reporter
from .secrets import redact


def make_console(stderr: bool = False) -> Console:
    """A console; when output is not a terminal (CI logs, pipes) it is wide enough for the report."""
    console = Console(stderr=stderr, highlight=False, soft_wrap=False, emoji=False)
    if not console.is_terminal:
        console.width = max(console.width, 150)
    return console


class RichReporter(Reporter):
    """Print each step and action as it happens, with a spinner on the running action."""

    def __init__(self, console: Console, show_sql: bool = False) -> None:
        self.console = console
        self.show_sql = show_sql
        self._status: Status | None = None
        self._t0 = time.monotonic()
        self._last_progress: dict[tuple[str, str], float] = {}

    def _line(self, text: str) -> None:
        elapsed = time.monotonic() - self._t0
        self.console.print(f"[dim]{elapsed:7.1f}s[/dim] {redact(text)}")

    def _spin(self, text: str | None) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if text is not None and self.console.is_terminal:
            self._status = self.console.status(redact(text))
            self._status.start()

    def run_started(self, plan: str, run_id: int | None, mode: str, resumed: bool) -> None:
        what = {"run": "running", "dry-run": "dry run of", "rollback": "rolling back"}.get(mode, mode)
        extra = f" (run {run_id}{', resumed' if resumed else ''})" if run_id else ""
        self._line(f"[bold]{what} plan {escape(plan)}[/bold]{extra}")

    def step_started(self, step_id: str, kind: str, phase: str) -> None:
        if phase != "verify":
            self._line(f"[bold cyan]{escape(step_id)}[/bold cyan] [dim]{kind}[/dim] {phase}")

    def step_skipped(self, step_id: str, reason: str) -> None:
        self._line(f"[bold cyan]{escape(step_id)}[/bold cyan] [green]skip[/green] [dim]{escape(reason)}[/dim]")

    def action_started(self, step_id: str, action: Action) -> None:
        self._spin(f"{step_id}: {action.id} on {action_target(action)}")

    def action_finished(self, step_id: str, action: Action, result: ActionResult | None, skipped: str = "") -> None:
        self._spin(None)
        where = action_target(action)
        if result is None:
            self._line(f"  [green]skip[/green] {escape(action.id)} [dim]({escape(skipped)})[/dim]")
            return
        if result.rendered:
            self._line(f"  [yellow]plan[/yellow] {escape(action.id)} [dim]on {where}[/dim]")
            for line in result.rendered.splitlines():
                self.console.print(f"      {escape(redact(line))}", soft_wrap=True)
            return
        retries = f", {result.attempts - 1} lock retries" if result.attempts > 1 else ""
        rows = f", {result.rowcount} rows" if result.rowcount else ""
        self._line(f"  [green]done[/green] {escape(action.id)} [dim]on {where}, "
                   f"{result.seconds:.2f}s{rows}{retries}[/dim]")
        if result.output and self.show_sql:
            for line in result.output.splitlines()[-5:]:
                self.console.print(f"      [dim]{escape(line)}[/dim]")

    def step_finished(self, step_id: str, phase: str, ok: bool, detail: str = "") -> None:
        self._spin(None)
        if not ok:
            self._line(f"[bold red]{escape(step_id)} {phase} failed[/bold red] {escape(detail)}")

    def note(self, message: str) -> None:
        self._line(f"[yellow]{escape(message)}[/yellow]")

    def progress(self, step_id: str, task: str, done: float, total: float | None, unit: str) -> None:
        """Spinner text on a terminal; otherwise a line every 5 s per task, and at the end."""
        text = f"{step_id}: {task} {done:,.0f}" + (f"/{total:,.0f}" if total else "") + (f" {unit}" if unit else "")
        if total:
            text += f" ({100 * done / total:.0f}%)"
        if self._status is not None:
            self._status.update(redact(text))
            return
        now = time.monotonic()
        key = (step_id, task)
        finished = total is not None and done >= total
        if finished or now - self._last_progress.get(key, 0.0) >= 5.0:
            self._last_progress[key] = now
            self._line(f"  [dim]{escape(text)}[/dim]")


def print_report(console: Console, report: RunReport) -> None:
    """The end-of-run table: per step, duration and the counters it moved on each cluster."""
    colors = {"done": "green", "failed": "red", "rolled_back": "yellow", "rendered": "yellow",
              "rollback_failed": "red"}
    title = (f"bluegreen {report.mode}: plan {report.plan}"
             + (f", run {report.run_id}" if report.run_id else "")
             + f": [{colors.get(report.status, 'white')}]{report.status}[/] in {report.seconds:.1f}s")
    if report.mode == "dry-run":
        console.print(f"{title}: {sum(s.actions_run for s in report.steps)} actions rendered, nothing written")
        return
    table = Table(title=title, title_justify="left")
    for col in ("step", "kind", "status", "seconds", "actions", "cluster"):
        table.add_column(col, justify="right" if col in ("seconds", "actions") else "left")
    for col in COUNTERS:
        table.add_column(_LABELS[col], justify="right")
    for step in report.steps:
        clusters = sorted(step.stats) or [""]
        for i, cluster in enumerate(clusters):
            counters = step.stats.get(cluster, {})
            first = i == 0
            table.add_row(
                step.id if first else "", step.kind if first else "",
                f"[{colors.get(step.status, 'white')}]{step.status}[/]" if first else "",
                f"{step.seconds:.2f}" if first else "",
                (f"{step.actions_run}" + (f" (+{step.actions_skipped} skipped)" if step.actions_skipped else ""))
                if first else "",
                cluster, *(_fmt(counters.get(c)) for c in COUNTERS))
    totals = report.totals()
    for cluster in sorted(totals):
        table.add_row("[bold]total[/bold]", "", "", f"{report.seconds:.2f}", "", cluster,
                      *(_fmt(totals[cluster][c]) for c in COUNTERS), end_section=False)
    console.print(table)
    for step in report.steps:
        for check in step.checks:
            if check.get("detail"):
                mark = "[green]ok[/green]" if check.get("ok") else "[red]FAILED[/red]"
                console.print(f"{mark} {escape(step.id)}: {escape(str(check.get('name')))}: "
                              f"{escape(redact(str(check['detail'])))}", soft_wrap=True)
    if report.rollback:
        console.print(f"rolled back: {', '.join(report.rollback)}")
    console.print("[dim]counters: pg_stat_database deltas of the plan's database, including concurrent "
                  "traffic[/dim]")


_LABELS = {"tup_inserted": "inserted", "tup_updated": "updated", "tup_deleted": "deleted",
           "temp_bytes": "temp bytes", "xact_commit": "commits"}


def _fmt(value: int | None) -> str:
    if value is None:
        return ""
    return f"{value:,}"


def print_status(console: Console, status: dict[str, Any]) -> None:
    run = status["run"]
    if run is None:
        console.print(f"plan {status['plan']}: no run recorded")
    else:
        _print_run(console, status)
    slots = status.get("slots") or []
    if slots:
        table = Table(title="replication slots (bluegreen_*)")
        for col in ("cluster", "slot", "database", "active", "retained WAL", "owner"):
            table.add_column(col)
        for slot in slots:
            retained = slot["retained_wal_bytes"]
            table.add_row(slot["cluster"], slot["slot"], slot["database"], "yes" if slot["active"] else "no",
                          format_bytes(retained) if retained is not None else "-", escape(slot["owner"]))
        console.print(table)


def _print_run(console: Console, status: dict[str, Any]) -> None:
    run = status["run"]
    console.print(f"plan {status['plan']}: run {run['run_id']} [bold]{run['status']}[/bold] "
                  f"(attempt {run['attempt']}, started {run['started_at']}"
                  + (f", finished {run['finished_at']}" if run["finished_at"] else "") + ")")
    if run["error"]:
        console.print(f"[red]{escape(redact(run['error']))}[/red]")
    table = Table()
    for col in ("step", "kind", "apply", "verify", "rollback", "actions done", "seconds"):
        table.add_column(col)
    for s in status["steps"]:
        table.add_row(s["id"], s["kind"], s["apply"], s["verify"], s["rollback"], str(s["actions_done"]),
                      f"{s['seconds']:.2f}" if s["seconds"] is not None else "")
    console.print(table)


def print_error(console: Console, message: str) -> None:
    console.print(f"[bold red]error:[/bold red] {escape(redact(message))}", soft_wrap=True)


def print_json(obj: Any) -> None:
    sys.stdout.write(redact(json.dumps(obj, indent=2, default=str)) + "\n")
