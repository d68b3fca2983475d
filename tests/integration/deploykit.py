"""Helpers for deploy tests on a lab: specs, live versions, LB states, load with checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from rollout_py import events as ev
from rollout_py.lab import lab as lab_mod
from rollout_py.lab.layout import Layout
from rollout_py.lab.load import LoadGenerator, Summary

REPO = Path(__file__).resolve().parents[2]
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def write_spec(lab: Layout, path: Path, base: str = "rollout.yml", **overrides: Any) -> Path:
    """The lab's rollout.yml (or ``base``, e.g. rollout-canary.yml) with absolute paths and
    test-sized timings, plus overrides."""
    spec = yaml.safe_load((lab.path / base).read_text())
    spec["inventory"] = str(lab.inventory)
    spec["haproxy"]["ssh_config"] = str(lab.ssh_config)
    spec["haproxy"]["drain_timeout"] = 10
    spec["health"].update(deadline=12, interval=0.3, consecutive=2)
    # Staging is exercised by the fault suite; elsewhere one run per batch keeps tests short.
    spec.pop("stage", None)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def versions(lab: Layout) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for host in lab.app_hosts:
        try:
            with _OPENER.open(f"http://{host.address}:8080/version", timeout=3) as resp:
                out[host.name] = resp.read().decode().strip()
        except OSError:
            out[host.name] = None
    return out


def served_variants(lab: Layout, flag: str) -> dict[str, str | None]:
    """Host -> the variant of ``flag`` its app serves on `/` now (its ``X-Flag-`` header)."""
    out = {}
    for h in lab.app_hosts:
        with _OPENER.open(f"http://{h.address}:8080/", timeout=5) as resp:
            resp.read()
            out[h.name] = resp.headers.get(f"X-Flag-{flag}")
    return out


def lb_states(lab: Layout) -> dict[str, dict[str, tuple[str, str, int]]]:
    """LB name -> server -> (admin, op, weight), read through each LB's own socket URL."""
    out = {}
    for lb in lab.lbs:
        api = lab_mod.lb_api(lab, lb)
        try:
            out[lb.name] = {s.name: (str(s.admin), s.op, s.weight)
                            for s in api.servers_state("app")}
        finally:
            api.close()
    return out


def all_ready_and_up(lab: Layout) -> bool:
    return all(v[:2] == ("READY", "RUNNING") for per in lb_states(lab).values()
               for v in per.values())


def rollout_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rollout_py", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO,
                          env=os.environ | {"PYTHONPATH": str(REPO)})


def json_result(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output (exit {proc.returncode}): {proc.stderr}"
    last = lines[-1]
    return dict(json.loads(last)["result"])


@contextmanager
def load(lab: Layout, rps: float = 100, lb: int = 0) -> Iterator[list[Summary]]:
    """Constant open-loop load through an LB for the duration of the block."""
    gen = LoadGenerator(f"http://127.0.0.1:{lab.lbs[lb].port}/", rps=rps, duration=3600)
    out: list[Summary] = []
    gen.start()
    try:
        yield out
    finally:
        out.append(gen.stop())


def traffic_before_probe(summary: Summary, events: Sequence[ev.Event],
                         margin: float = 0.05) -> list[str]:
    """Requests a host served after its drain began and before its first passing probe."""
    drained: dict[str, float] = {}
    for e in events:
        if isinstance(e, ev.DrainStarted):
            for server in e.servers:
                drained[server] = e.ts
    verified = {e.host: e.ts for e in events
                if isinstance(e, ev.ProbePassed) and e.phase == "verify"}
    bad = []
    for rec in summary.records:
        host = rec.served_by
        if host in drained and drained[host] + margin < rec.sent_at < verified.get(host, 1e18):
            bad.append(f"{host} served request {rec.seq} at {rec.sent_at:.3f} "
                       f"(drain {drained[host]:.3f}, probe {verified.get(host)})")
    return bad


def traffic_before_probe_json(summary: Summary, events: Sequence[dict[str, Any]],
                              margin: float = 0.05) -> list[str]:
    """traffic_before_probe for events read back as JSON (from ``--json`` output)."""
    from rollout_py.state import decode_event

    return traffic_before_probe(summary, [decode_event(e) for e in events], margin)


def wait_for_playbook(deploy_id: str, timeout: float = 120) -> None:
    """Returns once an ansible-playbook process of the deploy runs (its extra vars name the
    deploy id): the state a test waits for instead of sleeping after ``step_started``."""
    wait_for_ansible(deploy_id, timeout, what=f"of deploy {deploy_id}")


def wait_for_ansible(marker: str, timeout: float = 120, *, what: str = "") -> list[str]:
    """Returns, once it runs, the command line of an ansible-playbook process whose command
    line holds ``marker`` (lab hosts and execution nodes share this machine's process table)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"ansible-playbook" in cmdline and marker.encode() in cmdline:
                return [arg.decode(errors="replace") for arg in cmdline.split(b"\0") if arg]
        time.sleep(0.05)
    raise AssertionError(f"no ansible-playbook {what or marker} within {timeout} s")


def signal_delivered(pid: int, signum: int, timeout: float = 10) -> None:
    """Waits until ``signum`` is no longer pending for ``pid`` (the kernel delivered it), so a
    second signal of the same kind is not merged into the first."""
    import time

    bit = 1 << (signum - 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        pending = {line.split(":")[0]: int(line.split()[1], 16) for line in status.splitlines()
                   if line.startswith(("SigPnd:", "ShdPnd:"))}
        if not any(v & bit for v in pending.values()):
            return
        time.sleep(0.01)
    raise AssertionError(f"signal {signum} still pending for pid {pid} after {timeout} s")
