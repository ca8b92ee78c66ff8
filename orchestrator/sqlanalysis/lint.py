"""``bluegreen lint`` and ``bluegreen rewrite`` as library calls: hazards of files, lock-safe copies of files.

Nothing here prints: the CLI renders what these functions return (:func:`format_text`,
:func:`format_squawk` build the lines).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from .files import SqlFileError, is_autocommit, read_sql_text, version_key, version_of
from .locksafe import BLOCKS, FileAnalysis, Hazard, Rewriter
from .rules import RULES
from .transactions import DEFAULT_BATCH, plan_file, structure

DEFAULT_LOCK_TIMEOUT = timedelta(seconds=2)
"""The lock timeout a rewritten file sets when none is given (the plan default)."""


class LintInputError(ValueError):
    """A path given to lint or rewrite does not exist, holds no SQL file, cannot be read or written."""


def _read(path: Path) -> str:
    try:
        return read_sql_text(path)
    except SqlFileError as exc:
        raise LintInputError(str(exc)) from None


def collect(paths: Sequence[Path]) -> list[tuple[Path, Path]]:
    """The SQL files under ``paths`` as ``(file, name relative to its argument)``, in migration order.

    A directory contributes its ``*.sql`` files (recursively); a file contributes itself.

    :raises LintInputError: a path is missing, or nothing is found.
    """
    found: list[tuple[Path, Path]] = []
    for path in paths:
        if path.is_dir():
            files = [p for p in path.rglob("*.sql") if p.is_file()]
            files.sort(key=lambda p: (version_key(version_of(p.name)), str(p)))
            found.extend((p, p.relative_to(path)) for p in files)
        elif path.is_file():
            found.append((path, Path(path.name)))
        else:
            raise LintInputError(f"{path}: no such file or directory")
    if not found:
        raise LintInputError("no .sql file found in " + ", ".join(str(p) for p in paths))
    return found


@dataclass
class LintResult:
    """Hazards of a set of files, and every statement's locks."""

    files: list[FileAnalysis] = field(default_factory=list)
    excluded: frozenset[str] = frozenset()

    @property
    def hazards(self) -> list[Hazard]:
        return [h for f in self.files for h in f.hazards if h.rule not in self.excluded]

    def to_dict(self) -> dict[str, Any]:
        hazards = self.hazards
        return {
            "ok": not hazards,
            "files": len(self.files),
            "statements": sum(len(f.statements) for f in self.files),
            "hazards": [asdict(h) | {"help": h.help} for h in hazards],
            "by_rule": {rule: sum(1 for h in hazards if h.rule == rule)
                        for rule in sorted({h.rule for h in hazards})},
            "locks": [{"file": f.source, "line": s.statement.line, "column": s.statement.column,
                       "locks": [{"target": lock.target, "mode": lock.mode, "blocks": lock.blocks}
                                 for lock in s.locks],
                       "rewrites": list(s.rewrites)}
                      for f in self.files for s in f.statements if s.locks or s.rewrites],
        }


def lint(paths: Sequence[Path], exclude: Iterable[str] = ()) -> LintResult:
    """Analyse every SQL file under ``paths`` in migration order.

    :raises LintInputError: see :func:`collect`.
    :raises SqlSyntaxError: a file the grammar rejects.
    """
    excluded = frozenset(exclude)
    unknown = sorted(excluded - set(RULES))
    if unknown:
        raise LintInputError(f"unknown rule(s): {', '.join(unknown)}; known: {', '.join(sorted(RULES))}")
    rewriter = Rewriter()
    result = LintResult(excluded=excluded)
    for path, _ in collect(paths):
        analysis = rewriter.analyze_file(_read(path), str(path))
        structure(analysis, is_autocommit(path.name))  # transaction control that cannot run is bad input too
        result.files.append(analysis)
    return result


def format_text(result: LintResult) -> list[str]:
    """Lines for a terminal: ``file:line:col: rule: message``, the lock, and the safe rewrite."""
    lines: list[str] = []
    for h in result.hazards:
        lines.append(f"{h.source}:{h.line}:{h.column}: {h.rule}: {h.message}")
        if h.lock and h.table:
            lines.append(f"  lock: {h.lock} on {h.table} (blocks {BLOCKS.get(h.lock, '?')})")
        if h.fix:
            fix = h.fix.splitlines()
            lines.append("  safe: " + fix[0])
            lines.extend("        " + line for line in fix[1:])
        elif h.refused:
            lines.append(f"  refused by lock-safe mode: {h.reason}; run it as written only with allow: [{h.rule}]")
        elif h.help:
            lines.append(f"  instead: {h.help}")
    lines.append(summary(result))
    return lines


def summary(result: LintResult) -> str:
    hazards = result.hazards
    fixable = sum(1 for h in hazards if h.fix)
    refused = sum(1 for h in hazards if h.refused)
    statements = sum(len(f.statements) for f in result.files)
    return (f"{len(hazards)} hazard(s) in {len(result.files)} file(s), {statements} statement(s):"
            f" {fixable} rewritten by lock-safe mode, {refused} refused, {len(hazards) - fixable - refused} to review")


def format_squawk(result: LintResult) -> list[str]:
    """Lines in the layout of squawk's terminal reporter (``warning[rule]: message``, source, help)."""
    lines: list[str] = []
    for f in result.files:
        text_lines = f.text.splitlines()
        for h in f.hazards:
            if h.rule in result.excluded:
                continue
            lines.append(f"warning[{h.rule}]: {h.message}")
            lines.append(f"  --> {h.source}:{h.line}:{h.column}")
            width = len(str(h.line))
            lines.append(" " * (width + 1) + "|")
            source = text_lines[h.line - 1] if 0 < h.line <= len(text_lines) else ""
            lines.append(f"{h.line} | {source}")
            lines.append(" " * (width + 1) + "|")
            rule = RULES.get(h.rule)
            if rule is not None:
                lines.append(" " * (width + 1) + f"= help: {rule.help}")
            lines.append("")
    hazards = result.hazards
    lines.append(f"Found {len(hazards)} issue{'s' if len(hazards) != 1 else ''} in {len(result.files)} "
                 f"file{'s' if len(result.files) != 1 else ''}"
                 + (" (checked by bluegreen, with squawk's rule names)" if hazards else ""))
    return lines


@dataclass
class RewriteResult:
    """What ``bluegreen rewrite`` wrote, or would refuse.

    ``written`` holds (output file, statements written in another form, notes on split transactions).
    """

    written: list[tuple[Path, int, int]] = field(default_factory=list)
    refused: list[Hazard] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": not self.refused,
                "files": [{"file": str(p), "rewritten": n, "splits": k} for p, n, k in self.written],
                "refused": [asdict(h) for h in self.refused]}


def rewrite(paths: Sequence[Path], out: Path, allow: Iterable[str] = (), lock_timeout: timedelta = DEFAULT_LOCK_TIMEOUT,
            batch_size: int = DEFAULT_BATCH) -> RewriteResult:
    """Write the lock-safe version of every SQL file under ``paths`` into ``out``, to run as written.

    Each file is its transaction plan (:mod:`.transactions`) as text: it starts with ``SET
    lock_timeout``, says where it splits its author's transactions and why, and runs as planned when
    psql runs it (``psql -v ON_ERROR_STOP=1 -f``); ``migrate`` runs the same plan. Every byte of what
    is not rewritten is kept; a file with no statement is copied byte for byte, so ``out`` is a
    complete set. If any statement has no safe form and its rule is not in ``allow``, nothing is
    written; nor when a file is rejected (unreadable, not UTF-8, SQL the grammar refuses, transaction
    control that cannot run). Nothing is written outside ``out``, never over an input file, and never
    two inputs into one output file.

    :param lock_timeout: what the files set ``lock_timeout`` to.
    :param batch_size: rows per committed batch of a backfill.

    :raises LintInputError: see :func:`collect`; ``out`` is not a folder; two inputs share an output name;
        an output would overwrite an input; a file cannot be read or written.
    :raises SqlSyntaxError: a file the grammar rejects.
    """
    allowed = set(allow)
    unknown = sorted(allowed - set(RULES))
    if unknown:
        raise LintInputError(f"unknown rule(s): {', '.join(unknown)}; known: {', '.join(sorted(RULES))}")
    if out.exists() and not out.is_dir():
        raise LintInputError(f"{out}: --out must be a folder, and this is a file")
    rewriter = Rewriter()
    result = RewriteResult()
    outputs: list[tuple[Path, str, int, int]] = []
    targets: dict[Path, Path] = {}
    files = collect(paths)
    inputs = {path.resolve() for path, _ in files}
    root = out.resolve()
    for path, relative in files:
        target = out / relative
        key = target.resolve()
        if key in targets:
            raise LintInputError(f"{targets[key]} and {path} would both be written to {target}: "
                                 "rewrite them into separate folders")
        if key in inputs:
            raise LintInputError(f"{target} is one of the input files: give --out another folder")
        if not key.is_relative_to(root):
            raise LintInputError(f"{target} is a symbolic link to {key}, outside {out}: remove it")
        targets[key] = path
        analysis = rewriter.analyze_file(_read(path), str(path))
        result.refused.extend(analysis.refused(allowed))
        plan = plan_file(analysis, "lock-safe", autocommit=is_autocommit(path.name), batch_size=batch_size)
        outputs.append((target, plan.render(lock_timeout), len(plan.changed), plan.splits))
    if result.refused:
        return result
    for target, text, changed, splits in outputs:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("w", encoding="utf-8", newline="") as fh:  # no newline translation
                fh.write(text)
        except OSError as exc:
            raise LintInputError(f"{target}: cannot write: {exc.strerror or exc}") from None
        result.written.append((target, changed, splits))
    return result
