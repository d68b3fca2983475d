"""Action plugin of the role's ``app_release_stage`` module: one module run per host, and the
release archive sent only where it can be needed.

* An archive up to ``transfer_first_max`` bytes goes to the host first, with the one module run
  (which unpacks it only when the release is not staged yet): a module run is a Python start
  on the host, which costs more than sending a small archive again to a host that has it.
* A bigger archive (or ``transfer_first_max: 0``): a first module run asks; on a host whose
  release is already staged (or current) that is all; on one that needs it, the check that
  the artifact exists on the controller, its transfer into the remote tmp dir and a second
  module run that unpacks it (and prunes).
* In check mode the first run says everything (what it would unpack and remove); nothing is
  transferred. A run that only prunes (``stage: false``) sends nothing. An artifact missing
  on the controller fails only a host that needs it (the first run asks).
"""

from __future__ import annotations

import json
import os
from typing import Any

from ansible.errors import AnsibleError
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

MODULE = "ansible.legacy.app_release_stage"
TRANSFER_FIRST_MAX = 16 * 1024 * 1024  # the role's app_release_transfer_first_max default


class ActionModule(ActionBase):  # type: ignore[misc]  # ansible ships no type information
    # The remote tmp dir is made only when the artifact goes over (not before every run).
    TRANSFERS_FILES = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        del tmp  # no longer has any effect
        args = dict(self._task.args)
        artifact = args.pop("artifact", None)
        first_max = args.pop("transfer_first_max", TRANSFER_FIRST_MAX)
        if "src" in args:
            raise AnsibleError("app_release_stage: give the controller's archive as artifact, "
                               "not src (the action plugin sets src to the transferred copy)")
        try:
            first_max = int(first_max)
        except (TypeError, ValueError):
            raise AnsibleError("app_release_stage: transfer_first_max (app_release_transfer_"
                               f"first_max) must be a number of bytes, not {first_max!r}"
                               ) from None

        # The module of the same name as resolved for this task: ansible.legacy.* from the
        # role's library/ (the role used from a roles path), rollout.fleet.* when the role runs
        # from the collection (a collection's roles have no library/ of their own).
        module = self._task.resolved_action or MODULE
        # The archive's size on the controller; None when it is not there (then only a host
        # that needs it fails, once its first run says so).
        size = (os.path.getsize(artifact)
                if isinstance(artifact, str) and os.path.isfile(artifact) else None)
        if (size is not None and size <= first_max and not self._task.check_mode
                and boolean(args.get("stage", True), strict=False)):
            result.update(self._with_artifact(artifact, module, args, task_vars))
            return result

        inspected = self._execute_module(module_name=module, module_args=args,
                                         task_vars=task_vars)
        result.update(inspected)
        if inspected.get("failed") or not inspected.get("needs_artifact"):
            return result

        if size is None:
            result.update(failed=True, changed=False,
                          msg=f"artifact {json.dumps(artifact)} not found on the controller")
            return result
        if self._task.check_mode:
            # Shown like a debug message (the old role's "would unpack" task did that).
            result.update(msg=f"would unpack {artifact} into {args.get('release')}",
                          _ansible_verbose_always=True)
            return result
        result.update(self._with_artifact(artifact, module, args, task_vars))
        return result

    def _with_artifact(self, artifact: str, module: str, args: dict[str, Any],
                       task_vars: dict[str, Any] | None) -> dict[str, Any]:
        """The module run with the archive transferred into the remote tmp dir as ``src``
        (removed with the tmp dir, whatever the run did)."""
        local = self._loader.get_real_file(os.path.abspath(artifact))  # decrypts a vaulted one
        try:
            tmpdir = self._connection._shell.tmpdir or self._make_tmp_path()
            remote = self._connection._shell.join_path(tmpdir, "artifact")
            self._transfer_file(local, remote)
            # readable when becoming an unprivileged user
            self._fixup_perms2((tmpdir, remote), execute=False)
            staged: dict[str, Any] = self._execute_module(
                module_name=module, module_args={**args, "src": remote}, task_vars=task_vars)
        finally:
            self._loader.cleanup_tmp_file(local)
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return staged
