"""Processes the lab starts: run commands, identify a process by (pid, start time), stop it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from rollout_py.errors import LabError


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


def spawn(argv: Sequence[str], log_path: str) -> subprocess.Popen[bytes]:
    """Starts a daemon in its own session with stdout/stderr appended to ``log_path``."""
    with open(log_path, "ab") as log:
        child = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 start_new_session=True)
    _CHILDREN[child.pid] = child
    return child


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]


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
            raise LabError(f"process {pid} exited right after it started")
        return cls(pid, st)

    def alive(self) -> bool:
        """Running and still the same process. A zombie is not alive (PID 1 may reap late)."""
        _reap(self.pid)
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
        raise LabError(f"processes {still} did not exit after SIGKILL")
