"""Runs one schema-change phase: the user's command or playbook on one inventory host through
Ansible, or on the controller (``on: local``), with a timeout and a redacted output tail.

Every run gets ``rollout_phase``, ``rollout_version`` and ``rollout_deploy_id`` (extra vars for
a playbook; ``ROLLOUT_PHASE``, ``ROLLOUT_VERSION``, ``ROLLOUT_DEPLOY_ID`` in a command's
environment) beside the phase's own ``vars`` (a command sees them as environment variables).

Example:
    >>> runner = AnsiblePhaseRunner(executor, base_dir=Path("."),
    ...                             hosts={"migrate": "db1"})  # doctest: +SKIP
    >>> runner.run("migrate", spec.phases.migrate, version="2.0",
    ...            deploy_id="d-1").ok  # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rollout_py.balancer.fleet import Balancer
from rollout_py.errors import ControllerError, InputError
from rollout_py.events.phases import SchemaPhase
from rollout_py.executor import AnsibleExecutor, Cancel, Executor
from rollout_py.redact import Redactor
from rollout_py.release_run import FlagRelease, ReleaseRunner
from rollout_py.spec_phases import PhaseSpec, PhasesSpec
from rollout_py.state import StateDir

if TYPE_CHECKING:
    from rollout_py.api import Context

TAIL = 2000  # characters of a command's output kept in the journal


@dataclass(frozen=True, slots=True)
class PhaseOutcome:
    """How a phase's run ended: ``rc`` is None when not known (Ansible, killed)."""

    ok: bool
    rc: int | None
    detail: str
    cancelled: bool = False


class PhaseRunner(Protocol):
    """Runs a phase (the seam the engine's tests replace with a double)."""

    def host(self, name: SchemaPhase) -> str: ...

    def run(self, name: SchemaPhase, phase: PhaseSpec, *, version: str, deploy_id: str,
            cancel: Cancel | None = None) -> PhaseOutcome: ...


@dataclass(frozen=True, slots=True)
class Phases:
    """The spec's phases and what runs them, as the engine holds them (``engine.phases``)."""

    spec: PhasesSpec
    runner: PhaseRunner
    release: ReleaseRunner | None = None  # phases.release: the flag ramp after the last batch


def phases_for(ctx: Context, executor: Executor, redactor: Redactor,
               balancer: Balancer | None = None, state: StateDir | None = None
               ) -> Phases | None:
    """A deploy's expand, release and migrate (None when the spec has none of them)."""
    spec = ctx.spec.phases
    if spec is None or (spec.expand is None and spec.migrate is None and spec.release is None):
        return None
    release = None
    if spec.release is not None:
        assert balancer is not None and state is not None, "a release needs the LBs and state"
        release = FlagRelease(ctx, state, executor, balancer)
    return Phases(spec, AnsiblePhaseRunner(executor, base_dir=Path(ctx.spec.base_dir),
                                           hosts=phase_hosts(ctx), redactor=redactor), release)


def phase_host(ctx: Context, name: str, phase: PhaseSpec) -> str:
    """``local``, or the one inventory host the phase's ``on`` pattern matches (InputError
    naming the phase otherwise: nothing is touched)."""
    if phase.playbook is not None and not ctx.spec.path(phase.playbook).is_file():
        raise InputError(f"{ctx.spec.source}: phases.{name}.playbook: "
                         f"{ctx.spec.path(phase.playbook)} does not exist")
    if phase.local:
        return "local"
    hosts = [h.name for h in ctx.inventory.select(phase.on)]
    if len(hosts) != 1:
        found = ", ".join(hosts[:5]) + (" ..." if len(hosts) > 5 else "") if hosts else "none"
        raise InputError(f"{ctx.spec.source}: phases.{name}.on: {phase.on!r} must match exactly "
                         f"one host of {ctx.inventory_source} (found {found})")
    return hosts[0]


def phase_hosts(ctx: Context, names: tuple[SchemaPhase, ...] = ("expand", "migrate")
                ) -> dict[str, str]:
    """Where each of the spec's phases (of ``names``) runs; checked before anything is touched."""
    phases = ctx.spec.phases or PhasesSpec()
    return {n: phase_host(ctx, n, p) for n in names if (p := getattr(phases, n)) is not None}


def _env_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def phase_vars(name: str, phase: PhaseSpec, version: str, deploy_id: str) -> dict[str, Any]:
    """The extra vars a phase's playbook gets (the phase's own ``vars`` too)."""
    return {**phase.vars, "rollout_phase": name, "rollout_version": version,
            "rollout_deploy_id": deploy_id}


def phase_env(name: str, phase: PhaseSpec, version: str, deploy_id: str) -> dict[str, str]:
    """The environment variables a phase's command gets beside its inherited environment.

    Example:
        >>> phase_env("expand", PhaseSpec(command="true", on="local", vars={"rows": 5}),
        ...           "2.0", "d-1")["ROLLOUT_PHASE"]
        'expand'
    """
    return {**{k: _env_value(v) for k, v in phase.vars.items()}, "ROLLOUT_PHASE": name,
            "ROLLOUT_VERSION": version, "ROLLOUT_DEPLOY_ID": deploy_id}


def _die_with_parent() -> None:  # pragma: no cover (runs in the child)
    """The local command gets SIGTERM when the controller dies (kill -9 included): a resume
    runs it again, and two copies must not run at once."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# The parent-death signal reaches only the process it was set in, and /bin/sh (dash) runs a
# command in a child of its own that would live on. So the shell that gets it passes it on
# to its whole process group (the session start_new_session made): the command, its
# children, and itself, the trap reset first. Its exit status is the command's.
_SUPERVISE = ("trap 'trap - TERM; kill -TERM 0' TERM\n"
              "/bin/sh -c \"$1\" &\n"
              "wait $!\n")


def run_local(command: str, *, env: Mapping[str, str], cwd: Path, timeout: float,
              cancel: Cancel | None = None, poll: float = 0.1) -> PhaseOutcome:
    """``/bin/sh -c command`` on the controller, in its own process group; a timeout or a
    cancel kills the group (SIGTERM, then SIGKILL after 5 s)."""
    tail: deque[str] = deque()
    size = [0]

    try:
        proc = subprocess.Popen(  # the spec's own command line, as $1 of the supervisor
            ["/bin/sh", "-c", _SUPERVISE, "rollout-phase", command], cwd=cwd,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", start_new_session=True,
            preexec_fn=_die_with_parent)
    except OSError as exc:
        raise ControllerError(f"cannot start /bin/sh on the controller: {exc}") from exc

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line)
            size[0] += len(line)
            while size[0] > 4 * TAIL and len(tail) > 1:
                size[0] -= len(tail.popleft())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    why = None
    while proc.poll() is None:
        if cancel is not None and cancel():
            why = "cancelled"
        elif time.monotonic() > deadline:
            why = f"timed out after {timeout:g} s"
        if why is not None:
            _kill_group(proc)
            break
        time.sleep(poll)
    rc = proc.wait()
    reader.join(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()
    out = "".join(tail)[-TAIL:].strip()
    detail = f"{why}; {out}" if why else out
    return PhaseOutcome(ok=why is None and rc == 0, rc=rc, detail=detail,
                        cancelled=why == "cancelled")


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


class AnsiblePhaseRunner:
    """Phases through the deploy's executor (a host) or a local shell (``on: local``)."""

    def __init__(self, executor: Executor, *, base_dir: Path, hosts: Mapping[str, str],
                 redactor: Redactor | None = None) -> None:
        self.executor, self.base_dir, self.hosts = executor, base_dir, dict(hosts)
        self.redactor = redactor or Redactor()

    def host(self, name: SchemaPhase) -> str:
        return self.hosts[name]

    def _local_executor(self) -> Executor:
        """Ansible's implicit localhost is matched by no ``--limit``: a local playbook runs
        against an inventory of its own (``localhost``, connection local, this Python)."""
        ex = self.executor
        if not isinstance(ex, AnsibleExecutor):
            return ex  # a test double
        work = ex.work_dir / "local"
        work.mkdir(parents=True, exist_ok=True)
        inventory = work / "inventory.ini"
        inventory.write_text(f"localhost ansible_connection=local "
                             f"ansible_python_interpreter={sys.executable}\n")
        return AnsibleExecutor(str(inventory), work_dir=work, extravars=ex.extravars,
                               secret_vars=ex.secret_vars, verbosity=ex.verbosity,
                               control_dir=ex.control_dir, redactor=ex.redactor)

    def run(self, name: SchemaPhase, phase: PhaseSpec, *, version: str, deploy_id: str,
            cancel: Cancel | None = None) -> PhaseOutcome:
        host = self.hosts[name]
        out = self._run(name, phase, host, version, deploy_id, cancel)
        return PhaseOutcome(out.ok, out.rc, self.redactor.text(out.detail), out.cancelled)

    def _run(self, name: SchemaPhase, phase: PhaseSpec, host: str, version: str,
             deploy_id: str, cancel: Cancel | None) -> PhaseOutcome:
        if phase.command is not None and host == "local":
            return run_local(phase.command, env=phase_env(name, phase, version, deploy_id),
                             cwd=self.base_dir, timeout=phase.timeout, cancel=cancel)
        if phase.command is not None:
            exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in
                               phase_env(name, phase, version, deploy_id).items())
            ok, message = self.executor.run_command(host, f"export {exports}; {phase.command}",
                                                    phase.timeout)
            return PhaseOutcome(ok=ok, rc=None, detail=message[-TAIL:])
        assert phase.playbook is not None
        playbook = Path(phase.playbook)
        path = playbook if playbook.is_absolute() else self.base_dir / playbook
        target = "localhost" if host == "local" else host
        deadline = time.monotonic() + phase.timeout
        stop: Callable[[], bool] = lambda: (  # noqa: E731
            time.monotonic() > deadline or (cancel is not None and cancel()))
        executor = self._local_executor() if host == "local" else self.executor
        result = executor.run_playbook(
            str(path), [target], phase_vars(name, phase, version, deploy_id),
            label=f"phase-{name}", cancel=stop)
        detail = result.hosts.get(target, result.status)
        if result.status == "canceled" and time.monotonic() > deadline:
            detail = f"timed out after {phase.timeout:g} s; {detail}"
        return PhaseOutcome(ok=result.ok, rc=result.rc, detail=detail[-TAIL:],
                            cancelled=result.status == "canceled"
                            and time.monotonic() <= deadline)
