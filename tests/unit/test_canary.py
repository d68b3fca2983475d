"""The canary strategy on the fake fleet: weights recorded and restored exactly, gates that stop
a bad release, operator controls, the continuous watch, and resume after a stop at every point
of the canary phase (the journal cut after each event).

Invariants checked whatever the cut: no host upgraded or rolled back while in rotation; every
host ends READY on every LB on the version the result says (or is reported); every server ends
at its original weight on every LB.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from rollout_py import events as ev
from rollout_py.controls import Control
from rollout_py.engine import Engine, Settings
from rollout_py.planner import make_plan
from rollout_py.result import DeployResult, fold
from rollout_py.spec import HealthSpec, HttpProbe
from rollout_py.spec_canary import AnalysisSpec, CanarySpec
from rollout_py.steps import describe_gate
from rollout_py.testing import FakeFleet

HOSTS = ["h1", "h2", "h3", "h4"]
LBS = ("unix:///lb1.sock", "unix:///lb2.sock")
WEIGHTS = {"h1": 1, "h2": 2, "h3": 1, "h4": 3}  # unequal on purpose: restored exactly


class Killed(BaseException):
    """Stands for kill -9: nothing after it runs."""


def analysis_spec(**over: Any) -> AnalysisSpec:
    spec = AnalysisSpec.model_validate({
        "interval": 1, "min_requests": 100, "inconclusive_limit": 3, "gates": [
            {"error_rate": {"max": "1%"}}, {"error_rate": {"max_over_baseline": "0.5%"}}]})
    return spec.model_copy(update={"interval": 0.002, **over})


def canary_steps(*steps: dict[str, Any]) -> CanarySpec:
    return CanarySpec.model_validate({"hosts": 1, "steps": list(steps) or [
        {"traffic": "25%"}, {"analysis": {"duration": 0.004}}, {"pause": {"duration": 0.01}},
        {"traffic": "50%"}, {"analysis": {"duration": 0.002}}]})


def new_fleet(**over: Any) -> FakeFleet:
    fleet = FakeFleet(HOSTS, lbs=LBS, **{"requests_per_read": 1000, **over})
    for per in fleet.servers.values():
        for host, w in WEIGHTS.items():
            per[host].weight = w
    return fleet


def make_engine(fleet: FakeFleet, sinks: Sequence[Callable[[ev.Event], None]] = (), *,
                canary: CanarySpec | None = None, analysis: AnalysisSpec | None = None,
                controls: Callable[[], Sequence[Control]] | None = None,
                watch: bool = False, on_failure: str = "rollback_batch") -> Engine:
    spec = analysis or analysis_spec()
    canary = canary or canary_steps()
    plan = make_plan(
        name="t", version="2.0", fleet=HOSTS, targets=HOSTS, servers={h: h for h in HOSTS},
        batches=[1, 2], max_unavailable=2, current_versions={}, force=False, backend="app",
        sockets=list(fleet.lbs), on_failure=on_failure, playbook="p.yml",
        rollback_playbook=None, drain_timeout=0.05, pause_between_batches=0,
        strategy="canary", canary_hosts=1, canary_steps=canary.steps,
        gates=[describe_gate(g) for g in spec.gates], interval=spec.interval)
    health = HealthSpec(deadline=0.05, interval=0.002, consecutive=2,
                        probes=[HttpProbe(http="http://x")])
    return Engine(plan, executor=fleet.executor(), balancer=fleet.balancer(),
                  prober=fleet.prober(), checks=fleet.checks,
                  settings=Settings(health=health, drain_timeout=0.05, up_timeout=0.05,
                                    poll=0.001, guard_interval=0.5,
                                    known_versions=dict.fromkeys(HOSTS, "1.0"),
                                    analysis=spec, controls=controls, watch=watch),
                  sinks=sinks, deploy_id="d1")


def control(action: ev.ControlAction) -> Control:
    return Control(id=f"c-{action}", action=action, deploy_id="d1", by="ops@box (pid 1)",
                   sent_at=1.0)


def weights_of(fleet: FakeFleet) -> dict[str, dict[str, int]]:
    return {lb: {h: s.weight for h, s in per.items()} for lb, per in fleet.servers.items()}


def check_fleet_whole(fleet: FakeFleet, result: DeployResult) -> None:
    assert weights_of(fleet) == dict.fromkeys(LBS, WEIGHTS), fleet.log
    for host in HOSTS:
        admins = {lb[host].admin for lb in fleet.servers.values()}
        if host in result.stranded:
            assert result.status == "failed" and result.exit_code == 3
            continue
        assert admins == {"READY"}, f"{host} left {admins}, not reported"
        assert fleet.versions[host] == (result.hosts[host].after or "1.0")
    if result.status == "succeeded":
        assert set(fleet.versions.values()) == {"2.0"}


def of(events: Sequence[ev.Event], cls: type[ev.Event]) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]


def test_a_good_canary_ramps_its_weights_then_rolls_the_rest_and_restores_every_weight() -> None:
    fleet = new_fleet()
    engine = make_engine(fleet)
    result = engine.run()
    assert result.status == "succeeded", result.cause
    sets = of(engine.events, ev.WeightsSet)
    assert [s.share for s in sets] == [0.25, 0.5]
    for s in sets:  # the asked share, on every LB, from the recorded weights
        assert all(abs(got - s.share) < 0.01 for got in s.achieved.values())
    recorded = of(engine.events, ev.WeightsRecorded)
    assert [r.weights for r in recorded] == [dict.fromkeys(LBS, WEIGHTS)]
    # the canary is weighted only after its batch is back; the rest rolls after the restore
    log = [line.split(" ")[0] for line in fleet.log]
    assert log.index("weight") > fleet.log.index("restore h1")
    assert fleet.log.index("drain h2") > max(i for i, x in enumerate(log) if x == "weight")
    finished = of(engine.events, ev.AnalysisFinished)
    assert [(f.step, f.verdict) for f in finished] == [(3, "pass"), (6, "pass")]
    windows = of(engine.events, ev.AnalysisWindow)
    assert all(w.canary == ("h1",) and w.baseline == ("h2", "h3", "h4") for w in windows)
    assert of(engine.events, ev.PauseEnded)[0].how == "elapsed"
    check_fleet_whole(fleet, result)


def test_a_release_with_5_percent_errors_fails_the_first_analysis_and_is_rolled_back() -> None:
    fleet = new_fleet(error_rates={"2.0": 0.05})
    engine = make_engine(fleet)
    result = engine.run()
    assert result.status == "rolled_back" and result.exit_code == 1
    window = of(engine.events, ev.AnalysisWindow)[0]
    assert window.verdict == "fail" and window.step == 3
    failed = {g["gate"] for g in window.gates if g["verdict"] == "fail"}
    assert failed == {"error_rate.max", "error_rate.max_over_baseline"}
    assert window.groups["canary"]["errors"] > 0 and window.groups["baseline"]["errors"] == 0
    batch_failed = of(engine.events, ev.BatchFailed)[0]
    assert batch_failed.failure == "analysis" and batch_failed.batch == 1
    assert "error_rate" in (result.cause or "")
    assert not any(line.startswith("drain h2") for line in fleet.log)  # the rest never ran
    assert not fleet.violations
    check_fleet_whole(fleet, result)


def test_no_traffic_is_inconclusive_held_then_failed_at_the_limit_never_promoted() -> None:
    fleet = new_fleet(requests_per_read=0)
    engine = make_engine(fleet)
    result = engine.run()
    windows = of(engine.events, ev.AnalysisWindow)
    assert [w.verdict for w in windows] == ["inconclusive"] * 3
    assert "too few requests" in windows[0].reason
    assert result.status == "rolled_back"
    assert "inconclusive" in (result.cause or "")
    assert not any(line.startswith("drain h2") for line in fleet.log)
    check_fleet_whole(fleet, result)


def test_a_counter_reset_mid_analysis_gives_no_verdict_and_no_false_failure() -> None:
    fleet = new_fleet()
    resets = iter([True])

    def reload_once(e: ev.Event) -> None:  # what a reload does: counters and weights
        if isinstance(e, ev.AnalysisWindow) and next(resets, False):
            fleet.reset_counters()
            for per in fleet.servers.values():
                for host, w in WEIGHTS.items():
                    per[host].weight = w

    engine = make_engine(fleet, [reload_once])
    result = engine.run()
    assert [w.verdict for w in of(engine.events, ev.AnalysisWindow)][:3] == \
        ["pass", "reset", "pass"]
    # the canary's share is set again after the reload, the same weights
    first, again = of(engine.events, ev.WeightsSet)[:2]
    assert (first.step, again.step) == (2, 2) and first.weights == again.weights
    assert result.status == "succeeded"
    check_fleet_whole(fleet, result)


@pytest.mark.parametrize("action, status, how", [
    ("promote", "succeeded", "promoted"),
    ("continue", "succeeded", "continued"),
    ("abort", "rolled_back", None),
])
def test_controls_end_a_pause_or_roll_the_canary_back(action: ev.ControlAction, status: str,
                                                       how: str | None) -> None:
    fleet = new_fleet()
    inbox: list[Control] = []

    def send_on_pause(e: ev.Event) -> None:
        if isinstance(e, ev.PauseStarted):
            inbox.append(control(action))

    def controls() -> list[Control]:
        out = list(inbox)
        inbox.clear()
        return out

    canary = canary_steps({"traffic": "10%"}, {"pause": {}})  # holds until promoted
    engine = make_engine(fleet, [send_on_pause], canary=canary, controls=controls)
    result = engine.run()
    assert result.status == status, result.cause
    received = of(engine.events, ev.ControlReceived)
    assert [(c.action, c.by) for c in received] == [(action, "ops@box (pid 1)")]
    ended = of(engine.events, ev.PauseEnded)
    if how is not None:
        assert [p.how for p in ended] == [how]
    else:
        assert "aborted by ops@box" in (result.cause or "")
        assert of(engine.events, ev.BatchFailed)[0].failure == "aborted"
    check_fleet_whole(fleet, result)


def test_promote_all_skips_every_remaining_canary_step() -> None:
    fleet = new_fleet()
    sent = iter([control("promote_all")])
    engine = make_engine(fleet, controls=lambda: [c for c in [next(sent, None)] if c])
    result = engine.run()
    assert result.status == "succeeded"
    assert [s.share for s in of(engine.events, ev.WeightsSet)] == [0.25]
    assert [f.verdict for f in of(engine.events, ev.AnalysisFinished)] == ["promoted"]
    assert not of(engine.events, ev.PauseStarted)
    check_fleet_whole(fleet, result)


def test_the_watch_fails_the_deploy_naming_a_host_of_an_earlier_batch() -> None:
    """The canary passes, then turns bad while a later batch runs: the deploy fails naming it
    and rolls back its batch as well as the running one."""
    fleet = new_fleet()
    caught = threading.Event()

    def turn_bad(e: ev.Event) -> None:
        if isinstance(e, ev.WeightsRestored):
            fleet.error_rates["2.0"] = 0.2  # every 2.0 server from now on
        if isinstance(e, ev.AnalysisFinished) and e.purpose == "watch":
            caught.set()

    # batch 2's upgrade lasts until the watch has judged (a real upgrade takes seconds)
    def slow_upgrade() -> None:
        caught.wait(10)

    fleet.hooks["upgrade h2 -> 2.0"] = slow_upgrade
    engine = make_engine(fleet, [turn_bad], watch=True,
                         analysis=analysis_spec(interval=0.01))
    result = engine.run()
    assert result.status == "rolled_back", result.cause
    watch = [f for f in of(engine.events, ev.AnalysisFinished) if f.purpose == "watch"]
    assert watch and "h1" in watch[0].hosts and "h1" in (result.cause or "")
    rolled = {e.batch for e in of(engine.events, ev.RollbackStarted)}
    assert 1 in rolled
    assert fleet.versions["h1"] == "1.0"
    assert not fleet.violations
    check_fleet_whole(fleet, result)


# --- resume after a stop at every point of the canary phase ---------------------------------

@dataclass(frozen=True)
class Scenario:
    name: str
    expect: frozenset[str]
    fleet: dict[str, Any] = field(default_factory=dict)
    interrupt_on: str | None = None  # an event kind: the first interrupt right after it


SCENARIOS = [
    Scenario("good", frozenset({"succeeded"})),
    Scenario("bad", frozenset({"rolled_back"}), fleet={"error_rates": {"2.0": 0.05}}),
    Scenario("interrupted_in_analysis", frozenset({"succeeded"}),
             interrupt_on="analysis_window"),
    Scenario("interrupted_after_weights", frozenset({"succeeded"}), interrupt_on="weights_set"),
]


def run_until(scenario: Scenario, cut: int | None) -> tuple[FakeFleet, list[ev.Event]]:
    fleet = new_fleet(**scenario.fleet)
    journal: list[ev.Event] = []
    engine: Engine | None = None
    fired: list[ev.Event] = []

    def journal_sink(e: ev.Event) -> None:
        journal.append(e)
        if cut is not None and len(journal) == cut:
            raise Killed

    def signals(e: ev.Event) -> None:
        if e.kind == scenario.interrupt_on and not fired:
            fired.append(e)
            assert engine is not None
            engine.interrupt()

    journal_sink.critical = True  # type: ignore[attr-defined]
    engine = make_engine(fleet, [journal_sink, signals])
    with contextlib.suppress(Killed):
        engine.run()
    return fleet, journal


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_resume_after_every_journal_prefix_restores_every_weight(scenario: Scenario) -> None:
    _, full = run_until(scenario, None)
    assert isinstance(full[-1], ev.DeployFinished)
    for cut in [*range(1, len(full)), None]:
        fleet, prefix = run_until(scenario, cut)
        where = f"cut after event {len(prefix)} ({prefix[-1].kind})"
        journal = list(prefix)
        if not (isinstance(prefix[-1], ev.DeployFinished) and not prefix[-1].resumable):
            for _ in range(3):
                resumed: list[ev.Event] = []
                result = make_engine(fleet, [resumed.append]).run(resume=journal)
                journal += resumed
                assert not fleet.violations, (where, fleet.violations)
                if not result.resumable:
                    break
        result = fold(journal)
        assert result.status in scenario.expect, (where, result.status, result.cause)
        check_fleet_whole(fleet, result)
        sets = [e.seq for e in journal if isinstance(e, ev.WeightsSet)]
        restores = [e.seq for e in journal if isinstance(e, ev.WeightsRestored)]
        if sets:  # every weight change is followed by a journaled restore
            assert restores and max(restores) > max(sets), where
        rest = [e.seq for e in journal if isinstance(e, ev.BatchStarted) and e.batch == 2]
        if rest:  # the rest of the fleet rolls only after every canary analysis passed
            passed = {e.step for e in journal if isinstance(e, ev.AnalysisFinished)
                      and e.verdict == "pass" and e.seq < rest[-1]
                      and e.seq > _last_resume_before(journal, rest[-1])}
            assert passed >= {3, 6}, (where, passed)


def _last_resume_before(journal: Sequence[ev.Event], seq: int) -> int:
    """Where the run that started batch 2 took over: a verdict from before a crash is not
    reused, unless that run found the canary steps finished."""
    resumed = [e for e in journal if isinstance(e, ev.DeployResumed) and e.seq < seq]
    if not resumed or any(isinstance(e, ev.WeightsRestored) and e.step == 7
                          and e.seq < resumed[-1].seq for e in journal):
        return 0
    return resumed[-1].seq


def test_status_shows_each_window_its_numbers_and_the_failed_gates() -> None:
    from rollout_py.operations import analysis_of
    from rollout_py.report import _analysis_lines

    fleet = new_fleet(error_rates={"2.0": 0.05})
    engine = make_engine(fleet)
    engine.run()
    info = analysis_of(engine.events)
    assert info["windows_total"] == 1 and info["windows"][0]["verdict"] == "fail"
    assert [a["verdict"] for a in info["analyses"]] == ["fail"]
    lines = _analysis_lines(info)
    window = info["windows"][0]
    canary = window["groups"]["canary"]
    assert any(f"canary {canary['errors']}/{canary['requests']}" in line
               and "failed: error_rate.max, error_rate.max_over_baseline" in line
               for line in lines), lines


@pytest.mark.parametrize("rates, status, batches_started", [
    ({}, "succeeded", 3),  # the last batch has no old server left: judged on its own numbers
    ({"2.0": 0.05}, "rolled_back", 1),  # stopped at its first batch
])
def test_rolling_with_a_soak_and_gates_judges_every_batch(rates: dict[str, float], status: str,
                                                          batches_started: int) -> None:
    fleet = new_fleet(error_rates=rates)
    spec = analysis_spec()
    plan = make_plan(
        name="t", version="2.0", fleet=HOSTS, targets=HOSTS, servers={h: h for h in HOSTS},
        batches=[1, 2], max_unavailable=2, current_versions={}, force=False, backend="app",
        sockets=list(fleet.lbs), on_failure="rollback_batch", playbook="p.yml",
        rollback_playbook=None, drain_timeout=0.05, pause_between_batches=0,
        gates=[describe_gate(g) for g in spec.gates], soak=0.004, interval=spec.interval)
    assert [type(s).__name__ for s in plan.steps] == ["PlannedBatch", "Analyse"] * 3
    health = HealthSpec(deadline=0.05, interval=0.002, consecutive=2, soak=0.004,
                        probes=[HttpProbe(http="http://x")])
    engine = Engine(plan, executor=fleet.executor(), balancer=fleet.balancer(),
                    prober=fleet.prober(), checks=fleet.checks,
                    settings=Settings(health=health, drain_timeout=0.05, up_timeout=0.05,
                                      poll=0.001, known_versions=dict.fromkeys(HOSTS, "1.0"),
                                      analysis=spec, watch=False))
    result = engine.run()
    assert result.status == status, result.cause
    assert len(of(engine.events, ev.BatchStarted)) == batches_started
    last = of(engine.events, ev.AnalysisWindow)[-1]
    if status == "succeeded":
        assert last.baseline == () and last.verdict == "pass"
        assert "no old server left to compare with" in last.reason
        assert {g["gate"] for g in last.gates} == {"error_rate.max"}
    check_fleet_whole(fleet, result)


def test_the_watch_leaves_the_canary_to_its_steps_and_watches_it_after() -> None:
    """One judge at a time: during its traffic steps the canary is judged by them (their
    limits and their cause); the watch takes it over once they are done."""
    fleet = new_fleet(error_rates={"2.0": 0.05})
    engine = make_engine(fleet, watch=True, analysis=analysis_spec(interval=0.01))
    result = engine.run()
    assert result.status == "rolled_back"
    assert [f.purpose for f in of(engine.events, ev.AnalysisFinished)] == ["canary"]
    assert not [w for w in of(engine.events, ev.AnalysisWindow) if w.purpose == "watch"]

    fleet = new_fleet()
    engine = make_engine(fleet, watch=True, analysis=analysis_spec(interval=0.01))
    restored = threading.Event()
    watched = threading.Event()

    def after_restore(e: ev.Event) -> None:
        if isinstance(e, ev.WeightsRestored):
            restored.set()
        if isinstance(e, ev.AnalysisWindow) and e.purpose == "watch":
            assert restored.is_set(), "the watch judged the canary during its steps"
            watched.set()

    engine._sinks.append(after_restore)

    def slow_upgrade() -> None:
        watched.wait(10)

    fleet.hooks["upgrade h2 -> 2.0"] = slow_upgrade
    assert engine.run().status == "succeeded"
    assert watched.is_set()
