"""Warm-up on the fake fleet: an enabled batch starts at a share of its recorded weight on every
LB and ends at it; servers recorded at weight 1 are enabled as they were; a cancelled warm-up
leaves the recorded weight (the batch's rollback restores it)."""

from __future__ import annotations

from typing import Any

import pytest

from rollout_py import events as ev
from rollout_py.balancer.fleet import Recorded
from rollout_py.engine import Engine, Settings
from rollout_py.planner import make_plan
from rollout_py.spec import HealthSpec, HttpProbe
from rollout_py.testing import FakeFleet
from rollout_py.warmup import ramp

HOSTS = ["h1", "h2", "h3"]
LBS = ("unix:///lb1.sock", "unix:///lb2.sock")


def run(fleet: FakeFleet, **settings: Any) -> tuple[Engine, str]:
    engine = make_engine(fleet, [], **settings)
    return engine, engine.run().status


def weighted(weights: dict[str, int]) -> FakeFleet:
    fleet = FakeFleet(HOSTS, lbs=LBS)
    for per in fleet.servers.values():
        for host, w in weights.items():
            per[host].weight = w
    return fleet


@pytest.mark.parametrize("start, steps, expected", [
    (0.1, 3, [10, 55, 100]),
    (0.5, 2, [50, 100]),
    (0.01, 2, [1, 100]),  # never 0: a weight of 0 would take it out of rotation
])
def test_the_ramp_rises_from_the_share_to_the_recorded_weight(start: float, steps: int,
                                                              expected: list[int]) -> None:
    snap = {"lb": {"a": Recorded("READY", 100), "b": Recorded("READY", 1),
                   "c": Recorded("MAINT", 100)}}
    weights = ramp(snap, ["a", "b", "c"], start, steps)
    assert [w["lb"] for w in weights] == [{"a": e} for e in expected]  # b: weight 1; c: out


def test_each_server_of_the_batch_ramps_on_every_lb_and_ends_at_its_recorded_weight() -> None:
    fleet = weighted({"h1": 100, "h2": 100, "h3": 100})
    at_enable: list[dict[str, tuple[str, int]]] = []
    fleet.hooks["restore h1"] = lambda: at_enable.append(
        {lb: (per["h1"].admin, per["h1"].weight) for lb, per in fleet.servers.items()})
    engine, status = run(fleet, warmup=0.03, warmup_from=0.1)
    assert at_enable == [dict.fromkeys(LBS, ("READY", 10))]  # in rotation at 10 %, not 100
    assert status == "succeeded"
    steps = [e for e in engine.events if isinstance(e, ev.WarmupStep)]
    assert [e.weights[LBS[0]]["h1"] for e in steps if e.batch == 1] == [10, 100]
    assert all(e.weights[LBS[0]] == e.weights[LBS[1]] for e in steps)
    assert fleet.log[:5] == ["drain h1", "maint h1", "upgrade h1 -> 2.0", "restore h1",
                             "weight h1=100"]
    assert {s.weight for per in fleet.servers.values() for s in per.values()} == {100}


def test_a_server_recorded_at_weight_1_is_enabled_as_it_was() -> None:
    fleet = weighted({"h1": 1, "h2": 1, "h3": 1})
    engine, status = run(fleet, warmup=0.03)
    assert status == "succeeded"
    assert not [e for e in engine.events if isinstance(e, ev.WarmupStep)]
    assert not [line for line in fleet.log if line.startswith("weight")]


def test_a_warm_up_cancelled_by_a_second_interrupt_rolls_the_batch_back_to_its_weight() -> None:
    fleet = weighted({"h1": 100, "h2": 100, "h3": 100})
    holder: list[Engine] = []

    def interrupt_twice(e: ev.Event) -> None:
        if isinstance(e, ev.WarmupStep) and e.step == 1:
            holder[0].interrupt()
            holder[0].interrupt()

    engine = make_engine(fleet, [interrupt_twice], warmup=5, warmup_from=0.1)
    holder.append(engine)
    result = engine.run()
    assert result.status == "cancelled"
    assert any(isinstance(e, ev.RollbackStarted) for e in engine.events)
    assert {s.weight for per in fleet.servers.values() for s in per.values()} == {100}
    assert all(per["h1"].admin == "READY" for per in fleet.servers.values())


def make_engine(fleet: FakeFleet, sinks: list[Any], **settings: Any) -> Engine:
    plan = make_plan(
        name="t", version="2.0", fleet=HOSTS, targets=HOSTS, servers={h: h for h in HOSTS},
        batches=[1], max_unavailable=None, current_versions={}, force=False, backend="app",
        sockets=list(fleet.lbs), on_failure="rollback_batch", playbook="p.yml",
        rollback_playbook=None, drain_timeout=0.05, pause_between_batches=0)
    health = HealthSpec(deadline=0.05, interval=0.002, consecutive=1,
                        probes=[HttpProbe(http="http://x")])
    return Engine(plan, executor=fleet.executor(), balancer=fleet.balancer(),
                  prober=fleet.prober(), checks=fleet.checks,
                  settings=Settings(health=health, drain_timeout=0.05, up_timeout=0.05,
                                    poll=0.001, known_versions=dict.fromkeys(HOSTS, "1.0"),
                                    watch=False, **settings),
                  sinks=sinks)
