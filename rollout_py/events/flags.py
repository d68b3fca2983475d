"""Flag change events: a change's start and end, pushes to hosts, effect, windows, reverts."""

from __future__ import annotations

from dataclasses import field
from typing import Any, ClassVar, Literal

from rollout_py.events.base import Event, Verdict
from rollout_py.events.base import frozen_event as _frozen

FlagCommand = Literal["set", "ramp", "kill"]
# ok: done; reverted: a gate, a push or an interrupt undid it (the fleet serves `before`);
# refused: nothing changed (e.g. too few baseline requests); failed: some host may serve
# other content than intended (listed); cancelled: interrupted and reverted.
FlagStatus = Literal["ok", "reverted", "refused", "failed", "cancelled"]


@_frozen
class FlagChangeStarted(Event):
    """Journaled before any host is touched: the file every host had and what is asked, so
    an interrupted change can be reverted (``before`` is the controller copy's exact text)."""

    kind: ClassVar[str] = "flag_started"
    command: FlagCommand
    flag: str
    target: str  # the variant (set, kill) or "VARIANT@PCT%" (ramp)
    path: str  # on every host
    hosts: tuple[str, ...]
    before: str
    steps: tuple[int, ...] = ()  # ramp percentages


@_frozen
class FlagPushStarted(Event):
    """The content about to be written on every host (an intent: a push may half-land)."""

    kind: ClassVar[str] = "flag_push_started"
    step: int  # 1-based ramp step; 0: set/kill; -1: a revert
    content: str
    sha1: str


@_frozen
class FlagPushed(Event):
    """Ansible's outcome per host, and how long the one run over every host took."""

    kind: ClassVar[str] = "flag_pushed"
    step: int
    sha1: str
    hosts: dict[str, str]  # host -> ok | failed: ... | unreachable: ...
    seconds: float


@_frozen
class FlagInEffect(Event):
    """When each host served the change, counted from the push's start (None: not seen)."""

    kind: ClassVar[str] = "flag_in_effect"
    step: int
    variant: str | None  # the variant every response must name; None: a split (settle only)
    written_s: float  # push start -> the file on every host
    hosts: dict[str, float | None] = field(default_factory=dict)
    fleet_s: float | None = None  # push start -> every host serving it
    detail: str = ""


@_frozen
class FlagBaseline(Event):
    """The windows before the ramp, summed: what every step is judged against; and the
    bound on failed requests printed before the first push."""

    kind: ClassVar[str] = "flag_baseline"
    windows: int
    seconds: float
    group: dict[str, Any]  # requests, errors, error_rate, latency
    rps: float
    bound: dict[str, Any]  # requests, rps, share, exposure_s and its parts


@_frozen
class FlagWindow(Event):
    """One judged window of a ramp step: the fleet's numbers against the baseline's."""

    kind: ClassVar[str] = "flag_window"
    step: int
    percent: int
    window: int
    verdict: Verdict
    reason: str
    gates: tuple[dict[str, Any], ...]
    groups: dict[str, dict[str, Any]]  # fleet|baseline -> requests, errors, rates, latency
    raw: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)


@_frozen
class FlagStepPassed(Event):
    kind: ClassVar[str] = "flag_step_passed"
    step: int
    percent: int
    cause: str


@_frozen
class FlagRevertStarted(Event):
    kind: ClassVar[str] = "flag_revert_started"
    cause: str


@_frozen
class FlagChangeFinished(Event):
    kind: ClassVar[str] = "flag_finished"
    status: FlagStatus
    cause: str
    exit_code: int
    seconds: float
    left: dict[str, str] = field(default_factory=dict)  # host -> why it may serve other content


EVENTS: tuple[type[Event], ...] = (
    FlagChangeStarted,
    FlagPushStarted,
    FlagPushed,
    FlagInEffect,
    FlagBaseline,
    FlagWindow,
    FlagStepPassed,
    FlagRevertStarted,
    FlagChangeFinished,
)
