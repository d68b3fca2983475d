"""`rollout lab watch` on a 4-host lab with two LBs (lb2 over SSH): capacity violations recorded
while two servers are out by hand, error samples while lb1's socket is gone, the CLI."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from rollout_py.balancer import RuntimeAPI
from rollout_py.balancer.runtime import SetState
from rollout_py.lab import lab as lab_mod
from rollout_py.lab.layout import Layout
from rollout_py.lab.watch import Sample, Watcher, WatchSummary
from tests.integration.conftest import LabFactory, rollout

PHASE = 0.8  # seconds per phase: several samples of every LB at 10 Hz


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> Layout:
    return lab_factory(n_hosts=4, n_lbs=2, name="watch")


@pytest.fixture
def apis(lab: Layout) -> Iterator[list[RuntimeAPI]]:
    """One runtime API per LB; every server is READY again after the test."""
    opened = [lab_mod.lb_api(lab, lb) for lb in lab.lbs]
    yield opened
    try:
        for api in opened:
            for host in lab.app_hosts:
                api.set_state("app", host.name, "ready")
    finally:
        for api in opened:
            api.close()


def set_everywhere(apis: Sequence[RuntimeAPI], server: str, state: SetState) -> None:
    for api in apis:
        api.set_state("app", server, state)


def good(summary: WatchSummary, lb: str) -> list[Sample]:
    return [s for s in summary.records if s.lb == lb and s.ok]


def slack(summary: WatchSummary) -> tuple[float, float]:
    """(longest round trip, longest gap between two good samples of one LB): how far a merged
    moment can lag behind the truth."""
    rtt = max(s.rtt for s in summary.records)
    gap = max(b.ts - a.ts for lb in summary.lbs for a, b in itertools.pairwise(good(summary, lb)))
    return rtt, gap


def test_violation_window_exactly_while_two_servers_are_out(
        lab: Layout, apis: list[RuntimeAPI]) -> None:
    marks: dict[str, float] = {}
    watcher = Watcher.for_lab(lab, max_unavailable=1).start()
    try:
        time.sleep(PHASE)
        marks["drain01"] = time.time()
        set_everywhere(apis, "app01", "drain")
        marks["drain01_done"] = time.time()
        time.sleep(PHASE)
        marks["drain02"] = time.time()
        set_everywhere(apis, "app02", "drain")
        marks["drain02_done"] = time.time()
        time.sleep(PHASE)
        marks["ready01"] = time.time()
        set_everywhere(apis, "app01", "ready")
        marks["ready01_done"] = time.time()
        time.sleep(PHASE)
        marks["ready02"] = time.time()
        set_everywhere(apis, "app02", "ready")
        marks["ready02_done"] = time.time()
        time.sleep(PHASE)
    finally:
        summary = watcher.stop()
    print(f"\nsamples {summary.samples}, rate {summary.rate_hz} Hz, errors {summary.errors}, "
          f"max rtt per LB " + ", ".join(
              f"{lb} {max(s.rtt for s in good(summary, lb)) * 1000:.1f} ms" for lb in summary.lbs))

    # Both LBs were sampled, each in its own increasing time order, without errors.
    assert summary.lbs == ("lb1", "lb2")
    for lb in summary.lbs:
        samples = [s for s in summary.records if s.lb == lb]
        assert len(samples) >= 5, (lb, summary.samples)
        assert all(a.ts < b.ts for a, b in itertools.pairwise(samples))
        assert summary.errors[lb] == 0, [s.error for s in samples if s.error]
        assert set(samples[-1].servers) == {h.name for h in lab.app_hosts}

    rtt, gap = slack(summary)
    both = ("app01", "app02")
    # One violation window, with exactly app01 and app02 out, and only while both were out.
    windows = summary.violation_windows()
    assert len(windows) == 1, windows
    [window] = windows
    assert window.out_of_rotation == both and window.max_out == 2 and window.limit == 1
    assert summary.violations and all(v.out_of_rotation == both for v in summary.violations)
    assert all(marks["drain02"] - rtt / 2 <= v.ts <= marks["ready01_done"] + rtt / 2 + gap
               for v in summary.violations), (marks, summary.violations, rtt, gap)
    # ... seen as soon as the next samples could, and gone once app01 was back on both LBs.
    assert window.start <= marks["drain02_done"] + gap + rtt
    assert marks["ready01"] - rtt / 2 <= window.end <= marks["ready01_done"] + gap + rtt

    def just_before(mark: str) -> float:  # the end of a phase: every LB has been seen in it
        return marks[mark] - 0.005

    assert summary.out_of_rotation_at(just_before("drain01")) == set()
    assert summary.out_of_rotation_at(just_before("drain02")) == {"app01"}
    assert summary.out_of_rotation_at(just_before("ready01")) == set(both)
    assert summary.out_of_rotation_at(just_before("ready02")) == {"app02"}
    assert summary.out_of_rotation_at(summary.stopped) == set()
    assert summary.max_out_of_rotation == 2 and summary.min_in_rotation == 2

    # Time out of rotation: app01 from its drain on the first LB to its ready on the last (the
    # intervals split where the LBs disagreed), in DRAIN on both LBs in between.
    out01 = summary.out_intervals["app01"]
    assert marks["drain01"] - rtt / 2 <= out01[0].start <= marks["drain01_done"] + gap + rtt
    assert marks["ready01"] - rtt / 2 <= out01[-1].end <= marks["ready01_done"] + gap + rtt
    assert all(a.end == b.start for a, b in itertools.pairwise(out01))
    [drained] = [i for i in out01 if i.state == "DRAIN/RUNNING"]
    assert drained.start <= marks["drain01_done"] + gap + rtt
    assert drained.end >= marks["ready01"] - rtt / 2
    assert summary.out_intervals["app03"] == [] and summary.out_intervals["app04"] == []
    assert summary.in_rotation_intervals("app03") == [(summary.timeline[0].ts, summary.stopped)]
    spans = summary.in_rotation_intervals("app01")
    assert len(spans) == 2 and spans[0][1] == out01[0].start and spans[1][0] == out01[-1].end


def test_sampling_goes_on_through_an_lb_socket_that_disappears(lab: Layout) -> None:
    socket_path = Path(lab.lbs[0].socket_path)
    moved = socket_path.with_name(socket_path.name + ".helper-moved")
    watcher = Watcher.for_lab(lab, max_unavailable=0).start()
    try:
        time.sleep(0.4)
        gone = time.time()
        socket_path.rename(moved)
        try:
            time.sleep(0.5)
        finally:
            moved.rename(socket_path)
            back = time.time()
        time.sleep(0.5)
    finally:
        summary = watcher.stop()
    lb1 = [s for s in summary.records if s.lb == "lb1"]
    errors = [s for s in lb1 if not s.ok]
    assert errors, summary.samples
    assert summary.errors["lb1"] == len(errors)
    assert all(gone - s.rtt <= s.ts <= back + s.rtt for s in errors)
    assert all("No such file" in (s.error or "") and s.servers == {} for s in errors)
    # lb1 answered before and after the outage; lb2 never stopped.
    assert any(s.ok and s.ts < gone for s in lb1) and any(s.ok and s.ts > back for s in lb1)
    lb2 = [s for s in summary.records if s.lb == "lb2"]
    assert summary.errors["lb2"] == 0 and any(gone < s.ts < back for s in lb2)
    assert summary.violations == ()  # an unreachable LB is an error, not a server out


def test_cli_watch_reports_and_exits_1_on_a_violation(
        lab: Layout, apis: list[RuntimeAPI], tmp_path: Path) -> None:
    proc = rollout("lab", "watch", "--dir", lab.dir, "--duration", "1", "--json",
                   "--max-unavailable", "1", check=True)
    data = json.loads(proc.stdout)
    assert set(data["samples"]) == {"lb1", "lb2"} and all(data["samples"].values())
    assert data["violation_count"] == 0 and data["max_out_of_rotation"] == 0
    print(f"\nCLI rates {data['rate_hz']} Hz")

    # app01 drained on lb2 only: out of rotation, which --max-unavailable 0 forbids.
    apis[1].set_state("app", "app01", "drain")
    records = tmp_path / "samples.jsonl"
    proc = rollout("lab", "watch", "--dir", lab.dir, "--duration", "0.8", "--max-unavailable",
                   "0", "--records", str(records))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 window(s)" in proc.stdout and "1 out > 0: app01" in proc.stdout
    assert "lb1 READY/RUNNING, lb2 DRAIN/RUNNING" in proc.stdout
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert {line["lb"] for line in lines} == {"lb1", "lb2"}
    assert {line["servers"]["app01"]["admin"] for line in lines if line["lb"] == "lb2"} == {
        "DRAIN"}


def test_cli_watch_refuses_a_dir_without_a_lab(tmp_path: Path) -> None:
    proc = rollout("lab", "watch", "--dir", str(tmp_path), "--duration", "0.5")
    assert proc.returncode != 0 and "no lab up" in proc.stderr
