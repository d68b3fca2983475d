"""Ansible processes die with the controller that started them (rollout_py/_lifeline).

Real ansible-playbook / ansible runs against localhost (``ansible_connection=local``, no lab,
no root). Each test waits until the task's ``sleep`` runs under the controller, kills something
the way production can, and requires every process of the run to be gone within 10 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollout_py.errors import RolloutError
from rollout_py.executor import AnsibleExecutor
from rollout_py.procs import Proc, stop_all

REPO = Path(__file__).resolve().parents[2]

CONTROLLER = """
import sys
from pathlib import Path
from rollout_py.executor import AnsibleExecutor
tmp, mode = Path(sys.argv[1]), sys.argv[2]
ex = AnsibleExecutor(str(tmp / "inventory.ini"), work_dir=tmp / "runs",
                     control_dir=str(tmp / "cp"))  # a local connection opens no socket there
if mode == "playbook":
    ex.run_playbook(str(tmp / "sleep.yml"), ["localhost"], {}, label="sleep")
else:
    ex.run_command("localhost", "sleep 120", 300)
"""


@pytest.fixture
def ansible_dir(tmp_path: Path) -> Path:
    (tmp_path / "inventory.ini").write_text(
        f"localhost ansible_connection=local ansible_python_interpreter={sys.executable} "
        f"ansible_remote_tmp={tmp_path}/remote-tmp\n")
    # A module killed mid-run leaves its payload dir in the system temp dir: this test's own.
    (tmp_path / "tmp").mkdir()
    (tmp_path / "sleep.yml").write_text(
        "- hosts: all\n  gather_facts: false\n"
        f"  environment:\n    TMPDIR: {tmp_path / 'tmp'}\n  tasks:\n"
        "    - ansible.builtin.command: sleep 120\n")
    return tmp_path


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live process."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                text = fh.read()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2:].split()
        if fields[0] not in ("Z", "X"):
            found[int(entry)] = int(fields[1])
    return found


def _descendants(root: int) -> list[Proc]:
    parents = _parents()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        kids = [p for p, pp in parents.items() if pp == pid]
        tree += kids
        todo += kids
    procs = []
    for pid in tree:
        try:
            procs.append(Proc.of(pid))
        except RolloutError:  # exited meanwhile
            continue
    return procs


def _cmdline(proc: Proc) -> str:
    try:
        with open(f"/proc/{proc.pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _wait_for_task(root: int, deadline: float = 60) -> list[Proc]:
    """The process tree under ``root`` once the task's ``sleep 120`` is running in it."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        tree = _descendants(root)
        if any(_cmdline(p) == "sleep 120" for p in tree):
            return tree
        time.sleep(0.05)
    raise AssertionError(f"no 'sleep 120' under pid {root} after {deadline} s")


def _left_after(tree: list[Proc], deadline: float = 10) -> tuple[list[str], float]:
    """What of ``tree`` is still alive once ``deadline`` passed (or nothing, earlier)."""
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        if not any(p.alive() for p in tree):
            return [], time.monotonic() - start
        time.sleep(0.02)
    return [f"{p.pid} {_cmdline(p)}" for p in tree if p.alive()], deadline


@pytest.fixture
def leftovers() -> Iterator[list[Proc]]:
    """Processes a test saw; whatever a failing test leaves is stopped by PID afterwards."""
    seen: list[Proc] = []
    yield seen
    stop_all([p for p in seen if p.alive()], timeout=5)


@pytest.mark.parametrize("mode", ["playbook", "adhoc"])
def test_kill_9_of_the_controller_ends_its_ansible_processes(
        ansible_dir: Path, leftovers: list[Proc], mode: str) -> None:
    controller = subprocess.Popen([sys.executable, "-c", CONTROLLER, str(ansible_dir), mode],
                                  cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO),
                                                              "TMPDIR": str(ansible_dir / "tmp")})
    try:
        tree = _wait_for_task(controller.pid)
        leftovers += tree
        assert any("ansible" in _cmdline(p) for p in tree)
    finally:
        controller.kill()
        controller.wait(10)
    left, took = _left_after(tree)
    assert left == [], f"still running 10 s after kill -9 of the controller: {left}"
    print(f"{mode}: no process of the run left {took:.2f} s after kill -9")


def test_a_cancelled_run_leaves_no_task_running(ansible_dir: Path,
                                                leftovers: list[Proc]) -> None:
    """ansible-runner cancels by SIGKILL to ansible-playbook's process group, which missed
    Ansible's workers (each calls setsid): the cancelled task ran on beside the rollback."""
    executor = AnsibleExecutor(str(ansible_dir / "inventory.ini"),
                               work_dir=ansible_dir / "runs")
    cancel = threading.Event()
    worker = threading.Thread(target=executor.run_playbook, daemon=True,
                              args=(str(ansible_dir / "sleep.yml"), ["localhost"], {}),
                              kwargs={"label": "sleep", "cancel": cancel.is_set})
    worker.start()
    try:
        tree = _wait_for_task(os.getpid())
        leftovers += tree
    finally:
        cancel.set()
        worker.join(30)
        executor.close()
    assert not worker.is_alive()
    left, _ = _left_after(tree)
    assert left == [], f"still running 10 s after the run was cancelled: {left}"

