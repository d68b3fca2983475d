"""Where the ``rollout_gate`` Ansible action plugin lives (loaded by Ansible, not imported by
rollout_py): the task at which a playbook session waits for the controller's word before each
batch. See :mod:`rollout_py.playbook_session`.

Example:
    >>> from pathlib import Path
    >>> (Path(PLUGIN_DIR) / "rollout_gate.py").is_file()
    True
"""

from __future__ import annotations

from pathlib import Path

PLUGIN_DIR = str(Path(__file__).resolve().parent)
