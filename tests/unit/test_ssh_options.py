"""session.ssh_options_for: an LB host's SSH settings from the spec's ssh_config, the file
parsed once while it is unchanged, read again when it changes, refused when unreadable."""

from __future__ import annotations

import os
from pathlib import Path

import paramiko
import pytest
import yaml

from rollout_py.balancer.ssh import SshOptions
from rollout_py.errors import InputError
from rollout_py.session import ssh_options_for
from rollout_py.spec import Spec, load_spec

HOSTS = "\n".join(f"Host app{i:03d}\n    HostName 10.0.0.{i}\n    User root\n"
                  for i in range(1, 60))


def config_text(key: str) -> str:
    return (f"{HOSTS}\nHost lb2\n    IdentityFile {key}\n"
            "    UserKnownHostsFile /etc/kh /etc/kh2\n    BindAddress 10.0.0.254\n")


def spec_with(tmp_path: Path, ssh_config: str | None) -> Spec:
    (tmp_path / "inventory.ini").write_text("[app]\napp001\n")
    haproxy: dict[str, object] = {"sockets": ["ssh://root@lb2/run/haproxy/admin.sock"]}
    if ssh_config is not None:
        haproxy["ssh_config"] = ssh_config
    path = tmp_path / "rollout.yml"
    path.write_text(yaml.safe_dump({
        "name": "web", "inventory": "inventory.ini", "hosts": "app", "playbook": "deploy.yml",
        "batches": [1], "haproxy": haproxy,
        "health": {"probes": [{"haproxy": "UP"}]}}))
    return load_spec(path)


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths paramiko parses, in order."""
    seen: list[str] = []
    real = paramiko.SSHConfig.from_path

    def spy(path: str) -> paramiko.SSHConfig:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(paramiko.SSHConfig, "from_path", staticmethod(spy))
    return seen


def test_an_lb_hosts_settings_come_from_its_block(tmp_path: Path, parses: list[str]) -> None:
    (tmp_path / "ssh_config").write_text(config_text("/keys/a"))
    options = ssh_options_for(spec_with(tmp_path, "ssh_config"))
    assert options("lb2") == SshOptions(key_filename="/keys/a", known_hosts="/etc/kh",
                                        bind_address="10.0.0.254")
    assert options("elsewhere") == SshOptions()
    (tmp_path / "none").mkdir()
    assert ssh_options_for(spec_with(tmp_path / "none", None))("lb2") == SshOptions()


def test_the_file_is_parsed_once_until_it_changes(tmp_path: Path, parses: list[str]) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(config_text("/keys/a"))
    spec = spec_with(tmp_path, "ssh_config")
    first, second = ssh_options_for(spec), ssh_options_for(spec)  # the lease, the balancer
    assert first("lb2") == second("lb2") and first("lb2").key_filename == "/keys/a"
    assert parses == [str(config)]
    config.write_text(config_text("/keys/bb"))  # another size, another mtime
    os.utime(config, ns=(1, 1))
    assert ssh_options_for(spec)("lb2").key_filename == "/keys/bb"
    assert parses == [str(config)] * 2


def test_an_unreadable_file_is_refused_naming_it(tmp_path: Path) -> None:
    spec = spec_with(tmp_path, "missing_config")
    with pytest.raises(InputError, match=r"haproxy.ssh_config .*missing_config: No such file"):
        ssh_options_for(spec)
