"""Execution nodes (``lab up --exec-nodes N``): hosts exec1..execN that run Ansible work for
the controller (``ansible-runner worker`` over SSH, as rollout.yml's ``executors`` names them).

An execution node is not like an app host. It must see the machine's whole filesystem: the
project's venv (its ansible-runner and Ansible), the lab directory with the lab's SSH key,
known_hosts and artifacts, which the inventory's ``[all:vars]`` name by absolute path. So it
gets no private /srv /root /run /tmp; it gets its own network namespace (a veth on the lab
bridge, like every host), its own UTS namespace (hostname execN) and its own mount namespace,
in which exactly one thing differs: the lab's ``ssh/ssh_config`` is bind-mounted over by a copy
whose ``BindAddress`` is the node's own address (the lab's binds to the gateway, an address
that does not exist inside the node's network namespace). Its sshd's config, host key and
authorized keys live in the node's directory ``DIR/hosts/execN`` (absolute paths).

:func:`kill_node` kills a node the way a machine dies: SIGKILL to everything in its network
namespace. Exec nodes are never in inventory.ini: a deploy never targets them.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rollout_py.errors import InputError, LabError
from rollout_py.lab import hosts, net
from rollout_py.lab.layout import MAX_EXEC_NODES, HostSpec, Layout
from rollout_py.lab.procs import Proc, run

# sshd's privilege-separation directory; an exec node sees the machine's /run.
PRIVSEP_DIR = Path("/run/sshd")


def validate(n_exec: int) -> None:
    if not 0 <= n_exec <= MAX_EXEC_NODES:
        raise InputError(f"--exec-nodes must be between 0 and {MAX_EXEC_NODES}, not {n_exec}")


def runner() -> str:
    """The ansible-runner a node runs: this Python's (the node sees the whole filesystem)."""
    return f"{sys.prefix}/bin/ansible-runner"


def spec_section(layout: Layout) -> str:
    """rollout.yml's ``executors`` section; empty without execution nodes."""
    if not layout.exec_hosts:
        return ""
    nodes = "".join(f"    - url: ssh://root@{h.name}\n      runner: {runner()}\n"
                    for h in layout.exec_hosts)
    return f"executors:\n  ssh_config: ssh/ssh_config\n  nodes:\n{nodes}"


def node_ssh_config(layout: Layout, host: HostSpec, lab_config: str) -> str:
    """The lab's SSH config (``lab_config``, its text) as the node sees it: bound to the node's
    own address instead of the gateway."""
    old, new = f"    BindAddress {layout.gateway}\n", f"    BindAddress {host.address}\n"
    if old not in lab_config:
        raise LabError(f"{layout.ssh_config} has no '{old.strip()}' line to rebind for "
                       f"{host.name}")
    return lab_config.replace(old, new)


def prepare(layout: Layout, host: HostSpec, pubkey: str) -> str:
    """Writes the node's sshd config, host key, authorized keys and SSH config (the lab's
    ``ssh_config`` must exist); returns its host key."""
    base = layout.host_dir(host.name)
    base.mkdir(parents=True, exist_ok=True)
    authorized = base / "authorized_keys"
    authorized.write_text(pubkey)
    key = base / "ssh_host_ed25519_key"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{host.name}",
             "-f", str(key)])
    (base / "sshd_config").write_text(
        hosts.sshd_config(host, host_key=str(key), authorized_keys=str(authorized)))
    (base / "ssh_config").write_text(
        node_ssh_config(layout, host, layout.ssh_config.read_text()))
    if not PRIVSEP_DIR.is_dir():
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(PRIVSEP_DIR, 0o755)
    return " ".join((base / "ssh_host_ed25519_key.pub").read_text().split()[:2])


def start(layout: Layout, host: HostSpec, pubkey: str, host_keys: dict[str, str]) -> Proc:
    """Prepares and starts the node (``lab up``); records its host key in ``host_keys``."""
    host_keys[host.name] = prepare(layout, host, pubkey)
    return start_sshd(layout, host)


def start_sshd(layout: Layout, host: HostSpec) -> Proc:
    """Starts the node's sshd in its network namespace, under its own UTS namespace and a mount
    namespace that differs from the machine's only in the lab's ``ssh_config``."""
    base = layout.host_dir(host.name)
    script = (f"set -e; hostname {shlex.quote(host.name)}; "
              f"mount --bind {shlex.quote(str(base / 'ssh_config'))} "
              f"{shlex.quote(str(layout.ssh_config))}; "
              f"exec /usr/sbin/sshd -D -e -f {shlex.quote(str(base / 'sshd_config'))}")
    return hosts.spawn_sshd(layout, host, script)


def kill_node(layout: Layout, name: str, *, timeout: float = 10.0) -> list[int]:
    """Kills execution node ``name`` the way a machine dies: SIGKILL to every process in its
    network namespace (its sshd and everything under it: sessions, ansible-runner workers,
    SSH masters), until none is left. Returns the PIDs killed.

    The node stays dead: its namespace and veth stay, unreachable, until ``lab down``;
    ``running()`` is then false for the lab (its sshd is recorded and gone).
    """
    host = next((h for h in layout.exec_hosts if h.name == name), None)
    if host is None:
        have = ", ".join(h.name for h in layout.exec_hosts) or "none"
        raise InputError(f"{name!r} is not an execution node of this lab (have: {have})")
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        # Processes forked while we kill show up in the next listing. A killed process
        # (a zombie until reaped) is no longer listed: it has left every namespace.
        pids = [pid for pid in net.netns_pids(host.netns) if pid != os.getpid()]
        if not pids:
            return killed
        if time.monotonic() > deadline:
            raise LabError(f"{name}: processes {pids} still run in {host.netns} after SIGKILL")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if pid not in killed:
                killed.append(pid)
        time.sleep(0.02)


def status(layout: Layout) -> list[dict[str, Any]]:
    """One row per execution node: its address and whether its sshd runs."""
    rows = []
    for host in layout.exec_hosts:
        proc = layout.procs.get(f"sshd:{host.name}")
        rows.append({"name": host.name, "address": host.address,
                     "sshd": bool(proc and Proc.from_json(proc).alive()),
                     "url": f"ssh://root@{host.name}"})
    return rows
