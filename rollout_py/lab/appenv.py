"""The flag-enabled sample app's Python environment: one cached venv that every lab host shares.

Releases built with ``rollout lab artifact VERSION --flags`` evaluate feature flags through
``openfeature-sdk`` and the flagd provider, which the hosts' system Python does not have. The
lab builds one venv of the hosts' Python (``python3 -m venv``) with the pinned packages of
``rollout_py/lab/app/requirements-flags.txt`` and points every host's ``APP_FLAGS_PYTHON`` at
it. Hosts are namespaces on this machine that see its filesystem except their private
``/srv``, ``/root``, ``/run`` and ``/tmp``, so the venv lives outside those (default
``/var/cache/rollout-lab``, or ``$ROLLOUT_LAB_CACHE``) and is shared read-only. It is built
once per interpreter and requirements file (the directory name hashes both), under a file
lock, and marked complete last: a build that died half way is redone, never used.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from importlib import resources
from pathlib import Path

from rollout_py.errors import LabError
from rollout_py.lab.procs import run

REQUIREMENTS = "requirements-flags.txt"
COMPLETE = ".rollout-complete"
HOST_PRIVATE = ("/srv", "/root", "/run", "/tmp")  # hosts see their own, not the machine's


def requirements() -> str:
    return resources.files("rollout_py.lab.app").joinpath(REQUIREMENTS).read_text()


def cache_dir() -> Path:
    """``$ROLLOUT_LAB_CACHE``, else ``/var/cache/rollout-lab`` (root) or ``~/.cache``."""
    env = os.environ.get("ROLLOUT_LAB_CACHE")
    if env:
        return Path(env).absolute()
    if os.geteuid() == 0:
        return Path("/var/cache/rollout-lab")
    return Path.home() / ".cache" / "rollout-lab"


def venv_dir(python: str) -> Path:
    """Where the venv for ``python`` (the hosts' interpreter) and today's pins lives."""
    key = hashlib.sha256(f"{os.path.realpath(python)}\n{requirements()}".encode()).hexdigest()
    return cache_dir() / f"app-venv-{key[:16]}"


def interpreter(python: str) -> Path:
    """The venv's interpreter, as hosts run it (``APP_FLAGS_PYTHON``); may not exist yet."""
    return venv_dir(python) / "bin" / "python"


def check_visible_to_hosts(path: Path) -> None:
    """Refuses a cache inside a directory that every host replaces with its own."""
    resolved = str(path.resolve())
    for private in HOST_PRIVATE:
        if resolved == private or resolved.startswith(private + "/"):
            raise LabError(f"the lab's app venv cache {path} is under {private}, which every "
                           "lab host replaces with its own: set ROLLOUT_LAB_CACHE to a "
                           "directory elsewhere (default /var/cache/rollout-lab)")


def ensure(python: str) -> Path:
    """Builds the venv unless a complete one is cached; returns its interpreter.

    Example:
        >>> ensure("/usr/bin/python3")  # doctest: +SKIP
        PosixPath('/var/cache/rollout-lab/app-venv-0123456789abcdef/bin/python')
    """
    venv = venv_dir(python)
    if (venv / COMPLETE).exists():
        return venv / "bin" / "python"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another lab (or test) may be building it
        if not (venv / COMPLETE).exists():
            _build(python, venv)
    return venv / "bin" / "python"


def _build(python: str, venv: Path) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    try:
        run([python, "-m", "venv", str(venv)], timeout=180)
    except LabError as exc:
        raise LabError(f"cannot create the flag-enabled app's venv with {python} ({exc}); "
                       "on Debian: apt-get install -y python3-venv") from exc
    reqs = venv / REQUIREMENTS
    reqs.write_text(requirements())
    try:
        run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-input", "-q",
             "--disable-pip-version-check", "-r", str(reqs)], timeout=900)
    except LabError as exc:
        shutil.rmtree(venv, ignore_errors=True)
        raise LabError(f"cannot install the flag-enabled app's packages ({exc}); they come "
                       f"from PyPI (rollout_py/lab/app/{REQUIREMENTS})") from exc
    (venv / COMPLETE).write_text(requirements())


if __name__ == "__main__":  # warms the cache: python -m rollout_py.lab.appenv [PYTHON]
    import sys

    print(ensure(sys.argv[1] if len(sys.argv) > 1 else "/usr/bin/python3"))
