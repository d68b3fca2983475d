"""``phases.release`` in the engine, with the doubles: the flag ramp after the last batch and
before migrate, its outcomes (reverted: exit 1, nothing else; refused or failed: stopped,
resumable; interrupted: cancelled, resumable), and resume after a cut at every journal event
of a deploy with expand, release and migrate."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from rollout_py import events as ev
from rollout_py.engine import Engine
from rollout_py.phase_run import PhaseOutcome, Phases
from rollout_py.spec_phases import PhaseSpec, PhasesSpec, ReleaseSpec
from rollout_py.testing import FakeFleet
from rollout_py.testing_phases import FakeRelease
from tests.unit.test_phases import (
    EXPAND,
    MIGRATE,
    Killed,
    engine,
    fleet_of,
    killed_at,
    runner,
)

RELEASE = "release new-greeting to 100%"
SPEC = PhasesSpec(expand=PhaseSpec(command="alembic upgrade expand", on="db1"),
                  release=ReleaseSpec(flag="new-greeting"),
                  migrate=PhaseSpec(command="python backfill.py", on="db1"))


def build(fleet: FakeFleet, sinks: list[Callable[[ev.Event], None]],
          outcomes: Sequence[int] = ()) -> tuple[Engine, FakeRelease]:
    built = engine(fleet, sinks, phases=SPEC)
    release = FakeRelease(fleet, outcomes)
    built.phases = Phases(spec=SPEC, runner=runner(fleet), release=release)
    return built, release


def assert_whole_on_new(fleet: FakeFleet) -> None:
    assert all(v == "2.0" for v in fleet.versions.values())
    assert all(s.admin == "READY" for per in fleet.servers.values() for s in per.values())
    assert not fleet.violations


def test_the_release_runs_after_the_last_batch_and_before_migrate() -> None:
    fleet = fleet_of()
    events: list[ev.Event] = []
    result = build(fleet, [events.append])[0].run()
    assert result.status == "succeeded" and result.exit_code == 0
    assert fleet.log == [
        EXPAND,
        "drain h1", "maint h1", "upgrade h1 -> 2.0", "restore h1",
        "drain h2,h3", "maint h2,h3", "upgrade h2,h3 -> 2.0", "restore h2,h3",
        "drain h4", "maint h4", "upgrade h4 -> 2.0", "restore h4",
        RELEASE, MIGRATE]
    started = [e for e in events if isinstance(e, ev.PhaseStarted)]
    assert [(e.phase, e.on, e.what) for e in started][1] == (
        "release", "fleet", "flag ramp new-greeting to 100%")
    assert_whole_on_new(fleet)


def test_a_reverted_release_ends_rolled_back_without_migrate_and_keeps_the_release() -> None:
    fleet = fleet_of()
    events: list[ev.Event] = []
    result = build(fleet, [events.append], outcomes=[1])[0].run()
    assert result.status == "rolled_back" and result.exit_code == 1
    assert not result.resumable
    assert fleet.log[-1] == RELEASE and MIGRATE not in fleet.log
    assert result.cause is not None and result.cause.startswith("release reverted: ")
    assert "runs 2.0 with the flag as before (dark); migrate not run" in result.cause
    [finished] = [e for e in events if isinstance(e, ev.PhaseFinished) and e.phase == "release"]
    assert (finished.ok, finished.rc) == (False, 1)
    assert_whole_on_new(fleet)  # the app is not rolled back: the code runs dark


@pytest.mark.parametrize("rc", [2, 3, None], ids=["refused", "failed", "controller"])
def test_a_release_not_done_stops_resumable_and_resume_ramps_again_then_migrates(
        rc: int | None) -> None:
    fleet = fleet_of()
    events: list[ev.Event] = []
    built, _ = build(fleet, [events.append])
    built.phases = Phases(spec=SPEC, runner=runner(fleet),
                          release=_Failing(fleet, rc))
    result = built.run()
    assert result.status == "stopped" and result.exit_code == 5 and result.resumable
    assert result.cause is not None and "`rollout resume` ramps again" in result.cause
    assert MIGRATE not in fleet.log
    before = len(fleet.log)
    resumed_events: list[ev.Event] = []
    again, release = build(fleet, [resumed_events.append])
    assert again.run(resume=events).status == "succeeded"
    assert fleet.log[before:] == [RELEASE, MIGRATE]  # no batch again, no expand
    assert [(e.phase, e.attempt) for e in resumed_events if isinstance(e, ev.PhaseStarted)] \
        == [("release", 2), ("migrate", 1)]
    assert release.calls == ["d1"]


class _Failing(FakeRelease):
    def __init__(self, fleet: FakeFleet, rc: int | None) -> None:
        super().__init__(fleet)
        self.rc = rc

    def run(self, spec: ReleaseSpec, *, deploy_id: str,
            cancel: Callable[[], bool]) -> PhaseOutcome:
        self.fleet.record(f"release {spec.flag} to {spec.to}%")
        return PhaseOutcome(ok=False, rc=self.rc, detail="ERROR: injected")


def test_an_interrupt_during_the_release_cancels_it_and_resume_ramps_again() -> None:
    fleet = fleet_of()
    events: list[ev.Event] = []
    built, release = build(fleet, [events.append])
    fleet.hooks["restore h4"] = lambda: built.interrupt()  # Ctrl-C while the last batch ends
    result = built.run()
    assert result.status == "cancelled" and result.resumable
    # interrupted before the release: it never started; resume runs it
    assert RELEASE not in fleet.log and release.calls == []
    again, release2 = build(fleet, [])
    assert again.run(resume=events).status == "succeeded"
    assert fleet.log[-2:] == [RELEASE, MIGRATE] and release2.calls == ["d1"]


def test_an_interrupt_while_the_ramp_runs_is_seen_by_its_cancel() -> None:
    fleet = fleet_of()
    events: list[ev.Event] = []
    built, _ = build(fleet, [events.append])

    class Interrupted(FakeRelease):
        def run(self, spec: ReleaseSpec, *, deploy_id: str,
                cancel: Callable[[], bool]) -> PhaseOutcome:
            assert not cancel()
            built.interrupt()  # the first Ctrl-C during the ramp
            return super().run(spec, deploy_id=deploy_id, cancel=cancel)

    built.phases = Phases(spec=SPEC, runner=runner(fleet), release=Interrupted(fleet))
    result = built.run()
    assert result.status == "cancelled" and result.exit_code == 130 and result.resumable
    assert fleet.log[-1] == RELEASE and MIGRATE not in fleet.log
    assert_whole_on_new(fleet)


def _full_journal() -> int:
    events: list[ev.Event] = []
    assert build(fleet_of(), [events.append])[0].run().status == "succeeded"
    return len(events)


def _done(events: list[ev.Event], phase: str) -> bool:
    return any(isinstance(e, ev.PhaseFinished) and e.phase == phase and e.ok for e in events)


def test_resume_after_a_cut_at_every_journal_event_ramps_once_more_unless_done() -> None:
    total = _full_journal()
    for cut in range(1, total):
        fleet = fleet_of()
        events: list[ev.Event] = []
        with pytest.raises(Killed):
            build(fleet, [events.append, killed_at(cut)])[0].run()
        again, release = build(fleet, [])
        result = again.run(resume=events)
        where = f"cut {cut} after {events[-1].kind}"
        assert result.status == "succeeded", where
        assert len(release.calls) == (0 if _done(events, "release") else 1), where
        # the ramp only once every batch is back in rotation; migrate only after the ramp
        last_restore = max(i for i, line in enumerate(fleet.log) if line == "restore h4")
        ramps = [i for i, line in enumerate(fleet.log) if line == RELEASE]
        assert ramps and min(ramps) > last_restore, where
        assert fleet.log.index(MIGRATE) > max(ramps), where
        assert_whole_on_new(fleet)


def test_the_spec_needs_flags_and_analysis_for_a_release_and_no_blue_green() -> None:
    from rollout_py.errors import SpecError
    from rollout_py.spec import parse_spec

    base = {"name": "web", "inventory": "inventory.ini", "hosts": "app",
            "playbook": "deploy.yml",
            "haproxy": {"sockets": ["unix:///lb1.sock"], "backend": "app"},
            "health": {"probes": [{"tcp": "{{ inventory_hostname }}:80"}]},
            "phases": {"release": {"flag": "new-greeting", "to": "50%"}}}
    with pytest.raises(SpecError, match=r"flags: phases.release ramps a flag"):
        parse_spec(base)
    with pytest.raises(SpecError, match=r"phases.release.to: .*between 1% and 100%"):
        parse_spec({**base, "phases": {"release": {"flag": "f", "to": "150%"}}})
    flags = {"file": "flags.json", "path": "/srv/app/flags.json"}
    analysis = {"interval": 1, "min_requests": 10,
                "gates": [{"error_rate": {"max": "1%"}}]}
    spec = parse_spec({**base, "flags": flags, "analysis": analysis})
    assert spec.phases is not None and spec.phases.release == ReleaseSpec(flag="new-greeting",
                                                                           to=50)
    unquoted = parse_spec({**base, "flags": flags, "analysis": analysis, "phases": {
        "release": {"flag": "f", "variant": True}}})  # YAML 1.1's reading of `variant: on`
    assert unquoted.phases is not None and unquoted.phases.release is not None
    assert unquoted.phases.release.variant == "on"
