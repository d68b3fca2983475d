"""Deploys through two execution nodes on a real lab (``lab up --exec-nodes 2``): each batch's
Ansible work runs on the nodes (ansible-runner transmit | worker | process over SSH), under
load; an execution node killed mid-batch fails the batch, which is rolled back through the
other node, with nothing left drained."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout_py.exec_nodes import NodePool
from rollout_py.lab import artifact
from rollout_py.lab.exec_nodes import kill_node
from rollout_py.lab.layout import Layout
from rollout_py.spec import load_spec
from tests.integration.conftest import LabFactory
from tests.integration.deploykit import (
    REPO,
    all_ready_and_up,
    json_result,
    load,
    rollout_cli,
    traffic_before_probe_json,
    versions,
    wait_for_ansible,
    write_spec,
)

# The shipped deploy playbook, imported by absolute path (an execution node sees it there),
# then batch 1 held after its upgrade: a node killed then leaves hosts switched to the new
# release, which only a rollback through the other node puts back.
HELD = """\
- name: Deploy
  ansible.builtin.import_playbook: {deploy}

- name: Hold batch 1 after its upgrade
  hosts: "{{{{ rollout_hosts | default('app') }}}}"
  gather_facts: false
  tasks:
    - name: Wait after upgrading
      ansible.builtin.pause:
        seconds: 8
      when:
        - (rollout_batch | default(0) | int) == 1
        - not (rollout_rollback | default(false) | bool)
"""


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> Layout:
    layout = lab_factory(n_hosts=6, n_lbs=2, n_exec=2)
    for v in ("n1", "n2"):
        artifact.build_artifact(layout.artifacts, v)
    return layout


def node_spec(lab: Layout, path: Path, **overrides: Any) -> Path:
    spec = write_spec(lab, path, batches=[3, "100%"], max_unavailable=3, **overrides)
    data = yaml.safe_load(spec.read_text())
    data["executors"]["ssh_config"] = str(lab.ssh_config)
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    return spec


def runs_of(spec: Path) -> list[str]:
    return sorted(p.name for p in (spec.parent / ".rollout").glob("deploys/*/runs/*"))


def test_a_deploy_through_two_nodes_under_load(lab: Layout, tmp_path: Path) -> None:
    spec = node_spec(lab, tmp_path / "rollout.yml")
    with load(lab) as summaries:
        proc = rollout_cli("deploy", "-f", str(spec), "--version", "n1", "--json")
    summary = summaries[0]
    result = json_result(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["status"] == "succeeded"
    assert set(versions(lab).values()) == {"n1"}
    assert summary.sent > 100 and summary.failed == 0, summary
    events = [json.loads(line) for line in proc.stdout.splitlines()[:-1]]
    assert traffic_before_probe_json(summary, events) == []
    # Every batch's upgrade ran on the nodes its hosts hash to: both, nothing on the controller.
    pool = NodePool(load_spec(spec).executors)  # type: ignore[arg-type]
    hosts = [h.name for h in lab.app_hosts]
    expected = {f"exec{n[-1]}@batch{i}-upgrade" for i, batch in ((1, hosts[:3]), (2, hosts[3:]))
                for n in {pool.node_for(h).name for h in batch}}  # type: ignore[union-attr]
    ran = {name.split("-", 1)[1] for name in runs_of(spec) if name.endswith("-upgrade")}
    assert ran == expected and {e.split("@")[0] for e in ran} == {"exec1", "exec2"}, ran
    assert all_ready_and_up(lab)


def test_a_node_killed_mid_batch_rolls_the_batch_back_through_the_other(
        lab: Layout, tmp_path: Path) -> None:
    held = tmp_path / "held.yml"
    held.write_text(HELD.format(deploy=REPO / "playbooks" / "deploy.yml"))
    spec = node_spec(lab, tmp_path / "rollout.yml", playbook=str(held))
    before = versions(lab)
    pool = NodePool(load_spec(spec).executors)  # type: ignore[arg-type]
    batch1 = [h.name for h in lab.app_hosts][:3]
    victim = pool.node_for(batch1[0]).name  # type: ignore[union-attr]
    argv: list[str] = []  # the victim's ansible-playbook, once it runs
    with load(lab) as summaries:
        child = subprocess.Popen(
            [sys.executable, "-m", "rollout_py", "deploy", "-f", str(spec), "--version", "n2",
             "--json"], cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # its inventory path on the node names the run: NODE@LABEL
            argv += wait_for_ansible(f"{victim}@batch1-upgrade")
            wait_for(lambda: all(versions(lab)[h] == "n2" for h in batch1))  # switched
            kill_node(lab, victim)
            out, err = child.communicate(timeout=300)
        finally:
            if child.poll() is None:
                child.kill()
            remove_node_leftovers(argv)
    summary = summaries[0]
    result = json.loads(out.splitlines()[-1])["result"]
    assert child.returncode == 1, err[-3000:]
    assert result["status"] == "rolled_back", result
    assert [b["outcome"] for b in result["batches"]] == ["rolled_back", "not_started"]
    assert f"execution node {victim} lost" in json.dumps(result)
    assert versions(lab) == before  # batch 1 back on its release, batch 2 never touched
    assert all_ready_and_up(lab)  # every host in rotation on every LB
    assert summary.failed == 0, summary
    # The rollback ran through the node left, not the one killed.
    other = next(n.name for n in pool.spec.nodes if n.name != victim)
    rollbacks = [n for n in runs_of(spec) if n.endswith("batch1-rollback")]
    assert rollbacks and all(f"-{other}@" in n for n in rollbacks), runs_of(spec)


def remove_node_leftovers(argv: list[str]) -> None:
    """What the killed node could not remove: its run's private data dir and SSH control dir
    of this deploy (``/tmp/rollout-worker-TOKEN-...``, ``/tmp/rollout-cp-TOKEN-...``, named by
    the token in the killed ansible-playbook's arguments). A real node's /tmp is its own; a lab
    node's is this machine's."""
    found = next((m for a in argv if (m := re.search(r"/tmp/rollout-worker-([0-9a-f]{10})-", a))),
                 None)
    if found is None:
        return
    for left in [*Path("/tmp").glob(f"rollout-worker-{found.group(1)}-*"),
                 *Path("/tmp").glob(f"rollout-cp-{found.group(1)}-*")]:
        shutil.rmtree(left, ignore_errors=True)


def wait_for(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)
