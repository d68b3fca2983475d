"""Processes the lab starts: commands it runs, daemons it spawns (and reaps once stopped)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from rollout_py.errors import LabError
from rollout_py.procs import Proc, _before_check, stop_all

__all__ = ["Proc", "run", "spawn", "stop_all"]


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
