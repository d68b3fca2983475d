"""Ansible callback plugin: an Ansible run dies with the rollout controller that started it.

Why: ansible-runner starts ansible-playbook in a session of its own with SIGHUP ignored, and
Ansible's workers call setsid(); nothing told them when the controller was killed (kill -9,
OOM), so they ran the batch on. ansible-runner has no hook before exec, but Ansible loads this
plugin (on the callback path) in its main process before the first task. There it asks the
kernel (Linux ``PR_SET_PDEATHSIG``) for:

- SIGKILL to the main process when the controller dies;
- SIGTERM to each worker when the main process dies, however it dies (also ansible-runner's
  cancel and timeout, which SIGKILL the main process's group only and so missed the workers).
  A worker's own SIGTERM handler (Ansible's) kills its process group: the module processes
  and ssh clients of its task.

Why not SIGTERM to the main process: Ansible's handler would forward SIGTERM to the workers and
exit at once, so the worker's death signal arrives as a second SIGTERM after its handler has
restored the default action and before it has signalled its group, leaving the task running.
One signal per worker, from one place, has no such race.

Nothing is signalled by name. ControlPersist ssh masters detach on purpose and are not
touched; the executor closes them. Inert unless ``ROLLOUT_CONTROLLER_PID`` names the parent.
Loaded by Ansible, possibly under another interpreter: stdlib and ansible imports only.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: rollout_lifeline
    type: aggregate
    short_description: ends this run when the rollout controller that started it dies
    description:
      - Loaded by rollout_py; does nothing unless ROLLOUT_CONTROLLER_PID is set.
"""

ENV_VAR = "ROLLOUT_CONTROLLER_PID"  # rollout_py._lifeline.ENV_VAR
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

_armed = False
_prctl: Any = None  # resolved before any fork: no dlopen() in a child of a threaded process
_main_pid = 0
_in_main = False  # True only in the armed main process; forked children see it and reset it


def _die_with_parent(parent: int, sig: int) -> bool:
    """``sig`` to this process when ``parent`` dies; False if it already has.

    The kernel ties the signal to whoever is the parent at the prctl() call, so checking the
    parent afterwards closes the race where it died just before.
    """
    _prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    return os.getppid() == parent


def _tie_worker() -> None:
    """Runs in every child os.fork()ed by this process: direct children (Ansible's workers)
    die with the main process; their own forks are left alone."""
    global _in_main
    if not _in_main:
        return
    _in_main = False
    if not _die_with_parent(_main_pid, signal.SIGTERM):
        os._exit(1)


class CallbackModule(CallbackBase):  # type: ignore[misc]  # ansible has no type information
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "rollout_lifeline"
    CALLBACK_NEEDS_ENABLED = False  # loaded by being on the callback path

    def __init__(self) -> None:
        super().__init__()
        global _armed, _in_main, _main_pid, _prctl
        # Popped so nothing this run starts (a task running ansible-playbook) inherits it.
        controller = os.environ.pop(ENV_VAR, "")
        if _armed or not controller.isdigit() or not sys.platform.startswith("linux"):
            return
        _armed = _in_main = True
        _main_pid = os.getpid()
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
        # The controller must be the direct parent: ansible-runner's ssh-agent / process
        # isolation wrappers (unused by rollout_py) would put a process in between.
        if not _die_with_parent(int(controller), signal.SIGKILL):
            os.kill(_main_pid, signal.SIGKILL)  # the controller died while we started up
            return
        os.register_at_fork(after_in_child=_tie_worker)
