"""``kind: extend_ttl`` pushes an expiry column forward before the window; ``kind: restore_ttl`` puts it back.

extend_ttl (on blue, before the snapshot): every row of ``table`` that matches ``where`` and whose
``column`` is still ahead (an expired row is never revived) gets ``column + by``. The table is walked
in primary-key order, ``batch_size`` keys at a time (an index range scan whatever the statistics
say); each range is one short transaction: a first statement locks its eligible rows, a second
one (whose new snapshot sees the latest version of every row it holds) updates them by ctid and
saves each row's original and extended value in ``bluegreen.ttl_backup`` (on the same cluster);
the walk is throttled to ``max_rate`` rows per second and reported through ``ctx.progress``. The
report says how many rows were extended and how many of them would have expired within ``window``:
the token refreshes the extension avoids (``<step>.result`` in the run state, and the verify check).

Locks: ROW EXCLUSIVE on the table, like any UPDATE, taken under ``lock_timeout`` (behind a DDL a
batch waits at most that long, is retried with backoff up to ``lock_retries`` times, then the step
fails cleanly, to be resumed); row locks on one range at a time, for the batch's fraction of a
second. Rows the application holds locked are skipped (``SKIP LOCKED``), never waited for, and tried
again in a second pass over the ranges that had some: the extension never waits on a row lock, so
it can neither deadlock with a client transaction nor queue behind one.

Idempotent: the backup table is the record. A row extended under this backup is never extended
again (after a crash, or in a new run with the same backup name, every row is looked up in the
backup first), so a re-run continues where it stopped; the walk's position is kept in the run
state only to skip the ranges already done.

Undo: ``rollback()`` and ``restore_ttl`` put the saved value back only where the row still holds
the extended value: a row the application changed since (a refresh, a revocation) keeps its value.
A restore on the cluster holding the backup runs as transactional actions, one per batch (exactly
once; the batch's row locks, waited for under ``lock_timeout``, then ROW EXCLUSIVE for the update)
and marks each backup row ``restored``, ``kept`` (changed since) or ``gone`` (deleted since); a row
a batch could not restore stays ``extended`` and restore_ttl runs another round for it.
restore_ttl may also restore on the other cluster (green, after the snapshot): it then reads the
backup from ``backup_on`` and compares and restores the same way, batch by batch (lock first, then
update, in one transaction per batch). restore_ttl itself has no undo.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, Literal

import psycopg
from pglast import ast, parse_sql
from pglast.parser import ParseError
from psycopg import errors as pgerrors
from psycopg import sql
from pydantic import Field, field_validator, model_validator

from .. import db, secrets
from ..actions import Action, Query, SqlAction, session_settings
from ..errors import BluegreenError, UsageError
from ..spec import Duration, StepSpecBase, Target, format_duration
from ..sqlanalysis.parse import split_statements
from ..sqlfiles import read_sql
from . import register
from .base import Check, Step, StepContext

log = logging.getLogger(__name__)

_RETRYABLE = (pgerrors.LockNotAvailable, pgerrors.DeadlockDetected, pgerrors.SerializationFailure)
_TIMESTAMP_TYPES = ("timestamp with time zone", "timestamp without time zone")
_UTC = sql.SQL("SET LOCAL timezone = 'UTC'")
_PUT_EVERY = 2.0  # seconds between progress records in the journal
_UNKNOWN_KEY = "<primary key>"
_RESTORE_ROUNDS = 3


@cache
def _blocks() -> dict[str, str]:
    """The ``-- name:`` blocks of sql/ttl.sql."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in read_sql("ttl.sql").splitlines():
        if line.startswith("-- name:"):
            current = blocks.setdefault(line.split(":", 1)[1].strip(), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines).strip() for name, lines in blocks.items()}


def _q(name: str, **parts: sql.Composable) -> sql.Composed:
    return sql.SQL(_blocks()[name]).format(**parts)


def _schema_statements() -> tuple[sql.SQL, ...]:
    return tuple(sql.SQL(s.text) for s in split_statements(_blocks()["schema"], "sql/ttl.sql"))


# -- names ---------------------------------------------------------------------------------------------


def parse_table(text: str) -> tuple[str | None, str]:
    """Read ``table`` or ``schema.table`` as Postgres does (unquoted parts fold to lower case).

    :raises ValueError: not one plain table name.
    """
    try:
        stmts = parse_sql(f"TABLE {text}")  # only to read the name with the real grammar
    except ParseError:
        raise ValueError(f"{text!r} is not a table name (write it as table or schema.table)") from None
    node: Any = stmts[0].stmt if len(stmts) == 1 else None
    rel: Any = (node.fromClause or (None,))[0] if isinstance(node, ast.SelectStmt) else None
    if not isinstance(rel, ast.RangeVar) or rel.catalogname or rel.alias is not None or not rel.inh \
            or node.whereClause is not None or len(node.fromClause) != 1:
        raise ValueError(f"{text!r} is not a plain table name")
    return (str(rel.schemaname) if rel.schemaname else None), str(rel.relname)


def parse_column(text: str) -> str:
    """Read a column name as Postgres does.

    :raises ValueError: not one column name.
    """
    try:
        stmts = parse_sql(f"SELECT {text}")
    except ParseError:
        raise ValueError(f"{text!r} is not a column name") from None
    node: Any = stmts[0].stmt if len(stmts) == 1 else None
    target: Any = (node.targetList or (None,))[0] if isinstance(node, ast.SelectStmt) else None
    val: Any = getattr(target, "val", None)
    fields: Any = getattr(val, "fields", None) if isinstance(val, ast.ColumnRef) else None
    if not fields or len(fields) != 1 or not isinstance(fields[0], ast.String) \
            or len(node.targetList) != 1 or node.fromClause or target.name:
        raise ValueError(f"{text!r} is not a column name")
    return str(fields[0].sval)


def check_condition(text: str) -> str:
    """Validate a boolean SQL condition on the table's columns; return it unchanged.

    :raises ValueError: not exactly one expression.
    """
    try:
        stmts = parse_sql(f"SELECT WHERE ({text})")  # only to validate it with the grammar
    except ParseError as exc:
        raise ValueError(f"not a valid SQL condition: {exc.args[0] if exc.args else exc}") from None
    node: Any = stmts[0].stmt if len(stmts) == 1 else None
    if not isinstance(node, ast.SelectStmt) or node.targetList or node.fromClause or node.whereClause is None:
        raise ValueError(f"not a single SQL condition: {text!r}")
    return text


# -- the table being extended -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TtlTable:
    """The table, its expiry column and its key, as read from the catalog (or a backup's header)."""

    schema: str
    table: str
    column: str
    keys: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}.{self.column}"

    def parts(self) -> dict[str, sql.Composable]:
        keys = [sql.Identifier(k) for k in self.keys]
        aliases = [sql.Identifier(f"key_{i}") for i in range(len(keys))]
        comma = sql.SQL(", ")
        return {
            "table": sql.Identifier(self.schema, self.table),
            "column": sql.Identifier(self.column),
            "key_select": comma.join(sql.SQL("t.{} AS {}").format(k, a) for k, a in zip(keys, aliases, strict=True)),
            "t_keys": comma.join(sql.SQL("t.{}").format(k) for k in keys),
            "c_keys": comma.join(sql.SQL("c.{}").format(a) for a in aliases),
            "k_keys": comma.join(sql.SQL("k.{}").format(a) for a in aliases),
            "r_keys": comma.join(sql.SQL("r.{} AS {}").format(k, a) for k, a in zip(keys, aliases, strict=True)),
            "r_cols": comma.join(sql.SQL("r.{}").format(k) for k in keys),
            "key_aliases": comma.join(aliases),
            "key_aliases_desc": comma.join(sql.SQL("{} DESC").format(a) for a in aliases),
            "key_json": sql.SQL("jsonb_build_object({})").format(
                comma.join(sql.SQL("{}, t.{}").format(sql.Literal(k), sql.Identifier(k)) for k in self.keys)),
        }


def _one(conn: psycopg.Connection[Any], query: Query, params: Sequence[Any] | None = None) -> Any:
    row = conn.execute(query, params).fetchone()
    return row


def load_table(conn: psycopg.Connection[Any], table: str, column: str, key: Sequence[str] | None) -> TtlTable:
    """Find the table, check its expiry column's type, and read its primary key (unless ``key`` is given).

    :raises BluegreenError: no such table or column, a column that is not a timestamp, no key.
    """
    schema, name = parse_table(table)
    colname = parse_column(column)
    qualified = sql.Identifier(*([schema, name] if schema else [name])).as_string(conn)
    row = _one(conn, sql.SQL(
        "SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = to_regclass(%s) AND c.relkind IN ('r', 'p')"), (qualified,))
    if row is None:
        raise BluegreenError(f"table {table} not found")
    oid, found_schema, found_table = row
    typ = _one(conn, sql.SQL("SELECT format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute"
                             " WHERE attrelid = %s AND attname = %s AND attnum > 0 AND NOT attisdropped"),
               (oid, colname))
    if typ is None:
        raise BluegreenError(f"table {found_schema}.{found_table} has no column {colname!r}")
    if typ[0] not in _TIMESTAMP_TYPES:
        raise BluegreenError(f"{found_schema}.{found_table}.{colname} is {typ[0]}: extend_ttl extends"
                             " timestamp and timestamptz columns")
    if key:
        keys = tuple(parse_column(k) for k in key)
        unique = _one(conn, sql.SQL(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_index i WHERE i.indrelid = %s AND i.indisunique"
            " AND i.indpred IS NULL AND i.indexprs IS NULL AND (SELECT array_agg(a.attname::text ORDER BY a.attname)"
            " FROM pg_catalog.pg_attribute a WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey))"
            " = (SELECT array_agg(x ORDER BY x) FROM unnest(%s::text[]) x))"), (oid, list(keys)))
        if not unique or not unique[0]:
            raise BluegreenError(f"key {list(keys)} of {found_schema}.{found_table} has no unique index:"
                                 " a key must identify one row")
    else:
        pk = _one(conn, sql.SQL(
            "SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_catalog.pg_index i"
            " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)"
            " JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
            " WHERE i.indrelid = %s AND i.indisprimary"), (oid,))
        if pk is None or not pk[0]:
            raise BluegreenError(f"{found_schema}.{found_table} has no primary key: give extend_ttl a key"
                                 " (columns with a unique index)")
        keys = tuple(pk[0])
    if colname in keys:
        raise BluegreenError(f"{colname} is part of the key of {found_schema}.{found_table}")
    return TtlTable(str(found_schema), str(found_table), colname, keys)


def _offline_table(table: str, column: str, key: Sequence[str] | None) -> TtlTable:
    """How the table renders with no connection: the key is read from the catalog at run time."""
    schema, name = parse_table(table)
    return TtlTable(schema or "public", name, parse_column(column),
                    tuple(parse_column(k) for k in key) if key else (_UNKNOWN_KEY,))


def _header(conn: psycopg.Connection[Any], backup: str) -> tuple[TtlTable, timedelta, datetime | None] | None:
    exists = _one(conn, sql.SQL("SELECT to_regclass('bluegreen.ttl_backups') IS NOT NULL"))
    if not exists or not exists[0]:
        return None
    row = _one(conn, sql.SQL("SELECT schema_name, table_name, column_name, key_columns, extend_by, window_end"
                             " FROM bluegreen.ttl_backups WHERE backup = %s"), (backup,))
    if row is None:
        return None
    return TtlTable(row[0], row[1], row[2], tuple(row[3])), row[4], row[5]


def _summary(conn: psycopg.Connection[Any], backup: str) -> dict[str, int]:
    row = _one(conn, _q("summary", backup=sql.Literal(backup)))
    names = ("extended", "avoided", "restored", "kept", "gone")
    return dict(zip(names, (int(v or 0) for v in row), strict=True)) if row else dict.fromkeys(names, 0)


# -- running batches ----------------------------------------------------------------------------------


@dataclass
class _Batches:
    """Run statements one transaction each, under the step's lock settings, retrying lock failures."""

    conn: psycopg.Connection[Any]
    settings: SqlAction
    what: str
    retries: int = 0
    slowest: float = 0.0

    def run(self, statements: Sequence[Query]) -> Any:
        """Run ``statements`` in one transaction; return the last one's first row."""
        attempts = 0
        while True:
            attempts += 1
            started = time.monotonic()
            try:
                with self.conn.transaction():
                    for setting in session_settings(self.settings, local=True):
                        self.conn.execute(setting)
                    self.conn.execute(_UTC)
                    row = None
                    for statement in statements:
                        row = self.conn.execute(statement).fetchone()
                self.slowest = max(self.slowest, time.monotonic() - started)
                return row
            except _RETRYABLE as exc:
                if attempts > self.settings.lock_retries:
                    timeout = self.settings.lock_timeout
                    raise BluegreenError(
                        f"{self.what}: {_message(exc)} after {attempts} attempt(s) (lock_timeout "
                        f"{format_duration(timeout) if timeout else 'none'}); nothing of this batch was"
                        " written; run the plan again to resume") from exc
                self.retries += 1
                wait = min(30.0, self.settings.retry_backoff.total_seconds() * 2 ** (attempts - 1))
                log.info("%s: %s, retry %d of %d", self.what, _message(exc), attempts, self.settings.lock_retries)
                time.sleep(wait * random.uniform(0.5, 1.0))  # jitter
            except psycopg.Error as exc:
                raise BluegreenError(f"{self.what}: {_message(exc)}") from exc


def _message(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    text = getattr(diag, "message_primary", None) or str(exc).strip() or type(exc).__name__
    state = getattr(exc, "sqlstate", None)
    return secrets.redact(f"{text} [{state}]" if state else text)


def _throttle(started: float, done: int, max_rate: float | None) -> None:
    if max_rate:
        ahead = started + done / max_rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "es" if word.endswith(("ch", "s")) else "s")


# -- extend_ttl ---------------------------------------------------------------------------------------


class ExtendTtlSpec(StepSpecBase):
    """Push an expiry column forward (key-ordered batches), saving every original value for restore."""

    kind: Literal["extend_ttl"]
    on: Target = Field("blue", description="the cluster whose rows are extended (blue, before the snapshot)")
    table: str = Field(description="the table: hydra_oauth2_access, or schema.table")
    column: str = Field(description="its expiry column (timestamp or timestamptz)")
    by: Duration = Field(description="how far to push the expiry: 6h")
    where: str | None = Field(None, description="only rows matching this SQL condition, e.g. 'active'")
    window: Duration | None = Field(None, description="the migration window for the report's 'refreshes avoided'"
                                                      " (rows that would have expired within it); default: by")
    batch_size: int | None = Field(None, ge=1, le=1_000_000, description="rows per transaction (default: plan's)")
    max_rate: float | None = Field(None, gt=0, description="at most this many rows per second")
    key: list[str] | None = Field(None, min_length=1, description="key columns for the batch order (default:"
                                                                  " the primary key)")
    backup: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,200}$",
                               description="name of the backup in bluegreen.ttl_backup (default: plan.step)")

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        parse_table(value)
        return value

    @field_validator("column")
    @classmethod
    def _column(cls, value: str) -> str:
        parse_column(value)
        return value

    @field_validator("key")
    @classmethod
    def _key(cls, value: list[str] | None) -> list[str] | None:
        for name in value or ():
            parse_column(name)
        return value

    @field_validator("where")
    @classmethod
    def _where(cls, value: str | None) -> str | None:
        return check_condition(value) if value is not None else None


def _restore_actions(step_id: str, backup: str, target: Target, table: TtlTable, by: sql.Composable,
                     bounds: Sequence[int] | None, settings: dict[str, Any], description: str,
                     tag: str = "") -> list[Action]:
    """One transactional action per batch of a backup, restoring on the cluster that holds it.

    :param by: the extension (the backup header's ``extend_by``).
    :param bounds: the first backup id of each batch; None renders one action for "each batch".
    :param tag: prefixes the action ids of a later round (rows an earlier round could not restore).
    """

    def action(name: str, low: sql.Composable, high: sql.Composable) -> SqlAction:
        parts = {"backup": sql.Literal(backup), "low": low, "high": high, **table.parts()}
        return SqlAction(id=f"restore_ttl:{step_id}:{tag}{name}", target=target,
                         statements=(_UTC, _q("restore_lock", **parts), _q("restore_range", extend_by=by, **parts)),
                         transactional=True, description=description, **settings)

    if bounds is None:
        return [action("batch", sql.Placeholder("first_id"), sql.Placeholder("next_first_id"))]
    edges = list(bounds)
    return [action(str(low), sql.Literal(low), sql.Literal(edges[i + 1] if i + 1 < len(edges) else 2 ** 63 - 1))
            for i, low in enumerate(edges)]


def _restore_bounds(conn: psycopg.Connection[Any], backup: str, batch_size: int) -> list[int]:
    exists = _one(conn, sql.SQL("SELECT to_regclass('bluegreen.ttl_backup') IS NOT NULL"))
    if not exists or not exists[0]:
        return []
    rows = conn.execute(_q("restore_bounds", backup=sql.Literal(backup),
                           batch_size=sql.Literal(batch_size))).fetchall()
    return [int(r[0]) for r in rows]


@register("extend_ttl", ExtendTtlSpec)
class ExtendTtlStep(Step[ExtendTtlSpec]):
    """Extend expiry in batches; the backup table makes it resumable and undoable."""

    @property
    def backup(self) -> str:
        return self.spec.backup or f"{self.loaded.plan.name}.{self.spec.id}"

    @property
    def window(self) -> timedelta:
        return self.spec.window or self.spec.by

    def _settings(self) -> dict[str, Any]:
        return {"lock_timeout": self.setting("lock_timeout"), "statement_timeout": self.setting("statement_timeout"),
                "lock_retries": self.loaded.plan.defaults.lock_retries,
                "retry_backoff": self.loaded.plan.defaults.retry_backoff}

    @property
    def batch_size(self) -> int:
        return int(self.spec.batch_size or self.setting("batch_size"))

    def _table(self, ctx: StepContext) -> TtlTable:
        try:
            connection = ctx.connect(self.spec.on)
        except UsageError:
            if ctx.live:
                raise
            return _offline_table(self.spec.table, self.spec.column, self.spec.key)
        with connection as conn:
            return load_table(conn, self.spec.table, self.spec.column, self.spec.key)

    def _range(self, table: TtlTable, after: Sequence[Any] | None, until: Sequence[Any] | None) -> sql.Composable:
        keys = table.parts()["t_keys"]

        def values(row: Sequence[Any]) -> sql.Composable:
            return sql.SQL(", ").join(v if isinstance(v, sql.Composable) else sql.Literal(v) for v in row)

        bounds: list[sql.Composable] = []
        if after is not None:
            bounds.append(sql.SQL("({}) > ({})").format(keys, values(after)))
        if until is not None:
            bounds.append(sql.SQL("({}) <= ({})").format(keys, values(until)))
        return sql.SQL(" AND ").join(bounds) if bounds else sql.SQL("true")

    def _window_statement(self, table: TtlTable, after: Sequence[Any] | None) -> sql.Composed:
        """The last key of the next batch after ``after``."""
        return _q("extend_window", after=self._range(table, after, None), offset=sql.Literal(self.batch_size - 1),
                  **table.parts())

    def _batch_statements(self, table: TtlTable, after: Sequence[Any] | None, until: Sequence[Any] | None,
                          window_end: sql.Composable, *, probe: bool = True) -> tuple[sql.Composed, sql.Composed]:
        """One batch over the key range (``after``, ``until``]: the lock, then the extension.

        :param probe: look each row up in the backup (resuming, second pass).
        """
        parts = table.parts()
        backup = sql.Literal(self.backup)
        common = {"range": self._range(table, after, until), "where": sql.SQL(self.spec.where or "true"),
                  "probe": _q("probe", backup=backup, key_json=parts["key_json"]) if probe else sql.SQL(""),
                  "probe_condition": sql.SQL("AND done.status IS DISTINCT FROM 'extended'") if probe else sql.SQL(""),
                  **parts}
        return (_q("extend_lock", **common),
                _q("extend_batch", backup=backup, extend_by=sql.Literal(self.spec.by), window_end=window_end,
                   on_conflict=_q("on_conflict") if probe else sql.SQL(""), **common))

    def _header_action(self, table: TtlTable) -> SqlAction:
        header = _q("header", backup=sql.Literal(self.backup), schema_name=sql.Literal(table.schema),
                    table_name=sql.Literal(table.table), column_name=sql.Literal(table.column),
                    key_columns=sql.SQL("{}::text[]").format(sql.Literal(list(table.keys))),
                    extend_by=sql.Literal(self.spec.by),
                    window_end=sql.SQL("now() + {}").format(sql.Literal(self.window)))
        return SqlAction(id=f"ttl_backup:{self.id}", target=self.spec.on,
                         statements=(sql.SQL("SELECT pg_advisory_xact_lock(25191, 5)"), *_schema_statements(),
                                     header),
                         transactional=True, description=f"backup table and header of {self.backup}",
                         **self._settings())

    def plan(self, ctx: StepContext) -> Sequence[Action]:
        return self._actions(self._table(ctx))

    def _actions(self, table: TtlTable) -> list[Action]:
        rate = f", at most {self.spec.max_rate:g} rows/s" if self.spec.max_rate else ""
        first = [sql.Placeholder("after")] * len(table.keys)
        last = [sql.Placeholder("last")] * len(table.keys)
        batch = SqlAction(
            id=f"extend_ttl:{self.id}:batches", target=self.spec.on,
            statements=(self._window_statement(table, first), _UTC,
                        *self._batch_statements(table, first, last, sql.Placeholder("window_end"))),
            transactional=True, **self._settings(),
            description=(f"repeated: the key range of the next {self.batch_size} rows (after: the previous range's"
                         f" last key), then one transaction extending its rows, until the table is done; then once"
                         f" more over the ranges where rows were locked{rate}; the look-up in the backup and the"
                         " upsert are left out of a fresh first pass"))
        return [self._header_action(table), batch]

    def apply(self, ctx: StepContext) -> None:
        table = self._table(ctx)
        actions = self._actions(table)
        if not ctx.live:
            ctx.run_actions(actions)
            return
        ctx.run_actions(actions[:1])  # the backup table and its header, exactly once
        self._extend(ctx, table)

    def _extend(self, ctx: StepContext, table: TtlTable) -> None:
        """Pass 1 over the whole key range, pass 2 over the ranges where locked rows were skipped."""
        state_key = f"{self.id}.extend_ttl"
        state = ctx.get(state_key) or {}
        conn = db.connect(ctx.dsns[self.spec.on], self.spec.on, application_name=f"bluegreen extend_ttl {self.id}")
        try:
            header = _header(conn, self.backup)
            if header is None or header[0].name != table.name:
                raise BluegreenError(f"backup {self.backup!r} holds {header[0].name if header else 'nothing'},"
                                     f" not {table.name}: give this step its own backup name")
            window_end = sql.Literal(header[2])
            runner = _Batches(conn, SqlAction(id="", target=self.spec.on, statements=(), **self._settings()),
                              f"extend_ttl {table.name}")
            eligible = _one(conn, _q("eligible", where=sql.SQL(self.spec.where or "true"), **table.parts()))
            total = int(state.get("total") or eligible[0])
            done = _summary(conn, self.backup)["extended"]
            # a fresh backup needs no look-up per row: this run (one per plan) is the only writer
            probe = bool(state) or done > 0
            if probe:
                conn.execute(_q("key_index"))
            started = time.monotonic()
            run = {"extended": 0, "batches": int(state.get("batches", 0)), "left_over": 0}
            last_put = time.monotonic()
            ranges: list[list[Any]] = list(state.get("ranges", []))
            phase = str(state.get("phase", "scan"))

            def batch(after: Sequence[Any] | None, until: Sequence[Any] | None) -> int:
                count, _avoided, left_over = runner.run(
                    self._batch_statements(table, after, until, window_end, probe=probe or phase == "retry"))
                run["batches"] += 1
                run["extended"] += int(count)
                if count:
                    ctx.progress("rows extended", done + run["extended"], max(total, done + run["extended"]), "rows")
                _throttle(started, run["extended"], self.spec.max_rate)
                return int(left_over)

            def save(**extra: Any) -> None:
                nonlocal last_put
                last_put = time.monotonic()
                ctx.put(state_key, {"total": total, "batches": run["batches"], "ranges": ranges, **extra})

            if phase == "scan":
                after = state.get("after")
                while True:
                    found = _one(conn, self._window_statement(table, after))
                    until = _jsonable(list(found)) if found is not None else None
                    if batch(after, until):
                        ranges.append([after, until])
                    if until is None:
                        break
                    after = until
                    if time.monotonic() - last_put >= _PUT_EVERY:
                        save(phase="scan", after=after)
                phase = "retry"
                save(phase="retry")
            if ranges and not probe:
                conn.execute(_q("key_index"))
            for low, high in ranges:  # pass 2: the ranges where rows were locked (or extended before)
                run["left_over"] += batch(low, high)
            ranges = []
            summary = _summary(conn, self.backup)
            result = {"backup": self.backup, "table": f"{table.schema}.{table.table}", "column": table.column,
                      "by": format_duration(self.spec.by), "window": format_duration(self.window),
                      "window_end": header[2].isoformat() if header[2] else None, "eligible": total,
                      "rows_extended": summary["extended"], "refreshes_avoided": summary["avoided"],
                      "extended_this_attempt": run["extended"], "left_locked": run["left_over"],
                      "batches": run["batches"], "lock_retries": runner.retries,
                      "slowest_batch_seconds": round(runner.slowest, 3)}
            save(phase="done")
            ctx.put(f"{self.id}.result", result)
            ctx.progress("rows extended", summary["extended"], max(total, summary["extended"]), "rows")
        finally:
            conn.close()

    def verify(self, ctx: StepContext) -> Sequence[Check]:
        with ctx.connect(self.spec.on) as conn:
            header = _header(conn, self.backup)
            if header is None:
                return [Check("ttl backup", False, f"no backup {self.backup!r} in bluegreen.ttl_backups")]
            table = header[0]
            summary = _summary(conn, self.backup)
            still, total = _one(conn, _q("still_extended", backup=sql.Literal(self.backup), **table.parts()))
        result = ctx.get(f"{self.id}.result") or {}
        changed = int(total) - int(still)
        gone = summary["extended"] - int(total)
        detail = (f"{_plural(summary['extended'], 'row')} of {table.name} extended by {format_duration(self.spec.by)}"
                  f" (backup {self.backup}); {summary['avoided']:,} of them would have expired within the"
                  f" {format_duration(self.window)} window: refreshes avoided")
        if changed or gone:
            detail += f"; since then {changed:,} changed and {gone:,} deleted by the application"
        if result:
            detail += (f"; {_plural(int(result.get('batches', 0)), 'batch')}, slowest"
                       f" {result.get('slowest_batch_seconds', 0)}s, {result.get('lock_retries', 0)} lock retries")
        ok = summary["extended"] >= int(result.get("rows_extended", 0))
        return [Check("ttl extended", ok, detail)]

    def rollback(self, ctx: StepContext) -> Sequence[Action]:
        with ctx.connect(self.spec.on) as conn:
            header = _header(conn, self.backup)
            if header is None:
                return []
            bounds = _restore_bounds(conn, self.backup, self.batch_size)
        if not bounds:
            return []
        return _restore_actions(self.id, self.backup, self.spec.on, header[0], sql.Literal(header[1]), bounds,
                                self._settings(), f"restore {header[0].name} where it still holds the extended value")


def _jsonable(values: Sequence[Any] | None) -> list[Any] | None:
    if values is None:
        return None
    return [v if isinstance(v, int | float | str | bool) or v is None else str(v) for v in values]


# -- restore_ttl --------------------------------------------------------------------------------------


class RestoreTtlSpec(StepSpecBase):
    """Put back expiry values saved by an extend_ttl, where the rows still hold the extended value."""

    kind: Literal["restore_ttl"]
    extend: str | None = Field(None, description="the extend_ttl step (of this plan) whose backup to restore")
    backup: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,200}$",
                               description="or a backup by name (an extend_ttl of another plan)")
    backup_on: Target | None = Field(None, description="where the backup is (default: where extend_ttl ran, or"
                                                       " blue)")
    on: Target | None = Field(None, description="where to restore (default: where the backup is); green after"
                                                " the snapshot")
    batch_size: int | None = Field(None, ge=1, le=1_000_000)
    max_rate: float | None = Field(None, gt=0, description="at most this many rows per second (on the other"
                                                           " cluster)")

    @model_validator(mode="after")
    def _one_source(self) -> RestoreTtlSpec:
        if (self.extend is None) == (self.backup is None):
            raise ValueError("give exactly one of 'extend' (a step id) or 'backup' (a backup name)")
        return self


@register("restore_ttl", RestoreTtlSpec)
class RestoreTtlStep(Step[RestoreTtlSpec]):
    """Restore saved expiry values on the backup's cluster (journaled batches) or on the other one."""

    def __init__(self, spec: RestoreTtlSpec, loaded: Any) -> None:
        super().__init__(spec, loaded)
        self.source: ExtendTtlSpec | None = None
        if spec.extend is not None:
            found = [s for s in loaded.plan.steps if s.id == spec.extend]
            if not found or not isinstance(found[0], ExtendTtlSpec):
                raise UsageError(f"{loaded.path}: step {spec.id!r}: extend: no extend_ttl step {spec.extend!r}"
                                 " in this plan")
            self.source = found[0]

    @property
    def backup(self) -> str:
        if self.source is not None:
            return self.source.backup or f"{self.loaded.plan.name}.{self.source.id}"
        assert self.spec.backup is not None
        return self.spec.backup

    @property
    def backup_on(self) -> Target:
        return self.spec.backup_on or (self.source.on if self.source is not None else "blue")

    @property
    def target(self) -> Target:
        return self.spec.on or self.backup_on

    @property
    def batch_size(self) -> int:
        return int(self.spec.batch_size or self.setting("batch_size"))

    def _settings(self) -> dict[str, Any]:
        return {"lock_timeout": self.setting("lock_timeout"), "statement_timeout": self.setting("statement_timeout"),
                "lock_retries": self.loaded.plan.defaults.lock_retries,
                "retry_backoff": self.loaded.plan.defaults.retry_backoff}

    def _offline(self) -> TtlTable:
        if self.source is not None:
            return _offline_table(self.source.table, self.source.column, self.source.key)
        return TtlTable("<schema>", f"<table of backup {self.backup}>", "<column>", (_UNKNOWN_KEY,))

    def _read(self, ctx: StepContext) -> tuple[TtlTable, timedelta, list[int]] | None:
        """The backup's table, extension and batch bounds, or None offline / when there is no backup yet."""
        try:
            connection = ctx.connect(self.backup_on)
        except UsageError:
            if ctx.live:
                raise
            return None
        with connection as conn:
            header = _header(conn, self.backup)
            if header is None:
                if ctx.live:
                    raise BluegreenError(f"no backup {self.backup!r} in bluegreen.ttl_backups on {self.backup_on}")
                return None
            return header[0], header[1], _restore_bounds(conn, self.backup, self.batch_size)

    def plan(self, ctx: StepContext) -> Sequence[Action]:
        found = self._read(ctx)
        if found is not None:
            table, extend_by, bounds = found
            by: sql.Composable = sql.Literal(extend_by)
        else:
            table, bounds = self._offline(), []
            by = sql.Literal(self.source.by) if self.source is not None else sql.Placeholder("extend_by")
        if self.target == self.backup_on:
            description = f"restore {table.name} where it still holds the extended value"
            if found is None:
                return _restore_actions(self.id, self.backup, self.target, table, by, None, self._settings(),
                                        description + " (one such action per batch)")
            return _restore_actions(self.id, self.backup, self.target, table, by, bounds, self._settings(),
                                    description)
        rows = sql.Placeholder("rows_from_" + self.backup_on)
        return [SqlAction(
            id=f"restore_ttl:{self.id}:on-{self.target}", target=self.target,
            statements=(_UTC, _q("restore_rows_lock", rows=rows, **table.parts()),
                        _q("restore_rows", rows=rows, extend_by=by, **table.parts())), transactional=True,
            description=(f"repeated per batch of {self.batch_size} backup rows read from {self.backup_on}"
                         " (id order), passed as a jsonb array"), **self._settings())]

    def apply(self, ctx: StepContext) -> None:
        actions = self.plan(ctx)
        if not ctx.live:
            ctx.run_actions(actions)
            return
        if self.target == self.backup_on:
            for attempt in range(_RESTORE_ROUNDS):
                if attempt:  # rows a batch could not restore (they stay 'extended'): another round
                    found = self._read(ctx)
                    if found is None or not found[2]:
                        return
                    table, extend_by, bounds = found
                    actions = _restore_actions(self.id, self.backup, self.target, table, sql.Literal(extend_by),
                                               bounds, self._settings(), "restore the rows left extended",
                                               tag=f"r{attempt}.")
                for index, action in enumerate(actions):
                    ctx.run_actions([action])
                    ctx.progress("batches restored", index + 1, len(actions), "batches")
            return
        self._restore_elsewhere(ctx)

    def _restore_elsewhere(self, ctx: StepContext) -> None:
        state_key = f"{self.id}.restore_ttl"
        state = ctx.get(state_key) or {}
        name = f"bluegreen restore_ttl {self.id}"
        source = db.connect(ctx.dsns[self.backup_on], self.backup_on, application_name=name)
        target = db.connect(ctx.dsns[self.target], self.target, application_name=name)
        try:
            header = _header(source, self.backup)
            if header is None:
                raise BluegreenError(f"no backup {self.backup!r} in bluegreen.ttl_backups on {self.backup_on}")
            table = header[0]
            total = _summary(source, self.backup)["extended"]
            runner = _Batches(target, SqlAction(id="", target=self.target, statements=(),
                                                **self._settings()), f"restore_ttl {table.name} on {self.target}")
            after = int(state.get("after", 0))
            counts = {k: int(state.get(k, 0)) for k in ("restored", "kept", "gone")}
            started = time.monotonic()
            done = 0
            while True:
                rows = source.execute(_q("backup_rows", backup=sql.Literal(self.backup), after=sql.Literal(after),
                                         batch_size=sql.Literal(self.batch_size))).fetchall()
                if not rows:
                    break
                payload = json.dumps([{"key": r[1], "old_value": r[2].isoformat(),
                                       "new_value": r[3].isoformat()} for r in rows])
                rows_json = sql.Literal(payload)
                restored, kept, gone = runner.run([
                    _q("restore_rows_lock", rows=rows_json, **table.parts()),
                    _q("restore_rows", rows=rows_json, extend_by=sql.Literal(header[1]), **table.parts())])
                counts["restored"] += int(restored)
                counts["kept"] += int(kept)
                counts["gone"] += int(gone)
                after = int(rows[-1][0])
                done += len(rows)
                ctx.put(state_key, {"after": after, **counts})
                ctx.progress("rows checked", sum(counts.values()), total, "rows")
                _throttle(started, done, self.spec.max_rate)
            ctx.put(f"{self.id}.result", {"backup": self.backup, "on": self.target, "table": table.name,
                                          "rows": total, **counts})
        finally:
            source.close()
            target.close()

    def verify(self, ctx: StepContext) -> Sequence[Check]:
        if self.target == self.backup_on:
            with ctx.connect(self.backup_on) as conn:
                summary = _summary(conn, self.backup)
            detail = (f"backup {self.backup}: {summary['restored']:,} restored, {summary['kept']:,} kept (changed by"
                      f" the application since), {summary['gone']:,} deleted since")
            if summary["extended"]:
                detail += f"; {summary['extended']:,} still extended"
            return [Check("ttl restored", summary["extended"] == 0, detail)]
        result = ctx.get(f"{self.id}.result") or {}
        counts = {k: int(result.get(k, 0)) for k in ("restored", "kept", "gone")}
        detail = (f"backup {self.backup} on {self.target}: {counts['restored']:,} restored, {counts['kept']:,} kept"
                  f" (changed since), {counts['gone']:,} missing there")
        return [Check("ttl restored", sum(counts.values()) == int(result.get("rows", -1)), detail)]
