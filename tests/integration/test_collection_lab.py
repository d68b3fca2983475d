"""The rollout.fleet collection, built from the repository and installed into a clean
directory, runs playbooks/rolling_plain.yml (its roles by FQCN) on a 3-host lab with one LB,
with the repository's roles out of reach."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rollout_py.lab import artifact
from rollout_py.lab.layout import Layout
from rollout_py.resources import playbook
from tests.integration.conftest import LabFactory
from tests.integration.deploykit import all_ready_and_up, versions

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> Layout:
    return lab_factory(n_hosts=3, n_lbs=1, name="collection")


def install_collection(tmp_path: Path) -> Path:
    """Builds the collection from the repository and installs it into a clean directory."""
    collections = tmp_path / "collections"
    # Only the clean directory counts: a copy installed elsewhere must not satisfy the install.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")},
           "ANSIBLE_COLLECTIONS_PATH": str(collections)}
    subprocess.run([str(BIN / "ansible-galaxy"), "collection", "build", "--output-path",
                    str(tmp_path / "dist"), str(REPO)], check=True, cwd=tmp_path, env=env,
                   capture_output=True, timeout=120)
    (tarball,) = (tmp_path / "dist").glob("rollout-fleet-*.tar.gz")
    subprocess.run([str(BIN / "ansible-galaxy"), "collection", "install", "-p",
                    str(collections), str(tarball)], check=True, cwd=tmp_path, env=env,
                   capture_output=True, timeout=120)
    assert (collections / "ansible_collections/rollout/fleet/roles/app_release").is_dir()
    return collections


def fqcn_copy(tmp_path: Path) -> Path:
    """playbooks/rolling_plain.yml with the roles named by the collection's FQCN."""
    text = playbook("rolling_plain.yml").read_text()
    assert text.count("name: haproxy_server\n") == 3 and text.count("name: app_release\n") == 1
    text = (text.replace("name: haproxy_server\n", "name: rollout.fleet.haproxy_server\n")
                .replace("name: app_release\n", "name: rollout.fleet.app_release\n"))
    copy = tmp_path / "rolling_plain_fqcn.yml"
    copy.write_text(text)
    return copy


def test_rolling_plain_through_the_installed_collection(lab: Layout, tmp_path: Path) -> None:
    assert set(versions(lab).values()) == {"1.0"}
    collections = install_collection(tmp_path)
    no_roles = tmp_path / "no-roles"
    no_roles.mkdir()
    artifact.build_artifact(lab.artifacts, "2.0")
    sockets = [{"socket": lb.socket_path, "delegate": lb.host or "localhost"}
               for lb in lab.lbs]
    env = os.environ | {
        "ANSIBLE_CONFIG": str(lab.path / "ansible.cfg"),
        # the lab's ansible.cfg sets roles_path to the repository's roles/: not here
        "ANSIBLE_ROLES_PATH": str(no_roles),
        "ANSIBLE_COLLECTIONS_PATH": str(collections),
        "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false",
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), str(fqcn_copy(tmp_path)),
         "-e", "rollout_version=2.0", "-e", json.dumps({"rolling_lb_sockets": sockets})],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "failed=0" in proc.stdout and "failed=1" not in proc.stdout
    assert versions(lab) == {h.name: "2.0" for h in lab.app_hosts}
    assert all_ready_and_up(lab)
