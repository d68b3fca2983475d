"""Blue/green on the lab: 4 + 4 hosts, two LBs (one local, one over SSH), 300 rps of
open-loop load through both, the real CLI.

One lab for the module; each test starts from whatever pool is live (read from the LBs, as
the deploy does) with every server READY and UP. What is checked, per the issue: the switch
loses no request and no request reaches the idle pool's new version before its probes pass;
the time the LBs disagree is measured; a reload keeps the new pool; a release failing its
probes is refused before the switch; one failing the post-switch analysis is switched back
automatically; ``rollout switch-back`` works by hand; kill -9 between the two LBs' commits,
then ``rollout resume``: both LBs end on one pool.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from rollout_py.balancer.maps import parse_map_file
from rollout_py.lab import artifact
from rollout_py.lab import lab as lab_mod
from rollout_py.lab import pools as lab_pools
from rollout_py.lab.layout import Layout
from rollout_py.lab.load import LoadGenerator, Summary
from rollout_py.lab.watch import Watcher, WatchSummary
from rollout_py.operations import schema
from rollout_py.procs import Proc
from tests.integration.conftest import LabFactory
from tests.integration.deploykit import rollout_cli, versions

REPO = Path(__file__).resolve().parents[2]
RPS_PER_LB = 150  # 300 rps in all


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> Layout:
    return lab_factory(n_hosts=8, n_lbs=2, n_pools=2, name="bluegreen")


def spec_for(lab: Layout, path: Path, **blue_green: Any) -> Path:
    """The lab's rollout-bluegreen.yml, test-sized: windows of 2 s, 8 s after the switch."""
    spec = yaml.safe_load((lab.path / "rollout-bluegreen.yml").read_text())
    spec["inventory"] = str(lab.inventory)
    spec["haproxy"]["ssh_config"] = str(lab.ssh_config)
    spec["health"].update(deadline=12, interval=0.3, consecutive=2)
    spec["analysis"].update(interval=2, min_requests=20, inconclusive_limit=3)
    spec["blue_green"].update({"analysis_duration": 8, **blue_green})
    spec.pop("flags", None)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def live_pools(lab: Layout) -> dict[str, str]:
    """LB name -> the backend its live route serves, from HAProxy itself."""
    out = {}
    for lb in lab.lbs:
        api = lab_mod.lb_api(lab, lb)
        try:
            out[lb.name] = lab_pools.lb_status(lab, lb, api)["entries"]["live"]
        finally:
            api.close()
    return out


def map_files(lab: Layout) -> dict[str, str]:
    return {lb.name: parse_map_file(lab_pools.local_map_file(lab, lb).read_text())["live"]
            for lb in lab.lbs}


def pool_hosts(lab: Layout, backend: str) -> list[str]:
    return next(list(p.hosts) for p in lab.pools if p.backend == backend)


def build(lab: Layout, version: str, **behaviour: Any) -> None:
    artifact.build_artifact(lab.path / "artifacts", version, artifact.Behaviour(**behaviour))


class Runner:
    """``rollout <command> --json`` under load through both LBs; ``hooks`` act on events."""

    def __init__(self, lab: Layout) -> None:
        self.lab = lab
        self.watch: WatchSummary | None = None

    def run(self, *args: str, hooks: dict[str, Callable[[dict[str, Any]], None]] | None = None,
            env: dict[str, str] | None = None, load: bool = True
            ) -> tuple[int, list[dict[str, Any]], dict[str, Any] | None, list[Summary]]:
        """Every LB is watched at 10 Hz meanwhile (``self.watch``): no server of the pool
        serving live traffic may leave rotation (max_unavailable 0 per live backend)."""
        watcher = Watcher.for_lab(self.lab, max_unavailable=0).start()
        gens = [LoadGenerator(f"http://127.0.0.1:{lb.port}/", rps=RPS_PER_LB,
                              duration=3600).start() for lb in self.lab.lbs] if load else []
        child = subprocess.Popen([sys.executable, "-m", "rollout_py", *args, "--json"],
                                 cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)}
                                 | (env or {}), stdout=subprocess.PIPE, text=True)
        events: list[dict[str, Any]] = []
        result = None
        try:
            assert child.stdout is not None
            for line in child.stdout:
                data = json.loads(line)
                if "result" in data:
                    result = data["result"]
                    continue
                events.append(data)
                hook = (hooks or {}).get(data["event"])
                if hook is not None:
                    hook(data)
            child.wait(300)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(60)
            assert child.stdout is not None
            child.stdout.close()
            summaries = [g.stop() for g in gens]
            self.watch = watcher.stop()
        assert not self.watch.violations, self.watch.violations[:5]
        return child.returncode, events, result, summaries


def of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == kind]


def test_switch_under_300_rps_loses_nothing_and_survives_a_reload(
        lab: Layout, tmp_path: Path) -> None:
    spec = spec_for(lab, tmp_path / "bg.yml")
    before = live_pools(lab)
    assert len(set(before.values())) == 1
    old = next(iter(before.values()))
    new = next(p.backend for p in lab.pools if p.backend != old)
    build(lab, "2.0")
    runner = Runner(lab)
    code, events, result, loads = runner.run("deploy", "-f", str(spec), "--version", "2.0")
    assert code == 0, (result, [e["event"] for e in events][-8:])
    assert runner.watch is not None
    assert [len(runner.watch.route_changes[lb.name]) for lb in lab.lbs] == [2, 2]  # live+preview
    seen, low, high = runner.watch.disagreement_seconds()
    print(f"\nlab watch: the LBs disagreed on the live pool for {seen:.3f} s (between "
          f"{low:.3f} and {high:.3f} s, from 10 Hz samples)")
    assert sum(s.failed for s in loads) == 0, [s.failures for s in loads]
    assert sum(s.sent for s in loads) > 0
    [finished] = of(events, "switch_finished")
    assert finished["ok"] and finished["to_backend"] == new
    print(f"\nblue/green switch {old} -> {new}: the two LBs disagreed for "
          f"{finished['disagreement'] * 1000:.2f} ms; "
          f"{sum(s.sent for s in loads)} requests, 0 failed")
    # No request reached the new version before the idle pool's probes passed (the pool
    # was in MAINT until then: enabled = the first moment it could serve).
    enabled = min(e["ts"] for e in of(events, "servers_enabled"))
    early = [r for s in loads for r in s.records
             if r.version == "2.0" and r.sent_at < enabled]
    assert early == []
    assert live_pools(lab) == dict.fromkeys(before, new) == map_files(lab)
    assert {versions(lab)[h] for h in pool_hosts(lab, new)} == {"2.0"}
    # `rollout status` judges the pool live on each LB only, and says which one it is.
    proc = rollout_cli("status", "-f", str(spec), "--json")
    status = json.loads(proc.stdout)
    jsonschema.validate(status, schema("status"))
    assert proc.returncode == 0 and status["flagged"] == [], status["flagged"]
    assert set(status["pools"]["live"].values()) == {new}
    # A reload (SIGUSR2 to every LB's master, as systemctl reload) reads the map file again.
    for lb in lab.lbs:
        os.kill(Proc.from_json(lab.procs[f"haproxy:{lb.name}"]).pid, signal.SIGUSR2)
    deadline = time.monotonic() + 10
    while True:  # the new worker answers on the socket with the file's content
        try:
            if live_pools(lab) == dict.fromkeys(before, new):
                break
        except Exception:  # the socket between two workers
            pass
        assert time.monotonic() < deadline, live_pools(lab)
        time.sleep(0.2)


def test_a_release_failing_its_probes_is_refused_before_the_switch(
        lab: Layout, tmp_path: Path) -> None:
    spec = spec_for(lab, tmp_path / "bg.yml")
    before = live_pools(lab)
    build(lab, "3.0-bad", health_fail=True)
    code, events, result, loads = Runner(lab).run("deploy", "-f", str(spec), "--version",
                                                  "3.0-bad")
    assert code == 1 and result is not None and result["status"] == "rolled_back", result
    assert not of(events, "switch_started")
    assert live_pools(lab) == before == map_files(lab)
    assert sum(s.failed for s in loads) == 0


def test_a_release_failing_after_the_switch_is_switched_back_then_by_hand(
        lab: Layout, tmp_path: Path) -> None:
    spec = spec_for(lab, tmp_path / "bg.yml")
    before = live_pools(lab)
    old = next(iter(before.values()))
    build(lab, "4.0-errors", error_rate=0.3)
    code, events, result, loads = Runner(lab).run("deploy", "-f", str(spec), "--version",
                                                  "4.0-errors")
    assert code == 1 and result is not None and result["status"] == "rolled_back", result
    starts = of(events, "switch_started")
    assert [s["to_backend"] for s in starts][-1] == old
    assert starts[-1]["reason"].startswith("automatic switch-back")
    kinds = [e["event"] for e in events]
    assert kinds.index("switch_finished", kinds.index("switch_started", kinds.index(
        "analysis_finished"))) < kinds.index("rollback_started")
    assert live_pools(lab) == before == map_files(lab)
    print(f"\npost-switch failure: {sum(s.failed for s in loads)} of "
          f"{sum(s.sent for s in loads)} requests failed before the switch back")
    # By hand: instant, journaled, no deploy.
    code, events, result, _ = Runner(lab).run("switch-back", "-f", str(spec), load=False)
    assert code == 0, result
    [finished] = of(events, "switch_finished")
    assert finished["ok"] and finished["to_backend"] != old
    assert set(live_pools(lab).values()) == {finished["to_backend"]}
    assert set(map_files(lab).values()) == {finished["to_backend"]}
    code, _, result, _ = Runner(lab).run("switch-back", "-f", str(spec), load=False)
    assert code == 0 and live_pools(lab) == before


def test_kill_9_between_the_two_lbs_then_resume_ends_on_one_pool(
        lab: Layout, tmp_path: Path) -> None:
    spec = spec_for(lab, tmp_path / "bg.yml")
    before = live_pools(lab)
    old = next(iter(before.values()))
    new = next(p.backend for p in lab.pools if p.backend != old)
    build(lab, "5.0")
    marker = tmp_path / "failpoint"
    killed: dict[str, Any] = {}

    def kill_at_failpoint(_event: dict[str, Any]) -> None:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline, "the failpoint was never reached"
            time.sleep(0.05)
        killed["pid"] = int(marker.read_text())
        killed["pools"] = live_pools(lab)
        os.kill(killed["pid"], signal.SIGKILL)

    code, _, result, loads = Runner(lab).run(
        "deploy", "-f", str(spec), "--version", "5.0",
        hooks={"switch_started": kill_at_failpoint},
        env={"ROLLOUT_FAILPOINT": "between-lb-commits", "ROLLOUT_FAILPOINT_FILE": str(marker)})
    assert code == -signal.SIGKILL and result is None
    assert killed["pools"] == {lab.lbs[0].name: new, lab.lbs[1].name: old}
    code, _, result, loads = Runner(lab).run("resume", "-f", str(spec))
    assert code == 0, result
    assert live_pools(lab) == dict.fromkeys(before, new) == map_files(lab)
    assert sum(s.failed for s in loads) == 0
