"""Faults injected while traffic flows; each scenario checks the shared invariants (0 failed
requests unless it says otherwise, the capacity rule in every 10 Hz sample, nothing out of
rotation unless `rollout status` reports it, no ansible/ssh process left) and its own."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rollout_py import events as ev
from rollout_py.lab import artifact, net
from rollout_py.lab.layout import Layout
from rollout_py.procs import Proc
from rollout_py.state import StateDir
from rollout_py.timeline_runs import load_runs
from tests.chaos.harness import CURRENT, check_invariants, deploy_under_fault
from tests.integration.deploykit import (
    all_ready_and_up,
    lb_states,
    versions,
    wait_for_playbook,
    write_spec,
)

pytestmark = pytest.mark.chaos
LabMaker = Callable[..., Layout]


def spec_for(lab: Layout, tmp_path: Path, **overrides: Any) -> Path:
    base = {"batches": [1], "max_unavailable": 1,
            "stage": {"tags": "stage,prune", "switch_tags": "switch,untagged"},
            "health": {"deadline": 6, "interval": 0.3, "consecutive": 2}}
    return write_spec(lab, tmp_path / "rollout.yml", **{**base, **overrides})


def in_host(lab: Layout, host: str, *argv: str, net: bool = True) -> None:
    sshd = Proc.from_json(lab.procs[f"sshd:{host}"])
    flags = ["-m", "-u"] + (["-n"] if net else [])
    subprocess.run(["nsenter", "-t", str(sshd.pid), *flags, "--", *argv], check=True,
                   capture_output=True, timeout=30)


def link(lab: Layout, host: str, state: str) -> None:
    netns = next(h.netns for h in lab.all_hosts if h.name == host)
    subprocess.run(["ip", "-n", netns, "link", "set", "eth0", state], check=True)


def app_pid(lab: Layout, host: str) -> int:
    return int((lab.host_dir(host) / "run" / "app.pid").read_text())


def test_host_unreachable_after_its_drain(chaos_lab: LabMaker, tmp_path: Path) -> None:
    lab = chaos_lab()
    artifact.build_artifact(lab.artifacts, "2.0")
    spec = spec_for(lab, tmp_path)
    run = deploy_under_fault(lab, spec, "2.0", hooks={
        "servers_disabled": lambda e: link(lab, e["servers"][0], "down")})
    try:
        check_invariants(lab, run)
        # app01 cannot be upgraded nor rolled back: it stays out of rotation, reported.
        assert run.returncode == 3, run.stderr
        assert run.result is not None and run.result["stranded"] == ["app01"]
        assert versions(lab)["app02"] == "1.0"  # nothing after the failed batch
    finally:
        link(lab, "app01", "up")


def test_app_hangs_after_the_upgrade(chaos_lab: LabMaker, tmp_path: Path) -> None:
    lab = chaos_lab()
    artifact.build_artifact(lab.artifacts, "2.0")
    spec = spec_for(lab, tmp_path)

    def freeze(event: dict[str, Any]) -> bool:
        if event["step"] != "upgrade":
            return False
        os.kill(app_pid(lab, next(iter(event["hosts"]))), signal.SIGSTOP)
        return True

    run = deploy_under_fault(lab, spec, "2.0", hooks={"step_finished": freeze})
    check_invariants(lab, run)
    assert run.returncode == 1, run.stderr
    assert run.result is not None and run.result["failure"] == "probe_failed"
    assert set(versions(lab).values()) == {"1.0"} and all_ready_and_up(lab)


def test_sshd_dead_on_a_host_before_its_batch(chaos_lab: LabMaker, tmp_path: Path) -> None:
    lab = chaos_lab()
    artifact.build_artifact(lab.artifacts, "2.0")
    spec = spec_for(lab, tmp_path)
    netns = next(h.netns for h in lab.all_hosts if h.name == "app02")

    def kill_sshd(event: dict[str, Any]) -> None:
        # Every sshd of app02 (the listener and the sessions multiplexed SSH still uses),
        # once the first batch is done and preflight has reached every host.
        for pid in net.netns_pids(netns):
            proc = Proc.of(pid)
            if proc.comm() == "sshd":
                os.kill(pid, signal.SIGKILL)

    run = deploy_under_fault(lab, spec, "2.0", hooks={"batch_succeeded": kill_sshd})
    check_invariants(lab, run)
    # app02 was never changed: it is back in rotation serving 1.0 (verified by version_url
    # and the probes), the batch counts as rolled back.
    assert run.returncode == 1, run.stderr
    assert run.result is not None and run.result["failure"] == "unreachable"
    assert versions(lab) == {"app01": "2.0", "app02": "1.0", "app03": "1.0"}
    assert all_ready_and_up(lab)


def test_release_filesystem_full(chaos_lab: LabMaker, tmp_path: Path) -> None:
    lab = chaos_lab()
    artifact.build_artifact(lab.artifacts, "2.0")
    spec = spec_for(lab, tmp_path)
    # app02's releases live on a tmpfs with room for what is there and nothing more.
    in_host(lab, "app02", "sh", "-c",
            "mkdir -p /tmp/keep && cp -a /srv/app/releases/. /tmp/keep/ && "
            "mount -t tmpfs -o size=1m tmpfs /srv/app/releases && "
            "cp -a /tmp/keep/. /srv/app/releases/ && "
            "used=$(df -k --output=used /srv/app/releases | tail -n 1) && "
            "mount -o remount,size=$((used + 4))k /srv/app/releases", net=False)
    run = deploy_under_fault(lab, spec, "2.0")
    check_invariants(lab, run)
    # Staging fails on app02 before any drain: nothing was taken out of rotation, nothing
    # rolled back: a stop (exit 5), not a rollback.
    assert run.returncode == 5, run.stderr
    assert (run.result or {}).get("status") == "stopped"
    assert "drain_started" not in run.kinds()
    assert "staging failed on app02" in (run.result or {}).get("cause", "")
    assert set(versions(lab).values()) == {"1.0"} and all_ready_and_up(lab)


def test_flapping_health_never_reaches_rotation(chaos_lab: LabMaker, tmp_path: Path) -> None:
    lab = chaos_lab()
    artifact.build_artifact(lab.artifacts, "2.0-flap", artifact.Behaviour(health_flap=True))
    spec = spec_for(lab, tmp_path, health={"deadline": 5, "interval": 0.2, "consecutive": 3})
    run = deploy_under_fault(lab, spec, "2.0-flap")
    check_invariants(lab, run)
    assert run.returncode == 1, run.stderr
    assert "2.0-flap" not in run.load.by_version  # no client ever reached it
    assert set(versions(lab).values()) == {"1.0"} and all_ready_and_up(lab)


class SlowRequests:
    """Long requests held open through lb1: one on every host (the app sends its headers,
    naming the host, at once and the body 40 s later: longer than preflight, staging and the
    drain timeout together, so they are in flight when their host is drained)."""

    def __init__(self, lab: Layout, hosts: set[str]) -> None:
        import http.client

        self.conns: dict[str, http.client.HTTPConnection] = {}
        self.extra: list[http.client.HTTPConnection] = []
        self._responses: dict[Any, Any] = {}
        for _ in range(40):
            if set(self.conns) == hosts:
                break
            conn = http.client.HTTPConnection("127.0.0.1", lab.lbs[0].port, timeout=60)
            conn.request("GET", "/slow?seconds=40")
            resp = conn.getresponse()  # headers only
            host = str(resp.getheader("X-Served-By"))
            if host in self.conns:
                self.extra.append(conn)
            else:
                self.conns[host] = conn
            self._responses[conn] = resp
        assert set(self.conns) == hosts, f"could not reach every host: {set(self.conns)}"

    def outcomes(self) -> dict[str, str]:
        import http.client

        out: dict[str, str] = {}
        for host, conn in [*self.conns.items(), *(("extra", c) for c in self.extra)]:
            try:
                body = self._responses[conn].read()
                out.setdefault(host, "complete" if body.startswith(b"slow") else "short")
            except (OSError, http.client.HTTPException) as exc:
                out[host] = f"cut ({type(exc).__name__})"
            finally:
                conn.close()
        return out


@pytest.mark.parametrize("force", [False, True])
def test_long_lived_requests_on_a_draining_host(chaos_lab: LabMaker, tmp_path: Path,
                                                force: bool) -> None:
    lab = chaos_lab()
    artifact.build_artifact(lab.artifacts, "2.0")
    spec = spec_for(lab, tmp_path, haproxy={"drain_timeout": 3})
    held = SlowRequests(lab, {"app01", "app02", "app03"})  # in flight before the deploy starts
    args = ["--force-drain", "-l", "app01"] if force else []
    run = deploy_under_fault(lab, spec, "2.0", *args)
    outcomes = held.outcomes()
    check_invariants(lab, run)
    if force:  # only the drained host's long request is cut; the deploy goes on
        assert run.returncode == 0, run.stderr
        assert outcomes["app01"].startswith("cut")
        assert outcomes["app02"] == outcomes["app03"] == "complete"
    else:  # the drain timeout fails the batch and cuts nothing
        assert run.returncode == 1 and run.result is not None
        assert run.result["failure"] == "drain_timeout"
        assert set(outcomes.values()) == {"complete"}
        assert set(versions(lab).values()) == {"1.0"}
    assert all_ready_and_up(lab)


def test_admin_socket_disappears_then_resume_completes(chaos_lab: LabMaker,
                                                       tmp_path: Path) -> None:
    lab = chaos_lab()
    artifact.build_artifact(lab.artifacts, "2.0")
    spec = spec_for(lab, tmp_path)
    sock = Path(lab.lbs[0].socket_path)
    hidden = sock.with_name(sock.name + ".gone")

    def hide(event: dict[str, Any]) -> bool:
        if event["step"] != "upgrade" or event["batch"] != 2:
            return False
        sock.rename(hidden)
        return True

    run = deploy_under_fault(lab, spec, "2.0", hooks={"step_started": hide})
    try:
        assert run.returncode == 3, run.stderr
        assert run.result is not None and run.result["stranded"] == ["app02"]
    finally:
        hidden.rename(sock)
    # The socket is back: nothing is out of rotation unless status reports it...
    check_invariants(lab, run)
    # ...and resume finishes the rollout.
    resumed = deploy_under_fault(lab, spec, "", command="resume")
    check_invariants(lab, resumed)
    assert resumed.returncode == 0, resumed.stderr
    assert set(versions(lab).values()) == {"2.0"} and all_ready_and_up(lab)


def test_haproxy_reload_mid_batch_forgets_the_drain(chaos_lab: LabMaker, tmp_path: Path) -> None:
    lab = chaos_lab()
    artifact.build_artifact(lab.artifacts, "2.0")
    spec = spec_for(lab, tmp_path)
    master = Proc.from_json(lab.procs["haproxy:lb1"])

    def reload(event: dict[str, Any]) -> bool:
        if event["step"] != "upgrade":
            return False
        os.kill(master.pid, signal.SIGUSR2)  # reload without a server-state file
        return True

    run = deploy_under_fault(lab, spec, "2.0", hooks={"step_started": reload})
    check_invariants(lab, run)
    assert run.returncode == 0, run.stderr
    assert "drift_corrected" in run.kinds()
    # No client got an answer from a release before its probe passed.
    probed = {e["host"]: e["ts"] for e in run.events
              if e["event"] == "probe_passed" and e["phase"] == "verify"}
    early = [r for r in run.load.records
             if r.version == "2.0" and r.sent_at < probed.get(str(r.served_by), 0)]
    assert early == []
    assert set(versions(lab).values()) == {"2.0"} and all_ready_and_up(lab)


def test_second_lb_unreachable_at_start(chaos_lab: LabMaker, tmp_path: Path) -> None:
    lab = chaos_lab(n_hosts=2, n_lbs=2)
    artifact.build_artifact(lab.artifacts, "2.0")
    spec = spec_for(lab, tmp_path)
    before = lb_states(lab)["lb1"]
    link(lab, "lb2", "down")
    try:
        run = deploy_under_fault(lab, spec, "2.0")
    finally:
        link(lab, "lb2", "up")
    assert run.returncode == 2 and "preflight" in run.stderr and "10.213." in run.stderr
    assert lb_states(lab)["lb1"] == before  # refused before any drain anywhere
    assert run.load.failed == 0 and versions(lab) == {"app01": "1.0", "app02": "1.0"}


def test_sigterm_during_the_playbook(chaos_lab: LabMaker, tmp_path: Path) -> None:
    lab = chaos_lab()
    artifact.build_artifact(lab.artifacts, "2.0")
    spec = spec_for(lab, tmp_path)
    def term(event: dict[str, Any]) -> bool:
        if event["step"] != "upgrade":
            return False
        wait_for_playbook(event["deploy_id"])  # the playbook runs on the batch
        os.kill(CURRENT["pid"], signal.SIGTERM)  # the controller this test started
        return True

    run = deploy_under_fault(lab, spec, "2.0", hooks={"step_started": term})
    check_invariants(lab, run)
    assert run.returncode == 130, run.stderr
    assert versions(lab) == {"app01": "2.0", "app02": "1.0", "app03": "1.0"}
    assert all_ready_and_up(lab)


def test_changed_host_key_fails_closed_for_that_host(chaos_lab: LabMaker,
                                                     tmp_path: Path) -> None:
    lab = chaos_lab()
    artifact.build_artifact(lab.artifacts, "2.0")
    spec = spec_for(lab, tmp_path)
    key = lab.host_dir("app02") / "run" / "lab" / "ssh_host_ed25519_key"
    key.unlink()
    key.with_suffix(".pub").unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    before = lb_states(lab)
    run = deploy_under_fault(lab, spec, "2.0")
    check_invariants(lab, run)
    assert run.returncode == 2 and "SSH to app02" in run.stderr
    assert "SSH to app01" not in run.stderr and lb_states(lab) == before


def test_state_directory_full_stops_before_the_next_action(chaos_lab: LabMaker,
                                                          tmp_path: Path) -> None:
    lab = chaos_lab()
    artifact.build_artifact(lab.artifacts, "2.0")
    spec = spec_for(lab, tmp_path)
    state = spec.parent / ".rollout"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(state)], check=True)
    try:
        def fill(event: dict[str, Any]) -> None:  # fills the state dir's filesystem
            subprocess.run(["dd", "if=/dev/zero", f"of={state}/filler", "bs=64k"],
                           capture_output=True)

        run = deploy_under_fault(lab, spec, "2.0", hooks={"servers_disabled": fill})
        assert run.returncode == 3, run.stderr
        assert run.result is not None and run.result["stranded"] == ["app01"]
        # Every action it took was journaled first: one ansible run per journaled step.
        record = StateDir(state).get()
        journaled = [e for e in record.events() if isinstance(e, ev.StepStarted)]
        # A playbook session (one ansible-playbook for all batches) acts only through a gate
        # the controller opened: each batch it let through counts as a run.
        runs = [p.name for p in record.runs.iterdir() if p.is_dir() and "preflight" not in p.name
                and not p.name.endswith("-batches-upgrade")]
        runs += [f"session batch {n}" for n, parts in load_runs(record.runs).items()
                 for _ in parts[:1] if not any(f"-batch{n}-upgrade" in r for r in runs)]
        assert len(runs) <= len(journaled), (runs, journaled)
        check_invariants(lab, run)  # app01 is out of rotation and status reports it
        (state / "filler").unlink()
        resumed = deploy_under_fault(lab, spec, "", command="resume")
        assert resumed.returncode == 0, "\n".join(
            [resumed.stderr, *(f"{e['seq']} {e['event']} {e.get('batch', '')} "
                               f"{e.get('action', e.get('step', ''))} {e.get('detail', '')}"
                               f"{e.get('cause', '')} {e.get('stranded', '')}"
                               f"{e.get('hosts', '')}" for e in run.events + resumed.events)])
        check_invariants(lab, resumed)
        assert set(versions(lab).values()) == {"2.0"} and all_ready_and_up(lab)
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)
