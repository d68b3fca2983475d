"""tests.childkit.running: a process that ended is not running, zombie or gone."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.childkit import running


def test_a_killed_unreaped_child_is_not_running_though_its_proc_entry_stays() -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert running(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead, left a zombie
        assert Path(f"/proc/{child.pid}").exists() and not running(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not running(child.pid)  # reaped: gone
