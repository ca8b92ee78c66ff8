"""Capture, snapshot and replay without a server: plan validation, rendered SQL, replay-file parameters."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.actions import SqlAction, render
from orchestrator.copy.engine import Options, clean_statements
from orchestrator.copy.names import condition_references, condition_sql, parse_qualified_name
from orchestrator.copy.pgtools import libpq_args, parse_toc
from orchestrator.errors import PlanError
from orchestrator.plan import load_plan
from orchestrator.replay import CaptureInfo, Lag, RoundResult, compile_replay_sql
from orchestrator.spec import parse_size
from orchestrator.steps import StepContext, build_step
from orchestrator.steps.capture import trigger_name
from orchestrator.steps.replay import _Tally, catch_up_all

ENV = {"BLUE_DSN": "postgresql://postgres:secret-pw@127.0.0.1:5432/app",
       "GREEN_DSN": "postgresql://postgres:secret-pw@127.0.0.1:5433/app"}


def _plan(tmp_path: Path, steps: str) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text('version: 1\nname: t\nclusters:\n  blue: {dsn: "${BLUE_DSN}"}\n  green: {dsn: "${GREEN_DSN}"}\n'
                    f"steps:\n{steps}", encoding="utf-8")
    return path


def _error(tmp_path: Path, steps: str) -> str:
    with pytest.raises(PlanError) as info:
        load_plan(_plan(tmp_path, steps), ENV)
    return str(info.value)


def _offline_ctx(loaded: object) -> StepContext:
    def refuse(target: str) -> None:
        raise RuntimeError("offline")

    return StepContext(loaded, None, False, lambda actions: None, refuse, dsns={})  # type: ignore[arg-type]


def test_capture_renders_the_trigger_exactly(tmp_path: Path) -> None:
    loaded = load_plan(_plan(tmp_path, '  - {id: revoke, kind: capture, method: trigger, table: App."Tokens",'
                                      ' events: [update],'
                                      ' when: "OLD.active AND NOT NEW.active", lock_timeout: 500ms}\n'), ENV)
    step = build_step(loaded.plan.steps[0], loaded)
    actions = step.plan(_offline_ctx(loaded))
    assert [a.id for a in actions] == ["install_capture_schema:revoke", 'create_capture_trigger:revoke:app."Tokens"']
    trigger = actions[1]
    assert isinstance(trigger, SqlAction) and trigger.transactional and trigger.lock_retries == 5
    text = render(trigger)
    assert "SET LOCAL lock_timeout = '500ms';" in text
    assert ('CREATE TRIGGER "bluegreen_capture_revoke" AFTER UPDATE ON "app"."Tokens" FOR EACH ROW'
            " WHEN (old.active AND NOT new.active) EXECUTE FUNCTION bluegreen.capture_event('revoke');") in text
    undo = [render(a) for a in step.rollback(_offline_ctx(loaded))]
    assert 'DROP TRIGGER IF EXISTS "bluegreen_capture_revoke" ON "app"."Tokens";' in undo[0]


@pytest.mark.parametrize(("steps", "message"), [
    ('  - {id: c, kind: capture, table: "a b"}\n', "steps[0].table: 'a b' is not a table name"),
    ('  - {id: c, kind: capture, table: t, events: [upsert]}\n', "steps[0].events[0]: must be 'insert'"),
    ('  - {id: c, kind: capture, table: t, events: [update, update]}\n', "an event is listed twice"),
    ('  - {id: c, kind: capture, table: t, when: "NEW.x"}\n', "reads NEW, which a delete does not have"),
    ('  - {id: c, kind: capture, table: t, events: [update], when: "a = ("}\n', "not a valid SQL condition"),
    ('  - {id: c, kind: capture, table: t, replay: nope.sql}\n', "steps[0].replay: no such file"),
    ('  - {id: s, kind: snapshot, from: blue, to: blue}\n', "'from' and 'to' must be different clusters"),
    ('  - {id: s, kind: snapshot, split_tables_above: 10kB}\n', "at least 1MB"),
    ('  - {id: s, kind: snapshot, schemas: [bluegreen]}\n', "bluegreen's own"),
    ('  - {id: s, kind: snapshot, method: rsync}\n', "steps[0].method: must be 'copy' or 'dump'"),
    ('  - {id: r, kind: replay, max_lag: -1}\n', "steps[0].max_lag"),
])
def test_bad_specs_are_refused_with_their_location(tmp_path: Path, steps: str, message: str) -> None:
    assert message in _error(tmp_path, steps)


def test_a_replay_file_with_an_unknown_event_field_is_refused_at_load(tmp_path: Path) -> None:
    (tmp_path / "r.sql").write_text("-- revoke\nUPDATE t SET a = false\n WHERE k = :_when;\n")
    message = _error(tmp_path, "  - {id: c, kind: capture, table: t, replay: r.sql}\n")
    assert "plan.yaml:7: steps[0].replay:" in message and "r.sql:3:12: unknown parameter :_when" in message


def test_compile_replay_sql_keeps_text_and_maps_parameters() -> None:
    compiled = compile_replay_sql("/* c */ DELETE FROM t WHERE a = :old.a AND b = :\"B\" AND c LIKE 'x%' AND d = :A;"
                                  " SELECT :a, ':not', $$:nor$$, x::int, arr[1:2]", "f.sql")
    first, second = compiled.statements
    assert first.text == "DELETE FROM t WHERE a = $1 AND b = $2 AND c LIKE 'x%' AND d = $3"
    assert first.query == "DELETE FROM t WHERE a = %(p1)s AND b = %(p2)s AND c LIKE 'x%%' AND d = %(p3)s"
    assert first.params == ("old.a", "B", "a")
    assert second.text == "SELECT $1, ':not', $$:nor$$, x::int, arr[1:2]"
    assert second.params == ("a",)
    assert compiled.params == ("old.a", "B", "a")


@pytest.mark.parametrize(("text", "message"), [
    ("-- nothing\n", "no SQL statement"),
    ("UPDATE t SET :x", "f.sql:1:1: syntax error"),
    ("SELECT 1;\nSELECT :_nope", "f.sql:2:8: unknown parameter :_nope"),
])
def test_compile_replay_sql_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compile_replay_sql(text, "f.sql")


def test_snapshot_dry_run_offline_describes_every_phase(tmp_path: Path) -> None:
    loaded = load_plan(_plan(tmp_path, "  - {id: snap, kind: snapshot, jobs: 4, exclude_schemas: [audit],"
                                       " owners: false}\n"), ENV)
    step = build_step(loaded.plan.steps[0], loaded)
    ctx = _offline_ctx(loaded)
    ctx.dsns.update({"blue": ENV["BLUE_DSN"], "green": ENV["GREEN_DSN"]})
    actions = step.plan(ctx)
    assert [a.id for a in actions] == ["prepare_target:snap", "export_snapshot:snap", "dump_schema:snap",
                                       "restore_pre_data:snap", "copy_tables:snap", "restore_post_data:snap",
                                       "set_sequences:snap", "analyze:snap"]
    text = "\n".join(render(a) for a in actions)
    assert "secret-pw" not in text
    assert "--exclude-schema=bluegreen --exclude-schema=bluegreen_quarantine --exclude-schema=audit" in text
    assert "--no-owner" in text and "--jobs=4" in text and "--single-transaction" in text


def test_small_pieces() -> None:
    assert parse_size("1GB") == 1 << 30 and parse_size("1.5 MB") == 3 << 19 and parse_size(2 << 20) == 2 << 20
    with pytest.raises(ValueError):
        parse_size("lots")
    assert trigger_name("x" * 63).startswith("bluegreen_capture_xxx") and len(trigger_name("x" * 63)) == 63
    assert trigger_name("a") == "bluegreen_capture_a"
    assert parse_qualified_name('"My Schema".t').display == '"My Schema".t'
    assert parse_qualified_name("Users").display == "public.users"
    assert condition_references("OLD.a IS DISTINCT FROM new.a AND x > 1") == {"old", "new"}
    assert condition_sql("x) OR (true") == "x OR TRUE"  # printed back from the AST: one expression
    conninfo, env = libpq_args("postgresql://u:p%40ss@h:5/db?sslmode=disable")
    assert "p@ss" not in conninfo and env["PGPASSWORD"] == "p@ss" and "sslmode=disable" in conninfo
    assert Options(schemas=("app",), owners=False).dump_filters() == [
        "--exclude-schema=bluegreen", "--exclude-schema=bluegreen_quarantine", "--schema=app", "--no-owner"]
    drops = [s.as_string() for s in clean_statements(["public", "app", "bluegreen"], 7, "snap")]
    assert drops[:4] == ['DROP SCHEMA IF EXISTS "public" CASCADE',
                         "CREATE SCHEMA public AUTHORIZATION pg_database_owner",
                         "GRANT USAGE ON SCHEMA public TO PUBLIC", 'DROP SCHEMA IF EXISTS "app" CASCADE']
    assert "run_id = 7" in drops[-1]
    toc = parse_toc(";\n; Archive\n3230; 2606 16402 CONSTRAINT public a a_pkey postgres\n"
                    "3246; 2606 16434 FK CONSTRAINT public c c_a_id_fkey postgres\n"
                    "3242; 0 0 INDEX ATTACH public p1_pkey postgres\n3233; 1259 16426 INDEX public p_v_idx postgres\n")
    assert [(e.dump_id, e.catalog, e.oid, e.type) for e in toc] == [
        (3230, 2606, 16402, "CONSTRAINT"), (3246, 2606, 16434, "FK CONSTRAINT"), (3242, 0, 0, "INDEX ATTACH"),
        (3233, 1259, 16426, "INDEX")]



class _Backlog:
    """A replayer stand-in for the scheduling of :func:`catch_up_all`: ``pending`` events, drained by
    ``catch_up``. Traffic goes on while a capture is replayed: for every ``slowdown`` events a round applies,
    one new event arrives for every *other* capture (time spent on one is backlog for the rest)."""

    def __init__(self, name: str, pending: int, world: list[_Backlog], slowdown: int = 10) -> None:
        self.name, self.pending, self.world, self.slowdown = name, pending, world, slowdown
        self.calls = 0

    def catch_up(self, max_lag: int, deadline: float, on_round: Any = None) -> Lag:
        self.calls += 1
        while True:
            applied, self.pending = self.pending, 0
            for other in self.world:
                if other is not self:
                    other.pending += applied // self.slowdown
            if on_round is not None:
                on_round(RoundResult(events=applied), self.lag())
            if self.pending <= max_lag or time.monotonic() > deadline:
                return self.lag()

    def lag(self) -> Lag:
        return Lag(self.pending, 0.0)


def _tallies(world: list[_Backlog]) -> list[_Tally]:
    return [_Tally(CaptureInfo(b.name, parse_qualified_name(f"public.{b.name}"), "blue", "green"), b) for b in world]


def test_replay_step_passes_over_captures_until_every_lag_is_under_max_lag() -> None:
    world: list[_Backlog] = []
    world += [_Backlog("tokens", 5_000, world), _Backlog("consents", 3_000, world)]
    tallies = _tallies(world)
    seen: list[tuple[str, int]] = []
    passes = catch_up_all(tallies, max_lag=100, deadline=time.monotonic() + 60,
                          on_round=lambda t: seen.append((t.capture.id, t.lag.events)))
    # pass 1: tokens applies 5,000 (consents grows to 3,500), consents applies 3,500 (tokens grows to 350):
    # one pass, the old behaviour, would have stopped with tokens 350 events behind, above max_lag
    # pass 2: tokens applies 350 (consents +35), consents applies 35 (tokens +3): both under max_lag
    assert passes == 2
    assert seen == [("tokens", 0), ("consents", 0), ("tokens", 0), ("consents", 0)]
    assert [t.applied for t in tallies] == [5_350, 3_535]
    assert [t.rounds for t in tallies] == [2, 2]
    assert [t.lag.events for t in tallies] == [3, 0]  # measured again after the last pass
    assert [b.pending for b in world] == [3, 0]


def test_replay_step_with_one_capture_makes_one_pass() -> None:
    world: list[_Backlog] = []
    world.append(_Backlog("tokens", 5_000, world))
    tallies = _tallies(world)
    assert catch_up_all(tallies, max_lag=0, deadline=time.monotonic() + 60) == 1
    assert tallies[0].applied == 5_000


def test_replay_step_stops_passing_at_the_deadline() -> None:
    world: list[_Backlog] = []
    world += [_Backlog("a", 10_000, world, slowdown=1), _Backlog("b", 10_000, world, slowdown=1)]
    tallies = _tallies(world)
    assert catch_up_all(tallies, max_lag=100, deadline=time.monotonic() - 1) == 1
    # a applied 10,000 (b grew to 20,000), b applied 20,000 (a grew to 20,000); no second pass after the deadline
    assert [t.lag.events for t in tallies] == [20_000, 0]
