"""What rollout_py says when it refuses or when the fleet is not as the words suggest.

Each test covers one item of the "bad input and misleading words" issue: a ``--json`` result
for a refusal; a deploy that could not be rolled back; a server an operator put in MAINT or
DRAIN; an LB host key paramiko does not know and a cut SSH message; sinks called from several
threads; and the rollback's extra vars as the README documents them.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout_py import api
from rollout_py import events as ev
from rollout_py.balancer.runtime import AdminState
from rollout_py.cli_output import run_with_outputs
from rollout_py.engine import Engine, Settings
from rollout_py.errors import BalancerUnreachable, PreflightError
from rollout_py.executor import Cancel, RunResult
from rollout_py.job_events import one_line
from rollout_py.planner import make_plan
from rollout_py.preflight import preflight
from rollout_py.report import found_out, result_lines
from rollout_py.resources import playbook as shipped_playbook
from rollout_py.spec import HealthSpec, HttpProbe, Spec, load_spec
from rollout_py.state import StateDir
from rollout_py.testing import FakeExecutor, FakeFleet

REPO = Path(__file__).resolve().parents[2]
HOSTS = ["app01", "app02", "app03"]
LBS = ("unix:///run/lb1.sock", "unix:///run/lb2.sock")
USER_PLAYBOOK = """\
- name: Deploy (a user's playbook that reports nothing back)
  hosts: all
  gather_facts: false
  tasks:
    - name: Install
      ansible.builtin.debug:
        msg: "{{ rollout_version }} (rollback: {{ rollout_previous_versions | default({}) }})"
"""


def write_spec(tmp_path: Path, **changes: Any) -> Path:
    """A spec, its INI inventory and a user playbook in tmp_path (no LB, no host needed)."""
    (tmp_path / "inventory.ini").write_text("[app]\n" + "\n".join(HOSTS) + "\n")
    (tmp_path / "deploy.yml").write_text(USER_PLAYBOOK)
    data: dict[str, Any] = {
        "name": "web", "inventory": "inventory.ini", "hosts": "app", "playbook": "deploy.yml",
        "batches": [1], "max_unavailable": 1,
        "haproxy": {"sockets": list(LBS), "drain_timeout": 1, "up_timeout": 2},
        "health": {"deadline": 2, "interval": 0.02, "consecutive": 1,
                   "probes": [{"command": "true"}, {"haproxy": "UP"}]},
        **changes}
    path = tmp_path / "rollout.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def refusal(spec: Spec, fleet: FakeFleet, *, force: bool = False,
            allow_no_rollback: bool = False, state: StateDir | None = None) -> str | None:
    """Preflight's refusal message for a deploy of 2.0 (None if it lets the deploy go)."""
    ctx = api.Context.resolve(spec)
    the_plan = api.plan(spec, version="2.0", force=force, context=ctx)
    try:
        preflight(ctx, the_plan, executor=fleet.executor(), balancer=fleet.balancer(),
                  force=force, allow_no_rollback=allow_no_rollback, state=state)
    except PreflightError as exc:
        return str(exc)
    return None


# --- 1. --json prints the refusal as a result ---------------------------------------------------

def _cli(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rollout_py", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env={**os.environ, **env},
                          check=False)


def test_json_refusal_is_a_result_on_stdout_and_the_error_stays_on_stderr(
        tmp_path: Path) -> None:
    # The LB sockets do not exist: preflight refuses (exit 2) after the deploy got its id.
    spec = write_spec(tmp_path, playbook=str(shipped_playbook("deploy.yml")))
    env = {"ROLLOUT_LOCK_DIR": str(tmp_path / "locks")}
    proc = _cli("deploy", "-f", str(spec), "--version", "2.0", "--json", env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    result = json.loads(lines[0])["result"]
    assert result["status"] == "refused" and result["exit_code"] == 2
    assert "preflight refused the deploy" in result["cause"] and "lb1.sock" in result["cause"]
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", result["deploy_id"]), result
    assert "error: preflight refused the deploy" in proc.stderr  # as before
    assert not (tmp_path / ".rollout" / "deploys" / result["deploy_id"]).exists()

    # A spec error happens before any deploy id: still a result, with deploy_id null.
    (tmp_path / "bad").mkdir()
    bad = write_spec(tmp_path / "bad", batchez=[1])
    proc = _cli("deploy", "-f", str(bad), "--version", "2.0", "--json", env=env)
    assert proc.returncode == 2
    result = json.loads(proc.stdout)["result"]
    assert result["deploy_id"] is None and "batchez" in result["cause"]

    # A held fleet: status locked, exit 4 (what main() exits with).
    from rollout_py.lock import FleetLock, fleet_key

    loaded = load_spec(spec)
    FleetLock(loaded.state_path(), fleet_key("web", str(tmp_path / "inventory.ini"))).hold(
        message="db migration")
    proc = _cli("deploy", "-f", str(spec), "--version", "2.0", "--json", env=env)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)["result"]
    assert result["status"] == "locked" and result["exit_code"] == 4
    assert "db migration" in result["cause"] and "db migration" in proc.stderr


# --- 2. no known previous version: refused up front -------------------------------------------

def test_a_user_playbook_without_a_known_previous_version_is_refused_and_says_how_to_fix(
        tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path))
    message = refusal(spec, FakeFleet(HOSTS, lbs=LBS))
    assert message is not None
    for words in ("no version to go back to is known for app01, app02, app03",
                  "would stay in MAINT", "set version_url", "set rollback_playbook",
                  "rollout_previous_version", "set_stats", "--allow-no-rollback"):
        assert words in message, message
    assert refusal(spec, FakeFleet(HOSTS, lbs=LBS), allow_no_rollback=True) is None


@pytest.mark.parametrize("changes", [
    {"version_url": "http://{{ inventory_hostname }}:8080/version"},
    {"rollback_playbook": "deploy.yml"},
    {"playbook": str(shipped_playbook("deploy.yml"))},
    {"playbook": "imports_ours.yml"},
    {"playbook": "reports.yml"},
], ids=["version_url", "rollback_playbook", "shipped playbook", "imports the shipped one",
        "reports it with set_stats"])
def test_a_known_previous_version_lets_the_deploy_go(tmp_path: Path,
                                                     changes: dict[str, Any]) -> None:
    path = write_spec(tmp_path, **changes)
    (tmp_path / "imports_ours.yml").write_text(
        f"- name: Ours, then a check\n  ansible.builtin.import_playbook: "
        f"{os.path.relpath(shipped_playbook('deploy.yml'), tmp_path)}\n")
    (tmp_path / "reports.yml").write_text(USER_PLAYBOOK + """\
    - name: Report the previous release
      ansible.builtin.set_stats:
        data:
          rollout_previous_version: "{{ {inventory_hostname: 'x'} }}"
        per_host: false
""")
    assert refusal(load_spec(path), FakeFleet(HOSTS, lbs=LBS)) is None


def test_a_first_deploy_that_got_previous_versions_teaches_preflight(tmp_path: Path) -> None:
    # The playbook reports through a role preflight cannot see: refused once; a deploy with
    # --allow-no-rollback records the versions the playbook reported; the next one goes.
    spec = load_spec(write_spec(tmp_path))
    fleet = FakeFleet(HOSTS, lbs=LBS)  # its executor reports previous versions like set_stats
    state = StateDir(spec.state_path())
    assert refusal(spec, fleet, state=state) is not None
    result = api.deploy(spec, version="2.0", executor=fleet.executor(),
                        balancer=fleet.balancer(), allow_no_rollback=True,
                        install_signal_handlers=False)
    assert result.status == "succeeded", result.cause
    assert refusal(spec, fleet, state=state) is None
    # Another playbook, or a spec that had version_url, proves nothing about this one.
    other = load_spec(write_spec(tmp_path, playbook="other.yml"))
    (tmp_path / "other.yml").write_text(USER_PLAYBOOK)
    assert refusal(other, fleet, state=state) is not None


def test_the_api_refuses_before_anything_is_touched(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path))
    fleet = FakeFleet(HOSTS, lbs=LBS)
    with pytest.raises(PreflightError, match="allow-no-rollback") as err:
        api.deploy(spec, version="2.0", executor=fleet.executor(), balancer=fleet.balancer(),
                   install_signal_handlers=False)
    assert fleet.log == [] and getattr(err.value, "deploy_id", None)
    assert StateDir(spec.state_path()).deploys() == []  # a refusal leaves no record


# --- 3. a server someone put in MAINT or DRAIN -------------------------------------------------

@pytest.mark.parametrize("admin", ["MAINT", "DRAIN"])
def test_a_targeted_server_out_on_purpose_is_refused_unless_force(
        tmp_path: Path, admin: AdminState) -> None:
    spec = load_spec(write_spec(tmp_path, playbook=str(shipped_playbook("deploy.yml")),
                                max_unavailable=2))
    fleet = FakeFleet(HOSTS, lbs=LBS)
    fleet.servers[LBS[1]]["app02"].admin = admin
    message = refusal(spec, fleet)
    assert message is not None
    assert f"app02 is out of rotation: {admin} on {LBS[1]}, set by an operator" in message
    assert "--force" in message and "app01" not in message and "app03" not in message
    assert refusal(spec, fleet, force=True) is None


def test_a_server_left_in_maint_as_found_is_said_in_the_result(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = load_spec(write_spec(tmp_path, playbook=str(shipped_playbook("deploy.yml")),
                                max_unavailable=3))
    fleet = FakeFleet(HOSTS, lbs=LBS)
    fleet.servers[LBS[1]]["app01"].admin = "MAINT"
    state = spec.state_path()

    def action(sinks: Sequence[Callable[[ev.Event], None]]) -> Any:
        return api.deploy(spec, version="2.0", force=True, executor=fleet.executor(),
                          balancer=fleet.balancer(), sinks=sinks,
                          install_signal_handlers=False)

    rc = run_with_outputs(action, as_json=False, log_file=None, metrics_file=None, verbose=0,
                          state_root=state)
    out = capsys.readouterr().out
    assert rc == 0 and fleet.versions["app01"] == "2.0"
    assert fleet.servers[LBS[1]]["app01"].admin == "MAINT"  # as found
    assert fleet.servers[LBS[0]]["app01"].admin == "READY"
    assert f"left in MAINT as found before the deploy: app01 ({LBS[1]})" in out, out
    assert "(except the servers left out of rotation as found, below)" in out

    fleet.servers[LBS[0]]["app03"].admin = "DRAIN"
    rc = run_with_outputs(lambda sinks: api.deploy(
        spec, version="3.0", force=True, executor=fleet.executor(), balancer=fleet.balancer(),
        sinks=sinks, install_signal_handlers=False), as_json=True, log_file=None,
        metrics_file=None, verbose=0, state_root=state)
    result = json.loads(capsys.readouterr().out.splitlines()[-1])["result"]
    assert rc == 0 and result["left_out_as_found"] == {
        "app01": {LBS[1]: "MAINT"}, "app03": {LBS[0]: "DRAIN"}}


def test_result_lines_without_servers_found_out_are_unchanged() -> None:
    fleet = FakeFleet(["h1"])
    engine = _engine(fleet)
    result = engine.run()
    assert found_out(engine.events) == {}
    lines = result_lines(result, {})
    assert lines[1] == f"  fleet: {result.fleet_state}"
    assert not any("as found" in line for line in lines)


# --- 4. SSH: an unknown LB host key; a cut message keeps what failed ---------------------------

_HOST_KEY_CHANGED = (
    "Failed to connect to the host via ssh: "
    "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n"
    "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\n"
    "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n"
    "IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\r\n"
    "Someone could be eavesdropping on you right now (man-in-the-middle attack)!\r\n"
    "It is also possible that a host key has just been changed.\r\n"
    "The fingerprint for the ED25519 key sent by the remote host is\r\n"
    "SHA256:3nQ0xY1mC3vJg0m0X1S0n4k2pB2kq3t3ZC2zQx7u9yE.\r\n"
    "Please contact your system administrator.\r\n"
    "Add correct host key in /tmp/x/known_hosts to get rid of this message.\r\n"
    "Offending ED25519 key in /tmp/x/known_hosts:2\r\n"
    "Host key for app02 has changed and you have requested strict checking.\r\n"
    "Host key verification failed.")


def test_a_cut_ssh_message_keeps_the_line_that_says_what_failed() -> None:
    short = one_line(_HOST_KEY_CHANGED)
    assert short.endswith("... Host key verification failed."), short
    assert short.startswith("Failed to connect to the host via ssh: @@@")
    assert len(short) <= 305
    assert one_line("Permission denied (publickey).") == "Permission denied (publickey)."
    assert one_line("x" * 400) == "x" * 300 + "..."  # one line: cut as before


@pytest.fixture
def ssh_server() -> Any:
    """An SSH server on 127.0.0.1 (paramiko's, in a thread) that nobody's known_hosts knows."""
    import paramiko

    key = paramiko.RSAKey.generate(1024)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)  # accept() wakes up to see the test is over
    stop = threading.Event()
    talks: list[threading.Thread] = []

    def converse(conn: socket.socket) -> None:
        transport = paramiko.Transport(conn)
        transport.add_server_key(key)
        try:
            transport.start_server(server=paramiko.ServerInterface())
            transport.join(10)  # until the client hangs up (after it checked our key)
        except Exception:  # the client refused our key: the end of the conversation
            pass
        finally:
            transport.close()

    def serve() -> None:  # one thread per connection: no client waits for another's end
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            talks.append(threading.Thread(target=converse, args=(conn,), daemon=True))
            talks[-1].start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], key
    stop.set()
    thread.join(5)
    for talk in talks:  # their last words (paramiko's log) belong to this test
        talk.join(5)
    listener.close()


def test_an_unknown_lb_host_key_says_which_setting_to_add(ssh_server: Any,
                                                          tmp_path: Path) -> None:
    from rollout_py.balancer.ssh import SshOptions
    from rollout_py.balancer.transports import open_transport

    port, key = ssh_server
    url = f"ssh://root@127.0.0.1:{port}/run/haproxy/admin.sock"
    # No haproxy.ssh_config: say to set it, with UserKnownHostsFile for that host.
    with pytest.raises(BalancerUnreachable) as err:
        open_transport(url, ssh=SshOptions(timeout=5)).send("show info")
    message = str(err.value)
    assert "not found in known_hosts" in message
    assert "set haproxy.ssh_config" in message and "'Host 127.0.0.1'" in message
    assert "UserKnownHostsFile" in message

    # A known_hosts file that lacks the key: say to add it there.
    known = tmp_path / "known_hosts"
    known.write_text("")
    with pytest.raises(BalancerUnreachable) as err:
        open_transport(url, ssh=SshOptions(known_hosts=str(known), timeout=5)).send("x")
    assert f"add [127.0.0.1]:{port}'s host key to {known}" in str(err.value)

    # A different key recorded for it: say it changed.
    import paramiko

    other = paramiko.RSAKey.generate(1024)
    known.write_text(f"[127.0.0.1]:{port} ssh-rsa {other.get_base64()}\n")
    with pytest.raises(BalancerUnreachable) as err:
        open_transport(url, ssh=SshOptions(known_hosts=str(known), timeout=5)).send("x")
    assert "does not match" in str(err.value) and f"not the one in {known}" in str(err.value)
    assert key.get_base64() in str(err.value)


# --- 5. sinks see one event at a time, in seq order ----------------------------------------------

def _engine(fleet: FakeFleet, sinks: Sequence[Callable[[ev.Event], None]] = (),
            soak: float = 0) -> Engine:
    plan = make_plan(
        name="t", version="2.0", fleet=list(fleet.hosts), targets=list(fleet.hosts),
        servers={h: h for h in fleet.hosts}, batches=["100%"], max_unavailable="100%",
        current_versions={}, force=False, backend="app", sockets=list(fleet.lbs),
        on_failure="rollback_batch", playbook="deploy.yml", rollback_playbook=None,
        drain_timeout=0.2, pause_between_batches=0)
    health = HealthSpec(deadline=1, interval=0.001, consecutive=3, soak=soak,
                        probes=[HttpProbe(http="http://x")])
    return Engine(plan, executor=fleet.executor(), balancer=fleet.balancer(),
                  prober=fleet.prober(), checks=fleet.checks,
                  settings=Settings(health=health, drain_timeout=0.2, up_timeout=0.5,
                                    poll=0.01, guard_interval=0.001),
                  sinks=sinks)


class OverlapSink:
    """Records how many calls ran at once, and the seq of every event, in call order."""

    def __init__(self, pause: float = 0.002) -> None:
        self.pause, self.active, self.most = pause, 0, 0
        self.seqs: list[int] = []
        self._count = threading.Lock()

    def __call__(self, event: ev.Event) -> None:
        with self._count:
            self.active += 1
            self.most = max(self.most, self.active)
        self.seqs.append(event.seq)
        time.sleep(self.pause)  # a slow consumer widens any overlap
        with self._count:
            self.active -= 1


def test_sinks_see_one_event_at_a_time_in_seq_order() -> None:
    # 12 hosts in one batch: their probe results are emitted from 12 threads at once.
    first, second = OverlapSink(), OverlapSink(0)
    engine = _engine(FakeFleet([f"h{i}" for i in range(12)]), sinks=[first, second],
                     soak=0.05)
    result = engine.run()
    assert result.status == "succeeded", result.cause
    assert len(first.seqs) > 30  # a verify and a soak result per host, from 12 threads
    assert first.most == 1 and second.most == 1
    assert first.seqs == sorted(first.seqs) == second.seqs
    assert first.seqs == list(range(1, len(first.seqs) + 1))


def test_emit_from_many_threads_keeps_seq_order_per_sink() -> None:
    sink = OverlapSink()
    engine = _engine(FakeFleet(["h1"]), sinks=[sink])
    barrier = threading.Barrier(16)

    def worker(i: int) -> None:
        barrier.wait()
        for _ in range(5):
            engine.emit(ev.ProbePassed, batch=1, host=f"h{i}", phase="verify")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sink.most == 1 and sink.seqs == list(range(1, 81))


def test_a_sink_that_interrupts_or_emits_does_not_deadlock_the_engine() -> None:
    journal: list[int] = []
    holder: list[Engine] = []

    def interrupting(event: ev.Event) -> None:
        if isinstance(event, ev.BatchStarted):
            holder[0].interrupt()  # e.g. a callback that stops the deploy on a condition
        if isinstance(event, ev.StepStarted):
            holder[0].emit(ev.ProbePassed, batch=1, host="h1", phase="verify")  # reentrant

    def first(event: ev.Event) -> None:
        journal.append(event.seq)

    def last(event: ev.Event) -> None:
        after.append(event.seq)

    after: list[int] = []
    engine = _engine(FakeFleet(["h1", "h2"]), sinks=[first, interrupting, last])
    holder.append(engine)
    box: list[Any] = []
    runner = threading.Thread(target=lambda: box.append(engine.run()), daemon=True)
    runner.start()
    runner.join(20)
    assert not runner.is_alive(), "the engine deadlocked in a sink"
    assert journal == list(range(1, len(journal) + 1))  # every event, in order, first sink
    assert [e.seq for e in engine.events] == journal == after  # the last sink too
    assert box[0].status == "succeeded"  # the interrupt came during the only batch


# --- 6. the rollback's extra vars, as the README says -------------------------------------------

class RecordingExecutor(FakeExecutor):
    def __init__(self, fleet: FakeFleet) -> None:
        super().__init__(fleet)
        self.calls: list[dict[str, Any]] = []

    def run_playbook(self, playbook: str, hosts: Sequence[str], extravars: Mapping[str, Any],
                     *, label: str, tags: str | None = None,
                     cancel: Cancel | None = None) -> RunResult:
        self.calls.append(dict(extravars))
        return super().run_playbook(playbook, hosts, extravars, label=label, tags=tags,
                                    cancel=cancel)


def test_the_rollback_extra_vars_are_the_ones_the_readme_documents() -> None:
    fleet = FakeFleet(["h1"], unhealthy_versions={"2.0"})
    engine = _engine(fleet)
    recorder = RecordingExecutor(fleet)
    engine.executor = recorder
    assert engine.run().status == "rolled_back"
    upgrade, rollback = recorder.calls
    assert "rollout_rollback" not in upgrade and upgrade["rollout_version"] == "2.0"
    assert rollback["rollout_rollback"] is True
    assert rollback["rollout_version"] == "1.0"  # the version to go back to
    assert rollback["rollout_previous_versions"] == {"h1": "1.0"}
    readme = (REPO / "README.md").read_text()
    contract = readme[readme.index("### The playbook contract"):]
    contract = contract[:contract.index("\n## ")]
    for name in ("rollout_rollback", "rollout_previous_versions", "rollout_version",
                 "rollout_previous_version", "rollout_batch", "rollout_deploy_id"):
        assert f"`{name}`" in contract, name
