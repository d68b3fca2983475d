"""The haproxy_server role's module against the lab's real LBs, and the plain rolling update.

One 4-host lab with two LBs: lb1's admin socket is a unix socket on the controller (the module
runs delegated to localhost), lb2's lives on the LB host (the module runs there, over SSH).
Every check of HAProxy's state goes through rollout_py's own runtime API client.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ansible_runner
import pytest

from rollout_py.lab import artifact
from rollout_py.lab import lab as lab_mod
from rollout_py.lab.layout import Layout, LbSpec
from rollout_py.lab.load import LoadGenerator
from rollout_py.resources import playbook, roles_path
from tests.integration.conftest import REPO, LabFactory

LIBRARY = roles_path() / "haproxy_server" / "library"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
ROLE_TASK = "Set the server's state on the HAProxy LB"
UNSAFE = "app01;shutdown sessions server app/app02"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_RUNS = itertools.count()

State = dict[str, dict[str, tuple[str, bool, int]]]


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> Layout:
    return lab_factory(n_hosts=4, n_lbs=2, name="haproxy")


def delegate(lb: LbSpec) -> str:
    return lb.host or "localhost"


def lb_states(lab: Layout) -> State:
    """{lb: {server: (admin state, running, weight)}} read with rollout_py's own client."""
    out: State = {}
    for lb in lab.lbs:
        api = lab_mod.lb_api(lab, lb)
        try:
            out[lb.name] = {s.name: (s.admin, s.running, s.weight)
                            for s in api.servers_state("app")}
        finally:
            api.close()
    return out


def all_ready(lab: Layout) -> State:
    return {lb.name: {h.name: ("READY", True, 1) for h in lab.app_hosts} for lb in lab.lbs}


def run_play(lab: Layout, tmp_path: Path, *, tasks: list[dict[str, Any]],
             roles: list[dict[str, Any]] | None = None, library: bool = False,
             hosts: str = "app01") -> tuple[int, dict[str, dict[str, Any]]]:
    """Runs one play with ansible-runner on the lab; returns rc and {task name: result}."""
    n = next(_RUNS)
    play: dict[str, Any] = {"name": "module test", "hosts": hosts, "gather_facts": False,
                            "tasks": tasks}
    if roles:
        play["roles"] = roles
    book = tmp_path / f"play{n}.yml"
    book.write_text(json.dumps([play]))
    runner_dir = tmp_path / f"runner{n}"
    runner_dir.mkdir()
    # ansible-runner turns host-key checking off by default; the lab keeps it on.
    envvars = {"ANSIBLE_CONFIG": str(lab.path / "ansible.cfg"), "ANSIBLE_HOST_KEY_CHECKING": "True"}
    if library:  # the module on its own, without a play that lists the role
        envvars["ANSIBLE_LIBRARY"] = str(LIBRARY)
    run = ansible_runner.run(
        private_data_dir=str(runner_dir), playbook=str(book), envvars=envvars,
        quiet=True, suppress_env_files=True, cancel_callback=lambda: False,
    )
    results: dict[str, dict[str, Any]] = {}
    for event in run.events:
        if event["event"] in ("runner_on_ok", "runner_on_failed"):
            data = event["event_data"]
            results[data["task"]] = dict(data["res"], _failed=event["event"] == "runner_on_failed")
    return run.rc, results


def module_task(name: str, lb: LbSpec, server: str = "app01", **args: Any) -> dict[str, Any]:
    return {"name": name, "delegate_to": delegate(lb), "ignore_errors": True,
            "rollout_haproxy_server": {"socket": lb.socket_path, "backend": "app",
                                       "server": server, **args}}


def test_module_drains_and_enables_on_both_lbs_idempotently(lab: Layout, tmp_path: Path
                                                            ) -> None:
    lb1, lb2 = lab.lbs
    assert lb1.host is None and lb2.host == "lb2"
    assert lb_states(lab) == all_ready(lab)

    def play(state: str) -> dict[str, dict[str, Any]]:
        # lb1 through the role (listed by the play, delegated to localhost); lb2 through the
        # module directly, which the listed role puts on the module path, delegated over SSH.
        rc, res = run_play(lab, tmp_path, roles=[{
            "role": "haproxy_server", "haproxy_server_socket": lb1.socket_path,
            "haproxy_server_delegate": "localhost", "haproxy_server_state": state,
        }], tasks=[{"name": "on lb2", "delegate_to": "lb2", "rollout_haproxy_server": {
            "socket": lb2.socket_path, "backend": "app", "server": "app01", "state": state,
            "wait": True}}])
        assert rc == 0, res
        return {"lb1": res[ROLE_TASK], "lb2": res["on lb2"]}

    first = play("drain")
    for res in first.values():
        assert res["changed"] is True
        assert res["commands"] == ["set server app/app01 state drain"]
        assert res["before"]["admin_state"] == "READY" and res["before"]["admin_state_bits"] == 0
        assert res["after"]["admin_state"] == "DRAIN" and res["after"]["admin_state_bits"] == 8
        assert res["after"]["sessions"] == 0 and res["after"]["op_state"] == "RUNNING"
    expected = all_ready(lab)
    for lb in ("lb1", "lb2"):
        expected[lb]["app01"] = ("DRAIN", True, 1)
    assert lb_states(lab) == expected

    again = play("drain")
    assert [r["changed"] for r in again.values()] == [False, False]
    assert all(r["commands"] == [] for r in again.values())
    assert lb_states(lab) == expected

    ready = play("ready")
    assert [r["changed"] for r in ready.values()] == [True, True]
    assert all(r["after"]["admin_state"] == "READY" for r in ready.values())
    assert all(r["after"]["op_state_code"] == 2 for r in ready.values())
    assert lb_states(lab) == all_ready(lab)

    again = play("ready")
    assert [r["changed"] for r in again.values()] == [False, False]
    assert lb_states(lab) == all_ready(lab)


def test_check_mode_changes_nothing_and_weight_is_idempotent(lab: Layout, tmp_path: Path
                                                             ) -> None:
    lb1 = lab.lbs[0]
    tasks = [
        {**module_task("check", lb1, state="maint", weight=3), "check_mode": True},
        module_task("weight 3", lb1, state="ready", weight=3),
        module_task("weight 3 again", lb1, state="ready", weight=3),
        module_task("weight back", lb1, state="ready", weight=1),
    ]
    rc, res = run_play(lab, tmp_path, tasks=tasks, library=True)
    assert rc == 0 and not any(r["_failed"] for r in res.values()), res
    check = res["check"]
    assert check["changed"] is True
    assert check["after"]["admin_state"] == "MAINT" and check["after"]["weight"] == 3
    # Nothing was sent in check mode: the next task still finds READY, weight 1.
    assert res["weight 3"]["before"]["admin_state"] == "READY"
    assert res["weight 3"]["before"]["weight"] == 1
    assert res["weight 3"]["changed"] is True
    assert res["weight 3"]["commands"] == ["set weight app/app01 3"]
    assert res["weight 3"]["after"]["weight"] == 3
    assert res["weight 3 again"]["changed"] is False
    assert res["weight back"]["changed"] is True and res["weight back"]["after"]["weight"] == 1
    assert lb_states(lab) == all_ready(lab)


def _slow(port: int, seconds: float) -> tuple[int, str | None]:
    url = f"http://127.0.0.1:{port}/slow?seconds={seconds}"
    with _OPENER.open(url, timeout=seconds + 20) as resp:
        resp.read()
        return resp.status, resp.headers.get("X-LB-Server")


def test_unsafe_server_name_fails_without_sending_anything(lab: Layout, tmp_path: Path
                                                           ) -> None:
    lb1, lb2 = lab.lbs
    before = lb_states(lab)
    assert before == all_ready(lab)
    # A long request in flight on app02: had the injected "shutdown sessions server app/app02"
    # reached HAProxy, it would be cut (502).
    with ThreadPoolExecutor(max_workers=8) as pool:
        slow: list[Any] = []
        api = lab_mod.lb_api(lab, lb1)
        try:
            while not any(r.name == "app02" and r.scur for r in api.stat("app")):
                assert len(slow) < 8, "no slow request reached app02"
                slow.append(pool.submit(_slow, lb1.port, 6))
                time.sleep(0.3)
        finally:
            api.close()
        rc, res = run_play(lab, tmp_path, library=True, tasks=[
            module_task("unsafe on lb1", lb1, server=UNSAFE, state="drain"),
            module_task("unsafe on lb2", lb2, server=UNSAFE, state="maint"),
            module_task("unsafe backend", lb1, state="drain", backend="app\nshow info"),
        ])
        answers = [f.result() for f in slow]
    assert rc == 0, res  # ignore_errors
    for name in ("unsafe on lb1", "unsafe on lb2", "unsafe backend"):
        assert res[name]["_failed"], res[name]
        assert "not a valid HAProxy name" in res[name]["msg"]
        assert "nothing was sent" in res[name]["msg"]
        assert res[name]["commands"] == [] and "before" not in res[name]
    assert lb_states(lab) == before
    assert {status for status, _ in answers} == {200}
    assert "app02" in {server for _, server in answers}


def test_missing_server_or_backend_fails_with_haproxys_text(lab: Layout, tmp_path: Path
                                                            ) -> None:
    lb1, lb2 = lab.lbs
    rc, res = run_play(lab, tmp_path, library=True, tasks=[
        module_task("missing on lb1", lb1, server="app99", state="drain"),
        module_task("missing on lb2", lb2, server="app99", state="drain"),
        module_task("no backend", lb1, state="drain", backend="nope"),
        module_task("no socket", lb1, state="drain", socket="/nonexistent/admin.sock"),
    ])
    assert rc == 0, res
    assert all(r["_failed"] for r in res.values()), res
    assert "No such server." in res["missing on lb1"]["msg"]
    assert "No such server." in res["missing on lb2"]["msg"]
    assert "Can't find backend." in res["no backend"]["msg"]
    assert "cannot connect" in res["no socket"]["msg"]
    assert lb_states(lab) == all_ready(lab)


def served_version(address: str) -> str:
    with _OPENER.open(f"http://{address}:8080/version", timeout=5) as resp:
        return str(resp.read().decode().strip())


def test_rolling_plain_upgrades_the_lab_under_load(lab: Layout) -> None:
    artifact.build_artifact(lab.artifacts, "2.0")
    sockets = [{"socket": lb.socket_path, "delegate": delegate(lb)} for lb in lab.lbs]
    cmd = [str(ANSIBLE_PLAYBOOK), str(playbook("rolling_plain.yml")),
           "-e", "rollout_version=2.0", "-e", json.dumps({"rolling_lb_sockets": sockets})]
    env = os.environ | {"ANSIBLE_CONFIG": str(lab.path / "ansible.cfg"),
                        "PATH": f"{ANSIBLE_PLAYBOOK.parent}{os.pathsep}{os.environ['PATH']}"}
    load = LoadGenerator(f"http://127.0.0.1:{lab.lbs[0].port}/", rps=100, duration=600).start()
    try:
        time.sleep(1.0)
        started = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
        wall = time.monotonic() - started
        time.sleep(1.0)
    finally:
        summary = load.stop()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    print(f"rolling_plain.yml on {len(lab.app_hosts)} hosts: {wall:.1f} s; load: {summary.sent} "
          f"sent, {summary.failed} failed, by version {summary.by_version}")
    assert summary.failed == 0, summary.failures
    assert summary.sent >= 100 * wall
    assert set(summary.by_version) == {"1.0", "2.0"}
    assert {h.name: served_version(h.address) for h in lab.app_hosts} == {
        h.name: "2.0" for h in lab.app_hosts}
    assert lb_states(lab) == all_ready(lab)
