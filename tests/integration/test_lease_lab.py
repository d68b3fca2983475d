"""The fleet lease on the lab: the lock lives on the ssh:// LB host and dies with its holder.

Contenders run in separate processes: in this machine's network namespace (bound to the lab
gateway, as the spec's ssh_config says), and inside app01's network and UTS namespaces, a
second "machine" named app01 that reaches lb2 over the lab bridge. No traffic leaves the lab.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import rollout_py
from rollout_py.api import ssh_options_for
from rollout_py.balancer.lease import acquire_fleet_lease, lease_sites
from rollout_py.lab import net
from rollout_py.lab.layout import Layout
from rollout_py.lab.procs import Proc
from rollout_py.lock import LockHeldError
from rollout_py.spec import Spec
from tests.childkit import ChildProcs
from tests.integration.conftest import REPO, LabFactory
from tests.integration.lab_ssh import lab_ssh

pytestmark = pytest.mark.integration

_CONTENDER = """
import dataclasses, json, sys
import rollout_py
from rollout_py.api import ssh_options_for
from rollout_py.balancer.lease import acquire_fleet_lease
from rollout_py.lock import LockHeldError

spec_path, mode, deploy_id, *urls = sys.argv[1:]
spec = rollout_py.load_spec(spec_path)
options = ssh_options_for(spec)

def ssh(host):
    # Inside another host's namespace the gateway address is not ours to bind to.
    opts = options(host)
    return opts if mode != "other-host" else dataclasses.replace(opts, bind_address=None)

try:
    lease = acquire_fleet_lease(urls, spec.haproxy.backend, ssh=ssh, deploy_id=deploy_id,
                                message=f"contender {deploy_id}")
except LockHeldError as exc:
    print(json.dumps({"busy": str(exc), "holder": json.loads(exc.holder.to_json())}),
          flush=True)
    sys.exit(0)
print(json.dumps({"locked": lease.describe()}), flush=True)
sys.stdin.readline()  # hold until told, or killed
lease.release()
"""


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> Layout:
    return lab_factory(n_hosts=1, n_lbs=2, name="lease")


@pytest.fixture
def spec(lab: Layout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Spec:
    monkeypatch.setenv("ROLLOUT_LOCK_DIR", str(tmp_path / "locks"))  # for the unix:// LB
    return rollout_py.load_spec(lab.path / "rollout.yml")


def _ssh_url(lab: Layout) -> str:
    url = lab.lbs[1].socket_url
    assert url.startswith("ssh://")
    return url


class Contenders(ChildProcs):
    """Contending controllers in child processes; all killed (by pid) and reaped at teardown."""

    def __init__(self, lab: Layout) -> None:
        super().__init__()
        self.lab = lab

    def start(self, mode: str, deploy_id: str, urls: list[str]) -> subprocess.Popen[str]:
        argv = [sys.executable, "-c", _CONTENDER, str(self.lab.path / "rollout.yml"), mode,
                deploy_id, *urls]
        if mode == "other-host":
            # app01's network and hostname; this machine's files (the venv, the lab's keys).
            sshd = Proc.from_json(self.lab.procs[f"sshd:{self.lab.app_hosts[0].name}"])
            argv = ["nsenter", "-t", str(sshd.pid), "-n", "-u", "--", *argv]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)})
        self.procs.append(proc)
        return proc

    def answer(self, proc: subprocess.Popen[str]) -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, f"contender exited {proc.wait(timeout=30)} without an answer"
        return dict(json.loads(line))

    def once(self, mode: str, deploy_id: str, urls: list[str]) -> dict[str, Any]:
        proc = self.start(mode, deploy_id, urls)
        answer = self.answer(proc)
        assert proc.stdin is not None
        proc.stdin.close()  # a contender that won gives the lease back
        assert proc.wait(timeout=60) == 0
        return answer



@pytest.fixture
def contenders(lab: Layout) -> Iterator[Contenders]:
    kids = Contenders(lab)
    try:
        yield kids
    finally:
        kids.close()


def _lb2_holder(lab: Layout, spec: Spec) -> dict[str, Any] | None:
    """holder.json on lb2, read as an operator would: over SSH, on the LB host."""
    site = next(s for s in lease_sites(spec.haproxy.sockets, spec.haproxy.backend)
                if s.scheme == "ssh")
    text = lab_ssh(lab, lab.lb_hosts[0].name, f"cat {site.holder_path} 2>/dev/null || true")
    return dict(json.loads(text)) if text.strip() else None


def _lease_shells_on_lb2(lab: Layout) -> list[int]:
    """PIDs in lb2's network namespace running the remote lease script."""
    found = []
    for pid in net.netns_pids(lab.lb_hosts[0].netns):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:  # exited meanwhile
            continue
        if b"flock -n 9" in cmdline:
            found.append(pid)
    return found


def test_a_lease_excludes_other_processes_and_other_hosts(lab: Layout, spec: Spec,
                                                          contenders: Contenders) -> None:
    urls = list(spec.haproxy.sockets)
    assert urls[0].startswith("unix://") and urls[1] == _ssh_url(lab)
    lease = acquire_fleet_lease(urls, spec.haproxy.backend, ssh=ssh_options_for(spec),
                                deploy_id="d-here", message="integration")
    try:
        lines = lease.describe()
        assert len(lines) == 2 and any("held over SSH" in line for line in lines)
        on_lb2 = _lb2_holder(lab, spec)
        assert on_lb2 is not None and (on_lb2["pid"], on_lb2["deploy_id"]) == (os.getpid(),
                                                                                "d-here")
        for mode in ("this-host", "other-host"):
            answer = contenders.once(mode, f"d-{mode}", [_ssh_url(lab)])
            assert answer["holder"]["pid"] == os.getpid(), (mode, answer)
            for part in ("d-here", f"pid {os.getpid()}", "integration",
                         f"{lease.holder.user}@{lease.holder.host}"):
                assert part in answer["busy"], (mode, answer)
    finally:
        lease.release()
    assert _lb2_holder(lab, spec) is None  # removed before the flock went
    # Now the other "machine" holds it, and this process is refused by name.
    holder = contenders.start("other-host", "d-app01", [_ssh_url(lab)])
    assert "locked" in contenders.answer(holder)
    with pytest.raises(LockHeldError) as err:
        acquire_fleet_lease([_ssh_url(lab)], spec.haproxy.backend, ssh=ssh_options_for(spec),
                            deploy_id="d-here", message="integration")
    assert err.value.holder.host == lab.app_hosts[0].name  # app01's hostname
    assert err.value.holder.deploy_id == "d-app01" and f"pid {holder.pid}" in str(err.value)
    assert holder.stdin is not None
    holder.stdin.close()  # released in order: the next test finds the lease free
    assert holder.wait(timeout=60) == 0
    assert _lb2_holder(lab, spec) is None


@pytest.mark.parametrize("where", ["this-host", "other-host"])
def test_a_killed_holder_frees_the_lease_on_the_lb_host(lab: Layout, spec: Spec,
                                                        contenders: Contenders,
                                                        where: str) -> None:
    holder = contenders.start(where, "d-doomed", [_ssh_url(lab)])
    assert "locked" in contenders.answer(holder)
    with pytest.raises(LockHeldError, match="d-doomed"):
        acquire_fleet_lease([_ssh_url(lab)], spec.haproxy.backend, ssh=ssh_options_for(spec),
                            deploy_id="d-next", message="after the crash")

    os.kill(holder.pid, signal.SIGKILL)
    assert holder.wait(timeout=30) == -signal.SIGKILL
    # Its TCP connection is closed by the kernel; sshd ends the session, the remote shell reads
    # EOF and exits, and lb2's kernel drops the flock. wait= bounds the poll for all of that.
    with acquire_fleet_lease([_ssh_url(lab)], spec.haproxy.backend, ssh=ssh_options_for(spec),
                             deploy_id="d-next", message="after the crash", wait=30) as lease:
        on_lb2 = _lb2_holder(lab, spec)
        assert on_lb2 is not None and on_lb2["deploy_id"] == "d-next"
        assert on_lb2["pid"] == os.getpid() and lease.held
        assert len(_lease_shells_on_lb2(lab)) == 1  # ours; the killed holder's shell is gone
    assert _lb2_holder(lab, spec) is None
    assert _lease_shells_on_lb2(lab) == []
