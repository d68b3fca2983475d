"""Blue/green with the doubles: the exact order of side effects, a switch back after a failed
post-switch analysis, refusals before the switch, and resume after a cut at every journal
event (the live pool is never taken out of rotation; every LB ends on one pool)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from rollout_py import events as ev
from rollout_py.engine import Engine, Settings
from rollout_py.planner import make_plan, switch_back_plan
from rollout_py.result import DeployResult, fold
from rollout_py.spec import HealthSpec, HttpProbe
from rollout_py.spec_canary import AnalysisSpec
from rollout_py.switch import PoolSettings, floor
from rollout_py.testing import FakeFleet, FakeRouter

BLUE, GREEN = ("b1", "b2"), ("g1", "g2")
LBS = ("unix:///lb1.sock", "unix:///lb2.sock")
ANALYSIS = AnalysisSpec.model_validate({
    "interval": 1, "min_requests": 10, "failure_limit": 1,
    "gates": [{"error_rate": {"max": "5%"}}]}).model_copy(update={"interval": 0.01})


class Killed(BaseException):
    """Stands for kill -9."""


@dataclass(frozen=True)
class Scenario:
    name: str
    expect: str  # the status the (resumed) deploy ends with
    fleet: dict[str, Any] = field(default_factory=dict)
    fail_commit_on: str | None = None


SCENARIOS = [
    Scenario("success", "succeeded"),
    Scenario("post_switch_analysis_fails", "rolled_back", fleet={"error_rates": {"2.0": 0.5}}),
    Scenario("probe_fails_before_switch", "rolled_back", fleet={"unhealthy_versions": {"2.0"}}),
]


def new_fleet(scenario: Scenario) -> tuple[FakeFleet, FakeRouter]:
    fleet = FakeFleet([*BLUE, *GREEN], lbs=LBS, requests_per_read=200, **scenario.fleet)
    router = FakeRouter(fleet, {"app_blue": BLUE, "app_green": GREEN}, "app_blue")
    router.fail_commit_on = scenario.fail_commit_on
    return fleet, router


def make_engine(fleet: FakeFleet, router: FakeRouter, sinks: list[Callable[[ev.Event], None]],
                *, min_up: int | str = "100%", post_switch: float = 0.03,
                scale_down: float | None = None) -> Engine:
    plan = make_plan(
        name="t", version="2.0", fleet=GREEN, targets=GREEN, servers={h: h for h in GREEN},
        batches=[1], max_unavailable=None, current_versions={}, force=False,
        backend="app_green", sockets=list(LBS), on_failure="rollback_batch", playbook="p.yml",
        rollback_playbook=None, drain_timeout=0.05, pause_between_batches=0,
        strategy="blue_green", live_backend="app_blue", post_switch=post_switch,
        gates=["error_rate <= 5%"], interval=ANALYSIS.interval,
        scale_down=None if scale_down is None else (scale_down, BLUE))
    health = HealthSpec(deadline=0.02, interval=0.002, consecutive=1,
                        probes=[HttpProbe(http="http://x")])
    pools = PoolSettings(router=router, live_key="live", preview_key="preview",
                         live_backend="app_blue", live_servers=BLUE, live_hosts=BLUE,
                         min_up=min_up, baseline_seconds=0.02 if post_switch else 0.0,
                         scale_down_playbook="stop.yml" if scale_down is not None else None)
    return Engine(plan, executor=fleet.executor(), balancer=fleet.balancer(),
                  prober=fleet.prober(), checks=fleet.checks,
                  settings=Settings(health=health, drain_timeout=0.05, up_timeout=0.02,
                                    poll=0.002, guard_interval=0.5, analysis=ANALYSIS,
                                    known_versions=dict.fromkeys([*BLUE, *GREEN], "1.0"),
                                    watch=False, pools=pools),
                  sinks=sinks, deploy_id="d1")


def live_never_taken_out(log: list[str], start: dict[str, str]) -> None:
    """Replays the log: no drain/maint/upgrade/rollback of a server some LB routes to."""
    pools = {"app_blue": set(BLUE), "app_green": set(GREEN)}
    live = dict(start)
    for line in log:
        word, *rest = line.split(" ")
        if word in ("switch", "undo"):
            lb = rest[0]
            live[lb] = rest[1] if word == "switch" else \
                next(b for b in pools if b != live[lb])
            continue
        if word in ("drain", "maint", "upgrade", "rollback"):
            servers = set(rest[0].split(","))
            serving = {s for b in live.values() for s in pools[b]}
            assert not servers & serving, f"{line!r} while {live}"


def end_state(router: FakeRouter, fleet: FakeFleet, result: DeployResult) -> None:
    assert len(set(router.live.values())) == 1, router.live
    for per in fleet.servers.values():
        assert {s.admin for s in per.values()} == {"READY"}
    live = next(iter(router.live.values()))
    if result.status == "succeeded":
        assert live == "app_green" and {fleet.versions[h] for h in GREEN} == {"2.0"}
    else:
        assert live == "app_blue"
        assert {fleet.versions[h] for h in [*BLUE, *GREEN]} == {"1.0"}


def test_a_good_release_goes_idle_pool_first_then_switches_every_lb() -> None:
    fleet, router = new_fleet(SCENARIOS[0])
    events: list[ev.Event] = []
    result = make_engine(fleet, router, [events.append]).run()
    assert result.status == "succeeded", result.cause
    assert fleet.log == ["drain g1,g2", "maint g1,g2", "upgrade g1,g2 -> 2.0",
                         "restore g1,g2", f"switch {LBS[0]} app_green",
                         f"switch {LBS[1]} app_green"]
    kinds = [e.kind for e in events]
    assert kinds.index("pools_read") < kinds.index("preview_checked") < \
        kinds.index("baseline_recorded") < kinds.index("switch_started") < \
        kinds.index("pool_switched") < kinds.index("switch_finished") < \
        kinds.index("analysis_finished")
    finished = next(e for e in events if isinstance(e, ev.SwitchFinished))
    assert finished.ok and finished.disagreement >= 0
    assert not fleet.violations
    end_state(router, fleet, result)


def test_a_failed_post_switch_analysis_switches_back_before_rolling_back() -> None:
    fleet, router = new_fleet(SCENARIOS[1])
    events: list[ev.Event] = []
    result = make_engine(fleet, router, [events.append]).run()
    assert result.status == "rolled_back" and result.exit_code == 1
    log = fleet.log
    back = log.index(f"switch {LBS[0]} app_blue")
    assert log[back + 1] == f"switch {LBS[1]} app_blue"
    assert log[back + 2:] == ["drain g1,g2", "maint g1,g2", "rollback g1,g2 -> 1.0",
                              "restore g1,g2"]
    starts = [e for e in events if isinstance(e, ev.SwitchStarted)]
    assert [s.to_backend for s in starts] == ["app_green", "app_blue"]
    assert starts[1].reason.startswith("automatic switch-back: step 4 post-switch analysis")
    live_never_taken_out(log, dict.fromkeys(LBS, "app_blue"))
    end_state(router, fleet, result)


def test_a_release_failing_its_probes_is_refused_before_any_switch() -> None:
    fleet, router = new_fleet(SCENARIOS[2])
    result = make_engine(fleet, router, []).run()
    assert result.status == "rolled_back" and result.exit_code == 1
    assert not [line for line in fleet.log if line.startswith("switch")]
    assert router.live == dict.fromkeys(LBS, "app_blue")


def test_the_capacity_floor_refuses_the_switch_and_leaves_every_lb_as_it_was() -> None:
    fleet, router = new_fleet(SCENARIOS[0])
    events: list[ev.Event] = []
    result = make_engine(fleet, router, [events.append], min_up=3).run()
    assert result.status != "succeeded"
    checked = next(e for e in events if isinstance(e, ev.PreviewChecked))
    assert not checked.ok and checked.floor == 3 and set(checked.up.values()) == {2}
    assert not [line for line in fleet.log if line.startswith("switch")]


def test_a_commit_refused_on_the_second_lb_undoes_the_first_and_rolls_back() -> None:
    fleet, router = new_fleet(Scenario("commit_refused", "rolled_back",
                                       fail_commit_on=LBS[1]))
    result = make_engine(fleet, router, []).run()
    assert result.status == "rolled_back"
    assert f"undo {LBS[0]}" in fleet.log
    live_never_taken_out(fleet.log, dict.fromkeys(LBS, "app_blue"))
    end_state(router, fleet, result)


@pytest.mark.parametrize(("live_up", "min_up", "need"),
                         [(4, "100%", 4), (4, "50%", 2), (3, "50%", 2), (0, "100%", 1),
                          (8, 2, 2)])
def test_floor(live_up: int, min_up: int | str, need: int) -> None:
    assert floor(min_up, live_up) == need


def run_until(scenario: Scenario, cut: int | None
              ) -> tuple[FakeFleet, FakeRouter, list[ev.Event]]:
    fleet, router = new_fleet(scenario)
    journal: list[ev.Event] = []

    def sink(e: ev.Event) -> None:
        journal.append(e)
        if cut is not None and len(journal) == cut:
            raise Killed

    sink.critical = True  # type: ignore[attr-defined]
    with contextlib.suppress(Killed):
        make_engine(fleet, router, [sink]).run()
    return fleet, router, journal


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_resume_after_every_journal_prefix(scenario: Scenario) -> None:
    """kill -9 after each journaled event (a switch done on one LB only among them), then
    resume: every LB ends on one pool, the live pool is never taken out, the fleet whole."""
    _, _, full = run_until(scenario, None)
    for cut in range(1, len(full)):
        fleet, router, prefix = run_until(scenario, cut)
        start_log = len(fleet.log)
        before = dict(router.live)
        resumed: list[ev.Event] = []
        result = make_engine(fleet, router, [resumed.append]).run(resume=prefix)
        where = f"cut after event {cut} ({prefix[-1].kind})"
        assert not fleet.violations, (where, fleet.violations)
        live_never_taken_out(fleet.log[start_log:], before)
        assert result.status == scenario.expect, (where, result.status, result.cause)
        end_state(router, fleet, result)
        assert fold(prefix + resumed).status == scenario.expect


@pytest.mark.parametrize("scenario", SCENARIOS[:2], ids=[s.name for s in SCENARIOS[:2]])
def test_kill_between_two_lbs_commits_then_resume_ends_on_one_pool(scenario: Scenario) -> None:
    """The controller dies with the first LB switched and the second not (no event of the
    switch journaled but its start): resume finishes the switch, then judges the new pool."""
    fleet, router = new_fleet(scenario)
    journal: list[ev.Event] = []

    def die() -> None:
        raise Killed

    fleet.hooks[f"switch {LBS[0]} app_green"] = die
    with contextlib.suppress(Killed):
        make_engine(fleet, router, [journal.append]).run()
    assert router.live == {LBS[0]: "app_green", LBS[1]: "app_blue"}
    assert isinstance(journal[-1], ev.SwitchStarted)
    resumed: list[ev.Event] = []
    result = make_engine(fleet, router, [resumed.append]).run(resume=journal)
    assert result.status == scenario.expect, result.cause
    assert not fleet.violations
    end_state(router, fleet, result)


def switch_back_engine(fleet: FakeFleet, router: FakeRouter,
                       sinks: list[Callable[[ev.Event], None]]) -> Engine:
    plan = switch_back_plan(name="t", live="app_green", to="app_blue", sockets=list(LBS),
                            servers={h: h for h in BLUE}, fleet=BLUE)
    pools = PoolSettings(router=router, live_key="live", preview_key="preview",
                         live_backend="app_green", live_servers=GREEN, live_hosts=GREEN)
    health = HealthSpec(probes=[HttpProbe(http="http://x")])
    return Engine(plan, executor=fleet.executor(), balancer=fleet.balancer(),
                  prober=fleet.prober(), checks=fleet.checks,
                  settings=Settings(health=health, drain_timeout=0.05, up_timeout=0.02,
                                    poll=0.002, watch=False, pools=pools),
                  sinks=sinks, deploy_id="d2")


def test_switch_back_switches_every_lb_and_nothing_else() -> None:
    fleet, router = new_fleet(SCENARIOS[0])
    router.live = dict.fromkeys(LBS, "app_green")
    events: list[ev.Event] = []
    result = switch_back_engine(fleet, router, [events.append]).run()
    assert result.status == "succeeded", result.cause
    assert fleet.log == [f"switch {lb} app_blue" for lb in LBS]
    assert [e.kind for e in events if e.kind.startswith(("switch", "pool", "preview"))] == [
        "pools_read", "preview_checked", "switch_started", "pool_switched", "pool_switched",
        "switch_finished"]


def test_switch_back_killed_between_the_lbs_is_finished_by_resume() -> None:
    fleet, router = new_fleet(SCENARIOS[0])
    router.live = dict.fromkeys(LBS, "app_green")
    journal: list[ev.Event] = []

    def die() -> None:
        raise Killed

    fleet.hooks[f"switch {LBS[0]} app_blue"] = die
    with contextlib.suppress(Killed):
        switch_back_engine(fleet, router, [journal.append]).run()
    assert router.live == {LBS[0]: "app_blue", LBS[1]: "app_green"}
    result = switch_back_engine(fleet, router, []).run(resume=journal)
    assert result.status == "succeeded" and router.live == dict.fromkeys(LBS, "app_blue")


def test_the_old_pool_is_scaled_down_after_the_hold_once_the_new_one_passed() -> None:
    fleet, router = new_fleet(SCENARIOS[0])
    events: list[ev.Event] = []
    result = make_engine(fleet, router, [events.append], scale_down=0.01).run()
    assert result.status == "succeeded", result.cause
    assert fleet.log[-1] == "scale-down b1,b2"
    kinds = [e.kind for e in events]
    assert kinds.index("analysis_finished") < kinds.index("pause_started") < \
        kinds.index("pause_ended") < kinds.index("pool_scaled_down")
    [down] = [e for e in events if isinstance(e, ev.PoolScaledDown)]
    assert down.ok and down.hosts == BLUE and down.backend == "app_blue"


def test_no_scale_down_after_a_failed_post_switch_analysis() -> None:
    fleet, router = new_fleet(SCENARIOS[1])
    result = make_engine(fleet, router, [], scale_down=0.01).run()
    assert result.status == "rolled_back"
    assert not [line for line in fleet.log if line.startswith("scale-down")]
    assert router.live == dict.fromkeys(LBS, "app_blue")
