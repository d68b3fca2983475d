"""Traffic events: weights set and restored, warm-up, analysis windows, pauses, controls."""

from __future__ import annotations

from dataclasses import field
from typing import Any, ClassVar, Literal

from rollout_py.events.base import (
    ControlAction,
    Event,
    Purpose,
    Verdict,
)
from rollout_py.events.base import frozen_event as _frozen


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


EVENTS: tuple[type[Event], ...] = (
    WeightsRecorded,
    WeightsSet,
    WeightsRestored,
    WarmupStep,
    AnalysisWindow,
    AnalysisFinished,
    PauseStarted,
    PauseEnded,
    ControlReceived,
    MetricsUnavailable,
)
