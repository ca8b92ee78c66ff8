"""``bluegreen rewrite-queries``: expand ``SELECT *`` in application query files against a catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .. import secrets, ui
from ..cli import JsonOpt, app, guard
from ..errors import UsageError
from ..querycatalog import QueryCatalog
from ..sqlanalysis.queryfiles import expand_paths, rewrite_files
from ..sqlanalysis.queryparams import STYLES
from ..sqlanalysis.selectstar import FileRewrite


def _catalog(dsn: str | None, schema: list[Path] | None, search_path: str | None) -> QueryCatalog:
    if (dsn is None) == (not schema):
        raise UsageError("give the catalog the queries were written for: --dsn DSN (a live database) or"
                         " --schema FILE (pg_dump --schema-only output, migrations in order, or --save-schema JSON)")
    if dsn is not None:
        secrets.register_dsn(dsn)
        catalog = QueryCatalog.from_dsn(dsn, "--dsn")
        if search_path:
            catalog.search_path = tuple(s.strip() for s in search_path.split(",") if s.strip())
        return catalog
    path = tuple(s.strip() for s in (search_path or "public").split(",") if s.strip())
    return QueryCatalog.from_files(schema or [], path)


def _write(path: Path, text: str) -> None:
    """Write ``text`` as is (no newline translation: a CRLF file stays CRLF)."""
    try:
        path.write_text(text, encoding="utf-8", newline="")
    except OSError as exc:
        raise UsageError(f"{path}: cannot write: {exc.strerror or exc}") from None


def _payload(results: list[FileRewrite], written: list[str]) -> dict[str, Any]:
    return {
        "ok": True,
        "changed": sum(1 for r in results if r.changed),
        "written": written,
        "files": [{"file": r.source, "changed": r.changed, "statements": r.statements,
                   "changes": [{"line": c.line, "column": c.column, "before": c.before, "after": c.after,
                                "columns": list(c.columns)} for c in r.changes],
                   "kept": [{"line": k.line, "column": k.column, "text": k.text, "kind": k.kind,
                             "reason": k.reason} for k in r.kept]}
                  for r in results],
    }


@app.command("rewrite-queries")
def rewrite_queries(
    files: Annotated[list[Path] | None, typer.Argument(help="query files, folders of .sql files, or globs",
                                                        show_default=False)] = None,
    dsn: Annotated[str | None, typer.Option("--dsn", help="read the columns from this database (read-only)")] = None,
    schema: Annotated[list[Path] | None, typer.Option(
        "--schema", help="read the columns from schema files instead: pg_dump --schema-only output, the"
                         " migrations the old code was built for (in order; repeat the option), or a"
                         " --save-schema JSON")] = None,
    check: Annotated[bool, typer.Option("--check", help="write nothing; exit 1 if any file would change")] = False,
    diff: Annotated[bool, typer.Option("--diff", help="print a unified diff instead of the rewritten text")] = False,
    write: Annotated[bool, typer.Option("--write", help="rewrite the files in place")] = False,
    placeholders: Annotated[str, typer.Option(help="parameter style: " + ", ".join(STYLES))] = "auto",
    search_path: Annotated[str | None, typer.Option(
        "--search-path", help="schemas unqualified names resolve through (default: public with --schema,"
                              " the database's own with --dsn)")] = None,
    save_schema: Annotated[Path | None, typer.Option(
        "--save-schema", help="also write the catalog as JSON, for --schema in CI")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Expand SELECT *, t.* and RETURNING * into explicit column lists; every other byte stays."""
    err = ui.make_console(stderr=True)

    def work() -> tuple[list[FileRewrite], list[str]]:
        if check and write:
            raise UsageError("--check writes nothing: use it without --write")
        if placeholders not in STYLES:
            raise UsageError(f"--placeholders: expected one of {', '.join(STYLES)}, got {placeholders!r}")
        if not files and save_schema is None:
            raise UsageError("give at least one query file (or --save-schema FILE)")
        paths = expand_paths(files or [])
        catalog = _catalog(dsn, schema, search_path)
        if save_schema is not None:
            _write(save_schema, catalog.to_json())
        results = rewrite_files(paths, catalog, placeholders, display=Path.cwd())
        written = []
        if write:
            for path, result in zip(paths, results, strict=True):
                if result.changed:
                    _write(path, result.text)
                    written.append(result.source)
        return results, written

    results, written = guard(as_json, work)
    changed = [r for r in results if r.changed]
    if as_json:
        payload = _payload(results, written)
        payload["ok"] = not (check and changed)
        ui.print_json(payload)
    else:
        for result in results:
            for kept in result.kept:
                err.print(f"{result.source}:{kept.line}:{kept.column}: {kept.kind} {kept.text}: {kept.reason}",
                          style="yellow" if kept.kind == "unresolved" else "dim", markup=False, soft_wrap=True)
        if diff:
            for result in changed:
                typer.echo(result.diff(), nl=False)
        elif not write and not check:
            for result in results:
                if len(results) > 1:
                    typer.echo(f"-- ==> {result.source} <==")
                typer.echo(result.text, nl=False)
        for name in written:
            err.print(f"rewrote {name}")
        stars = sum(len(r.changes) for r in results)
        unresolved = sum(len(r.unresolved) for r in results)
        verb = "would expand" if check or not write else "expanded"
        err.print(f"{len(results)} file(s): {verb} {stars} star(s) in {len(changed)} file(s)"
                  + (f"; {unresolved} left unresolved" if unresolved else ""))
    if check and changed:
        raise typer.Exit(1)
