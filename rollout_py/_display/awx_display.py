"""Ansible stdout callback: ansible-runner's ``awx_display`` without a ``runner_on_start`` event
per host and task.

Every job event costs the controller a partial file to read and remove and an encoded copy in
the output to decode (~0.3 ms of CPU), and Ansible a file and the encoding. A start event comes
before every host's result of every task, about 45 % of a run's events, and the controller
reads none (the result carries its own start time). The session's own tasks (named
``rollout: ...``) keep theirs: the first gate's start says the session is ready.
Loaded by Ansible in the runs ansible-runner starts (see ``rollout_py._display``).
"""

from __future__ import annotations

from typing import Any

from ansible_runner.display_callback.callback import awx_display as runner_display

DOCUMENTATION = runner_display.DOCUMENTATION
KEPT_PREFIX = "rollout: "  # tasks whose start events are kept


class CallbackModule(runner_display.CallbackModule):  # type: ignore[misc]  # no type information
    CALLBACK_NAME = "awx_display"

    def v2_runner_on_start(self, host: Any, task: Any) -> None:
        if str(task.get_name()).startswith(KEPT_PREFIX):
            super().v2_runner_on_start(host, task)
            return
        # What ansible-runner's does, but the event: the result's start time, and the default
        # callback's own output (nothing unless its show_per_host_start is set).
        self._host_start[host.get_name()] = runner_display.current_time()
        super(runner_display.CallbackModule, self).v2_runner_on_start(host, task)
