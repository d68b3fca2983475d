"""Named points where a test can stop the controller for good (kill -9 it there): with
``ROLLOUT_FAILPOINT=<name>`` in its environment, the controller touches the file
``ROLLOUT_FAILPOINT_FILE`` on reaching that point and waits there until it is killed.

Off unless both variables are set; a point costs one environment lookup. For the lab tests
that need a crash between two actions no event separates (e.g. two LBs' map commits).
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def hit(name: str) -> None:
    """Stops here forever if the environment names this point (see the module)."""
    if os.environ.get("ROLLOUT_FAILPOINT") != name:
        return
    marker = os.environ.get("ROLLOUT_FAILPOINT_FILE")
    if not marker:
        return
    Path(marker).write_text(f"{os.getpid()}\n")
    while True:  # until the test's kill -9
        time.sleep(3600)
