"""A deploy's events: its start and end, each batch's steps, probes and rollbacks."""

from __future__ import annotations

from dataclasses import field
from typing import Any, ClassVar

from rollout_py.events.base import (
    Event,
    Failure,
    Phase,
    Status,
    StepName,
)
from rollout_py.events.base import frozen_event as _frozen


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


EVENTS: tuple[type[Event], ...] = (
    DeployStarted,
    BatchStarted,
    CapacityChecked,
    StateRecorded,
    DrainStarted,
    ServersDrained,
    ServersDisabled,
    StepStarted,
    StepFinished,
    ProbePassed,
    ProbeFailed,
    DriftCorrected,
    ForeignChange,
    ServersEnabled,
    BatchSucceeded,
    BatchFailed,
    RollbackStarted,
    RollbackFinished,
    Interrupted,
    DeployResumed,
    DeployFinished,
)
