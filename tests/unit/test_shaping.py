"""Traffic shaping (rollout_py.shaping): map entries set after the start and before any drain,
put back right before the end on every path (success, rollback, abort, interrupt, failure),
and by a resume after kill -9; someone else's change is left as found and reported."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from rollout_py import events as ev
from rollout_py.engine import Engine, Settings
from rollout_py.errors import PreflightError, SpecError
from rollout_py.planner import make_plan
from rollout_py.shaping import Shaping, open_record
from rollout_py.spec import HealthSpec, HttpProbe, parse_spec
from rollout_py.spec_shaping import ShapingSpec
from rollout_py.testing import FakeFleet, FakeMaps
from tests.unit.test_canary import canary_steps, control
from tests.unit.test_canary import make_engine as canary_engine

HOSTS = ["h1", "h2", "h3", "h4"]
LBS = ("unix:///lb1.sock", "unix:///lb2.sock")
MAP = "/etc/haproxy/shaping.map"
SPEC = ShapingSpec(map=MAP, entries={"heavy": "shed"})


class Killed(BaseException):
    """Stands for kill -9: nothing after it runs."""


def engine(fleet: FakeFleet, maps: FakeMaps, sinks: Sequence[Callable[[ev.Event], None]] = (),
           batches: list[int | str] | None = None) -> Engine:
    plan = make_plan(
        name="t", version="2.0", fleet=HOSTS, targets=HOSTS, servers={h: h for h in HOSTS},
        batches=batches or [2], max_unavailable=2, current_versions={}, force=False,
        backend="app", sockets=list(fleet.lbs), on_failure="rollback_batch", playbook="p.yml",
        rollback_playbook=None, drain_timeout=0.05, pause_between_batches=0)
    health = HealthSpec(deadline=0.05, interval=0.002, consecutive=1,
                        probes=[HttpProbe(http="http://x")])
    built = Engine(plan, executor=fleet.executor(), balancer=fleet.balancer(),
                   prober=fleet.prober(), checks=fleet.checks,
                   settings=Settings(health=health, drain_timeout=0.05, up_timeout=0.05,
                                     poll=0.001, known_versions=dict.fromkeys(HOSTS, "1.0")),
                   sinks=sinks, deploy_id="d1")
    built.shaping = Shaping(SPEC, maps)
    return built


def kinds(events: Sequence[ev.Event]) -> list[str]:
    return [e.kind for e in events]


def check_wrapped(events: Sequence[ev.Event]) -> None:
    """Recorded, then set, after the start and before the first drain; put back last."""
    k = kinds(events)
    assert k[0] in ("deploy_started", "deploy_resumed")
    assert k.index("shaping_recorded") < k.index("shaping_set")
    if "drain_started" in k:
        assert k.index("shaping_set") < k.index("drain_started")
    assert k[-2:] == ["shaping_cleared", "deploy_finished"], k


def test_a_deploy_sets_the_entries_before_any_drain_and_removes_them_last() -> None:
    fleet, maps = FakeFleet(HOSTS, lbs=LBS), FakeMaps(LBS, {"other": "x"})
    seen: list[str] = []
    eng = engine(fleet, maps, [lambda e: seen.append(f"{e.kind} {dict(maps.entries)}")
                               if e.kind in ("drain_started", "deploy_finished") else None])
    result = eng.run()
    assert result.status == "succeeded"
    check_wrapped(eng.events)
    # every drain happened with the entry set on every LB; the end found it removed
    assert all("'heavy': 'shed'" in line for line in seen if line.startswith("drain"))
    assert all(m == {"other": "x"} for m in maps.entries.values())
    assert maps.log == [f"set {lb} heavy shed" for lb in LBS] + [f"del {lb} heavy" for lb in LBS]
    recorded = next(e for e in eng.events if isinstance(e, ev.ShapingRecorded))
    assert recorded.previous == {lb: {"heavy": ""} for lb in LBS}


def test_a_value_found_before_the_deploy_is_put_back_not_removed() -> None:
    fleet, maps = FakeFleet(HOSTS, lbs=LBS), FakeMaps(LBS, {"heavy": "allow"})
    engine(fleet, maps).run()
    assert all(m == {"heavy": "allow"} for m in maps.entries.values())
    assert maps.log[-1] == f"set {LBS[1]} heavy allow"


@pytest.mark.parametrize("case", ["rollback", "failure", "interrupt"])
def test_every_end_puts_the_entries_back(case: str) -> None:
    fleet, maps = FakeFleet(HOSTS, lbs=LBS), FakeMaps(LBS)
    status = {"rollback": "rolled_back", "failure": "failed", "interrupt": "cancelled"}[case]
    if case in ("rollback", "failure"):
        fleet.unhealthy_versions.add("2.0")
    if case == "failure":
        fleet.fail_rollback.update(HOSTS)  # the rollback fails: hosts stranded in MAINT
    eng = engine(fleet, maps, batches=[1])
    if case == "interrupt":  # Ctrl-C during the first batch's playbook
        fleet.hooks["upgrade h1 -> 2.0"] = eng.interrupt
    result = eng.run()
    assert result.status == status, result.cause
    check_wrapped(eng.events)
    assert all(m == {} for m in maps.entries.values())


def test_rollout_abort_puts_the_entries_back() -> None:
    fleet, maps = FakeFleet(HOSTS, lbs=LBS), FakeMaps(LBS)
    inbox: list[Any] = []

    def abort_on_pause(e: ev.Event) -> None:
        if isinstance(e, ev.PauseStarted):
            inbox.append(control("abort"))

    def controls() -> list[Any]:
        out = list(inbox)
        inbox.clear()
        return out

    eng = canary_engine(fleet, [abort_on_pause], controls=controls,
                        canary=canary_steps({"traffic": "10%"}, {"pause": {}}))
    eng.shaping = Shaping(SPEC, maps)
    result = eng.run()
    assert result.status == "rolled_back" and "aborted by" in (result.cause or "")
    check_wrapped(eng.events)
    assert all(m == {} for m in maps.entries.values())


def test_an_entry_someone_else_changed_meanwhile_is_left_as_found_and_reported() -> None:
    fleet, maps = FakeFleet(HOSTS, lbs=LBS), FakeMaps(LBS)

    def theirs() -> None:
        maps.entries[LBS[1]]["heavy"] = "allow"

    fleet.hooks["upgrade h1,h2 -> 2.0"] = theirs
    eng = engine(fleet, maps)
    assert eng.run().status == "succeeded"
    cleared = next(e for e in eng.events if isinstance(e, ev.ShapingCleared))
    assert cleared.conflicts == {f"{LBS[1]} heavy": "allow"}
    assert cleared.restored == {LBS[0]: {"heavy": ""}}
    assert maps.entries == {LBS[0]: {}, LBS[1]: {"heavy": "allow"}}


def test_an_lb_that_does_not_answer_at_the_end_is_reported_and_the_rest_cleared() -> None:
    fleet, maps = FakeFleet(HOSTS, lbs=LBS), FakeMaps(LBS)
    fleet.hooks["upgrade h3,h4 -> 2.0"] = lambda: maps.unreachable.add(LBS[0])
    eng = engine(fleet, maps)
    eng.run()
    cleared = next(e for e in eng.events if isinstance(e, ev.ShapingCleared))
    assert list(cleared.failed) == [LBS[0]] and cleared.restored == {LBS[1]: {"heavy": ""}}
    # the clearing is journaled, naming the LB that failed: the deploy's record is closed
    assert open_record(eng.events) is None


def die_at(kind: str) -> Callable[[ev.Event], None]:
    def sink(e: ev.Event) -> None:
        if e.kind == kind:
            raise Killed

    sink.critical = True  # type: ignore[attr-defined]
    return sink


@pytest.mark.parametrize("lost", [False, True])
def test_resume_after_kill_9_keeps_the_record_and_puts_back_what_was_found(lost: bool) -> None:
    fleet, maps = FakeFleet(HOSTS, lbs=LBS), FakeMaps(LBS, {"heavy": "allow"})
    journal: list[ev.Event] = []
    first = engine(fleet, maps, [journal.append, die_at("servers_disabled")])
    with pytest.raises(Killed):
        first.run()
    assert all(m == {"heavy": "shed"} for m in maps.entries.values())
    assert open_record(journal) is not None  # the journal says: set, not cleared
    if lost:  # an HAProxy reload read the map file again meanwhile
        maps.entries[LBS[0]]["heavy"] = "allow"
    second = engine(fleet, maps)
    result = second.run(resume=journal)
    assert result.status == "succeeded", result.cause
    k = kinds(second.events)
    assert k.count("shaping_recorded") == 1  # the dead controller's record is the one kept
    again = [e for e in second.events if isinstance(e, ev.ShapingSet)][-1]
    assert again.lbs == ({LBS[0]: {"heavy": "shed"}} if lost else {})
    resumed = k.index("deploy_resumed")
    assert resumed < len(k) - 1 - k[::-1].index("shaping_set")
    assert k[-2:] == ["shaping_cleared", "deploy_finished"]
    assert all(m == {"heavy": "allow"} for m in maps.entries.values())


def test_a_resume_whose_journal_has_no_record_records_and_sets_afresh() -> None:
    fleet, maps = FakeFleet(HOSTS, lbs=LBS), FakeMaps(LBS)
    journal: list[ev.Event] = []
    with pytest.raises(Killed):
        engine(fleet, maps, [journal.append, die_at("shaping_recorded")]).run()
    assert all(m == {} for m in maps.entries.values())
    journal = [e for e in journal if e.kind != "shaping_recorded"]  # never reached the disk
    second = engine(fleet, maps)
    assert second.run(resume=journal).status == "succeeded"
    assert kinds(second.events).count("shaping_recorded") == 1
    assert all(m == {} for m in maps.entries.values())


def test_preflight_refuses_a_map_an_lb_does_not_have() -> None:
    maps = FakeMaps(LBS)
    maps.unreachable.add(LBS[1])
    with pytest.raises(PreflightError, match=f"{LBS[1]}: haproxy.shaping.map {MAP}"):
        Shaping(SPEC, maps).preflight()
    assert maps.log == []


BASE: dict[str, Any] = {
    "name": "web", "inventory": "inv.ini", "playbook": "p.yml",
    "health": {"probes": [{"tcp": "{{ ansible_host }}:80"}]}}


def spec_with(shaping: Any) -> Any:
    return parse_spec({**BASE, "haproxy": {"sockets": ["unix:///run/h.sock"],
                                           "shaping": shaping}})


def test_the_spec_takes_a_map_and_its_entries() -> None:
    spec = spec_with({"map": MAP, "entries": {"heavy": "shed", "background": "shed"}})
    assert spec.haproxy.shaping is not None
    assert spec.haproxy.shaping.entries == {"heavy": "shed", "background": "shed"}
    assert spec_with(None).haproxy.shaping is None


@pytest.mark.parametrize(("shaping", "says"), [
    ({"map": "shaping.map", "entries": {"heavy": "shed"}},
     "haproxy.shaping.map: 'shaping.map' is neither an absolute path"),
    ({"map": "/etc/../x.map", "entries": {"heavy": "shed"}}, "haproxy.shaping.map"),
    ({"map": MAP, "entries": {"heavy": "shed; del map"}}, "map value 'shed; del map'"),
    ({"map": MAP, "entries": {"a b": "shed"}}, "map key 'a b'"),
    ({"map": MAP, "entries": {"#x": "shed"}}, "not starting with '#'"),
    ({"map": MAP, "entries": {}}, "haproxy.shaping.entries"),
    ({"map": MAP}, "haproxy.shaping.entries: required key is missing"),
    ({"map": MAP, "entries": {"heavy": "shed"}, "when": "always"},
     "haproxy.shaping.when: unknown key"),
])
def test_the_spec_refuses_what_would_break_a_runtime_api_command(shaping: Any,
                                                                 says: str) -> None:
    with pytest.raises(SpecError) as err:
        spec_with(shaping)
    assert says in str(err.value)
