"""Logical capture without a server: plan validation, names, snapshot visibility, rendered actions."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.actions import SqlAction, render
from orchestrator.errors import PlanError
from orchestrator.logical import capture_name, fingerprint_changes, format_bytes
from orchestrator.logical_replay import logical_captures_of, visible_in
from orchestrator.plan import load_plan
from orchestrator.steps import StepContext, build_step

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


def _offline(loaded: object, run_id: int | None = None) -> StepContext:
    def refuse(target: str) -> None:
        raise RuntimeError("offline")

    return StepContext(loaded, run_id, False, lambda actions: None, refuse,  # type: ignore[arg-type]
                       dsns={"blue": ENV["BLUE_DSN"], "green": ENV["GREEN_DSN"]})


def test_slot_names_come_from_the_run_and_the_step_and_fit_in_63_bytes() -> None:
    assert capture_name(42, "capture-tokens") == "bluegreen_42_capture_tokens"
    long = capture_name(7, "x" * 80)
    assert len(long) == 63 and long.startswith("bluegreen_7_xxx")
    assert capture_name(7, "x" * 80) != capture_name(7, "x" * 79 + "y")
    assert capture_name(None, "cap") == "bluegreen_RUN_cap"


@pytest.mark.parametrize(("xid", "snapshot", "visible"), [
    (100, "200:300:", True),            # committed before the snapshot's xmin
    (250, "200:300:", True),            # between xmin and xmax, not running
    (250, "200:300:250,260", False),    # running when the snapshot was taken
    (300, "200:300:", False),           # at or after xmax
    # 64-bit snapshots: the decoded 32-bit xid is widened with the epoch nearest xmax
    (5, (1 << 32) + 10, True),
    (20, (1 << 32) + 10, False),
    (0xFFFFFFF0, (1 << 32) + 10, True),  # the previous epoch, just before the wraparound
])
def test_a_decoded_xid_is_visible_in_a_snapshot_as_postgres_says(xid: int, snapshot: str | int, visible: bool) -> None:
    text = snapshot if isinstance(snapshot, str) else f"{snapshot - 5}:{snapshot}:"
    assert visible_in(xid, text) is visible


def test_fingerprint_changes_name_each_table() -> None:
    before = {"public.a": "x", "public.b": "y", "*tables*": "public.a,public.b"}
    now = {"public.a": "x", "public.b": "missing", "*tables*": "public.a,public.b,public.c"}
    assert fingerprint_changes(before, now) == ["public.b was dropped", "table public.c was created (not captured)"]
    assert fingerprint_changes(before, dict(before)) == []
    assert format_bytes(3 << 20) == "3.0 MB" and format_bytes(512) == "512 B"


def test_logical_is_the_default_and_renders_a_publication_and_the_slot_in_the_snapshot(tmp_path: Path) -> None:
    loaded = load_plan(_plan(tmp_path, "  - {id: cap, kind: capture, exclude: [audit], replica_identity: {j: full}}\n"
                                       "  - {id: snap, kind: snapshot}\n  - {id: catch-up, kind: replay}\n"), ENV)
    capture, snapshot, replay = (build_step(s, loaded) for s in loaded.plan.steps)
    actions = capture.plan(_offline(loaded))
    assert [a.id for a in actions] == ["set_replica_identity:cap:public.j", "create_publication:cap"]
    assert render(actions[0]).endswith('ALTER TABLE "public"."j" REPLICA IDENTITY FULL;\nCOMMIT;')
    assert 'CREATE PUBLICATION "bluegreen_RUN_cap" FOR TABLE <every table of the copied schemas except public.audit>' \
        in render(actions[1])
    snap_actions = [a for a in snapshot.plan(_offline(loaded)) if isinstance(a, SqlAction)]
    assert snap_actions[1].id == "create_slot:snap"
    created = render(snap_actions[1])
    assert "CREATE_REPLICATION_SLOT \"bluegreen_RUN_cap\" LOGICAL pgoutput (SNAPSHOT 'export')" in created
    assert [a.id for a in replay.plan(_offline(loaded))] == ["read_changes:catch-up:cap", "apply_changes:catch-up:cap",
                                                             "advance_slot:catch-up:cap"]
    undo = [a.id for a in capture.rollback(_offline(loaded, 5))]
    assert undo == ["drop_slot:cap", "drop_publication:cap"]


def test_a_capture_without_a_snapshot_after_it_creates_its_slot_itself(tmp_path: Path) -> None:
    loaded = load_plan(_plan(tmp_path, "  - {id: cap, kind: capture, on: green, tables: [t]}\n"), ENV)
    actions = build_step(loaded.plan.steps[0], loaded).plan(_offline(loaded, 9))
    assert [a.id for a in actions] == ["create_publication:cap", "create_slot:cap"]
    assert "pg_create_logical_replication_slot('bluegreen_9_cap', 'pgoutput')" in render(actions[1])


def test_a_reverse_capture_gets_its_slot_from_the_cutover(tmp_path: Path) -> None:
    loaded = load_plan(_plan(tmp_path, "  - {id: back, kind: capture, on: green}\n"
                                       "  - {id: cutover, kind: cutover, reverse: [back],"
                                       " switches: [{command: [x]}]}\n"),
                       ENV)
    capture = [a.id for a in build_step(loaded.plan.steps[0], loaded).plan(_offline(loaded))]
    assert capture == ["create_publication:back"]
    cutover = [a.id for a in build_step(loaded.plan.steps[1], loaded).plan(_offline(loaded))]
    assert "create_slot:back" in cutover
    assert cutover.index("create_slot:back") < cutover.index("switch:cutover:command-0")


def test_rules_compile_their_files_and_conditions(tmp_path: Path) -> None:
    (tmp_path / "r.sql").write_text("UPDATE t SET a = :new.a WHERE k = :old.k;\n")
    loaded = load_plan(_plan(tmp_path, "  - id: cap\n    kind: capture\n    rules:\n"
                                       "      t: {replay: r.sql, events: [update], when: \"OLD.a <> NEW.a\"}\n"
                                       "      app.u: {key: [x, y]}\n"), ENV)
    info = logical_captures_of(loaded)["cap"]
    assert info.rules["public.t"].replay is not None and info.rules["public.t"].events == {"update"}
    assert info.rules["public.t"].when == "old.a <> new.a"
    assert info.rules["app.u"].key == ("x", "y") and info.rule("public.other").replay is None


@pytest.mark.parametrize(("steps", "message"), [
    ("  - {id: c, kind: capture, method: trigger}\n", "method trigger captures one 'table': name it"),
    ("  - {id: c, kind: capture, method: trigger, table: t, exclude: [x]}\n", "'exclude' is for method logical"),
    ("  - {id: c, kind: capture, method: trigger, table: t, events: [truncate]}\n", "a row trigger does not see"),
    ("  - {id: c, kind: capture, table: t, tables: [u]}\n", "'table' captures one table"),
    ("  - {id: c, kind: capture, events: [insert]}\n", "'events' goes with 'table'"),
    ("  - {id: c, kind: capture, tables: []}\n", "list at least one table"),
    ("  - {id: c, kind: capture, tables: [a, public.a]}\n", "a table is listed twice"),
    ("  - {id: c, kind: capture, exclude: [t], rules: {t: {key: [k]}}}\n", "table public.t is excluded"),
    ("  - {id: c, kind: capture, tables: [a], replica_identity: {b: full}}\n", "table public.b is not among"),
    ("  - {id: c, kind: capture, rules: {t: {events: [truncate], when: \"NEW.x\"}}}\n", "a TRUNCATE has none"),
    ("  - {id: c, kind: capture, max_retained_wal: 10kB}\n", "at least 1MB"),
    ("  - {id: a, kind: capture}\n  - {id: b, kind: capture}\n", "steps[1].on: capture 'a' already captures blue"),
])
def test_bad_logical_specs_are_refused_at_their_line(tmp_path: Path, steps: str, message: str) -> None:
    assert message in _error(tmp_path, steps)
