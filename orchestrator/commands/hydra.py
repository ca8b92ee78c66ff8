"""``bluegreen hydra-data`` (load Hydra v1.11.10 and a population into a database) and ``bluegreen hydra-e2e``
(the whole v1.11.10 -> v2.3.0 run on local servers under traffic, with its report)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer

from .. import secrets, ui
from ..cli import JsonOpt, _emit_report, app, guard, traffic_summary
from ..errors import BluegreenError, UsageError

ScaleOpt = Annotated[int, typer.Option("--scale", help="access tokens (and as many refresh tokens) to generate")]


def _scale(tokens: int) -> Any:
    from ..hydra import Scale

    try:
        return Scale(tokens)
    except ValueError as exc:
        raise UsageError(f"--scale: {exc}") from None


@app.command("hydra-data")
def hydra_data(dsn: Annotated[str, typer.Option("--dsn", help="an empty database (or one loaded before)")],
               scale: ScaleOpt = 20_000,
               bad_rows: Annotated[bool, typer.Option(help="inject the 5 rows that break the 2.x migrations")
                                   ] = True,
               as_json: JsonOpt = False) -> None:
    """Load Hydra v1.11.10 (corpus and testdata, popx's order) and a generated population into a database."""
    from ..db import connect
    from ..hydra import load

    console = ui.make_console(stderr=True)
    size = guard(as_json, lambda: _scale(scale))

    def check() -> None:
        with connect(dsn, "hydra-data"):
            pass

    def run_load() -> dict[str, int]:
        try:
            return load(dsn, size, note=lambda t: console.print(t, markup=False), bad_rows=bad_rows)
        except psycopg.Error as exc:
            raise BluegreenError(f"hydra-data: {secrets.redact(str(exc))}") from None

    guard(as_json, check)
    inserted = guard(as_json, run_load)
    if as_json:
        ui.print_json({"ok": True, "inserted": inserted, "scale": scale})
    else:
        ui.make_console().print(f"inserted: {json.dumps(inserted)}", markup=False)


@app.command("hydra-e2e")
def hydra_e2e(scale: ScaleOpt = 20_000,
              duration: Annotated[int, typer.Option(help="seconds of pgbench traffic at least")] = 10,
              keep: Annotated[bool, typer.Option("--keep", help="leave the servers and files for a look")] = False,
              fail_validation: Annotated[bool, typer.Option(
                  "--fail-validation", help="make a validation check fail, to show a rollback")] = False,
              markdown: Annotated[Path | None, typer.Option(
                  "--markdown", help="write the run's report as Markdown (docs/hydra-report.md)")] = None,
              html: Annotated[Path | None, typer.Option("--html", help="write the run's page there")] = None,
              as_json: JsonOpt = False) -> None:
    """Hydra v1.11.10 (PG 15) -> v2.3.0 (PG 18) on local servers under 1.x token traffic: plans/hydra.yaml."""
    from ..demo import run_scenario
    from ..hydra.markdown import render
    from ..hydra.scenario import HydraScenario

    console = ui.make_console(stderr=True)
    scenario = HydraScenario(guard(as_json, lambda: _scale(scale)), fail_validation=fail_validation)
    result = guard(as_json, lambda: run_scenario(scenario, ui.RichReporter(console), console_note=console.print,
                                                 keep=keep, traffic_seconds=duration, page=html))
    extra = {"traffic": traffic_summary(result.traffic), "hydra": result.extra,
             "page": str(result.page) if result.page else None}
    if markdown is not None:
        data = secrets.redact_obj({**result.report.to_dict(), **extra})
        markdown.write_text(render(data, scale), encoding="utf-8")
    _emit_report(result.report, as_json, None, extra)
    if not as_json:
        ui.make_console().print(result.summary, markup=False)
        if result.page is not None:
            ui.make_console().print(f"report page: {result.page}", markup=False)
    if result.exit_code:
        raise typer.Exit(result.exit_code)
