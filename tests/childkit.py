"""Child processes a test starts (lock holders, lease contenders), stopped by the test that
started them, by their Popen handle, even when the test fails."""

from __future__ import annotations

import subprocess


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
