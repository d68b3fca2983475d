"""The fleet lock: one deploy at a time, dead holders never block, manual holds, stale metadata."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import rollout_py
from rollout_py import lock as lock_mod
from rollout_py.lock import FleetLock, Holder, LockHeldError, fleet_key
from tests.childkit import ChildProcs

KEY = "web-0123456789ab"
_PKG = str(Path(rollout_py.__file__).parent)

# The children need only the standard library and the lock module: -S skips site-packages, and a
# bare package object keeps them from importing the whole engine (rollout_py/__init__), so the
# forty children of the race test start quickly.
_PRELUDE = textwrap.dedent(f"""
    import sys, types
    _pkg = types.ModuleType("rollout_py")
    _pkg.__path__ = [{_PKG!r}]
    sys.modules["rollout_py"] = _pkg
    from pathlib import Path
    from rollout_py.lock import FleetLock, LockHeldError
""")


class Children(ChildProcs):
    """Child Python processes started by a test; all stopped (by pid) and closed at teardown."""

    def __init__(self) -> None:
        super().__init__()

    def spawn(self, code: str, *args: str, pass_fds: tuple[int, ...] = ()
              ) -> subprocess.Popen[str]:
        argv = [sys.executable, "-S", "-c", _PRELUDE + textwrap.dedent(code), *args]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                pass_fds=pass_fds)
        self.procs.append(proc)
        return proc



@pytest.fixture
def children() -> Iterator[Children]:
    kids = Children()
    try:
        yield kids
    finally:
        kids.close()


@pytest.fixture
def locks(tmp_path: Path) -> Iterator[list[FleetLock]]:
    """FleetLocks on one key in tmp_path; whatever a test leaves held is released."""
    made: list[FleetLock] = []
    yield made
    for lk in made:
        lk.release()


def _new(locks: list[FleetLock], tmp_path: Path) -> FleetLock:
    lk = FleetLock(tmp_path, KEY)
    locks.append(lk)
    return lk


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_fleet_key_is_stable_and_safe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inv = tmp_path / "inventory.ini"
    inv.write_text("[app]\napp01\n")
    monkeypatch.chdir(tmp_path)
    key = fleet_key("web shop/eu", str(inv))
    assert key == fleet_key("web shop/eu", "inventory.ini")
    assert key == fleet_key("web shop/eu", "./inventory.ini")
    name, digest = key.rsplit("-", 1)
    assert name == "web_shop_eu" and len(digest) == 12 and int(digest, 16) >= 0
    assert fleet_key("web shop/eu", "app01,app02,") != key
    assert fleet_key("other", str(inv)) != key
    assert fleet_key("../..", str(inv)).startswith("fleet-")


def test_invalid_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(rollout_py.InputError):
        FleetLock(tmp_path, "../escape")


def test_second_lock_in_process_is_refused_and_named(tmp_path: Path,
                                                     locks: list[FleetLock]) -> None:
    first, second = _new(locks, tmp_path), _new(locks, tmp_path)
    first.acquire(deploy_id="d-1", message="nightly release")
    with pytest.raises(LockHeldError) as err:
        second.acquire(deploy_id="d-2")
    holder = err.value.holder
    assert (holder.pid, holder.deploy_id, holder.kind) == (os.getpid(), "d-1", "deploy")
    text = str(err.value)
    for part in ("d-1", f"pid {os.getpid()}", f"{holder.user}@{holder.host}", "nightly release",
                 "since"):
        assert part in text
    assert isinstance(err.value, rollout_py.PreflightError)
    assert second.status() == holder and first.status() == holder
    assert not second.held

    first.release()
    first.release()  # idempotent
    assert not first.holder_path.exists()
    assert second.status() is None
    second.acquire(deploy_id="d-2")
    assert second.status() is not None and second.status().deploy_id == "d-2"  # type: ignore[union-attr]


def test_metadata_files_and_permissions(tmp_path: Path, locks: list[FleetLock]) -> None:
    lk = _new(locks, tmp_path / "deep" / "state")
    old = os.umask(0o077)
    try:
        lk.acquire(deploy_id="d-1", message="m")
    finally:
        os.umask(old)
    assert stat.S_IMODE(lk.holder_path.stat().st_mode) == 0o644
    data = json.loads(lk.holder_path.read_text())
    assert data["pid"] == os.getpid() and data["deploy_id"] == "d-1" and data["kind"] == "deploy"
    assert Holder.from_json(lk.holder_path.read_text()) == lk.status()
    lk.release()
    assert lk.lock_path.exists()  # the flock target is never deleted
    assert [p.name for p in lk.dir.iterdir()] == [f"{KEY}.lock"]


def test_context_manager_releases(tmp_path: Path, locks: list[FleetLock]) -> None:
    lk, other = _new(locks, tmp_path), _new(locks, tmp_path)
    with pytest.raises(RuntimeError), lk:
        assert lk.held
        raise RuntimeError("boom")
    assert not lk.held
    lk.acquire(deploy_id="d-9")
    with lk:
        assert other.status() is not None and other.status().deploy_id == "d-9"  # type: ignore[union-attr]
    assert other.status() is None


def test_wait_gets_the_lock_once_released(tmp_path: Path, locks: list[FleetLock]) -> None:
    first, waiter = _new(locks, tmp_path), _new(locks, tmp_path)
    first.acquire(deploy_id="d-1")
    timer = threading.Timer(0.3, first.release)
    timer.start()
    try:
        waiter.acquire(deploy_id="d-2", wait=30)
    finally:
        timer.join()
    assert waiter.held and waiter.status() is not None
    with pytest.raises(LockHeldError):
        first.acquire(deploy_id="d-3", wait=0.2)


def test_killed_holder_never_blocks(tmp_path: Path, locks: list[FleetLock],
                                    children: Children) -> None:
    child = children.spawn("""
        lk = FleetLock(Path(sys.argv[1]), sys.argv[2])
        lk.acquire(deploy_id="d-child", message="child deploy")
        print("locked", flush=True)
        import time; time.sleep(120)
    """, str(tmp_path), KEY)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "locked"

    parent = _new(locks, tmp_path)
    with pytest.raises(LockHeldError) as err:
        parent.acquire(deploy_id="d-parent")
    assert err.value.holder.pid == child.pid and f"pid {child.pid}" in str(err.value)
    status = parent.status()
    assert status is not None and (status.pid, status.deploy_id) == (child.pid, "d-child")

    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert parent.holder_path.exists()  # a killed process leaves its metadata behind ...
    assert parent.status() is None  # ... which is never reported
    parent.acquire(deploy_id="d-parent")
    status = parent.status()
    assert status is not None and status.pid == os.getpid()


def test_two_processes_at_once_exactly_one_wins(tmp_path: Path, children: Children) -> None:
    code = """
        lk = FleetLock(Path(sys.argv[1]), sys.argv[2])
        barrier = int(sys.argv[3])
        print("ready", flush=True)
        import os; os.read(barrier, 1)  # returns when the parent closes the write end
        try:
            lk.acquire(deploy_id=str(os.getpid()))
            print("won", flush=True)
        except LockHeldError as exc:
            print("refused", exc.holder.pid, flush=True)
        sys.stdin.read()  # hold the lock until the parent has both answers
        lk.release()
    """
    for round_ in range(20):
        read_end, write_end = os.pipe()
        try:
            pair = [children.spawn(code, str(tmp_path), KEY, str(read_end),
                                   pass_fds=(read_end,)) for _ in range(2)]
        finally:
            os.close(read_end)
        try:
            for proc in pair:
                assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        finally:
            os.close(write_end)  # both children start their acquire now
        answers = [proc.stdout.readline().split() for proc in pair if proc.stdout]
        assert sorted(a[0] for a in answers) == ["refused", "won"], (round_, answers)
        winner = next(p for p, a in zip(pair, answers, strict=True) if a[0] == "won")
        loser_answer = next(a for a in answers if a[0] == "refused")
        assert loser_answer[1:] == [str(winner.pid)]
        for proc in pair:
            assert proc.stdin is not None
            proc.stdin.close()
            assert proc.wait(timeout=30) == 0
    assert FleetLock(tmp_path, KEY).status() is None


def test_manual_hold_blocks_until_released(tmp_path: Path, locks: list[FleetLock]) -> None:
    ops, deploy = _new(locks, tmp_path), _new(locks, tmp_path)
    hold = ops.hold(message="db migration, ask bob")
    assert hold.kind == "hold" and stat.S_IMODE(ops.hold_path.stat().st_mode) == 0o644
    with pytest.raises(LockHeldError) as err:
        deploy.acquire(deploy_id="d-1", wait=0.2)
    assert err.value.holder == hold
    assert "manual hold" in str(err.value) and "db migration, ask bob" in str(err.value)
    assert "rollout lock release" in str(err.value)
    assert deploy.status() == hold
    with pytest.raises(LockHeldError):
        deploy.hold(message="second hold")

    assert deploy.release_hold() is True
    assert deploy.release_hold() is False
    assert deploy.status() is None
    deploy.acquire(deploy_id="d-1")


def test_hold_outlives_its_process(tmp_path: Path, locks: list[FleetLock],
                                   children: Children) -> None:
    child = children.spawn("""
        FleetLock(Path(sys.argv[1]), sys.argv[2]).hold(message="frozen for audit")
    """, str(tmp_path), KEY)
    assert child.wait(timeout=30) == 0
    lk = _new(locks, tmp_path)
    with pytest.raises(LockHeldError, match="frozen for audit"):
        lk.acquire(deploy_id="d-1")


def test_wait_sees_a_hold_released(tmp_path: Path, locks: list[FleetLock]) -> None:
    lk = _new(locks, tmp_path)
    lk.hold(message="brief")
    timer = threading.Timer(0.3, lk.release_hold)
    timer.start()
    try:
        lk.acquire(deploy_id="d-1", wait=30)
    finally:
        timer.join()
    assert lk.held


def test_hold_refused_while_a_deploy_runs(tmp_path: Path, locks: list[FleetLock]) -> None:
    deploy, ops = _new(locks, tmp_path), _new(locks, tmp_path)
    deploy.acquire(deploy_id="d-1", message="running")
    with pytest.raises(LockHeldError) as err:
        ops.hold(message="freeze")
    assert err.value.holder.deploy_id == "d-1" and err.value.holder.kind == "deploy"
    with pytest.raises(LockHeldError):
        deploy.hold(message="freeze")
    assert not ops.hold_path.exists()
    deploy.release()
    ops.hold(message="freeze")


def test_unreadable_hold_file_still_blocks(tmp_path: Path, locks: list[FleetLock]) -> None:
    lk = _new(locks, tmp_path)
    lk.dir.mkdir(parents=True)
    lk.hold_path.write_text("{not json")
    with pytest.raises(LockHeldError, match="unreadable hold file"):
        lk.acquire(deploy_id="d-1")
    assert lk.release_hold()


def test_stale_holder_json_is_not_reported(tmp_path: Path, locks: list[FleetLock]) -> None:
    lk = _new(locks, tmp_path)
    lk.dir.mkdir(parents=True)
    stale = Holder(pid=_dead_pid(), user="ghost", host="nowhere", deploy_id="d-old",
                   started=time.time() - 3600, message="crashed", kind="deploy")
    lk.holder_path.write_text(stale.to_json())
    assert lk.status() is None
    lk.lock_path.touch()
    assert lk.status() is None
    lk.acquire(deploy_id="d-new")
    status = FleetLock(tmp_path, KEY).status()
    assert status is not None and status.deploy_id == "d-new"


def test_busy_flock_with_stale_metadata_names_no_dead_holder(
        tmp_path: Path, locks: list[FleetLock], monkeypatch: pytest.MonkeyPatch) -> None:
    # The flock is held, but holder.json is from a dead deploy (the holder is between its flock
    # and its write, or wrote nothing): the dead deploy must not be named.
    monkeypatch.setattr(lock_mod, "_META_GRACE", 0.1)
    lk = _new(locks, tmp_path)
    lk.dir.mkdir(parents=True)
    lk.holder_path.write_text(Holder(pid=_dead_pid(), user="ghost", host=socket.gethostname(),
                                     deploy_id="d-old", started=0.0, message="",
                                     kind="deploy").to_json())
    fd = os.open(lk.lock_path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        status = lk.status()
        assert status is not None and status.pid is None and status.deploy_id is None
        assert "unknown" in status.describe()
        with pytest.raises(LockHeldError, match="not recorded"):
            lk.acquire(deploy_id="d-1")
    finally:
        os.close(fd)


def test_a_brief_flock_does_not_refuse_a_deploy(
        tmp_path: Path, locks: list[FleetLock], monkeypatch: pytest.MonkeyPatch) -> None:
    # Another process's status() probe holds the flock for an instant with no holder.json:
    # acquire(wait=0) keeps trying through that instant instead of refusing.
    monkeypatch.setattr(lock_mod, "_META_GRACE", 30.0)
    lk = _new(locks, tmp_path)
    lk.dir.mkdir(parents=True)
    fd = os.open(lk.lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    timer = threading.Timer(0.2, os.close, (fd,))
    timer.start()
    try:
        lk.acquire(deploy_id="d-1")
    finally:
        timer.join()
    assert lk.held


def test_holder_json_round_trip_and_describe() -> None:
    h = Holder(pid=7, user="alice", host="ci-01", deploy_id="d-7", started=0.0,
               message="line one\nline two", kind="deploy")
    assert Holder.from_json(h.to_json()) == h
    assert h.describe() == ("deploy d-7 by alice@ci-01 (pid 7) since 1970-01-01 00:00:00 UTC: "
                            "line one line two")
    for bad in ("[]", '{"kind": "other", "started": 0}', '{"kind": "hold", "pid": "7", '
                '"started": 0}'):
        with pytest.raises(ValueError):
            Holder.from_json(bad)
