"""`lab up --exec-nodes 2`: execution nodes that see the machine's filesystem, reach the app
hosts over the lab's SSH config from their own address, and die like machines (kill_node)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollout_py.errors import InputError, LabError
from rollout_py.lab import lab as lab_mod
from rollout_py.lab import net
from rollout_py.lab.exec_nodes import kill_node
from rollout_py.lab.layout import Layout
from tests.integration.conftest import assert_lab_gone, rollout


@pytest.fixture(scope="module")
def lab(root_required: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Layout]:
    lab_dir = tmp_path_factory.mktemp("nodeslab")
    try:
        yield lab_mod.up(lab_dir, n_hosts=2, n_lbs=1, n_exec=2)
    finally:
        layout = Layout.load(lab_dir)
        lab_mod.down(lab_dir)
        if layout is not None:
            assert_lab_gone(layout)


def ssh(lab: Layout, host: str, command: str, *, check: bool = True
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ssh", "-F", str(lab.ssh_config), "-o", "ControlPath=none", host,
                           command], capture_output=True, text=True, timeout=60, check=check)


def test_exec_nodes_are_described_and_never_in_the_inventory(lab: Layout) -> None:
    assert [(h.name, h.role) for h in lab.exec_hosts] == [("exec1", "exec"), ("exec2", "exec")]
    described = json.loads((lab.path / "lab.json").read_text())
    assert [h["name"] for h in described["exec_hosts"]] == ["exec1", "exec2"]
    inventory = (lab.path / "inventory.ini").read_text()
    assert "exec1" not in inventory and "exec2" not in inventory and "[app]" in inventory
    spec = (lab.path / "rollout.yml").read_text()
    runner = f"{sys.prefix}/bin/ansible-runner"
    assert ("executors:\n  ssh_config: ssh/ssh_config\n  nodes:\n"
            f"    - url: ssh://root@exec1\n      runner: {runner}\n"
            f"    - url: ssh://root@exec2\n      runner: {runner}\n") in spec
    assert "Host exec1\n" in lab.ssh_config.read_text()


def test_a_node_runs_the_projects_ansible_runner(lab: Layout) -> None:
    proc = ssh(lab, "exec1", f"{sys.prefix}/bin/ansible-runner --version")
    assert proc.stdout.strip()


def test_a_node_is_its_own_host_with_the_machines_filesystem(lab: Layout) -> None:
    exec1 = lab.exec_hosts[0]
    out = ssh(lab, "exec1", f"hostname; grep BindAddress {lab.ssh_config} | sort -u; "
                            f"test -r {lab.key} && echo key; ip -4 -o addr show dev eth0").stdout
    lines = out.splitlines()
    assert lines[0] == "exec1"
    assert lines[1].split() == ["BindAddress", exec1.address]  # its own copy, bound over
    assert lines[2] == "key"  # the lab dir (under /tmp) is the machine's, not private
    assert f"{exec1.address}/24" in lines[3]
    # Outside the node the lab's config is unchanged.
    assert f"BindAddress {lab.gateway}\n" in lab.ssh_config.read_text()


def test_a_node_reaches_the_app_hosts(lab: Layout) -> None:
    out = ssh(lab, "exec1", f"ssh -F {lab.ssh_config} -o ControlPath=none app01 hostname")
    assert out.stdout.strip() == "app01"


def test_up_again_with_other_exec_nodes_is_refused(lab: Layout) -> None:
    with pytest.raises(LabError, match="exec node"):
        lab_mod.up(lab.path, n_hosts=2, n_lbs=1, n_exec=1)
    assert lab_mod.up(lab.path, n_hosts=2, n_lbs=1, n_exec=2).index == lab.index


def test_status_lists_exec_nodes(lab: Layout) -> None:
    info = lab_mod.status(lab.path)
    assert [(n["name"], n["sshd"]) for n in info["exec_nodes"]] == [("exec1", True),
                                                                    ("exec2", True)]
    out = rollout("lab", "status", "--dir", str(lab.path), check=True).stdout
    assert f"exec node exec2: {lab.exec_hosts[1].address} (sshd up)" in out


def test_kill_node_then_down(lab: Layout) -> None:
    with pytest.raises(InputError, match="not an execution node"):
        kill_node(lab, "app01")
    exec2 = lab.exec_hosts[1]
    assert ssh(lab, "exec2", "true").returncode == 0
    killed = kill_node(lab, "exec2")
    assert lab.procs["sshd:exec2"]["pid"] in killed
    assert net.netns_pids(exec2.netns) == []
    assert ssh(lab, "exec2", "true", check=False).returncode != 0
    assert ssh(lab, "exec1", "hostname").stdout.strip() == "exec1"  # the other one lives on
    # The lab is no longer fully up; status still answers.
    layout = Layout.load(lab.path)
    assert layout is not None and not lab_mod.running(layout)
    info = lab_mod.status(lab.path)
    assert [(n["name"], n["sshd"]) for n in info["exec_nodes"]] == [("exec1", True),
                                                                    ("exec2", False)]
    out = rollout("lab", "status", "--dir", str(lab.path), check=True).stdout
    assert "exec node exec2" in out and "(sshd DOWN)" in out
    assert lab_mod.down(lab.path)
    assert exec2.netns not in net.list_netns()
    assert_lab_gone(layout)


def test_a_failed_up_removes_its_exec_nodes(root_required: None, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[Layout] = []

    def fail(layout: Layout, _say: object) -> None:
        started.append(Layout.load(layout.path) or layout)
        raise RuntimeError("injected: the lab failed after its hosts started")

    monkeypatch.setattr(lab_mod, "_wait_ready", fail)
    with pytest.raises(RuntimeError, match="injected"):
        lab_mod.up(tmp_path / "failed", n_hosts=1, n_lbs=1, n_exec=1)
    assert "sshd:exec1" in started[0].procs  # it was running when up failed
    # Its own namespaces only: labs of other tests may come and go meanwhile.
    assert [n for n in net.list_netns() if n.startswith(f"{started[0].bridge}-")] == []
    assert_lab_gone(started[0])
