"""rollout_py.reach: the ssh command line Ansible's settings give, and which hosts fall back.

No network: the inventory is an ``ansible-inventory --list`` document written here, and the
subprocess-facing parts run against stand-in executables.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from rollout_py import reach
from rollout_py.errors import ControllerError
from rollout_py.reach import PREFER_KEX, LoginPlan, Target, plan_logins

SSH = "/usr/bin/ssh"
# `ansible-config dump -t connection ssh` defaults (ansible-core 2.19), the ones that matter.
DEFAULTS: dict[str, Any] = {
    "ssh_args": "-C -o ControlMaster=auto -o ControlPersist=60s", "ssh_common_args": "",
    "ssh_extra_args": "", "host_key_checking": True, "port": None, "remote_user": None,
    "private_key_file": None, "timeout": 10, "ssh_executable": "ssh", "password": None,
    "private_key": None, "private_key_passphrase": None, "pkcs11_provider": "",
}


def listing(**hostvars: Mapping[str, Any]) -> dict[str, Any]:
    return {"_meta": {"hostvars": {h: dict(v) for h, v in hostvars.items()}},
            "all": {"children": ["ungrouped", "app"]}, "app": {"hosts": list(hostvars)}}


def plan(hostvars: Mapping[str, Mapping[str, Any]], *, options: Mapping[str, Any] | None = None,
         transport: str = "ssh", overrides: Mapping[str, Any] | None = None,
         hosts: Sequence[str] | None = None, prefer_kex: str | None = None) -> LoginPlan:
    return plan_logins(list(hosts if hosts is not None else hostvars), listing(**hostvars),
                       {**DEFAULTS, **(options or {})}, transport, overrides or {}, ssh=SSH,
                       prefer_kex=prefer_kex)


def opts(target: Target) -> list[str]:
    """The -o values in order."""
    argv = list(target.argv)
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]


def test_the_lab_hosts_settings_become_one_ssh_command_each() -> None:
    lab = {"ansible_host": "10.213.1.11", "ansible_user": "root",
           "ansible_ssh_private_key_file": "/lab/ssh/id_ed25519",
           "ansible_ssh_common_args": "-F /lab/ssh/ssh_config",
           "ansible_python_interpreter": "/usr/bin/python3",
           "ansible_control_path_dir": "/run/lab/cp"}
    result = plan({"app01": lab, "app02": {**lab, "ansible_host": "10.213.1.12"}})
    assert result.fallback == {}
    t = result.targets["app01"]
    assert t.argv[0] == SSH and t.argv[-2:] == ("10.213.1.11", "true")
    assert result.targets["app02"].argv[-2] == "10.213.1.12"
    assert t.argv[1:7] == ("-o", "BatchMode=yes", "-o", "ControlMaster=no",
                           "-o", "ControlPath=none")
    o = opts(t)
    assert 'IdentityFile="/lab/ssh/id_ed25519"' in o and 'User="root"' in o
    assert "PasswordAuthentication=no" in o and "ConnectTimeout=10" in o
    assert not any(x.startswith("StrictHostKeyChecking") for x in o)  # ssh config decides
    assert not any(x.startswith("Port=") for x in o)  # ssh's own default, as Ansible's
    # ssh_args first, common args after Ansible's own options (first value wins in ssh).
    argv = list(t.argv)
    assert argv.index("-C") < argv.index("ConnectTimeout=10") < argv.index("-F")
    assert argv[argv.index("-F") + 1] == "/lab/ssh/ssh_config"
    assert t.timeout == 10 + reach.LOGIN_GRACE


def test_no_vars_means_inventory_name_and_ssh_defaults() -> None:
    t = plan({"web1": {}}).targets["web1"]
    assert t.argv[-2] == "web1"
    assert not any(x.startswith(("User=", "IdentityFile=", "Port=")) for x in opts(t))


def test_config_defaults_apply_when_host_vars_are_unset() -> None:
    options = {"remote_user": "deploy", "port": 2222, "private_key_file": "~/.ssh/deploy",
               "ssh_args": "-o ServerAliveInterval=5", "ssh_common_args": "-o ProxyJump=bastion",
               "ssh_extra_args": "-o LogLevel=ERROR", "timeout": 3}
    t = plan({"web1": {"ansible_host": "10.0.0.5"}}, options=options).targets["web1"]
    o = opts(t)
    assert 'User="deploy"' in o and "Port=2222" in o and "ConnectTimeout=3" in o
    assert f'IdentityFile="{os.path.expanduser("~/.ssh/deploy")}"' in o
    assert o.index("ServerAliveInterval=5") < o.index("Port=2222")
    assert o.index("ConnectTimeout=3") < o.index("ProxyJump=bastion") < o.index("LogLevel=ERROR")


def test_host_vars_beat_config_and_the_last_alias_wins() -> None:
    hv = {"ansible_host": "10.0.0.5", "ansible_ssh_host": "10.0.0.6", "ansible_port": 22,
          "ansible_ssh_port": "2200", "ansible_user": "a", "ansible_ssh_user": "b",
          "ansible_ssh_args": "-o Compression=no", "ansible_ssh_timeout": 4,
          "ansible_ssh_extra_args": "-o 'SendEnv=A B'"}
    t = plan({"h": hv}, options={"remote_user": "deploy", "port": 2222}).targets["h"]
    o = opts(t)
    assert t.argv[-2] == "10.0.0.6" and "Port=2200" in o and 'User="b"' in o
    assert "Compression=no" in o and "ControlPersist=60s" not in o  # replaces ssh_args
    assert "SendEnv=A B" in o and "ConnectTimeout=4" in o


def test_extra_vars_override_host_vars() -> None:
    t = plan({"h": {"ansible_user": "a"}}, overrides={"ansible_user": "ops"}).targets["h"]
    assert 'User="ops"' in opts(t)


@pytest.mark.parametrize(("setting", "off"), [
    ({"options": {"host_key_checking": False}}, True),
    ({"options": {"host_key_checking": "False"}}, True),
    ({"hv": {"ansible_host_key_checking": "no"}}, True),
    ({"hv": {"ansible_ssh_host_key_checking": False}}, True),
    ({"options": {"host_key_checking": False}, "hv": {"ansible_host_key_checking": True}},
     False),
    ({}, False),
])
def test_host_key_checking_off_means_no_check_and_no_known_hosts_write(
        setting: dict[str, Any], off: bool) -> None:
    t = plan({"h": setting.get("hv", {})}, options=setting.get("options")).targets["h"]
    o = opts(t)
    assert ("StrictHostKeyChecking=no" in o) is off
    assert ("UserKnownHostsFile=/dev/null" in o) is off


def test_key_exchange_preference_unless_the_user_chose_one() -> None:
    t = plan({"h": {}}, prefer_kex=PREFER_KEX).targets["h"]
    assert opts(t)[0] == f"KexAlgorithms={PREFER_KEX}"
    mine = plan({"h": {"ansible_ssh_common_args": "-o KexAlgorithms=curve25519-sha256"}},
                prefer_kex=PREFER_KEX).targets["h"]
    assert f"KexAlgorithms={PREFER_KEX}" not in opts(mine)
    assert "KexAlgorithms=" not in " ".join(opts(plan({"h": {}}).targets["h"]))


@pytest.mark.parametrize(("hv", "why"), [
    ({"ansible_connection": "local"}, "connection local"),
    ({"ansible_connection": "community.docker.docker"}, "connection community.docker.docker"),
    ({"ansible_connection": "paramiko"}, "connection paramiko"),
    ({"ansible_password": "x"}, "password"),
    ({"ansible_ssh_pass": "x"}, "password"),
    ({"ansible_ssh_password": "x"}, "password"),
    ({"ansible_ssh_private_key": "-----BEGIN"}, "private key given as a value"),
    ({"ansible_ssh_private_key_passphrase": "x"}, "passphrase"),
    ({"ansible_host": "{{ lookup('env', 'X') }}"}, "template in ansible_host"),
    ({"ansible_user": "{{ deploy_user }}"}, "template in ansible_user"),
    ({"ansible_ssh_common_args": "-o ProxyJump={{ bastion }}"},
     "template in ansible_ssh_common_args"),
    ({"ansible_ssh_executable": "/opt/other/ssh"}, "ssh executable"),
    ({"ansible_user": {"__ansible_vault": "$ANSIBLE_VAULT;1.1;AES256..."}},
     "not plain text in ansible_user"),
])
def test_hosts_ssh_cannot_represent_fall_back(hv: dict[str, Any], why: str) -> None:
    result = plan({"odd": hv, "fine": {"ansible_host": "10.0.0.5"}})
    assert list(result.targets) == ["fine"]
    assert why in result.fallback["odd"]


def test_an_unrelated_template_does_not_fall_back() -> None:
    result = plan({"h": {"app_url": "http://{{ ansible_host }}:8080",
                         "ansible_connection": "ssh"}})
    assert list(result.targets) == ["h"]


@pytest.mark.parametrize(("transport", "fast"), [
    ("ssh", True), ("smart", True), ("ansible.builtin.ssh", True), ("local", False)])
def test_the_configured_transport_applies_when_the_host_names_none(transport: str,
                                                                    fast: bool) -> None:
    assert bool(plan({"h": {}}, transport=transport).targets) is fast
    assert bool(plan({"h": {"ansible_connection": "ssh"}}, transport=transport).targets)


def test_a_password_in_the_config_or_the_extra_vars_falls_back_for_all() -> None:
    assert set(plan({"a": {}, "b": {}}, options={"password": "x"}).fallback) == {"a", "b"}
    assert set(plan({"a": {}, "b": {}},
                    overrides={"ansible_password": "x"}).fallback) == {"a", "b"}


def test_hosts_ansible_inventory_did_not_list_fall_back() -> None:
    result = plan({"a": {}}, hosts=["a", "localhost"])
    assert list(result.targets) == ["a"] and "localhost" in result.fallback
    # A host in a group without vars of its own is listed all the same.
    doc = {"_meta": {"hostvars": {}}, "app": {"hosts": ["bare"]}}
    assert list(plan_logins(["bare"], doc, DEFAULTS, "ssh", {}, ssh=SSH).targets) == ["bare"]


# --- the parts that run processes, against stand-in executables --------------------------

def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.mark.parametrize(("body", "expected"), [
    ("exit 0", None),
    ("echo 'ssh: connect to host 10.0.0.5 port 22: Connection refused' >&2; exit 255",
     "unreachable: ssh: connect to host 10.0.0.5 port 22: Connection refused"),
    ("echo 'Warning: Permanently added x' >&2; echo 'root@h: Permission denied (publickey).' >&2;"
     " exit 255", "unreachable: Warning: Permanently added x root@h: Permission denied "
     "(publickey)."),
    ("echo 'This account is currently not available.'; exit 1",
     "failed: rc 1: This account is currently not available."),
])
def test_login_says_what_ssh_said(tmp_path: Path, body: str, expected: str | None) -> None:
    fake = script(tmp_path / "ssh", body)
    assert reach.login(Target("h", (str(fake), "h", "true"), timeout=10)) == expected


def test_login_that_hangs_is_cut_at_its_timeout(tmp_path: Path) -> None:
    fake = script(tmp_path / "ssh", "exec sleep 30")
    said = reach.login(Target("h", (str(fake),), timeout=0.3))
    assert said is not None and said.startswith("unreachable:") and "within" in said


def fake_ansible(bindir: Path, inventory_json: str, *, inventory_rc: int = 0) -> dict[str, str]:
    """ansible-inventory / ansible-config / ssh stand-ins on PATH; ssh says who it was for."""
    bindir.mkdir()
    (bindir / "inv.json").write_text(inventory_json)
    script(bindir / "ansible-inventory",
           f"cat {bindir / 'inv.json'}; echo 'ERROR! broken inventory' >&2; exit {inventory_rc}")
    script(bindir / "ansible-config", """case "$*" in
  *connection*) echo '[{"ssh": [{"name": "timeout", "origin": "default", "value": 5}]}]';;
  *) echo '[{"name": "DEFAULT_TRANSPORT", "origin": "env", "value": "ssh"}]';;
esac""")
    script(bindir / "ssh", """for last; do :; done
case "$*" in *-G*) exit 0;; *10.0.0.9*) echo 'ssh: connect to host 10.0.0.9 port 22: \
Connection refused' >&2; exit 255;; esac; exit 0""")
    return {"PATH": f"{bindir}:/usr/bin:/bin"}


def test_reachable_checks_with_ssh_and_falls_back_for_the_rest(tmp_path: Path) -> None:
    import json
    doc = json.dumps(listing(up={"ansible_host": "10.0.0.5"}, down={"ansible_host": "10.0.0.9"},
                             here={"ansible_connection": "local"}))
    env = fake_ansible(tmp_path / "bin", doc)
    asked: list[list[str]] = []

    def fallback(hosts: Sequence[str]) -> dict[str, str | None]:
        asked.append(list(hosts))
        return {h: None for h in hosts}

    found = reach.reachable(["up", "down", "here"], inventory="inv", env=env, overrides={},
                            fallback=fallback)
    assert found == {"up": None, "here": None, "down": "unreachable: ssh: connect to host "
                     "10.0.0.9 port 22: Connection refused"}
    assert asked == [["here"]]


def test_when_ansible_inventory_fails_every_host_goes_to_the_ansible_round(
        tmp_path: Path) -> None:
    env = fake_ansible(tmp_path / "bin", "{}", inventory_rc=1)
    asked: list[list[str]] = []

    def fallback(hosts: Sequence[str]) -> dict[str, str | None]:
        asked.append(list(hosts))
        return {h: "unreachable: raw: it said so" for h in hosts}

    found = reach.reachable(["a", "b"], inventory="inv", env=env, overrides={},
                            fallback=fallback)
    assert asked == [["a", "b"]]
    assert found == {"a": "unreachable: raw: it said so", "b": "unreachable: raw: it said so"}
    with pytest.raises(ControllerError, match="broken inventory"):
        reach.resolve(["a"], inventory="inv", env=env, overrides={}, cwd=str(tmp_path))


def test_no_hosts_runs_nothing() -> None:
    def fallback(hosts: Sequence[str]) -> dict[str, str | None]:
        raise AssertionError("not called")

    assert reach.reachable([], inventory="inv", env={}, overrides={}, fallback=fallback) == {}
