"""The steps of a plan, as data: what a strategy produces and the engine executes, in order.

A ``PlannedBatch`` (rollout_py.planner) is itself a step: drain, upgrade, verify, enable,
with their undo. The traffic steps act on a batch already back in rotation: ``SetWeight``
gives its servers a share of the backend's requests on every LB, ``Analyse`` judges it
against its gates, ``Pause`` holds (nothing out of rotation) and ``RestoreWeights`` puts every
server's recorded weight back. Blue/green (``rollout_py.switch``): ``CheckPreview`` sends
requests through the LB's preview route to the idle pool, ``Switch`` points every LB's live
route at another pool, an ``Analyse`` of purpose ``post_switch`` judges the new pool against
the old one's windows before the switch, and ``ScaleDown`` retires the old pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from rollout_py import events as ev


@dataclass(frozen=True, slots=True)
class SetWeight:
    """Weights on every LB that give the batch's servers ``share`` of the requests."""

    step: int
    batch: int
    share: float  # 0..1
    kind: Literal["set_weight"] = "set_weight"


@dataclass(frozen=True, slots=True)
class Analyse:
    """Windows of ``interval`` seconds judged by the gates until ``duration`` seconds passed."""

    step: int
    batch: int
    duration: float
    purpose: ev.Purpose
    gates: tuple[str, ...]  # each gate, said as rollout_py.steps.describe_gate says it
    kind: Literal["analyse"] = "analyse"


@dataclass(frozen=True, slots=True)
class Pause:
    """Holds until ``duration`` elapsed (None: until ``rollout promote``)."""

    step: int
    batch: int
    duration: float | None
    kind: Literal["pause"] = "pause"


@dataclass(frozen=True, slots=True)
class RestoreWeights:
    """Every server's weight as recorded before the first SetWeight, on every LB."""

    step: int
    batch: int
    kind: Literal["restore_weights"] = "restore_weights"


@dataclass(frozen=True, slots=True)
class CheckPreview:
    """The idle pool's capacity floor, then requests through the preview route on every LB."""

    step: int
    batch: int
    requests: bool = True  # False: the floor only (a switch-back: the preview route is live)
    kind: Literal["preview"] = "preview"


@dataclass(frozen=True, slots=True)
class Switch:
    """Every LB's live route (map entry, and the map file on its host) to ``to_backend``."""

    step: int
    batch: int
    from_backend: str
    to_backend: str
    kind: Literal["switch"] = "switch"


@dataclass(frozen=True, slots=True)
class ScaleDown:
    """Holds ``after`` seconds, then runs the scale-down playbook on the old pool's hosts."""

    step: int
    batch: int
    backend: str
    hosts: tuple[str, ...]
    after: float
    kind: Literal["scale_down"] = "scale_down"


TrafficStep = SetWeight | Analyse | Pause | RestoreWeights | CheckPreview | Switch | ScaleDown


def _pct(value: float) -> str:
    return f"{value * 100:g}%"


def describe_gate(gate: Any) -> str:
    """One gate of the spec, as ``rollout plan`` and the journal say it.

    Example:
        >>> from rollout_py.spec_canary import ErrorRate, ErrorRateGate
        >>> describe_gate(ErrorRate(error_rate=ErrorRateGate(max=0.01)))
        'error_rate <= 1% (5xx, eresp, econ over requests)'
    """
    name = next(iter(type(gate).model_fields))
    g = getattr(gate, name)
    parts = []
    if name == "error_rate":
        if g.max is not None:
            parts.append(f"error_rate <= {_pct(g.max)} (5xx, eresp, econ over requests)")
        if g.max_over_baseline is not None:
            parts.append(f"error_rate <= baseline + {_pct(g.max_over_baseline)} "
                         f"(one-sided two-proportion test, {_pct(g.confidence)} confidence)")
    elif name == "latency":
        if g.max_ms is not None:
            parts.append(f"{g.field} <= {g.max_ms:g} ms (HAProxy's average of the last "
                         "1024 requests)")
        if g.max_ratio_to_baseline is not None:
            parts.append(f"{g.field} <= {g.max_ratio_to_baseline:g} x baseline (or within "
                         f"{g.min_difference_ms:g} ms of it)")
    else:
        bounds = " and ".join(b for b in (f">= {g.min:g}" if g.min is not None else "",
                                          f"<= {g.max:g}" if g.max is not None else "") if b)
        parts.append(f"prometheus {g.url}: {g.query} {bounds}")
    return "; ".join(parts)


def step_line(step: TrafficStep, interval: float | None = None) -> str:
    """The step as ``rollout plan`` prints it (weights are printed beside it, per LB)."""
    if isinstance(step, SetWeight):
        return (f"step {step.step}: traffic {_pct(step.share)} to batch {step.batch}'s servers "
                "(set weight on every LB; the others' weights scaled, all recorded first)")
    if isinstance(step, Analyse):
        every = f" in windows of {interval:g} s" if interval else ""
        if step.purpose == "post_switch":
            return (f"step {step.step}: analyse the new pool for {step.duration:g} s{every} "
                    "against the old pool's windows before the switch; on failure switch "
                    "back: " + " | ".join(step.gates))
        return (f"step {step.step}: analyse batch {step.batch} ({step.purpose}) for "
                f"{step.duration:g} s{every} against: " + " | ".join(step.gates))
    if isinstance(step, Pause):
        until = (f"{step.duration:g} s" if step.duration is not None else
                 "until `rollout promote`")
        return f"step {step.step}: pause {until} (nothing out of rotation)"
    if isinstance(step, CheckPreview):
        return (f"step {step.step}: the idle pool's servers UP on every LB (the capacity "
                "floor)" + (", then the preview checks through every LB's preview route"
                            if step.requests else ""))
    if isinstance(step, Switch):
        return (f"step {step.step}: switch every LB's live route from {step.from_backend} to "
                f"{step.to_backend} (map entries prepared, then committed LB after LB; the map "
                "file on each LB host written too)")
    if isinstance(step, ScaleDown):
        return (f"step {step.step}: after {step.after:g} s, scale down {step.backend} "
                f"({', '.join(step.hosts)})")
    return f"step {step.step}: restore every server's recorded weight on every LB"
