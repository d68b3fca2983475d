"""Unattended deploys on a real lab: kill -9 and resume, lock contention, status/history
schemas, webhooks, metrics, secrets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import jsonschema
import pytest
import yaml

from rollout_py.lab import artifact
from rollout_py.lab.layout import Layout
from rollout_py.operations import schema
from rollout_py.procs import processes_mentioning
from rollout_py.state import StateDir
from tests.integration.conftest import LabFactory
from tests.integration.deploykit import (
    REPO,
    all_ready_and_up,
    json_result,
    rollout_cli,
    versions,
    write_spec,
)

ENV = os.environ | {"PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> Layout:
    layout = lab_factory(n_hosts=4, n_lbs=2)
    for v in ("k1", "k2", "k3", "k4", "s1", "s2", "w1", "h1"):
        artifact.build_artifact(layout.artifacts, v)
    for v in ("k-bad", "h-bad"):
        artifact.build_artifact(layout.artifacts, v, artifact.Behaviour(health_fail=True))
    return layout


@pytest.fixture(scope="module")
def spec(lab: Layout, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One spec (and state dir) for the module, so history accumulates across tests.
    base = tmp_path_factory.mktemp("unattended")
    return write_spec(lab, base / "rollout.yml", batches=[2], max_unavailable=2,
                      health={"deadline": 8, "interval": 0.5, "consecutive": 3})


def state_of(spec: Path) -> StateDir:
    return StateDir(spec.parent / ".rollout")


def start_deploy(spec: Path, version: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rollout_py", "deploy", "-f", str(spec), "--version", version,
         "--json", *args], cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


BOUNDARIES = {
    # name: (version, event that triggers the kill, extra field match, delay, expected)
    "after_drain": ("k1", "servers_disabled", {}, 0.0, "new"),
    "during_playbook": ("k2", "step_started", {"step": "upgrade"}, 1.5, "new"),
    "after_playbook_before_enable": ("k3", "step_finished", {"step": "upgrade"}, 0.0, "new"),
    "during_rollback": ("k-bad", "step_started", {"step": "rollback"}, 1.5, "old"),
}


@pytest.mark.parametrize("boundary", list(BOUNDARIES))
def test_kill_9_then_resume_leaves_a_whole_fleet(lab: Layout, spec: Path, boundary: str) -> None:
    version, trigger, match, delay, expected = BOUNDARIES[boundary]
    before = versions(lab)
    child = start_deploy(spec, version)
    assert child.stdout is not None and child.stderr is not None
    seen = []
    for line in child.stdout:
        event = json.loads(line)
        seen.append(event["event"])
        if event["event"] == trigger and all(event.get(k) == v for k, v in match.items()):
            time.sleep(delay)
            child.send_signal(signal.SIGKILL)
            break
    child.wait(30)
    child.stdout.close()
    child.stderr.close()
    assert child.returncode == -signal.SIGKILL, f"not killed at {trigger}: saw {seen}"
    record = state_of(spec).get()
    assert not record.closed()  # the journal shows a deploy cut short

    proc = rollout_cli("resume", "-f", str(spec), "--json")
    result = json_result(proc)
    after = versions(lab)
    if expected == "new":
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
        assert set(after.values()) == {version}
    else:
        assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr
        assert after == before and result["status"] == "rolled_back"
    assert all_ready_and_up(lab)  # none drained, none in MAINT, all UP, on both LBs
    assert record.closed()
    assert rollout_cli("lock", "status", "-f", str(spec)).stdout.strip() == "free"
    assert processes_mentioning(str(record.runs)) == []
    assert not Path(f"/tmp/rollout-cp-{record.deploy_id}").exists()


def test_two_copies_of_the_spec_at_once_exactly_one_deploys(lab: Layout, tmp_path: Path
                                                           ) -> None:
    """Two checkouts of one fleet's spec (two directories, two state dirs) started at once: the
    fleet lease on the LBs lets exactly one deploy; the other exits 4 naming the holder."""
    checkouts = [tmp_path / "ci-runner-1" / "work", tmp_path / "laptop" / "src"]
    for checkout in checkouts:
        checkout.mkdir(parents=True)
    specs = [write_spec(lab, checkout / "rollout.yml", batches=[1], version_url=None,
                        playbook=str(REPO / "tests/integration/playbooks/noop.yml"),
                        health={"probes": [{"http": "http://{{ ansible_host }}:8080/health"}]})
             for checkout in checkouts]
    for round_ in range(10):
        go = tmp_path / f"go-{round_}"
        children = [subprocess.Popen(
            ["sh", "-c", f"while [ ! -e {go} ]; do sleep 0.005; done; exec {sys.executable} "
                         f"-m rollout_py deploy -f {spec} --version r{round_} -l app01 "
                         "--allow-no-rollback"],
            cwd=REPO, env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for spec in specs]
        go.touch()
        outs = [c.communicate(timeout=300) for c in children]
        codes = sorted(c.returncode for c in children)
        assert codes == [0, 4], f"round {round_}: {codes} {outs}"
        loser = outs[[c.returncode for c in children].index(4)]
        assert "fleet is locked: deploy" in loser[1] and "pid" in loser[1], loser
        assert all_ready_and_up(lab), f"round {round_}: a server was left out of rotation"


def test_status_and_history_follow_their_schemas(lab: Layout, tmp_path: Path) -> None:
    spec = write_spec(lab, tmp_path / "rollout.yml", batches=[4], max_unavailable=4,
                      health={"deadline": 4})
    before = versions(lab)["app01"]
    assert rollout_cli("deploy", "-f", str(spec), "--version", "h1").returncode == 0
    assert rollout_cli("deploy", "-f", str(spec), "--version", "h-bad").returncode == 1
    history = json.loads(rollout_cli("history", "-f", str(spec), "--json").stdout)
    jsonschema.validate(history, schema("history"))
    newest, older = history["deploys"]
    assert (newest["version"], newest["status"], newest["from_versions"]) == \
        ("h-bad", "rolled_back", ["h1"])
    assert "probe" in newest["rollback_cause"] and newest["exit_code"] == 1
    assert (older["version"], older["status"], older["from_versions"]) == \
        ("h1", "succeeded", [before])
    assert all(d["user"] and d["duration"] > 0 for d in history["deploys"])

    proc = rollout_cli("status", "-f", str(spec), "--json")
    status = json.loads(proc.stdout)
    jsonschema.validate(status, schema("status"))
    assert proc.returncode == 0 and status["flagged"] == [] and status["lock"] is None
    # A server left drained by hand is flagged, on the LB where it is drained.
    from rollout_py.lab import lab as lab_mod
    api = lab_mod.lb_api(lab, lab.lbs[0])
    try:
        api.set_state("app", "app04", "drain")
        flagged = json.loads(rollout_cli("status", "-f", str(spec), "--json").stdout)
        jsonschema.validate(flagged, schema("status"))
        assert flagged["flagged"] == [{"lb": lab.lbs[0].socket_url, "server": "app04",
                                       "problem": "drained"}]
    finally:
        api.set_state("app", "app04", "ready")
        api.close()


class _Hooks(BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict[str, object]]] = []
    fail_first: ClassVar[int] = 1

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if _Hooks.fail_first > 0:
            _Hooks.fail_first -= 1
            self.send_response(500)
        else:
            _Hooks.bodies.append(json.loads(body))
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def webhook() -> Iterator[str]:
    _Hooks.bodies, _Hooks.fail_first = [], 1
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def test_webhooks_and_metrics_file(lab: Layout, tmp_path: Path, webhook: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    spec = write_spec(lab, tmp_path / "rollout.yml", batches=[2], max_unavailable=2,
                      notify={"webhooks": [{"url": webhook}]})
    metrics = tmp_path / "rollout.prom"
    proc = rollout_cli("deploy", "-f", str(spec), "--version", "w1",
                       "--metrics-file", str(metrics))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kinds = [b["rollout"]["event"] for b in _Hooks.bodies]  # type: ignore[index]
    assert kinds == ["start", "success"]  # the first POST was answered 500: retried
    assert all(isinstance(b["text"], str) and "w1" in b["text"] for b in _Hooks.bodies)
    families = {f.name: f for f in text_string_to_metric_families(metrics.read_text())}
    status = {s.labels["status"]: s.value for s in families["rollout_last_deploy_status"].samples}
    assert status["succeeded"] == 1 and status["rolled_back"] == 0
    hosts = {s.labels["outcome"]: s.value for s in families["rollout_last_deploy_hosts"].samples}
    assert hosts["upgraded"] == 4


def test_resume_has_the_deploys_setup_webhooks_and_verbosity(lab: Layout, tmp_path: Path,
                                                              webhook: str) -> None:
    """Resume runs through the same setup as deploy: it notifies the spec's webhooks and
    passes -vv on to Ansible (resume used to send nothing and ignore -v)."""
    _Hooks.fail_first = 0
    spec = write_spec(lab, tmp_path / "rollout.yml", batches=[2], max_unavailable=2,
                      notify={"webhooks": [{"url": webhook}]})
    child = start_deploy(spec, "k4")
    assert child.stdout is not None and child.stderr is not None
    for line in child.stdout:
        if json.loads(line)["event"] == "servers_disabled":
            child.send_signal(signal.SIGKILL)  # the controller this test started
            break
    child.wait(30)
    child.stdout.close()
    child.stderr.close()
    deploy_id = state_of(spec).get().deploy_id
    proc = rollout_cli("resume", "-f", str(spec), "-vvv")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    kinds = [(b["rollout"]["event"], b["rollout"]["deploy_id"])  # type: ignore[index]
             for b in _Hooks.bodies]
    assert kinds == [("start", deploy_id), ("success", deploy_id)]
    # ansible-runner keeps each run's command line; only resume's runs were given -vvv.
    commands = [json.loads(p.read_text())["command"]
                for p in (state_of(spec).get().path / "runs").glob("*/artifacts/*/command")]
    assert any("-vv" in c for c in commands), commands


def test_webhook_down_never_blocks_or_fails_the_deploy(lab: Layout, tmp_path: Path) -> None:
    """One webhook refuses connections, the other accepts them and never answers (60 s per
    attempt, 3 retries: 4 minutes if anything waited on it): the deploy still ends, exit 0,
    inside the 120 s the test allows the whole command, and says what was not delivered."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/hook"  # nothing listens there
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)  # accepts (the kernel's backlog), never reads, never answers
    stuck = f"http://127.0.0.1:{hole.getsockname()[1]}/hook"
    try:
        spec = write_spec(lab, tmp_path / "rollout.yml", batches=[4], max_unavailable=4,
                          notify={"webhooks": [
                              {"url": dead, "retries": 1, "timeout": 1},
                              {"url": stuck, "retries": 3, "timeout": 60}]})
        proc = rollout_cli("deploy", "-f", str(spec), "--version", "w1", "--force",
                           timeout=120)
    finally:
        hole.close()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"webhook {stuck}: pending (gave up waiting)" in proc.stderr, proc.stderr
    assert f"webhook {dead}: failed" in proc.stderr, proc.stderr
    record = StateDir(tmp_path / ".rollout").get()
    report = json.loads((record.path / "notifications.json").read_text())
    assert report[stuck] == "pending (gave up waiting)" and report[dead].startswith("failed")


CANARY = "S3CRET-CANARY"


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_a_secret_never_reaches_state_logs_or_output(lab: Layout, tmp_path: Path,
                                                      outcome: str) -> None:
    version = "s1" if outcome == "success" else "s2"
    secrets = tmp_path / "secrets.yml"
    secrets.write_text(yaml.safe_dump({"db_password": CANARY}))
    spec = write_spec(lab, tmp_path / "rollout.yml", batches=[4], max_unavailable=4,
                      playbook=str(REPO / "tests/integration/playbooks/deploy_with_secret.yml"))
    log, metrics = tmp_path / "deploy.log", tmp_path / "m.prom"
    extra = ["-e", f"@{secrets}", "--secret-var", "db_password", "--log-file", str(log),
             "--metrics-file", str(metrics)]
    if outcome == "failure":
        extra += ["-e", f"fail_version={version}"]
    for mode in ([], ["--json"]):
        proc = rollout_cli("deploy", "-f", str(spec), "--version", version, "--force",
                           *extra, *mode)
        assert proc.returncode == (0 if outcome == "success" else 1), proc.stdout + proc.stderr
        assert CANARY not in proc.stdout and CANARY not in proc.stderr
    state = spec.parent / ".rollout"
    leaks = subprocess.run(["grep", "-rl", CANARY, str(state), str(log), str(metrics)],
                           capture_output=True, text=True)
    assert leaks.stdout == "", f"secret found in: {leaks.stdout}"
    # The secret did reach Ansible (the debug task printed it) and was masked on the way out.
    masked = subprocess.run(["grep", "-rl", "connecting with password ********", str(state)],
                            capture_output=True, text=True)
    assert masked.stdout, "the playbook never used the secret: the test proves nothing"
    if outcome == "failure":
        assert "cannot log in with ********" in log.read_text()
