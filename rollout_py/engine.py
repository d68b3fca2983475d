"""The rolling-deploy saga: per batch drain → upgrade → probe → enable → soak, with undo.

Rolling a batch back runs the undo of every step it applied, in reverse, including the one
that failed. Control never leaves a batch between drain and enable without rolling it back or
finishing it: the first interrupt stops after the current batch, the second cancels the
running step and rolls the batch back at once. A rollback itself is never cancelled.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rollout_py import events as ev
from rollout_py.balancer.fleet import (
    Balancer,
    Recorded,
    Snapshot,
    not_up,
    out_of_rotation,
    wait_until,
)
from rollout_py.balancer.runtime import ServerState
from rollout_py.errors import BalancerError, BalancerUnreachable, ControllerError, JournalError
from rollout_py.executor import Executor
from rollout_py.planner import Plan, PlannedBatch
from rollout_py.probes import Check, Prober, soak, wait_healthy
from rollout_py.reconcile import RETRYABLE, exposed_servers, reconcile
from rollout_py.redact import Redactor
from rollout_py.result import EXIT_CODES, DeployResult, fold
from rollout_py.spec import HealthSpec

Sink = Callable[[ev.Event], None]
# host, version -> (checks before enable, checks after enable)
ChecksFor = Callable[[str, str], tuple[list[Check], list[Check]]]


def new_deploy_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)




class _LBLost(Exception):
    """An LB stopped answering: nothing more can be done safely; the deploy stops, resumable."""


class BatchFailure(Exception):
    """A step of a batch failed; ``failure`` is the class of the failure."""

    def __init__(self, failure: str, cause: str, hosts: Sequence[str] = ()) -> None:
        super().__init__(cause)
        self.failure, self.cause, self.hosts = failure, cause, tuple(hosts)


@dataclass
class Settings:
    """How the engine behaves (from the spec and the command line)."""

    health: HealthSpec
    drain_timeout: float
    up_timeout: float
    force_drain: bool = False
    extravars: Mapping[str, Any] = field(default_factory=dict)
    known_versions: Mapping[str, str | None] = field(default_factory=dict)
    # Reads the version a host serves (from the spec's version_url); None when unknown.
    version_of: Callable[[str], str | None] | None = None
    # Tags for the stage phase (every host, before any drain) and for the per-batch run.
    stage_tags: str | None = None
    switch_tags: str | None = None
    guard_interval: float = 0.1
    poll: float = 0.1


@dataclass
class _RunState:
    failed: bool = False
    cause: str | None = None
    stranded: list[str] = field(default_factory=list)
    resumable: bool = False


def _snapshot(recorded: Mapping[str, Mapping[str, Sequence[Any]]] | None) -> Snapshot | None:
    """The LB state recorded before a batch's drain, from its journal event."""
    if not recorded:
        return None
    return {url: {srv: Recorded(str(v[0]), int(v[1])) for srv, v in per.items()}
            for url, per in recorded.items()}


def _drift(states: Mapping[str, Mapping[str, ServerState]], snapshot: Snapshot | None,
           servers: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Servers of a batch that must be in MAINT but are not, split in two: back in READY at
    their recorded weight (what an HAProxy reload without its state does: put back in MAINT),
    and changed by someone else (a DRAIN, or a weight rollout_py did not set: not fought)."""
    reloaded: dict[str, str] = {}
    foreign: dict[str, str] = {}
    for url, per in states.items():
        for name in servers:
            st = per.get(name)
            if st is None:
                continue
            rec = snapshot.get(url, {}).get(name) if snapshot else None
            if rec is not None and st.weight != rec.weight:
                foreign[f"{url} {name}"] = (f"{st.admin} weight {st.weight} (expected MAINT "
                                            f"weight {rec.weight})")
            elif st.drain and not st.maint:
                foreign[f"{url} {name}"] = f"DRAIN weight {st.weight} (expected MAINT)"
            elif not st.maint:
                reloaded[f"{url} {name}"] = st.admin
    return reloaded, foreign


def _not_up_where_ready(states: Mapping[str, Mapping[str, ServerState]], snapshot: Snapshot,
                        servers: Sequence[str]) -> list[str]:
    """Servers that HAProxy does not report UP on an LB where they were recorded in rotation
    (a server an operator left in MAINT on one LB is expected UP only on the others)."""
    bad = []
    for name in servers:
        for url, per in states.items():
            rec = snapshot.get(url, {}).get(name)
            if rec is not None and rec.admin == "MAINT":
                continue
            if not not_up({url: per}, [name]):
                continue
            bad.append(name)
            break
    return bad


@dataclass
class _Applied:
    """What a batch has applied so far: the undo stack of the saga."""

    batch: PlannedBatch
    snapshot: Snapshot | None = None
    drained: bool = False
    upgraded: bool = False
    enabled: bool = False


class Engine:
    """Runs a Plan. Every side effect goes through the executor, balancer and prober seams.

    Example:
        >>> engine = Engine(plan, executor=..., balancer=..., prober=..., checks=...,
        ...                 settings=...)  # doctest: +SKIP
        >>> engine.run().status  # doctest: +SKIP
        'succeeded'
    """

    def __init__(self, plan: Plan, *, executor: Executor, balancer: Balancer, prober: Prober,
                 checks: ChecksFor, settings: Settings, sinks: Sequence[Sink] = (),
                 deploy_id: str | None = None, redactor: Redactor | None = None) -> None:
        self.plan = plan
        self.executor, self.balancer, self.prober = executor, balancer, prober
        self.checks, self.settings = checks, settings
        self.deploy_id = deploy_id or new_deploy_id()
        self._sinks = list(sinks)
        self._events: list[ev.Event] = []
        self._seq = 0
        self._stop_after_batch = threading.Event()
        self._abort = threading.Event()
        self._pending: list[tuple[str, int]] = []
        self._interrupts = 0
        self._callback_error: str | None = None
        self._previous: dict[str, str | None] = dict(settings.known_versions)
        self._lock = threading.Lock()
        self._redactor = redactor or Redactor()
        self._journal_failed: str | None = None
        self._current: _Applied | None = None
        self._last_failure: str | None = None
        self._undid = False  # a rollback ran in this run: the outcome is no mere stop
        self._foreign: dict[str, str] = {}  # "lb server" -> what someone else set

    # --- events --------------------------------------------------------------------------
    def emit(self, cls: type[ev.Event], **fields: Any) -> ev.Event:
        with self._lock:
            self._seq += 1
            event = self._redactor.data(cls(deploy_id=self.deploy_id, seq=self._seq, **fields))
            self._events.append(event)
        for sink in self._sinks:
            critical = getattr(sink, "critical", False)
            if critical and self._journal_failed:
                continue
            try:
                sink(event)
            except Exception as exc:  # a consumer's bug must not strand a batch
                if critical:
                    # The journal must hold every step: stop before the next action.
                    self._journal_failed = str(exc)
                    raise JournalError(str(exc)) from exc
                if self._callback_error is None:
                    self._callback_error = f"event consumer raised {type(exc).__name__}: {exc}"
                    self._stop_after_batch.set()
        return event

    @property
    def events(self) -> tuple[ev.Event, ...]:
        return tuple(self._events)

    # --- interruption --------------------------------------------------------------------
    def interrupt(self, signame: str = "SIGINT") -> None:
        """Signal-safe: the first call stops after the current batch, the second aborts it."""
        self._interrupts += 1
        self._pending.append((signame, self._interrupts))
        if self._interrupts == 1:
            self._stop_after_batch.set()
        else:
            self._abort.set()

    def _flush_interrupts(self) -> None:
        while self._pending:
            signame, count = self._pending.pop(0)
            action = ("finish or roll back the current batch, then stop" if count == 1 else
                      "cancel the running step and roll the current batch back now")
            self.emit(ev.Interrupted, signal=signame, count=count, action=action)

    def stop_after_reconcile(self) -> None:
        """On resume: reconcile the interrupted batch, then stop instead of continuing."""
        self._stop_after_batch.set()

    def _aborted(self) -> bool:
        return self._abort.is_set()

    # --- the run -------------------------------------------------------------------------
    def run(self, resume: Sequence[ev.Event] | None = None) -> DeployResult:
        """Runs the plan; with ``resume`` (a dead controller's journal), takes over from it."""
        plan = self.plan
        done: list[_Applied] = []
        state = _RunState()
        try:
            if resume is None:
                self.emit(ev.DeployStarted, name=plan.name, version=plan.version,
                          batches=tuple(b.hosts for b in plan.batches),
                          skipped=dict(plan.skipped), versions=dict(self._previous))
                start = 0
            else:
                start = self._resume(list(resume), done, state)
            if not state.failed and resume is None and self.settings.stage_tags:
                self._stage(state)
            if not state.failed:
                self._loop(start, done, state)
        except _LBLost as exc:
            state.failed, state.resumable = True, True
            state.cause = f"{exc}; stopped: run `rollout resume` once the LB answers again"
            if self._current is not None and self._current.drained:
                state.stranded += list(self._current.batch.hosts)
        except JournalError as exc:
            state.failed, state.resumable = True, True
            state.cause = f"{exc}; stopped before the next action"
            if self._current is not None and self._current.drained:
                state.stranded += list(self._current.batch.hosts)
        return self._finish(done, state)

    def _loop(self, start: int, done: list[_Applied], state: _RunState) -> None:
        plan = self.plan
        for i in range(start, len(plan.batches)):
            batch = plan.batches[i]
            self._flush_interrupts()
            if self._stop_after_batch.is_set():
                break
            applied = _Applied(batch)
            self._current = applied
            ok, batch_cause, batch_stranded = self._run_batch(applied)
            self._current = None
            self._flush_interrupts()
            if ok:
                done.append(applied)
                if i + 1 < len(plan.batches) and plan.pause_between_batches > 0:
                    wait_until(lambda: self._stop_after_batch.is_set(),
                               plan.pause_between_batches, 0.1)
                continue
            state.failed, state.cause = True, batch_cause
            state.stranded += batch_stranded
            if self._last_failure in RETRYABLE:
                state.resumable = True  # not the release's fault: resume retries
            else:
                self._rollback_earlier(done, batch.index, batch_cause or "", state)
            break

    def _rollback_earlier(self, done: list[_Applied], index: int, cause: str,
                          state: _RunState) -> None:
        if self.plan.on_failure == "rollback_all":
            for earlier in reversed(done):
                state.stranded += self._rollback(
                    earlier, f"rollback_all after batch {index}: {cause}")
            done.clear()

    def _finish(self, done: list[_Applied], state: _RunState) -> DeployResult:
        self._flush_interrupts()
        interrupted = self._interrupts > 0 or self._callback_error is not None
        status: ev.Status
        if state.stranded or self._journal_failed:
            status = "failed"
        elif state.failed and not interrupted:
            status = "rolled_back" if self._undid else "stopped"
        elif interrupted and (state.failed or len(done) < len(self.plan.batches)):
            status = "cancelled"
        elif state.failed:
            status = "rolled_back" if self._undid else "stopped"
        elif len(done) < len(self.plan.batches):
            status = "stopped"  # resumed with continue=False
        else:
            status = "succeeded"
        cause = state.cause
        if interrupted and cause is None:
            cause = self._callback_error or "interrupted"
        if status == "stopped" and cause is None:
            cause = "stopped after reconciling (resume without continue)"
        # Between batches with every host in rotation: resume continues where it stopped.
        resumable = state.resumable or status in ("stopped", "cancelled")
        self.emit(ev.DeployFinished, status=status, exit_code=EXIT_CODES[status], cause=cause,
                  stranded=tuple(dict.fromkeys(state.stranded)), resumable=resumable)
        return fold(self._events)

    # --- resume --------------------------------------------------------------------------
    def _resume(self, events: list[ev.Event], done: list[_Applied], state: _RunState) -> int:
        """Takes over a stopped deploy: executes what ``reconcile`` decides from its journal
        and the live LB state. Returns the index of the first batch still to run."""
        plan = self.plan
        self._events = list(events)
        self._seq = max((e.seq for e in events), default=0)
        for e in events:
            if isinstance(e, ev.DeployStarted):
                for host, version in e.versions.items():
                    self._previous.setdefault(host, version)
            if isinstance(e, ev.StepFinished) and e.step == "upgrade":
                for host, version in e.versions.items():
                    if version is not None:
                        self._previous[host] = version
        exposed = exposed_servers(self.balancer.states(), plan.servers.values())
        decision = reconcile(events, plan, exposed=exposed, staged=bool(self.settings.stage_tags))
        if not decision.steps:
            nxt = decision.next_batch
            self.emit(ev.DeployResumed, batch=nxt, action="continue" if nxt else "none",
                      detail=f"nothing to undo: continuing with batch {nxt}" if nxt else
                      "nothing to undo and no batch left to run")
        applied_done = {i: _Applied(plan.batches[i - 1], snapshot=_snapshot(
            decision.recorded.get(i)), drained=True, upgraded=True, enabled=True)
            for i in decision.done}
        for step in decision.steps:
            self.emit(ev.DeployResumed, batch=step.batch, action=step.action, detail=step.detail)
            if step.action == "stage":
                self._stage(state)
                if state.failed:
                    return len(plan.batches)
                continue
            assert step.batch is not None
            batch = plan.batches[step.batch - 1]
            if step.action == "finish":
                applied = _Applied(batch, snapshot=_snapshot(decision.recorded.get(batch.index)),
                                   drained=True, upgraded=True)
                self._current = applied
                ok, cause, stranded = self._run_batch(applied, finish_only=True)
                self._current = None
                if ok:
                    applied_done[batch.index] = applied
                    continue
                done += applied_done.values()
                state.failed, state.cause, state.stranded = True, cause, stranded
                if self._last_failure not in RETRYABLE:
                    self._rollback_earlier(done, batch.index, cause or "", state)
                else:
                    state.resumable = True
                return len(plan.batches)
            applied = _Applied(batch, snapshot=_snapshot(decision.recorded.get(batch.index)),
                               drained=True, upgraded=step.upgrade, enabled=step.drain)
            applied_done.pop(batch.index, None)
            self._current = applied
            stranded = self._rollback(applied, f"resume: {step.detail}")
            self._current = None
            if stranded:
                state.stranded += stranded
        done += sorted(applied_done.values(), key=lambda a: a.batch.index)
        state.stranded += decision.stranded
        if decision.failure is not None or state.stranded:
            # The failure was being unwound: whatever it rolled back counts for the outcome.
            self._undid |= any(isinstance(e, ev.RollbackStarted) for e in events)
            state.failed = True
            state.cause = decision.cause or "a rollback on resume left hosts out of rotation"
            self._last_failure = decision.failure
            return len(plan.batches)
        return (decision.next_batch or len(plan.batches) + 1) - 1

    def _run_batch(self, applied: _Applied, *, finish_only: bool = False
                   ) -> tuple[bool, str | None, list[str]]:
        batch = applied.batch
        if not finish_only:
            self.emit(ev.BatchStarted, batch=batch.index, hosts=batch.hosts)
        try:
            durations = self._finish_batch(applied) if finish_only else self._forward(applied)
        except BatchFailure as exc:
            failure, cause, hosts = exc.failure, exc.cause, exc.hosts or batch.hosts
        except BalancerUnreachable as exc:
            self.emit(ev.BatchFailed, batch=batch.index, failure="balancer_unreachable",
                      cause=str(exc), hosts=batch.hosts)
            raise _LBLost(str(exc)) from exc
        except BalancerError as exc:
            failure, cause, hosts = "balancer", str(exc), batch.hosts
        except ControllerError as exc:
            failure, cause, hosts = "controller", str(exc), batch.hosts
        else:
            self.emit(ev.BatchSucceeded, batch=batch.index, durations=durations)
            return True, None, []
        if self._foreign:
            failure, cause = "foreign_change", ("someone else changed servers of the batch: "
                                                + "; ".join(f"{k}: {v}" for k, v in
                                                            sorted(self._foreign.items())))
        self._last_failure = failure
        self.emit(ev.BatchFailed, batch=batch.index, failure=failure, cause=cause, hosts=hosts)
        if not (applied.drained or applied.upgraded or applied.enabled or applied.snapshot):
            return False, cause, []  # nothing was touched
        return False, cause, self._rollback(applied, cause)

    def _forward(self, applied: _Applied) -> dict[str, float]:
        batch, plan, s = applied.batch, self.plan, self.settings
        servers = batch.servers
        t0 = time.monotonic()
        durations: dict[str, float] = {}

        # Capacity, from the live state of every LB, before anything is touched.
        out = out_of_rotation(self.balancer.states(), plan.servers.values())
        taking_out = len(out | set(servers))
        self.emit(ev.CapacityChecked, batch=batch.index, out_of_rotation=len(out),
                  taking_out=taking_out, max_unavailable=plan.max_unavailable)
        if taking_out > plan.max_unavailable:
            raise BatchFailure("capacity", f"batch {batch.index} would leave {taking_out} servers "
                               f"out of rotation ({len(out)} already are: "
                               f"{', '.join(sorted(out)) or '-'}); max_unavailable is "
                               f"{plan.max_unavailable}")

        # Drain: no new requests; wait for sessions to end; then MAINT.
        applied.snapshot = self.balancer.snapshot(servers)
        recorded = {url: {srv: [r.admin, r.weight] for srv, r in per.items()}
                    for url, per in applied.snapshot.items()}
        # Out of rotation before we touched it (an operator's DRAIN/MAINT): restored so, and said.
        found_out = {f"{url} {srv}": r.admin for url, per in applied.snapshot.items()
                     for srv, r in per.items() if r.admin != "READY"}
        applied.drained = True
        # Journaled before it is applied: a resume then knows the state to restore.
        self.emit(ev.DrainStarted, batch=batch.index, servers=servers, recorded=recorded,
                  found_out=found_out)
        self.balancer.set_state(servers, "drain")
        forced, cut = self._wait_drained(servers, force=s.force_drain)
        self.emit(ev.ServersDrained, batch=batch.index, servers=servers, forced=forced, cut=cut)
        self.balancer.set_state(servers, "maint")
        self.emit(ev.ServersDisabled, batch=batch.index, servers=servers)
        durations["drain"] = time.monotonic() - t0

        # Upgrade: one run limited to the batch.
        t = time.monotonic()
        applied.upgraded = True
        self.emit(ev.StepStarted, batch=batch.index, step="upgrade", hosts=batch.hosts)
        with self._guard(applied):
            result = self.executor.run_playbook(
                plan.playbook, batch.hosts, self._extravars(plan.version, batch.index),
                label=f"batch{batch.index}-upgrade", tags=s.switch_tags, cancel=self._aborted)
        for host in batch.hosts:
            if host in result.previous_versions:
                self._previous[host] = result.previous_versions[host]
        durations["upgrade"] = time.monotonic() - t
        self.emit(ev.StepFinished, batch=batch.index, step="upgrade", ok=result.ok,
                  hosts=result.hosts,
                  versions={h: self._previous.get(h) for h in batch.hosts},
                  duration=durations["upgrade"])
        if not result.ok:
            bad = [h for h, o in result.hosts.items() if o != "ok"]
            first = next((result.hosts[h] for h in bad), result.status)
            raise BatchFailure(result.failure_kind(),
                               f"upgrade failed on {', '.join(bad) or 'the batch'}: {first}", bad)

        durations.update(self._finish_batch(applied))
        durations["total"] = time.monotonic() - t0
        return {k: round(v, 3) for k, v in durations.items()}

    def _finish_batch(self, applied: _Applied) -> dict[str, float]:
        """Verify, enable, soak: the part of a batch after its upgrade."""
        batch, plan, s = applied.batch, self.plan, self.settings
        servers = batch.servers
        durations: dict[str, float] = {}
        t0 = time.monotonic()
        # Verify with our own probes before HAProxy sees the servers again.
        t = time.monotonic()
        with self._guard(applied):
            self._probe(batch, plan.version, phase="verify")
        durations["verify"] = time.monotonic() - t

        # Enable: the recorded state and weight on every LB, then HAProxy's own check UP.
        t = time.monotonic()
        applied.enabled = True
        self._enable(applied)
        self.emit(ev.ServersEnabled, batch=batch.index, servers=servers)
        durations["enable"] = time.monotonic() - t

        if s.health.soak > 0:
            t = time.monotonic()
            self._probe(batch, plan.version, phase="soak")
            durations["soak"] = time.monotonic() - t
        durations["total"] = time.monotonic() - t0
        return durations

    def _stage(self, state: _RunState) -> None:
        """Copies the release to every host of the plan while they still serve: the part of
        an upgrade that is safe in rotation. Nothing is drained; a failure stops the deploy."""
        hosts = self.plan.hosts
        if not hosts:
            return
        self.emit(ev.StepStarted, batch=0, step="stage", hosts=hosts)
        t = time.monotonic()
        try:
            result = self.executor.run_playbook(
                self.plan.playbook, hosts, self._extravars(self.plan.version, 0),
                label="stage", tags=self.settings.stage_tags, cancel=self._aborted)
        except ControllerError as exc:
            self.emit(ev.StepFinished, batch=0, step="stage", ok=False,
                      hosts=dict.fromkeys(hosts, f"not run: {exc}"), versions={},
                      duration=round(time.monotonic() - t, 3))
            state.failed, state.resumable = True, True
            state.cause = f"staging stopped (nothing was drained): the controller failed: {exc}"
            return
        self.emit(ev.StepFinished, batch=0, step="stage", ok=result.ok, hosts=result.hosts,
                  versions={h: result.previous_versions.get(h) for h in hosts},
                  duration=round(time.monotonic() - t, 3))
        for host, version in result.previous_versions.items():
            self._previous.setdefault(host, version)
        if not result.ok:
            bad = [h for h, o in result.hosts.items() if o != "ok"]
            state.failed = True
            state.resumable = result.failure_kind() in RETRYABLE
            state.cause = (f"staging failed on {', '.join(bad) or 'the fleet'} (nothing was "
                           f"drained): {next((result.hosts[h] for h in bad), result.status)}")

    @contextlib.contextmanager
    def _guard(self, applied: _Applied) -> Iterator[None]:
        """While a batch must stay out of rotation, watches every LB and puts its servers back
        in MAINT if something (an HAProxy reload without its state) brought them back."""
        servers = applied.batch.servers
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(self.settings.guard_interval):
                try:
                    states = self.balancer.states()
                except BalancerError:
                    continue  # the main flow meets (and handles) a lost LB itself
                reloaded, foreign = _drift(states, applied.snapshot, servers)
                if foreign and not self._foreign:
                    self._foreign.update(foreign)
                    self._abort.set()  # cancels the running step; the batch stops
                    with contextlib.suppress(JournalError):
                        self.emit(ev.ForeignChange, batch=applied.batch.index,
                                  servers=tuple(sorted({k.split(" ", 1)[1] for k in foreign})),
                                  found=foreign)
                    return
                if reloaded:
                    try:
                        self.balancer.set_state(servers, "maint")
                    except BalancerError:
                        continue
                    with contextlib.suppress(JournalError):
                        self.emit(ev.DriftCorrected, batch=applied.batch.index,
                                  servers=servers, found=reloaded)

        thread = threading.Thread(target=watch, name="maint-guard", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
        if self._journal_failed:
            raise JournalError(self._journal_failed)

    def _extravars(self, version: str, batch: int, **more: Any) -> dict[str, Any]:
        return {**self.settings.extravars, "rollout_version": version,
                "rollout_deploy_id": self.deploy_id, "rollout_batch": batch, **more}

    def _wait_drained(self, servers: Sequence[str], *, force: bool
                      ) -> tuple[tuple[str, ...], dict[str, dict[str, int]]]:
        """Waits for the servers' sessions to end; with ``force``, shuts those left after the
        timeout. Returns the servers whose sessions were shut and, per LB, how many."""
        left: dict[str, int] = {}

        def drained() -> bool:
            left.clear()
            left.update({k: v for k, v in self.balancer.sessions(servers).items() if v})
            return not left

        if wait_until(drained, self.settings.drain_timeout, self.settings.poll, self._aborted):
            return (), {}
        if self._aborted():
            raise BatchFailure("cancelled", "interrupted while draining")
        if not force:
            raise BatchFailure("drain_timeout", "sessions still open after "
                               f"{self.settings.drain_timeout:g} s: "
                               + ", ".join(f"{k} {v}" for k, v in sorted(left.items())),
                               tuple(left))
        forced = tuple(sorted(left))
        cut = {url: {s: n for s, n in per.items() if n}
               for url, per in self.balancer.sessions_by_lb(forced).items()}
        self.balancer.shutdown_sessions(forced)
        wait_until(drained, 10, self.settings.poll)
        return forced, {url: per for url, per in cut.items() if per}

    def _enable(self, applied: _Applied) -> None:
        assert applied.snapshot is not None
        servers = applied.batch.servers
        self.balancer.restore(applied.snapshot, servers)
        snapshot = applied.snapshot
        bad: list[str] = []

        def up() -> bool:
            bad[:] = _not_up_where_ready(self.balancer.states(), snapshot, servers)
            return not bad

        if not wait_until(up, self.settings.up_timeout, self.settings.poll, self._aborted):
            raise BatchFailure("probe_failed", "HAProxy's check did not report "
                               f"{', '.join(bad)} UP within {self.settings.up_timeout:g} s", bad)

    def _probe(self, batch: PlannedBatch, version: str | Mapping[str, str | None], *,
               phase: str, hosts: Sequence[str] | None = None) -> dict[str, str | None]:
        hosts = list(hosts if hosts is not None else batch.hosts)
        h = self.settings.health
        checks: dict[str, list[Check]] = {}
        for host in hosts:
            v = version if isinstance(version, str) else (version.get(host) or "")
            before, after = self.checks(host, v)
            checks[host] = before + after if phase == "soak" else before

        def report(host: str, failure: str | None, _check: str) -> None:
            if failure is None:
                self.emit(ev.ProbePassed, batch=batch.index, host=host, phase=phase)
            else:
                self.emit(ev.ProbeFailed, batch=batch.index, host=host, phase=phase,
                          probe=failure.split(":", 1)[0], detail=failure)

        stop = (lambda: False) if phase == "rollback" else self._aborted
        if phase == "soak":
            results = soak(self.prober, checks, duration=h.soak, interval=h.interval,
                           on_result=report, stop=stop)
        else:
            results = wait_healthy(self.prober, checks, deadline=h.deadline, interval=h.interval,
                                   consecutive=h.consecutive, on_result=report, stop=stop)
        bad = {k: v for k, v in results.items() if v}
        if bad and phase != "rollback":
            first = next(iter(bad))
            raise BatchFailure("probe_failed", f"{phase} probe failed on {', '.join(bad)}: "
                               f"{first}: {bad[first]}", tuple(bad))
        return results

    # --- undo ----------------------------------------------------------------------------
    def _rollback(self, applied: _Applied, cause: str) -> list[str]:
        """Undoes what the batch applied, newest first. Returns hosts left out of rotation."""
        batch = applied.batch
        host_of = dict(zip(batch.servers, batch.hosts, strict=True))
        self.emit(ev.RollbackStarted, batch=batch.index, hosts=batch.hosts, cause=cause)
        self._undid = True
        # Servers someone else changed meanwhile are left as found and reported, not fought.
        foreign = {k.split(" ", 1)[1] for k in self._foreign} & set(batch.servers)
        servers = tuple(s for s in batch.servers if s not in foreign)
        stranded: set[str] = {host_of[s] for s in foreign}
        detail = ""
        if foreign:
            detail = "left as found, changed by someone else: " + "; ".join(
                f"{k}: {v}" for k, v in sorted(self._foreign.items()))
        try:
            if applied.enabled and servers:  # undo enable: out of rotation again, gently
                self.balancer.set_state(servers, "drain")
                left = self.balancer.sessions(servers)
                if any(left.values()):
                    wait_until(lambda: not any(self.balancer.sessions(servers).values()),
                               self.settings.drain_timeout, self.settings.poll)
                self.balancer.set_state(servers, "maint")
            if applied.upgraded and servers:  # undo upgrade: the previous release
                stranded |= self._undo_upgrade(batch, [host_of[s] for s in servers])
            if applied.snapshot is not None:  # undo drain: recorded state, UP again
                healthy = [s for s in servers if host_of[s] not in stranded]
                if healthy:
                    self.balancer.restore(applied.snapshot, healthy)
                snap = applied.snapshot
                if healthy and not wait_until(
                        lambda: not _not_up_where_ready(self.balancer.states(), snap, healthy),
                        self.settings.up_timeout, self.settings.poll):
                    late = _not_up_where_ready(self.balancer.states(), snap, healthy)
                    detail = f"HAProxy did not report {', '.join(late)} UP after the rollback"
                    stranded |= {host_of[s] for s in late}
                if stranded:
                    self.balancer.set_state([s for s in servers if host_of[s] in stranded],
                                            "maint")
            elif servers:  # no recorded state to go back to: they stay out, reported
                stranded |= {host_of[s] for s in servers}
                detail = "no LB state was recorded before the drain: left in MAINT"
        except BalancerUnreachable as exc:
            raise _LBLost(f"during the rollback of batch {batch.index}: {exc}") from exc
        except ControllerError as exc:
            detail = f"the controller failed during the rollback: {exc}"
            stranded = set(batch.hosts)
            with contextlib.suppress(BalancerError):
                self.balancer.set_state(servers, "maint")
        except BalancerError as exc:
            detail = f"load balancer error during rollback: {exc}"
            stranded = set(batch.hosts)
        ordered = [h for h in batch.hosts if h in stranded]
        self.emit(ev.RollbackFinished, batch=batch.index, ok=not ordered,
                  stranded=tuple(ordered), detail=detail)
        return ordered

    def _undo_upgrade(self, batch: PlannedBatch, batch_hosts: Sequence[str]) -> set[str]:
        plan = self.plan
        stranded: set[str] = set()
        self.emit(ev.StepStarted, batch=batch.index, step="rollback", hosts=tuple(batch_hosts))
        t = time.monotonic()
        outcomes: dict[str, str] = {}
        if plan.rollback_playbook:
            groups: dict[str | None, list[str]] = {plan.version: list(batch_hosts)}
        else:
            groups = {}
            for host in batch_hosts:
                groups.setdefault(self._previous.get(host), []).append(host)
        for version, hosts in groups.items():
            if version is None:
                for host in hosts:
                    outcomes[host] = "failed: previous version unknown (no rollback_playbook)"
                continue
            playbook = plan.rollback_playbook or plan.playbook
            extra = {"rollout_rollback": True,
                     "rollout_previous_versions": {h: self._previous.get(h) for h in hosts}}
            result = self.executor.run_playbook(
                playbook, hosts, self._extravars(version, batch.index, **extra),
                label=f"batch{batch.index}-rollback", cancel=None)
            outcomes.update(result.hosts)
        stranded |= {h for h, o in outcomes.items() if o != "ok"}
        # A host the rollback could not reach (or change) may still serve its previous
        # release untouched, e.g. when SSH died before the upgrade reached it. If the spec's
        # version_url says so, the probes below decide; otherwise it stays out.
        if self.settings.version_of is not None:
            for host in sorted(stranded):
                previous = self._previous.get(host)
                if previous is not None and self.settings.version_of(host) == previous:
                    stranded.discard(host)
                    outcomes[host] = f"{outcomes[host]} (serves {previous}: verified by probes)"
        self.emit(ev.StepFinished, batch=batch.index, step="rollback", ok=not stranded,
                  hosts=outcomes, versions={h: self._previous.get(h) for h in batch_hosts},
                  duration=round(time.monotonic() - t, 3))
        to_probe = [h for h in batch_hosts if h not in stranded]
        if to_probe:
            results = self._probe(batch, {h: self._previous.get(h) for h in to_probe},
                                  phase="rollback", hosts=to_probe)
            stranded |= {h for h, failure in results.items() if failure}
        return stranded
