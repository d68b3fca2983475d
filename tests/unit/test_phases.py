"""Expand and migrate in the engine, with the doubles: the exact order of side effects, a
failing expand that touches nothing, migrate only after the last batch, and resume after a cut
at every journal event of a deploy with both phases."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from rollout_py import events as ev
from rollout_py.engine import Engine, Settings
from rollout_py.errors import ControllerError
from rollout_py.phase_run import Phases
from rollout_py.planner import make_plan
from rollout_py.spec import HealthSpec, HttpProbe
from rollout_py.spec_phases import PhaseSpec, PhasesSpec
from rollout_py.testing import FakeFleet
from rollout_py.testing_phases import FakePhaseRunner

HOSTS = ["h1", "h2", "h3", "h4"]
EXPAND = "expand on db1 -> 2.0"
MIGRATE = "migrate on db1 -> 2.0"
PHASES = PhasesSpec(expand=PhaseSpec(command="alembic upgrade expand", on="db1"),
                    migrate=PhaseSpec(command="python backfill.py", on="db1"))


class Killed(BaseException):
    """Stands for kill -9: nothing after it runs."""


def engine(fleet: FakeFleet, sinks: list[Callable[[ev.Event], None]], *,
           runner: FakePhaseRunner | None = None, staged: bool = False,
           phases: PhasesSpec = PHASES) -> Engine:
    plan = make_plan(
        name="t", version="2.0", fleet=HOSTS, targets=HOSTS, servers={h: h for h in HOSTS},
        batches=[1, 2], max_unavailable=2, current_versions={}, force=False, backend="app",
        sockets=list(fleet.lbs), on_failure="rollback_batch", playbook="p.yml",
        rollback_playbook=None, drain_timeout=0.05, pause_between_batches=0)
    health = HealthSpec(deadline=0.05, interval=0.002, consecutive=1,
                        probes=[HttpProbe(http="http://x")])
    built = Engine(plan, executor=fleet.executor(), balancer=fleet.balancer(),
                   prober=fleet.prober(), checks=fleet.checks,
                   settings=Settings(health=health, drain_timeout=0.05, up_timeout=0.05,
                                     poll=0.002, guard_interval=0.5,
                                     known_versions=dict.fromkeys(HOSTS, "1.0"),
                                     stage_tags="stage" if staged else None,
                                     switch_tags="switch" if staged else None),
                   sinks=sinks, deploy_id="d1")
    built.phases = Phases(spec=phases, runner=runner or FakePhaseRunner(
        fleet, hosts={"expand": "db1", "migrate": "db1"}))
    return built


def fleet_of(**kwargs: Any) -> FakeFleet:
    return FakeFleet(HOSTS, lbs=("unix:///lb1.sock", "unix:///lb2.sock"), **kwargs)


def runner(fleet: FakeFleet, **fail: int) -> FakePhaseRunner:
    return FakePhaseRunner(fleet, hosts={"expand": "db1", "migrate": "db1"}, fail=fail)


def test_a_deploy_runs_expand_first_and_migrate_last_in_exact_order() -> None:
    fleet = fleet_of(require_stage=True)
    events: list[ev.Event] = []
    result = engine(fleet, [events.append], staged=True).run()
    assert result.status == "succeeded" and result.exit_code == 0
    assert fleet.log == [
        EXPAND, "stage h1,h2,h3,h4 -> 2.0",
        "drain h1", "maint h1", "upgrade h1 -> 2.0", "restore h1",
        "drain h2,h3", "maint h2,h3", "upgrade h2,h3 -> 2.0", "restore h2,h3",
        "drain h4", "maint h4", "upgrade h4 -> 2.0", "restore h4",
        MIGRATE]
    kinds = [e.kind for e in events]
    assert kinds[:3] == ["deploy_started", "phase_started", "phase_finished"]
    assert kinds[-3:] == ["phase_started", "phase_finished", "deploy_finished"]
    assert not fleet.violations


def test_a_failing_expand_ends_the_deploy_before_anything_is_touched() -> None:
    fleet = fleet_of(require_stage=True)
    events: list[ev.Event] = []
    result = engine(fleet, [events.append], runner=runner(fleet, expand=1), staged=True).run()
    assert fleet.log == [EXPAND]  # no stage, no drain, no migrate
    assert result.status == "rolled_back" and result.exit_code == 1
    assert not result.resumable
    assert result.cause is not None and "expand failed on db1 (nothing was drained" in result.cause
    assert "injected failure" in result.cause
    assert [e.kind for e in events] == ["deploy_started", "phase_started", "phase_finished",
                                        "deploy_finished"]
    assert all(v == "1.0" for v in fleet.versions.values())
    assert all(s.admin == "READY" for per in fleet.servers.values() for s in per.values())


def test_an_expand_the_controller_could_not_start_is_resumable_and_runs_again() -> None:
    fleet = fleet_of()
    events: list[ev.Event] = []

    class Broken(FakePhaseRunner):
        def run(self, name: Any, phase: Any, **kw: Any) -> Any:
            raise ControllerError("cannot fork")

    result = engine(fleet, [events.append], runner=Broken(fleet)).run()
    assert result.status == "stopped" and result.exit_code == 5 and result.resumable
    assert fleet.log == []
    resumed = engine(fleet, [], runner=runner(fleet)).run(resume=events)
    assert resumed.status == "succeeded"
    assert fleet.log[0] == EXPAND and fleet.log[-1] == MIGRATE


def test_migrate_never_runs_when_a_batch_fails() -> None:
    fleet = fleet_of(fail_upgrade={"h3": "failed"})
    result = engine(fleet, []).run()
    assert result.status == "rolled_back"
    assert EXPAND in fleet.log and MIGRATE not in fleet.log
    # the app's rollback after expand is an ordinary rollback: batch 2 back on 1.0
    assert fleet.versions == {"h1": "2.0", "h2": "1.0", "h3": "1.0", "h4": "1.0"}


def test_migrate_waits_for_the_last_batch_and_an_interrupt_before_it_defers_it() -> None:
    fleet = fleet_of()
    events: list[ev.Event] = []
    built = engine(fleet, [events.append])
    fleet.hooks["upgrade h4 -> 2.0"] = lambda: built.interrupt()  # first Ctrl-C, last batch
    result = built.run()
    assert result.status == "cancelled" and result.resumable
    assert MIGRATE not in fleet.log and fleet.log[-1] == "restore h4"
    resumed = engine(fleet, [], runner=runner(fleet)).run(resume=events)
    assert resumed.status == "succeeded"
    assert fleet.log.count(EXPAND) == 1 and fleet.log[-1] == MIGRATE


def test_a_failing_migrate_stops_resumable_without_rolling_back_then_resume_reruns_it(
        ) -> None:
    fleet = fleet_of()
    events: list[ev.Event] = []
    result = engine(fleet, [events.append], runner=runner(fleet, migrate=1)).run()
    assert result.status == "stopped" and result.exit_code == 5 and result.resumable
    assert result.cause is not None and "migrate failed on db1" in result.cause
    assert all(v == "2.0" for v in fleet.versions.values())  # nothing rolled back
    before = len(fleet.log)
    resumed_events: list[ev.Event] = []
    resumed = engine(fleet, [resumed_events.append], runner=runner(fleet)).run(resume=events)
    assert resumed.status == "succeeded"
    assert fleet.log[before:] == [MIGRATE]  # only migrate: no batch again, no expand
    started = [e for e in resumed_events if isinstance(e, ev.PhaseStarted)]
    assert [(e.phase, e.attempt) for e in started] == [("migrate", 2)]


def test_kill_9_during_migrate_then_resume_runs_it_again() -> None:
    fleet = fleet_of()
    events: list[ev.Event] = []

    def die() -> None:
        raise Killed

    fleet.hooks[MIGRATE] = die
    with pytest.raises(Killed):
        engine(fleet, [events.append]).run()
    assert isinstance(events[-1], ev.PhaseStarted) and events[-1].phase == "migrate"
    resumed = engine(fleet, [], runner=runner(fleet)).run(resume=events)
    assert resumed.status == "succeeded"
    assert fleet.log.count(MIGRATE) == 2 and fleet.log.count(EXPAND) == 1


def killed_at(cut: int) -> Callable[[ev.Event], None]:
    """A critical sink (the journal's place) that stands for kill -9 at event number ``cut``."""
    seen = {"n": 0}

    def sink(e: ev.Event) -> None:
        seen["n"] += 1
        if seen["n"] == cut:
            raise Killed

    sink.critical = True  # type: ignore[attr-defined]
    return sink


def _full_journal(staged: bool) -> int:
    fleet = fleet_of(require_stage=staged)
    events: list[ev.Event] = []
    assert engine(fleet, [events.append], staged=staged).run().status == "succeeded"
    return len(events)


def _done(events: list[ev.Event], phase: str) -> bool:
    return any(isinstance(e, ev.PhaseFinished) and e.phase == phase and e.ok for e in events)


@pytest.mark.parametrize("staged", [False, True], ids=["plain", "staged"])
def test_resume_after_a_cut_at_every_journal_event(staged: bool) -> None:
    total = _full_journal(staged)
    for cut in range(1, total):  # the last event closes the journal: nothing to resume
        fleet = fleet_of(require_stage=staged)
        events: list[ev.Event] = []
        with pytest.raises(Killed):
            engine(fleet, [events.append, killed_at(cut)], staged=staged).run()
        assert len(events) == cut
        first_run = len(fleet.log)
        again = runner(fleet)
        result = engine(fleet, [], runner=again, staged=staged).run(resume=events)
        where = f"cut {cut} after {events[-1].kind}"
        assert result.status == "succeeded", where
        ran = [c[0] for c in again.calls]
        assert ran.count("expand") == (0 if _done(events, "expand") else 1), where
        assert ran.count("migrate") == (0 if _done(events, "migrate") else 1), where
        # migrate never before every batch is back in rotation, expand before any drain
        assert fleet.log.index(MIGRATE) > max(i for i, line in enumerate(fleet.log)
                                              if line == "restore h4"), where
        resumed_log = fleet.log[first_run:]
        if "expand" in ran:
            assert resumed_log[0] == EXPAND, where
        assert fleet.log.index(EXPAND) < fleet.log.index("drain h1"), where
        assert not fleet.violations, where
        assert all(v == "2.0" for v in fleet.versions.values()), where
        assert all(s.admin == "READY" for per in fleet.servers.values()
                   for s in per.values()), where


def test_an_interrupt_before_expand_touches_nothing_and_resume_runs_it() -> None:
    fleet = fleet_of(require_stage=True)
    events: list[ev.Event] = []
    built = engine(fleet, [events.append], staged=True)
    built.interrupt()
    result = built.run()
    assert result.status == "cancelled" and result.resumable and fleet.log == []
    resumed = engine(fleet, [], staged=True).run(resume=events)
    assert resumed.status == "succeeded"
    assert fleet.log[:2] == [EXPAND, "stage h1,h2,h3,h4 -> 2.0"] and fleet.log[-1] == MIGRATE


@pytest.mark.parametrize("bad", [False, True], ids=["good", "failing_canary"])
def test_a_canary_migrates_only_after_every_traffic_step_passed(bad: bool) -> None:
    from tests.unit.test_canary import make_engine, new_fleet

    fleet = new_fleet(error_rates={"2.0": 0.2} if bad else {})
    built = make_engine(fleet)
    built.phases = Phases(spec=PHASES, runner=runner(fleet))
    result = built.run()
    assert fleet.log[0] == EXPAND
    if bad:
        assert result.status == "rolled_back" and MIGRATE not in fleet.log
        return
    assert result.status == "succeeded" and fleet.log[-1] == MIGRATE
    last_traffic = max(i for i, e in enumerate(built.events)
                       if isinstance(e, ev.WeightsRestored | ev.AnalysisFinished))
    migrate = next(i for i, e in enumerate(built.events) if isinstance(e, ev.PhaseStarted)
                   and e.phase == "migrate")
    assert migrate > last_traffic
