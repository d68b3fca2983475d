"""The spec's canary and analysis sections (rollout.yml ``canary:`` and ``analysis:``).

Shares are written ``5%`` (or ``2.5%``); a gate names one measure and its thresholds. Parsed
values stay pydantic models (frozen); the analysis code reads them as they are.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from rollout_py.spec_types import http_url

_SHARE = re.compile(r"^(\d{1,3}(?:\.\d{1,3})?)\s*%$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def share(value: Any, *, field: str, low: float = 0.0, high: float = 100.0) -> float:
    """A percentage written ``5%`` (or a fraction 0..1 as a number), as a fraction.

    Example:
        >>> share("2.5%", field="traffic")
        0.025
    """
    if isinstance(value, bool):
        raise ValueError(f"{field} must be a percentage like '5%', not a boolean")
    if isinstance(value, int | float):
        pct = float(value) * 100
        if not 0 <= value <= 1:
            raise ValueError(f"{field}: a number is a fraction between 0 and 1 (or write "
                             f"'{value}%'), not {value}")
    elif isinstance(value, str) and (m := _SHARE.fullmatch(value.strip())):
        pct = float(m.group(1))
    else:
        raise ValueError(f"{field} must be a percentage like '5%', not {value!r}")
    if not low <= pct <= high:
        raise ValueError(f"{field} must be between {low:g}% and {high:g}%, not {pct:g}%")
    return round(pct / 100, 6)


class TrafficStep(_Model):
    """The canary servers' share of the backend's requests, on every LB."""

    traffic: float

    @field_validator("traffic", mode="before")
    @classmethod
    def _share(cls, v: Any) -> float:
        return share(v, field="traffic", low=0.1, high=99)


class AnalysisWindow(_Model):
    duration: float = Field(gt=0, le=86400)  # seconds of passing windows needed


class AnalysisStep(_Model):
    """Judge the canary against its gates for ``duration`` seconds of windows."""

    analysis: AnalysisWindow


class PauseFor(_Model):
    duration: float | None = Field(None, gt=0, le=7 * 86400)  # None: until `rollout promote`


class PauseStep(_Model):
    """Hold (nothing out of rotation) for ``duration`` seconds, or until ``rollout promote``."""

    pause: PauseFor


CanaryStep = TrafficStep | AnalysisStep | PauseStep
_STEP_KEYS: dict[str, type[BaseModel]] = {"traffic": TrafficStep, "analysis": AnalysisStep,
                                       "pause": PauseStep}


def dispatch(value: Any, keys: dict[str, type[BaseModel]], what: str, *, alone: bool,
             example: str) -> Any:
    """Picks each list item's model by its one kind key, so errors speak of that kind only:
    ``probe 2 (http): timeout: ...``. ``alone``: the kind key is the item's only key.

    Example:
        >>> dispatch([{"pause": {}}], _STEP_KEYS, "step", alone=True, example="{pause: {}}")
        [PauseStep(pause=PauseFor(duration=None))]
    """
    if not isinstance(value, list):
        return value
    out = []
    for i, item in enumerate(value):
        if isinstance(item, BaseModel):
            out.append(item)
            continue
        if not isinstance(item, dict):
            raise ValueError(f"{what} {i}: expected a mapping like {example}")
        kinds = [k for k in keys if k in item]
        if len(kinds) != 1 or (alone and len(item) != 1):
            raise ValueError(f"{what} {i}: needs exactly one of {', '.join(keys)}; "
                             f"got keys {sorted(item)}")
        if item[kinds[0]] is None:  # `- pause:` with nothing after it
            item = {kinds[0]: {}}
        try:
            out.append(keys[kinds[0]].model_validate(item))
        except ValidationError as exc:
            raise ValueError(f"{what} {i} ({kinds[0]}): " + "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'value'}: "
                f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors())) from None
    return out


class CanarySpec(_Model):
    """The canary batch and its steps; the remaining hosts then roll in ``batches``."""

    hosts: int | str = 1
    steps: list[CanaryStep] = Field(min_length=1)

    @field_validator("hosts", mode="before")
    @classmethod
    def _hosts(cls, v: Any) -> int | str:
        from rollout_py.spec import _count_or_percent  # one rule for counts and percentages

        return _count_or_percent(v, field="canary.hosts")

    @field_validator("steps", mode="before")
    @classmethod
    def _steps(cls, v: Any) -> Any:
        return dispatch(v, _STEP_KEYS, "step", alone=True, example="{traffic: 5%}")

    @model_validator(mode="after")
    def _traffic_first(self) -> CanarySpec:
        first = next((s for s in self.steps if not isinstance(s, PauseStep)), None)
        if isinstance(first, AnalysisStep):
            raise ValueError("steps: an analysis before any traffic step would judge the canary "
                             "at its full weight; start with a traffic step (e.g. traffic: 5%)")
        return self


class ErrorRateGate(_Model):
    """5xx responses (and eresp/econ) over requests of the judged servers, in the window."""

    max: float | None = None  # absolute, e.g. 1%
    max_over_baseline: float | None = None  # canary minus the old servers, same window
    confidence: float = Field(0.95, gt=0.5, lt=1)

    @field_validator("max", "max_over_baseline", mode="before")
    @classmethod
    def _pct(cls, v: Any) -> float | None:
        return None if v is None else share(v, field="error_rate threshold")

    @model_validator(mode="after")
    def _one(self) -> ErrorRateGate:
        if self.max is None and self.max_over_baseline is None:
            raise ValueError("error_rate: give max and/or max_over_baseline")
        return self


class LatencyGate(_Model):
    """HAProxy's per-server average time (over its last 1024 requests) of the judged servers."""

    field: Literal["qtime", "ctime", "rtime", "ttime"] = "rtime"
    max_ms: float | None = Field(None, gt=0)
    max_ratio_to_baseline: float | None = Field(None, gt=1)
    # A ratio fails only when the difference is also above this: 2 ms against 1 ms is noise.
    min_difference_ms: float = Field(5, ge=0)

    @model_validator(mode="after")
    def _one(self) -> LatencyGate:
        if self.max_ms is None and self.max_ratio_to_baseline is None:
            raise ValueError("latency: give max_ms and/or max_ratio_to_baseline")
        return self


class PrometheusGate(_Model):
    """A PromQL query answering one number; ``$canary``/``$baseline`` become server regexes."""

    url: str
    query: str
    max: float | None = None
    min: float | None = None
    timeout: float = Field(5, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return http_url(v).rstrip("/")

    @model_validator(mode="after")
    def _one(self) -> PrometheusGate:
        if self.max is None and self.min is None:
            raise ValueError("prometheus: give max and/or min")
        return self


class ErrorRate(_Model):
    error_rate: ErrorRateGate


class Latency(_Model):
    latency: LatencyGate


class Prometheus(_Model):
    prometheus: PrometheusGate


Gate = ErrorRate | Latency | Prometheus
_GATE_KEYS: dict[str, type[BaseModel]] = {"error_rate": ErrorRate, "latency": Latency,
                                       "prometheus": Prometheus}


class AnalysisSpec(_Model):
    """How windows are judged: by a canary's analysis steps, a rolling batch's soak, and the
    continuous watch over every batch back in rotation."""

    interval: float = Field(10, ge=0.5, le=3600)  # seconds per window
    min_requests: int = Field(200, ge=1)  # per judged group per window
    on_inconclusive: Literal["hold", "fail"] = "hold"
    inconclusive_limit: int = Field(6, ge=1, le=1000)  # consecutive held windows, then fail
    failure_limit: int = Field(1, ge=1, le=100)  # failed windows that fail the analysis
    continuous: bool = True  # watch batches back in rotation until the deploy ends
    gates: list[Gate] = Field(min_length=1)

    @field_validator("gates", mode="before")
    @classmethod
    def _gates(cls, v: Any) -> Any:
        return dispatch(v, _GATE_KEYS, "gate", alone=True, example="{error_rate: {max: 1%}}")


def absolute_only(spec: AnalysisSpec) -> AnalysisSpec:
    """The spec without the comparisons with the old servers: for a window with none left
    (a rolling deploy's last batch). A gate left with no threshold is dropped; with none left,
    a window is judged on ``min_requests`` alone (the probes still run)."""
    gates: list[Gate] = []
    for gate in spec.gates:
        if isinstance(gate, ErrorRate) and gate.error_rate.max is not None:
            gates.append(ErrorRate(error_rate=gate.error_rate.model_copy(
                update={"max_over_baseline": None})))
        elif isinstance(gate, Latency) and gate.latency.max_ms is not None:
            gates.append(Latency(latency=gate.latency.model_copy(
                update={"max_ratio_to_baseline": None})))
        elif isinstance(gate, Prometheus):
            gates.append(gate)
    return spec.model_copy(update={"gates": gates})
