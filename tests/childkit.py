"""Child processes a test starts (lock holders, lease contenders), stopped by the test that
started them, by their Popen handle, even when the test fails; and whether a pid still runs."""

from __future__ import annotations

import subprocess

from rollout_py.procs import Proc, start_time


def running(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie does not (a killed process whose parent died too stays
    in /proc until PID 1 reaps it, tens of seconds later on some machines)."""
    start = start_time(pid)
    return start is not None and Proc(pid, start).alive()


class ChildProcs:
    """Keeps the processes a test started; ``close()`` kills those still running and reaps all.

    Example:
        >>> kids = ChildProcs()
        >>> kids.close()
    """

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
