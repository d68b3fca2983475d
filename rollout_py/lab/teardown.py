"""Tearing a lab down: by its record (the PIDs and names in lab.json) or, when its directory
is gone, by its bridge index (everything of a lab is named after its bridge ``rlabN``)."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from rollout_py.errors import LabError, RolloutError
from rollout_py.lab import db, net, prometheus
from rollout_py.lab.layout import RUN_ROOT, Layout
from rollout_py.lab.procs import Proc, pids_in_mount_namespaces, stop_all, unix_socket_holders
from rollout_py.procs import close_ssh_masters


def teardown(layout: Layout) -> None:
    procs = [Proc.from_json(p) for p in layout.procs.values()]
    # Also a Prometheus whose PID ``up`` had no time to record (killed right after spawning it).
    procs += [p for p in prometheus.orphans(layout.bridge) if p not in procs]
    existing_ns = set(net.list_netns())
    for host in layout.all_hosts:
        if host.netns in existing_ns:
            for pid in net.netns_pids(host.netns):
                with contextlib.suppress(RolloutError):  # exited meanwhile
                    procs.append(Proc.of(pid))
    stop_all(procs)
    _close_ssh_masters(layout.run_dir)
    for host in layout.all_hosts:
        if host.netns in existing_ns:
            net.delete_netns(host.netns)
        net.delete_link(host.veth)
    net.delete_link(layout.bridge)
    shutil.rmtree(layout.run_dir, ignore_errors=True)
    _remove_files(layout.path)


def _remove_files(lab_dir: Path) -> None:
    """Removes what ``up`` wrote for hosts and users; a stray run after ``down`` must find no
    hosts, so the inventory and the specs go too, and Prometheus's config and data. Artifacts
    and logs stay."""
    shutil.rmtree(lab_dir / "hosts", ignore_errors=True)
    shutil.rmtree(prometheus.home(lab_dir), ignore_errors=True)
    db.remove_files(lab_dir)  # the database's cluster went with hosts/
    for name in ("inventory.ini", "rollout.yml", "rollout-canary.yml", "ansible.cfg"):
        (lab_dir / name).unlink(missing_ok=True)
    for name in ("ssh_config", "known_hosts"):
        (lab_dir / "ssh" / name).unlink(missing_ok=True)
    (lab_dir / "lab.json").unlink(missing_ok=True)


def teardown_index(index: int, lab_dir: Path | None) -> list[str]:
    """Removes lab ``rlab<index>`` without its lab.json; returns what it found and removed.

    Everything of a lab is named after its bridge: namespaces ``rlabN-<host>``, veths
    ``rlabNv<octet>``, the run directory ``/run/rollout-lab/rlabN``. Its processes are found
    without PIDs on record, and stopped by PID: those in its namespaces (sshd, the apps), those
    in the mount namespaces of its hosts (a remote LB's HAProxy), those holding a socket in
    its run directory (the first LB's HAProxy, SSH control masters), and its Prometheus (by
    the marker in its command line).
    """
    bridge = f"rlab{index}"
    run_dir = RUN_ROOT / bridge
    namespaces = [ns for ns in net.list_netns() if ns.startswith(f"{bridge}-")]
    links = net.lab_links(index)
    ns_pids = {pid for ns in namespaces for pid in net.netns_pids(ns)}
    pids = ns_pids | pids_in_mount_namespaces(ns_pids) | unix_socket_holders(run_dir) | \
        {p.pid for p in prometheus.orphans(bridge)}
    pids.discard(os.getpid())
    procs = []
    for pid in sorted(pids):
        with contextlib.suppress(RolloutError):  # exited meanwhile
            procs.append(Proc.of(pid))
    elsewhere = _lab_dir_of(procs, index)
    if elsewhere is not None:
        raise LabError(f"lab {bridge} still has its directory {elsewhere}: "
                       f"run `rollout lab down --dir {elsewhere}`")
    found = ([f"{len(namespaces)} host(s)"] if namespaces else []) + \
        ([f"{len(procs)} process(es)"] if procs else []) + \
        ([f"{len(links)} link(s)"] if links else [])
    stop_all(procs)
    _close_ssh_masters(run_dir)
    for ns in namespaces:
        net.delete_netns(ns)
    for link in sorted(links, key=lambda name: name == bridge):  # veths first, then the bridge
        net.delete_link(link)
    if run_dir.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        found.append(str(run_dir))
    if lab_dir is not None and _inventory_of(lab_dir, index):
        _remove_files(lab_dir)
        found.append(f"the inventory in {lab_dir}")
    return found


def _inventory_of(lab_dir: Path, index: int) -> bool:
    """Whether ``lab_dir`` holds the inventory ``up`` wrote for lab ``index`` (without lab.json,
    nothing else says the directory is that lab's, and a user's own files must never go)."""
    try:
        text = (lab_dir / "inventory.ini").read_text()
    except (OSError, UnicodeDecodeError):
        return False
    return text.startswith("# Written by `rollout lab up`") and \
        f"{RUN_ROOT / f'rlab{index}'}/" in text


def _lab_dir_of(procs: list[Proc], index: int) -> Path | None:
    """The directory of lab ``index`` if it still exists: the first LB's HAProxy was started
    with ``-f DIR/lb1/haproxy.cfg``. Then ``down --dir`` is the way, with its recorded PIDs."""
    for proc in procs:
        try:
            argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-f" not in argv[:-1] or not argv[0].endswith(b"haproxy"):
            continue
        cfg = Path(os.fsdecode(argv[argv.index(b"-f") + 1]))
        if not cfg.is_absolute():
            continue
        with contextlib.suppress(LabError):
            layout = Layout.load(cfg.parent.parent)
            if layout is not None and layout.index == index:
                return layout.path
    return None


def _close_ssh_masters(run_dir: Path) -> None:
    """Asks SSH multiplexing masters on lab hosts to exit (they would linger for ControlPersist)."""
    if run_dir.exists():
        close_ssh_masters([*run_dir.glob("cm-*"), *(run_dir / "cp").glob("*")])
