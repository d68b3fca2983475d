"""Resume after a stop at every point of every scenario: the journal cut after each event.

For each scenario the deploy is run once per cut k with a controller that dies right after
journaling its k-th event (or, for the last cut, one that ended on its own); then ``resume``
takes the journal over with the same fleet. The invariants hold whatever the cut:

- no host is upgraded or rolled back while its server is not in MAINT on every LB;
- no step whose end was journaled is applied again (a succeeded batch, a finished stage, a
  finished rollback or rollback playbook);
- every host ends READY on every LB, serving the version the result says, or is reported
  stranded with exit 3;
- the resumed deploy ends as the scenario ends when nothing stops it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from rollout_py import events as ev
from rollout_py.engine import Engine, Settings
from rollout_py.errors import BalancerUnreachable, ControllerError
from rollout_py.planner import make_plan
from rollout_py.reconcile import RETRYABLE
from rollout_py.result import DeployResult, fold
from rollout_py.spec import HealthSpec, HttpProbe
from rollout_py.testing import FakeFleet

HOSTS = ["h1", "h2", "h3", "h4"]
BATCHES = {1: ("h1",), 2: ("h2", "h3"), 3: ("h4",)}


class Killed(BaseException):
    """Stands for kill -9: nothing after it runs."""


def _raise(exc: Exception) -> Callable[[], None]:
    def hook() -> None:
        raise exc
    return hook


@dataclass(frozen=True)
class Scenario:
    name: str
    expect: frozenset[str]  # the statuses the resumed deploy may end with
    fleet: dict[str, Any] = field(default_factory=dict)
    hooks: Callable[[FakeFleet], dict[str, Callable[[], None]]] = lambda f: {}
    on_failure: str = "rollback_batch"
    interrupts: tuple[tuple[str, int], ...] = ()  # (event kind, nth): one interrupt each
    heal: Callable[[FakeFleet], None] = lambda f: None  # what a person fixes before resume


def _down_h4(fleet: FakeFleet) -> dict[str, Callable[[], None]]:
    return {"restore h1": lambda: fleet.down_hosts.add("h4")}


SCENARIOS = [
    Scenario("success", frozenset({"succeeded"})),
    Scenario("probe_failure", frozenset({"rolled_back"}),
             fleet={"unhealthy_versions": {"2.0"}}),
    Scenario("playbook_failure_on_one_host", frozenset({"rolled_back"}),
             fleet={"fail_upgrade": {"h3": "failed"}}),
    Scenario("controller_error_in_upgrade", frozenset({"succeeded"}),
             hooks=lambda f: {"upgrade h2,h3 -> 2.0": _raise(ControllerError("disk full"))}),
    Scenario("controller_error_in_stage", frozenset({"succeeded"}),
             hooks=lambda f: {"stage h1,h2,h3,h4 -> 2.0": _raise(ControllerError("oom"))}),
    Scenario("controller_error_in_rollback", frozenset({"rolled_back", "failed"}),
             fleet={"fail_upgrade": {"h3": "failed"}},
             hooks=lambda f: {"rollback h2,h3 -> 1.0": _raise(ControllerError("crash"))}),
    Scenario("lost_lb_at_maint", frozenset({"succeeded"}),
             hooks=lambda f: {"maint h2,h3": _raise(BalancerUnreachable("lb1: refused"))}),
    Scenario("lost_lb_at_restore", frozenset({"succeeded"}),
             hooks=lambda f: {"restore h2,h3": _raise(BalancerUnreachable("lb1: refused"))}),
    Scenario("first_interrupt", frozenset({"succeeded"}),
             interrupts=(("batch_started", 2),)),
    Scenario("second_interrupt", frozenset({"succeeded"}),
             interrupts=(("step_started", 2), ("step_started", 2))),
    Scenario("rollback_all", frozenset({"rolled_back"}), on_failure="rollback_all",
             fleet={"fail_upgrade": {"h4": "failed"}}),
    Scenario("capacity_refused", frozenset({"succeeded"}), hooks=_down_h4,
             heal=lambda f: f.down_hosts.discard("h4")),
]


def make_engine(fleet: FakeFleet, scenario: Scenario, staged: bool,
                sinks: list[Callable[[ev.Event], None]]) -> Engine:
    plan = make_plan(
        name="t", version="2.0", fleet=HOSTS, targets=HOSTS, servers={h: h for h in HOSTS},
        batches=[1, 2], max_unavailable=2, current_versions={}, force=False, backend="app",
        sockets=list(fleet.lbs), on_failure=scenario.on_failure, playbook="p.yml",
        rollback_playbook=None, drain_timeout=0.05, pause_between_batches=0)
    health = HealthSpec(deadline=0.02, interval=0.002, consecutive=1,
                        probes=[HttpProbe(http="http://x")])
    return Engine(plan, executor=fleet.executor(), balancer=fleet.balancer(),
                  prober=fleet.prober(), checks=fleet.checks,
                  settings=Settings(health=health, drain_timeout=0.05, up_timeout=0.02,
                                    poll=0.002, guard_interval=0.5,
                                    known_versions=dict.fromkeys(HOSTS, "1.0"),
                                    stage_tags="stage" if staged else None,
                                    switch_tags="switch" if staged else None),
                  sinks=sinks, deploy_id="d1")


def new_fleet(scenario: Scenario, staged: bool) -> FakeFleet:
    fleet = FakeFleet(HOSTS, lbs=("unix:///lb1.sock", "unix:///lb2.sock"),
                      require_stage=staged, **scenario.fleet)
    fleet.hooks.update(scenario.hooks(fleet))
    return fleet


def run_until(scenario: Scenario, staged: bool, cut: int | None
              ) -> tuple[FakeFleet, list[ev.Event]]:
    """The deploy, its controller killed right after journaling event ``cut`` (None: never)."""
    fleet = new_fleet(scenario, staged)
    journal: list[ev.Event] = []
    counts: dict[str, int] = {}
    engine: Engine | None = None

    def journal_sink(e: ev.Event) -> None:
        journal.append(e)
        if cut is not None and len(journal) == cut:
            raise Killed

    def signals(e: ev.Event) -> None:
        counts[e.kind] = counts.get(e.kind, 0) + 1
        for kind, nth in scenario.interrupts:
            if e.kind == kind and counts[kind] == nth:
                assert engine is not None
                engine.interrupt()

    journal_sink.critical = True  # type: ignore[attr-defined]
    engine = make_engine(fleet, scenario, staged, [journal_sink, signals])
    with contextlib.suppress(Killed):
        engine.run()
    return fleet, journal


def finished_steps(prefix: list[ev.Event]) -> dict[str, set[int]]:
    """Steps whose end the journal holds, per kind, for the last attempt of each batch."""
    done: dict[str, set[int]] = {"batch": set(), "rollback": set(), "rollback_playbook": set(),
                                 "stage": set()}
    for e in prefix:
        if isinstance(e, ev.BatchStarted):
            for kind in ("batch", "rollback", "rollback_playbook"):
                done[kind].discard(e.batch)
        elif isinstance(e, ev.BatchSucceeded):
            done["batch"].add(e.batch)
        elif isinstance(e, ev.RollbackStarted):
            done["batch"].discard(e.batch)
        elif isinstance(e, ev.RollbackFinished) and e.failure not in RETRYABLE:
            done["rollback"].add(e.batch)  # one the controller stopped is to be finished
        elif isinstance(e, ev.StepFinished) and e.ok and e.step == "rollback":
            done["rollback_playbook"].add(e.batch)
        elif isinstance(e, ev.StepFinished) and e.ok and e.step == "stage":
            done["stage"].add(0)
    return done


def check_nothing_applied_twice(prefix: list[ev.Event], resumed: list[ev.Event],
                                log: list[str]) -> None:
    done = finished_steps(prefix)
    rerun: set[int] = set()
    for e in resumed:
        if isinstance(e, ev.BatchStarted):
            rerun.add(e.batch)
        elif isinstance(e, ev.StepStarted) and e.batch in rerun:
            continue
        elif isinstance(e, ev.StepStarted) and e.step == "upgrade":
            assert e.batch not in done["batch"], f"batch {e.batch} upgraded again"
        elif isinstance(e, ev.StepStarted) and e.step == "rollback":
            assert e.batch not in done["rollback_playbook"], \
                f"batch {e.batch}'s rollback playbook ran again"
        elif isinstance(e, ev.RollbackStarted) and e.batch not in rerun:
            assert e.batch not in done["rollback"], f"batch {e.batch}'s rollback ran again"
        elif isinstance(e, ev.StepStarted) and e.step == "stage":
            assert not done["stage"], "staged again after a finished stage"
    if done["stage"]:
        assert not any(line.startswith("stage ") for line in log)


def check_fleet_whole(fleet: FakeFleet, result: DeployResult) -> None:
    for host in HOSTS:
        admins = {lb[host].admin for lb in fleet.servers.values()}
        if host in result.stranded:
            assert result.status == "failed" and result.exit_code == 3
            continue
        assert admins == {"READY"}, f"{host} left {admins}, not reported"
        expected = result.hosts[host].after or "1.0"
        assert fleet.versions[host] == expected, (host, fleet.versions[host], expected)
    if result.status == "succeeded":
        assert set(fleet.versions.values()) == {"2.0"}


def cuts(scenario: Scenario, staged: bool) -> list[int | None]:
    _, journal = run_until(scenario, staged, None)
    assert isinstance(journal[-1], ev.DeployFinished)
    return [*range(1, len(journal)), None]


@pytest.mark.parametrize("staged", [False, True], ids=["plain", "staged"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_resume_after_every_journal_prefix(scenario: Scenario, staged: bool) -> None:
    for cut in cuts(scenario, staged):
        fleet, prefix = run_until(scenario, staged, cut)
        last = prefix[-1]
        where = f"cut after event {len(prefix)} ({last.kind})"
        if isinstance(last, ev.DeployFinished) and not last.resumable:
            assert not fleet.violations, where
            check_fleet_whole(fleet, fold(prefix))
            continue
        journal = list(prefix)
        for attempt in range(3):  # a fault the cut came before stops the resume too: again
            scenario.heal(fleet)
            cut_log = len(fleet.log)
            resumed: list[ev.Event] = []
            engine = make_engine(fleet, scenario, staged, [resumed.append])
            result = engine.run(resume=journal)
            assert not fleet.violations, (where, attempt, fleet.violations, fleet.log)
            check_nothing_applied_twice(journal, resumed, fleet.log[cut_log:])
            journal = journal + resumed
            if not result.resumable:
                break
        assert result.status in scenario.expect, (where, result.status, result.cause)
        check_fleet_whole(fleet, result)
        assert isinstance(journal[-1], ev.DeployFinished)


def test_case_1_resume_after_a_controller_error_drains_before_acting() -> None:
    """The engine rolled batch 2 back after a controller error, so h2 is READY in rotation when
    resume starts: resume runs batch 2 again from its drain, never a rollback on a serving host.
    """
    scenario = SCENARIOS[3]
    assert scenario.name == "controller_error_in_upgrade"
    fleet, journal = run_until(scenario, False, None)
    first = fold(journal)
    assert first.status == "rolled_back" and first.resumable
    assert fleet.log[-3:] == ["upgrade h2,h3 -> 2.0", "rollback h2,h3 -> 1.0", "restore h2,h3"]
    assert all(lb["h2"].admin == "READY" for lb in fleet.servers.values())
    fleet.log.clear()
    result = make_engine(fleet, scenario, False, []).run(resume=journal)
    assert fleet.log == ["drain h2,h3", "maint h2,h3", "upgrade h2,h3 -> 2.0", "restore h2,h3",
                         "drain h4", "maint h4", "upgrade h4 -> 2.0", "restore h4"]
    assert not fleet.violations
    assert result.status == "succeeded"
