"""The rolling-deploy saga: runs a plan's batches, journals every event, stops and resumes.

The plan's steps are executed in order: batches (``rollout_py.batch`` forward,
``rollout_py.undo``) and traffic steps (``rollout_py.traffic``); a continuous watch
(``rollout_py.health_watch``) keeps batches back in rotation under probes and analysis; a
resume (``rollout_py.takeover``) executes what ``rollout_py.reconcile`` decides.

Rolling a batch back runs the undo of every step it applied, in reverse, including the one
that failed. Control never leaves a batch between drain and enable without rolling it back or
finishing it: the first interrupt stops after the current batch, the second cancels the
running step and rolls the batch back at once. A rollback itself is never cancelled.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from rollout_py import events as ev
from rollout_py.balancer.fleet import Balancer, wait_until
from rollout_py.batch import BatchSteps
from rollout_py.errors import JournalError
from rollout_py.executor import Executor
from rollout_py.health_watch import HealthWatch
from rollout_py.phases import PhaseSteps
from rollout_py.planner import Plan, PlannedBatch
from rollout_py.probes import Check, Prober
from rollout_py.reconcile import RETRYABLE
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
    Stopped,
    new_deploy_id,
)
from rollout_py.shaping import Shaping  # shaping: map entries held while it runs
from rollout_py.steps import TrafficStep
from rollout_py.switch import SwitchSteps
from rollout_py.takeover import ResumeSteps
from rollout_py.traffic import TrafficSteps
from rollout_py.undo import UndoSteps

__all__ = ["BatchFailure", "Engine", "Settings", "new_deploy_id"]


class Engine(BatchSteps, UndoSteps, TrafficSteps, SwitchSteps, PhaseSteps, ResumeSteps):
    """Runs a Plan. Every side effect goes through the executor, balancer and prober seams.

    Example:
        >>> engine = Engine(plan, executor=..., balancer=..., prober=..., checks=...,
        ...                 settings=...)  # doctest: +SKIP
        >>> engine.run().status  # doctest: +SKIP
        'succeeded'
    """

    shaping: Shaping | None = None  # shaping: set by api._engine (rollout_py.shaping)

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
        self._weights_recorded: dict[str, dict[str, int]] | None = None
        self._weights_dirty = False
        self._weights_set: dict[str, dict[str, int]] | None = None
        self._weights_event: ev.WeightsSet | None = None
        self._skip_canary = False
        self._pause_requested: str | None = None
        self._aborted_by: str | None = None
        self._control_by = ""
        self._watch_failure: tuple[tuple[str, ...], str] | None = None
        self._done_hosts: list[str] = []
        self._completed = False  # the loop ran every step of the plan
        self._traffic_from: int | None = None  # resume: replay a batch's traffic steps
        self._watch: HealthWatch | None = None

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
        self._watch = self._new_watch()
        try:
            if resume is None:
                self.emit(ev.DeployStarted, name=plan.name, version=plan.version,
                          batches=tuple(b.hosts for b in plan.batches),
                          skipped=dict(plan.skipped), versions=dict(self._previous))
                start = 0 if self._expand(state) else len(plan.batches)  # phases: expand
                if not plan.batches:  # e.g. a switch-back: its steps come before any batch
                    self._traffic_from = 0
            else:
                start = self._resume(list(resume), done, state)
            self._prepare_batches(start)  # their Ansible starts while the stage runs
            if self.shaping is not None and (resume is not None or not state.failed):  # shaping
                self.shaping.start(self.emit, self.events)
            if not state.failed and resume is None and self.settings.stage_tags:
                self._stage(state)
            if not state.failed:
                self._loop(start, done, state)
                self._release(state)  # phases: the flag ramp, after every batch
                self._migrate(state)  # phases: after every batch (and the release)
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
        finally:
            self._end_watch()
            self._end_batches()
        return self._finish(done, state)

    def _new_watch(self) -> HealthWatch | None:
        """The continuous watch over batches back in rotation (probes that need no Ansible
        run, and per-server analysis windows when the spec has an analysis section)."""
        if not self.settings.watch or not self.plan.batches:
            return None
        s, version = self.settings, self.plan.version
        # Without an analysis section: probe rounds at most once a second (a big fleet's done
        # hosts are many; the batch's own probes keep their pace).
        watch_every = max(1.0, s.health.interval)

        def checks(host: str) -> list[Check]:
            return [c for c in self.checks(host, version)[0] if c.kind in ("http", "tcp")]

        def failed(hosts: tuple[str, ...], cause: str) -> None:
            self._watch_failure = (hosts, cause)
            self._abort.set()  # cancels the running step; the loop rolls back

        return HealthWatch(
            balancer=self.balancer, prober=self.prober, checks=checks,
            servers=self.plan.servers, baseline=self._baseline, emit=self.emit,
            on_fail=failed, interval=s.analysis.interval if s.analysis else watch_every,
            consecutive=s.health.consecutive, analysis=s.analysis, prometheus=s.prometheus,
            ignore_metrics=s.ignore_metrics, per_round=s.health.watch_hosts)

    def _end_watch(self) -> None:
        self._watch.stop() if self._watch is not None else None

    def _loop(self, start: int, done: list[Applied], state: RunState) -> None:
        """Executes the plan's steps from batch ``start`` (0-based) on; ``traffic_from``
        (a step position) when a resume replays a batch's traffic steps first."""
        steps = self.plan.steps
        pos = self._traffic_from if self._traffic_from is not None else next(
            (i for i, st in enumerate(steps) if isinstance(st, PlannedBatch)
             and st.index == start + 1), len(steps))
        try:
            for i in range(pos, len(steps)):
                step = steps[i]
                self._flush_interrupts()
                if isinstance(step, PlannedBatch):
                    if not self._batch_step(step, steps[i + 1:], done, state):
                        break
                elif not self._traffic_step(step, done, state):
                    break
            else:
                self._completed = True  # every step ran (a soak analysis too)
        except Exception:
            self._restore_weights_if_changed()
            raise
        self._restore_weights_if_changed()

    def _batch_step(self, batch: PlannedBatch, rest: Sequence[PlannedBatch | TrafficStep],
                    done: list[Applied], state: RunState) -> bool:
        """Runs one batch; False when the deploy stops here."""
        if self._stop_after_batch.is_set():
            return False
        if self._watch_failure is not None or self._aborted_by is not None:
            return self._traffic_step(None, done, state)
        applied = Applied(batch)
        self._current = applied
        ok, batch_cause, batch_stranded = self._run_batch(applied)
        self._current = None
        self._flush_interrupts()
        if ok:
            done.append(applied)
            self._done_hosts += batch.hosts
            if not any(t.batch == batch.index for t in self.plan.traffic):
                self._watch_batch(batch)  # else once its traffic steps have judged it
            if rest and isinstance(rest[0], PlannedBatch) and self.plan.pause_between_batches:
                wait_until(lambda: self._stop_after_batch.is_set(),
                           self.plan.pause_between_batches, 0.1)
            return True
        state.failed, state.cause = True, batch_cause
        state.stranded += batch_stranded
        if self._last_failure in RETRYABLE:
            state.resumable = True  # not the release's fault: resume retries
        else:
            self._roll_back_named(done, batch.index, batch_cause or "", state)
        return False

    def _traffic_step(self, step: TrafficStep | None, done: list[Applied],
                      state: RunState) -> bool:
        """Runs one traffic step (None: only meet what ended the last one); False when the
        deploy stops here. A failure rolls back the judged batch, then per on_failure."""
        try:
            if step is None:
                self._check_running()
                return True
            if not self._pool_step(step):
                self._traffic(step)
            if step.batch and step == [t for t in self.plan.traffic
                                       if t.batch == step.batch][-1]:
                self._watch_batch(self.plan.batches[step.batch - 1])  # judged: now watched
            return True
        except Stopped:
            return False
        except BatchFailure as exc:
            failure, cause, hosts = exc.failure, exc.cause, exc.hosts
        self._last_failure = failure
        judged = step.batch if step is not None else max(
            (a.batch.index for a in done), default=0)
        self.emit(ev.BatchFailed, batch=judged, failure=failure, cause=cause,
                  hosts=tuple(hosts))
        state.failed, state.cause = True, cause
        if failure in RETRYABLE:  # e.g. the capacity to shape traffic is missing: retry
            state.resumable = True
            return False
        if not self._switch_back_if_switched(cause):  # blue/green: never roll back a live pool
            state.resumable, state.cause = True, f"{cause}; {self._last_switch_back_error}"
            return False
        named = {a.batch.index for a in done if set(a.batch.hosts) & set(hosts)} | {judged}
        self._roll_back_batches(done, named - {judged}, failure, cause, state,
                                also=[a for a in done if a.batch.index == judged])
        self._restore_weights()
        self._rollback_earlier(done, judged, cause, state)
        return False

    def _roll_back_batches(self, done: list[Applied], named: set[int], failure: ev.Failure,
                           cause: str, state: RunState, also: Sequence[Applied] = ()) -> None:
        """Rolls back batches already done (``also``, then those ``named``), newest first;
        each named one is journaled as failed first, so a resume finishes the job."""
        targets = [*also, *(a for a in reversed(done) if a.batch.index in named)]
        for applied in targets:
            if applied.batch.index in named:
                self.emit(ev.BatchFailed, batch=applied.batch.index, failure=failure,
                          cause=cause, hosts=applied.batch.hosts)
        for applied in targets:
            done.remove(applied)
            state.stranded += self._rollback(applied, cause)

    def _roll_back_named(self, done: list[Applied], index: int, cause: str,
                         state: RunState) -> None:
        """After a batch failed: the earlier batches a failed watch named, then per
        on_failure."""
        if self._watch_failure is not None:
            hosts = set(self._watch_failure[0])
            named = {a.batch.index for a in done if set(a.batch.hosts) & hosts}
            self._roll_back_batches(done, named, "analysis", cause, state)
        self._rollback_earlier(done, index, cause, state)

    def _upgraded_hosts(self) -> list[str]:
        current = self._current.batch.hosts if self._current is not None else ()
        return [*self._done_hosts, *current]

    def _watch_batch(self, batch: PlannedBatch) -> None:
        """Hands a batch back in rotation to the continuous watch (rollout_py.watchful)."""
        if self._watch is not None:
            self._watch.add(batch)

    def _finish(self, done: list[Applied], state: RunState) -> DeployResult:
        self._flush_interrupts()
        interrupted = self._interrupts > 0 or self._callback_error is not None
        status: ev.Status
        if state.stranded or self._journal_failed:
            status = "failed"
        elif state.failed and not interrupted:
            status = "rolled_back" if self._undid else "stopped"
        elif interrupted and (state.failed or not self._completed):
            status = "cancelled"
        elif state.failed:
            status = "rolled_back" if self._undid else "stopped"
        elif not self._completed:
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
        if self.shaping is not None and not self._journal_failed:  # shaping: put back
            self.shaping.finish(self.emit, self.events)
        self.emit(ev.DeployFinished, status=status, exit_code=EXIT_CODES[status], cause=cause,
                  stranded=tuple(dict.fromkeys(state.stranded)), resumable=resumable)
        return fold(self._events)
