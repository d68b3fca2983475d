"""A 4-host lab with two LBs: traffic through each frontend, runtime API, deploy playbook."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ansible_runner
import pytest

from rollout_py.balancer.ssh import SshTransport
from rollout_py.errors import BalancerError, BalancerUnreachable
from rollout_py.executor import AnsibleExecutor, Cancel
from rollout_py.lab import artifact
from rollout_py.lab import lab as lab_mod
from rollout_py.lab.layout import Layout
from rollout_py.lab.load import LoadGenerator
from rollout_py.resources import playbook, roles_path
from tests.integration.conftest import LabFactory, rollout

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> Layout:
    return lab_factory(n_hosts=4, n_lbs=2)


def served_version(address: str) -> str:
    with _OPENER.open(f"http://{address}:8080/version", timeout=5) as resp:
        return str(resp.read().decode().strip())


def test_every_lb_frontend_reaches_every_host(lab: Layout) -> None:
    names = {h.name for h in lab.app_hosts}
    for lb in lab.lbs:
        summary = LoadGenerator(f"http://127.0.0.1:{lb.port}/", rps=100, duration=0.4).run()
        assert summary.failed == 0, summary.failures
        # The app says which host it is; HAProxy says which server it chose: they agree.
        assert set(summary.by_host) == names
        assert all(r.served_by == r.lb_server for r in summary.records)


def test_show_servers_state_on_the_real_sockets(lab: Layout) -> None:
    assert lab.lbs[0].socket_url.startswith("unix://")
    assert lab.lbs[1].socket_url.startswith("ssh://")  # the remote LB, over SSH for real
    for lb in lab.lbs:
        api = lab_mod.lb_api(lab, lb)
        try:
            states = api.servers_state("app")
            assert api.admin_level()
        finally:
            api.close()
        assert sorted(s.name for s in states) == [h.name for h in lab.app_hosts]
        assert all(s.admin == "READY" and s.running for s in states)
        assert {s.address for s in states} == {h.address for h in lab.app_hosts}


def test_ssh_transport_carries_every_command_on_one_relay_channel(lab: Layout) -> None:
    api = lab_mod.lb_api(lab, lab.lbs[1])
    transport = api.transport
    assert isinstance(transport, SshTransport)
    try:
        assert api.admin_level()
        relay = transport._relay
        assert relay is not None
        # Answers stay framed one by one: empty, multi-line, refused.
        api.set_state("app", lab.app_hosts[0].name, "ready")
        assert [s.name for s in api.servers_state("app")] == [h.name for h in lab.app_hosts]
        with pytest.raises(BalancerError, match="Can't find backend"):
            api.servers_state("no_such_backend")
        assert len(api.stat("app")) == len(lab.app_hosts)
        assert transport._relay is relay  # one channel carried them all
        # A channel that closed between commands is opened again before the next command.
        relay.close()
        assert api.admin_level()
        assert transport._relay is not None and transport._relay is not relay
    finally:
        api.close()
    # A socket path that is not there: socat's own message, and nothing left half-open.
    missing = lab.lbs[1].socket_url.rsplit("/", 1)[0] + "/no-such.sock"
    broken = lab_mod.lb_api(lab, dataclasses.replace(lab.lbs[1], socket_url=missing))
    try:
        with pytest.raises(BalancerUnreachable, match=r"socat exited 1: .*No such file"):
            broken.admin_level()
    finally:
        broken.close()


def test_hosts_are_separate_machines(lab: Layout) -> None:
    seen = set()
    for host in lab.app_hosts[:2]:
        proc = rollout_ssh(lab, host.name, "hostname; cat /run/app.pid; ls /root/.ssh")
        seen.add(proc.split()[0])
    assert seen == {"app01", "app02"}


def rollout_ssh(lab: Layout, host: str, command: str) -> str:
    import subprocess
    out = subprocess.run(["ssh", "-F", str(lab.ssh_config), host, command],
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout


def test_ssh_checks_host_keys(lab: Layout, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    proc = subprocess.run(
        ["ssh", "-F", str(lab.ssh_config), "-o", f"UserKnownHostsFile={empty}",
         "-o", "ControlPath=none", "app01", "true"],
        capture_output=True, text=True, timeout=30)
    assert proc.returncode == 255 and "Host key verification failed" in proc.stderr


def test_deploy_playbook_upgrades_only_the_limited_hosts(lab: Layout, tmp_path) -> None:  # type: ignore[no-untyped-def]
    artifact.build_artifact(lab.artifacts, "2.0")
    result = ansible_runner.run(
        private_data_dir=str(tmp_path), playbook=str(playbook("deploy.yml")),
        inventory=str(lab.inventory), limit="app01,app02",
        extravars={"rollout_version": "2.0"}, quiet=True, suppress_env_files=True,
        envvars={"ANSIBLE_PIPELINING": "True", "ANSIBLE_ROLES_PATH": str(roles_path()),
                 "ANSIBLE_HOST_KEY_CHECKING": "True"},
    )
    assert result.rc == 0 and result.status == "successful"
    stats = result.stats
    assert stats is not None
    assert sorted(stats["ok"]) == ["app01", "app02"]
    assert not stats["failures"] and not stats["dark"]
    # The role hands back the version each host ran before (set_stats, run-wide dict).
    stats_event = next(e for e in result.events if e["event"] == "playbook_on_stats")
    assert stats_event["event_data"]["artifact_data"] == {
        "rollout_previous_version": {"app01": "1.0", "app02": "1.0"}}
    versions = {h.name: served_version(h.address) for h in lab.app_hosts}
    assert versions == {"app01": "2.0", "app02": "2.0", "app03": "1.0", "app04": "1.0"}
    # Through HAProxy, once its checks see the restarted apps again: both versions serve.
    summary = LoadGenerator(f"http://127.0.0.1:{lab.lbs[0].port}/", rps=80, duration=0.5).run()
    assert set(summary.by_version) <= {"1.0", "2.0"}


def test_check_mode_of_a_release_not_installed_passes_and_changes_nothing(
        lab: Layout, tmp_path: Path) -> None:
    # Was: unarchive failed in --check, as check mode never creates the directory to unpack into.
    artifact.build_artifact(lab.artifacts, "2.9-check")
    show = "readlink /srv/app/current; ls /srv/app/releases; cat /run/app.pid"
    before = {h.name: (served_version(h.address), rollout_ssh(lab, h.name, show))
              for h in lab.app_hosts}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(lab.inventory),
         "--check", "--diff", str(playbook("deploy.yml")), "-e", "rollout_version=2.9-check"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "ANSIBLE_ROLES_PATH": str(roles_path()), "ANSIBLE_PIPELINING": "True",
             "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_NOCOLOR": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    # It says what it would do: unpack, and point current at the new release, on every host.
    assert proc.stdout.count("would unpack") == len(lab.app_hosts)
    assert '+    "src": "/srv/app/releases/2.9-check"' in proc.stdout
    assert "failed=0" in proc.stdout and "failed=1" not in proc.stdout
    after = {h.name: (served_version(h.address), rollout_ssh(lab, h.name, show))
             for h in lab.app_hosts}
    assert after == before  # same version served, same link, same releases, same app process
    assert not any("2.9-check" in listing for _, listing in after.values())


@pytest.mark.parametrize(("extra", "message"), [
    (["-e", "rollout_version=bad..v"],
     'invalid app_release_version "bad..v": must be a string of letters'),
    (["-e", "rollout_version=2.0", "-e", "app_release_root=srv/app"],
     'invalid app_release_root "srv/app": must be absolute and not /'),
    (["-e", "rollout_version=2.0", "-e", '{"app_release_keep": 0}'],
     "invalid app_release_keep 0: must be >= 1"),
], ids=["version", "root", "keep"])
def test_deploy_playbook_refuses_bad_settings_naming_them(
        lab: Layout, tmp_path: Path, extra: list[str], message: str) -> None:
    show = "readlink /srv/app/current; ls /srv/app/releases; cat /run/app.pid"
    before = rollout_ssh(lab, "app03", show)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(lab.inventory),
         "--limit", "app03", str(playbook("deploy.yml")), *extra],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "ANSIBLE_ROLES_PATH": str(roles_path()), "ANSIBLE_PIPELINING": "True",
             "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_NOCOLOR": "1"})
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr
    assert message in " ".join(proc.stdout.split()), proc.stdout[-3000:]
    assert "failed=1" in proc.stdout and "changed=0" in proc.stdout
    assert rollout_ssh(lab, "app03", show) == before  # nothing touched


def test_lab_up_again_changes_nothing(lab: Layout) -> None:
    before = dict(lab.procs)
    proc = rollout("lab", "up", "--hosts", "4", "--lbs", "2", "--dir", lab.dir, check=True)
    assert "already up" in proc.stdout
    after = Layout.load(lab.path)
    assert after is not None and after.procs == before


def test_status_json_shows_versions_and_lb_states(lab: Layout) -> None:
    info = json.loads(rollout("lab", "status", "--json", "--dir", lab.dir, check=True).stdout)
    assert [h["name"] for h in info["hosts"]] == ["app01", "app02", "app03", "app04"]
    assert all(h["sshd"] and h["version"] in ("1.0", "2.0") for h in info["hosts"])
    for lb in info["lbs"]:
        assert "error" not in lb, lb
        assert set(lb["servers"]) == {"app01", "app02", "app03", "app04"}


def test_load_300_rps_for_20_s_has_no_failures(lab: Layout) -> None:
    proc = rollout("lab", "load", "--rps", "300", "--duration", "20", "--json", "--dir", lab.dir)
    summary = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert summary["sent"] == 6000 and summary["failed"] == 0
    assert len(summary["by_host"]) == 4


def test_the_lab_inventory_reaches_every_host(lab: Layout) -> None:
    """`ansible -i inventory/lab ...` as the README shows it, against the running lab."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible"), "-i", str(repo / "inventory" / "lab"),
         "all", "-m", "ansible.builtin.raw", "-a", "hostname", "-o"],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "ROLLOUT_LAB_DIR": str(lab.path),
             "ANSIBLE_HOST_KEY_CHECKING": "True"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for host in lab.all_hosts:
        assert f"{host.name} | CHANGED | rc=0 | (stdout) {host.name}" in proc.stdout, proc.stdout


def test_preflight_ssh_check_logs_in_as_ansible_would(lab: Layout, tmp_path: Path) -> None:
    """AnsibleExecutor.reachable: ssh directly with the inventory's settings for ssh hosts,
    Ansible's raw round only for a host ssh cannot stand for; failures say what ssh said."""
    key = tmp_path / "other_key"  # a key the hosts do not accept
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (tmp_path / "ssh_config").write_text(
        re.sub(r"IdentityFile .*", f"IdentityFile {key}", lab.ssh_config.read_text()))
    app01, app02 = lab.app_hosts[:2]
    inventory = lab.inventory.read_text()
    at = inventory.index("[all:vars]")
    odd = "\n".join([
        "[odd]", f"badport ansible_host={app01.address} ansible_port=2222",
        f"badkey ansible_host={app02.address} ansible_ssh_private_key_file={key} "
        f'ansible_ssh_common_args="-F {tmp_path / "ssh_config"}"',
        f"here ansible_connection=local ansible_python_interpreter={sys.executable}", "", ""])
    (tmp_path / "inventory.ini").write_text(inventory[:at] + odd + inventory[at:])
    names = [h.name for h in lab.app_hosts]
    ran: list[list[str]] = []

    class Recording(AnsibleExecutor):
        def _run(self, label: str, hosts: Sequence[str], cancel: Cancel | None,
                 **kwargs: Any) -> tuple[Any, dict[str, str], dict[str, Any]]:
            ran.append(list(hosts))
            return super()._run(label, hosts, cancel, **kwargs)

    executor = Recording(str(tmp_path / "inventory.ini"), work_dir=tmp_path / "runs")
    try:
        found = executor.reachable([*names, "badport", "badkey", "here"])
    finally:
        executor.close()
    assert {h: found[h] for h in [*names, "here"]} == dict.fromkeys([*names, "here"]), found
    assert found["badport"] == (f"unreachable: ssh: connect to host {app01.address} "
                                "port 2222: Connection refused")
    assert "Permission denied (publickey)" in str(found["badkey"]), found
    # One Ansible run, for the local host only.
    assert ran == [["here"]]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["001-preflight-ssh"]
