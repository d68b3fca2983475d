"""Resume on the real lab under load: after a controller error it drains before it acts, and
after a kill -9 at random moments of a staged deploy it always leaves a whole fleet."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rollout_py.lab import artifact
from rollout_py.lab.layout import Layout
from rollout_py.state import StateDir
from tests.chaos.harness import (
    CURRENT,
    Run,
    check_invariants,
    deploy_processes,
    deploy_under_fault,
)
from tests.integration.deploykit import all_ready_and_up, rollout_cli, versions, write_spec

pytestmark = pytest.mark.chaos
LabMaker = Callable[..., Layout]
STAGE = {"tags": "stage,prune", "switch_tags": "switch,untagged"}


def drains_before_host_actions(events: list[dict[str, Any]]) -> list[str]:
    """Host actions (upgrade, rollback) of a batch not preceded, in these events, by that
    batch's servers going to MAINT."""
    disabled: set[int] = set()
    bad = []
    for e in events:
        if e["event"] == "servers_disabled":
            disabled.add(e["batch"])
        elif e["event"] == "step_started" and e["step"] in ("upgrade", "rollback") \
                and e["batch"] not in disabled:
            bad.append(f"{e['step']} of batch {e['batch']} with no drain before it")
    return bad


def test_case_1_resume_after_a_controller_error_drains_before_acting(
        chaos_lab: LabMaker, tmp_path: Path) -> None:
    """Batch 2's upgrade cannot start (the controller cannot create its run directory): the
    engine rolls batch 2 back and puts it back in rotation. Resume then runs batch 2 again from
    its drain: no host is restarted while it serves; 0 failed requests throughout."""
    lab = chaos_lab(n_hosts=3, n_lbs=2)
    artifact.build_artifact(lab.artifacts, "2.0")
    spec = write_spec(lab, tmp_path / "rollout.yml", batches=[1], max_unavailable=1)
    blocker: list[Path] = []

    def block_batch_2(event: dict[str, Any]) -> None:
        # Runs are numbered in the order they start (preflight, the playbook session for every
        # batch, each batch's own run): none of them can run batch 2.
        runs = spec.parent / ".rollout" / "deploys" / event["deploy_id"] / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        for n in range(1, 6):
            for name in (f"{n:03d}-batches-upgrade", f"{n:03d}-batch2-upgrade"):
                path = runs / name
                path.write_text("not a directory: the controller cannot run here\n")
                blocker.append(path)

    run = deploy_under_fault(lab, spec, "2.0", hooks={"deploy_started": block_batch_2},
                             max_unavailable=2)
    assert run.returncode == 1, run.stderr[-2000:]
    assert run.result is not None
    assert run.result["status"] == "rolled_back" and run.result["resumable"]
    assert run.result["failure"] == "controller"
    check_invariants(lab, run)
    assert versions(lab) == {"app01": "2.0", "app02": "1.0", "app03": "1.0"}
    assert all_ready_and_up(lab)  # app02 is back in rotation, serving

    for path in blocker:  # the controller's problem is fixed
        path.unlink()
    resumed = deploy_under_fault(lab, spec, "", command="resume", max_unavailable=2)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert drains_before_host_actions(resumed.events) == []
    assert [e["action"] for e in resumed.events if e["event"] == "deploy_resumed"] == \
        ["continue"]
    check_invariants(lab, resumed)
    assert set(versions(lab).values()) == {"2.0"} and all_ready_and_up(lab)


KILLED_AT: dict[str, float] = {}  # when the last kill was sent (time.time())


def _kill_later(pid: int, delay: float) -> None:
    """kill -9 of the controller this test started, ``delay`` seconds from now."""

    def kill() -> None:
        KILLED_AT["t"] = time.time()
        with contextlib.suppress(ProcessLookupError):  # it may have finished already
            os.kill(pid, signal.SIGKILL)

    threading.Timer(delay, kill).start()


def _killer(rng: random.Random, at: int) -> Callable[[dict[str, Any]], bool]:
    """A hook that kills the controller (-9) at its ``at``-th event, after a random delay."""
    seen = {"n": 0}

    def hook(_event: dict[str, Any]) -> bool:
        seen["n"] += 1
        if seen["n"] < at:
            return False
        _kill_later(CURRENT["pid"], rng.uniform(0, 0.8))
        return True

    return hook


def _ansible_after_the_kill(state: Path) -> list[str]:
    """What the newest deploy's Ansible did after its controller died: task results, task
    starts and run ends created after the kill (any job event file of its runs, the partial
    ones the dead controller never read included; a stage run makes no event for a host that
    succeeds, only for its tasks), and its ansible processes still alive 60 s after it (its
    SSH masters may stay: resume closes them). A run killed in Ansible's start-up ends when
    its lifeline loads, before its first task: seconds, longer on a loaded machine; a run with
    a task under way is killed at once."""
    record = StateDir(state).get()
    left = deploy_processes(record.deploy_id, within=60.0, only="ansible")
    killed = KILLED_AT["t"] + 1.0  # the kill's own second: a result already on its way
    late = []
    for path in (state / "deploys" / record.deploy_id / "runs").glob(
            "*/artifacts/*/job_events/*.json"):
        with contextlib.suppress(OSError, ValueError):
            event = json.loads(path.read_text())
            created = datetime.datetime.fromisoformat(str(event.get("created"))).timestamp()
            if str(event.get("event", "")).startswith(("runner_on_", "playbook_on_task_start",
                                                       "playbook_on_stats")) \
                    and created > killed:
                late.append(f"{path.name}: {event['event']} at {created - killed + 1:.1f} s")
    return late + left


def test_case_2_kill_9_while_staging_then_resume(chaos_lab: LabMaker, tmp_path: Path) -> None:
    """The controller dies while the release is being staged on every host: resume stages it
    again (nothing was drained) and completes the deploy; 0 failed requests."""
    lab = chaos_lab(n_hosts=2, n_lbs=2)
    artifact.build_artifact(lab.artifacts, "2.0")
    spec = write_spec(lab, tmp_path / "rollout.yml", batches=[1], max_unavailable=1,
                      stage=STAGE)
    state = spec.parent / ".rollout"

    def kill_while_staging(event: dict[str, Any]) -> bool:
        if event.get("step") != "stage":
            return False
        _kill_later(CURRENT["pid"], 0.5)
        return True

    run = deploy_under_fault(lab, spec, "2.0", hooks={"step_started": kill_while_staging})
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    assert run.kinds()[-1] == "step_started" and run.load.failed == 0
    assert _ansible_after_the_kill(state) == []
    resumed = deploy_under_fault(lab, spec, "", command="resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert next(e["action"] for e in resumed.events if e["event"] == "deploy_resumed") == "stage"
    check_invariants(lab, resumed)
    assert set(versions(lab).values()) == {"2.0"} and all_ready_and_up(lab)


KILLS = 10  # the suite's 35-minute budget: ~21 s a trial


def test_kill_9_at_random_moments_of_a_staged_deploy_then_resume(
        chaos_lab: LabMaker, tmp_path: Path) -> None:
    # Two hosts keep each trial short (stage, two batches): 10 kills and resumes in ~4 min
    # (every single interruption point is covered by the unit tables of resume; these are
    # the real processes' kills at moments no event separates).
    lab = chaos_lab(n_hosts=2, n_lbs=2)
    for version in ("3.0", "4.0"):
        artifact.build_artifact(lab.artifacts, version)
    spec = write_spec(lab, tmp_path / "rollout.yml", batches=[1], max_unavailable=1,
                      stage=STAGE)
    state = spec.parent / ".rollout"
    baseline = deploy_under_fault(lab, spec, "3.0")
    assert baseline.returncode == 0, baseline.stderr[-2000:]
    check_invariants(lab, baseline)
    n_events = len(baseline.events)
    seed = int(os.environ.get("ROLLOUT_TEST_SEED", time.time()))
    rng = random.Random(seed)
    kills, trial, failed = 0, 0, 0
    moments: list[str] = []
    while kills < KILLS:
        trial += 1
        assert trial <= KILLS + 6, f"seed {seed}: only {kills} kills in {trial - 1} trials"
        version = "4.0" if trial % 2 else "3.0"
        at = rng.randint(1, n_events - 2)
        run: Run = deploy_under_fault(lab, spec, version, hooks={"*": _killer(rng, at)})
        failed += run.load.failed
        assert not run.watch.violations, (seed, run.watch.violations[:5])
        assert run.returncode in (0, -signal.SIGKILL), (seed, run.returncode, run.stderr[-2000:])
        if StateDir(state).get().closed():  # the kill landed after the end: not a trial
            # Before its clean-up, maybe: SSH masters may stay; the next deploy stops them
            # (the next check_invariants looks at every deploy's processes again).
            check_invariants(lab, run, processes="ansible")
            continue
        kills += 1
        moments.append(run.events[-1]["event"] if run.events else "(before any event)")
        assert _ansible_after_the_kill(state) == [], f"seed {seed}: ansible outlived the controller"
        resumed = deploy_under_fault(lab, spec, "", command="resume")
        failed += resumed.load.failed
        assert resumed.returncode == 0, (seed, at, moments[-1], resumed.stderr[-3000:])
        check_invariants(lab, resumed)
        assert set(versions(lab).values()) == {version}, (seed, at, versions(lab))
        assert all_ready_and_up(lab)
        assert rollout_cli("lock", "status", "-f", str(spec)).stdout.strip() == "free"
    assert failed == 0, f"seed {seed}: {failed} failed requests"
    # The kills landed across the deploy, staging included (shown when -s is given).
    print(f"seed {seed}: killed after {sorted(set(moments))}")
