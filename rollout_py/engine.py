"""The rolling-deploy saga: runs a plan's batches, journals every event, stops and resumes.

The steps themselves live in ``rollout_py.batch`` (forward) and ``rollout_py.undo``; the
decision of what a resume does in ``rollout_py.reconcile``.

Rolling a batch back runs the undo of every step it applied, in reverse, including the one
that failed. Control never leaves a batch between drain and enable without rolling it back or
finishing it: the first interrupt stops after the current batch, the second cancels the
running step and rolls the batch back at once. A rollback itself is never cancelled.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from rollout_py import events as ev
from rollout_py.balancer import fleet
from rollout_py.balancer.fleet import Balancer, wait_until
from rollout_py.batch import BatchSteps
from rollout_py.errors import JournalError
from rollout_py.executor import Executor
from rollout_py.planner import Plan
from rollout_py.probes import Prober
from rollout_py.reconcile import RETRYABLE, reconcile
from rollout_py.redact import Redactor
from rollout_py.result import EXIT_CODES, DeployResult, fold
from rollout_py.saga import (
    Applied,
    BatchFailure,
    ChecksFor,
    LBLost,
    RunState,
    Settings,
    Sink,
    snapshot_of,
)
from rollout_py.undo import UndoSteps

__all__ = ["BatchFailure", "Engine", "Settings", "new_deploy_id"]


def new_deploy_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


class Engine(BatchSteps, UndoSteps):
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
        # Held while an event is numbered and handed to the sinks (see emit); reentrant, so a
        # sink that emits queues its event in _backlog instead of deadlocking.
        self._emit_lock = threading.RLock()
        self._delivering = False
        self._backlog: deque[ev.Event] = deque()
        self._redactor = redactor or Redactor()
        self._journal_failed: str | None = None
        self._current: Applied | None = None
        self._last_failure: ev.Failure | None = None
        self._undid = False  # a rollback ran in this run: the outcome is no mere stop
        self._foreign: dict[str, str] = {}  # "lb server" -> what someone else set

    # --- events --------------------------------------------------------------------------
    def emit(self, cls: type[ev.Event], **fields: Any) -> ev.Event:
        """Numbers the event and hands it to every sink (the journal first) before returning.

        Probe threads and the guard thread emit too: the sinks see one event at a time, in
        ``seq`` order (numbering and delivery share a lock). An event emitted by a sink itself
        (same thread) is delivered once the current one has reached every sink; ``interrupt``
        takes no lock, so a sink (or a signal handler) may call it at any time.
        """
        with self._emit_lock:
            with self._lock:
                self._seq += 1
                event = self._redactor.data(cls(deploy_id=self.deploy_id, seq=self._seq,
                                                **fields))
                self._events.append(event)
            if self._delivering:  # emitted by a sink: after the event being delivered
                self._backlog.append(event)
                return event
            self._delivering = True
            try:
                self._deliver(event)
                while self._backlog:
                    self._deliver(self._backlog.popleft())
            finally:
                self._delivering = False
                self._backlog.clear()  # only left over when a journal write failed
        return event

    def _deliver(self, event: ev.Event) -> None:
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

    # --- the run -------------------------------------------------------------------------
    def run(self, resume: Sequence[ev.Event] | None = None) -> DeployResult:
        """Runs the plan; with ``resume`` (a dead controller's journal), takes over from it."""
        plan = self.plan
        done: list[Applied] = []
        state = RunState()
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
        except LBLost as exc:
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

    def _loop(self, start: int, done: list[Applied], state: RunState) -> None:
        plan = self.plan
        for i in range(start, len(plan.batches)):
            batch = plan.batches[i]
            self._flush_interrupts()
            if self._stop_after_batch.is_set():
                break
            applied = Applied(batch)
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

    def _finish(self, done: list[Applied], state: RunState) -> DeployResult:
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
        # Between batches with every host in rotation: resume continues where it stopped; a
        # rollback the controller could not finish: resume finishes it.
        resumable = state.resumable or status in ("stopped", "cancelled") or (
            status == "failed" and any(isinstance(e, ev.RollbackFinished) and e.stranded
                                       and e.failure in RETRYABLE for e in self._events))
        self.emit(ev.DeployFinished, status=status, exit_code=EXIT_CODES[status], cause=cause,
                  stranded=tuple(dict.fromkeys(state.stranded)), resumable=resumable)
        return fold(self._events)

    # --- resume --------------------------------------------------------------------------
    def _resume(self, events: list[ev.Event], done: list[Applied], state: RunState) -> int:
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
        exposed = fleet.exposed(self.balancer.states(), plan.servers.values())
        decision = reconcile(events, plan, exposed=exposed, staged=bool(self.settings.stage_tags))
        if not decision.steps:
            nxt = decision.next_batch
            self.emit(ev.DeployResumed, batch=nxt, action="continue" if nxt else "none",
                      detail=f"nothing to undo: continuing with batch {nxt}" if nxt else
                      "nothing to undo and no batch left to run")
        applied_done = {i: Applied(plan.batches[i - 1], snapshot=snapshot_of(
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
                applied = Applied(batch, snapshot=snapshot_of(decision.recorded.get(batch.index)),
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
            applied = Applied(batch, snapshot=snapshot_of(decision.recorded.get(batch.index)),
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
