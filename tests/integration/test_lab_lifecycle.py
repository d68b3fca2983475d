"""Lab lifecycle: nothing left after down, lab addresses unreachable, crash-safe, root only."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rollout_py.lab import lab as lab_mod
from rollout_py.lab import net
from rollout_py.lab.layout import RUN_ROOT, Layout
from rollout_py.lab.procs import Proc
from rollout_py.procs import processes_mentioning
from tests.integration.conftest import REPO, assert_lab_gone, rollout


def connect_error(address: str, port: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        try:
            sock.connect((address, port))
        except OSError as exc:
            return exc.errno or -1
    return 0


def test_down_removes_everything_and_lab_addresses_become_unreachable(
        root_required: None, tmp_path: Path) -> None:
    layout = lab_mod.up(tmp_path / "lab", n_hosts=2, n_lbs=2)
    host = layout.app_hosts[0]
    assert connect_error(host.address, 8080) == 0  # reachable while up
    app_pid = int((layout.host_dir(host.name) / "run" / "app.pid").read_text())
    app = Proc.of(app_pid)
    proc = rollout("lab", "down", "--dir", str(layout.path))
    assert proc.returncode == 0, proc.stderr
    assert_lab_gone(layout)
    assert not app.alive()
    # Without the bridge the unreachable route answers locally: nothing is sent out.
    assert net.route_dev(host.address) is None
    for address in (host.address, layout.gateway, "10.213.250.77"):
        assert connect_error(address, 8080) == errno.EHOSTUNREACH
    again = rollout("lab", "down", "--dir", str(layout.path))
    assert again.returncode == 0 and "no lab" in again.stdout


def test_down_cleans_up_after_a_killed_up(root_required: None, tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    child = subprocess.Popen(
        [sys.executable, "-m", "rollout_py", "lab", "up", "--hosts", "6", "--dir", str(lab_dir)],
        cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Kill it as soon as it has created hosts, i.e. in the middle of `up`.
        deadline = time.monotonic() + 60
        layout = None
        while time.monotonic() < deadline and child.poll() is None:
            layout = Layout.load(lab_dir) if (lab_dir / "lab.json").exists() else None
            if layout and any(h.netns in net.list_netns() for h in layout.app_hosts):
                break
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert layout is not None, "up never created a host"
    proc = rollout("lab", "down", "--dir", str(lab_dir))
    assert proc.returncode == 0, proc.stderr
    assert_lab_gone(layout)
    leftovers = [n for n in net.list_netns() if n.startswith(layout.bridge + "-")]
    assert leftovers == []


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def test_down_by_index_removes_a_lab_whose_directory_was_deleted(
        root_required: None, tmp_path: Path) -> None:
    layout = lab_mod.up(tmp_path / "lab", n_hosts=2, n_lbs=2)
    try:
        _run_the_lab_without_its_directory(layout)
    finally:  # whatever failed, nothing of it stays
        if Layout.load(layout.path) is not None:
            lab_mod.down(layout.path)
        else:
            lab_mod.down(None, index=layout.index)


def _run_the_lab_without_its_directory(layout: Layout) -> None:
    # Everything it runs: sshd and HAProxy (recorded), the apps, HAProxy's workers, the SSH
    # session left by an ssh and its multiplexing master (ControlPersist).
    subprocess.run(["ssh", "-F", str(layout.ssh_config), layout.app_hosts[0].name, "true"],
                   check=True, timeout=30, capture_output=True)
    procs = [Proc.from_json(p) for p in layout.procs.values()]  # sshd x3, HAProxy lb1 and lb2
    procs += [Proc.of(int((layout.host_dir(h.name) / "run" / "app.pid").read_text()))
              for h in layout.app_hosts]  # the apps
    procs += [Proc.of(pid) for h in layout.all_hosts for pid in net.netns_pids(h.netns)]
    procs += processes_mentioning(f"{layout.run_dir}/")  # the SSH master
    procs += processes_mentioning(f"{layout.path}/lb1/")  # lb1's master and worker
    lb2 = Proc.from_json(layout.procs["haproxy:lb2"])
    procs += [Proc.of(pid) for pid in children(lb2.pid)]  # lb2's worker
    # 3 sshd + 1 SSH session + 2 apps + SSH master + 2 HAProxy x (master + worker)
    assert len({p.pid for p in procs}) == 11
    assert all(p.alive() for p in procs)
    shutil.rmtree(layout.path)  # lab.json, the inventory, the hosts' files: all gone

    # Without lab.json, down names what it can do about it.
    proc = rollout("lab", "down", "--dir", str(layout.path))
    assert proc.returncode == 0, proc.stderr
    assert "no lab in" in proc.stdout and f"rlab{layout.index}" in proc.stdout
    assert all(p.alive() for p in procs)

    proc = rollout("lab", "down", "--index", str(layout.index))
    assert proc.returncode == 0, proc.stderr
    assert f"lab rlab{layout.index} is down" in proc.stdout
    assert [p.pid for p in procs if p.alive()] == []
    assert [n for n in net.list_netns() if n.startswith(f"{layout.bridge}-")] == []
    assert net.lab_links(layout.index) == []
    assert not net.link_exists(layout.bridge)
    assert not [h.veth for h in layout.all_hosts if net.link_exists(h.veth)]
    assert not (RUN_ROOT / layout.bridge).exists()
    assert_lab_gone(layout)  # and the guard route stays
    again = rollout("lab", "down", "--index", str(layout.index))
    assert again.returncode == 0 and "nothing of lab" in again.stdout


def test_down_by_index_refuses_a_lab_that_still_has_its_directory(
        root_required: None, tmp_path: Path) -> None:
    layout = lab_mod.up(tmp_path / "lab", n_hosts=1)
    try:
        proc = rollout("lab", "down", "--index", str(layout.index))
        assert proc.returncode == 1 and f"--dir {layout.path}" in proc.stderr
        assert Layout.load(layout.path) is not None and lab_mod.running(layout)
    finally:
        lab_mod.down(layout.path)
    assert_lab_gone(layout)


# Runs the CLI as uid/gid 65534 (nobody). The interpreter may live where nobody cannot read
# (e.g. under /root), so the code is imported first and privileges are dropped before main().
# The CLI imports the lab only for `lab` commands: import it here too, as root.
_AS_NOBODY = """
import os, sys
import rollout_py.cli
import rollout_py.lab.cli
os.setgroups([]); os.setgid(65534); os.setuid(65534)
sys.argv = ["rollout", *sys.argv[1:]]
rollout_py.cli.main()
"""


def test_up_as_non_root_fails_clearly_and_creates_nothing(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o777)  # nobody could create the lab dir: it must not
    lab_dir = tmp_path / "lab"
    # Holding the machine's lab lock: no other test's lab comes or goes between the two looks
    # at the namespaces (the refused `up` never gets as far as that lock).
    with lab_mod._machine_lock():
        before = set(net.list_netns())
        proc = subprocess.run([sys.executable, "-c", _AS_NOBODY, "lab", "up", "--dir",
                               str(lab_dir)], capture_output=True, text=True, timeout=60,
                              cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)})
        after = set(net.list_netns())
    assert proc.returncode == 2, proc.stderr
    assert "needs root" in proc.stderr and "sudo rollout lab up" in proc.stderr
    assert not lab_dir.exists()
    assert after == before


def test_up_refuses_a_block_that_collides_with_a_route(root_required: None, tmp_path: Path) -> None:
    # The machine's own routes (here: loopback's 127.0.0.0/8 local route) must never be shadowed.
    proc = rollout("lab", "up", "--block", "127.0.0.0/16", "--dir", str(tmp_path / "lab"))
    assert proc.returncode != 0
    assert "overlaps the route" in proc.stderr
    assert not (tmp_path / "lab" / "lab.json").exists()


def test_status_without_a_lab_says_how_to_start_one(tmp_path: Path) -> None:
    proc = rollout("lab", "status", "--dir", str(tmp_path))
    assert proc.returncode == 1 and "rollout lab up" in proc.stderr


@pytest.mark.slow
def test_a_hundred_hosts_come_up_and_serve(root_required: None, tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab100"
    try:
        proc = rollout("lab", "up", "--hosts", "100", "--dir", str(lab_dir), timeout=600)
        assert proc.returncode == 0, proc.stderr
        info = json.loads(rollout("lab", "status", "--json", "--dir", str(lab_dir)).stdout)
        assert len(info["hosts"]) == 100
        assert all(h["sshd"] and h["version"] == "1.0" for h in info["hosts"])
        servers = info["lbs"][0]["servers"]
        assert len(servers) == 100 and all(s["op"] == "RUNNING" for s in servers.values())
    finally:
        layout = Layout.load(lab_dir)
        down = rollout("lab", "down", "--dir", str(lab_dir), timeout=600)
        assert down.returncode == 0, down.stderr
        if layout is not None:
            assert_lab_gone(layout)
