"""Where rollout_py's ``awx_display`` callback lives (loaded by Ansible, not imported by
rollout_py): ansible-runner's own event callback, less the events the controller never reads.
Local runs point ansible-runner at this directory (``AWX_LIB_DIRECTORY``, the variable
ansible-runner reads for its callback directory); execution nodes run ansible-runner's own.

Example:
    >>> from pathlib import Path
    >>> (Path(CALLBACK_DIR) / "awx_display.py").is_file()
    True
"""

from __future__ import annotations

from pathlib import Path

CALLBACK_DIR = str(Path(__file__).resolve().parent)
# "failures": the run's ok and skipped results make no job event nor output line (see
# awx_display); anything else, or unset: they do.
RESULTS_ENV = "ROLLOUT_RESULT_EVENTS"
