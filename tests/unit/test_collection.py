"""The Ansible collection rollout.fleet (galaxy.yml at the top level) builds from the
repository, holds only the roles, the HAProxy module and its metadata, and works once
installed into a clean collections directory, with the repository's roles out of reach."""

from __future__ import annotations

import json
import os
import sys
import tarfile
import tomllib
from pathlib import Path
from subprocess import CompletedProcess, run

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# FQCN -> the short_description in the module's DOCUMENTATION (haproxy_server is the
# meta/runtime.yml redirect to rollout_haproxy_server).
MODULES = {
    "rollout.fleet.rollout_haproxy_server":
        "Drain, disable or enable one HAProxy server through the runtime API",
    "rollout.fleet.haproxy_server":
        "Drain, disable or enable one HAProxy server through the runtime API",
    "rollout.fleet.app_release_stage":
        "Stage a release and prune old releases in as few round trips as possible",
    "rollout.fleet.app_release_switch":
        "Switch current to a staged release and restart the app, in one round trip",
}
# plugins/ holds symlinks to the roles' own files (one source; a collection's roles do not
# load their library/ or action_plugins/, so the collection's plugins are what they use).
LINKS = {
    "plugins/modules/rollout_haproxy_server.py":
        "../../roles/haproxy_server/library/rollout_haproxy_server.py",
    "plugins/modules/app_release_stage.py": "../../roles/app_release/library/app_release_stage.py",
    "plugins/modules/app_release_switch.py":
        "../../roles/app_release/library/app_release_switch.py",
    "plugins/action/app_release_stage.py":
        "../../roles/app_release/action_plugins/app_release_stage.py",
}
ROLES = {
    "rollout.fleet.app_release": "Install a release of the app and switch current to it.",
    "rollout.fleet.haproxy_server": "Set a host's server state (and weight) in HAProxy.",
}
TOP_LEVEL = {"MANIFEST.json", "FILES.json", "README.md", "meta", "roles", "plugins"}

# Runs the collection's app_release role for real on localhost (a tarball into a temporary
# root, no restart), the HAProxy module by FQCN (a bad backend name fails before any
# connection, so no HAProxy is needed) and imports the haproxy_server role, skipped.
PLAYBOOK = """\
- name: Use the rollout.fleet collection
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Install a release with the collection's role
      ansible.builtin.import_role:
        name: rollout.fleet.app_release
      vars:
        app_release_version: "2.0"
        app_release_artifact: "{{ artifact }}"
        app_release_root: "{{ root }}"
        app_release_restart_method: none

    - name: Run the HAProxy module by its FQCN
      rollout.fleet.haproxy_server:
        socket: /nonexistent/admin.sock
        backend: "app;help"
        server: web1
        state: drain
      register: module_result
      ignore_errors: true

    - name: The module refused the name before connecting
      ansible.builtin.assert:
        that:
          - module_result is failed
          - "'not a valid HAProxy name' in module_result.msg"

    - name: Import the collection's haproxy_server role (resolved, not run)
      ansible.builtin.import_role:
        name: rollout.fleet.haproxy_server
      vars:
        haproxy_server_state: drain
      when: false
"""


def env(collections: Path, empty: Path) -> dict[str, str]:
    """The collection from `collections` only: no roles path, no config file, no library."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    return {**keep, "PATH": f"{BIN}{os.pathsep}{keep.get('PATH', '/usr/bin:/bin')}",
            "ANSIBLE_COLLECTIONS_PATH": str(collections), "ANSIBLE_ROLES_PATH": str(empty),
            "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false", "ANSIBLE_CONFIG": str(empty / "none"),
            "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "false",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false"}


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(tarball, clean collections dir it is installed in, empty dir) for the module's tests."""
    tmp = tmp_path_factory.mktemp("collection")
    empty = tmp / "empty"
    empty.mkdir()
    built = run([str(BIN / "ansible-galaxy"), "collection", "build", "--output-path",
                 str(tmp / "dist"), str(REPO)], cwd=tmp, env=env(tmp / "none", empty),
                capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stdout + built.stderr
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    tarball = tmp / "dist" / f"rollout-fleet-{version}.tar.gz"
    assert tarball.is_file(), built.stdout
    installed = run([str(BIN / "ansible-galaxy"), "collection", "install", "-p",
                     str(tmp / "collections"), str(tarball)], cwd=tmp,
                    env=env(tmp / "collections", empty), capture_output=True, text=True,
                    timeout=120)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return tarball, tmp / "collections", empty


def ansible(collection: tuple[Path, Path, Path], tool: str, *args: str,
            cwd: Path) -> CompletedProcess[str]:
    _, collections, empty = collection
    return run([str(BIN / tool), *args], cwd=cwd, env=env(collections, empty),
               capture_output=True, text=True, timeout=120)


def test_galaxy_metadata_follows_the_project() -> None:
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert (galaxy["namespace"], galaxy["name"]) == ("rollout", "fleet")
    assert galaxy["version"] == project["version"]
    assert galaxy["license"] == [project["license"]]


def test_the_tarball_holds_the_collection_content_only(
        collection: tuple[Path, Path, Path]) -> None:
    tarball, _, _ = collection
    with tarfile.open(tarball) as tf:
        members = {m.name: m for m in tf.getmembers()}
        manifest = json.load(tf.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
    assert {name.split("/")[0] for name in members} == TOP_LEVEL
    assert manifest["collection_info"]["name"] == "fleet"
    for name in ("roles/app_release/tasks/main.yml", "roles/app_release/meta/argument_specs.yml",
                 "roles/app_release/library/app_release_stage.py",
                 "roles/app_release/library/app_release_switch.py",
                 "roles/app_release/action_plugins/app_release_stage.py",
                 "roles/haproxy_server/tasks/main.yml",
                 "roles/haproxy_server/library/rollout_haproxy_server.py",
                 "meta/runtime.yml"):
        assert members[name].isfile(), name
    assert sorted(n for n in members if n.startswith("roles/") and n.count("/") == 1) == [
        "roles/app_release", "roles/haproxy_server"]
    # The plugins are the roles' files, not copies: symlinks kept inside the collection.
    plugins = {n: m.linkname for n, m in members.items()
               if n.startswith("plugins/") and not m.isdir()}
    assert plugins == LINKS
    assert all(members[n].issym() for n in plugins)
    assert not [n for n in members if "__pycache__" in n or n.endswith(".pyc")]


def test_ansible_doc_renders_the_modules_and_roles(collection: tuple[Path, Path, Path],
                                                  tmp_path: Path) -> None:
    for fqcn, short in MODULES.items():
        out = ansible(collection, "ansible-doc", fqcn, cwd=tmp_path)  # the text rendering
        assert out.returncode == 0, out.stdout + out.stderr
        assert not out.stderr, out.stderr
        assert "/ansible_collections/rollout/fleet/plugins/modules/" in out.stdout
        assert "OPTIONS" in out.stdout and "RETURN VALUES" in out.stdout, out.stdout
        # the text leaves the short description out; the JSON has it
        out = ansible(collection, "ansible-doc", "--json", fqcn, cwd=tmp_path)
        assert out.returncode == 0, out.stdout + out.stderr
        (doc,) = json.loads(out.stdout).values()
        assert doc["doc"]["short_description"] == short
    for fqcn, short in ROLES.items():
        out = ansible(collection, "ansible-doc", "-t", "role", fqcn, cwd=tmp_path)
        assert out.returncode == 0, out.stdout + out.stderr
        assert short in out.stdout, out.stdout


def test_a_playbook_uses_the_installed_roles_and_module(collection: tuple[Path, Path, Path],
                                                        tmp_path: Path) -> None:
    release = tmp_path / "release"
    release.mkdir()
    (release / "VERSION").write_text("2.0\n")
    artifact = tmp_path / "app-2.0.tar.gz"
    with tarfile.open(artifact, "w:gz") as tf:
        tf.add(release / "VERSION", arcname="VERSION")
    (tmp_path / "playbook.yml").write_text(PLAYBOOK)
    (tmp_path / "hosts.ini").write_text(
        f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    common = ["-i", "hosts.ini", "playbook.yml", "-e", f"artifact={artifact}",
              "-e", f"root={tmp_path / 'app'}"]

    checked = ansible(collection, "ansible-playbook", "--syntax-check", *common, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    ran = ansible(collection, "ansible-playbook", *common, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert (tmp_path / "app" / "current").resolve() == tmp_path / "app" / "releases" / "2.0"
    assert (tmp_path / "app" / "current" / "VERSION").read_text() == "2.0\n"


def test_the_repository_roles_are_not_what_is_found(collection: tuple[Path, Path, Path],
                                                    tmp_path: Path) -> None:
    """Without the collection, the same FQCN roles are not found: the tests above used it."""
    _, _, empty = collection
    (tmp_path / "playbook.yml").write_text(PLAYBOOK)
    out = run([str(BIN / "ansible-playbook"), "--syntax-check", "playbook.yml"], cwd=tmp_path,
              env=env(empty, empty), capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "rollout.fleet.app_release" in out.stdout + out.stderr
