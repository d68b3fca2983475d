"""Ansible stdout callback: ansible-runner's ``awx_display`` without a ``runner_on_start`` event
per host and task, an ok event of a role's argument check, or an item event of the session's
own loops.

Every job event costs the controller a partial file to read and remove and an encoded copy in
the output to decode (~0.3 ms of CPU), and Ansible a file and the encoding. A start event comes
before every host's result of every task, about 45 % of a run's events, and the controller
reads none (the result carries its own start time). The session's own tasks (named
``rollout: ...``) keep theirs: the first gate's start says the session is ready. Their loops'
items (a batch joining its group: one item per host) make no event nor output line: the task's
result has every item's result, and nothing reads them one by one. The check Ansible runs
before a role with an argument spec (``validate_argument_spec``, per host, each time the role
runs) makes no event nor line when it passes, a third of a batch's events with the app_release
role; a failed check is a failure like any other.
A run the controller reads no ok result of (the stage: ``ROLLOUT_RESULT_EVENTS=failures``) makes
no event nor line for an ok or skipped result, as Ansible's own ``display_ok_hosts`` and
``display_skipped_hosts`` off, less the event: one per host and task otherwise. Its failures,
unreachables, tasks and recap stay, and what its results report through set_stats reaches the
controller whole in the stats event (``artifact_data``).
Loaded by Ansible in the runs ansible-runner starts (see ``rollout_py._display``).
"""

from __future__ import annotations

import os
from typing import Any

from ansible_runner.display_callback.callback import awx_display as runner_display

from rollout_py._display import RESULTS_ENV

DOCUMENTATION = runner_display.DOCUMENTATION
KEPT_PREFIX = "rollout: "  # the session's own tasks: their start events kept, items not
# Actions whose passing results make no event (the task's resolved name, e.g.
# ansible.builtin.validate_argument_spec, ends with one of these).
QUIET_OK = ("validate_argument_spec",)


class CallbackModule(runner_display.CallbackModule):  # type: ignore[misc]  # no type information
    CALLBACK_NAME = "awx_display"

    def __init__(self) -> None:
        super().__init__()
        self._failures_only = os.environ.get(RESULTS_ENV) == "failures"

    def v2_runner_on_start(self, host: Any, task: Any) -> None:
        if str(task.get_name()).startswith(KEPT_PREFIX):
            super().v2_runner_on_start(host, task)
            return
        # What ansible-runner's does, but the event: the result's start time, and the default
        # callback's own output (nothing unless its show_per_host_start is set).
        self._host_start[host.get_name()] = runner_display.current_time()
        super(runner_display.CallbackModule, self).v2_runner_on_start(host, task)

    def v2_runner_item_on_ok(self, result: Any) -> None:
        if self._failures_only or str(result._task.get_name()).startswith(KEPT_PREFIX):
            return  # no event, no line (the default callback's would be one more event)
        super().v2_runner_item_on_ok(result)

    def v2_runner_item_on_skipped(self, result: Any) -> None:
        if self._failures_only or str(result._task.get_name()).startswith(KEPT_PREFIX):
            return  # a batch that never joins (the session stopped at its gate)
        super().v2_runner_item_on_skipped(result)

    def v2_runner_on_ok(self, result: Any) -> None:
        if self._failures_only or str(result._task.action).rsplit(".", 1)[-1] in QUIET_OK:
            return  # no event, no line
        super().v2_runner_on_ok(result)

    def v2_runner_on_skipped(self, result: Any) -> None:
        if self._failures_only:
            return  # no event, no line
        super().v2_runner_on_skipped(result)
