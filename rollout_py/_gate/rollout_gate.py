"""Ansible action plugin: a playbook session's gate before a batch.

Blocks, on the controller (no connection, no module), until the rollout controller writes one
line into the gate's FIFO: ``go N`` returns ``go: true`` (and the session's next task puts the
batch's hosts in the group its plays target); anything else (``stop``), or the FIFO's end (the
controller died), returns ``go: false``: the group stays empty, and so every later play.
The controller holds the FIFO open for reading and writing from before the playbook starts, so
opening it here never blocks and a line written early waits in the pipe.
Loaded by Ansible, possibly under another interpreter: stdlib and ansible imports only.
"""

from __future__ import annotations

from typing import Any

from ansible.plugins.action import ActionBase

DOCUMENTATION = """
    name: rollout_gate
    short_description: waits for the rollout controller's word before a batch
    description:
      - Used by rollout_py's playbook session only.
    options:
      fifo: {description: the gate's FIFO, required: true, type: path}
      batch: {description: the batch the gate opens, required: true, type: int}
"""


class ActionModule(ActionBase):  # type: ignore[misc]  # ansible has no type information
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: Any = None, task_vars: Any = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        batch = int(self._task.args["batch"])
        with open(str(self._task.args["fifo"]), encoding="utf-8") as fifo:
            line = fifo.readline().strip()
        go = line == f"go {batch}"
        result.update(changed=False, go=go, batch=batch,
                      msg=f"batch {batch}: " + ("go" if go else f"stopped ({line or 'EOF'})"))
        return result
