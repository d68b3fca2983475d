"""Resume after a controller death at every boundary, journal failures, the journal's format."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from rollout_py import events as ev
from rollout_py.engine import Engine, Settings
from rollout_py.planner import make_plan
from rollout_py.spec import HealthSpec, HttpProbe
from rollout_py.state import Journal, read_journal
from rollout_py.testing import FakeFleet

HOSTS = ["h1", "h2", "h3", "h4"]


class Killed(BaseException):
    """Stands for kill -9: nothing after it runs."""


def engine(fleet: FakeFleet, sinks: list, deploy_id: str = "d1",  # type: ignore[type-arg]
           known: dict[str, str | None] | None = None) -> Engine:
    plan = make_plan(
        name="t", version="2.0", fleet=HOSTS, targets=HOSTS, servers={h: h for h in HOSTS},
        batches=[2], max_unavailable=None, current_versions={}, force=False, backend="app",
        sockets=list(fleet.lbs), on_failure="rollback_batch", playbook="p.yml",
        rollback_playbook=None, drain_timeout=0.2, pause_between_batches=0)
    health = HealthSpec(deadline=0.3, interval=0.01, consecutive=1,
                        probes=[HttpProbe(http="http://x")])
    return Engine(plan, executor=fleet.executor(), balancer=fleet.balancer(),
                  prober=fleet.prober(), checks=fleet.checks,
                  settings=Settings(health=health, drain_timeout=0.2, up_timeout=0.3, poll=0.01,
                                    known_versions={h: "1.0" for h in HOSTS} if known is None
                                    else known),
                  sinks=sinks, deploy_id=deploy_id)


def die_at(kind: str, nth: int = 1):  # type: ignore[no-untyped-def]
    seen = {"n": 0}

    def sink(e: ev.Event) -> None:
        if e.kind == kind:
            seen["n"] += 1
            if seen["n"] == nth:
                raise Killed

    sink.critical = True  # type: ignore[attr-defined]
    return sink


@pytest.mark.parametrize(("kind", "nth", "action"), [
    ("drain_started", 1, "undo"),
    ("servers_disabled", 1, "undo"),
    ("step_started", 1, "undo"),
    ("step_finished", 1, "undo"),
    ("probe_passed", 2, "finish"),
    ("servers_enabled", 1, "finish"),
    ("batch_succeeded", 1, "continue"),
    ("batch_started", 2, "continue"),
])
def test_resume_after_death_at_each_boundary(tmp_path: Path, kind: str, nth: int,
                                             action: str) -> None:
    fleet = FakeFleet(HOSTS)
    journal = Journal(tmp_path / "journal.jsonl")
    with pytest.raises(Killed):
        engine(fleet, [journal, die_at(kind, nth)]).run()
    journal.close()
    events = read_journal(tmp_path / "journal.jsonl")
    assert not isinstance(events[-1], ev.DeployFinished)

    journal = Journal(tmp_path / "journal.jsonl")
    result = engine(fleet, [journal]).run(resume=events)
    journal.close()
    resumed = [e for e in read_journal(tmp_path / "journal.jsonl")
               if isinstance(e, ev.DeployResumed)]
    assert [r.action for r in resumed] == [action]
    assert result.status == "succeeded", result.cause
    assert set(fleet.versions.values()) == {"2.0"}
    assert all(s.admin == "READY" for lb in fleet.servers.values() for s in lb.values())


def test_resume_finishes_an_interrupted_rollback(tmp_path: Path) -> None:
    fleet = FakeFleet(HOSTS, unhealthy_versions={"2.0"})
    journal = Journal(tmp_path / "journal.jsonl")
    with pytest.raises(Killed):
        engine(fleet, [journal, die_at("step_started", 2)]).run()  # the rollback's step
    journal.close()
    events = read_journal(tmp_path / "journal.jsonl")
    result = engine(fleet, []).run(resume=events)
    assert result.status == "rolled_back"
    assert set(fleet.versions.values()) == {"1.0"}
    assert all(s.admin == "READY" for lb in fleet.servers.values() for s in lb.values())


def test_a_failed_journal_write_stops_before_the_next_action() -> None:
    fleet = FakeFleet(HOSTS)

    def full_disk(e: ev.Event) -> None:
        if e.kind == "servers_disabled":
            raise OSError(28, "No space left on device")

    full_disk.critical = True  # type: ignore[attr-defined]
    seen: list[ev.Event] = []
    result = engine(fleet, [full_disk, seen.append]).run()
    assert fleet.log == ["drain h1,h2", "maint h1,h2"]  # no upgrade after the failed write
    assert result.status == "failed" and result.exit_code == 3
    assert "No space left" in (result.cause or "")
    assert result.stranded == ("h1", "h2")  # reported as out of rotation
    assert seen[-1].kind == "deploy_finished"  # the other consumers still hear the end


def test_journal_round_trips_the_events_of_a_run(tmp_path: Path) -> None:
    fleet = FakeFleet(HOSTS, unhealthy_versions={"2.0"})
    journal = Journal(tmp_path / "j.jsonl")
    e = engine(fleet, [journal])
    e.run()
    journal.close()
    assert list(read_journal(tmp_path / "j.jsonl")) == list(e.events)


def _declared_events() -> set[type[ev.Event]]:
    """Every Event subclass the events module defines (not a hand-kept list)."""
    found: set[type[ev.Event]] = set()
    for value in vars(ev).values():
        if isinstance(value, type) and issubclass(value, ev.Event) and value is not ev.Event:
            found.add(value)
    return found


def _sample(hint: Any, name: str) -> Any:
    """A value of a field's declared type, not the default, so the round trip is tested."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is int:
        return 7
    if hint is float:
        return 1.5
    if hint is bool:
        return True
    if hint is str:
        return f"{name}-value"
    if origin is typing.Literal:
        return args[-1]
    if origin in (types.UnionType, typing.Union):
        return _sample(next(a for a in args if a is not type(None)), name)
    if origin is tuple:
        inner = args[0] if args else str
        return (_sample(inner, name),) if args[-1] is Ellipsis or len(args) == 1 else tuple(
            _sample(a, name) for a in args)
    if origin is dict:
        return {f"{name}-key": _sample(args[1], name)}
    if origin is list:
        return [_sample(args[0], name)]
    if hint is Any:
        return f"{name}-any"
    raise AssertionError(f"no sample for {hint!r} ({name}): teach _sample this type")


def _kind(cls: type[ev.Event]) -> str:
    return cls.kind


@pytest.mark.parametrize("kind", sorted(_declared_events(), key=str), ids=_kind)
def test_every_event_kind_round_trips_through_the_journal(tmp_path: Path,
                                                          kind: type[ev.Event]) -> None:
    assert kind in ev.ALL_EVENTS, f"{kind.__name__} is not in events.ALL_EVENTS"
    hints = typing.get_type_hints(kind)
    fields = {f.name: _sample(hints[f.name], f.name) for f in dataclasses.fields(kind)
              if f.name not in ("deploy_id", "seq", "ts")}
    event = kind(deploy_id="d1", seq=3, ts=12.5, **fields)
    journal = Journal(tmp_path / "j.jsonl")
    journal(event)
    journal.close()
    assert read_journal(tmp_path / "j.jsonl") == [event]
    assert kind.kind != "event" and kind.kind == event.to_json()["event"]


def test_event_kinds_are_unique_and_all_listed() -> None:
    assert set(ev.ALL_EVENTS) == _declared_events()
    assert len({k.kind for k in ev.ALL_EVENTS}) == len(ev.ALL_EVENTS)


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    fleet = FakeFleet(HOSTS)
    journal = Journal(tmp_path / "j.jsonl")
    engine(fleet, [journal]).run()
    journal.close()
    with open(tmp_path / "j.jsonl", "a") as fh:
        fh.write('{"event": "batch_sta')
    events = read_journal(tmp_path / "j.jsonl")
    assert isinstance(events[-1], ev.DeployFinished)


def test_without_a_known_previous_version_the_hosts_stay_out_and_are_listed(
        tmp_path: Path) -> None:
    fleet = FakeFleet(HOSTS)
    events: list[ev.Event] = []
    with pytest.raises(Killed):
        engine(fleet, [events.append, die_at("step_started", 1)], known={}).run()
    result = engine(fleet, [], known={}).run(resume=events)
    assert result.status == "failed" and result.exit_code == 3
    assert result.stranded == ("h1", "h2")
    assert all(lb[h].admin == "MAINT" for lb in fleet.servers.values() for h in ("h1", "h2"))
