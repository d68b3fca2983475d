"""Expand / migrate / contract on a real lab (no database: the phases are shell commands that
leave marker files): the order against the LB actions, a failing expand that touches nothing,
kill -9 during migrate then resume, and the contract's version gate with a host in MAINT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rollout_py.lab import artifact
from rollout_py.lab import lab as lab_mod
from rollout_py.lab.layout import Layout
from rollout_py.state import StateDir
from tests.integration.conftest import LabFactory
from tests.integration.deploykit import (
    REPO,
    all_ready_and_up,
    json_result,
    rollout_cli,
    versions,
    write_spec,
)


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> Layout:
    layout = lab_factory(n_hosts=3, n_lbs=1, name="phases")
    for v in ("2.0", "2.1", "2.2"):
        artifact.build_artifact(layout.artifacts, v)
    return layout


def spec_with(lab: Layout, path: Path, phases: dict[str, Any]) -> Path:
    return write_spec(lab, path, batches=[1], phases=phases)


def events_of(spec: Path) -> list[dict[str, Any]]:
    record = StateDir(spec.parent / ".rollout").get()
    return [json.loads(line) for line in record.journal.read_text().splitlines()]


def deploy(spec: Path, version: str, *args: str) -> subprocess.CompletedProcess[str]:
    return rollout_cli("deploy", "-f", str(spec), "--version", version, "--json", *args)


def test_expand_before_any_drain_and_migrate_after_the_last_batch(lab: Layout,
                                                                 tmp_path: Path) -> None:
    host = lab.app_hosts[0].name
    marks = tmp_path / "marks"
    spec = spec_with(lab, tmp_path / "rollout.yml", {
        # on a lab host (its own /tmp): fails unless the variables arrived
        "expand": {"command": 'test "$ROLLOUT_PHASE $ROLLOUT_VERSION" = "expand 2.0" && '
                              'test -n "$ROLLOUT_DEPLOY_ID"', "on": host},
        "migrate": {"command": f'echo "$ROLLOUT_PHASE $rows" >> {marks}', "on": "local",
                    "vars": {"rows": 10}}})
    proc = deploy(spec, "2.0")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    kinds = [(e["event"], e.get("phase")) for e in events_of(spec)]
    drains = [i for i, k in enumerate(kinds) if k[0] == "drain_started"]
    enabled = [i for i, k in enumerate(kinds) if k[0] == "servers_enabled"]
    assert kinds.index(("phase_started", "expand")) < kinds.index(
        ("phase_finished", "expand")) < drains[0]
    assert kinds.index(("phase_started", "migrate")) > enabled[-1]
    assert marks.read_text() == "migrate 10\n"
    assert set(versions(lab).values()) == {"2.0"}


def test_a_failing_expand_exits_1_before_any_drain(lab: Layout, tmp_path: Path) -> None:
    before = versions(lab)
    spec = spec_with(lab, tmp_path / "rollout.yml", {
        "expand": {"command": "echo 'relation users is locked' >&2; exit 3", "on": "local"},
        "migrate": {"command": "true", "on": "local"}})
    proc = deploy(spec, "2.1")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr
    result = json_result(proc)
    assert result["status"] == "rolled_back" and "relation users is locked" in result["cause"]
    assert [e["event"] for e in events_of(spec)] == [
        "deploy_started", "phase_started", "phase_finished", "deploy_finished"]
    assert versions(lab) == before and all_ready_and_up(lab)


def test_kill_9_during_migrate_then_resume_runs_it_again(lab: Layout, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    spec = spec_with(lab, tmp_path / "rollout.yml", {
        "migrate": {"command": f"echo run >> {runs}; sleep 60", "on": "local", "timeout": 5}})
    child = subprocess.Popen(
        [sys.executable, "-m", "rollout_py", "deploy", "-f", str(spec), "--version", "2.1",
         "--json"], cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stderr is not None
    for line in child.stdout:
        event = json.loads(line)
        if event["event"] == "phase_started" and event["phase"] == "migrate":
            deadline = time.monotonic() + 10
            while not runs.exists() and time.monotonic() < deadline:
                time.sleep(0.05)  # the command itself runs: killed mid-way
            child.send_signal(signal.SIGKILL)
            break
    child.wait(30)
    child.stdout.close()
    child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    # the orphaned local command got SIGTERM with its controller (parent-death signal)
    assert subprocess.run(["pgrep", "-f", f"echo run >> {runs}"], check=False).returncode == 1
    # the resumed migrate times out (5 s): stopped, resumable, fleet on 2.0, nothing undone
    proc = rollout_cli("resume", "-f", str(spec), "--json")
    result = json_result(proc)
    assert proc.returncode == 5 and result["resumable"], proc.stdout[-3000:] + proc.stderr
    assert set(versions(lab).values()) == {"2.1"} and all_ready_and_up(lab)
    started = [e for e in events_of(spec) if e["event"] == "phase_started"]
    assert [e["attempt"] for e in started] == [1, 2]
    assert runs.read_text() == "run\nrun\n"


def test_contract_is_refused_while_a_host_in_maint_has_an_old_version(lab: Layout,
                                                                      tmp_path: Path) -> None:
    marks = tmp_path / "contracted"
    phases = {"contract": {"command": f"touch {marks}", "on": "local", "requires": "2.2"}}
    spec = spec_with(lab, tmp_path / "rollout.yml", phases)
    first, rest = lab.app_hosts[0].name, [h.name for h in lab.app_hosts[1:]]
    before = versions(lab)[first]
    proc = deploy(spec, "2.2", "--limit", ",".join(rest))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    api = lab_mod.lb_api(lab, lab.lbs[0])
    try:
        api.set_state("app", first, "maint")
        refused = rollout_cli("contract", "-f", str(spec))
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert f"BLOCKS {first}: {before} (reported; MAINT on" in refused.stdout
        assert not marks.exists()
        forced = rollout_cli("contract", "-f", str(spec), "--force", "--json")
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert f"WARNING: --force: {first}: {before}" in forced.stderr
        assert json_result(forced)["status"] == "forced" and marks.exists()
    finally:
        api.set_state("app", first, "ready")
        api.close()
    status = rollout_cli("status", "-f", str(spec), "--json")
    assert json.loads(status.stdout)["phases"]["contract"]["status"] == "forced"
