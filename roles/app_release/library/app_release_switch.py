#!/usr/bin/python
"""Points ``<root>/current`` at a staged release and restarts the app, in one round trip."""

from __future__ import annotations

DOCUMENTATION = r"""
module: app_release_switch
short_description: Switch current to a staged release and restart the app, in one round trip
description:
  - Reads where C(<root>/current) points, refuses a release that is not completely staged
    (its marker file missing) unless current already points at it, points current at the
    release atomically (a new symlink renamed over the old one) and, when the link changed or
    I(force_restart) is set, runs I(restart_command).
  - One module run for the whole switch, so the time a host spends out of rotation is the switch
    and the restart, not several round trips.
  - Supports check mode (reports what would change, the link's as a diff; nothing is run).
options:
  root:
    description: Absolute application root (holds C(releases/) and C(current)), not C(/).
    type: path
    required: true
  release:
    description:
      - The release directory current must point at, C(<root>/releases/<version>). Checked
        before anything else, its version as app_release_stage checks it.
    type: path
    required: true
  marker:
    description: File whose presence says the release is completely staged.
    type: path
    required: true
  restart_command:
    description: Command (no shell) run after the switch; none when empty.
    type: str
    default: ""
  force_restart:
    description: Restart even when current already pointed at the release.
    type: bool
    default: false
  staged:
    description:
      - The caller staged the release in this same run (in check mode its marker is not
        there yet); without it, a missing marker refuses the switch.
    type: bool
    default: false
  report_as:
    description:
      - When set, the result reports I(previous) as C(set_stats) would (C(ansible_stats),
        run-wide, aggregated) under C(rollout_previous_version), keyed by this name (the
        role passes C(inventory_hostname)). A successful result only; Ansible ignores the
        stats of a failed one.
    type: str
author: rollout_py
"""

EXAMPLES = r"""
- name: Switch and restart
  app_release_switch:
    root: /srv/app
    release: /srv/app/releases/2.0
    marker: /srv/app/releases/2.0/.app_release_complete
    restart_command: /srv/app/bin/appctl restart
"""

RETURN = r"""
previous:
  description: The release current pointed to before (its directory name), null if none.
  type: str
  returned: always
restarted:
  description: Whether the restart command ran (or would run, in check mode).
  type: bool
  returned: always
ansible_stats:
  description: I(previous) under C(rollout_previous_version), keyed by I(report_as).
  type: dict
  returned: when I(report_as) is set
"""

import json  # noqa: E402  # after the documentation, as Ansible modules are laid out
import os  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
from typing import Any  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

# A release's name, as app_release_stage checks it (a module is one self-contained file).
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}\Z")


def invalid_release(root: str, release: str) -> str | None:
    """What is wrong with the root or the release dir, naming the role's variable."""
    if not os.path.isabs(root) or not root.rstrip("/"):
        return f"invalid app_release_root {json.dumps(root)}: must be absolute and not /"
    name = os.path.basename(release.rstrip("/"))
    if (os.path.normpath(release) != os.path.join(os.path.normpath(root), "releases", name)
            or not VERSION.match(name) or ".." in name):
        return (f"invalid release {json.dumps(release)}: must be {root.rstrip('/')}/releases/"
                f"<app_release_version>, a version of letters, digits and . _ + - (starting "
                f"with a letter or digit, at most 64 characters), without '..'")
    return None


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "root": {"type": "path", "required": True},
            "release": {"type": "path", "required": True},
            "marker": {"type": "path", "required": True},
            "restart_command": {"type": "str", "default": ""},
            "force_restart": {"type": "bool", "default": False},
            "staged": {"type": "bool", "default": False},
            "report_as": {"type": "str"},
        },
        supports_check_mode=True,
    )
    p = module.params
    bad = invalid_release(p["root"], p["release"])
    if bad:
        module.fail_json(msg=bad, previous=None, restarted=False)
    current = os.path.join(p["root"], "current")
    release = os.path.normpath(p["release"])
    previous = None
    target = None
    if os.path.islink(current):
        link = os.readlink(current).rstrip("/")
        previous = os.path.basename(link) or None
        target = os.path.normpath(os.path.join(p["root"], link))  # a relative link too
    elif os.path.lexists(current):
        module.fail_json(msg=f"{current} exists and is not a symlink: refusing to replace it",
                         previous=None, restarted=False)
    if target != release and not (p["staged"] or os.path.exists(p["marker"])):
        module.fail_json(msg=f"release {os.path.basename(release)} is not staged "
                             f"({p['marker']} missing)", previous=previous, restarted=False)
    switch = target != release
    restart = bool(p["restart_command"].strip()) and (switch or p["force_restart"])
    result: dict[str, Any] = {"changed": switch or restart, "previous": previous,
                              "restarted": restart}
    if p["report_as"]:  # as set_stats reports it (run-wide, aggregated)
        result["ansible_stats"] = {"data": {"rollout_previous_version": {p["report_as"]: previous}},
                                   "per_host": False, "aggregate": True}
    if module._diff and switch:  # as ansible.builtin.file shows a link's change
        result["diff"] = {"before": {"path": current, "src": target or ""},
                          "after": {"path": current, "src": release}}
    if module.check_mode:
        module.exit_json(**result)
    if switch:
        temporary = f"{current}.app_release_switch.{os.getpid()}"
        try:
            if os.path.lexists(temporary):
                os.unlink(temporary)
            os.symlink(release, temporary)
            os.replace(temporary, current)
        except OSError as exc:
            module.fail_json(msg=f"cannot point {current} at {release}: {exc}",
                             previous=previous, restarted=False)
    if restart:
        rc, out, err = module.run_command(shlex.split(p["restart_command"]))
        result.update(rc=rc, stdout=out, stderr=err)
        if rc != 0:
            module.fail_json(msg=f"rc {rc}: {(err or out).strip() or 'restart failed'}",
                             **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
