"""Files an ansible-runner run gets in its private data dir or beside it: its settings, and
the secret variables' file (never on a command line, never in the artifacts)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def secrets_file(secret_vars: Mapping[str, Any]) -> Iterator[str | None]:
    """Secret variables reach Ansible as ``-e @file`` from a private temporary file, so they
    are neither on a command line (visible in ps) nor in ansible-runner's artifacts."""
    if not secret_vars:
        yield None
        return
    tmp = tempfile.mkdtemp(prefix="rollout-secrets-")
    path = os.path.join(tmp, "vars.json")
    try:
        write_private_json(Path(path), secret_vars)
        yield f"-e @{path}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_private_json(path: Path, data: Mapping[str, Any]) -> None:
    """``data`` as JSON in a new file only its owner can read (0600 from the start)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(dict(data), fh)


def runner_settings(private: Path) -> dict[str, Any]:
    """ansible-runner's settings for a run, also written to ``env/settings``: ansible-runner
    2.4 drops the ``settings`` argument when that file is missing (RunnerConfig.prepare_env),
    which left ``pexpect_timeout`` at its default 5 s (a cancel seen up to 5 s late).

    ``pexpect_timeout`` is how often ansible-runner's loop wakes with no output to ask the
    cancel callback: a cancel (the second SIGTERM, a foreign change, continuous health) is
    seen within 0.5 s. Each wake costs the controller ~0.2 ms, per running run, for the whole
    run: at 0.2 s, ~0.15 CPU-s of a 100-host deploy's ~1.7 (the session's run lives from
    preflight to the end)."""
    settings: dict[str, Any] = {"pexpect_timeout": 0.5, "suppress_ansible_output": True}
    env = private / "env"
    env.mkdir(mode=0o700, exist_ok=True)
    (env / "settings").write_text(json.dumps(settings))
    return settings
