"""Processes by identity: (pid, start time), so a reused pid is never mistaken for ours;
stopping them by PID; finding what a dead controller left running."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rollout_py.errors import RolloutError
from rollout_py.ssh_mux import MuxError, terminate_master

# Called before a liveness check; the lab registers a reaper for the daemons it spawned.
_before_check: list[Callable[[int], None]] = []


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return text[text.rfind(")") + 2:].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it does not exist."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


@dataclass(frozen=True, slots=True)
class Proc:
    """A process the lab started, identified by pid and start time (so a reused pid is not ours)."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> Proc:
        st = start_time(pid)
        if st is None:
            raise RolloutError(f"process {pid} exited right after it started")
        return cls(pid, st)

    def alive(self) -> bool:
        """Running and still the same process. A zombie is not alive (PID 1 may reap late)."""
        for hook in _before_check:
            hook(self.pid)
        fields = _stat_fields(self.pid)
        if not fields or fields[0] in ("Z", "X"):
            return False
        return int(fields[19]) == self.start

    def comm(self) -> str:
        try:
            with open(f"/proc/{self.pid}/comm", encoding="utf-8") as fh:
                return fh.read().strip()
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; returns once the process is gone."""
        stop_all([self], timeout=timeout)

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "start": self.start}

    @classmethod
    def from_json(cls, data: dict[str, int]) -> Proc:
        return cls(int(data["pid"]), int(data["start"]))


def _signal(procs: Sequence[Proc], sig: int) -> None:
    for proc in procs:
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)


def stop_all(procs: Sequence[Proc], timeout: float = 10.0) -> None:
    """Stops several processes at once: SIGTERM to all, SIGKILL to those left after timeout."""
    _signal(procs, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(p.alive() for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in procs if p.alive()]
    if left:
        _signal(left, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(p.alive() for p in left) and time.monotonic() < deadline:
            time.sleep(0.05)
    still = [p.pid for p in procs if p.alive()]
    if still:
        raise RolloutError(f"processes {still} did not exit after SIGKILL")


def processes_mentioning(needle: str) -> list[Proc]:
    """Processes whose command line contains ``needle`` (e.g. a deploy's own run directory)."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            with contextlib.suppress(RolloutError):
                found.append(Proc.of(int(entry)))
    return found


def stop_leftovers(runs_dir: Path, control_dir: str | None) -> list[int]:
    """Stops what a killed controller left running: its ansible processes (their command lines
    name the deploy's run directory) and its SSH masters. Returns the PIDs stopped."""
    procs = [p for p in processes_mentioning(str(runs_dir)) if p.alive()]
    if control_dir:
        procs += [p for p in processes_mentioning(control_dir) if p.alive()]
    stop_all(procs, timeout=10)
    if control_dir:
        close_control_dir(control_dir)
    return [p.pid for p in procs]


def close_control_dir(control_dir: str) -> None:
    """A deploy's SSH control directory: its masters asked to exit, then the directory
    removed (by its deploy's clean-up, or by the next command after a kill -9)."""
    close_ssh_masters(Path(control_dir).glob("*"))
    shutil.rmtree(control_dir, ignore_errors=True)


def close_ssh_masters(sockets: Iterable[Path], *, budget: float = 20.0) -> None:
    """Asks each OpenSSH multiplexing master (ControlPersist) behind ``sockets`` to exit,
    instead of letting it linger; non-sockets are skipped, the whole call is time-bounded.
    Through the master's control protocol (rollout_py.ssh_mux); ``ssh -O exit`` where that
    answer is not what a master says."""
    deadline = time.monotonic() + budget
    for sock in sockets:
        left = deadline - time.monotonic()
        if not sock.is_socket() or left <= 0:
            continue
        try:
            terminate_master(sock, timeout=min(5.0, left))
        except (MuxError, EOFError):
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "host"],
                           capture_output=True, timeout=10, check=False)
        except OSError:
            continue  # nobody listens there (a master that exited), or it does not answer
