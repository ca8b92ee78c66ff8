"""The fault-injection harness, generic over a plan: a reference run, then one injected fault per case.

A :class:`Target` is a plan file plus a function that loads fresh blue/green databases with fixed data.
The harness runs it once uninterrupted and records green's state (:func:`green_state`: a checksum and row
count per table, the index and constraint definitions, the sequence values), then for each fault point it
prepares fresh databases, runs the real CLI with the fault, checks how the first run ended, re-runs the
plan once, checks that it completes, and compares green's state with the reference.

Fault points come from the plan itself, never from a hand-kept list: every action id that
``bluegreen run PLAN --dry-run --json`` renders against freshly prepared databases and the reference run
journals gets a ``before:`` and an ``after:`` point (the runner's ``BLUEGREEN_FAULT`` hook); a snapshot's
rendered phases and tables get the copy engine's points (``after:dump_schema:<step>``,
``during:``/``after:copy_table:<step>:<table>``, ...). Actions that fire no hook (steps that run their own
actions: extend_ttl, replay, cutover, validate, ...) are listed, and parked on gates instead (:class:`Gate`).
Two correct runs differ in bookkeeping (times, run ids, snapshots, surrogate keys): those columns of the
tool's own schemas are left out of the comparison, and a target names its own (:attr:`Target.volatile`,
:attr:`Target.mask`).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from func.helpers import bluegreen, cli_env, query
from psycopg import sql

from orchestrator.localenv import Databases, LocalCluster, LocalPgBouncer, twin_databases

# Columns of the tool's own schemas (bluegreen, bluegreen_quarantine, ...) whose values differ between two
# runs of the same plan by nature: run ids, attempts, clock times, transaction ids, process ids.
VOLATILE_TYPES = frozenset({"timestamp with time zone", "timestamp without time zone", "date", "xid", "xid8",
                            "pg_snapshot", "interval", "pg_lsn"})
VOLATILE_NAMES = frozenset({"run_id", "attempt", "pid", "backend_pid", "seconds", "duration", "rounds", "xmin",
                            "applied_by"})


def _volatile(name: str, type_name: str) -> bool:
    """A bookkeeping column whose value differs between two runs of one plan (times, snapshots, attempts)."""
    return (type_name in VOLATILE_TYPES or name in VOLATILE_NAMES or name.endswith(("_at", "snapshot"))
            or name == "at")
# Tables of the tool's own schemas that are its run bookkeeping (the journal lives on the control cluster,
# blue; these are named here in case a plan puts the journal on green).
SKIP_TABLES = frozenset({("bluegreen", "runs"), ("bluegreen", "step_events"), ("bluegreen", "plan_locks")})

DETERMINISTIC = ("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 1;"
                 " SET IntervalStyle = 'postgres'; SET bytea_output = 'hex'")


@dataclass(frozen=True)
class Target:
    """A plan under test and how to give it fresh databases.

    :param name: names the target in case ids and the summary.
    :param plan: the plan file; its clusters come from ``$BLUE_DSN`` / ``$GREEN_DSN`` and ``env`` adds the rest.
    :param prepare: loads a fresh, empty pair of databases (blue, and green if the plan needs it) with
        fixed data: every call must produce the same rows.
    :param env: extra environment of a run for these databases (PgBouncer, database name, ...).
    """

    name: str
    plan: Path
    prepare: Callable[[Databases], None]
    env: Callable[[Databases], dict[str, str]] = lambda dbs: {}
    timeout: float = 300
    volatile: frozenset[tuple[str, str]] = frozenset()  # (table, column) of user tables set from the clock
    mask: str | None = None  # a regular expression over each row's text whose matches are not compared

    def cli_env(self, dbs: Databases, **extra: str) -> dict[str, str]:
        return cli_env(dbs, **self.env(dbs), **extra)

    def run(self, dbs: Databases, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return bluegreen(["run", str(self.plan), *args], self.cli_env(dbs, **extra), timeout=self.timeout)


@dataclass
class Outcome:
    """What one fault case did: the point, how the first run ended, and whether the re-run converged."""

    target: str
    point: str
    kind: str  # "sigkill", "sigkill-mid", "green-restart", "blue-drop"
    first_code: int | None = None
    rerun_code: int | None = None
    survived: bool = False
    seconds: float = 0.0
    diff: list[str] = field(default_factory=list)
    first_error: str = ""  # the last line the first run printed when it ended by itself


@dataclass
class Tally:
    """Every case of the session, for the summary line."""

    outcomes: list[Outcome] = field(default_factory=list)

    def summary(self) -> str:
        injected = len(self.outcomes)
        survived = sum(o.survived for o in self.outcomes)
        kills = sum(o.kind == "sigkill" for o in self.outcomes)
        parked = sum(o.kind == "sigkill-mid" for o in self.outcomes)
        parts = [f"SIGKILL at {kills} action boundaries"] if kills else []
        parts += [f"SIGKILL parked mid-action at {parked} gates"] if parked else []
        parts += [label for kind, label in (("green-restart", "green restart mid-migrate"),
                                            ("blue-drop", "blue drop mid-copy"))
                  if any(o.kind == kind for o in self.outcomes)]
        targets = sorted({o.target for o in self.outcomes})
        seconds = sum(o.seconds for o in self.outcomes)
        return (f"faults: {injected} injected, {survived} survived ({', '.join(parts)})"
                f" on {', '.join(targets)} in {seconds:.0f}s")


TALLY = Tally()


# -- state of green ---------------------------------------------------------------------------------------


def _user_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1, 2").fetchall()
    return [(str(s), str(t)) for s, t in rows if (s, t) not in SKIP_TABLES]


def _columns(conn: psycopg.Connection[Any], schema: str, table: str,
             volatile: frozenset[tuple[str, str]] = frozenset()) -> list[str]:
    """The columns of ``schema.table`` that are compared.

    In the tool's own schemas, bookkeeping is left out (:func:`_volatile`), and so are surrogate keys drawn
    from a sequence (identity, ``DEFAULT nextval(...)``: a quarantine id): a transaction a crash rolled back
    still consumed its numbers, and their order follows the rows' physical order, so they are not the same
    in two correct runs.
    """
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod),"
        " a.attidentity <> '' OR coalesce(pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%%', false)"
        " FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
        " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (sql.Identifier(schema, table).as_string(conn),)).fetchall()
    own = schema.startswith("bluegreen")
    return [str(name) for name, typ, serial in rows
            if not (own and (serial or _volatile(str(name), str(typ)))) and (table, str(name)) not in volatile
            and (f"{schema}.{table}", str(name)) not in volatile]


def _row_text(mask: str | None) -> sql.Composable:
    """A row's text as compared: ``r::text``, with the matches of ``mask`` replaced by ``*``."""
    if mask is None:
        return sql.SQL("r::text")
    return sql.SQL("regexp_replace(r::text, {}, '*', 'g')").format(sql.Literal(mask))


def green_state(dsn: str, volatile: frozenset[tuple[str, str]] = frozenset(),
                mask: str | None = None) -> dict[str, str]:
    """Per user table ``md5 of its sorted rows, row count``, plus index, constraint and sequence definitions.

    Tables of the tool's own schemas (``bluegreen*``) are included without their volatile columns.
    """
    state: dict[str, str] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(DETERMINISTIC.encode())
        for schema, table in _user_tables(conn):
            cols = _columns(conn, schema, table, volatile)
            select = sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join(sql.Identifier(c) for c in cols) if cols else sql.SQL("1"),
                sql.Identifier(schema, table))
            row = conn.execute(sql.SQL(
                "SELECT md5(coalesce(string_agg(t, E'\\n' ORDER BY t COLLATE \"C\"), '')), count(*)"
                " FROM (SELECT {} AS t FROM ({}) r) x").format(_row_text(mask), select)).fetchone()
            assert row is not None
            state[f"table {schema}.{table}"] = f"{row[0]} rows={row[1]}"
        for schema, name, definition in conn.execute(
                "SELECT schemaname, indexname, indexdef FROM pg_indexes"
                " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')").fetchall():
            if (schema, name) not in {(s, t) for s, t in SKIP_TABLES}:
                state[f"index {schema}.{name}"] = str(definition)
        for schema, table, name, definition, valid in conn.execute(
                "SELECT n.nspname, c.relname, k.conname, pg_get_constraintdef(k.oid), k.convalidated"
                " FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')").fetchall():
            state[f"constraint {schema}.{table}.{name}"] = f"{definition} validated={valid}"
        for schema, name, last, called in conn.execute(
                "SELECT schemaname, sequencename, last_value, last_value IS NOT NULL FROM pg_sequences"
                " WHERE schemaname NOT LIKE 'bluegreen%'").fetchall():
            state[f"sequence {schema}.{name}"] = f"last_value={last} called={called}"
        invalid = conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone()
        state["invalid indexes"] = str(invalid[0] if invalid else "?")
    return state


def table_rows(dsn: str, table: str, volatile: frozenset[tuple[str, str]] = frozenset(),
               mask: str | None = None) -> set[str]:
    """The compared rows of ``schema.table`` as text (to show what differs)."""
    schema, name = table.split(".", 1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(DETERMINISTIC.encode())
        cols = _columns(conn, schema, name, volatile)
        rows = conn.execute(sql.SQL("SELECT {} FROM (SELECT {} FROM {}) r").format(
            _row_text(mask), sql.SQL(", ").join(sql.Identifier(c) for c in cols) if cols else sql.SQL("1"),
            sql.Identifier(schema, name))).fetchall()
    return {str(r[0]) for r in rows}


def diff_states(reference: dict[str, str], got: dict[str, str]) -> list[str]:
    """Human-readable differences, one line each (empty when equal)."""
    out = []
    for key in sorted(reference.keys() | got.keys()):
        want, have = reference.get(key, "<missing>"), got.get(key, "<missing>")
        if want != have:
            out.append(f"{key}: reference {want!r}, after the fault {have!r}")
    return out


# -- fault points ----------------------------------------------------------------------------------------


def rendered_actions(target: Target, dbs: Databases) -> list[tuple[str, str, str]]:
    """``(step id, step kind, action id)`` of every action the plan's dry run renders against ``dbs``."""
    result = target.run(dbs, "--dry-run", "--json")
    assert result.returncode == 0, f"dry run of {target.plan} failed:\n{result.stderr[-3000:]}"
    payload = json.loads(result.stdout)
    kinds = {s["id"]: s["kind"] for s in payload["steps"]}
    return [(a["step"], kinds[a["step"]], a["action"]) for a in payload["rendered"]]


# Points fired by steps that run their own work (orchestrator/faults.py), by the action the dry run renders.
# The copy engine (orchestrator/copy/engine.py): each phase's end (its start is the previous one's end),
# ``copy_table:<step>:<table>`` mid-stream and after its commit, ``create_slot:<step>`` around the logical
# capture's slot. The logical replay (orchestrator/logical_replay.py): ``during:apply_changes:<step>:<capture>``
# after each target transaction it commits, ``during:drain:<cutover>`` likewise inside the cutover's pause. The
# cutover: before and after its catch-up outside the pause, each phase of the pause (PAUSE, fence, drain,
# sequences, switches, RESUME) and the reverse captures' ``create_slot:<capture>``. Every
# other action fires only if the runner runs it (``Runner._run_actions``): the remaining steps that run their
# own actions (extend_ttl, check_queries, replay, validate, a fast migrate's index builds) have no hook, and
# the suite parks them on a gate instead.
ENGINE_POINTS = {"create_slot": ("before", "after"), "apply_changes": ("during",),
                 "export_snapshot": ("after",), "dump_schema": ("after",), "restore_pre_data": ("after",),
                 "copy_table": ("during", "after"), "restore_post_data": ("before", "after"),
                 "set_sequences": ("after",), "analyze": ("before", "after"),
                 "catch_up": ("before", "after"), "pause": ("before", "after"), "fence_blue": ("before", "after"),
                 "drain": ("before", "during", "after"),
                 "sync_sequences": ("before", "after"), "switch": ("before", "after"),
                 "resume": ("before", "after")}


@dataclass(frozen=True)
class Points:
    """The SIGKILL points of a plan, and the rendered actions that have none."""

    points: list[str]
    unhooked: list[str]


def fault_points(actions: list[tuple[str, str, str]], journaled: list[str]) -> Points:
    """Every SIGKILL point of the plan: the runner's, in the order the reference run journaled the actions,
    then the copy engine's, in the order the dry run renders the snapshot's phases (the cases are independent,
    so the order only decides which points a seeded sample draws).

    :param actions: ``(step, kind, action id)`` as the dry run renders them: the source of the points.
    :param journaled: the action ids an uninterrupted run journaled (ran through the runner, so its
        ``before:``/``after:`` hook fires), in order; one the dry run does not render is added where the
        journal has it (the caller reports it: the dry run should have shown it).
    """
    rendered = [a for _, _, a in actions]
    hooked = set(journaled)
    order = list(journaled) + [a for a in rendered if a not in hooked]
    points: list[str] = []
    unhooked: list[str] = []
    for action in order:
        if action in hooked:
            points += [f"before:{action}", f"after:{action}"]
            continue
        engine = ENGINE_POINTS.get(action.split(":", 1)[0])
        if engine:
            points += [f"{when}:{action}" for when in engine]
        else:
            unhooked.append(action)
    return Points(list(dict.fromkeys(points)), unhooked)


def sample(points: list[str], size: int | None, seed: int) -> list[str]:
    """All points when ``size`` is None or covers them, else a seeded random sample kept in run order."""
    if size is None or size >= len(points):
        return points
    chosen = set(random.Random(seed).sample(points, size))
    return [p for p in points if p in chosen]


def journaled_actions(dsn: str) -> list[str]:
    """Action ids the journal on ``dsn`` saw done, in the order they finished."""
    rows = query(dsn, "SELECT action_id FROM bluegreen.step_events WHERE action_id IS NOT NULL AND status = 'done'"
                      " GROUP BY action_id ORDER BY min(event_id)")
    return [str(r[0]) for r in rows]


# -- cases -----------------------------------------------------------------------------------------------


@contextmanager
def fresh(target: Target, blue: LocalCluster, green: LocalCluster) -> Iterator[Databases]:
    """A fresh database pair, prepared by the target."""
    with twin_databases(blue, green) as dbs:
        target.prepare(dbs)
        yield dbs


@dataclass
class Reference:
    """An uninterrupted run: green's end state, the plan's fault points, and how the dry run compared."""

    state: dict[str, str]
    points: list[str]
    not_rendered: list[str]  # actions the live run journaled that the dry run did not render
    unhooked: list[str]  # actions the dry run rendered that have no BLUEGREEN_FAULT hook
    seconds: float
    rows: dict[str, set[str]] = field(default_factory=dict)  # every table's rows, to show a difference
    database: str = ""  # the reference run's database name: action ids that name it (a PgBouncer entry) get
    # each case's own name instead


def reference_run(target: Target, blue: LocalCluster, green: LocalCluster) -> Reference:
    """Run the plan uninterrupted on fresh databases; enumerate its fault points from its dry run."""
    with fresh(target, blue, green) as dbs:
        actions = rendered_actions(target, dbs)
        started = time.monotonic()
        result = target.run(dbs)
        seconds = time.monotonic() - started
        assert result.returncode == 0, f"uninterrupted run of {target.plan} failed:\n{result.stderr[-4000:]}"
        journaled = journaled_actions(dbs.blue_dsn)
        rendered = {a for _, _, a in actions}
        points = fault_points(actions, journaled)
        state = green_state(dbs.green_dsn, target.volatile, target.mask)
        rows = {key[6:]: table_rows(dbs.green_dsn, key[6:], target.volatile, target.mask)
                for key in state if key.startswith("table ")}
        return Reference(state, points.points, [a for a in journaled if a not in rendered], points.unhooked,
                         seconds, rows, dbs.name)


def _explain(target: Target, dbs: Databases, reference: Reference, diff: list[str]) -> list[str]:
    """Each differing table's line, followed by a few rows only the reference or only green has."""
    out = []
    for line in diff:
        out.append(line)
        if line.startswith("table "):
            table = line[6:].split(":", 1)[0]
            got = table_rows(dbs.green_dsn, table, target.volatile, target.mask)
            want = reference.rows.get(table, set())
            out += [f"    only in the reference: {r[:300]}" for r in sorted(want - got)[:3]]
            out += [f"    only after the fault:  {r[:300]}" for r in sorted(got - want)[:3]]
    return out


def check_rerun(target: Target, dbs: Databases, reference: Reference, outcome: Outcome) -> None:
    """Re-run the plan once; it must complete, and green must equal the reference."""
    rerun = target.run(dbs)
    outcome.rerun_code = rerun.returncode
    assert rerun.returncode == 0, (f"{target.name} {outcome.point}: the re-run exited {rerun.returncode}:\n"
                                   f"{rerun.stdout[-2000:]}\n{rerun.stderr[-4000:]}")
    assert "Traceback" not in rerun.stderr, rerun.stderr[-4000:]
    got = green_state(dbs.green_dsn, target.volatile, target.mask)
    outcome.diff = _explain(target, dbs, reference, diff_states(reference.state, got))
    assert not outcome.diff, f"{target.name} {outcome.point}: green differs from the uninterrupted run:\n" + \
        "\n".join(outcome.diff[:40])
    outcome.survived = True


def sigkill_case(target: Target, point: str, reference: Reference, blue: LocalCluster,
                 green: LocalCluster) -> Outcome:
    """Run with ``BLUEGREEN_FAULT=point`` (the process must die by SIGKILL), then re-run and compare."""
    outcome = Outcome(target.name, point, "sigkill")
    TALLY.outcomes.append(outcome)
    started = time.monotonic()
    try:
        with fresh(target, blue, green) as dbs:
            crashed = target.run(dbs, BLUEGREEN_FAULT=point.replace(reference.database, dbs.name)
                                 if reference.database else point)
            outcome.first_code = crashed.returncode
            assert crashed.returncode == -signal.SIGKILL, (
                f"{target.name} {point}: expected death by SIGKILL, the run exited {crashed.returncode}"
                f" (the fault point was never reached?):\n{crashed.stderr[-3000:]}")
            check_rerun(target, dbs, reference, outcome)
    finally:
        outcome.seconds = time.monotonic() - started
    return outcome


def own_pgbouncer(basedir: Path, backend: LocalCluster, password: str, name: str) -> LocalPgBouncer:
    """A PgBouncer of the suite's own (a cutover rewrites its config file), in front of ``backend``."""
    bouncer = LocalPgBouncer(basedir, backend.host, backend.port, password, name=name)
    bouncer.start()
    return bouncer


# -- gated cases: park the run inside an action, then kill it or break a server under it ------------------


@dataclass(frozen=True)
class Gate:
    """A lock the test holds so that the run parks inside an action, observably (it waits on a lock).

    :param label: names the case (``mid:<what>``).
    :param side: the cluster the lock is taken on.
    :param hold: statements run in an open transaction on a connection of the test's own, taking the lock.
    :param when: a query on ``side`` that turns true when the lock is to be taken (default: before the run
        starts), for a lock on an object the run itself creates.
    """

    label: str
    side: str
    hold: str
    when: str | None = None


def _waiting(dsn: str) -> bool:
    """Whether another session of this database is waiting on a lock."""
    return bool(query(dsn, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                           " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")[0][0])


def _wait(predicate: Callable[[], bool], proc: subprocess.Popen[str], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"the run ended ({proc.returncode}) before {what}:\n{err[-3000:]}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _spawn(target: Target, dbs: Databases) -> subprocess.Popen[str]:
    from func.helpers import spawn
    return spawn(["run", str(target.plan)], target.cli_env(dbs))


def gated_case(target: Target, gate: Gate, kind: str, reference: Reference, blue: LocalCluster,
               green: LocalCluster, strike: Callable[[Databases, subprocess.Popen[str]], None]) -> Outcome:
    """Hold ``gate``, start the run, wait until it parks on the gate, ``strike``, release, then re-run.

    ``strike`` injects the fault while the run is parked (SIGKILL it, restart a server, end sessions).
    After a SIGKILL the run must have died by it; after any other fault the first run must end cleanly
    (an exit code, no traceback) or finish by itself. Either way the re-run must complete and green
    must equal the reference.
    """
    outcome = Outcome(target.name, gate.label, kind)
    TALLY.outcomes.append(outcome)
    started = time.monotonic()
    try:
        with fresh(target, blue, green) as dbs:
            dsn = dbs.blue_dsn if gate.side == "blue" else dbs.green_dsn
            holder = psycopg.connect(dsn)
            try:
                if gate.when is None:
                    holder.execute(gate.hold.encode())
                proc = _spawn(target, dbs)
                try:
                    if gate.when is not None:
                        when = gate.when
                        _wait(lambda: bool(query(dsn, when)[0][0]), proc, f"{gate.label}: {when}", timeout=120)
                        holder.execute(gate.hold.encode())
                    _wait(lambda: _waiting(dsn), proc, f"the run to park on the gate ({gate.label})")
                    strike(dbs, proc)
                finally:
                    if not holder.closed:
                        try:
                            holder.rollback()
                            holder.execute("SELECT pg_advisory_unlock_all()")
                            holder.commit()
                        except psycopg.OperationalError:
                            pass  # its server restarted under it: the lock went with the session
                    try:
                        _, err = proc.communicate(timeout=target.timeout)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        _, err = proc.communicate()
            finally:
                holder.close()
            outcome.first_code = proc.returncode
            outcome.first_error = next((line.strip() for line in reversed(err.splitlines()) if "error" in line), "")
            if kind == "sigkill-mid":
                assert proc.returncode == -signal.SIGKILL, f"{gate.label}: the run exited {proc.returncode}"
            else:
                assert proc.returncode is not None and proc.returncode >= 0, \
                    f"{gate.label}: the first run died by signal {proc.returncode}:\n{err[-3000:]}"
                assert "Traceback" not in err, f"{gate.label}: the first run printed a traceback:\n{err[-4000:]}"
            check_rerun(target, dbs, reference, outcome)
    finally:
        outcome.seconds = time.monotonic() - started
    return outcome


def sigkill(dbs: Databases, proc: subprocess.Popen[str]) -> None:
    """Strike: SIGKILL the CLI."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def restart(cluster: LocalCluster) -> Callable[[Databases, subprocess.Popen[str]], None]:
    """Strike: restart ``cluster`` (fast shutdown ends every session, then start again)."""
    def strike(dbs: Databases, proc: subprocess.Popen[str]) -> None:
        cluster.stop()
        cluster.start()
    return strike


def drop_sessions(side: str, application_name: str) -> Callable[[Databases, subprocess.Popen[str]], None]:
    """Strike: ``pg_terminate_backend`` every session of the run's database named ``application_name``."""
    def strike(dbs: Databases, proc: subprocess.Popen[str]) -> None:
        dsn = dbs.blue_dsn if side == "blue" else dbs.green_dsn
        ended = query(dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
                           " AND application_name = %s AND pid <> pg_backend_pid()", (application_name,))
        assert ended, f"no {application_name!r} session on {side} to end"
    return strike


def uninterrupted_diff(target: Target, reference: Reference, blue: LocalCluster,
                       green: LocalCluster) -> list[str]:
    """A second uninterrupted run compared with the reference: a target whose runs differ is not testable."""
    with fresh(target, blue, green) as dbs:
        result = target.run(dbs)
        assert result.returncode == 0, result.stderr[-4000:]
        got = green_state(dbs.green_dsn, target.volatile, target.mask)
        return _explain(target, dbs, reference, diff_states(reference.state, got))
