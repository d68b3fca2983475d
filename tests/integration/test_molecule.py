"""Runs the molecule scenarios of the roles (each a one-host lab; needs root): default
(app_release: a release, a second one, the rollback) and haproxy_server (against the lab's
HAProxy: maint and weight, idempotence, drain, check mode, ready)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.molecule
@pytest.mark.integration
@pytest.mark.parametrize("scenario", ["default", "haproxy_server"])
def test_molecule_scenario(scenario: str) -> None:
    if os.geteuid() != 0:
        pytest.fail("the molecule scenario brings up a lab host: run the tests as root")
    # molecule runs ansible-config, ansible-playbook and pytest from PATH: use this venv's.
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": os.pathsep.join([bindir, os.environ.get("PATH", "")])}
    # molecule.yml derives the ephemeral directory itself; an inherited one would be reused.
    env.pop("MOLECULE_EPHEMERAL_DIRECTORY", None)
    molecule = shutil.which("molecule", path=env["PATH"])
    if molecule is None:
        pytest.fail("molecule is not installed: install the test extra (pip install -e .[test])")
    proc = subprocess.run(
        [molecule, "test", "-s", scenario],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"molecule test exited {proc.returncode}:\n{proc.stdout}"
