"""A deploy's report as data (rollout_py.report_data, rollout_py.report_spans): hosts, LB
cells, weights, batches and their steps, windows, rollbacks, a journal cut mid-batch, a lab
watch's samples, and the JSON form.

The rolling deploys come from real engine runs over FakeFleet; their events are then stamped
again with ``T0 + seq**2 / 4`` (the engine runs in milliseconds): every gap differs and is a
binary fraction, so sums are exact and a step paired with the wrong event shows. Every number
the tests expect is computed here from the journal, independently of the report modules.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from rollout_py import events as ev
from rollout_py.engine import Engine, Settings
from rollout_py.errors import InputError
from rollout_py.planner import make_plan
from rollout_py.report import console_line
from rollout_py.report_data import (
    REPORT_SCHEMA,
    DeployReport,
    Step,
    build,
    read_watch,
    record_report,
)
from rollout_py.report_spans import Span, out_of_rotation, replay, takes_out, watch_spans
from rollout_py.result import DeployResult
from rollout_py.spec import HealthSpec, HttpProbe
from rollout_py.state import Journal, StateDir
from rollout_py.testing import FakeFleet
from rollout_py.timeline import host_timelines

LB1, LB2 = "unix:///lb1.sock", "unix:///lb2.sock"
HOSTS = ["h1", "h2", "h3"]  # batches: [h1], [h2, h3]; HAProxy server name = host name
T0 = 1_780_000_000.0
E = TypeVar("E", bound=ev.Event)


# ---- a real engine run ----------------------------------------------------------------------

def engine_run(hooks: Callable[[FakeFleet], None], soak: float = 0.0
               ) -> tuple[FakeFleet, DeployResult, list[ev.Event]]:
    """A rolling deploy of 1.0 -> 2.0 in batches [h1], [h2, h3] behind two LBs; ``hooks``
    makes batch 2 fail. Returns the fleet, the result and the events, stamped again."""
    fleet = FakeFleet(HOSTS, lbs=(LB1, LB2))
    hooks(fleet)
    plan = make_plan(
        name="web", version="2.0", fleet=HOSTS, targets=HOSTS, servers={h: h for h in HOSTS},
        batches=[1, 2], max_unavailable=None, current_versions={}, force=False, backend="app",
        sockets=[LB1, LB2], on_failure="rollback_batch", playbook="p.yml",
        rollback_playbook=None, drain_timeout=0.05, pause_between_batches=0)
    health = HealthSpec(deadline=0.05, interval=0.002, consecutive=1, soak=soak,
                        probes=[HttpProbe(http="http://x")])
    seen: list[ev.Event] = []
    result = Engine(plan, executor=fleet.executor(), balancer=fleet.balancer(),
                    prober=fleet.prober(), checks=fleet.checks,
                    settings=Settings(health=health, drain_timeout=0.05, up_timeout=0.05,
                                      poll=0.002, known_versions=dict.fromkeys(HOSTS, "1.0")),
                    sinks=[seen.append]).run()
    assert not fleet.violations
    return fleet, result, [dataclasses.replace(e, ts=T0 + e.seq * e.seq / 4) for e in seen]


def h3_fails_its_verify_probe(fleet: FakeFleet) -> None:
    """h3 is unhealthy from batch 2's upgrade to its rollback: the verify probe fails before
    the enable."""
    fleet.hooks["upgrade h2,h3 -> 2.0"] = lambda: fleet.down_hosts.add("h3")
    fleet.hooks["rollback h2,h3 -> 1.0"] = lambda: fleet.down_hosts.discard("h3")


def h3_fails_its_soak(fleet: FakeFleet) -> None:
    """h3 serves another version right after batch 2's enable: HAProxy says UP, the soak's
    version-aware probe fails, the batch is rolled back after the enable."""
    fleet.hooks["restore h2,h3"] = lambda: fleet.versions.__setitem__("h3", "9.9")


def h3_fails_and_its_rollback_too(fleet: FakeFleet) -> None:
    """As above, and the rollback playbook fails on h3: it is left out (MAINT), stranded."""
    h3_fails_its_verify_probe(fleet)
    fleet.fail_rollback.add("h3")


def h1_fails_its_verify_probe(fleet: FakeFleet) -> None:
    """Batch 1 fails: batch 2 is never started."""
    fleet.hooks["upgrade h1 -> 2.0"] = lambda: fleet.down_hosts.add("h1")
    fleet.hooks["rollback h1 -> 1.0"] = lambda: fleet.down_hosts.discard("h1")


@pytest.fixture(scope="module")
def verify_failed() -> tuple[FakeFleet, DeployResult, list[ev.Event]]:
    return engine_run(h3_fails_its_verify_probe)


def rel(e: ev.Event, events: Sequence[ev.Event]) -> float:
    return round(e.ts - events[0].ts, 3)


def only(events: Sequence[ev.Event], cls: type[E], batch: int | None = None,
         **match: Any) -> E:
    """The one event of ``cls`` (of ``batch``, with fields equal to ``match``)."""
    found = [e for e in events if isinstance(e, cls)
             and (batch is None or getattr(e, "batch", None) == batch)
             and all(getattr(e, k) == v for k, v in match.items())]
    assert len(found) == 1, (cls, batch, match, found)
    return found[0]


def out_per_journal(events: Sequence[ev.Event], host: str) -> float:
    """Seconds ``host`` was out of rotation, from the journal alone: from each DrainStarted
    naming its server (or the RollbackStarted of its batch after its enable: the undo drains
    it again) to the ServersEnabled naming it or the RollbackFinished of that batch that does
    not strand it (an open interval lasts until the journal's last event)."""
    total, since, batch = 0.0, None, None
    for e in events:
        if isinstance(e, ev.DrainStarted) and host in e.servers:
            since, batch = e.ts, e.batch
        elif (since is None and isinstance(e, ev.RollbackStarted) and e.batch == batch
              and host in e.hosts):
            since = e.ts
        elif since is not None and (
                (isinstance(e, ev.ServersEnabled) and host in e.servers)
                or (isinstance(e, ev.RollbackFinished) and e.batch == batch
                    and host not in e.stranded)):
            total, since = total + e.ts - since, None
    if since is not None:
        total += events[-1].ts - since
    return round(total, 3)


def contiguous(spans: Sequence[Span], start: float, end: float) -> bool:
    return (bool(spans) and spans[0].start == start and spans[-1].end == end
            and all(a.end == b.start for a, b in itertools.pairwise(spans))
            and all(a.state != b.state for a, b in itertools.pairwise(spans)))


@pytest.mark.parametrize(("hooks", "status", "hosts"), [
    pytest.param(h3_fails_its_verify_probe, "rolled_back", {
        "h1": (1, "upgraded", "1.0", "2.0", "done", "READY 1"),
        "h2": (2, "rolled_back", "1.0", "1.0", "rolled back", "READY 1"),
        "h3": (2, "rolled_back", "1.0", "1.0", "rolled back", "READY 1")},
        id="batch-2-rolled-back"),
    pytest.param(h3_fails_and_its_rollback_too, "failed", {
        "h1": (1, "upgraded", "1.0", "2.0", "done", "READY 1"),
        "h2": (2, "rolled_back", "1.0", "1.0", "rolled back", "READY 1"),
        "h3": (2, "stranded", "1.0", "2.0", "STRANDED (MAINT)", "MAINT")},
        id="h3-stranded"),
    pytest.param(h1_fails_its_verify_probe, "rolled_back", {
        "h1": (1, "rolled_back", "1.0", "1.0", "rolled back", "READY 1"),
        "h2": (2, "untouched", "1.0", "1.0", "waiting", None),
        "h3": (2, "untouched", "1.0", "1.0", "waiting", None)},
        id="batch-1-rolled-back"),
])
def test_every_host_with_its_versions_outcome_and_time_out(
        hooks: Callable[[FakeFleet], None], status: str,
        hosts: dict[str, tuple[int, str, str, str, str, str | None]]) -> None:
    fleet, result, events = engine_run(hooks)
    assert result.status == status and result.failure == "probe_failed"
    report = build(events, {"deploy_id": "x"}, timelines=host_timelines(events))
    assert (report.status, report.exit_code, report.version) == (status, result.exit_code,
                                                                 "2.0")
    assert report.deploy_id == events[0].deploy_id
    assert report.cause == only(events, ev.DeployFinished).cause
    assert report.finished == events[-1].ts and report.started == events[0].ts
    rows = {h.host: h for h in report.hosts}
    assert {h: (r.batch, r.outcome, r.before, r.after, r.states[-1].state)
            for h, r in rows.items()} == {h: row[:5] for h, row in hosts.items()}
    assert {h: r.after for h, r in rows.items()} == fleet.versions  # what the fleet serves
    assert report.versions_before == ["1.0"]
    for host, row in rows.items():
        cell = hosts[host][5]
        assert [per.get(host, [Span("-", 0, 0)])[-1].state for per in report.lbs.values()] \
            == [cell or "-"] * 2
        # out of rotation: what the journal says, and what rollout_py.timeline says
        assert row.out_of_rotation == out_per_journal(events, host), host
        if cell == "READY 1":  # (the timeline of a stranded host ends at RollbackFinished)
            assert sum(s["segments"]["total"] for s in row.segments) == row.out_of_rotation
        elif cell == "MAINT":  # stranded: out until the journal's end
            assert row.out_of_rotation == rel(events[-1], events) - rel(
                only(events, ev.DrainStarted, row.batch), events)
        else:
            assert row.out_of_rotation == 0.0 and row.segments == []


def test_time_out_of_rotation_per_host_is_what_the_journal_says(
        verify_failed: tuple[FakeFleet, DeployResult, list[ev.Event]]) -> None:
    _, _, events = verify_failed
    report = build(events, {}, timelines=host_timelines(events))
    for row in report.hosts:
        expected = out_per_journal(events, row.host)
        assert expected > 0
        assert row.out_of_rotation == expected, row.host
        # the same time as rollout_py.timeline's segments of the host's batch attempts
        assert sum(s["segments"]["total"] for s in row.segments) == expected
        assert [s["batch"] for s in row.segments] == [row.batch]


def test_each_lb_cell_is_drain_then_maint_then_as_recorded_again(
        verify_failed: tuple[FakeFleet, DeployResult, list[ev.Event]]) -> None:
    _, _, events = verify_failed
    report = build(events, {})
    assert set(report.lbs) == {LB1, LB2}
    for lb, per in report.lbs.items():
        assert set(per) == set(HOSTS)
        for host, spans in per.items():
            batch = 1 if host == "h1" else 2
            drained = rel(only(events, ev.DrainStarted, batch), events)
            disabled = rel(only(events, ev.ServersDisabled, batch), events)
            back = rel(only(events, ev.ServersEnabled if batch == 1 else ev.RollbackFinished,
                            batch), events)
            assert contiguous(spans, 0.0, report.duration), (lb, host, spans)
            assert [(s.state, s.start, s.end) for s in spans] == [
                ("READY 1", 0.0, drained), ("DRAIN", drained, disabled),
                ("MAINT", disabled, back), ("READY 1", back, report.duration)], (lb, host)
    # weights as recorded, never set: no chart to draw
    assert report.weights_changed is False
    assert report.weights[LB1]["h2"] == [(rel(only(events, ev.StateRecorded, 2), events), 1)]


def test_batches_start_end_and_their_steps(
        verify_failed: tuple[FakeFleet, DeployResult, list[ev.Event]]) -> None:
    _, _, events = verify_failed
    report = build(events, {})
    ends = {1: only(events, ev.BatchSucceeded, 1), 2: only(events, ev.RollbackFinished, 2)}
    assert [(b.batch, b.hosts, b.outcome) for b in report.batches] == [
        (1, ["h1"], "succeeded"), (2, ["h2", "h3"], "rolled_back")]
    for b in report.batches:
        start, end = rel(only(events, ev.BatchStarted, b.batch), events), rel(ends[b.batch],
                                                                             events)
        assert (b.start, b.end, b.duration) == (start, end, end - start)
        steps = {s.name: s for s in b.steps}

        def pair(first: type[ev.Event], then: type[ev.Event], batch: int = b.batch,
                 **match: Any) -> tuple[float, float]:
            return (rel(only(events, first, batch, **match), events),
                    rel(only(events, then, batch, **match), events))

        assert (steps["drain"].start, steps["drain"].end) == pair(ev.DrainStarted,
                                                                  ev.ServersDrained)
        assert (steps["MAINT"].start, steps["MAINT"].end) == pair(ev.ServersDrained,
                                                                  ev.ServersDisabled)
        assert (steps["ansible upgrade"].start, steps["ansible upgrade"].end) == pair(
            ev.StepStarted, ev.StepFinished, step="upgrade")
        for s in b.steps:
            assert s.duration == round(s.end - s.start, 3) and start <= s.start <= s.end <= end
        assert [s.start for s in b.steps] == sorted(s.start for s in b.steps)
    first, second = ({s.name: s for s in b.steps} for b in report.batches)
    assert "enable" in first and "rollback" not in first
    assert all(s.ok for s in first.values())
    assert "enable" not in second and second["verify probes"].ok is False
    assert (second["rollback"].start, second["rollback"].end) == (
        rel(only(events, ev.RollbackStarted, 2), events),
        rel(only(events, ev.RollbackFinished, 2), events))
    assert (second["ansible rollback"].start, second["ansible rollback"].end) == (
        rel(only(events, ev.StepStarted, 2, step="rollback"), events),
        rel(only(events, ev.StepFinished, 2, step="rollback"), events))
    # the verify probes: from the upgrade's end to the last verify probe of the batch
    probes = [rel(e, events) for e in events if isinstance(e, ev.ProbePassed | ev.ProbeFailed)
              and e.batch == 1 and e.phase == "verify"]
    upgraded = rel(only(events, ev.StepFinished, 1, step="upgrade"), events)
    enabled = rel(only(events, ev.ServersEnabled, 1), events)
    assert (first["verify probes"].start, first["verify probes"].end) == (upgraded, probes[-1])
    assert (first["enable"].start, first["enable"].end) == (probes[-1], enabled)


def test_the_rollback_with_its_cause_failure_class_hosts_and_path(
        verify_failed: tuple[FakeFleet, DeployResult, list[ev.Event]]) -> None:
    _, _, events = verify_failed
    report = build(events, {})
    failed = only(events, ev.BatchFailed, 2)
    started, finished = only(events, ev.RollbackStarted, 2), only(events, ev.RollbackFinished, 2)
    assert len(report.rollbacks) == 1
    rb = report.rollbacks[0]
    assert (rb.batch, rb.cause, rb.failure, rb.hosts) == (2, started.cause, "probe_failed",
                                                         ["h2", "h3"])
    assert "h3" in rb.cause and rb.cause == failed.cause
    assert (rb.start, rb.end, rb.ok, rb.stranded) == (rel(started, events),
                                                      rel(finished, events), True, [])
    between = events[events.index(started):events.index(finished) + 1]
    assert [(p.at, p.kind, p.line) for p in rb.path] == [
        (rel(e, events), e.kind, console_line(e)) for e in between
        if console_line(e) is not None]
    assert rb.path[0].kind == "rollback_started" and rb.path[-1].kind == "rollback_finished"
    assert "step_started" in [p.kind for p in rb.path]


def test_every_event_is_a_console_line_at_its_time(
        verify_failed: tuple[FakeFleet, DeployResult, list[ev.Event]]) -> None:
    _, _, events = verify_failed
    report = build(events, {"user": "ann", "host": "ctl", "pid": 7, "spec_file": "s.yml",
                            "strategy": "rolling", "ignored": 1})
    assert [(line.at, line.kind, line.batch, line.line) for line in report.events] == [
        (rel(e, events), e.kind, getattr(e, "batch", None), console_line(e)) for e in events
        if console_line(e) is not None]
    assert report.who == {"user": "ann", "host": "ctl", "pid": 7}
    assert report.what == {"spec_file": "s.yml", "inventory": None, "limit": None,
                           "strategy": "rolling"}
    assert report.windows == [] and report.analyses == [] and report.watch is None


def test_a_rollback_after_the_enable_counts_the_time_out_again() -> None:
    """The undo of an enabled batch drains it again (rollout_py.undo), journaled by no
    DrainStarted: out again from RollbackStarted to RollbackFinished."""
    fleet, result, events = engine_run(h3_fails_its_soak, soak=0.02)
    assert result.status == "rolled_back"
    assert fleet.log[-4:] == ["drain h2,h3", "maint h2,h3", "rollback h2,h3 -> 1.0",
                              "restore h2,h3"]  # out of rotation again for the rollback
    report = build(events, {}, timelines=host_timelines(events))
    drained, enabled = (rel(only(events, cls, 2), events)
                        for cls in (ev.DrainStarted, ev.ServersEnabled))
    again, back = (rel(only(events, cls, 2), events)
                   for cls in (ev.RollbackStarted, ev.RollbackFinished))
    for row in report.hosts[1:]:
        expected = round(enabled - drained + back - again, 3)
        assert out_per_journal(events, row.host) == expected
        assert sum(s["segments"]["total"] for s in row.segments) == expected  # timeline's
        assert row.out_of_rotation == expected, row.host
        for per in report.lbs.values():
            assert [(s.state, s.start, s.end) for s in per[row.host]][-4:] == [
                ("MAINT", rel(only(events, ev.ServersDisabled, 2), events), enabled),
                ("READY 1", enabled, again), ("DRAIN", again, back),
                ("READY 1", back, report.duration)]


# ---- a canary's weights and analysis windows (hand-built) -----------------------------------

_seq = itertools.count(1)


def at(cls: type[E], t: float, **kw: Any) -> E:
    return cls(deploy_id="c1", seq=next(_seq), ts=T0 + t, **kw)


GROUPS: dict[str, dict[str, Any]] = {
    "canary": {"requests": 480, "errors": 1, "error_rate": 0.002083, "p95_ms": 12.5},
    "baseline": {"requests": 1520, "errors": 2, "error_rate": 0.001316, "p95_ms": 11.0}}
GATES: tuple[dict[str, Any], ...] = (
    {"gate": "error_rate max 1%", "verdict": "pass", "value": 0.002083, "threshold": 0.01,
     "detail": ""},
    {"gate": "error_rate max_over_baseline 0.5%", "verdict": "pass", "value": 0.000767,
     "threshold": 0.005, "detail": "over the baseline"})
W = {"web1": 1, "web2": 1, "web3": 1}


def canary_journal(verdict: str = "pass") -> list[ev.Event]:
    """web1 is the canary (out 2 -> 9); web3 is at weight 0 on LB1 from 12 to 18, then on LB2
    from 18 to 20 (out 12 -> 20 on at least one LB); two windows, then the analysis ends."""
    rec = {LB1: {"web1": ["READY", 1]}, LB2: {"web1": ["READY", 1]}}
    window = dict(batch=1, step=2, purpose="canary", canary=("web1",),
                  baseline=("web2", "web3"), reason="", deltas={}, raw={})
    return [
        at(ev.DeployStarted, 0.0, name="web", version="2.0",
           batches=(("web1",), ("web2", "web3")), skipped={}),
        at(ev.BatchStarted, 1.0, batch=1, hosts=("web1",)),
        at(ev.StateRecorded, 2.0, batch=1, servers=("web1",), recorded=rec),
        at(ev.DrainStarted, 2.0, batch=1, servers=("web1",), recorded=rec),
        at(ev.ServersDrained, 3.0, batch=1, servers=("web1",)),
        at(ev.ServersDisabled, 3.5, batch=1, servers=("web1",)),
        at(ev.StepStarted, 4.0, batch=1, step="upgrade", hosts=("web1",)),
        at(ev.StepFinished, 8.0, batch=1, step="upgrade", ok=True, hosts={"web1": "ok"},
           versions={"web1": "1.0"}, duration=4.0),
        at(ev.ProbePassed, 8.5, batch=1, host="web1", phase="verify"),
        at(ev.ServersEnabled, 9.0, batch=1, servers=("web1",)),
        at(ev.WeightsRecorded, 10.0, weights={LB1: W, LB2: W}),
        at(ev.WeightsSet, 12.0, step=1, share=0.25, achieved={LB1: 0.25, LB2: 0.2},
           weights={LB1: {"web1": 1, "web2": 3, "web3": 0}, LB2: {"web1": 1, "web2": 2,
                                                                  "web3": 2}}),
        at(ev.AnalysisWindow, 14.0, window=1, verdict="pass", gates=GATES, groups=GROUPS,
           **window),
        at(ev.AnalysisWindow, 16.0, window=2, verdict="inconclusive", gates=(),
           groups={"canary": {"requests": 3}, "baseline": {"requests": 9}}, **window),
        at(ev.AnalysisFinished, 16.5, batch=1, step=2, purpose="canary", verdict=verdict,
           cause=f"analysis {verdict}", hosts=("web1",) if verdict == "fail" else ()),
        at(ev.WeightsSet, 18.0, step=3, share=0.5, achieved={LB1: 0.5, LB2: 0.5},
           weights={LB1: {"web1": 3, "web2": 3, "web3": 3}, LB2: {"web1": 3, "web2": 3,
                                                                  "web3": 0}}),
        at(ev.WeightsRestored, 20.0, weights={LB1: W, LB2: W}, step=4),
        at(ev.BatchSucceeded, 20.5, batch=1, durations={}),
        at(ev.DeployFinished, 21.0, status="stopped", exit_code=5, cause="stopped",
           stranded=(), resumable=True),
    ]


def test_windows_carry_their_numbers_and_gates_unchanged() -> None:
    journal = canary_journal()
    report = build(journal, {})
    windows = [e for e in journal if isinstance(e, ev.AnalysisWindow)]
    assert [(w["at"], w["batch"], w["step"], w["purpose"], w["window"], w["verdict"])
            for w in report.windows] == [(14.0, 1, 2, "canary", 1, "pass"),
                                         (16.0, 1, 2, "canary", 2, "inconclusive")]
    assert [w["groups"] for w in report.windows] == [e.groups for e in windows]
    assert report.windows[0]["groups"] == GROUPS and report.windows[0]["gates"] == list(GATES)
    assert report.windows[0]["canary"] == ["web1"]
    assert report.windows[0]["baseline"] == ["web2", "web3"]
    assert report.analyses == [{"at": 16.5, "batch": 1, "step": 2, "purpose": "canary",
                                "verdict": "pass", "cause": "analysis pass", "hosts": []}]


@pytest.mark.parametrize(("verdict", "ok"), [("pass", True), ("promoted", True),
                                             ("fail", False), ("aborted", False)])
def test_the_analysis_step_ends_with_its_verdict(verdict: str, ok: bool) -> None:
    report = build(canary_journal(verdict), {})
    steps = {s.name: s for s in report.batches[0].steps}
    step = steps["analysis step 2 (canary)"]
    # From the traffic step the windows judge (WeightsSet at 12.0, an event of no batch).
    assert (step.start, step.end, step.ok) == (12.0, 16.5, ok)
    assert step.duration == step.end - step.start
    assert report.analyses[0]["verdict"] == verdict


def test_weights_per_lb_and_server_over_time() -> None:
    report = build(canary_journal(), {})
    assert report.weights_changed is True
    assert report.weights[LB1] == {"web1": [(2.0, 1), (18.0, 3), (20.0, 1)],
                                   "web2": [(10.0, 1), (12.0, 3), (20.0, 1)],
                                   "web3": [(10.0, 1), (12.0, 0), (18.0, 3), (20.0, 1)]}
    assert report.weights[LB2]["web3"] == [(10.0, 1), (12.0, 2), (18.0, 0), (20.0, 1)]
    assert [(s.state, s.start, s.end) for s in report.lbs[LB1]["web3"]] == [
        ("READY 1", 10.0, 12.0), ("READY 0", 12.0, 18.0), ("READY 3", 18.0, 20.0),
        ("READY 1", 20.0, 21.0)]


@pytest.mark.parametrize(("host", "out"), [
    ("web1", 7.0),  # DrainStarted 2 -> ServersEnabled 9; its weights never 0
    ("web2", 0.0),  # weights set, never 0
    ("web3", 8.0),  # weight 0 on LB1 12 -> 18, on LB2 18 -> 20: out on at least one LB
])
def test_a_host_at_weight_0_on_any_lb_is_out_of_rotation(host: str, out: float) -> None:
    report = build(canary_journal(), {})
    assert {r.host: r.out_of_rotation for r in report.hosts}[host] == out


@pytest.mark.parametrize(("cell", "out"), [
    ("DRAIN", True), ("MAINT", True), ("DRAIN 3", True), ("READY 0", True), ("READY 1", False),
    ("READY 10", False), ("READY", False)])
def test_which_cells_take_a_server_out(cell: str, out: bool) -> None:
    assert takes_out(cell) is out


# ---- a journal cut mid-batch --------------------------------------------------------------

def cut_after(events: Sequence[ev.Event], cls: type[ev.Event], batch: int = 2,
              **match: Any) -> list[ev.Event]:
    return list(events[:events.index(only(events, cls, batch, **match)) + 1])


@pytest.mark.parametrize(("cls", "match", "cell", "state"), [
    (ev.DrainStarted, {}, "DRAIN", "draining"),
    (ev.ServersDisabled, {}, "MAINT", "out (MAINT)"),
    (ev.StepStarted, {"step": "upgrade"}, "MAINT", "upgrading"),
    (ev.StepFinished, {"step": "rollback"}, "MAINT", "rolling back"),
])
def test_a_journal_cut_mid_batch_is_interrupted_and_ends_at_its_last_event(
        verify_failed: tuple[FakeFleet, DeployResult, list[ev.Event]],
        cls: type[ev.Event], match: dict[str, Any], cell: str, state: str) -> None:
    _, _, events = verify_failed
    cut = cut_after(events, cls, **match)
    report = build(cut, {})
    end = rel(cut[-1], cut)
    assert (report.status, report.exit_code, report.cause, report.finished) == (
        "interrupted", None, None, None)
    assert report.duration == end and "journal ends before" in report.fleet_state
    for row in report.hosts:
        assert contiguous(row.states, 0.0, end), row
    for per in report.lbs.values():
        for spans in per.values():
            assert contiguous(spans, 0.0, end)
        assert per["h2"][-1].state == per["h3"][-1].state == cell
    rows = {r.host: r for r in report.hosts}
    assert rows["h2"].states[-1].state == state
    assert rows["h2"].out_of_rotation == out_per_journal(cut, "h2")
    assert rows["h1"].out_of_rotation == out_per_journal(events, "h1")
    second = report.batches[1]
    assert second.start == rel(only(cut, ev.BatchStarted, 2), cut)
    assert (second.end, second.duration) == (None, None)


def test_a_rollback_cut_before_it_finished_has_no_end(
        verify_failed: tuple[FakeFleet, DeployResult, list[ev.Event]]) -> None:
    _, _, events = verify_failed
    cut = cut_after(events, ev.StepFinished, step="rollback")
    rb = build(cut, {}).rollbacks[0]
    assert (rb.end, rb.ok, rb.stranded, rb.detail) == (None, None, [], "")
    assert rb.path[-1].kind == "step_finished"


def test_a_journal_with_no_events_is_an_error_naming_the_deploy() -> None:
    with pytest.raises(InputError, match="deploy d9 has no events"):
        build([], {"deploy_id": "d9"})


def test_a_rollback_taken_over_by_a_resume_is_two_rollbacks() -> None:
    journal = [
        at(ev.DeployStarted, 0.0, name="w", version="2.0", batches=(("a",),), skipped={}),
        at(ev.BatchStarted, 1.0, batch=1, hosts=("a",)),
        at(ev.DrainStarted, 2.0, batch=1, servers=("a",), recorded={LB1: {"a": ["READY", 1]}}),
        at(ev.ServersDisabled, 3.0, batch=1, servers=("a",)),
        at(ev.StepStarted, 4.0, batch=1, step="upgrade", hosts=("a",)),
        at(ev.StepFinished, 5.0, batch=1, step="upgrade", ok=False, hosts={"a": "failed: x"},
           versions={"a": "1.0"}, duration=1.0),
        at(ev.BatchFailed, 6.0, batch=1, failure="task_failed", cause="x", hosts=("a",)),
        at(ev.RollbackStarted, 7.0, batch=1, hosts=("a",), cause="x"),
        at(ev.StepStarted, 8.0, batch=1, step="rollback", hosts=("a",)),
        # the controller dies here; `rollout resume` undoes the batch
        at(ev.DeployResumed, 20.0, batch=1, action="undo", detail="controller died"),
        at(ev.RollbackStarted, 21.0, batch=1, hosts=("a",), cause="resume"),
        at(ev.RollbackFinished, 25.0, batch=1, ok=True, stranded=()),
        at(ev.DeployFinished, 26.0, status="rolled_back", exit_code=1, cause="x", stranded=()),
    ]
    first, second = build(journal, {}).rollbacks
    assert (second.start, second.end, second.ok) == (21.0, 25.0, True)
    assert (first.start, first.end, first.ok) == (7.0, None, None)
    assert [p.kind for p in first.path] == ["rollback_started", "step_started",
                                            "deploy_resumed"]


# ---- a lab watch's samples ----------------------------------------------------------------

def sample(ts: float, lb: str = "lb1", error: str | None = None,
           **servers: tuple[str, str, int]) -> dict[str, Any]:
    return {"lb": lb, "ts": T0 + ts, "rtt": 0.001, "error": error,
            "servers": {name: {"admin": a, "op": op, "weight": w, "in_rotation": a == "READY",
                               "scur": 0} for name, (a, op, w) in servers.items()}}


READY, DRAIN, MAINT = ("READY", "UP", 1), ("DRAIN", "UP", 1), ("MAINT", "DOWN", 1)


@pytest.mark.parametrize(("samples", "spans", "errors"), [
    pytest.param([sample(1.0, app01=READY), sample(4.0, app01=DRAIN),
                  sample(6.0, app01=MAINT)],
                 {"lb1": {"app01": [("READY/UP weight 1", 1.0, 4.0),
                                    ("DRAIN/UP weight 1", 4.0, 6.0),
                                    ("MAINT/DOWN weight 1", 6.0, 10.0)]}}, 0,
                 id="changes-become-spans"),
    pytest.param([sample(-9.0, app01=MAINT), sample(-3.0, app01=DRAIN),
                  sample(-1.0, app01=READY), sample(5.0, app01=MAINT)],
                 {"lb1": {"app01": [("READY/UP weight 1", 0.0, 5.0),
                                    ("MAINT/DOWN weight 1", 5.0, 10.0)]}}, 0,
                 id="before-the-deploy-the-latest-holds-at-0"),
    pytest.param([sample(2.0, app01=READY), sample(3.0, error="timeout"),
                  sample(4.0, error="connection refused"), sample(5.0, app01=READY),
                  sample(12.0, app01=MAINT)],
                 {"lb1": {"app01": [("READY/UP weight 1", 2.0, 10.0)]}}, 2,
                 id="errors-counted-and-after-the-end-left-out"),
    pytest.param([sample(6.0, lb="lb2", app01=DRAIN), sample(2.0, lb="lb2", app01=READY),
                  sample(2.0, app01=READY, app02=READY), sample(7.0, app02=("ABSENT", "-", 0))],
                 {"lb1": {"app01": [("READY/UP weight 1", 2.0, 10.0)],
                          "app02": [("READY/UP weight 1", 2.0, 7.0), ("ABSENT", 7.0, 10.0)]},
                  "lb2": {"app01": [("READY/UP weight 1", 2.0, 6.0),
                                    ("DRAIN/UP weight 1", 6.0, 10.0)]}}, 0,
                 id="per-lb-in-time-order-absent"),
    pytest.param([sample(-2.0, error="timeout"), sample(1.0, app01=READY),
                  sample(3.0, error="timeout"), sample(11.0, error="timeout")],
                 {"lb1": {"app01": [("READY/UP weight 1", 1.0, 10.0)]}}, 1,
                 id="errors-outside-the-deploy-not-counted"),
])
def test_watch_spans(samples: list[dict[str, Any]],
                     spans: dict[str, dict[str, list[tuple[str, float, float]]]],
                     errors: int) -> None:
    got, n = watch_spans(samples, t0=T0, end=T0 + 10.0)
    assert {lb: {s: [(x.state, x.start, x.end) for x in seq] for s, seq in per.items()}
            for lb, per in got.items()} == spans
    assert n == errors


def test_watch_samples_go_into_the_report(
        verify_failed: tuple[FakeFleet, DeployResult, list[ev.Event]]) -> None:
    _, _, events = verify_failed
    t0, end = events[0].ts, events[-1].ts
    samples = [sample(t0 - T0 - 1.0, h2=READY), sample(t0 - T0 + 1.0, error="timeout"),
               sample(end - T0 - 2.0, h2=MAINT)]
    report = build(events, {}, watch=samples)
    duration = round(end - t0, 3)
    assert report.watch == {"lb1": {"h2": [Span("READY/UP weight 1", 0.0, duration - 2.0),
                                           Span("MAINT/DOWN weight 1", duration - 2.0,
                                                duration)]}}
    assert report.watch_errors == 1


def test_read_watch_reads_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "watch.jsonl"
    lines = [sample(1.0, app01=READY), sample(2.0, error="timeout")]
    path.write_text(json.dumps(lines[0]) + "\n\n  \n" + json.dumps(lines[1]) + "\n")
    assert read_watch(path) == lines


@pytest.mark.parametrize(("line", "says"), [
    ('{"lb": "lb1", "ts": 1.0', "not JSON"),
    ("not json at all", "not JSON"),
    ('["lb", "ts"]', "needs 'lb' and 'ts'"),
    ('{"lb": "lb1"}', "needs 'lb' and 'ts'"),
    ('{"ts": 1.0, "servers": {}}', "needs 'lb' and 'ts'"),
])
def test_a_bad_watch_line_names_the_file_and_line(tmp_path: Path, line: str,
                                                  says: str) -> None:
    path = tmp_path / "watch.jsonl"
    good = json.dumps(sample(1.0, app01=READY))
    path.write_text(f"{good}\n\n{line}\n{good}\n")
    with pytest.raises(InputError) as info:
        read_watch(path)
    assert str(info.value).startswith(f"{path}:3: ") and says in str(info.value)


def test_a_missing_watch_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read the watch records"):
        read_watch(tmp_path / "nope.jsonl")


def test_record_report_reads_the_record_and_the_watch(tmp_path: Path) -> None:
    journal_events = canary_journal()
    record = StateDir(tmp_path / ".rollout").create(
        "c1", meta={"spec_file": "web.yml", "strategy": "canary"},
        spec={"health": {"consecutive": 2}}, plan={})
    journal = Journal(record.journal)
    for e in journal_events:
        journal(e)
    journal.close()
    watch = tmp_path / "watch.jsonl"
    watch.write_text(json.dumps(sample(3.0, web1=DRAIN)) + "\n")
    report = record_report(record, watch=watch)
    assert report == build(journal_events, record.meta(),
                           timelines=host_timelines(journal_events),
                           watch=[sample(3.0, web1=DRAIN)])
    assert report.deploy_id == "c1" and report.what["strategy"] == "canary"
    assert report.who["pid"] is not None and report.watch is not None
    assert [(r.host, r.segments[0]["segments"]["total"]) for r in report.hosts
            if r.segments] == [("web1", 7.0)]


# ---- the JSON form ------------------------------------------------------------------------

def _lists(value: Any) -> Any:
    """``value`` as JSON gives it back: tuples become lists."""
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def _reports() -> list[DeployReport]:
    _, _, events = engine_run(h3_fails_its_verify_probe)
    return [build(events, {"user": "ann"}, timelines=host_timelines(events)),
            build(cut_after(events, ev.ServersDisabled), {}),
            build(canary_journal("fail"), {}, watch=[sample(1.0, web1=READY),
                                                      sample(2.0, error="x")])]


def test_to_json_round_trips_through_json() -> None:
    for report in _reports():
        data = report.to_json()
        assert json.loads(json.dumps(data)) == _lists(data)
        assert data["schema"] == REPORT_SCHEMA == "rollout.report/1"
        assert data["hosts"][0]["states"][0] == {
            "state": report.hosts[0].states[0].state, "start": 0.0,
            "end": report.hosts[0].states[0].end}
        assert set(data["batches"][0]["steps"][0]) == {f.name for f in
                                                        dataclasses.fields(Step)}


def test_replay_and_out_of_rotation_agree_with_the_module_example() -> None:
    journal = [
        at(ev.DeployStarted, 0.0, name="f", version="2", batches=(("app1",),), skipped={}),
        at(ev.BatchStarted, 1.0, batch=1, hosts=("app1",)),
        at(ev.DrainStarted, 1.0, batch=1, servers=("app1",),
           recorded={"lb1": {"app1": ["READY", 1]}, "lb2": {"app1": ["READY", 0]}}),
        at(ev.ServersDisabled, 3.0, batch=1, servers=("app1",)),
        at(ev.ServersEnabled, 9.0, batch=1, servers=("app1",)),
    ]
    spans = replay(journal, t0=T0, end=T0 + 10.0)
    assert [(s.state, s.start, s.end) for s in spans.lbs["lb1"]["app1"]] == [
        ("READY 1", 0.0, 1.0), ("DRAIN", 1.0, 3.0), ("MAINT", 3.0, 9.0), ("READY 1", 9.0, 10.0)]
    # at weight 0 on lb2 before and after the deploy: out the whole time
    assert out_of_rotation(spans.lbs, "app1") == 10.0
    assert out_of_rotation({"lb1": spans.lbs["lb1"]}, "app1") == 8.0
