"""Rules for values that reach a shell, a path or the HAProxy socket, checked at the edge."""

from __future__ import annotations

import re

from rollout_py.errors import InputError

# No path separators, no shell metacharacters, no whitespace; the app_release role checks the
# same rule on the host side.
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


def validate_version(version: str) -> str:
    """Returns the version if it is safe in a path and a shell word, else raises InputError.

    Example:
        >>> validate_version("2.0")
        '2.0'
    """
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version) or ".." in version:
        raise InputError(
            f"version {version!r} is invalid: use 1-64 of letters, digits, '.', '_', '+', '-', "
            "starting with a letter or digit, and no '..'"
        )
    return version
