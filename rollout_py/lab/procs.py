"""Processes the lab starts: commands it runs, daemons it spawns (and reaps once stopped)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from rollout_py.errors import LabError
from rollout_py.procs import Proc, _before_check, stop_all

__all__ = ["Proc", "pids_in_mount_namespaces", "run", "spawn", "stop_all",
           "unix_socket_holders"]


def run(cmd: Sequence[str], *, check: bool = True, input: str | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Runs a command, raising LabError with its stderr when it fails and ``check`` is set."""
    try:
        proc = subprocess.run(list(cmd), input=input, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{' '.join(cmd)}: {exc}") from exc
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


# Daemons this process started. Keeping their Popen objects lets a long-lived caller (a test
# session, an API user) reap them once stopped instead of collecting zombies.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]


_before_check.append(_reap)


def spawn(argv: Sequence[str], log_path: str) -> subprocess.Popen[bytes]:
    """Starts a daemon in its own session with stdout/stderr appended to ``log_path``."""
    with open(log_path, "ab") as log:
        child = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 start_new_session=True)
    _CHILDREN[child.pid] = child
    return child


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _mount_ns(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def pids_in_mount_namespaces(pids: Iterable[int]) -> set[int]:
    """Every process sharing a mount namespace with one of ``pids`` (a lab host's daemons
    that keep the root network namespace, like a remote LB's HAProxy). The namespaces of this
    process and of PID 1 are never followed: they hold the whole machine."""
    machine = {_mount_ns("self"), _mount_ns(1), None}
    wanted = {_mount_ns(pid) for pid in pids} - machine
    if not wanted:
        return set()
    return {pid for pid in _pids() if _mount_ns(pid) in wanted}


def _parent_of_same_program(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        same = os.readlink(f"/proc/{pid}/exe") == os.readlink(f"/proc/{ppid}/exe")
    except (OSError, ValueError, IndexError):
        return None
    return ppid if same and ppid > 1 else None


def unix_socket_holders(directory: Path) -> set[int]:
    """Processes holding a unix socket bound to a path under ``directory`` (listeners such as
    HAProxy's admin socket and SSH control masters), in this network namespace, with their
    parent when it runs the same program (HAProxy's master, whose worker holds the socket)."""
    prefix = f"{directory}/"
    inodes = set()
    try:
        with open("/proc/net/unix", encoding="utf-8", errors="replace") as fh:
            next(fh, None)  # header
            for line in fh:
                fields = line.split(None, 7)
                if len(fields) == 8 and fields[7].rstrip("\n").startswith(prefix):
                    inodes.add(f"socket:[{fields[6]}]")
    except OSError:
        return set()
    holders = set()
    for pid in _pids() if inodes else []:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    holders.add(pid)
                    break
            except OSError:
                continue
    parents = {_parent_of_same_program(pid) for pid in holders}
    return holders | {pid for pid in parents if pid is not None}
