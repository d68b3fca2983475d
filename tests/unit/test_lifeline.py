"""The executor arms the lifeline plugin without changing the rest of Ansible's environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rollout_py import _lifeline
from rollout_py.executor import AnsibleExecutor


def test_the_plugin_reads_the_variable_the_executor_sets() -> None:
    # Ansible loads the plugin from its file (it never imports rollout_py): same name, by hand.
    plugin = Path(_lifeline.PLUGIN_DIR, "rollout_lifeline.py").read_text()
    assert f'ENV_VAR = "{_lifeline.ENV_VAR}"' in plugin
    assert sorted(p.name for p in Path(_lifeline.PLUGIN_DIR).glob("*.py")) == [
        "__init__.py", "rollout_lifeline.py"]  # Ansible loads every other .py there as a plugin


def test_the_users_callback_plugins_stay_on_the_path() -> None:
    env = _lifeline.lifeline_env({"ANSIBLE_CALLBACK_PLUGINS": "/mine"})
    assert env["ANSIBLE_CALLBACK_PLUGINS"] == f"{_lifeline.PLUGIN_DIR}{os.pathsep}/mine"
    assert env[_lifeline.ENV_VAR] == str(os.getpid())


def test_executor_environment_arms_the_plugin_and_keeps_host_key_checking(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANSIBLE_HOST_KEY_CHECKING", raising=False)
    monkeypatch.delenv("ANSIBLE_CALLBACK_PLUGINS", raising=False)
    executor = AnsibleExecutor("localhost,", work_dir=tmp_path, control_dir=str(tmp_path / "cp"))
    env = executor._envvars()
    assert env["ANSIBLE_CALLBACK_PLUGINS"] == _lifeline.PLUGIN_DIR
    assert env[_lifeline.ENV_VAR] == str(os.getpid())
    assert env["ANSIBLE_HOST_KEY_CHECKING"] == "True"


def test_the_node_wrapper_arms_the_same_variable() -> None:
    from importlib import resources

    wrapper = resources.files("rollout_py").joinpath("node_wrapper.py").read_text()
    assert f'LIFELINE = "{_lifeline.ENV_VAR}"' in wrapper
