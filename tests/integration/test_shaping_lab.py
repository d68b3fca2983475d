"""Traffic shaping during deploys on a real lab (``rollout lab up --shaping``): while a batch is
out of rotation under more load than the rest carry, production keeps its success and latency
and the heavy class is shed; the map entries are gone after a deploy, a rollback, and kill -9
followed by ``rollout resume``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from rollout_py.balancer.maps import show_map
from rollout_py.lab import artifact, shaping
from rollout_py.lab import lab as lab_mod
from rollout_py.lab.classload import ClassLoad, class_lines
from rollout_py.lab.layout import Layout
from rollout_py.lab.load import Record, Summary, _percentile
from rollout_py.state import StateDir
from tests.integration.conftest import LabFactory
from tests.integration.deploykit import (
    REPO,
    all_ready_and_up,
    json_result,
    rollout_cli,
    write_spec,
)

# Each request takes 100 ms and a server takes 4 at a time (lab.shaping.MAXCONN): 40/s per
# server, 160/s for 4, 80/s while a batch of 2 is out. 50 + 60 = 110/s fits 4, not 2.
LOAD_PATH = "/slow?seconds=0.1"
RATES = {"production": 50.0, "heavy": 60.0}


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> Layout:
    layout = lab_factory(n_hosts=4, n_lbs=1, name="shaping", with_shaping=True)
    for version in ("s1", "s2"):
        artifact.build_artifact(layout.artifacts, version)
    artifact.build_artifact(layout.artifacts, "s-bad", artifact.Behaviour(health_fail=True))
    return layout


@pytest.fixture(scope="module")
def spec(lab: Layout, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("shaping")
    return write_spec(lab, base / "rollout.yml", batches=[2], max_unavailable=2,
                      health={"deadline": 6})


def live_map(lab: Layout) -> dict[str, str]:
    api = lab_mod.lb_api(lab, lab.lbs[0])
    try:
        return show_map(api, shaping.map_path(lab))
    finally:
        api.close()


def kinds_of(events: Sequence[Any]) -> list[str]:
    return [e["event"] if isinstance(e, dict) else e.kind for e in events]


def assert_shaping_wraps_the_deploy(kinds: list[str]) -> None:
    """Set after the start and before the first drain; put back last, before the end."""
    assert "shaping_recorded" in kinds and "shaping_set" in kinds, kinds
    assert kinds.index("shaping_recorded") < kinds.index("shaping_set")
    if "drain_started" in kinds:
        assert kinds.index("shaping_set") < kinds.index("drain_started")
    assert kinds[-2:] == ["shaping_cleared", "deploy_finished"], kinds[-6:]


def figures(name: str, records: Sequence[Record]) -> str:
    lat = sorted(r.latency * 1000 for r in records)
    failed = sum(not r.ok for r in records)
    return (f"{name:<11} {len(records):5d} sent {len(records) - failed:5d} ok {failed:5d} failed"
            f"  p50 {_percentile(lat, 50):7.1f} ms  p99 {_percentile(lat, 99):7.1f} ms")


def test_production_keeps_success_and_latency_while_heavy_is_shed(lab: Layout,
                                                                   spec: Path) -> None:
    load = ClassLoad(f"http://127.0.0.1:{lab.lbs[0].port}{LOAD_PATH}", RATES,
                     duration=3600).start()
    try:
        proc = rollout_cli("deploy", "-f", str(spec), "--version", "s1", "--json")
    finally:
        summaries: dict[str, Summary] = load.stop()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if '"event"' in line]
    assert_shaping_wraps_the_deploy(kinds_of(events))
    # While a batch is out of rotation: from its drain until it is enabled again.
    starts = {e["batch"]: e["ts"] for e in events if e["event"] == "drain_started"}
    ends = {e["batch"]: e["ts"] for e in events if e["event"] == "servers_enabled"}
    windows = [(starts[b], ends[b]) for b in starts]
    set_at = next(e["ts"] for e in events if e["event"] == "shaping_set")
    cleared_at = next(e["ts"] for e in events if e["event"] == "shaping_cleared")

    def out(rec: Record) -> bool:
        return any(a <= rec.sent_at <= b for a, b in windows)

    prod, heavy = summaries["production"], summaries["heavy"]
    print("\nwhole deploy:\n  " + "\n  ".join(class_lines(summaries)))
    print("while a batch of 2 of 4 was out of rotation "
          f"({sum(b - a for a, b in windows):.1f} s in {len(windows)} windows):")
    for name, summary in summaries.items():
        print("  " + figures(name, [r for r in summary.records if out(r)]))
    shed = [r for r in heavy.records if r.status == 503]
    print(f"heavy shed (503): {len(shed)}, of which {sum(out(r) for r in shed)} while a batch "
          "was out")
    assert prod.failed == 0, prod.failures
    assert sum(out(r) for r in shed) > 0, "the heavy class was not shed while a batch was out"
    assert set(heavy.failures) <= {"http 503"}, heavy.failures
    # Shed only while the deploy held the entry (a small margin for requests in flight).
    assert all(set_at - 0.5 <= r.sent_at <= cleared_at + 0.5 for r in shed)
    assert live_map(lab) == {}
    assert all_ready_and_up(lab)


def test_the_entries_are_gone_after_a_rollback(lab: Layout, spec: Path) -> None:
    proc = rollout_cli("deploy", "-f", str(spec), "--version", "s-bad", "--json")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr
    assert json_result(proc)["status"] == "rolled_back"
    assert live_map(lab) == {}
    events = [json.loads(line) for line in proc.stdout.splitlines() if '"event"' in line]
    assert "rollback_started" in kinds_of(events)
    assert_shaping_wraps_the_deploy(kinds_of(events))


def test_the_entries_are_gone_after_kill_9_and_resume(lab: Layout, spec: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "rollout_py", "deploy", "-f", str(spec), "--version", "s2",
         "--json"], cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert child.stdout is not None
    seen = []
    for line in child.stdout:  # the journal's events, as they happen
        seen.append(json.loads(line).get("event"))
        if seen[-1] == "servers_disabled":
            child.send_signal(signal.SIGKILL)
            break
    child.wait(30)
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL, f"not killed: saw {seen}"
    assert live_map(lab) == shaping.SHED  # the dead controller left them set
    record = StateDir(spec.parent / ".rollout").get()
    assert not record.closed()

    proc = rollout_cli("resume", "-f", str(spec), "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert live_map(lab) == {}
    kinds = kinds_of(record.events())
    assert kinds.count("shaping_recorded") == 1  # the resume put back the dead one's record
    assert_shaping_wraps_the_deploy(kinds)
    assert all_ready_and_up(lab)
