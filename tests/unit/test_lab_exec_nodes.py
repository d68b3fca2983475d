"""`lab up --exec-nodes N` without a lab: layout, validation, files, the nodes' configs."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rollout_py.errors import InputError
from rollout_py.lab import exec_nodes, files
from rollout_py.lab import lab as lab_mod
from rollout_py.lab.cli import lab as lab_cli
from rollout_py.lab.layout import Layout, LbSpec


def _layout(tmp_path: Path, n_exec: int = 2, **kw: object) -> Layout:
    lbs = [LbSpec("lb1", 4001, "/run/lb1.sock", "unix:///run/lb1.sock", None)]
    return Layout(dir=str(tmp_path), index=3, block="10.213.0.0/16", n_hosts=2, n_lbs=2,
                  n_exec=n_exec, lbs=lbs, **kw)  # type: ignore[arg-type]


def test_exec_hosts_take_octets_4_to_9(tmp_path: Path) -> None:
    layout = _layout(tmp_path, n_exec=6, db=True)
    assert [(h.name, h.address, h.role) for h in layout.exec_hosts] == [
        (f"exec{i}", f"10.213.3.{3 + i}", "exec") for i in range(1, 7)]
    assert layout.exec_hosts[0].netns == "rlab3-exec1" and layout.exec_hosts[0].veth == "rlab3v4"
    every = layout.all_hosts
    assert [h.name for h in every] == ["app01", "app02", "lb2", "db1",
                                       *(f"exec{i}" for i in range(1, 7))]
    addresses = [h.address for h in every] + [layout.gateway]
    assert len(set(addresses)) == len(addresses)
    assert len({h.veth for h in every}) == len(every)
    assert all(len(h.veth) <= 15 for h in every)
    assert _layout(tmp_path, n_exec=0).exec_hosts == []


def test_lab_json_has_exec_hosts_and_an_old_one_loads(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    layout.save()
    data = json.loads((tmp_path / "lab.json").read_text())
    assert [h["name"] for h in data["exec_hosts"]] == ["exec1", "exec2"]
    assert data["layout"]["n_exec"] == 2
    loaded = Layout.load(tmp_path)
    assert loaded is not None and loaded.exec_hosts == layout.exec_hosts
    del data["layout"]["n_exec"]  # a lab.json written before --exec-nodes
    (tmp_path / "lab.json").write_text(json.dumps(data))
    old = Layout.load(tmp_path)
    assert old is not None and old.n_exec == 0 and old.describe()["exec_hosts"] == []


def test_exec_nodes_outside_the_inventory_inside_ssh(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    inventory = files.inventory(layout)
    assert "exec1" not in inventory and "exec2" not in inventory
    config = files.ssh_config(layout)
    assert "Host exec2\n    HostName 10.213.3.5\n" in config
    keys = {h.name: f"ssh-ed25519 KEY{h.name}" for h in layout.all_hosts}
    assert "10.213.3.4,exec1 ssh-ed25519 KEYexec1\n" in files.known_hosts(layout, keys)


def test_spec_names_the_executors_only_with_nodes(tmp_path: Path) -> None:
    runner = f"{sys.prefix}/bin/ansible-runner"
    spec = files.rollout_spec(_layout(tmp_path))
    assert spec.endswith("executors:\n  ssh_config: ssh/ssh_config\n  nodes:\n"
                         f"    - url: ssh://root@exec1\n      runner: {runner}\n"
                         f"    - url: ssh://root@exec2\n      runner: {runner}\n")
    assert yaml.safe_load(spec)["executors"] == {
        "ssh_config": "ssh/ssh_config",
        "nodes": [{"url": "ssh://root@exec1", "runner": runner},
                  {"url": "ssh://root@exec2", "runner": runner}]}
    assert yaml.safe_load(files.canary_spec(_layout(tmp_path)))["strategy"] == "canary"
    assert "executors" not in files.rollout_spec(_layout(tmp_path, n_exec=0))


@pytest.mark.parametrize("n_exec", [-1, 7])
def test_exec_nodes_must_be_0_to_6(tmp_path: Path, n_exec: int) -> None:
    with pytest.raises(InputError, match="--exec-nodes"):
        exec_nodes.validate(n_exec)
    with pytest.raises(InputError, match="--exec-nodes must be between 0 and 6"):
        lab_mod.up(tmp_path, n_hosts=2, n_exec=n_exec)  # refused before anything is built
    assert not (tmp_path / "lab.json").exists()
    for ok in (0, 6):
        exec_nodes.validate(ok)


def test_cli_refuses_too_many_exec_nodes() -> None:
    result = CliRunner().invoke(lab_cli, ["up", "--exec-nodes", "7"])
    assert result.exit_code == 2 and "--exec-nodes" in result.output


def test_node_ssh_config_differs_only_in_its_bind_address(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    lab_config = files.ssh_config(layout)
    node = exec_nodes.node_ssh_config(layout, layout.exec_hosts[1], lab_config)
    changed = [(a, b) for a, b in zip(lab_config.splitlines(), node.splitlines(), strict=True)
               if a != b]
    pair = ("    BindAddress 10.213.3.1", "    BindAddress 10.213.3.5")
    assert changed == [pair] * lab_config.count("BindAddress") and len(changed) == 6


def test_prepare_writes_the_nodes_sshd_files(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exec_nodes, "PRIVSEP_DIR", tmp_path / "run" / "sshd")
    layout = _layout(tmp_path)
    layout.ssh_dir.mkdir()
    layout.ssh_config.write_text(files.ssh_config(layout))
    exec1 = layout.exec_hosts[0]
    host_key = exec_nodes.prepare(layout, exec1, "ssh-ed25519 AAAA lab\n")
    base = layout.host_dir("exec1")
    assert host_key.startswith("ssh-ed25519 ")
    assert (base / "authorized_keys").read_text() == "ssh-ed25519 AAAA lab\n"
    cfg = (base / "sshd_config").read_text().splitlines()
    for line in ("ListenAddress 10.213.3.4:22", f"HostKey {base / 'ssh_host_ed25519_key'}",
                 f"AuthorizedKeysFile {base / 'authorized_keys'}", "PidFile none", "UsePAM no",
                 "MaxStartups 200:30:400", "MaxSessions 64"):
        assert line in cfg
    assert "    BindAddress 10.213.3.4" in (base / "ssh_config").read_text()
    assert stat.S_IMODE((tmp_path / "run" / "sshd").stat().st_mode) == 0o755
    # No private directories: a node sees the machine's /srv /root /run /tmp.
    assert not any((base / sub).exists() for sub in ("srv", "root", "run", "tmp"))


def test_kill_node_names_only_exec_nodes_and_status_of_unstarted_nodes(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    with pytest.raises(InputError, match=r"not an execution node .*have: exec1, exec2"):
        exec_nodes.kill_node(layout, "app01")
    assert [(r["name"], r["sshd"]) for r in exec_nodes.status(layout)] == [
        ("exec1", False), ("exec2", False)]
