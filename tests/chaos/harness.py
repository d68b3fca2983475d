"""Fault injection under load: run a deploy (the real CLI), act on its events, and check the
invariants every scenario shares."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollout_py.lab import lab as lab_mod
from rollout_py.lab.layout import Layout
from rollout_py.lab.load import LoadGenerator, Summary
from rollout_py.lab.watch import Watcher, WatchSummary
from rollout_py.procs import processes_mentioning

REPO = Path(__file__).resolve().parents[2]
ENV = os.environ | {"PYTHONPATH": str(REPO)}

# A hook returns False to keep waiting (the event was not the one it wants).
Hook = Callable[[dict[str, Any]], bool | None]
# The running controller's pid, for hooks that signal it.
CURRENT: dict[str, int] = {}


@dataclass
class Run:
    """What happened during one faulted deploy."""

    returncode: int
    events: list[dict[str, Any]]
    result: dict[str, Any] | None
    load: Summary
    watch: WatchSummary
    stderr: str
    spec: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def kinds(self) -> list[str]:
        return [e["event"] for e in self.events]


def deploy_under_fault(lab: Layout, spec: Path, version: str, *args: str,
                       hooks: dict[str, Hook] | None = None, rps: float = 100,
                       max_unavailable: int = 1, command: str = "deploy",
                       timeout: float | None = None) -> Run:
    """Runs ``rollout deploy --json`` under open-loop load through lb1 (none with ``rps``
    0) while every LB is watched at 10 Hz; ``hooks`` maps an event kind to an action run when
    it appears (``"*"``: every event, until it returns something other than False).
    ``timeout``: the controller is killed (SIGKILL, by its handle) if it is still running
    after that many seconds, and the run fails saying so."""
    hooks = dict(hooks or {})
    watcher = Watcher.for_lab(lab, max_unavailable=max_unavailable).start()
    url = f"http://127.0.0.1:{lab.lbs[0].port}/"
    load = LoadGenerator(url, rps=rps, duration=3600).start() if rps else None
    cmd = [sys.executable, "-m", "rollout_py", command, "-f", str(spec), "--json",
           *(["--version", version] if command == "deploy" else []), *args]
    child = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    CURRENT["pid"] = child.pid
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        child.kill()

    watchdog = threading.Timer(timeout, expire) if timeout is not None else None
    if watchdog is not None:
        watchdog.start()
    events: list[dict[str, Any]] = []
    result = None
    assert child.stdout is not None and child.stderr is not None
    try:
        for line in child.stdout:
            data = json.loads(line)
            if "result" in data:
                result = data["result"]
                continue
            events.append(data)
            for kind in (data["event"], "*"):
                hook = hooks.get(kind)
                if hook is not None and hook(data) is not False:
                    del hooks[kind]
        stderr = child.stderr.read()
        child.wait(600)
    finally:
        if child.poll() is None:  # a hook failed: stop the controller this test started
            child.send_signal(signal.SIGTERM)
            child.wait(600)  # the watchdog, if any, still bounds this
        if watchdog is not None:
            watchdog.cancel()
        child.stdout.close()
        child.stderr.close()
        summary = load.stop() if load is not None else Summary.of(url, 0, 0, [])
        watched = watcher.stop()
    if expired.is_set():
        raise AssertionError(f"rollout {command} still running after {timeout} s: killed; "
                             f"last events: {[e['event'] for e in events[-5:]]}")
    return Run(child.returncode, events, result, summary, watched, stderr, spec)


def check_invariants(lab: Layout, run: Run, *, failed_requests: int = 0,
                     processes: str = "") -> None:
    """The checks every fault scenario makes (besides its own). ``processes``: which of the
    deploys' processes must be gone ("ansible" after a kill at the very end: its SSH masters
    stay until the fleet's next deploy or resume stops them)."""
    assert run.load.failed == failed_requests, run.load.failures
    assert not run.watch.violations, run.watch.violations[:5]
    # Nothing is out of rotation unless `rollout status` reports it.
    status = json.loads(subprocess.run(
        [sys.executable, "-m", "rollout_py", "status", "-f", str(run.spec), "--json"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120).stdout)
    flagged = {(f["lb"], f["server"]) for f in status["flagged"]}
    for lb in lab.lbs:
        api = lab_mod.lb_api(lab, lb)
        try:
            for s in api.servers_state("app"):
                if not s.in_rotation:
                    assert (lb.socket_url, s.name) in flagged, f"{s.name} out, not reported"
        finally:
            api.close()
    # No ansible or ssh process of the deploy outlives it (their command lines name the
    # deploy's id: extra vars and the SSH control path).
    state = run.spec.parent / ".rollout"
    for record in _deploys(state):
        assert deploy_processes(record.deploy_id, only=processes) == [], \
            f"left by {record.deploy_id}"
    assert processes_mentioning(str(state)) == []
    # After a kill at the very end the deploy's SSH control directory stays with its masters
    # (its clean-up never ran); the fleet's next deploy removes both, and this check then.
    if not processes:
        assert not any(p.name.startswith("rollout-cp-") for p in Path("/tmp").iterdir()
                       if p.is_dir() and any(d.deploy_id in p.name for d in _deploys(state)))


def deploy_processes(deploy_id: str, *, within: float = 5.0, only: str = "") -> list[str]:
    """Live processes whose command line names ``deploy_id`` (and ``only``, if given), after
    waiting up to ``within`` seconds for them to end."""
    deadline = time.monotonic() + within
    while True:
        left = []
        for proc in processes_mentioning(deploy_id):
            try:
                cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if proc.alive() and only.encode() in cmdline:
                left.append(f"{proc.pid}: {cmdline.decode(errors='replace')[:160]}")
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _deploys(state: Path) -> list[Any]:
    from rollout_py.state import StateDir

    return StateDir(state).deploys()
