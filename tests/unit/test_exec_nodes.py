"""Execution nodes (rollout_py.exec_nodes) through the executor: real ansible-runner
``transmit | worker | process`` streams, with a relay standing in for ssh (it runs the node's
command on this machine) and hosts of a local connection. The lab test
(tests/integration/test_exec_nodes_lab.py) runs the same over real SSH to namespace nodes."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollout_py.errors import InputError
from rollout_py.exec_nodes import NodePool
from rollout_py.executor import AnsibleExecutor, RunResult
from rollout_py.redact import Redactor
from rollout_py.spec_executors import ExecutorsSpec, NodeSpec
from tests.childkit import running

HOSTS = ["h1", "h2", "h3", "h4", "h5", "h6"]
RUNNER = os.path.join(os.path.dirname(sys.executable), "ansible-runner")

# What ssh does for the controller: runs COMMAND, relays stdin and stdout; killed, both end.
RELAY = textwrap.dedent("""\
    import os, subprocess, sys, threading
    open(sys.argv[1], "w").write(str(os.getpid()))
    child = subprocess.Popen(["sh", "-c", sys.argv[2]], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    def pump(src, dst):
        for chunk in iter(lambda: os.read(src.fileno(), 65536), b""):
            dst.write(chunk); dst.flush()
        dst.close()
    threading.Thread(target=pump, args=(sys.stdin.buffer, child.stdin), daemon=True).start()
    pump(child.stdout, sys.stdout.buffer)
    sys.exit(child.wait())
    """)

PLAYBOOK = """\
- name: Upgrade
  hosts: all
  gather_facts: false
  tasks:
    - name: Say which node ran the playbook on this host
      ansible.builtin.shell: >-
        echo {{ lookup('env', 'ROLLOUT_TEST_NODE') }} {{ token | default('') }}
        > {{ ran_dir }}/{{ inventory_hostname }}
      changed_when: false
    - name: Report the previous release
      ansible.builtin.set_stats:
        data: {rollout_previous_version: "{{ {inventory_hostname: 'v-' ~ inventory_hostname} }}"}
        per_host: false
        aggregate: true
    - name: Fail on the hosts told to
      ansible.builtin.fail: {msg: "boom on {{ inventory_hostname }}"}
      when: inventory_hostname in (fail_hosts | default([]))
    - name: Hold on the hosts told to (once)
      ansible.builtin.shell: >-
        [ -e {{ ran_dir }}/hold-{{ inventory_hostname }} ] ||
        {{ '{' }} echo $$ > {{ ran_dir }}/hold-{{ inventory_hostname }}; sleep 60; {{ '}' }}
      changed_when: false
      when: inventory_hostname in (hold_hosts | default([]))
"""


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[AnsibleExecutor, NodePool, Path]]:
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[app]\n" + "\n".join(HOSTS) + "\n\n[app:vars]\n"
                         f"ansible_connection=local\nansible_python_interpreter={sys.executable}\n")
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "upgrade.yml").write_text(PLAYBOOK)
    (tmp_path / "ran").mkdir()
    relay = tmp_path / "relay.py"
    relay.write_text(RELAY)

    def transport(node: NodeSpec, command: str) -> list[str]:
        return ["env", f"ROLLOUT_TEST_NODE={node.name}", sys.executable, str(relay),
                str(tmp_path / f"relay-{node.name}.pid"), command]

    spec = ExecutorsSpec.model_validate(
        {"nodes": [{"url": "ssh://a", "runner": RUNNER}, {"url": "ssh://b", "runner": RUNNER}]})
    pool = NodePool(spec, transport)
    ex = AnsibleExecutor(str(inventory), work_dir=tmp_path / "runs",
                         extravars={"ran_dir": str(tmp_path / "ran")},
                         secret_vars={"token": "s3cret-value"},
                         control_dir=str(tmp_path / "cp"), nodes=pool,
                         redactor=Redactor(["s3cret-value"]))
    try:
        yield ex, pool, tmp_path
    finally:
        ex.close()


def ran_on(tmp_path: Path) -> dict[str, str]:
    return {h: (tmp_path / "ran" / h).read_text().split()[0]
            for h in HOSTS if (tmp_path / "ran" / h).exists()}


def wait_for(check: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_each_node_runs_its_hosts_and_the_results_come_back(
        fleet: tuple[AnsibleExecutor, NodePool, Path]) -> None:
    ex, pool, tmp_path = fleet
    playbook = str(tmp_path / "book" / "upgrade.yml")
    result = ex.run_playbook(playbook, HOSTS, {"fail_hosts": ["h2"]}, label="batch1-upgrade")
    expected = {h: (n.name if n else "controller") for n, hs in pool.split(HOSTS) for h in hs}
    assert set(expected.values()) == {"a", "b"}
    assert ran_on(tmp_path) == expected  # every host ran on its node, none elsewhere
    assert result.status == "failed"
    assert result.hosts == {**dict.fromkeys(HOSTS, "ok"),
                            "h2": "failed: Fail on the hosts told to: boom on h2"}
    assert result.previous_versions == {h: f"v-{h}" for h in HOSTS}
    # The secret reached the playbook through the stream, and is in no file kept here.
    assert all((tmp_path / "ran" / h).read_text().split()[1] == "s3cret-value" for h in HOSTS)
    kept = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert kept and not [p for p in kept if b"s3cret-value" in p.read_bytes()]
    assert not [p for p in kept if p.name == "rollout-secrets.json"]  # gone, not just scrubbed
    # Each node's events are kept as a local run's are, per node.
    for node in ("a", "b"):
        events = list((tmp_path / "runs").glob(f"*-{node}@batch1-upgrade/artifacts/{node}/"
                                               "job_events/*.json"))
        assert events, node


def drop_b_mid_run(ex: AnsibleExecutor, pool: NodePool, tmp_path: Path,
                   label: str) -> tuple[RunResult, int, list[str]]:
    """Runs the playbook on every host, held on one of node b's; drops b's connection (its
    "ssh" is killed) once the hold runs. Returns the result, the held process, b's hosts."""
    on_b = [h for n, hs in pool.split(HOSTS) if n and n.name == "b" for h in hs]
    hold = tmp_path / "ran" / f"hold-{on_b[0]}"
    box: list[RunResult] = []
    runner = threading.Thread(target=lambda: box.append(ex.run_playbook(
        str(tmp_path / "book" / "upgrade.yml"), HOSTS, {"hold_hosts": on_b[:1]},
        label=label)))
    runner.start()
    wait_for(hold.exists)
    held = int(hold.read_text())
    os.kill(int((tmp_path / "relay-b.pid").read_text()), signal.SIGKILL)
    runner.join(90)
    assert not runner.is_alive() and box
    return box[0], held, on_b


def test_a_node_lost_mid_run_fails_its_hosts_and_the_next_run_goes_elsewhere(
        fleet: tuple[AnsibleExecutor, NodePool, Path]) -> None:
    ex, pool, tmp_path = fleet
    result, held, on_b = drop_b_mid_run(ex, pool, tmp_path, "batch1-upgrade")
    assert result.status == "failed"  # the run ended without waiting for b
    for host in on_b:
        assert result.hosts[host].startswith("failed: execution node b lost: its stream ended"), \
            result.hosts[host]
    assert all(result.hosts[h] == "ok" for h in HOSTS if h not in on_b)
    assert set(pool.lost) == {"b"}
    # The node's side stops what it ran once its connection is gone.
    wait_for(lambda: not running(held), timeout=30)
    # The next run (the rollback) goes to the node left, all of it.
    again = ex.run_playbook(str(tmp_path / "book" / "upgrade.yml"), on_b, {},
                            label="batch1-rollback")
    assert again.ok
    assert {ran_on(tmp_path)[h] for h in on_b} == {"a"}


def test_a_rollback_whose_node_is_lost_runs_again_on_the_node_left(
        fleet: tuple[AnsibleExecutor, NodePool, Path]) -> None:
    ex, pool, tmp_path = fleet
    result, _, on_b = drop_b_mid_run(ex, pool, tmp_path, "batch1-rollback")
    assert result.ok, result.hosts  # b's hosts ran again, on a
    assert {ran_on(tmp_path)[h] for h in on_b} == {"a"}
    assert result.previous_versions == {h: f"v-{h}" for h in HOSTS}
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert [r for r in runs if "b@" in r] and [r for r in runs if "a@" in r]


def test_cancel_stops_the_run_on_the_node(
        fleet: tuple[AnsibleExecutor, NodePool, Path]) -> None:
    ex, pool, tmp_path = fleet
    playbook = str(tmp_path / "book" / "upgrade.yml")
    hold = tmp_path / "ran" / "hold-h1"
    result = ex.run_playbook(playbook, ["h1"], {"hold_hosts": ["h1"]}, label="batch1-upgrade",
                             cancel=hold.exists)
    assert result.status == "canceled"
    assert result.hosts == {"h1": "not run: cancelled"}
    assert not pool.lost
    wait_for(lambda: not running(int(hold.read_text())), timeout=30)


def test_hosts_without_a_node_go_to_the_controller_or_nowhere(tmp_path: Path) -> None:
    spec = ExecutorsSpec.model_validate({"nodes": ["ssh://a", "ssh://b"]})
    pool = NodePool(spec, lambda n, c: ["false"])
    for node in spec.nodes:
        pool.lose(node, "gone")
    assert pool.split(["h1", "h2"]) == [(None, ["h1", "h2"])]
    assert pool.nowhere() is None  # fallback: controller
    # assign: group keeps a host on its group's node; fallback: none runs it nowhere else.
    strict = NodePool(ExecutorsSpec.model_validate(
        {"nodes": ["ssh://a", "ssh://b"], "assign": "group", "groups": {"web": "a", "db": "b"},
         "fallback": "none"}), lambda n, c: ["false"], groups_of=lambda h: {"web"})
    strict.lose(strict.spec.nodes[0], "gone")
    assert strict.split(["h1"]) == [(None, ["h1"])]
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("h1 ansible_connection=local\n")
    ex = AnsibleExecutor(str(inventory), work_dir=tmp_path / "runs", nodes=strict)
    try:
        result = ex.run_playbook(str(tmp_path / "none.yml"), ["h1"], {}, label="batch1-upgrade")
        assert ex.reachable(["h1"])["h1"] == ex.run_command("h1", "true", 5)[1]
    finally:
        ex.close()
    assert result.status == "failed"
    assert result.hosts == {"h1": "failed: no execution node left for it (fallback: none; "
                                  "lost a: gone)"}
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_hashing_moves_only_a_lost_nodes_hosts() -> None:
    spec = ExecutorsSpec.model_validate({"nodes": ["ssh://a", "ssh://b", "ssh://c"]})
    pool = NodePool(spec, lambda n, c: [])
    hosts = [f"app{i:03d}" for i in range(300)]
    before = {h: pool.node_for(h) for h in hosts}
    counts = {n.name: sum(1 for v in before.values() if v == n) for n in spec.nodes}
    assert all(80 <= c <= 120 for c in counts.values()), counts
    pool.lose(spec.nodes[1], "gone")
    after = {h: pool.node_for(h) for h in hosts}
    moved = {h for h in hosts if after[h] != before[h]}
    assert moved == {h for h in hosts if before[h] == spec.nodes[1]}


def test_group_assignment_refuses_a_host_without_a_node() -> None:
    spec = ExecutorsSpec.model_validate(
        {"nodes": ["ssh://root@e1:2222", "ssh://e2"], "assign": "group",
         "groups": {"dc1": "e1", "dc2": "e2"}})
    members = {"h1": {"dc1"}, "h2": {"dc2"}, "h3": set[str]()}
    pool = NodePool(spec, lambda n, c: [], groups_of=lambda h: members[h])
    assert [(n.name if n else None, hs) for n, hs in pool.split(["h1", "h2"])] == \
        [("e1", ["h1"]), ("e2", ["h2"])]
    with pytest.raises(InputError, match=r"executors.groups: 1 host\(s\) .* h3"):
        pool.check(["h1", "h2", "h3"])
    assert (spec.nodes[0].user, spec.nodes[0].destination, spec.nodes[0].port) == \
        ("root", "e1", 2222)


@pytest.mark.parametrize(("section", "message"), [
    ({"nodes": []}, "at least 1 item"),
    ({"nodes": ["http://x"]}, "expected ssh://"),
    ({"nodes": ["ssh://a", "ssh://a"]}, "used twice"),
    ({"nodes": ["ssh://a"], "assign": "group"}, "needs groups"),
    ({"nodes": ["ssh://a"], "groups": {"g": "a"}}, "only with assign: group"),
    ({"nodes": ["ssh://a"], "assign": "group", "groups": {"g": "b"}}, "not a node name"),
    ({"nodes": [{"url": "ssh://a", "runner": "x; rm -rf /"}]}, "letters, digits"),
])
def test_the_section_is_checked(section: dict[str, object], message: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        ExecutorsSpec.model_validate(section)


def test_a_run_through_a_node_leaves_the_controllers_signal_handlers_alone(
        fleet: tuple[AnsibleExecutor, NodePool, Path]) -> None:
    ex, _, tmp_path = fleet
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    # One host: its node's run is streamed from this (the main) thread.
    assert ex.run_playbook(str(tmp_path / "book" / "upgrade.yml"), HOSTS[:1], {},
                           label="batch1-upgrade").ok
    assert {s: signal.getsignal(s) for s in before} == before


SPEC = ("name: web\ninventory: inv.ini\nhosts: app\nplaybook: deploy.yml\nbatches: [1, 3]\n"
        "haproxy: {sockets: ['unix:///run/haproxy.sock']}\n"
        "health: {probes: [{tcp: '{{ inventory_hostname }}:80'}]}\n")


def test_rollout_plan_shows_where_each_batchs_ansible_runs(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from rollout_py.cli import cli

    (tmp_path / "inv.ini").write_text("[dc1]\nh1\nh2\n[dc2]\nh3\nh4\n[app:children]\ndc1\ndc2\n")
    path = tmp_path / "rollout.yml"
    path.write_text(SPEC + "executors:\n  nodes: [ssh://e1, ssh://e2]\n  assign: group\n"
                           "  groups: {dc1: e1, dc2: e2}\n")
    out = CliRunner().invoke(cli, ["plan", "-f", str(path), "--version", "2.0"],
                             standalone_mode=False)
    assert out.exception is None, out.output
    lines = out.output.splitlines()
    assert lines[lines.index("batch 1: h1") + 1] == "  Ansible on e1 (h1)"
    assert lines[lines.index("batch 2: h2, h3, h4") + 1] == "  Ansible on e1 (h2), e2 (h3, h4)"
    data = json.loads(CliRunner().invoke(cli, ["plan", "-f", str(path), "--version", "2.0",
                                               "--json"], standalone_mode=False).output)
    assert data["executors"] == {"1": {"e1": ["h1"]}, "2": {"e1": ["h2"], "e2": ["h3", "h4"]}}


def test_a_host_in_no_group_is_refused_before_anything(tmp_path: Path) -> None:
    from rollout_py.api import Context
    from rollout_py.spec import load_spec

    (tmp_path / "inv.ini").write_text("[app]\nh1\nh2\n[dc1]\nh1\n")
    path = tmp_path / "rollout.yml"
    path.write_text(SPEC + "executors:\n  nodes: [ssh://e1]\n  assign: group\n"
                           "  groups: {dc1: e1}\n")
    with pytest.raises(InputError, match=r"executors.groups: 1 host\(s\) are in none of the "
                                         r"groups dc1 \(e.g. h2\)"):
        Context.resolve(load_spec(path))


def test_preflights_login_check_runs_on_each_hosts_node(
        fleet: tuple[AnsibleExecutor, NodePool, Path]) -> None:
    ex, _, tmp_path = fleet
    assert ex.reachable(HOSTS) == dict.fromkeys(HOSTS)
    runs = sorted(p.name.split("-", 1)[1] for p in (tmp_path / "runs").iterdir())
    assert runs == ["a@preflight-ssh", "b@preflight-ssh"]
