"""One ansible-playbook for every batch (rollout_py.playbook_session), through the executor, with
real ansible-playbook runs on hosts of a local connection (no network, no lab)."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from rollout_py import executor as executor_mod
from rollout_py import job_events
from rollout_py.executor import AnsibleExecutor
from rollout_py.playbook_session import GATE_TASK, check_hosts
from rollout_py.timeline_runs import load_runs

HOSTS = ["h1", "h2", "h3", "h4"]
BATCHES: list[tuple[int, list[str]]] = [(1, ["h1"]), (2, ["h2", "h3"]), (3, ["h4"])]
VARS = {"rollout_version": "2.0", "rollout_deploy_id": "d1"}

# h2 fails (its first failure is the cause), h3 fails inside a block and is rescued, a task
# told to ignore its error never counts; every host reports its previous version.
PLAYBOOK = """\
- name: Upgrade
  hosts: "{{ rollout_hosts | default('app') }}"
  gather_facts: false
  tasks:
    - name: Say that the playbook ran on this host
      ansible.builtin.shell: "echo {{ rollout_batch }} >> {{ ran_dir }}/{{ inventory_hostname }}"
      changed_when: false
    - name: Report the previous release
      ansible.builtin.set_stats:
        data: {rollout_previous_version: "{{ {inventory_hostname: 'v-' ~ inventory_hostname} }}"}
        per_host: false
        aggregate: true
    - name: Ignored
      ansible.builtin.fail: {msg: ignored}
      ignore_errors: true
    - name: Fail on the hosts told to
      ansible.builtin.fail: {msg: "boom on {{ inventory_hostname }}"}
      when: inventory_hostname in (fail_hosts | default([]))
    - name: A block
      block:
        - name: Fail to be rescued
          ansible.builtin.fail: {msg: rescued}
          when: inventory_hostname in (rescue_hosts | default([]))
      rescue:
        - name: Rescue
          ansible.builtin.debug: {msg: rescued}
    - name: Hold on the hosts told to
      ansible.builtin.shell: "touch {{ hold_marker }} && sleep 30"
      changed_when: false
      when: inventory_hostname in (hold_hosts | default([]))
"""


@pytest.fixture
def fleet(tmp_path: Path) -> tuple[Path, Path]:
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[app]\n" + "\n".join(HOSTS) + "\n\n[app:vars]\n"
                         f"ansible_connection=local\nansible_python_interpreter={sys.executable}\n"
                         "\n[lbs]\nlb1 ansible_connection=local\n")
    playbook = tmp_path / "upgrade.yml"
    playbook.write_text(PLAYBOOK)
    return inventory, playbook


def executor(tmp_path: Path, inventory: Path, **extra: Any) -> AnsibleExecutor:
    (tmp_path / "ran").mkdir(exist_ok=True)
    return AnsibleExecutor(str(inventory), work_dir=tmp_path / "runs",
                           extravars={"rollout_hosts": "app", "ran_dir": str(tmp_path / "ran"),
                                      **extra},
                           control_dir=str(tmp_path / "cp"))


@contextmanager
def prepared(playbook: Path, tmp_path: Path, inventory: Path,
             **extra: Any) -> Iterator[AnsibleExecutor]:
    """An executor whose session for BATCHES is started; closed on the way out."""
    ex = executor(tmp_path, inventory, **extra)
    try:
        ex.prepare_batches(str(playbook), BATCHES, VARS, tags=None)
        yield ex
    finally:
        ex.close()


def ran(tmp_path: Path) -> dict[str, list[str]]:
    """Per host, the batches the playbook ran for on it (in order)."""
    return {p.name: p.read_text().split() for p in sorted((tmp_path / "ran").iterdir())}


def run(ex: AnsibleExecutor, playbook: Path, index: int, **kw: Any) -> Any:
    hosts = dict(BATCHES)[index]
    return ex.run_playbook(str(playbook), hosts, {**VARS, "rollout_batch": index},
                           label=f"batch{index}-upgrade", **kw)


def spy_events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Every job event the executor's runs hand to rollout_py (kind, event_data), in order."""
    events: list[tuple[str, dict[str, Any]]] = []
    writing = job_events.writing_events

    def spy(handler: Any, artifact_dir: Path) -> Any:
        inner = writing(handler, artifact_dir)

        def on_event(event: dict[str, Any]) -> bool:
            events.append((str(event["event"]), dict(event.get("event_data") or {})))
            return bool(inner(event))
        return on_event

    monkeypatch.setattr(executor_mod, "writing_events", spy)
    return events


def run_dirs(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "runs").iterdir())


def test_every_batch_runs_in_one_playbook_with_per_host_outcomes(
        fleet: tuple[Path, Path], tmp_path: Path) -> None:
    inventory, playbook = fleet
    with prepared(playbook, tmp_path, inventory, fail_hosts=["h2"], rescue_hosts=["h3"]) as ex:
        first = run(ex, playbook, 1)
        second = run(ex, playbook, 2)
        third = run(ex, playbook, 3)
    assert (first.ok, first.hosts) == (True, {"h1": "ok"})
    assert first.previous_versions == {"h1": "v-h1"}
    assert not second.ok and second.status == "failed"
    assert second.hosts["h2"] == "failed: Fail on the hosts told to: boom on h2"
    assert second.hosts["h3"] == "ok"  # rescued
    assert (third.ok, third.hosts) == (True, {"h4": "ok"})
    # One ansible-playbook did it all: no batch had a run of its own, no host ran twice.
    assert run_dirs(tmp_path) == ["001-batches-upgrade"]
    assert ran(tmp_path) == {"h1": ["1"], "h2": ["2"], "h3": ["2"], "h4": ["3"]}
    # Its job events, cut per batch, hold the user's tasks of that batch's hosts only.
    runs = load_runs(tmp_path / "runs")
    assert sorted(runs) == [1, 2, 3]
    hosts = {n: {(e.get("event_data") or {}).get("host") for e in runs[n][0]} - {None}
             for n in runs}
    assert hosts == {1: {"h1"}, 2: {"h2", "h3"}, 3: {"h4"}}
    assert not any(str((e.get("event_data") or {}).get("task", "")).startswith("rollout:")
                   for n in runs for e in runs[n][0])


def test_a_batch_whose_hosts_all_fail_ends_the_session_and_the_next_runs_on_its_own(
        fleet: tuple[Path, Path], tmp_path: Path) -> None:
    inventory, playbook = fleet
    with prepared(playbook, tmp_path, inventory, fail_hosts=["h1"]) as ex:
        first = run(ex, playbook, 1)
        second = run(ex, playbook, 2)
    assert first.hosts == {"h1": "failed: Fail on the hosts told to: boom on h1"}
    assert second.ok and second.hosts == {"h2": "ok", "h3": "ok"}
    assert run_dirs(tmp_path) == ["001-batches-upgrade", "002-batch2-upgrade"]
    # The session never ran batch 2 on its own: its own run did, once.
    assert ran(tmp_path) == {"h1": ["1"], "h2": ["2"], "h3": ["2"]}


def test_a_playbook_that_ignores_rollout_hosts_is_never_run_as_a_session(
        fleet: tuple[Path, Path], tmp_path: Path) -> None:
    """Its first batch would have upgraded the whole fleet: each batch runs on its own."""
    inventory, _ = fleet
    playbook = tmp_path / "all.yml"
    playbook.write_text(PLAYBOOK.replace("{{ rollout_hosts | default('app') }}", "app"))
    with prepared(playbook, tmp_path, inventory) as ex:
        first = run(ex, playbook, 1)
        session = ex._session
        assert session is not None and session.refused is not None
        assert "batch 1 targets hosts outside the batch: h2, h3, h4" in session.refused
    assert first.ok and first.hosts == {"h1": "ok"}
    assert run_dirs(tmp_path) == ["001-batches-upgrade", "002-batch1-upgrade"]
    assert ran(tmp_path) == {"h1": ["1"]}
    assert not (tmp_path / "runs" / "001-batches-upgrade" / "artifacts").exists()


def test_a_call_that_is_not_the_prepared_batch_runs_on_its_own(
        fleet: tuple[Path, Path], tmp_path: Path) -> None:
    """A rollback (other variables) or other hosts never go through the session."""
    inventory, playbook = fleet
    with prepared(playbook, tmp_path, inventory) as ex:
        rollback = ex.run_playbook(str(playbook), ["h1"], {**VARS, "rollout_batch": 1,
                                                          "rollout_rollback": True},
                                   label="batch1-rollback")
        other = ex.run_playbook(str(playbook), ["h1", "h2"], {**VARS, "rollout_batch": 1},
                                label="batch1-upgrade")
        first = run(ex, playbook, 1)
    assert rollback.ok and other.ok and first.ok
    assert run_dirs(tmp_path) == ["001-batches-upgrade", "002-batch1-rollback",
                                  "003-batch1-upgrade"]
    assert ran(tmp_path) == {"h1": ["1", "1", "1"], "h2": ["1"]}


def test_a_cancelled_batch_says_so_and_later_batches_run_on_their_own(
        fleet: tuple[Path, Path], tmp_path: Path) -> None:
    inventory, playbook = fleet
    marker = tmp_path / "holding"

    def cancel() -> bool:  # once h2's 30 s task runs
        return marker.exists()

    with prepared(playbook, tmp_path, inventory, hold_hosts=["h2"], hold_marker=str(marker)) as ex:
        assert run(ex, playbook, 1).ok
        second = run(ex, playbook, 2, cancel=cancel)
        third = run(ex, playbook, 3)
    assert second.status == "canceled" and not second.ok
    assert second.hosts["h2"] == "not run: cancelled"
    assert second.failure_kind() == "cancelled"
    assert third.ok
    assert run_dirs(tmp_path) == ["001-batches-upgrade", "002-batch3-upgrade"]
    assert ran(tmp_path) == {"h1": ["1"], "h2": ["2"], "h3": ["2"], "h4": ["3"]}


def test_a_closed_session_ends_at_its_gate_and_leaves_no_process(
        fleet: tuple[Path, Path], tmp_path: Path) -> None:
    inventory, playbook = fleet
    ex = executor(tmp_path, inventory)
    ex.prepare_batches(str(playbook), BATCHES, VARS, tags=None)
    assert run(ex, playbook, 1).ok
    session = ex._session
    assert session is not None
    ex.close()
    assert session.ended and not session._thread.is_alive()
    events = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob(
        "001-batches-upgrade/artifacts/*/job_events/*.json")]
    said = {e["event_data"]["task"]: e["event_data"]["res"]["msg"] for e in events
            if e["event"] == "runner_on_ok"
            and e["event_data"]["task"].startswith("rollout: gate")}
    assert said == {"rollout: gate of batch 1": "batch 1: go",
                    "rollout: gate of batch 2": "batch 2: stopped (stop)"}
    # Nothing after the gate ran: batches 2 and 3 never reached a host.
    assert ran(tmp_path) == {"h1": ["1"]}


LISTING = textwrap.dedent("""\
    playbook: session.yml

      play #1 (localhost): rollout: before batch 1\tTAGS: []
        pattern: ['localhost']
        hosts (1):
          localhost

      play #2 (app:&rollout_batch_1): Upgrade\tTAGS: []
        pattern: ['app:&rollout_batch_1']
        hosts (1):
          h1

      play #3 (lbs): Tell the LBs\tTAGS: []
        pattern: ['lbs']
        hosts (0):

      play #4 (rollout_batch_1): rollout: after batch 1\tTAGS: []
        pattern: ['rollout_batch_1']
        hosts (1):
          h1

      play #5 (app:&rollout_batch_2): Upgrade\tTAGS: []
        pattern: ['app:&rollout_batch_2']
        hosts (2):
          h2
          {extra}
      play #6 (rollout_batch_2): rollout: after batch 2\tTAGS: []
        pattern: ['rollout_batch_2']
        hosts (2):
          h2
          h3
    """)


@pytest.mark.parametrize(("extra", "verdict"), [
    ("h3", None),
    ("h4", "play 'Upgrade' of batch 2 targets hosts outside the batch: h4 (its hosts pattern "
           "does not use rollout_hosts)"),
])
def test_check_hosts_reads_list_hosts(extra: str, verdict: str | None) -> None:
    assert check_hosts(LISTING.replace("{extra}", extra),
                       [(1, ["h1"]), (2, ["h2", "h3"])]) == verdict


def test_check_hosts_refuses_what_it_cannot_read() -> None:
    assert check_hosts("nothing", [(1, ["h1"])]) == "unexpected --list-hosts output (0 plays)"


def test_the_session_is_ready_at_its_first_gate_before_any_batch_is_let_through(
        fleet: tuple[Path, Path], tmp_path: Path) -> None:
    """The engine waits for this before draining batch 1: the wait is spent in rotation."""
    inventory, playbook = fleet
    with prepared(playbook, tmp_path, inventory) as ex:
        assert ex.wait_batches(60)
        session = ex._session
        assert session is not None and not session.ended and session.refused is None
        assert ran(tmp_path) == {}  # waiting at the gate: nothing ran on a host
        stdout = next((tmp_path / "runs" / "001-batches-upgrade").glob("artifacts/*/stdout"))
        assert "TASK [rollout: gate of batch 1]" in stdout.read_text()
        assert run(ex, playbook, 1).ok
    plain = AnsibleExecutor(str(inventory), work_dir=tmp_path / "other",
                            control_dir=str(tmp_path / "cp2"))
    assert plain.wait_batches(0)  # no session: nothing to wait for
    plain.close()


def test_runs_stream_no_start_event_per_host_but_the_sessions_own(
        fleet: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Local runs use rollout_py's awx_display (rollout_py._display): no runner_on_start
    event per host and task, except the session's own tasks (its readiness is the first
    gate's start); every result still has its start time."""
    events = spy_events(monkeypatch)
    inventory, playbook = fleet
    with prepared(playbook, tmp_path, inventory) as ex:
        assert run(ex, playbook, 1).ok
    assert run(executor(tmp_path, inventory), playbook, 2).ok  # a run of its own
    seen = [(k, str(d.get("task", "")), d.get("start")) for k, d in events]
    starts = [task for kind, task, _ in seen if kind == "runner_on_start"]
    assert GATE_TASK.format(1) in starts
    assert all(task.startswith("rollout: ") for task in starts), starts
    results = [start for kind, task, start in seen
               if kind == "runner_on_ok" and not task.startswith("rollout: ")]
    assert len(results) >= 4 and all(results)


def test_a_passing_argument_check_and_the_sessions_items_make_no_event_a_failed_check_does(
        fleet: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rollout_py's awx_display: Ansible's argument check before a role (per host, each time
    the role runs) makes no event when it passes, nor does a batch joining its group per host;
    a failed check is a failure with its message, and the task after it still reports."""
    events = spy_events(monkeypatch)

    def seen() -> list[tuple[str, str, str]]:
        return [(k, str(d.get("task_action", "")), str(d.get("task", ""))) for k, d in events]

    inventory, _ = fleet
    role = tmp_path / "roles" / "checked"
    (role / "meta").mkdir(parents=True)
    (role / "tasks").mkdir()
    (role / "meta" / "argument_specs.yml").write_text(
        "argument_specs:\n  main:\n    options:\n      checked_n: {type: int, required: true}\n")
    (role / "tasks" / "main.yml").write_text(
        "- name: Use the checked value\n  ansible.builtin.debug: {msg: '{{ checked_n }}'}\n")
    playbook = tmp_path / "role.yml"
    playbook.write_text(
        '- name: Upgrade\n  hosts: "{{ rollout_hosts | default(\'app\') }}"\n'
        "  gather_facts: false\n  roles:\n"
        "    - role: checked\n      vars: {checked_n: \"{{ n | default('x') }}\"}\n")
    monkeypatch.setenv("ANSIBLE_ROLES_PATH", str(tmp_path / "roles"))
    with prepared(playbook, tmp_path, inventory, n=1) as ex:
        assert run(ex, playbook, 1).ok and run(ex, playbook, 2).ok
    checks = [k for k, action, _ in seen() if action.endswith("validate_argument_spec")]
    assert checks == ["playbook_on_task_start"] * 2  # per task, not per host: kept
    assert [k for k, _, t in seen() if t == "Use the checked value" and k.startswith("runner_")
            ] == ["runner_on_ok"] * 3
    assert not [k for k, _, t in seen()
                if k.startswith("runner_item") and t.startswith("rollout: ")]
    assert ("runner_on_ok", "ansible.builtin.add_host",
            "rollout: batch 1 joins its group") in seen()
    events.clear()
    bad = run(executor(tmp_path, inventory), playbook, 1)  # n undefined: 'x' is not an int
    assert not bad.ok and "checked_n" in bad.hosts["h1"]
    assert [k for k, action, _ in seen() if action.endswith("validate_argument_spec")] == [
        "playbook_on_task_start", "runner_on_failed"]


@pytest.mark.parametrize("verbosity", [0, 1])
def test_a_stage_run_streams_no_ok_or_skipped_result_yet_reports_every_previous_version(
        fleet: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        verbosity: int) -> None:
    """The stage run (label "stage"): its ok and skipped results make no job event nor
    output line (one per host and task, which the controller never reads); its failures
    still say what failed, and every host's set_stats report arrives with the run's stats.
    With -v they stream as in any other run."""
    events = spy_events(monkeypatch)
    inventory, playbook = fleet
    ex = AnsibleExecutor(str(inventory), work_dir=tmp_path / "runs", verbosity=verbosity,
                         extravars={"ran_dir": str(tmp_path / "ran"), "fail_hosts": ["h2"]},
                         control_dir=str(tmp_path / "cp"))
    (tmp_path / "ran").mkdir()
    try:
        result = ex.run_playbook(str(playbook), HOSTS, {**VARS, "rollout_batch": 0},
                                 label="stage")
    finally:
        ex.close()
    assert result.hosts["h2"] == "failed: Fail on the hosts told to: boom on h2"
    assert {h: o for h, o in result.hosts.items() if h != "h2"} == dict.fromkeys(
        ["h1", "h3", "h4"], "ok")
    assert result.previous_versions == {h: f"v-{h}" for h in HOSTS}
    kinds = [kind for kind, _ in events]
    results = [k for k in kinds if k in ("runner_on_ok", "runner_on_skipped")]
    stdout = Path(result.artifact_dir, "stdout").read_text()
    if verbosity:
        assert len(results) >= 4 * 4 and "ok: [h1]" in stdout
    else:
        assert results == [] and "ok: [h1]" not in stdout
    assert kinds.count("runner_on_failed") == 1 + 4  # h2's failure, and the ignored one's
    assert "h2" in stdout and "PLAY RECAP" in stdout
