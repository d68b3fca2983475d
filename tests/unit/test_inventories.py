"""The inventories in inventory/ parse with Ansible's own tools and give rollout_py what it
needs: the app group, the LB group, each host's HAProxy server name, connection variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout_py import api
from rollout_py.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = ["example-ini", "example-yaml"]
BIN = Path(sys.executable).parent


def ansible_inventory(source: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(source), "--list"], capture_output=True,
        text=True, timeout=120, check=False,
        env={**os.environ, "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True", **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_inventory_lists_the_fleet(name: str) -> None:
    data = ansible_inventory(REPO / "inventory" / name)
    assert data["app"]["hosts"] == ["web01", "web02", "web03", "web04"]
    assert data["lb"]["hosts"] == ["lb01", "lb02"]
    web04 = data["_meta"]["hostvars"]["web04"]
    assert web04["haproxy_server_name"] == "web04_8080"  # host_vars beat group_vars
    assert web04["ansible_user"] == "deploy" and web04["ansible_host"] == "192.0.2.14"


@pytest.mark.parametrize("name", EXAMPLES)
def test_rollout_plans_against_the_example(name: str, tmp_path: Path) -> None:
    """`rollout plan -i inventory/...` as the README shows it: servers rendered per host."""
    spec_file = tmp_path / "rollout.yml"
    spec_file.write_text(yaml.safe_dump({
        "name": "web", "inventory": "unused.ini", "hosts": "app",
        "playbook": str(REPO / "playbooks" / "deploy.yml"), "batches": [1, "50%"],
        "version_url": "http://{{ ansible_host }}:8080/version",
        "haproxy": {"sockets": ["ssh://root@lb01/run/haproxy/admin.sock",
                                "ssh://root@lb02/run/haproxy/admin.sock"],
                    "backend": "app", "server": "{{ haproxy_server_name }}"},
        "health": {"probes": [{"http": "http://{{ ansible_host }}:8080/health"}]}}))
    plan = api.plan(load_spec(spec_file), version="2.4.1",
                    inventory=str(REPO / "inventory" / name))
    assert [b.hosts for b in plan.batches] == [("web01",), ("web02", "web03"), ("web04",)]
    assert plan.servers == {"web01": "web01", "web02": "web02", "web03": "web03",
                            "web04": "web04_8080"}


def _lab_record(tmp_path: Path, state: str) -> Path:
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "lab.json").write_text(json.dumps({
        "state": state,
        "hosts": [{"name": "app01", "address": "10.213.1.11"},
                  {"name": "app02", "address": "10.213.1.12"}],
        "lb_hosts": [{"name": "lb2", "address": "10.213.1.3"}],
        "ansible_vars": {"ansible_user": "root", "ansible_ssh_common_args": "-F /x/ssh_config"},
    }))
    return lab


def test_the_lab_inventory_reads_the_running_lab(tmp_path: Path) -> None:
    lab = _lab_record(tmp_path, "up")
    data = ansible_inventory(REPO / "inventory" / "lab", {"ROLLOUT_LAB_DIR": str(lab)})
    assert data["app"]["hosts"] == ["app01", "app02"] and data["lb"]["hosts"] == ["lb2"]
    app02 = data["_meta"]["hostvars"]["app02"]
    assert app02 == {"ansible_host": "10.213.1.12", "ansible_user": "root",
                     "ansible_ssh_common_args": "-F /x/ssh_config"}


@pytest.mark.parametrize("state", ["down", None])
def test_the_lab_inventory_is_empty_without_a_lab(tmp_path: Path, state: str | None) -> None:
    lab = _lab_record(tmp_path, state) if state else tmp_path / "nothing"
    data = ansible_inventory(REPO / "inventory" / "lab", {"ROLLOUT_LAB_DIR": str(lab)})
    assert data["_meta"]["hostvars"] == {}
    assert "hosts" not in data.get("app", {}) or data["app"]["hosts"] == []


def test_drain_order_fewest_sessions_puts_the_idlest_servers_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The order is read from the LBs once, at plan time; a resume passes the order its deploy
    started with, so the plan (and its digest) does not change under it."""
    from rollout_py.testing import FakeFleet

    servers = ["web01", "web02", "web03", "web04_8080"]
    fleet = FakeFleet(servers, sticky_sessions={"web01": 7, "web02": 3, "web04_8080": 3})
    monkeypatch.setattr(api, "open_balancer", lambda spec: fleet.balancer())
    spec_file = tmp_path / "rollout.yml"
    spec_file.write_text(yaml.safe_dump({
        "name": "web", "inventory": str(REPO / "inventory" / "example-ini"), "hosts": "app",
        "playbook": str(REPO / "playbooks" / "deploy.yml"), "batches": [1, 2],
        "haproxy": {"sockets": ["unix:///lb.sock"], "server": "{{ haproxy_server_name }}",
                    "drain_order": "fewest_sessions"},
        "health": {"probes": [{"http": "http://{{ ansible_host }}:8080/health"}]}}))
    spec = load_spec(spec_file)
    plan = api.plan(spec, version="2.4.1")
    assert [b.hosts for b in plan.batches] == [("web03",), ("web02", "web04"), ("web01",)]
    fleet.sticky_sessions.clear()  # the sessions moved on; the resume's order is the journal's
    again = api.plan(spec, version="2.4.1", order=[h for b in plan.batches for h in b.hosts])
    assert again.identity() == plan.identity()
