"""``bluegreen lint``, ``bluegreen rewrite`` and ``bluegreen quarantine restore|list``: migration safety commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer

from .. import ui
from ..cli import JsonOpt, app, guard
from ..db import _pg_message, connect
from ..errors import BluegreenError, UsageError
from ..plan import Defaults, format_duration, parse_duration
from ..sqlanalysis.lint import LintInputError, LintResult, RewriteResult, format_squawk, format_text, lint, rewrite
from ..sqlanalysis.parse import SqlSyntaxError

PathsArg = Annotated[list[Path], typer.Argument(help="SQL files or directories of migrations", show_default=False)]


def _rules(values: list[str] | None) -> list[str]:
    """Rule names from repeated and comma-separated options."""
    return [r.strip() for value in values or [] for r in value.split(",") if r.strip()]


def _library(fn: Any) -> Any:
    """Call ``fn``; bad input (missing paths, SQL the grammar rejects) becomes a usage error (exit 2)."""
    try:
        return fn()
    except (LintInputError, SqlSyntaxError, UnicodeDecodeError) as exc:
        raise UsageError(str(exc)) from None


@app.command("lint")
def lint_command(
    paths: PathsArg,
    fmt: Annotated[str, typer.Option("--format", help="text, or squawk (squawk's terminal layout)")] = "text",
    exclude: Annotated[list[str] | None, typer.Option("--exclude", "-e", help="rules to ignore (comma-separated)")
                       ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Report lock hazards in migration SQL (squawk's rule names), with the lock and the safe rewrite; exit 1 if any."""
    def check_format() -> None:
        if fmt not in ("text", "squawk"):
            raise UsageError(f"--format must be text or squawk, not {fmt!r}")

    guard(as_json, check_format)
    result: LintResult = guard(as_json, lambda: _library(lambda: lint(paths, _rules(exclude))))
    if as_json:
        ui.print_json(result.to_dict())
    else:
        console = ui.make_console()
        for line in format_squawk(result) if fmt == "squawk" else format_text(result):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    if result.hazards:
        raise typer.Exit(1)


_DEFAULTS = Defaults()


@app.command("rewrite")
def rewrite_command(
    paths: PathsArg,
    out: Annotated[Path, typer.Option("--out", help="directory for the lock-safe files", show_default=False)],
    allow: Annotated[list[str] | None, typer.Option("--allow", help="rules with no safe form to keep as written "
                                                                    "(comma-separated)")] = None,
    lock_timeout: Annotated[str, typer.Option("--lock-timeout", help="what every file sets lock_timeout to "
                                                                     "(the plan default)")
                            ] = format_duration(_DEFAULTS.lock_timeout),
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="rows per committed batch of a backfill "
                                                                        "(the plan default)")
                          ] = _DEFAULTS.batch_size,
    as_json: JsonOpt = False,
) -> None:
    """Write the lock-safe version of migration files into DIR, each to run as it is: psql -v ON_ERROR_STOP=1 -f.

    Each file starts with SET lock_timeout. Statements that must run outside a transaction do, each
    VALIDATE runs after its NOT VALID constraint committed, backfills run in committed batches, and
    the rest of each transaction stays together; every split of a transaction is said in a
    -- bluegreen: comment. A migrate step in mode: lock-safe runs the same transactions.
    """
    def run() -> RewriteResult:
        try:
            timeout = parse_duration(lock_timeout)
        except ValueError as exc:
            raise UsageError(f"--lock-timeout: {exc}") from None
        done: RewriteResult = _library(lambda: rewrite(paths, out, _rules(allow), timeout, batch_size))
        return done

    result: RewriteResult = guard(as_json, run)
    if as_json:
        ui.print_json(result.to_dict())
    else:
        console = ui.make_console()
        for h in result.refused:
            console.print(f"{h.source}:{h.line}:{h.column}: {h.rule}: refused: {h.reason}", markup=False,
                          soft_wrap=True)
        if result.refused:
            rules = ", ".join(sorted({h.rule for h in result.refused}))
            console.print(f"nothing written: {len(result.refused)} statement(s) have no lock-safe form; "
                          f"keep them as written with --allow {rules}", markup=False, soft_wrap=True)
        else:
            changed = sum(1 for _, n, _ in result.written if n)
            statements = sum(n for _, n, _ in result.written)
            splits = sum(k for _, _, k in result.written)
            console.print(f"{len(result.written)} file(s) written to {out}: {statements} statement(s) rewritten "
                          f"in {changed} file(s), {splits} transaction change(s) noted", markup=False,
                          soft_wrap=True)
    if result.refused:
        raise typer.Exit(1)


quarantine_app = typer.Typer(no_args_is_help=True, help="Rows the cleanup moved into bluegreen_quarantine.")
app.add_typer(quarantine_app, name="quarantine")

DsnOpt = Annotated[str, typer.Option("--dsn", help="the cluster holding bluegreen_quarantine (libpq DSN)",
                                     show_default=False)]


@quarantine_app.command("list")
def quarantine_list(dsn: DsnOpt, as_json: JsonOpt = False) -> None:
    """Count the quarantined rows per table and constraint."""
    from ..steps.cleanup import quarantined

    def run() -> list[dict[str, Any]]:
        conn = connect(dsn, "--dsn")
        try:
            counts: dict[tuple[str, str, str], int] = {}
            for row in quarantined(conn):
                key = (row.schema, row.table, row.constraint)
                counts[key] = counts.get(key, 0) + 1
            return [{"table": f"{s}.{t}", "constraint": c, "rows": n} for (s, t, c), n in counts.items()]
        finally:
            conn.close()

    rows = guard(as_json, run)
    if as_json:
        ui.print_json({"ok": True, "quarantined": rows})
        return
    console = ui.make_console()
    for row in rows:
        console.print(f"{row['table']}: {row['rows']} row(s) for {row['constraint']}", markup=False)
    console.print(f"{sum(r['rows'] for r in rows)} row(s) in quarantine", markup=False)


@quarantine_app.command("restore")
def quarantine_restore(
    dsn: DsnOpt,
    into: Annotated[str | None, typer.Option("--into", help="put the rows into this cluster (a copy) instead; "
                                                            "the quarantine is left as it is")] = None,
    table: Annotated[list[str] | None, typer.Option("--table", help="only rows of this table (repeatable)")] = None,
    constraint: Annotated[list[str] | None, typer.Option("--constraint", help="only rows quarantined for this "
                                                                              "constraint or check (repeatable)")
                          ] = None,
    run_id: Annotated[int | None, typer.Option("--run-id", help="only rows of this run")] = None,
    disable_triggers: Annotated[bool, typer.Option("--disable-triggers", help="do not check foreign keys and "
                                                   "triggers while inserting (superuser; like pg_restore)")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Put quarantined rows back into their tables (into --into, a copy, or the same cluster)."""
    from ..steps.cleanup import RestoreResult, restore

    def run() -> RestoreResult:
        source = connect(dsn, "--dsn")
        target = connect(into, "--into") if into else None
        try:
            return restore(source, target, tables=table or [], constraints=constraint or [], run_id=run_id,
                           disable_triggers=disable_triggers)
        except psycopg.Error as exc:
            raise BluegreenError(f"restore failed, nothing was restored: {_pg_message(exc)}") from None
        finally:
            source.close()
            if target is not None:
                target.close()

    result = guard(as_json, run)
    if as_json:
        ui.print_json({"ok": True, "restored": result.restored, "skipped": result.skipped, "tables": result.tables})
        return
    console = ui.make_console()
    for name, counts in result.tables.items():
        console.print(f"{name}: {counts['restored']} row(s) restored"
                      + (f", {counts['skipped']} already there" if counts["skipped"] else ""), markup=False)
    console.print(f"{result.restored} row(s) restored" + (" into the copy" if into else ""), markup=False)


__all__ = ["lint_command", "quarantine_app", "rewrite_command"]
