"""Resume: takes over a stopped deploy from its journal and the live LB state (what
``rollout_py.reconcile`` decides), restores weights a dead controller left changed, and says
where the engine's loop goes on. Mixed into the Engine."""

from __future__ import annotations

from collections.abc import Sequence

from rollout_py import events as ev
from rollout_py.analysis.counters import Counters
from rollout_py.balancer import fleet
from rollout_py.planner import PlannedBatch
from rollout_py.reconcile import RETRYABLE, reconcile
from rollout_py.saga import Applied, RunState, SagaBase, snapshot_of
from rollout_py.steps import (
    Analyse,
    CheckPreview,
    Pause,
    RestoreWeights,
    ScaleDown,
    SetWeight,
    Switch,
    TrafficStep,
)
from rollout_py.switch import baseline_from


class ResumeSteps(SagaBase):
    """The resume half of the engine."""

    _events: list[ev.Event]
    _seq: int
    _traffic_from: int | None
    _baseline_by_lb: dict[str, dict[str, Counters]] | None
    _last_switch_back_error: str | None

    def _stage(self, state: RunState) -> None:
        raise NotImplementedError

    def _run_batch(self, applied: Applied, *, finish_only: bool = False
                   ) -> tuple[bool, str | None, list[str]]:
        raise NotImplementedError

    def _rollback_earlier(self, done: list[Applied], index: int, cause: str,
                          state: RunState) -> None:
        raise NotImplementedError

    def _restore_weights(self, step: int = 0) -> None:
        raise NotImplementedError

    def _watch_batch(self, batch: PlannedBatch) -> None:
        raise NotImplementedError

    def _expand(self, state: RunState) -> bool:
        raise NotImplementedError  # rollout_py.phases

    def _switch_back_if_switched(self, cause: str) -> bool:
        raise NotImplementedError

    def _resume(self, events: list[ev.Event], done: list[Applied], state: RunState) -> int:
        """Takes over a stopped deploy: executes what ``reconcile`` decides from its journal
        and the live LB state. Returns the index of the first batch still to run."""
        plan = self.plan
        self._events = list(events)
        self._seq = max((e.seq for e in events), default=0)
        if not self._expand(state):  # phases: an expand not journaled done runs first, again
            return len(plan.batches)
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
        self._baseline_by_lb = baseline_from(events)
        if decision.failure is not None and not self._switch_back_if_switched(
                f"resume: {decision.cause or decision.failure}"):  # never roll back a live pool
            state.failed, state.resumable = True, True
            state.cause = self._last_switch_back_error
            return len(plan.batches)
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
        self._done_hosts = [h for a in done for h in a.batch.hosts]
        state.stranded += decision.stranded
        self._resume_traffic(events, done)
        if decision.failure is not None or state.stranded:
            # The failure was being unwound: whatever it rolled back counts for the outcome.
            self._undid |= any(isinstance(e, ev.RollbackStarted) for e in events)
            state.failed = True
            state.cause = decision.cause or "a rollback on resume left hosts out of rotation"
            self._last_failure = decision.failure
            return len(plan.batches)
        first = self.plan.steps[self._traffic_from] if self._traffic_from is not None else None
        # a batch whose traffic steps run again is watched after them
        replay = first.batch if first is not None and not isinstance(first, PlannedBatch) \
            else None
        for applied in done:
            if applied.batch.index != replay:
                self._watch_batch(applied.batch)
        return (decision.next_batch or len(plan.batches) + 1) - 1

    def _resume_traffic(self, events: Sequence[ev.Event], done: list[Applied]) -> None:
        """Weights a dead controller left changed are restored now, from its journal; the
        traffic steps of the last batch done are replayed from their first step unless they
        all finished (a verdict from before the crash is not reused)."""
        recorded = [e for e in events if isinstance(e, ev.WeightsRecorded)]
        restored = [e for e in events if isinstance(e, ev.WeightsRestored) and not e.failed]
        last_set = max((e.seq for e in events if isinstance(e, ev.WeightsSet)), default=-1)
        if recorded:
            self._weights_recorded = recorded[-1].weights
            if last_set > max((e.seq for e in restored), default=-1):
                self._weights_dirty = True
                self._restore_weights()
        if not done and not [t for t in self.plan.traffic if t.batch == 0]:
            return
        last = done[-1].batch.index if done else 0
        traffic = [t for t in self.plan.traffic if t.batch == last]
        if not traffic or _traffic_done(traffic[-1], events):
            return
        first = traffic[0]
        if self.plan.strategy in ("blue_green", "switch_back"):
            # A switch is not undone by a resume: it goes on from the first step not done
            # (a partial switch is finished; a post-switch analysis judges again).
            first = next(t for t in traffic if not _traffic_done(t, events))
        self._traffic_from = self.plan.steps.index(first)


def _traffic_done(step: TrafficStep, events: Sequence[ev.Event]) -> bool:
    """Whether the journal shows ``step`` finished (restore: after the last set weight)."""
    if isinstance(step, RestoreWeights):  # not a restore after a failure or an interrupt
        return any(isinstance(e, ev.WeightsRestored) and e.step == step.step
                   and not e.failed for e in events)
    if isinstance(step, Analyse):
        return any(isinstance(e, ev.AnalysisFinished) and e.step == step.step
                   and e.verdict in ("pass", "promoted") for e in events)
    if isinstance(step, Pause):
        return any(isinstance(e, ev.PauseEnded) and e.step == step.step and e.how != "aborted"
                   for e in events)
    if isinstance(step, CheckPreview):
        return any(isinstance(e, ev.PreviewChecked) and e.step == step.step and e.ok
                   for e in events)
    if isinstance(step, Switch):
        return any(isinstance(e, ev.SwitchFinished) and e.step == step.step and e.ok
                   and e.to_backend == step.to_backend for e in events)
    if isinstance(step, ScaleDown):
        return any(isinstance(e, ev.PoolScaledDown) and e.step == step.step for e in events)
    assert isinstance(step, SetWeight)
    return any(isinstance(e, ev.WeightsSet) and e.step == step.step for e in events)
