"""`rollout lab watch` on a 4-host blue/green lab with two LBs (lb2 over SSH): the live route
switched by hand on one LB, then the other, is recorded per LB with the window during which they
disagreed; the idle pool may be out of rotation under --max-unavailable 0; the CLI shows it."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rollout_py.balancer import RuntimeAPI
from rollout_py.balancer.maps import set_map
from rollout_py.lab import lab as lab_mod
from rollout_py.lab import pools
from rollout_py.lab.layout import Layout
from rollout_py.lab.watch import Sample, Watcher, WatchSummary
from tests.integration.conftest import LabFactory, rollout

BLUE, GREEN = "app_blue", "app_green"


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> Layout:
    return lab_factory(n_hosts=4, n_lbs=2, n_pools=2, name="watchpools")


@pytest.fixture
def apis(lab: Layout) -> Iterator[dict[str, RuntimeAPI]]:
    """One runtime API per LB; blue live and every server READY again after the test."""
    opened = {lb.name: lab_mod.lb_api(lab, lb) for lb in lab.lbs}
    yield opened
    try:
        for lb in lab.lbs:
            set_map(opened[lb.name], _map(lab, lb.name), pools.LIVE_KEY, BLUE)
            for pool in lab.pools:
                for host in pool.hosts:
                    opened[lb.name].set_state(pool.backend, host, "ready")
    finally:
        for api in opened.values():
            api.close()


def _map(lab: Layout, lb_name: str) -> str:
    [lb] = [lb for lb in lab.lbs if lb.name == lb_name]
    assert lb.map_path is not None
    return lb.map_path


def poll(watcher: Watcher, lb: str, check: Callable[[Sample], bool], after: float = 0.0,
         timeout: float = 10.0) -> Sample:
    """The first good sample of ``lb`` taken after ``after`` for which ``check`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        found = [s for s in watcher.samples()
                 if s.lb == lb and s.ok and s.ts > after and check(s)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"{lb}: no such sample after {after}"
        time.sleep(0.02)


def live(backend: str) -> Callable[[Sample], bool]:
    return lambda s: s.maps.get(pools.LIVE_KEY) == backend


def slack(summary: WatchSummary) -> tuple[float, float]:
    """(longest round trip, longest gap between two good samples of one LB)."""
    good = [s for s in summary.records if s.ok]
    gap = max(b.ts - a.ts for lb in summary.lbs
              for a, b in itertools.pairwise([s for s in good if s.lb == lb]))
    return max(s.rtt for s in good), gap


def test_watch_records_each_lbs_switch_and_the_window_they_disagreed(
        lab: Layout, apis: dict[str, RuntimeAPI]) -> None:
    marks: dict[str, float] = {}
    watcher = Watcher.for_lab(lab, max_unavailable=0).start()
    try:
        for lb in apis:
            poll(watcher, lb, live(BLUE))
        # The idle pool (green) all out of rotation: allowed, even with --max-unavailable 0.
        for api in apis.values():
            for host in ("app03", "app04"):
                api.set_state(GREEN, host, "drain")
        drained = time.time()
        for lb in apis:
            poll(watcher, lb, lambda s: not s.servers[f"{GREEN}/app04"].in_rotation, drained)
        for api in apis.values():
            for host in ("app03", "app04"):
                api.set_state(GREEN, host, "ready")
        readied = time.time()
        for lb in apis:
            poll(watcher, lb, lambda s: all(v.in_rotation for v in s.servers.values()), readied)

        marks["lb1"] = time.time()
        set_map(apis["lb1"], _map(lab, "lb1"), pools.LIVE_KEY, GREEN)
        marks["lb1_done"] = time.time()
        seen1 = poll(watcher, "lb1", live(GREEN), marks["lb1"] - 1)
        poll(watcher, "lb2", live(BLUE), seen1.ts)  # lb2 seen still on blue meanwhile
        marks["lb2"] = time.time()
        set_map(apis["lb2"], _map(lab, "lb2"), pools.LIVE_KEY, GREEN)
        marks["lb2_done"] = time.time()
        seen2 = poll(watcher, "lb2", live(GREEN), marks["lb2"] - 1)
        poll(watcher, "lb1", live(GREEN), seen2.ts)  # a moment where both are known green
    finally:
        summary = watcher.stop()
        for lb in apis:  # flip back
            set_map(apis[lb], _map(lab, lb), pools.LIVE_KEY, BLUE)
    rtt, gap = slack(summary)
    print(f"\nsamples {summary.samples}, rate {summary.rate_hz} Hz, max rtt {rtt * 1000:.1f} ms, "
          f"max gap {gap * 1000:.1f} ms; disagreement {summary.disagreements}; true between "
          f"{marks['lb2'] - marks['lb1_done']:.3f} and {marks['lb2_done'] - marks['lb1']:.3f} s")
    assert summary.backends == (BLUE, GREEN) and summary.errors == {"lb1": 0, "lb2": 0}
    assert set(summary.servers) == {f"{p.backend}/{h}" for p in lab.pools for h in p.hosts}

    # Each LB's live route changed once, blue to green, between the two samples around the
    # moment it was set.
    for lb in ("lb1", "lb2"):
        [change] = [c for c in summary.route_changes[lb] if c.key == pools.LIVE_KEY]
        assert (change.before, change.after) == (BLUE, GREEN)
        assert change.last_before - rtt / 2 <= marks[f"{lb}_done"]
        assert change.at + rtt / 2 >= marks[lb]
        assert change.at <= marks[f"{lb}_done"] + gap + rtt
        assert [(c.before, c.after) for c in summary.route_changes[lb]
                if c.key == pools.PREVIEW_KEY] == []  # preview untouched

    # One window of disagreement: lb1 on green, lb2 on blue. Its bounds hold the truth, which
    # lies between (lb2's set_map started - lb1's ended) and (lb2's ended - lb1's started).
    [window] = summary.disagreements
    assert window.routes == ("lb1 app_green", "lb2 app_blue") and not window.open
    assert window.min_seconds <= window.seconds <= window.max_seconds
    assert window.min_seconds <= marks["lb2_done"] - marks["lb1"]
    assert window.max_seconds >= marks["lb2"] - marks["lb1_done"]
    assert window.max_seconds - window.min_seconds <= 2 * (gap + rtt)

    # Capacity per backend: green all drained while idle broke nothing; both were live.
    assert summary.violations == ()
    assert summary.out_intervals[f"{GREEN}/app03"] != []  # recorded all the same
    assert summary.capacity[GREEN].live_seconds > 0 and summary.capacity[BLUE].live_seconds > 0
    assert summary.capacity[GREEN].max_out_while_live == 0
    for lb_spec in lab.lbs:  # flipped back
        assert pools.lb_status(lab, lb_spec, apis[lb_spec.name])["live"] == "blue"


def test_cli_watch_shows_routes_and_an_open_disagreement(
        lab: Layout, apis: dict[str, RuntimeAPI], tmp_path: Path) -> None:
    set_map(apis["lb2"], _map(lab, "lb2"), pools.LIVE_KEY, GREEN)
    records = tmp_path / "samples.jsonl"
    proc = rollout("lab", "watch", "--dir", lab.dir, "--duration", "1", "--json",
                   "--max-unavailable", "0", "--records", str(records), check=True)
    data = json.loads(proc.stdout)
    assert data["backends"] == [BLUE, GREEN] and data["violation_count"] == 0
    assert data["routes"]["lb1"]["last"] == {"live": BLUE, "preview": GREEN}
    assert data["routes"]["lb2"]["last"] == {"live": GREEN, "preview": GREEN}
    assert data["route_changes"] == {"lb1": [], "lb2": []}
    [window] = data["live_disagreement"]["windows"]
    assert window["open"] and window["routes"] == ["lb1 app_blue", "lb2 app_green"]
    assert data["live_disagreement"]["seconds"] > 0.5
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert {line["maps"]["live"] for line in lines if line["lb"] == "lb2" and not line["error"]
            } == {GREEN}

    proc = rollout("lab", "watch", "--dir", lab.dir, "--duration", "0.5", check=True)
    assert "(backend app_blue, app_green)" in proc.stderr
    assert "lb2: live app_green, preview app_green at the start, 0 change(s)" in proc.stdout
    assert "LBs disagreed on live: 1 window(s)" in proc.stdout
    assert "app_green: live" in proc.stdout
