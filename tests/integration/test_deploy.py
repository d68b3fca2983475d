"""Rolling deploys on a real 6-host lab behind two HAProxy LBs, under constant load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import rollout_py
from rollout_py import events as ev
from rollout_py.lab import artifact
from rollout_py.lab.layout import Layout
from tests.integration.conftest import LabFactory
from tests.integration.deploykit import (
    REPO,
    all_ready_and_up,
    json_result,
    lb_states,
    load,
    rollout_cli,
    signal_delivered,
    traffic_before_probe,
    versions,
    wait_for_playbook,
    write_spec,
)
from tests.integration.lab_ssh import lab_ssh


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> Layout:
    layout = lab_factory(n_hosts=6, n_lbs=2)
    store = layout.artifacts
    artifact.build_artifact(store, "2.0")
    artifact.build_artifact(store, "2.1-slow", artifact.Behaviour(start_delay=3))
    artifact.build_artifact(store, "3.0-unhealthy", artifact.Behaviour(health_fail=True))
    for v in ("4.0", "4.1", "5.0", "6.0", "7.0"):
        artifact.build_artifact(store, v)
    return layout


def test_rolling_deploy_under_load_keeps_every_request_and_both_lbs_consistent(
        lab: Layout, tmp_path: Path) -> None:
    spec = rollout_py.load_spec(write_spec(lab, tmp_path / "rollout.yml",
                                           batches=[1, "50%", "100%"]))
    seen: list[ev.Event] = []
    mismatches: list[str] = []

    def on_event(event: ev.Event) -> None:
        seen.append(event)
        # At every step boundary, each server has the same admin state on both LBs.
        states = lb_states(lab)
        for server in states["lb1"]:
            if states["lb1"][server][0] != states["lb2"][server][0]:
                mismatches.append(f"after {event.kind}: {server} {states['lb1'][server]} vs "
                                  f"{states['lb2'][server]}")

    with load(lab, rps=100) as summaries:
        result = rollout_py.deploy(spec, version="2.0", on_event=on_event)
    summary = summaries[0]
    assert result.status == "succeeded", result.cause
    assert [b.hosts for b in result.batches] == [("app01",), ("app02", "app03", "app04"),
                                                 ("app05", "app06")]
    assert set(versions(lab).values()) == {"2.0"}
    assert all_ready_and_up(lab)
    assert summary.failed == 0, summary.failures
    assert summary.sent > 500 and set(summary.by_version) == {"1.0", "2.0"}
    assert traffic_before_probe(summary, seen) == []
    assert mismatches == []


def test_unhealthy_version_rolls_the_first_batch_back(lab: Layout, tmp_path: Path) -> None:
    before = versions(lab)
    spec = write_spec(lab, tmp_path / "rollout.yml", batches=[2], health={"deadline": 5})
    with load(lab, rps=100) as summaries:
        proc = rollout_cli("deploy", "-f", str(spec), "--version", "3.0-unhealthy", "--json")
    result = json_result(proc)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert result["status"] == "rolled_back" and result["failure"] == "probe_failed"
    assert [b["outcome"] for b in result["batches"]] == ["rolled_back", "not_started",
                                                         "not_started"]
    assert versions(lab) == before
    assert all_ready_and_up(lab)
    assert summaries[0].failed == 0, summaries[0].failures


@pytest.mark.parametrize("policy", ["rollback_batch", "rollback_all"])
def test_failure_in_batch_2_of_3(lab: Layout, tmp_path: Path, policy: str) -> None:
    version = "4.0" if policy == "rollback_batch" else "4.1"
    before = versions(lab)
    # A command probe that fails on app03 for this version only.
    lab_ssh(lab, "app03", f"touch /tmp/fail-{version}")
    probes = [{"http": "http://{{ ansible_host }}:8080/health"},
              {"command": "test ! -e /tmp/fail-{{ rollout_version }}"}]
    spec = write_spec(lab, tmp_path / "rollout.yml", batches=[2], on_failure=policy,
                      max_unavailable=2, health={"deadline": 10, "probes": probes})
    proc = rollout_cli("deploy", "-f", str(spec), "--version", version, "--json")
    result = json_result(proc)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    after = versions(lab)
    if policy == "rollback_batch":
        assert [b["outcome"] for b in result["batches"]] == ["succeeded", "rolled_back",
                                                             "not_started"]
        assert after == {**before, "app01": version, "app02": version}
    else:
        assert [b["outcome"] for b in result["batches"]] == ["rolled_back", "rolled_back",
                                                             "not_started"], proc.stdout
        assert after == before
    assert all_ready_and_up(lab)


def test_playbook_failing_on_one_host_rolls_back_the_whole_batch(
        lab: Layout, tmp_path: Path) -> None:
    before = versions(lab)
    spec = write_spec(lab, tmp_path / "rollout.yml", batches=[3],
                      playbook=str(REPO / "tests/integration/playbooks/deploy_then_check.yml"),
                      max_unavailable=3)
    proc = rollout_cli("deploy", "-f", str(spec), "--version", "5.0", "--json",
                       "-e", '{"fail_hosts": ["app02"], "fail_version": "5.0"}')
    result = json_result(proc)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert result["failure"] == "task_failed" and "app02" in result["cause"]
    assert {h: result["hosts"][h]["outcome"] for h in ("app01", "app02", "app03")} == \
        dict.fromkeys(("app01", "app02", "app03"), "rolled_back")
    assert versions(lab) == before
    assert all_ready_and_up(lab)


def test_slow_starting_version_gets_no_traffic_before_its_probe(
        lab: Layout, tmp_path: Path) -> None:
    spec = rollout_py.load_spec(write_spec(lab, tmp_path / "rollout.yml", batches=[3],
                                           max_unavailable=3, health={"deadline": 20}))
    seen: list[ev.Event] = []
    with load(lab, rps=100) as summaries:
        result = rollout_py.deploy(spec, version="2.1-slow", on_event=seen.append)
    assert result.status == "succeeded", result.cause
    assert set(versions(lab).values()) == {"2.1-slow"}
    assert summaries[0].failed == 0, summaries[0].failures
    assert traffic_before_probe(summaries[0], seen) == []
    assert all_ready_and_up(lab)


def test_host_already_down_breaches_max_unavailable_before_any_drain(
        lab: Layout, tmp_path: Path) -> None:
    lab_ssh(lab, "app06", "/srv/app/bin/appctl stop")
    try:
        # Every LB's check must see it down (lb2's may lag lb1's) before the snapshot.
        deadline = time.monotonic() + 15
        while any(per["app06"][1] == "RUNNING" for per in lb_states(lab).values()) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        before = lb_states(lab)
        spec = write_spec(lab, tmp_path / "rollout.yml", batches=[1], max_unavailable=1)
        proc = rollout_cli("deploy", "-f", str(spec), "--version", "6.0")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "capacity" in proc.stderr and "app06" in proc.stderr
        assert lb_states(lab) == before  # nothing changed on any socket
    finally:
        # Also after a failure: the next tests share this lab and need app06 back.
        lab_ssh(lab, "app06", "/srv/app/bin/appctl start")
        deadline = time.monotonic() + 15
        while not all_ready_and_up(lab) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.mark.parametrize(("signals", "status"), [(1, "cancelled"), (2, "cancelled")])
def test_sigterm_during_the_playbook_unwinds_safely(
        lab: Layout, tmp_path: Path, signals: int, status: str) -> None:
    version = "7.0" if signals == 1 else "6.0"
    before = versions(lab)
    spec = write_spec(lab, tmp_path / "rollout.yml", batches=[2], max_unavailable=2)
    child = subprocess.Popen(
        [sys.executable, "-m", "rollout_py", "deploy", "-f", str(spec), "--version", version,
         "--json"], cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    lines = []
    deploy_id = "(no step started)"
    for line in child.stdout:
        lines.append(line)
        event = json.loads(line)
        if event.get("event") == "step_started":
            deploy_id = event["deploy_id"]
            wait_for_playbook(deploy_id)  # the playbook runs on the first batch
            for _ in range(signals):
                child.send_signal(signal.SIGTERM)
                signal_delivered(child.pid, signal.SIGTERM)  # two signals, not one merged
            break
    out, err = child.communicate(timeout=300)
    lines += out.splitlines()
    result = json.loads(lines[-1])["result"]
    assert child.returncode == 130, err
    assert result["status"] == status
    batches = [b["outcome"] for b in result["batches"]]
    after = versions(lab)
    if signals == 1:  # the batch finished, nothing after it started
        assert batches == ["succeeded", "not_started", "not_started"]
        assert after == {**before, "app01": version, "app02": version}
    else:  # the batch was rolled back at once
        assert batches == ["rolled_back", "not_started", "not_started"]
        assert after == before
    assert all_ready_and_up(lab)
    leftovers = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"rollout-cp-{deploy_id}" not in leftovers  # no SSH master of the deploy is left
    assert not [ln for ln in leftovers.splitlines()
                if "ansible-playbook" in ln and str(spec.parent) in ln]


def test_warm_up_ramps_the_new_servers_weight_on_both_lbs_to_its_recorded_weight(
        lab: Layout, tmp_path: Path) -> None:
    """Weights at 100 (set at runtime, so recorded as 100): app01 comes back at 10 % of it and
    is raised in steps to 100 on both LBs, as `lab watch` samples it; the others untouched."""
    from rollout_py.api import open_balancer
    from rollout_py.lab.watch import Watcher

    artifact.build_artifact(lab.artifacts, "8.0")
    spec = rollout_py.load_spec(write_spec(lab, tmp_path / "rollout.yml", batches=[1]))
    spec = spec.model_copy(update={"haproxy": spec.haproxy.model_copy(
        update={"warmup": 3.0, "warmup_from": 0.1})})
    lbs = open_balancer(spec)
    before = {url: {s: st.weight for s, st in per.items()} for url, per in lbs.states().items()}
    try:
        lbs.set_weights({url: dict.fromkeys(per, 100) for url, per in before.items()})
        with Watcher.for_lab(lab, hz=20) as watcher:
            seen: list[ev.Event] = []
            result = rollout_py.deploy(spec, version="8.0", limit="app01",
                                       on_event=seen.append, install_signal_handlers=False)
            ended = time.time()
            deadline = time.monotonic() + 10  # a sample of each LB taken after the deploy
            while not {s.lb for s in watcher.samples() if s.ts > ended} >= {"lb1", "lb2"}:
                assert time.monotonic() < deadline, "the watch took no sample after the deploy"
                time.sleep(0.05)
            samples = watcher.samples()
        assert result.status == "succeeded", result.cause
        for lb in ("lb1", "lb2"):
            weights = [s.servers["app01"].weight for s in samples
                       if s.lb == lb and s.ok and s.servers["app01"].admin == "READY"]
            after_maint = weights[weights.index(10):]  # from its enable on
            assert after_maint == sorted(after_maint), (lb, after_maint)  # only rises
            assert after_maint[-1] == 100
            assert len(set(after_maint)) >= 3, (lb, after_maint)  # steps between 10 and 100
            others = {s.servers[o].weight for s in samples if s.lb == lb and s.ok
                      for o in ("app02", "app03")}
            assert others == {100}
        steps = [e for e in seen if isinstance(e, ev.WarmupStep)]
        assert steps[0].step == 1 and steps[-1].step == steps[-1].of
    finally:
        lbs.set_weights(before)
        lbs.close()
