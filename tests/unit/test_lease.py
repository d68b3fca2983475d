"""The fleet lease: one lock per LB socket and backend, whatever directory the spec is in."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import rollout_py
from rollout_py.balancer import lease as lease_mod
from rollout_py.balancer.lease import (
    FleetLease,
    acquire_fleet_lease,
    lease_sites,
    local_lock_name,
)
from rollout_py.balancer.lease_locks import LeaseSite, me, remote_script
from rollout_py.balancer.ssh import SshOptions
from rollout_py.errors import InputError, PreflightError
from rollout_py.lock import Holder, LockHeldError
from tests.childkit import ChildProcs

pytestmark = pytest.mark.unit

_PKG = str(Path(rollout_py.__file__).parent)
# Children import only the lease modules: -S skips site-packages, and a bare package object
# keeps them from importing the whole engine (rollout_py/__init__), so they start quickly.
_CHILD = textwrap.dedent(f"""
    import sys, types
    _pkg = types.ModuleType("rollout_py")
    _pkg.__path__ = [{_PKG!r}]
    sys.modules["rollout_py"] = _pkg
    from rollout_py.balancer.lease import acquire_fleet_lease
    from rollout_py.balancer.ssh import SshOptions
    lease = acquire_fleet_lease([sys.argv[1]], sys.argv[2], ssh=lambda host: SshOptions(),
                                deploy_id=sys.argv[3], message="child deploy")
    print("LOCKED", flush=True)
    sys.stdin.readline()  # hold until the parent says
    lease.release()
    print("released", flush=True)
    sys.stdin.readline()
""")


def _no_ssh(host: str) -> SshOptions:
    raise AssertionError(f"no SSH expected in unit tests ({host})")


class Children(ChildProcs):
    """Lease holders in child processes; all stopped (by pid) and closed at teardown."""

    def __init__(self) -> None:
        super().__init__()

    def hold(self, url: str, backend: str, deploy_id: str, *, cwd: Path
             ) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-S", "-c", _CHILD, url, backend, deploy_id],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                cwd=cwd)
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "LOCKED"
        return proc



@pytest.fixture
def children() -> Iterator[Children]:
    kids = Children()
    try:
        yield kids
    finally:
        kids.close()


@pytest.fixture
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "run" / "lock" / "rollout_py"  # created by the first lease
    monkeypatch.setenv("ROLLOUT_LOCK_DIR", str(path))
    return path


@pytest.fixture
def sock(tmp_path: Path) -> str:
    """An LB admin socket path (the lease never connects to it)."""
    path = tmp_path / "lb" / "admin.sock"
    path.parent.mkdir()
    path.touch()
    return str(path)


@pytest.fixture
def leases() -> Iterator[Callable[..., FleetLease]]:
    """acquire_fleet_lease for this process; whatever a test leaves held is released."""
    made: list[FleetLease] = []

    def take(sockets: list[str], backend: str = "app", *, deploy_id: str | None = "d-parent",
             wait: float = 0.0) -> FleetLease:
        lease = acquire_fleet_lease(sockets, backend, ssh=_no_ssh, deploy_id=deploy_id,
                                    message="parent deploy", wait=wait)
        made.append(lease)
        return lease

    yield take
    for lease in made:
        lease.release()


def test_two_workspaces_exclude_each_other_and_the_error_names_the_holder(
        tmp_path: Path, lock_dir: Path, sock: str, children: Children,
        leases: Callable[..., FleetLease], monkeypatch: pytest.MonkeyPatch) -> None:
    # Two copies of one spec: a CI workspace and a laptop checkout, naming the same LB socket.
    ws_a, ws_b = tmp_path / "ci" / "workspace", tmp_path / "home" / "alice" / "deploys"
    ws_a.mkdir(parents=True)
    ws_b.mkdir(parents=True)
    child = children.hold(f"unix://{sock}", "app", "d-child", cwd=ws_a)
    monkeypatch.chdir(ws_b)

    with pytest.raises(LockHeldError) as err:
        leases([f"unix://{sock}"])
    holder = err.value.holder
    assert (holder.pid, holder.deploy_id, holder.kind) == (child.pid, "d-child", "deploy")
    text = str(err.value)
    for part in ("d-child", f"{holder.user}@{holder.host}", f"pid {child.pid}", "child deploy"):
        assert part in text
    assert isinstance(err.value, PreflightError)
    assert any(str(lock_dir) in note for note in err.value.__notes__)

    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("release\n")
    child.stdin.flush()
    assert child.stdout.readline().strip() == "released"
    lease = leases([f"unix://{sock}"])
    assert lease.held and lease.holder.pid == os.getpid()


def test_the_lock_directory_is_shared_and_holds_who_holds_it(
        lock_dir: Path, sock: str, leases: Callable[..., FleetLease]) -> None:
    old = os.umask(0o077)
    try:
        lease = leases([f"unix://{sock}"])
    finally:
        os.umask(old)
    assert stat.S_IMODE(lock_dir.stat().st_mode) == 0o1777
    name = local_lock_name(sock, "app")
    holder_file = lock_dir / name.replace(".lock", ".holder.json")
    assert stat.S_IMODE(holder_file.stat().st_mode) == 0o644
    data = json.loads(holder_file.read_text())
    assert (data["pid"], data["deploy_id"], data["message"]) == (os.getpid(), "d-parent",
                                                                 "parent deploy")
    assert lease.describe() == [f"unix://{sock}: flock {lock_dir / name} on this machine "
                                "(the LB's host)"]
    assert lease.local_only == ()
    lease.release()
    lease.release()  # idempotent
    assert not lease.held
    assert sorted(p.name for p in lock_dir.iterdir()) == [name]  # the lock file stays


def test_other_backends_and_other_lbs_do_not_exclude(
        tmp_path: Path, lock_dir: Path, sock: str, leases: Callable[..., FleetLease]) -> None:
    other = tmp_path / "lb" / "other.sock"
    leases([f"unix://{sock}"], "app")
    leases([f"unix://{sock}"], "api")
    leases([f"unix://{other}"], "app")
    with pytest.raises(LockHeldError):
        leases([f"unix://{other}", f"unix://{sock}"], "app")


def test_paths_to_one_socket_give_one_lock(tmp_path: Path, lock_dir: Path, sock: str,
                                           leases: Callable[..., FleetLease],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "link-dir").symlink_to(tmp_path / "lb")
    (tmp_path / "link.sock").symlink_to(sock)
    monkeypatch.chdir(tmp_path)
    forms = [f"{tmp_path}/lb/./admin.sock", f"{tmp_path}/lb/../lb/admin.sock",
             f"{tmp_path}/link-dir/admin.sock", f"{tmp_path}/link.sock"]
    names = {local_lock_name(p, "app") for p in [sock, "lb/admin.sock", "link.sock", *forms]}
    assert names == {local_lock_name(sock, "app")}
    assert local_lock_name(sock, "api") not in names

    lease = leases([f"unix://{sock}"])
    for form in forms:
        with pytest.raises(LockHeldError):
            leases([f"unix://{form}"])
    lease.release()
    # Two spellings of one LB in one spec are one lock, not a lease that blocks itself.
    assert len(leases([f"unix://{sock}", f"unix://{forms[2]}"]).sites) == 1


def test_wait_polls_until_the_holder_releases(lock_dir: Path, sock: str, children: Children,
                                              leases: Callable[..., FleetLease],
                                              monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    child = children.hold(f"unix://{sock}", "app", "d-child", cwd=tmp_path)
    assert child.stdin is not None and child.stdout is not None
    naps: list[float] = []

    def nap(seconds: float) -> None:
        # The lease found the lock busy and waits: the holder releases during the first nap.
        naps.append(seconds)
        if len(naps) == 1:
            child.stdin.write("release\n")  # type: ignore[union-attr]
            child.stdin.flush()  # type: ignore[union-attr]
            assert child.stdout.readline().strip() == "released"  # type: ignore[union-attr]
        time.sleep(seconds)

    clock = types.SimpleNamespace(monotonic=time.monotonic, time=time.time, sleep=nap)
    monkeypatch.setattr(lease_mod, "time", clock)
    lease = leases([f"unix://{sock}"], wait=30)
    assert lease.held and len(naps) == 1


def test_wait_gives_up_and_releases_what_it_took(
        tmp_path: Path, lock_dir: Path, sock: str, children: Children,
        leases: Callable[..., FleetLease]) -> None:
    # An LB whose lock is taken before sock's (locks are taken in the order of their names).
    first = next(p for n in range(100) if local_lock_name(p := f"{tmp_path}/lb/{n}.sock", "app")
                 < local_lock_name(sock, "app"))
    children.hold(f"unix://{sock}", "app", "d-child", cwd=tmp_path)
    with pytest.raises(LockHeldError, match="d-child"):
        leases([f"unix://{first}", f"unix://{sock}"], wait=0.3)
    leases([f"unix://{first}"])  # given back when the lease failed


def test_a_killed_holder_frees_the_lease(tmp_path: Path, lock_dir: Path, sock: str,
                                         children: Children,
                                         leases: Callable[..., FleetLease]) -> None:
    child = children.hold(f"unix://{sock}", "app", "d-killed", cwd=tmp_path)
    with pytest.raises(LockHeldError, match="d-killed"):
        leases([f"unix://{sock}"])
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL  # reaped: its descriptors are closed
    # The kernel dropped the flock; wait= bounds the poll if it were not yet visible.
    lease = leases([f"unix://{sock}"], wait=10)
    assert lease.held
    holder_file = lock_dir / local_lock_name(sock, "app").replace(".lock", ".holder.json")
    assert Holder.from_json(holder_file.read_text()).pid == os.getpid()


def test_busy_lock_without_a_live_holder_is_reported_unknown(
        lock_dir: Path, sock: str, leases: Callable[..., FleetLease],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lease_mod, "_GRACE", 0.2)
    leases([f"unix://{sock}"])
    holder_file = lock_dir / local_lock_name(sock, "app").replace(".lock", ".holder.json")
    dead = subprocess.Popen([sys.executable, "-S", "-c", "pass"])
    dead.wait()
    holder_file.write_text(me(pid=dead.pid, started=0.0, deploy_id="d-dead",
                              message="").to_json())
    with pytest.raises(LockHeldError, match="not recorded") as err:
        leases([f"unix://{sock}"])
    assert err.value.holder.deploy_id is None and "d-dead" not in str(err.value)


def test_tcp_lbs_are_locked_on_this_machine_only(lock_dir: Path,
                                                 leases: Callable[..., FleetLease]) -> None:
    lease = leases(["tcp://LB1.example:9999"])
    assert lease.local_only == ("tcp://LB1.example:9999",)
    assert "on this machine only" in lease.describe()[0]
    with pytest.raises(LockHeldError):
        leases(["tcp://lb1.example:9999"])  # host names are case-insensitive
    leases(["tcp://lb1.example:9998"])


def test_sites_order_and_ssh_locks_live_on_the_lb_host(lock_dir: Path) -> None:
    urls = ["unix:///run/haproxy/admin.sock", "ssh://deploy@lb2:2222/run/haproxy/admin.sock",
            "ssh://root@lb2:2222/run/haproxy/../haproxy/admin.sock"]
    sites = lease_sites(urls, "app")
    assert [s.key for s in sites] == sorted(s.key for s in sites)
    assert [s.scheme for s in sites] == ["ssh", "unix"]  # one lock per LB host, whoever logs in
    ssh = sites[0]
    assert ssh.path.startswith("/run/lock/rollout_py/") and ssh.ssh_host == "deploy@lb2:2222"
    assert ssh.describe().endswith("on deploy@lb2:2222, held over SSH")
    assert lease_sites(list(reversed(urls)), "app") != sites  # first spelling wins ...
    assert [s.key for s in lease_sites(list(reversed(urls)), "app")] == [s.key for s in sites]


def test_bad_input_and_unusable_lock_dir(tmp_path: Path, sock: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError):
        lease_sites([f"unix://{sock}"], "app;shutdown")
    with pytest.raises(InputError):
        lease_sites(["http://lb1/admin"], "app")
    with pytest.raises(InputError, match="no LB socket"):
        acquire_fleet_lease([], "app", ssh=_no_ssh, deploy_id=None, message="")
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("ROLLOUT_LOCK_DIR", str(tmp_path / "file" / "locks"))
    with pytest.raises(PreflightError, match=r"file/locks.*ROLLOUT_LOCK_DIR"):
        acquire_fleet_lease([f"unix://{sock}"], "app", ssh=_no_ssh, deploy_id=None,
                            message="")


def test_the_remote_script_locks_until_its_stdin_ends(tmp_path: Path) -> None:
    # What runs on an ssh:// LB host, run here with sh: the SSH channel is the child's stdin.
    site = LeaseSite("ssh://root@lb2/run/haproxy/admin.sock", "ssh",
                     str(tmp_path / "locks" / "abc.lock"), "root@lb2:22")
    holder = me(pid=4242, started=0.0, deploy_id="d-remote", message="it's \"quoted\"; $(x)")

    def run() -> subprocess.Popen[str]:
        return subprocess.Popen(["sh", "-c", remote_script(site, holder)], text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    first = run()
    assert first.stdout is not None and first.stdout.readline() == "LOCKED\n"
    assert Holder.from_json(Path(site.holder_path).read_text()) == holder
    try:
        second = run()
        out, _ = second.communicate(timeout=30)
        assert out.splitlines()[0] == "BUSY"
        assert Holder.from_json(out.split("\n", 1)[1]) == holder
    finally:
        assert first.stdin is not None
        first.stdin.close()  # as sshd does when the controller's connection ends
        assert first.wait(timeout=30) == 0
        first.stdout.close()
    assert not Path(site.holder_path).exists()
    third = run()
    assert third.stdout is not None and third.stdout.readline() == "LOCKED\n"
    third.kill()  # even if the shell itself dies, the kernel frees its flock
    third.wait()
    third.stdout.close()
    assert third.stdin is not None
    third.stdin.close()
    fourth = run()
    out, _ = fourth.communicate("", timeout=30)
    assert out == "LOCKED\n"
