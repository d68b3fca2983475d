"""Finds the playbooks and roles shipped with rollout_py, installed from a wheel or a checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def ansible_dir() -> Path:
    """The directory holding ``playbooks/`` and ``roles/``.

    A wheel carries them inside the package (``rollout_py/_ansible``); a source checkout or an
    editable install has them at the repository's top level.

    Example:
        >>> (ansible_dir() / "playbooks" / "deploy.yml").is_file()
        True
    """
    for candidate in (_PACKAGE / "_ansible", _PACKAGE.parent):
        if (candidate / "playbooks").is_dir() and (candidate / "roles").is_dir():
            return candidate
    raise FileNotFoundError(f"rollout_py's playbooks/ and roles/ are missing near {_PACKAGE}")


def playbook(name: str) -> Path:
    """Path of a shipped playbook, e.g. ``playbook("deploy.yml")``."""
    return ansible_dir() / "playbooks" / name


def roles_path() -> Path:
    return ansible_dir() / "roles"
