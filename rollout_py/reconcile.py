"""Resume's decision: from a stopped deploy's journal and the live LB state, the steps to take.

Pure: it reads events, the plan and which servers are exposed now (not in MAINT on some LB);
it touches nothing. The engine executes what it returns. Rules:

- the live state wins: a batch whose servers are exposed on any LB is drained and put in MAINT
  before anything acts on its hosts, whatever the journal says;
- a step whose end is journaled is never applied again: a finished rollback is not rerun, a
  rollback whose playbook finished only restores the LB state, a succeeded batch stays;
- an interrupted stage is staged again; a batch caught mid-way is finished if it was upgraded and
  verified, else undone and run again;
- a failure of the release (a probe, a task) ends the deploy once it is unwound (and, with
  ``rollback_all``, every earlier batch too); a failure that is not the release's (the
  controller, an LB that stopped answering, an interrupt, a capacity refusal) is undone and the
  deploy continues from the batch it stopped in.

Example:
    >>> decision = reconcile(events, plan, exposed=frozenset(), staged=False)  # doctest: +SKIP
    >>> [(s.action, s.batch) for s in decision.steps]  # doctest: +SKIP
    [('undo', 2)]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rollout_py import events as ev
from rollout_py.planner import Plan

# Failures that are not the release's: resume undoes the batch and runs it again.
RETRYABLE: frozenset[ev.Failure | None] = frozenset(
    {"balancer_unreachable", "controller", "cancelled", "capacity"})

Action = Literal["stage", "finish", "undo"]


@dataclass(frozen=True, slots=True)
class Step:
    """One thing resume does before the deploy goes on.

    ``undo`` steps say which parts of the saga are still to undo: ``drain`` (the servers are, or
    may be, in rotation: drain and MAINT them first), ``upgrade`` (run the rollback playbook),
    and always the restore of the recorded LB state.
    """

    action: Action
    batch: int | None
    detail: str
    drain: bool = False
    upgrade: bool = False


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """What resume does: ``steps`` in order, then the batches from ``next_batch`` on (if any)."""

    steps: tuple[Step, ...]
    done: tuple[int, ...]  # batches that succeeded and stay on the new version
    next_batch: int | None  # 1-based index of the first batch to run after the steps
    failure: ev.Failure | None  # a release failure that ends the deploy once unwound
    cause: str | None
    stranded: tuple[str, ...]  # hosts a finished rollback already left out of rotation
    recorded: Mapping[int, Mapping[str, Mapping[str, Sequence[Any]]]] = field(
        default_factory=dict)  # batch -> the LB state recorded before its drain


@dataclass
class _Batch:
    """What the journal says the last attempt of one batch did."""

    index: int
    started: bool = False
    drained: bool = False
    upgrade_started: bool = False
    upgrade_ok: bool = False
    verified: set[str] = field(default_factory=set)
    enabled: bool = False
    succeeded: bool = False
    failure: ev.Failure | None = None
    cause: str | None = None
    rollback_started: bool = False
    rollback_upgrade_done: bool = False
    rollback_finished: bool = False
    rollback_failure: ev.Failure | None = None  # what stopped the rollback, if not the hosts
    stranded: tuple[str, ...] = ()
    recorded: dict[str, dict[str, list[Any]]] = field(default_factory=dict)

    def touched(self) -> bool:
        return self.drained or self.upgrade_started


def journal_batches(events: Iterable[ev.Event], plan: Plan) -> dict[int, _Batch]:
    """Folds the journal into one record per batch (of its last attempt)."""
    batches = {b.index: _Batch(b.index) for b in plan.batches}
    for e in events:
        index = getattr(e, "batch", None)
        if not isinstance(index, int) or index not in batches:
            continue
        b = batches[index]
        if isinstance(e, ev.BatchStarted):
            batches[index] = b = _Batch(index, started=True)
        elif isinstance(e, ev.StateRecorded | ev.DrainStarted) and not b.drained:
            # StateRecorded comes first; journals written before it existed have DrainStarted.
            b.drained, b.recorded = True, {k: dict(v) for k, v in e.recorded.items()}
        elif isinstance(e, ev.StepStarted) and e.step == "upgrade":
            b.upgrade_started = True
        elif isinstance(e, ev.StepFinished) and e.step == "upgrade":
            b.upgrade_ok = e.ok
        elif isinstance(e, ev.ProbePassed) and e.phase == "verify":
            b.verified.add(e.host)
        elif isinstance(e, ev.ServersEnabled):
            b.enabled = True
        elif isinstance(e, ev.BatchSucceeded):
            b.succeeded = True
        elif isinstance(e, ev.BatchFailed):
            b.failure, b.cause = e.failure, e.cause
            # After its success: a gate (canary analysis, the watch) or an abort failed it.
            b.succeeded = False
        elif isinstance(e, ev.RollbackStarted):
            b.rollback_started, b.rollback_upgrade_done = True, False
            b.rollback_finished, b.cause = False, b.cause or e.cause
        elif isinstance(e, ev.StepFinished) and e.step == "rollback":
            b.rollback_upgrade_done = e.ok
        elif isinstance(e, ev.RollbackFinished):
            b.rollback_finished, b.stranded = True, tuple(e.stranded)
            b.rollback_failure = e.failure
    return batches


def staged_in(events: Iterable[ev.Event]) -> bool:
    """True if the journal shows a stage that finished well."""
    return any(isinstance(e, ev.StepFinished) and e.step == "stage" and e.ok for e in events)


def reconcile(events: Sequence[ev.Event], plan: Plan, *, exposed: frozenset[str],
              staged: bool) -> Reconciliation:
    """Decides what resume does. ``exposed``: servers not in MAINT on at least one LB now;
    ``staged``: the spec stages releases before the first batch.

    Example:
        >>> reconcile([], plan, exposed=frozenset(), staged=False).next_batch  # doctest: +SKIP
        1
    """
    batches = journal_batches(events, plan)
    servers = {b.index: set(b.servers) for b in plan.batches}
    steps: list[Step] = []
    stranded: list[str] = []

    def undo(b: _Batch, why: str, *, after_success: bool = False) -> None:
        live = bool(servers[b.index] & exposed)
        steps.append(Step(
            "undo", b.index, why,
            drain=live or after_success or (b.enabled and not b.rollback_started),
            upgrade=b.upgrade_started and not b.rollback_upgrade_done))

    started = [b for b in batches.values() if b.started]
    steps_stage = staged and not started and not staged_in(events)
    if steps_stage:
        steps.append(Step("stage", None, "the stage had not finished: staging again"))
    done = [b.index for b in started if b.succeeded and not b.rollback_started]
    if not started:
        return _result(steps, done, 1 if plan.batches else None, None, None, stranded, batches)

    last = max(started, key=lambda b: b.index)
    failure = last.failure if last.failure not in RETRYABLE else None
    ends = failure is not None  # the deploy goes no further than unwinding
    cause = last.cause
    rerun = True
    if last.rollback_finished and last.stranded and last.rollback_failure in RETRYABLE:
        # The controller stopped the rollback (a full disk, a crash), not the hosts: again.
        undo(last, f"batch {last.index}'s rollback was stopped ({last.rollback_failure}): "
             "rolling it back again")
    elif last.rollback_finished and last.stranded:
        # Hosts are out of rotation on an unknown release: a person decides, not resume.
        stranded += last.stranded
        ends, cause = True, last.cause or "a rollback left hosts out of rotation"
    elif last.rollback_finished:
        pass  # undone already; runs again unless the release failed
    elif last.rollback_started:
        undo(last, f"batch {last.index} was being rolled back: finishing its rollback")
    elif last.succeeded:
        rerun = False
    elif last.failure is not None:
        if last.touched():
            undo(last, f"batch {last.index} had failed ({last.cause}): rolling it back")
    elif not last.drained:
        pass  # nothing of the batch was touched: it simply runs again
    elif last.upgrade_ok and last.verified >= set(plan.batches[last.index - 1].hosts):
        steps.append(Step("finish", last.index, "upgraded and verified before the controller "
                          "stopped: probing again, then enabling"))
        rerun = False
    else:
        undo(last, f"batch {last.index} was caught mid-way: rolling it back, then running it "
             "again")

    for b in started:  # earlier batches a failed gate named, being or to be rolled back
        if b is last or b.rollback_finished or (ends and plan.on_failure == "rollback_all"):
            continue  # (rollback_all undoes every earlier batch below)
        if b.rollback_started:
            undo(b, f"batch {b.index} was being rolled back: finishing its rollback")
        elif b.failure is not None and b.enabled:
            undo(b, f"batch {b.index} failed after it was back in rotation ({b.cause}): "
                 "rolling it back", after_success=True)

    if ends:
        if plan.on_failure == "rollback_all" and failure is not None:
            for b in sorted((b for b in started if b.index < last.index), key=lambda b: -b.index):
                if b.rollback_finished:
                    stranded += b.stranded
                elif b.rollback_started:
                    undo(b, f"rollback_all after batch {last.index}: finishing the rollback of "
                            f"batch {b.index}")
                else:
                    undo(b, f"rollback_all after batch {last.index}: {cause}",
                         after_success=True)
            done = []
        return _result(steps, done, None, failure, cause, stranded, batches)
    following = last.index if rerun else last.index + 1
    return _result(steps, done, following if following <= len(plan.batches) else None,
                   None, None, stranded, batches)


def _result(steps: list[Step], done: list[int], next_batch: int | None,
            failure: ev.Failure | None,
            cause: str | None, stranded: list[str], batches: Mapping[int, _Batch]
            ) -> Reconciliation:
    return Reconciliation(steps=tuple(steps), done=tuple(done), next_batch=next_batch,
                          failure=failure, cause=cause, stranded=tuple(dict.fromkeys(stranded)),
                          recorded={i: b.recorded for i, b in batches.items() if b.recorded})
