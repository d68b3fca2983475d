"""A flag ramp judged from HAProxy's counters: the whole fleet in each window against the
windows before the ramp, with the canary gates restated for the variant's share.

Every server serves both variants during a ramp, so HAProxy cannot tell them apart: what it
sees is the fleet's traffic, of which a share *s* (the ramp's percentage, as far as the
subjects' ``targetingKey``s spread evenly) gets the new variant. Assuming the rest keeps the
error rate *p_b* and latency *L_b* of the baseline windows, a variant with error rate *p_v*
gives the fleet ``(1 - s) p_b + s p_v``. So each gate about the variant is judged exactly as
the same statement about the fleet:

* ``error_rate.max: x``  ->  fleet rate > ``(1 - s) p_b + s x``;
* ``error_rate.max_over_baseline: m``  ->  the same one-sided two-proportion z-test on the
  observed counts (fleet window against baseline windows), with margin ``s m``: p_v - p_b > m
  exactly when fleet - baseline > s m;
* ``latency.max_ms: M``  ->  fleet average > ``(1 - s) L_b + s M``;
  ``max_ratio_to_baseline: r``  ->  fleet / L_b > ``1 + s (r - 1)``; ``min_difference_ms``
  stays as written: it is the noise floor, and HAProxy's averages are whole milliseconds
  (scaled to 0.5 ms at 10 %, a 1 ms average against a 0.5 ms baseline failed a good variant);
* ``prometheus`` gates are asked as written (``$canary`` and ``$baseline`` both name every
  server of the backend).

The dilution is real: at 10 % a variant must be 10 times worse to move the fleet as much; the
z-test accounts for it through the margin, and small shares need more requests per window.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from rollout_py.analysis import prometheus as prom
from rollout_py.analysis.counters import AVERAGES, Counters, Group, WindowDeltas, sample
from rollout_py.analysis.gates import GateVerdict, evaluate
from rollout_py.analysis.judge import WindowVerdict
from rollout_py.balancer.fleet import Balancer
from rollout_py.events import Verdict
from rollout_py.spec_canary import AnalysisSpec, ErrorRate, Gate, Latency

Sample = dict[str, dict[str, Counters]]


class FleetCounters:
    """Samples the backend's servers on every LB (``show stat``)."""

    def __init__(self, balancer: Balancer, servers: Sequence[str]) -> None:
        self.balancer, self.servers = balancer, list(servers)

    def sample(self) -> Sample:
        return sample(self.balancer.stats(self.servers))


def fleet_group(window: WindowDeltas) -> Group:
    """Every server of the window as one group."""
    return window.group(list(window.servers))


def combine(groups: Sequence[Group]) -> Group:
    """Several windows' groups as one: counts summed, latency weighted by requests."""
    requests = sum(g.requests for g in groups)
    errors = sum(g.errors for g in groups)
    latency: dict[str, float | None] = {}
    for f in AVERAGES:
        have = [(g.latency.get(f), g.requests) for g in groups if g.requests]
        latency[f] = (sum((v or 0.0) * n for v, n in have) / requests) if requests else None
    servers = tuple(dict.fromkeys(s for g in groups for s in g.servers))
    return Group(servers, requests, errors, errors / requests if requests else None, latency)


def scaled_gates(spec: AnalysisSpec, share: float, baseline: Group) -> AnalysisSpec:
    """The spec's gates as statements about the fleet when ``share`` of it gets the variant
    (see the module)."""
    s = min(max(share, 0.0), 1.0)
    gates: list[Gate] = []
    for gate in spec.gates:
        if isinstance(gate, ErrorRate):
            g = gate.error_rate
            p_b = baseline.error_rate or 0.0
            gates.append(ErrorRate(error_rate=g.model_copy(update={
                "max": None if g.max is None else (1 - s) * p_b + s * g.max,
                "max_over_baseline": None if g.max_over_baseline is None
                else s * g.max_over_baseline})))
        elif isinstance(gate, Latency):
            lat = gate.latency
            l_b = baseline.latency.get(lat.field)
            gates.append(Latency(latency=lat.model_copy(update={
                "max_ms": None if lat.max_ms is None else lat.max_ms if l_b is None
                else (1 - s) * l_b + s * lat.max_ms,
                "max_ratio_to_baseline": None if lat.max_ratio_to_baseline is None
                else 1 + s * (lat.max_ratio_to_baseline - 1)})))
        else:
            gates.append(gate)
    return spec.model_copy(update={"gates": gates})


def judge(fleet: Group, baseline: Group, spec: AnalysisSpec, *, share: float,
          prometheus: prom.PromQuery | None = None) -> WindowVerdict:
    """One window of the fleet at ``share`` against the baseline windows: fail, inconclusive
    (fewer than ``min_requests`` requests, or a gate without data) or pass."""
    groups = {"fleet": fleet, "baseline": baseline}
    if fleet.requests < spec.min_requests:
        return WindowVerdict("inconclusive", f"too few requests: {fleet.requests} < "
                             f"{spec.min_requests}", (), groups)
    scaled = scaled_gates(spec, share, baseline)
    read = prometheus if prometheus is not None else prom.query
    results: list[GateVerdict] = []
    for gate in scaled.gates:
        for v in evaluate(gate, fleet, baseline, min_requests=spec.min_requests,
                          prometheus=read):
            results.append(dataclasses.replace(v, detail=v.detail.replace("canary", "fleet")))
    failed = [v for v in results if v.verdict == "fail"]
    held = [v for v in results if v.verdict == "inconclusive"]
    verdict: Verdict = "fail" if failed else "inconclusive" if held else "pass"
    reason = "; ".join(str(v) for v in failed or held) or "every gate passed"
    return WindowVerdict(verdict, reason, tuple(results), groups)


def bound(*, rps: float, share: float, push_s: float, settle_s: float,
          spec: AnalysisSpec) -> dict[str, Any]:
    """How many requests a variant that fails every request it serves can fail before the
    ramp's first gate reverts it (an error rate *e* fails *e* times as many).

    Exposure: the push (hosts take the file at some moment within it), the provider's pick-up
    (``settle``), the windows until the analysis can fail (``failure_limit`` windows of
    ``interval``), then the revert's push and pick-up. ``rps`` is the fleet's rate measured in
    the baseline windows, ``push_s`` a measured push over every host.

    Example:
        >>> from rollout_py.spec_canary import AnalysisSpec
        >>> spec = AnalysisSpec(interval=5, gates=[{"error_rate": {"max": "1%"}}])
        >>> bound(rps=200, share=0.1, push_s=2.5, settle_s=1, spec=spec)["requests"]
        240
    """
    windows_s = spec.failure_limit * spec.interval
    exposure = 2 * (push_s + settle_s) + windows_s
    return {"requests": math.ceil(round(rps * share * exposure, 6)), "rps": round(rps, 1),
            "share": share, "exposure_s": round(exposure, 3), "push_s": round(push_s, 3),
            "settle_s": settle_s, "windows_s": windows_s}
