"""The wheel carries playbooks/ and roles/, and rollout_py finds them once installed."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_ships_and_finds_the_ansible_content(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(REPO)], check=True, timeout=300,
                   capture_output=True)
    wheel = next(tmp_path.glob("rollout_py-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(site)
    assert "rollout_py/_ansible/playbooks/deploy.yml" in names
    assert "rollout_py/_ansible/roles/app_release/tasks/main.yml" in names
    assert "rollout_py/_ansible/roles/app_release/meta/argument_specs.yml" in names
    assert "rollout_py/lab/app/appctl" in names and "rollout_py/lab/app/app.py" in names
    assert "rollout_py/lab/app/requirements-flags.txt" in names  # rollout_py.lab.appenv
    # Imported from the unpacked wheel, away from the checkout, it finds its own copy.
    out = subprocess.run(
        [sys.executable, "-c",
         "from rollout_py.resources import playbook; print(playbook('deploy.yml'))"],
        cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True, timeout=60)
    assert Path(out.stdout.strip()) == site / "rollout_py/_ansible/playbooks/deploy.yml"
