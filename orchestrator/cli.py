"""The ``bluegreen`` command: parse, call the library, render. The one place errors become exit codes."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from . import secrets, ui
from .errors import BluegreenError, PlanError, StepFailed, ValidationFailed
from .plan import load_plan, plan_json_schema
from .report import RunReport
from .runner import Runner, RunOptions

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Zero-downtime blue-green migrations for PostgreSQL, driven by a YAML runbook.")

PlanArg = Annotated[Path, typer.Argument(help="the plan file (YAML)", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object instead of tables")]
ReportOpt = Annotated[Path | None, typer.Option(
    "--report", help="also write the report to FILE: a page if it ends in .html, else JSON")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="log debug details")]

T = TypeVar("T")


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, BluegreenError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 1


def guard(as_json: bool, fn: Callable[[], T], runner: Runner | None = None,
           report_file: Path | None = None) -> T:
    """Run ``fn``; turn a library error into a message (or JSON) and its exit code.

    When ``runner`` got as far as a report, the failed run's report is still written to ``report_file``
    and included in the JSON: a failed run is when an operator needs it most.
    """
    console = ui.make_console(stderr=True)
    try:
        return fn()
    except (BluegreenError, KeyboardInterrupt) as exc:
        report = runner.last_report if runner is not None else None
        if report is not None and report_file is not None and runner is not None:
            _write_report(runner, report, report_file)
        message = "interrupted; run the same plan again to resume" if isinstance(exc, KeyboardInterrupt) \
            else str(exc)
        if as_json:
            payload: dict[str, Any] = {"ok": False, "exit_code": _exit_code(exc), "error": message,
                                       "error_type": type(exc).__name__}
            if isinstance(exc, PlanError):
                payload["problems"] = [asdict(p) for p in exc.problems]
            if report is not None:
                payload["report"] = secrets.redact_obj(report.to_dict())
            ui.print_json(payload)
        else:
            ui.print_error(console, message)
            if isinstance(exc, StepFailed | ValidationFailed):
                console.print("the run was rolled back" if exc.rolled_back
                              else "fix the cause and run the same plan again to resume from the failed step")
        raise typer.Exit(_exit_code(exc)) from None


class _RedactingFormatter(logging.Formatter):
    """Mask secrets in every log line, tracebacks included."""

    def format(self, record: logging.LogRecord) -> str:
        return secrets.redact(super().format(record))


def _logging(verbose: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, handlers=[handler], force=True)


def _emit_report(report: RunReport, as_json: bool, report_file: Path | None = None,
                 extra: dict[str, Any] | None = None, runner: Runner | None = None) -> None:
    data = secrets.redact_obj({**report.to_dict(), **(extra or {})})
    if report_file is not None and runner is not None:
        _write_report(runner, report, report_file)
    if as_json:
        ui.print_json({"ok": report.status in ("done", "rendered", "rolled_back"), **data})
    else:
        console = ui.make_console()
        if report.error and report.status == "done":
            console.print(report.error)
        ui.print_report(console, report)


def _is_page(path: Path) -> bool:
    return path.suffix.lower() in (".html", ".htm")


def _write_report(runner: Runner, report: RunReport, path: Path) -> None:
    """The report as JSON, or as the run's page (``.html``: drawn from the journal, which has its time series)."""
    if _is_page(path):
        if report.run_id is None:
            return  # a dry run journals nothing: there is no run to draw
        import psycopg

        from . import htmlreport

        console = ui.make_console(stderr=True)
        try:
            htmlreport.write(runner.loaded, path, report.run_id)
        except (BluegreenError, psycopg.Error, OSError) as exc:  # the run's own outcome must still show
            ui.print_error(console, f"report page not written: {exc}")
            return
        console.print(f"report page: {path.resolve()}", markup=False)
        return
    data = secrets.redact_obj(report.to_dict())
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


@app.command()
def run(plan: PlanArg,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="render every action; write nothing")] = False,
        offline: Annotated[bool, typer.Option("--offline", help="with --dry-run: connect to nothing")] = False,
        restart: Annotated[bool, typer.Option("--restart", help="abandon the unfinished run and start over")] = False,
        as_json: JsonOpt = False, report_file: ReportOpt = None, verbose: VerboseOpt = False) -> None:
    """Run a plan; re-running an interrupted run of the same plan resumes it."""
    _logging(verbose)

    runner = guard(as_json, lambda: Runner(load_plan(plan), ui.RichReporter(ui.make_console(stderr=True))))
    options = RunOptions(dry_run=dry_run, offline=offline, restart=restart)
    report = guard(as_json, lambda: runner.run(options), runner, report_file)
    _emit_report(report, as_json, report_file, runner=runner)


@app.command()
def validate(plan: PlanArg, as_json: JsonOpt = False) -> None:
    """Check a plan file only: syntax, keys, types, variables, referenced files and SQL."""
    loaded = guard(as_json, lambda: load_plan(plan))
    if as_json:
        ui.print_json({"ok": True, "plan": loaded.plan.name, "steps": len(loaded.plan.steps),
                       "sha256": loaded.sha256})
    else:
        ui.make_console().print(f"{plan}: ok, plan {loaded.plan.name!r} with {len(loaded.plan.steps)} steps")


@app.command()
def status(plan: PlanArg, as_json: JsonOpt = False) -> None:
    """Show the journal of the plan's latest run: steps, states, timings."""
    result = guard(as_json, lambda: Runner(load_plan(plan)).status())
    if as_json:
        ui.print_json(result)
    else:
        ui.print_status(ui.make_console(), result)


@app.command()
def rollback(plan: PlanArg, as_json: JsonOpt = False, report_file: ReportOpt = None,
             verbose: VerboseOpt = False) -> None:
    """Undo the latest run's completed steps, in reverse order."""
    _logging(verbose)
    runner = guard(as_json, lambda: Runner(load_plan(plan), ui.RichReporter(ui.make_console(stderr=True))))
    report = guard(as_json, runner.rollback, runner, report_file)
    _emit_report(report, as_json, report_file, runner=runner)


@app.command()
def report(plan: PlanArg,
           html: Annotated[Path | None, typer.Option("--html", help="write the run's page to FILE")] = None,
           run_id: Annotated[int | None, typer.Option("--run", help="which run (default: the latest)")] = None,
           as_json: JsonOpt = False) -> None:
    """The report of a run from the journal, during the run or after it: a page (--html) or JSON."""
    from . import htmlreport

    loaded = guard(as_json, lambda: load_plan(plan))
    data = guard(as_json, lambda: htmlreport.load(loaded, run_id))
    if html is not None:
        guard(as_json, lambda: html.write_text(htmlreport.render(data), encoding="utf-8"))
    if as_json:
        ui.print_json({"ok": True, "run_id": data.run.run_id, "status": data.run.status,
                       "page": str(html.resolve()) if html else None, "report": data.report})
    elif html is not None:
        ui.make_console().print(f"report page: {html.resolve()} (run {data.run.run_id}, {data.run.status},"
                                f" {html.stat().st_size / 1e6:.1f} MB)", markup=False)
    else:
        ui.print_report(ui.make_console(), RunReport.from_dict(data.report))


@app.command()
def abort(plan: PlanArg, as_json: JsonOpt = False, verbose: VerboseOpt = False) -> None:
    """End the unfinished run where it stands: drop its replication slots and publications, mark it abandoned.

    Nothing else is undone (use rollback for that); slots that crashed runs of this plan left behind go too.
    """
    _logging(verbose)
    runner = guard(as_json, lambda: Runner(load_plan(plan), ui.RichReporter(ui.make_console(stderr=True))))
    report = guard(as_json, runner.abort, runner)
    if as_json:
        ui.print_json({"ok": True, **secrets.redact_obj(report.to_dict())})
    else:
        ui.make_console().print(f"plan {report.plan}: " + (f"run {report.run_id} abandoned" if report.run_id
                                                           else "no unfinished run") + "; slots released")


@app.command()
def schema(out: Annotated[Path | None, typer.Option("--out", help="write to FILE instead of stdout")] = None
           ) -> None:
    """Write the plan file's JSON Schema (for editor completion and validation)."""
    text = json.dumps(plan_json_schema(), indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")


@app.command()
def demo(keep: Annotated[bool, typer.Option("--keep", help="leave the servers and files for a look")] = False,
         duration: Annotated[int, typer.Option(help="seconds of pgbench traffic at least")] = 10,
         fail_validation: Annotated[bool, typer.Option(
             "--fail-validation", help="make a validation check fail, to show a rollback")] = False,
         html: Annotated[Path | None, typer.Option("--html", help="write the run's page there")] = Path(
             "bluegreen-demo.html"),
         as_json: JsonOpt = False) -> None:
    """Start local blue (PG 15), green (PG 18), PgBouncer and traffic; run plans/demo.yaml; print the report."""
    from .demo import run_demo

    console = ui.make_console(stderr=True)
    result = guard(as_json, lambda: run_demo(ui.RichReporter(console), console_note=console.print,
                                              keep=keep, traffic_seconds=duration,
                                              fail_validation=fail_validation, page=html))
    _emit_report(result.report, as_json, None, {"traffic": traffic_summary(result.traffic),
                                                "page": str(result.page) if result.page else None})
    if not as_json:
        ui.make_console().print(result.summary)
        if result.page is not None:
            ui.make_console().print(f"report page: {result.page}", markup=False)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def traffic_summary(traffic: Any) -> dict[str, Any] | None:
    """A pgbench result for the JSON output: its numbers, not its output files or per-second series."""
    if traffic is None:
        return None
    data = asdict(traffic)
    for key in ("stdout", "stderr", "per_second"):
        data.pop(key, None)
    return data


def main() -> None:
    app()


from . import commands  # noqa: E402,F401  (registers the command modules on app)
