"""``kind: snapshot``: copy blue's database into an empty green one, possibly a newer major, under one snapshot.

One exported snapshot (``pg_export_snapshot()`` in a REPEATABLE READ transaction held open by the
step until ``verify()`` ends) is shared by every reader; ``pg_current_snapshot()`` of it is recorded
in the journal (run state ``snapshot:<step id>``), per table, for the replay of captured events.
When a logical capture of the source comes before this step, the step creates that capture's slot
(``CREATE_REPLICATION_SLOT ... LOGICAL pgoutput (SNAPSHOT 'export')`` on a replication connection kept
open until ``verify()`` ends) and the snapshot every reader shares is the one the slot exported: the
boundary between the copy and the replay is the slot's consistent point.
``method: copy`` (default) streams each table with ``COPY ... TO STDOUT`` into ``COPY ... FROM
STDIN`` (``jobs`` at a time, no file in between) between a schema-only pg_dump's pre-data and
post-data; ``method: dump`` is ``pg_dump -Fd --jobs`` + ``pg_restore --jobs``. The client tools are
those of the newer major (``pg_bin``; by default the newest found). Details:
``orchestrator/copy/engine.py``.

Locks: on blue, ACCESS SHARE on every copied table for the length of the copy (reads only; writes go
on; DDL on those tables waits); the snapshot holds back blue's xmin horizon (vacuum) meanwhile. On
green, each table is TRUNCATEd and filled in one transaction (ACCESS EXCLUSIVE on a table nobody
else uses yet).

Idempotent and resumable: a table is marked done in ``bluegreen.snapshot_tables`` on green in the
same transaction as its COPY; a re-run (after a crash, the snapshot being gone) copies again only the
copy groups (tables linked by foreign keys, or one partition tree) with an unfinished table, under a
new snapshot that it records for those tables; indexes and constraints already restored are kept.
(With a logical capture whose slot survived, the replay then skips for each table the changes visible
in that table's snapshot; a slot that is gone makes the copy start over from a new one.)
Refuses to start on a green database that is not empty. ``method: dump`` resumes by cleaning green
and starting over.

Undo: drop every schema the snapshot restored on green (``public`` is emptied and made again) and
forget its state.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Literal

from psycopg import sql
from pydantic import Field, model_validator

from .. import secrets
from ..actions import Action, CommandAction, SqlAction
from ..copy import PreconditionFailed
from ..copy.catalog import OWN_SCHEMAS, Catalog, read_catalog
from ..copy.engine import Hooks, Options, Result, SlotRequest, SnapshotEngine, clean_statements
from ..copy.pgtools import PgTools, find_tools, libpq_args
from ..copy.verify import verify_objects, verify_tables
from ..db import connect
from ..errors import MissingBinary
from ..logical import capture_name
from ..spec import Duration, Size, StepSpecBase, Target
from ..sqlfiles import read_sql
from . import register
from .base import Check, Step, StepContext


class SnapshotSpec(StepSpecBase):
    """Copy one database into an empty one (possibly a newer major) under one exported snapshot."""

    kind: Literal["snapshot"]
    from_: Target = Field("blue", alias="from", description="the cluster copied from")
    to: Target = Field("green", description="the cluster copied into (an empty database)")
    method: Literal["copy", "dump"] = Field("copy", description="copy: parallel streaming COPY; dump: pg_dump -Fd "
                                                                "+ pg_restore")
    jobs: int = Field(2, ge=1, le=64, description="tables copied (and indexes built) at once")
    pg_bin: str | None = Field(None, description="bin directory of the client tools (pg_dump, pg_restore, psql) of "
                                                 "the newer major; default: the newest found")
    schemas: list[str] | None = Field(None, min_length=1, description="only these schemas (default: all but "
                                                                      "bluegreen's own)")
    exclude_schemas: list[str] = Field(default_factory=list)
    split_tables_above: Size | None = Field(None, description="copy tables larger than this in ctid ranges, in "
                                                              "parallel (method copy)")
    format: Literal["auto", "binary", "text"] = Field("auto", description="COPY format: binary unless a column's "
                                                                          "type has no binary I/O")
    owners: bool = Field(True, description="restore ownership (the roles must exist on the target)")
    privileges: bool = Field(True, description="restore GRANTs (the roles must exist on the target)")
    analyze: bool = Field(True, description="ANALYZE the target after the copy")
    checksums: bool = Field(True, description="verify: a checksum of every table, not only row counts")
    work_dir: str | None = Field(None, description="where pg_dump writes (schema only for copy; everything for dump)")
    tool_timeout: Duration = Field(timedelta(hours=24), description="the longest a pg_dump or pg_restore may run")

    @model_validator(mode="after")
    def _two_sides(self) -> SnapshotSpec:
        if self.from_ == self.to:
            raise ValueError("'from' and 'to' must be different clusters")
        if set(self.exclude_schemas) & set(self.schemas or ()):
            raise ValueError("a schema is both in 'schemas' and 'exclude_schemas'")
        for schema in [*(self.schemas or ()), *self.exclude_schemas]:
            if schema in OWN_SCHEMAS:
                raise ValueError(f"schema {schema!r} is bluegreen's own: it is never copied")
        return self


@register("snapshot", SnapshotSpec)
class SnapshotStep(Step[SnapshotSpec]):
    """Snapshot-restore of one database, resumable per table."""

    _result: Result | None = None

    @property
    def state_key(self) -> str:
        return f"snapshot:{self.id}"

    def options(self) -> Options:
        spec = self.spec
        return Options(method=spec.method, jobs=spec.jobs, pg_bin=spec.pg_bin,
                       schemas=tuple(spec.schemas) if spec.schemas else None,
                       exclude_schemas=tuple(spec.exclude_schemas), split_above=spec.split_tables_above,
                       format=spec.format, owners=spec.owners, privileges=spec.privileges, analyze=spec.analyze,
                       work_dir=(self.loaded.base_dir / spec.work_dir) if spec.work_dir else None,
                       tool_timeout=spec.tool_timeout.total_seconds())

    # -- plan: what a dry run shows ---------------------------------------------------------------

    def _tools(self) -> PgTools:
        try:
            return find_tools(self.spec.pg_bin, 0)
        except MissingBinary:
            return PgTools(Path("$PG_BIN"), 0)

    def _slot_request(self, run_id: int | None) -> SlotRequest | None:
        """The logical capture whose slot this step creates (and copies under its exported snapshot), if any."""
        from .capture import logical_capture_before

        capture = logical_capture_before(self.loaded, self.spec)
        return SlotRequest(capture.id, capture_name(run_id, capture.id)) if capture is not None else None

    def _prepare_target(self) -> SqlAction:
        """``bluegreen.snapshot_tables`` on the target (the copy's per-table progress), under an advisory lock."""
        return SqlAction(
            id=f"prepare_target:{self.id}", target=self.spec.to,
            statements=(sql.SQL("SELECT pg_advisory_xact_lock(25191, 5)"), sql.SQL(read_sql("snapshot.sql"))),
            description="bluegreen.snapshot_tables on the target")

    def plan(self, ctx: StepContext) -> Sequence[Action]:
        spec = self.spec
        opts = self.options()
        tools = self._tools()
        src = secrets.redact_dsn(libpq_args(ctx.dsns.get(spec.from_, "") or "dbname=blue")[0])
        dst = secrets.redact_dsn(libpq_args(ctx.dsns.get(spec.to, "") or "dbname=green")[0])
        catalog = self._catalog_for_plan(ctx)
        actions: list[Action] = [self._prepare_target()]
        slot = self._slot_request(ctx.run_id)
        if slot is None:
            actions.append(SqlAction(
                id=f"export_snapshot:{self.id}", target=spec.from_, transactional=False,
                statements=(sql.SQL("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"),
                            sql.SQL("SELECT pg_export_snapshot(), pg_current_snapshot()")),
                description="one snapshot every reader shares, held open until verify ends"))
        else:
            actions.append(SqlAction(
                id=f"create_slot:{self.id}", target=spec.from_, transactional=False,
                statements=(sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')").format(
                    sql.Identifier(slot.name)),),
                description=f"on a replication connection, for capture {slot.capture_id!r}: the copy reads under the"
                            " snapshot it exports, so every change after it is decoded and none before it"))
            actions.append(SqlAction(
                id=f"export_snapshot:{self.id}", target=spec.from_, transactional=False,
                statements=(sql.SQL("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"),
                            sql.SQL("SET TRANSACTION SNAPSHOT <the slot's exported snapshot>"),
                            sql.SQL("SELECT pg_current_snapshot()")),
                description="every reader imports the slot's snapshot; the replication connection holds it"
                            " until verify ends"))
        work = "$WORK"

        def command(action_id: str, argv: Sequence[str], description: str) -> CommandAction:
            return CommandAction(id=f"{action_id}:{self.id}", argv=tuple(argv), timeout=spec.tool_timeout,
                                 description=description)

        pg_dump, pg_restore = tools.tool_path("pg_dump"), tools.tool_path("pg_restore")
        if spec.method == "dump":
            actions.append(command("dump", [pg_dump, "--format=directory", f"--jobs={spec.jobs}",
                                            "--snapshot=$SNAPSHOT", "--no-sync", *opts.dump_filters(),
                                            f"--file={work}/dump", f"--dbname={src}"],
                                   f"dump {spec.from_} under the snapshot"))
            actions.append(command("restore", [pg_restore, f"--jobs={spec.jobs}", "--exit-on-error",
                                               f"--use-list={work}/restore.list", f"--dbname={dst}", f"{work}/dump"],
                                   f"restore into {spec.to} (capture triggers left out)"))
        else:
            actions.append(command("dump_schema", [pg_dump, "--format=custom", "--schema-only", "--snapshot=$SNAPSHOT",
                                                   *opts.dump_filters(), f"--file={work}/schema.dump",
                                                   f"--dbname={src}"],
                                   "the schema, under the snapshot"))
            actions.append(command("restore_pre_data", [pg_restore, "--section=pre-data", "--single-transaction",
                                                        "--exit-on-error", f"--use-list={work}/pre.list",
                                                        f"--dbname={dst}", f"{work}/schema.dump"],
                                   "types, tables, functions, views: one transaction"))
            actions.extend(self._copy_actions(catalog))
            actions.append(command("restore_post_data", [pg_restore, "--section=post-data", f"--jobs={spec.jobs}",
                                                         "--exit-on-error", f"--use-list={work}/post.list",
                                                         f"--dbname={dst}", f"{work}/schema.dump"],
                                   "indexes, constraints, triggers, in parallel (capture triggers left out)"))
            if catalog is None or catalog.sequences:
                actions.append(SqlAction(
                    id=f"set_sequences:{self.id}", target=spec.to, transactional=False,
                    statements=tuple(sql.SQL("SELECT setval({}::regclass, {}, {})").format(
                        sql.Literal(s.relation.display), sql.Literal(s.last_value), sql.Literal(s.is_called))
                        for s in catalog.sequences) if catalog is not None else
                    (sql.SQL("SELECT setval(seq, last_value, is_called) /* every sequence, as of the snapshot */"),),
                    description="sequences at their value as of the snapshot"))
        if spec.analyze:
            actions.append(SqlAction(id=f"analyze:{self.id}", target=spec.to, transactional=False,
                                     statements=(sql.SQL("ANALYZE"),),
                                     description="every copied table, each by an idle worker as soon as its rows and"
                                                 " indexes are in, then partitioned parents (ONLY, from PostgreSQL 17)"
                                                 f" and materialized views, {spec.jobs} at a time"))
        return actions

    def _catalog_for_plan(self, ctx: StepContext) -> Catalog | None:
        """The tables a dry run would copy, when the source can be read (not ``--offline``)."""
        try:
            with ctx.connect(self.spec.from_) as conn:
                return read_catalog(conn, self.spec.schemas, self.spec.exclude_schemas)
        except Exception:  # --offline, or the source unreachable: describe without it
            return None

    def _copy_actions(self, catalog: Catalog | None) -> list[Action]:
        spec = self.spec
        if catalog is None:
            return [SqlAction(
                id=f"copy_tables:{self.id}", target=spec.to, transactional=True,
                statements=(sql.SQL("TRUNCATE ONLY <table>"),
                            sql.SQL("COPY <table> (<columns>) FROM STDIN (FORMAT binary, FREEZE) /* streamed from "
                                    "COPY <table> (<columns>) TO STDOUT (FORMAT binary) under the snapshot */"),
                            sql.SQL("UPDATE bluegreen.snapshot_tables SET done = true, snapshot = <snapshot>"
                                    " WHERE relation = <table>")),
                description=f"every table of {spec.from_}, {spec.jobs} at a time, largest first")]
        out: list[Action] = []
        for table in sorted(catalog.tables, key=lambda t: -t.bytes):
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in table.copy_columns)
            fmt = "binary" if spec.format == "binary" or (spec.format == "auto" and table.binary) else "text"
            out.append(SqlAction(
                id=f"copy_table:{self.id}:{table.display}", target=spec.to, transactional=True,
                statements=(sql.SQL("TRUNCATE ONLY {}").format(table.relation.ident),
                            sql.SQL("COPY {} ({}) FROM STDIN (FORMAT {}, FREEZE) /* streamed from COPY {} ({}) TO "
                                    "STDOUT under the snapshot */").format(
                                table.relation.ident, cols, sql.SQL(fmt), table.relation.ident, cols),
                            sql.SQL("UPDATE bluegreen.snapshot_tables SET done = true WHERE relation = {}").format(
                                sql.Literal(table.display))),
                description=f"{table.bytes / 1e6:,.1f} MB, copy group {table.group}"))
        return out

    # -- apply ------------------------------------------------------------------------------------

    def apply(self, ctx: StepContext) -> None:
        if not ctx.live:
            ctx.run_actions(self.plan(ctx))
            return
        assert ctx.run_id is not None
        # a journaled action first: it marks the step as touched, so a failed run's rollback cleans green
        ctx.run_actions([self._prepare_target()])
        self.close()
        engine = SnapshotEngine(self.id, ctx.run_id, ctx.dsns, self.spec.from_, self.spec.to, self.options(),
                                Hooks(progress=ctx.progress, note=ctx.reporter.note, put=ctx.put, get=ctx.get),
                                slot=self._slot_request(ctx.run_id))
        self._result = engine.run()
        totals = self._result.totals
        phases = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in totals.phases.items())
        if self.spec.method == "dump":
            ctx.reporter.note(f"snapshot {self.id}: {totals.tables} table(s) dumped and restored in "
                              f"{totals.seconds:.1f}s ({phases})")
            return
        data = totals.phases.get("data", 0.0)
        rate = totals.bytes / 1e6 / data if data else 0.0
        ctx.reporter.note(
            f"snapshot {self.id}: {totals.tables} table(s) copied ({totals.rows:,} rows, {totals.bytes / 1e6:,.1f} MB "
            f"streamed at {rate:,.0f} MB/s), {totals.skipped} kept from an earlier attempt, in {totals.seconds:.1f}s"
            f" ({phases}; a table's own indexes are built during the data phase as soon as its rows are in, and"
            " foreign keys once their tables all have theirs)")

    def close(self) -> None:
        """Release the exported snapshot (after verify, or when the step fails)."""
        if self._result is not None:
            self._result.snapshot.close()
            self._result = None

    # -- verify -----------------------------------------------------------------------------------

    def verify(self, ctx: StepContext) -> Sequence[Check]:
        try:
            return self._verify(ctx)
        finally:
            self.close()

    def _verify(self, ctx: StepContext) -> list[Check]:
        state = ctx.get(self.state_key) or {}
        result = self._result
        src_dsn, dst_dsn = ctx.dsns[self.spec.from_], ctx.dsns[self.spec.to]
        recorded: dict[str, int] = {}
        live_tables: set[str] = set()
        with connect(dst_dsn, self.spec.to) as target:
            if self.spec.method == "copy":
                for relation, rows, snapshot in target.execute(
                        "SELECT relation, sum(rows), min(snapshot) FROM bluegreen.snapshot_tables"
                        " WHERE run_id = %s AND step_id = %s AND done GROUP BY relation",
                        (ctx.run_id, self.id)).fetchall():
                    recorded[relation] = int(rows or 0)
                    if result is not None and snapshot == result.snapshot.snapshot:
                        live_tables.add(relation)
            elif result is not None:
                live_tables = {t.display for t in result.catalog.tables}
            if result is not None and result.snapshot.alive:
                catalog = result.catalog
                objects = verify_objects(result.snapshot.conn, target, catalog, state.get("sequences", {}))
                live = result.snapshot.id
            else:
                with connect(src_dsn, self.spec.from_) as source:
                    catalog = read_catalog(source, self.spec.schemas, self.spec.exclude_schemas)
                    objects = verify_objects(source, target, catalog, state.get("sequences", {}))
                live = None
        missing = [t.display for t in catalog.tables if t.display not in recorded and self.spec.method == "copy"]
        if missing:
            raise PreconditionFailed(f"table(s) never copied: {', '.join(missing[:10])}")
        tables = verify_tables(ctx.dsns, self.spec.from_, self.spec.to, catalog, live, live_tables, recorded,
                               self.spec.jobs, self.spec.checksums)
        return [*tables, *objects]

    # -- rollback ---------------------------------------------------------------------------------

    def rollback(self, ctx: StepContext) -> Sequence[Action]:
        self.close()
        state = ctx.get(self.state_key) or {}
        schemas = state.get("schemas")
        if schemas is None:
            schemas = list(self.spec.schemas) if self.spec.schemas else ["public"]
        return [SqlAction(id=f"drop_snapshot:{self.id}", target=self.spec.to, transactional=True,
                          statements=tuple(clean_statements(schemas, ctx.run_id, self.id)),
                          lock_timeout=self.setting("lock_timeout"),
                          lock_retries=self.loaded.plan.defaults.lock_retries,
                          retry_backoff=self.loaded.plan.defaults.retry_backoff,
                          description=f"drop what the snapshot restored on {self.spec.to}: {', '.join(schemas)}")]
