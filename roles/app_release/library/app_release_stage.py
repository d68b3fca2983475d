#!/usr/bin/python
"""Stages a release (unpacks its archive, marks it complete) and prunes old releases, in one
module run per step (the role's ``app_release_stage`` action plugin drives it)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: app_release_stage
short_description: Stage a release and prune old releases in as few round trips as possible
description:
  - Reads where C(<root>/current) points (the previous release), whether the release is
    already completely staged (its marker file present, or current already points at it), and
    when it is not and I(src) is given, stages it - removes an incomplete release directory,
    creates it (mode 0755), unpacks the tar archive I(src) into it with Python's tarfile
    (members with absolute paths, escaping the directory, links pointing outside it or device
    files are refused) and writes the marker last. Then, when I(prune) is set, removes all but
    the I(keep) newest release directories (by mtime), never the release itself nor the one
    current pointed to.
  - Without I(src), a release that needs staging is not staged; the module returns
    C(needs_artifact=true) (and prunes nothing yet, except in check mode). The action plugin of
    the same name gives a small archive with the first run (one module run per host; a host
    whose release is staged unpacks nothing), and uses C(needs_artifact) to transfer a big
    one only where it is needed (a second run there).
  - Supports check mode (reports what it would unpack and remove, the releases as a diff; the
    release that would be staged counts as the newest when pruning). Changes nothing.
options:
  root:
    description: Absolute application root (holds C(releases/) and C(current)), not C(/).
    type: path
    required: true
  release:
    description: The release directory (C(<root>/releases/<version>)).
    type: path
    required: true
  marker:
    description: File whose presence says the release is completely staged; written last.
    type: path
    required: true
  version:
    description:
      - The release's name (the basename of I(release)), checked before anything else - a
        letter or digit, then letters, digits and C(. _ + -), at most 64 characters, no C(..).
    type: str
    required: true
  keep:
    description: Number of newest release directories to keep when pruning (at least 1).
    type: int
    default: 5
  stage:
    description: Stage the release (when false, only read current and prune).
    type: bool
    default: true
  prune:
    description: Remove old releases.
    type: bool
    default: true
  src:
    description:
      - Path on the host of the release archive (a tar, optionally compressed) to unpack. It is
        removed once unpacked. Without it a release that needs staging is reported
        (C(needs_artifact)), not staged.
    type: path
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
- name: Stage and prune (the action plugin transfers the artifact when needed)
  app_release_stage:
    root: /srv/app
    release: /srv/app/releases/2.0
    marker: /srv/app/releases/2.0/.app_release_complete
    version: "2.0"
    keep: 5
    artifact: /srv/artifacts/app-2.0.tar.gz
"""

RETURN = r"""
previous:
  description: The release current pointed to (its directory name), null if none.
  type: str
  returned: always
staged:
  description:
    - The release is completely staged after this run (in check mode, would be), or current
      points at it.
  type: bool
  returned: always
unpacked:
  description: The archive was (in check mode, would be) unpacked in this run.
  type: bool
  returned: always
needs_artifact:
  description: The release needs staging and no I(src) was given (nothing was staged).
  type: bool
  returned: always
removed:
  description: Releases removed by the prune (in check mode, that would be removed).
  type: list
  elements: str
  returned: always
ansible_stats:
  description: I(previous) under C(rollout_previous_version), keyed by I(report_as).
  type: dict
  returned: when I(report_as) is set
"""

import contextlib  # noqa: E402  # after the documentation, as Ansible modules are laid out
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import stat  # noqa: E402
import tarfile  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from typing import Any  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402


class UnsafeArchive(Exception):
    pass


# A release's name: what may go into a path and a command (app_release_switch checks the same).
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}\Z")


def invalid_settings(version: str, root: str, keep: int) -> str | None:
    """What is wrong with the settings, naming the role's variable; None if nothing."""
    if not VERSION.match(version) or ".." in version:
        return (f"invalid app_release_version {json.dumps(version)}: must be a string of "
                f"letters, digits and . _ + - (starting with a letter or digit, at most 64 "
                f"characters), without '..'")
    if not os.path.isabs(root) or not root.rstrip("/"):
        return f"invalid app_release_root {json.dumps(root)}: must be absolute and not /"
    if keep < 1:
        return f"invalid app_release_keep {keep}: must be >= 1"
    return None


def reported(host: str | None, previous: str | None) -> dict[str, Any]:
    """The result's part that reports ``previous`` as set_stats does (run-wide, aggregated)."""
    if not host:
        return {}
    return {"ansible_stats": {"data": {"rollout_previous_version": {host: previous}},
                              "per_host": False, "aggregate": True}}


def read_previous(root: str) -> str | None:
    """The release ``<root>/current`` points to (as the role's stat + basename did)."""
    current = os.path.join(root, "current")
    if not os.path.islink(current):
        return None
    return os.path.basename(os.readlink(current).rstrip("/")) or None


def installed(releases: str) -> list[str]:
    """Release directories (not symlinks, not hidden), newest mtime first."""
    try:
        names = sorted(os.listdir(releases))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if name.startswith("."):
            continue
        try:
            st = os.lstat(os.path.join(releases, name))
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            found.append((st.st_mtime, name))
    return [name for _, name in sorted(found, key=lambda item: item[0], reverse=True)]


def remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top + os.sep)


def safe_members(tar: tarfile.TarFile, dest: str) -> Iterator[tarfile.TarInfo]:
    """The archive's members, each checked just before it is extracted (so that a symlink
    extracted earlier cannot lead a later member out of ``dest``)."""
    top = os.path.realpath(dest)
    for member in tar:
        name = member.name
        parts = name.split("/")
        if name.startswith("/") or ".." in parts:
            raise UnsafeArchive(f"member {name!r} has an absolute path or a '..' component")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise UnsafeArchive(f"member {name!r} is not a file, directory or link")
        target = os.path.join(top, name)
        if not _inside(os.path.realpath(os.path.dirname(target.rstrip("/"))), top):
            raise UnsafeArchive(f"member {name!r} would be extracted outside the release")
        if member.issym():
            link = member.linkname
            if os.path.isabs(link):
                raise UnsafeArchive(f"symlink {name!r} points to an absolute path ({link})")
            pointed = os.path.realpath(os.path.join(os.path.dirname(target), link))
            if not _inside(pointed, top):
                raise UnsafeArchive(f"symlink {name!r} points outside the release ({link})")
        elif member.islnk():
            link = member.linkname
            if os.path.isabs(link) or ".." in link.split("/"):
                raise UnsafeArchive(f"hard link {name!r} points outside the release ({link})")
            if not _inside(os.path.realpath(os.path.join(top, link)), top):
                raise UnsafeArchive(f"hard link {name!r} points outside the release ({link})")
        # no setuid/setgid/sticky bits from an archive
        member.mode &= 0o777
        yield member


def unpack(src: str, release: str, marker: str) -> None:
    """Wipes ``release``, creates it (0755, and its missing parents), unpacks ``src`` into it and
    writes ``marker`` last."""
    remove(release)
    missing = []
    parent = os.path.dirname(release)
    while parent and not os.path.lexists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for path in [*reversed(missing), release]:
        os.mkdir(path)
        os.chmod(path, 0o755)
    # Every member is checked by safe_members (3.12+ would warn without a filter).
    trusted: dict[str, Any] = {}
    if hasattr(tarfile, "fully_trusted_filter"):
        trusted["filter"] = "fully_trusted"
    with tarfile.open(src, "r:*") as tar:
        tar.extractall(release, members=safe_members(tar, release), **trusted)
    # A later symlink can change where an earlier one resolves: check them all once unpacked.
    top = os.path.realpath(release)
    for directory, dirs, files in os.walk(release):
        for name in dirs + files:
            path = os.path.join(directory, name)
            if os.path.islink(path) and not _inside(os.path.realpath(path), top):
                raise UnsafeArchive(f"symlink {os.path.relpath(path, release)!r} points "
                                    f"outside the release ({os.readlink(path)})")
    os.chmod(release, 0o755)  # an archive's "." member may have set other bits
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.close(fd)
    os.chmod(marker, 0o644)


def listing(names: list[str]) -> str:
    return "".join(f"{name}\n" for name in sorted(names))


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "root": {"type": "path", "required": True},
            "release": {"type": "path", "required": True},
            "marker": {"type": "path", "required": True},
            "version": {"type": "str", "required": True},
            "keep": {"type": "int", "default": 5},
            "stage": {"type": "bool", "default": True},
            "prune": {"type": "bool", "default": True},
            "src": {"type": "path"},
            "report_as": {"type": "str"},
        },
        supports_check_mode=True,
    )
    p = module.params
    bad = invalid_settings(p["version"], p["root"], p["keep"])
    if bad:
        module.fail_json(msg=bad)
    release = os.path.normpath(p["release"])
    version = p["version"]
    releases = os.path.join(p["root"], "releases")
    previous = read_previous(p["root"])
    # A release dir without the marker is from an interrupted run: redo it from scratch. The
    # release current points to is live and never wiped.
    ready = previous == version or os.path.exists(p["marker"])
    to_stage = p["stage"] and not ready
    result: dict[str, Any] = {"changed": False, "previous": previous, "staged": ready,
                              "unpacked": False, "needs_artifact": False, "removed": [],
                              **reported(p["report_as"], previous)}
    if to_stage and p["src"] is None:
        result["needs_artifact"] = True
        if not module.check_mode:  # the action plugin comes back with src
            module.exit_json(**result)
    before = installed(releases)
    if to_stage:
        result.update(changed=True, staged=True, unpacked=True)
        if not module.check_mode:
            src = p["src"]
            if not os.path.isfile(src):
                module.fail_json(msg=f"archive {src} not found on the host", **result)
            try:
                unpack(src, release, p["marker"])
            except (OSError, tarfile.TarError, UnsafeArchive) as exc:
                with contextlib.suppress(OSError):  # incomplete: a later run would wipe it
                    remove(release)
                module.fail_json(msg=f"cannot unpack {src} into {release}: {exc}",
                                 **{**result, "changed": True, "staged": False})
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(src)
    after = installed(releases)
    if to_stage and module.check_mode:
        # Not staged in check mode: count it anyway, as the newest, so the check lists
        # exactly the releases a real run would remove.
        after = [version] + [name for name in after if name != version]
    if p["prune"]:
        old = [name for name in after[p["keep"]:] if name not in (version, previous)]
        result["removed"] = old
        if old:
            result["changed"] = True
        if not module.check_mode:
            for name in old:
                try:
                    remove(os.path.join(releases, name))
                except OSError as exc:
                    module.fail_json(msg=f"cannot remove release {name}: {exc}", **result)
        after = [name for name in after if name not in old]
    if module._diff and result["changed"]:
        result["diff"] = {"before_header": releases, "after_header": releases,
                          "before": listing(before), "after": listing(after)}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
