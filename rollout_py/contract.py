"""``rollout contract`` as a Python API: the contract phase runs only once every host the spec
selects runs the version it requires, as reported or journaled; locked and journaled like
deploys (``<state_dir>/contracts/<id>/journal.jsonl``).

The gate, per host (every host of the spec's ``hosts``, whatever its state):

- in rotation on every LB and answering ``version_url``: the version it reports counts;
- out of rotation on some LB (MAINT, DRAIN, DOWN, missing, or an LB not read) or not
  answering: the oldest of what it reports and what this fleet's journals last say it runs
  (``rollout_py.phase_status.journaled_versions``) counts: it may come back on either;
- no version known at all, or one that does not parse (``packaging``): it blocks.

A host whose version is older than ``requires`` blocks; so does a deploy phase the spec has
(``release``, ``migrate``) that no deploy of ``requires`` or newer journaled as done: dropping
what the old version needed before the backfill finished, or before the feature was released,
would lose data or the way back. A refusal (exit 2, ``refused``) names
each blocking host, its version, where it came from and its LB state; nothing runs. With
``force`` the contract runs anyway (``forced``), each blocking host journaled.

Exit codes: 0 done or forced; 1 the contract's command or playbook failed; 2 refused (the
gate) or bad input, nothing ran; 4 locked; 130 interrupted (the command was stopped).

Example:
    >>> result = contract(load_spec("rollout.yml"))  # doctest: +SKIP
    >>> result.status, [h.host for h in result.hosts if h.blocking]  # doctest: +SKIP
    ('refused', ['web3'])
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from packaging.version import Version

from rollout_py import events as ev
from rollout_py.api import Context
from rollout_py.balancer.fleet import Balancer
from rollout_py.balancer.runtime import ServerState
from rollout_py.engine import new_deploy_id
from rollout_py.errors import BalancerError, ControllerError, InputError
from rollout_py.executor import Executor
from rollout_py.phase_run import AnsiblePhaseRunner, PhaseOutcome, PhaseRunner, phase_host
from rollout_py.phase_status import create_contract_record, journaled_versions, unmet_phase
from rollout_py.preflight import read_versions
from rollout_py.session import FleetSession, lease_backends, open_balancer
from rollout_py.spec import Spec
from rollout_py.spec_phases import ContractSpec, parse_version
from rollout_py.state import Journal, StateDir

Sink = Callable[[ev.Event], None]
States = dict[str, dict[str, ServerState]]
EXIT_CODES: dict[ev.ContractStatus, int] = {"done": 0, "forced": 0, "failed": 1,
                                            "refused": 2, "cancelled": 130}


@dataclass(frozen=True, slots=True)
class HostVersion:
    """One host as the gate saw it: ``source`` is reported | journaled | unknown."""

    host: str
    version: str | None
    source: str
    lb: str  # "in rotation", or e.g. "MAINT on unix:///lb1.sock"
    verdict: str  # "ok", or why it blocks
    journal: str | None = None  # the deploy whose journal gave the version

    @property
    def blocking(self) -> bool:
        return self.verdict != "ok"

    def line(self) -> str:
        """``web3: 1.0 (journaled by deploy X; MAINT on lb1): older than 2.0``."""
        where = f"journaled by deploy {self.journal}" if self.source == "journaled" else \
            self.source
        return f"{self.host}: {self.version or '?'} ({where}; {self.lb}): {self.verdict}"


@dataclass(frozen=True, slots=True)
class ContractResult:
    contract_id: str
    status: ev.ContractStatus
    exit_code: int
    cause: str
    requires: str
    on: str
    hosts: tuple[HostVersion, ...]
    detail: str = ""  # the command's output tail
    unmet: tuple[str, ...] = ()  # deploy phases not done (see the module)

    @property
    def blocking(self) -> tuple[HostVersion, ...]:
        return tuple(h for h in self.hosts if h.blocking)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["blocking"] = [h.host for h in self.blocking]
        return data


def lb_state(server: str, states: States | None, error: str | None = None) -> str:
    """``in rotation`` when READY and UP on every LB, else what each LB says."""
    if states is None:
        return f"LB state unknown ({error})"
    out = []
    for url, per in sorted(states.items()):
        st = per.get(server)
        what = ("missing" if st is None else "MAINT" if st.maint else "DRAIN" if st.drain
                else "DOWN" if not st.running else None)
        if what:
            out.append(f"{what} on {url}")
    return "; ".join(out) or "in rotation"


def judge(host: str, requires: str, *, reported: str | None,
          journaled: tuple[str | None, str] | None, lb: str) -> HostVersion:
    """One host's verdict (see the module's docstring for which version counts).

    Example:
        >>> judge("web1", "2.0", reported="2.1", journaled=None, lb="in rotation").verdict
        'ok'
        >>> judge("web2", "2.0", reported=None, journaled=("1.0", "d-1"), lb="in rotation"
        ...       ).verdict
        'older than 2.0'
    """
    need = parse_version(requires)
    assert need is not None  # the spec refuses a requires that does not parse
    candidates: list[tuple[str, str, str | None]] = []
    if reported is not None:
        candidates.append((reported, "reported", None))
    if journaled is not None and journaled[0] is not None and (
            reported is None or lb != "in rotation"):
        candidates.append((journaled[0], "journaled", journaled[1]))
    if not candidates:
        why = "not reported (version_url)" if journaled is None else \
            f"not reported, journaled as unknown by deploy {journaled[1]}"
        return HostVersion(host, None, "unknown", lb, f"no version known: {why}")
    for version, source, jid in candidates:
        if parse_version(version) is None:
            return HostVersion(host, version, source, lb, "the version does not parse", jid)
    version, source, jid = min(candidates, key=lambda c: _order(c[0]))
    ok = _order(version) >= need
    return HostVersion(host, version, source, lb, "ok" if ok else f"older than {requires}",
                       jid)


def _order(version: str) -> Version:
    parsed = parse_version(version)
    assert parsed is not None
    return parsed


def gate(hosts: Sequence[str], servers: Mapping[str, str], requires: str, *,
         reported: Mapping[str, str | None], journaled: Mapping[str, tuple[str | None, str]],
         states: States | None, lb_error: str | None = None) -> tuple[HostVersion, ...]:
    """Every host's verdict, in the given order (pure)."""
    return tuple(judge(h, requires, reported=reported.get(h), journaled=journaled.get(h),
                       lb=lb_state(servers.get(h, h), states, lb_error)) for h in hosts)


def _read_states(spec: Spec, balancer: Balancer | None) -> tuple[States | None, str | None]:
    """Every LB's servers (blue/green: both pools' backends), or why they cannot be read."""
    try:
        if balancer is not None:
            return balancer.states(), None
        merged: States = {}
        for backend in lease_backends(spec):
            lbs = open_balancer(spec, backend)
            try:
                for url, per in lbs.states().items():
                    merged.setdefault(url, {}).update(per)
            finally:
                lbs.close()
        return merged, None
    except BalancerError as exc:
        return None, str(exc)


class _Emitter:
    """Numbers the contract's events and hands each to the journal first, then the sinks."""

    def __init__(self, contract_id: str, sinks: Sequence[Sink]) -> None:
        self.contract_id, self.sinks, self.seq = contract_id, list(sinks), 0

    def __call__(self, cls: type[ev.Event], **fields: Any) -> ev.Event:
        self.seq += 1
        event = cls(deploy_id=self.contract_id, seq=self.seq, **fields)
        for sink in self.sinks:
            sink(event)
        return event


@contextlib.contextmanager
def _cancel_on_signal(install: bool) -> Iterator[threading.Event]:
    """SIGINT/SIGTERM stop the running contract command (journaled as cancelled)."""
    stop = threading.Event()
    if not install or threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, lambda _s, _f: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _contract_spec(spec: Spec) -> ContractSpec:
    if spec.phases is None or spec.phases.contract is None:
        raise InputError(f"{spec.source}: phases.contract: the spec has no contract phase "
                         "(command or playbook, on, requires)")
    return spec.phases.contract


def contract(spec: Spec, *, force: bool = False, inventory: str | None = None,
             state_dir: str | Path | None = None, lock_wait: float = 0.0,
             sinks: Sequence[Sink] = (), executor: Executor | None = None,
             balancer: Balancer | None = None, runner: PhaseRunner | None = None,
             versions: Callable[[Context], Mapping[str, str | None]] | None = None,
             install_signal_handlers: bool = True, verbosity: int = 0) -> ContractResult:
    """Runs the spec's contract phase if every host runs ``requires`` or newer (or ``force``).

    Raises InputError (bad spec, ``on`` not one host; exit 2) or LockHeldError (exit 4)
    before anything runs; a refusal by the gate is a result (``refused``), journaled.
    """
    phase = _contract_spec(spec)
    ctx = Context.resolve(spec, inventory=inventory)
    on = phase_host(ctx, "contract", phase)
    state = StateDir(Path(state_dir) if state_dir else spec.state_path())
    contract_id = new_deploy_id()
    with FleetSession(ctx, state=state, extravars={}, secret_names=[], verbosity=verbosity,
                      lock_wait=lock_wait, executor=executor, balancer=balancer,
                      install_signal_handlers=False) as session:
        session.lock(deploy_id=contract_id, message=f"contract {spec.name} "
                                                    f"(requires {phase.requires})")
        path = create_contract_record(state, contract_id, {
            "name": spec.name, "requires": phase.requires, "on": on, "force": force,
            "spec_file": spec.source, "inventory": ctx.inventory_source})
        journal = Journal(path / "journal.jsonl")
        emit = _Emitter(contract_id, [journal, *sinks])
        try:
            hosts = _gather(ctx, phase, state, balancer, versions)
            unmet = tuple(why for name in ("release", "migrate")
                          if getattr(spec.phases, name) is not None
                          and (why := unmet_phase(state, spec.name, name, phase.requires)))
            return _decide_and_run(ctx, phase, on, hosts, unmet, emit, session, path, runner,
                                   force=force, contract_id=contract_id,
                                   install=install_signal_handlers)
        finally:
            journal.close()


def _gather(ctx: Context, phase: ContractSpec, state: StateDir, balancer: Balancer | None,
            versions: Callable[[Context], Mapping[str, str | None]] | None
            ) -> tuple[HostVersion, ...]:
    spec = ctx.spec
    reported = (versions or read_versions)(ctx) if spec.version_url else {}
    states, error = _read_states(spec, balancer)
    return gate([h.name for h in ctx.fleet], ctx.servers, phase.requires, reported=reported,
                journaled=journaled_versions(state, spec.name), states=states, lb_error=error)


def _decide_and_run(ctx: Context, phase: ContractSpec, on: str, hosts: tuple[HostVersion, ...],
                    unmet: tuple[str, ...], emit: _Emitter, session: FleetSession, path: Path,
                    runner: PhaseRunner | None, *, force: bool, contract_id: str,
                    install: bool) -> ContractResult:
    blocking = tuple(h.host for h in hosts if h.blocking)
    emit(ev.ContractChecked, requires=phase.requires, blocking=blocking,
         forced=force and bool(blocking or unmet), unmet=unmet,
         hosts={h.host: {"version": h.version or "", "source": h.source, "lb": h.lb,
                         "verdict": h.verdict, "journal": h.journal or ""} for h in hosts})

    def end(status: ev.ContractStatus, cause: str, detail: str = "") -> ContractResult:
        emit(ev.ContractFinished, status=status, exit_code=EXIT_CODES[status], cause=cause,
             blocking=blocking)
        return ContractResult(contract_id, status, EXIT_CODES[status], cause, phase.requires,
                              on, hosts, detail, unmet)

    if blocking and not force:
        return end("refused", f"{len(blocking)} of {len(hosts)} hosts may run a version older "
                              f"than {phase.requires} (or one not known): "
                              + "; ".join(h.line() for h in hosts if h.blocking)
                              + "".join(f"; {why}" for why in unmet))
    if unmet and not force:
        return end("refused", "; ".join(unmet))
    runner = runner or AnsiblePhaseRunner(
        session.executor(runs=path / "runs", control_dir=f"/tmp/rollout-cp-{contract_id}"),
        base_dir=Path(ctx.spec.base_dir), hosts={"contract": on}, redactor=session.redactor)
    emit(ev.PhaseStarted, phase="contract", on=on, what=phase.what())
    t = time.monotonic()
    with _cancel_on_signal(install) as stop:
        try:
            out = runner.run("contract", phase, version=phase.requires, deploy_id=contract_id,
                             cancel=stop.is_set)
        except ControllerError as exc:
            out = PhaseOutcome(ok=False, rc=None, detail=f"the controller failed: {exc}")
    emit(ev.PhaseFinished, phase="contract", ok=out.ok, rc=out.rc, detail=out.detail,
         duration=round(time.monotonic() - t, 3))
    if out.cancelled:
        return end("cancelled", f"interrupted: the contract on {on} was stopped", out.detail)
    if not out.ok:
        return end("failed", f"the contract failed on {on}: {out.detail[-300:]}", out.detail)
    if blocking or unmet:
        past = [f"{', '.join(blocking)} may run a version older than {phase.requires}"] \
            if blocking else []
        return end("forced", f"ran under --force on {on} although "
                             + "; ".join([*past, *unmet]), out.detail)
    return end("done", f"every host runs {phase.requires} or newer; ran on {on}", out.detail)
