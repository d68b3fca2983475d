"""The engine's typed events: frozen records of everything a deploy did, in order.

Every consumer (journal, console, JSON lines, user callbacks) sees the same events; the final
DeployResult is a fold over them.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, dataclass_transform

# How a deploy ended; rollout_py.result.EXIT_CODES maps each to the command's exit code.
Status = Literal["succeeded", "rolled_back", "stopped", "failed", "cancelled"]
# Why a batch failed. The release's fault: unreachable, task_failed, probe_failed,
# drain_timeout, balancer (an LB refused a command). Not the release's (resume runs the batch
# again, rollout_py.reconcile.RETRYABLE): controller, balancer_unreachable, cancelled,
# capacity. foreign_change: someone else changed a server of the batch.
Failure = Literal["unreachable", "task_failed", "probe_failed", "drain_timeout", "balancer",
                  "controller", "balancer_unreachable", "cancelled", "capacity",
                  "foreign_change", "analysis", "aborted"]
# analysis: a gate failed (canary step, a rolling batch's soak, or the continuous watch of the
# batches back in rotation); aborted: `rollout abort`.
# A window's verdict: never "pass" on no data; "reset" when HAProxy's counters went down.
Verdict = Literal["pass", "fail", "inconclusive", "reset"]
# What a window judged: a canary step, a rolling batch's soak, the watch over done batches.
Purpose = Literal["canary", "soak", "watch"]
# Operator controls, sent through the state directory (rollout_py.controls).
ControlAction = Literal["promote", "promote_all", "abort", "pause", "continue"]
# The host-side steps of a deploy, and the phases in which probes run.
StepName = Literal["stage", "upgrade", "rollback"]
Phase = Literal["verify", "soak", "rollback", "watch"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of all events. ``seq`` orders them within a deploy."""

    kind: ClassVar[str] = "event"
    deploy_id: str
    seq: int
    ts: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        data = {"event": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            data[f.name] = _jsonable(value)
        return data


_E = TypeVar("_E", bound="Event")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


@dataclass_transform(frozen_default=True, kw_only_default=True)
def _frozen(cls: type[_E]) -> type[_E]:
    """Every event: a frozen, slotted, keyword-only dataclass (declared so to type checkers)."""
    return dataclass(frozen=True, slots=True, kw_only=True)(cls)


@_frozen
class DeployStarted(Event):
    kind: ClassVar[str] = "deploy_started"
    name: str
    version: str
    batches: tuple[tuple[str, ...], ...]
    skipped: dict[str, str]
    versions: dict[str, str | None] = field(default_factory=dict)  # running before, if known


@_frozen
class BatchStarted(Event):
    kind: ClassVar[str] = "batch_started"
    batch: int
    hosts: tuple[str, ...]


@_frozen
class CapacityChecked(Event):
    kind: ClassVar[str] = "capacity_checked"
    batch: int
    out_of_rotation: int
    taking_out: int
    max_unavailable: int


@_frozen
class StateRecorded(Event):
    """A batch's servers as found on every LB, journaled before the drain is applied: what
    the batch's undo restores, known to a resume even if the controller died right after."""

    kind: ClassVar[str] = "state_recorded"
    batch: int
    servers: tuple[str, ...]
    recorded: dict[str, dict[str, list[Any]]]  # LB url -> server -> [admin state, weight]
    found_out: dict[str, str] = field(default_factory=dict)  # "LB server" -> DRAIN | MAINT


@_frozen
class DrainStarted(Event):
    """The servers are set to DRAIN on every LB: no new requests reach them from now on."""

    kind: ClassVar[str] = "drain_started"
    batch: int
    servers: tuple[str, ...]
    # LB url -> server -> [admin state, weight] as found before the drain (restored later)
    recorded: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    # "LB server" -> DRAIN | MAINT: already out of rotation before the deploy touched it; it is
    # deployed to and then restored to that state, not put back in rotation
    found_out: dict[str, str] = field(default_factory=dict)


@_frozen
class ServersDrained(Event):
    kind: ClassVar[str] = "servers_drained"
    batch: int
    servers: tuple[str, ...]
    forced: tuple[str, ...] = ()  # servers whose remaining sessions were shut
    cut: dict[str, dict[str, int]] = field(default_factory=dict)  # LB -> server -> sessions cut


@_frozen
class ServersDisabled(Event):
    """The servers are in MAINT on every LB."""

    kind: ClassVar[str] = "servers_disabled"
    batch: int
    servers: tuple[str, ...]


@_frozen
class StepStarted(Event):
    kind: ClassVar[str] = "step_started"
    batch: int
    step: StepName
    hosts: tuple[str, ...]


@_frozen
class StepFinished(Event):
    kind: ClassVar[str] = "step_finished"
    batch: int
    step: StepName
    ok: bool
    hosts: dict[str, str]  # host -> "ok" | "failed: ..." | "unreachable: ..." | "not run"
    versions: dict[str, str | None]  # host -> version before the step (from the playbook)
    duration: float


@_frozen
class ProbePassed(Event):
    kind: ClassVar[str] = "probe_passed"
    batch: int
    host: str
    phase: Phase


@_frozen
class ProbeFailed(Event):
    kind: ClassVar[str] = "probe_failed"
    batch: int
    host: str
    phase: Phase
    probe: str
    detail: str


@_frozen
class DriftCorrected(Event):
    """A server that must stay out of rotation was found back in (e.g. HAProxy reloaded
    without its state) and was put back in MAINT."""

    kind: ClassVar[str] = "drift_corrected"
    batch: int
    servers: tuple[str, ...]
    found: dict[str, str]  # "lb server" -> the admin state found


@_frozen
class ForeignChange(Event):
    """Someone else changed a server of the batch while it was out of rotation (a DRAIN or a
    weight rollout_py did not set): the deploy stops and leaves those servers as found."""

    kind: ClassVar[str] = "foreign_change"
    batch: int
    servers: tuple[str, ...]
    found: dict[str, str]  # "lb server" -> what was found, e.g. "DRAIN weight 1 (expected MAINT)"


@_frozen
class ServersEnabled(Event):
    """The servers are back to their recorded admin state and weight, and UP, on every LB."""

    kind: ClassVar[str] = "servers_enabled"
    batch: int
    servers: tuple[str, ...]


@_frozen
class BatchSucceeded(Event):
    kind: ClassVar[str] = "batch_succeeded"
    batch: int
    durations: dict[str, float]


@_frozen
class BatchFailed(Event):
    kind: ClassVar[str] = "batch_failed"
    batch: int
    failure: Failure
    cause: str
    hosts: tuple[str, ...]


@_frozen
class RollbackStarted(Event):
    kind: ClassVar[str] = "rollback_started"
    batch: int
    hosts: tuple[str, ...]
    cause: str


@_frozen
class RollbackFinished(Event):
    kind: ClassVar[str] = "rollback_finished"
    batch: int
    ok: bool
    stranded: tuple[str, ...]  # hosts left out of rotation (MAINT)
    detail: str = ""
    # What stopped the rollback when it was not the hosts (controller, balancer): resume
    # retries a rollback the controller could not finish.
    failure: Failure | None = None


@_frozen
class Interrupted(Event):
    kind: ClassVar[str] = "interrupted"
    signal: str
    count: int
    action: str


@_frozen
class DeployResumed(Event):
    """``rollout resume`` took over a deploy whose controller died."""

    kind: ClassVar[str] = "deploy_resumed"
    batch: int | None  # the batch the action is about, if any
    action: str  # stage | finish | undo | continue | none (see rollout_py.reconcile)
    detail: str


@_frozen
class DeployFinished(Event):
    kind: ClassVar[str] = "deploy_finished"
    status: Status
    exit_code: int
    cause: str | None
    stranded: tuple[str, ...]
    resumable: bool = False  # `rollout resume` takes it up (after a stop, an interrupt, ...)


@_frozen
class WeightsRecorded(Event):
    """Every fleet server's weight on every LB, journaled before the first ``set weight``:
    what rollback, abort, interrupt and resume restore, exactly."""

    kind: ClassVar[str] = "weights_recorded"
    weights: dict[str, dict[str, int]]  # LB url -> server -> weight


@_frozen
class WeightsSet(Event):
    kind: ClassVar[str] = "weights_set"
    step: int  # the plan step (1-based)
    share: float  # asked share of the canary servers (0..1)
    achieved: dict[str, float]  # LB url -> share the weights give
    weights: dict[str, dict[str, int]]  # LB url -> server -> weight set


@_frozen
class WeightsRestored(Event):
    kind: ClassVar[str] = "weights_restored"
    weights: dict[str, dict[str, int]]
    failed: dict[str, str] = field(default_factory=dict)  # "lb server" -> error
    step: int = 0  # the plan's restore step; 0: after a failure, an abort or an interrupt


@_frozen
class WarmupStep(Event):
    """A batch's weights on every LB during its warm-up (step 1: set by the enable)."""

    kind: ClassVar[str] = "warmup_step"
    batch: int
    step: int
    of: int
    weights: dict[str, dict[str, int]]


@_frozen
class AnalysisWindow(Event):
    """One judged window: raw counters, deltas, each gate's number, threshold and verdict."""

    kind: ClassVar[str] = "analysis_window"
    batch: int
    step: int  # plan step (0: the continuous watch)
    purpose: Purpose
    window: int
    canary: tuple[str, ...]  # judged servers
    baseline: tuple[str, ...]  # the servers on the old version, same window
    verdict: Verdict
    reason: str
    gates: tuple[dict[str, Any], ...]  # gate, verdict, value, threshold, detail
    groups: dict[str, dict[str, Any]]  # canary|baseline -> requests, errors, rates, latency
    deltas: dict[str, dict[str, int]]  # server -> counters in the window, summed over LBs
    raw: dict[str, dict[str, dict[str, int]]]  # LB url -> server -> cumulative counters


@_frozen
class AnalysisFinished(Event):
    kind: ClassVar[str] = "analysis_finished"
    batch: int
    step: int
    purpose: Purpose
    verdict: Literal["pass", "fail", "promoted", "aborted"]
    cause: str
    hosts: tuple[str, ...] = ()  # the hosts a failure names


@_frozen
class PauseStarted(Event):
    kind: ClassVar[str] = "pause_started"
    step: int
    duration: float | None  # None: until promoted
    by: str  # "plan" or who sent `rollout pause`


@_frozen
class PauseEnded(Event):
    kind: ClassVar[str] = "pause_ended"
    step: int
    how: str  # elapsed | promoted | continued | aborted


@_frozen
class ControlReceived(Event):
    """An operator's control, read from the state directory, with who sent it and when."""

    kind: ClassVar[str] = "control_received"
    action: ControlAction
    by: str
    sent_at: float
    control_id: str
    effect: str


@_frozen
class MetricsUnavailable(Event):
    """A Prometheus gate could not be read and --ignore-metrics-unavailable let it pass."""

    kind: ClassVar[str] = "metrics_unavailable"
    gate: str
    detail: str


ALL_EVENTS: tuple[type[Event], ...] = (
    DeployStarted, BatchStarted, CapacityChecked, StateRecorded, DrainStarted, ServersDrained,
    ServersDisabled, StepStarted, StepFinished, ProbePassed, ProbeFailed, DriftCorrected,
    ForeignChange, ServersEnabled, BatchSucceeded, BatchFailed, RollbackStarted,
    RollbackFinished, Interrupted, DeployResumed, DeployFinished, WeightsRecorded, WeightsSet,
    WeightsRestored, AnalysisWindow, AnalysisFinished, PauseStarted, PauseEnded,
    ControlReceived, MetricsUnavailable, WarmupStep,
)
