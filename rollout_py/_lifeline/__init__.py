"""Where the ``rollout_lifeline`` Ansible callback plugin lives, and how the executor arms it.

The plugin (``rollout_lifeline.py`` in this directory, loaded by Ansible, not imported by
rollout_py) ties every ansible-playbook / ansible run to the controller process that started it,
so a ``kill -9`` of the controller leaves no Ansible process running on.

Example:
    >>> env = lifeline_env({})
    >>> env["ANSIBLE_CALLBACK_PLUGINS"] == PLUGIN_DIR and ENV_VAR in env
    True
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

PLUGIN_DIR = str(Path(__file__).resolve().parent)
# The plugin stays inert unless this names its parent: a playbook run by hand, or one that
# a task starts, is never affected. (The plugin holds the same name; a unit test checks.)
ENV_VAR = "ROLLOUT_CONTROLLER_PID"


def lifeline_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Variables that make an Ansible run started by this process load and arm the plugin.

    ``environ`` is the environment the run would otherwise get: its own callback plugin path is
    kept after ours (ansible-runner appends its event callback after both).
    """
    user = environ.get("ANSIBLE_CALLBACK_PLUGINS")
    return {
        "ANSIBLE_CALLBACK_PLUGINS": f"{PLUGIN_DIR}{os.pathsep}{user}" if user else PLUGIN_DIR,
        ENV_VAR: str(os.getpid()),
    }
