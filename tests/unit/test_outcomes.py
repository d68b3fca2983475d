"""Outcomes that say what happened: stops without a rollback, sessions cut by --force-drain,
servers found out of rotation, and servers someone else changed mid-batch."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from rollout_py import events as ev
from rollout_py.balancer.fleet import Balancer
from rollout_py.balancer.runtime import AdminState
from rollout_py.engine import Engine, Settings
from rollout_py.errors import ControllerError
from rollout_py.planner import make_plan
from rollout_py.result import EXIT_CODES, FLEET_STATE, DeployResult
from rollout_py.saga import Sink
from rollout_py.spec import HealthSpec, HttpProbe
from rollout_py.testing import FakeFleet

HOSTS = ["h1", "h2", "h3", "h4"]
LBS = ("unix:///lb1.sock", "unix:///lb2.sock")


def run(fleet: FakeFleet, *, batches: list[int | str] | None = None, force_drain: bool = False,
        max_unavailable: int | None = None, staged: bool = False,
        guard_interval: float = 0.1, sinks: Sequence[Sink] = (),
        balancer: Balancer | None = None) -> tuple[Engine, DeployResult]:
    plan = make_plan(
        name="t", version="2.0", fleet=HOSTS, targets=HOSTS, servers={h: h for h in HOSTS},
        batches=batches or [1], max_unavailable=max_unavailable, current_versions={},
        force=False, backend="app", sockets=list(fleet.lbs), on_failure="rollback_batch",
        playbook="p.yml", rollback_playbook=None, drain_timeout=0.05, pause_between_batches=0)
    health = HealthSpec(deadline=0.05, interval=0.005, consecutive=1,
                        probes=[HttpProbe(http="http://x")])
    engine = Engine(plan, executor=fleet.executor(), balancer=balancer or fleet.balancer(),
                    prober=fleet.prober(), checks=fleet.checks,
                    settings=Settings(health=health, drain_timeout=0.05, up_timeout=0.05,
                                      force_drain=force_drain, poll=0.005,
                                      guard_interval=guard_interval,
                                      known_versions=dict.fromkeys(HOSTS, "1.0"),
                                      stage_tags="stage" if staged else None,
                                      switch_tags="switch" if staged else None),
                    sinks=sinks)
    return engine, engine.run()


def test_every_status_has_an_exit_code_and_a_fleet_state() -> None:
    assert set(EXIT_CODES) == set(FLEET_STATE)
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES)
    assert EXIT_CODES["stopped"] == 5


def test_a_capacity_refusal_before_batch_2_is_a_stop_not_a_rollback() -> None:
    fleet = FakeFleet(HOSTS, lbs=LBS)
    fleet.hooks["restore h1"] = lambda: fleet.down_hosts.add("h4")  # after batch 1
    engine, result = run(fleet, batches=[1, 2], max_unavailable=2)
    assert fleet.log == ["drain h1", "maint h1", "upgrade h1 -> 2.0", "restore h1"]
    assert result.status == "stopped" and result.exit_code == 5 and result.resumable
    assert [b.outcome for b in result.batches] == ["succeeded", "refused", "not_started"]
    assert not any(isinstance(e, ev.RollbackStarted) for e in engine.events)
    assert "resume" in result.fleet_state


def test_a_failed_stage_is_a_stop() -> None:
    fleet = FakeFleet(HOSTS, lbs=LBS, require_stage=True)
    fleet.hooks["stage h1,h2,h3,h4 -> 2.0"] = _raise(ControllerError("no space left"))
    _, result = run(fleet, staged=True)
    assert fleet.log == ["stage h1,h2,h3,h4 -> 2.0"]  # nothing drained
    assert result.status == "stopped" and result.resumable
    assert "no space left" in (result.cause or "")


def test_force_drain_reports_the_sessions_it_cut_per_lb_and_server() -> None:
    fleet = FakeFleet(HOSTS, lbs=LBS, sticky_sessions={"h1": 3})
    engine, result = run(fleet, force_drain=True)
    drained = next(e for e in engine.events if isinstance(e, ev.ServersDrained))
    assert drained.forced == ("h1",)
    assert drained.cut == {"unix:///lb1.sock": {"h1": 3}}
    assert result.status == "succeeded"


def test_a_server_found_in_maint_is_restored_to_maint_and_said_so() -> None:
    fleet = FakeFleet(HOSTS, lbs=LBS)
    fleet.servers["unix:///lb2.sock"]["h1"].admin = "MAINT"
    engine, _ = run(fleet, max_unavailable=2)
    started = next(e for e in engine.events if isinstance(e, ev.DrainStarted))
    assert started.found_out == {"unix:///lb2.sock h1": "MAINT"}
    assert fleet.servers["unix:///lb2.sock"]["h1"].admin == "MAINT"
    assert fleet.servers["unix:///lb1.sock"]["h1"].admin == "READY"


def _raise(exc: Exception) -> Callable[[], None]:
    def hook() -> None:
        raise exc
    return hook


def change_during_the_upgrade(fleet: FakeFleet, lb: str, admin: AdminState,
                              until: type[ev.Event]) -> tuple[Engine, DeployResult]:
    """Runs a deploy whose batch-1 upgrade sets h1 to ``admin`` on ``lb`` (as someone else or
    a reload would) and holds the upgrade until the guard has emitted ``until``."""
    seen = threading.Event()

    def change() -> None:
        fleet.servers[lb]["h1"].admin = admin
        assert seen.wait(5), f"the guard never emitted {until.kind}"

    def watch(e: ev.Event) -> None:
        if isinstance(e, until):
            seen.set()

    fleet.hooks["upgrade h1 -> 2.0"] = change
    return run(fleet, sinks=[watch], guard_interval=0.01)


def test_a_foreign_drain_mid_batch_stops_and_is_not_fought() -> None:
    """Someone else sets DRAIN on lb2 while the batch is upgrading: the deploy stops, leaves
    that server as found, does not roll its host back (it may serve) and reports it (exit 3)."""
    fleet = FakeFleet(HOSTS, lbs=LBS)
    engine, result = change_during_the_upgrade(fleet, "unix:///lb2.sock", "DRAIN",
                                               until=ev.ForeignChange)
    foreign = next(e for e in engine.events if isinstance(e, ev.ForeignChange))
    assert foreign.servers == ("h1",)
    assert "DRAIN" in foreign.found["unix:///lb2.sock h1"]
    assert result.status == "failed" and result.exit_code == 3 and result.stranded == ("h1",)
    assert result.failure == "foreign_change"
    assert "rollback h1 -> 1.0" not in fleet.log  # not acted on while it may serve
    assert fleet.servers["unix:///lb2.sock"]["h1"].admin == "DRAIN"  # left as found
    assert not any(isinstance(e, ev.DriftCorrected) for e in engine.events)


def test_a_reload_back_to_ready_is_corrected_not_treated_as_foreign() -> None:
    fleet = FakeFleet(HOSTS, lbs=LBS)
    engine, result = change_during_the_upgrade(fleet, "unix:///lb1.sock", "READY",
                                               until=ev.DriftCorrected)
    assert result.status == "succeeded"
    assert not any(isinstance(e, ev.ForeignChange) for e in engine.events)


def test_the_guard_retries_a_correction_that_failed_until_it_lands() -> None:
    """A reload puts h1 back in READY on lb1 and the guard's MAINT fails (the LB refuses for a
    moment): the guard keeps reading, sees the same states and tries again, and corrects it
    once the LB takes it. (The guard skips judging states it already found clean, never states
    that still need a correction.)"""
    fleet = FakeFleet(HOSTS, lbs=LBS)
    tries: list[str] = []
    retried, corrected = threading.Event(), threading.Event()
    balancer = fleet.balancer()
    set_state = balancer.set_state

    def flaky_set_state(servers: Sequence[str], state: str) -> None:
        if state == "maint" and fleet.balancer_fails_on == "maint":
            tries.append(state)
            if len(tries) >= 3:
                retried.set()
        set_state(servers, state)  # type: ignore[arg-type]

    balancer.set_state = flaky_set_state  # type: ignore[method-assign]

    def change() -> None:
        fleet.servers["unix:///lb1.sock"]["h1"].admin = "READY"
        fleet.balancer_fails_on = "maint"
        assert retried.wait(5), f"the guard tried {len(tries)} times"
        fleet.balancer_fails_on = None
        assert corrected.wait(5), "the guard never corrected the drift"

    def watch(e: ev.Event) -> None:
        if isinstance(e, ev.DriftCorrected):
            corrected.set()

    fleet.hooks["upgrade h1 -> 2.0"] = change
    engine, result = run(fleet, guard_interval=0.01, sinks=[watch], balancer=balancer)
    assert len(tries) >= 3 and result.status == "succeeded"
    assert fleet.servers["unix:///lb1.sock"]["h1"].admin == "READY"  # enabled after the batch
    assert any(isinstance(e, ev.DriftCorrected) for e in engine.events)
