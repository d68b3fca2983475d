"""Blue/green events: the pools found live, the preview checks, each LB's switch, the
baseline windows before a switch, and the old pool scaled down."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from rollout_py.events.base import Event
from rollout_py.events.base import frozen_event as _frozen


@_frozen
class PoolsRead(Event):
    """Which pool each LB's live route served when the deploy (or switch-back) started."""

    kind: ClassVar[str] = "pools_read"
    live: str  # the backend every LB agrees is live
    idle: str
    per_lb: dict[str, dict[str, str]]  # LB url -> map entries (live and preview keys)
    maps: dict[str, str]  # LB url -> the map file as HAProxy on that LB knows it


@_frozen
class PreviewChecked(Event):
    """The capacity floor and the preview requests of a blue/green step, before the switch."""

    kind: ClassVar[str] = "preview_checked"
    step: int
    ok: bool
    up: dict[str, int]  # LB url -> idle pool servers UP there
    floor: int
    requests: int
    failures: int
    detail: str


@_frozen
class BaselineRecorded(Event):
    """The live pool's counters over windows before the switch: what the new pool is judged
    against afterwards (a resume reuses them)."""

    kind: ClassVar[str] = "baseline_recorded"
    step: int
    backend: str
    servers: tuple[str, ...]
    seconds: float
    deltas: dict[str, dict[str, dict[str, int]]]  # LB url -> server -> counters over it


@_frozen
class SwitchStarted(Event):
    kind: ClassVar[str] = "switch_started"
    step: int
    from_backend: str
    to_backend: str
    reason: str  # the plan's switch, an automatic switch-back (and why), `rollout switch-back`


@_frozen
class PoolSwitched(Event):
    """One LB's live route changed (``at``: when its commit answered), map file written."""

    kind: ClassVar[str] = "pool_switched"
    step: int
    lb: str
    entries: dict[str, str]  # the map's live/preview entries now
    at: float
    file: str  # the map file written on the LB's host
    file_error: str | None = None


@_frozen
class SwitchFinished(Event):
    kind: ClassVar[str] = "switch_finished"
    step: int
    to_backend: str
    ok: bool
    disagreement: float  # seconds between the first and the last LB's commit
    failed: dict[str, str]  # LB url -> why it could not be switched
    how: Literal["switched", "already", "undone"] = "switched"


@_frozen
class PoolScaledDown(Event):
    kind: ClassVar[str] = "pool_scaled_down"
    step: int
    backend: str
    hosts: tuple[str, ...]
    ok: bool
    detail: str
    outcomes: dict[str, Any]


EVENTS: tuple[type[Event], ...] = (
    PoolsRead,
    PreviewChecked,
    BaselineRecorded,
    SwitchStarted,
    PoolSwitched,
    SwitchFinished,
    PoolScaledDown,
)
