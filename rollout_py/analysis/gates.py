"""Each gate of the spec judged on one window: a verdict with its number, threshold and why.

Gate names: ``error_rate.max``, ``error_rate.max_over_baseline``, ``latency.<field>.max_ms``,
``latency.<field>.max_ratio_to_baseline``, ``prometheus.max``, ``prometheus.min`` (and
``prometheus`` when its query gave no number). A gate that compares with the baseline is
inconclusive without baseline servers or with fewer than ``min_requests`` baseline requests;
a gate without a number to judge is inconclusive, never passed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rollout_py.analysis.counters import Group
from rollout_py.analysis.prometheus import PromQuery
from rollout_py.analysis.stats import worse_than_baseline
from rollout_py.spec_canary import (
    ErrorRate,
    ErrorRateGate,
    Gate,
    Latency,
    LatencyGate,
    PrometheusGate,
)

GateOutcome = Literal["pass", "fail", "inconclusive"]
_PLACEHOLDER = re.compile(r"\$(canary|baseline)\b")
_REGEX_META = re.compile(r"([\\.+*?()|\[\]{}^$])")


@dataclass(frozen=True, slots=True)
class GateVerdict:
    """One gate on one window."""

    gate: str
    verdict: GateOutcome
    value: float | None = None
    threshold: float | None = None
    detail: str = ""
    ignored: bool = False  # an unavailable metric let pass (--ignore-metrics-unavailable)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"gate": self.gate, "verdict": self.verdict, "value": self.value,
                               "threshold": self.threshold, "detail": self.detail}
        if self.ignored:
            out["ignored"] = True
        return out

    def __str__(self) -> str:
        return f"{self.gate}: {self.detail}"


def evaluate(gate: Gate, canary: Group, baseline: Group, *, min_requests: int,
             prometheus: PromQuery) -> list[GateVerdict]:
    """Every check one gate of the spec makes on the window (a gate may make two)."""
    if isinstance(gate, ErrorRate):
        return error_rate(gate.error_rate, canary, baseline, min_requests)
    if isinstance(gate, Latency):
        return latency(gate.latency, canary, baseline, min_requests)
    return prometheus_gate(gate.prometheus, canary.servers, baseline.servers, prometheus)


def _pct(share: float) -> str:
    return f"{share * 100:.3g}%"


def _rate(g: Group) -> str:
    return f"{_pct(g.error_rate or 0.0)} ({g.errors}/{g.requests})"


def _no_baseline(baseline: Group, min_requests: int) -> str | None:
    """Why the baseline cannot be compared with, if it cannot."""
    if not baseline.servers:
        return "no baseline servers (none left on the old version)"
    if baseline.requests < min_requests:
        return f"too few baseline requests: {baseline.requests} < {min_requests}"
    return None


def error_rate(g: ErrorRateGate, canary: Group, baseline: Group,
               min_requests: int) -> list[GateVerdict]:
    out = []
    if g.max is not None:
        name = "error_rate.max"
        if canary.error_rate is None:
            out.append(GateVerdict(name, "inconclusive", None, g.max, "no canary requests"))
        else:
            bad = canary.error_rate > g.max
            out.append(GateVerdict(name, "fail" if bad else "pass", canary.error_rate, g.max,
                                   f"canary {_rate(canary)} {'>' if bad else '<='} "
                                   f"{_pct(g.max)}"))
    if g.max_over_baseline is not None:
        name, margin = "error_rate.max_over_baseline", g.max_over_baseline
        why = _no_baseline(baseline, min_requests)
        if why is None and canary.requests <= 0:
            why = "no canary requests"
        if why is not None:
            out.append(GateVerdict(name, "inconclusive", None, margin, why))
        else:
            test = worse_than_baseline(canary.errors, canary.requests, baseline.errors,
                                       baseline.requests, margin=margin,
                                       confidence=g.confidence)
            diff = (canary.error_rate or 0.0) - (baseline.error_rate or 0.0)
            said = ("worse than baseline + margin" if test.worse
                    else "not shown worse than baseline + margin")
            out.append(GateVerdict(
                name, "fail" if test.worse else "pass", diff, margin,
                f"canary {_rate(canary)} vs baseline {_rate(baseline)}: {diff * 100:+.3g} "
                f"points, margin {_pct(margin)}; z={test.z:.3g}, p={test.p_value:.3g} "
                f"(one-sided, {_pct(g.confidence)} confidence): {said}"))
    return out


def latency(g: LatencyGate, canary: Group, baseline: Group,
            min_requests: int) -> list[GateVerdict]:
    out = []
    c = canary.latency.get(g.field)
    if g.max_ms is not None:
        name = f"latency.{g.field}.max_ms"
        if c is None:
            out.append(GateVerdict(name, "inconclusive", None, g.max_ms, "no canary requests"))
        else:
            bad = c > g.max_ms
            out.append(GateVerdict(name, "fail" if bad else "pass", c, g.max_ms,
                                   f"canary {g.field} {c:.4g} ms {'>' if bad else '<='} "
                                   f"{g.max_ms:g} ms"))
    if g.max_ratio_to_baseline is not None:
        name, ratio = f"latency.{g.field}.max_ratio_to_baseline", g.max_ratio_to_baseline
        b = baseline.latency.get(g.field)
        why = _no_baseline(baseline, min_requests)
        if why is None and (c is None or b is None):
            why = "no canary requests" if c is None else "no baseline requests"
        if why is not None or c is None or b is None:
            out.append(GateVerdict(name, "inconclusive", None, None, why or ""))
        else:
            # Fails when both hold: above ratio x baseline, and more than min_difference over.
            limit = max(ratio * b, b + g.min_difference_ms)
            bad = c > ratio * b and c - b > g.min_difference_ms
            times = f"{c / b:.3g}x" if b else "baseline 0 ms"
            out.append(GateVerdict(
                name, "fail" if bad else "pass", c, limit,
                f"canary {g.field} {c:.4g} ms vs baseline {b:.4g} ms ({times}, {c - b:+.4g} ms):"
                f" {'above' if bad else 'within'} {ratio:g}x baseline or "
                f"{g.min_difference_ms:g} ms over, whichever is more ({limit:.4g} ms)"))
    return out


def promql_regex(servers: Sequence[str]) -> str:
    """Server names as one regex alternation, written for a PromQL double-quoted string.

    Example:
        >>> print(promql_regex(["app01", "web.2"]))
        app01|web\\\\.2
    """
    regex = "|".join(_REGEX_META.sub(r"\\\1", s) for s in servers)
    return regex.replace("\\", "\\\\").replace('"', '\\"')


def render_query(query: str, canary: Sequence[str], baseline: Sequence[str]) -> str:
    """The query with ``$canary`` and ``$baseline`` replaced by their servers' regexes;
    ValueError when it names a group without servers (an empty regex matches everything)."""
    groups = {"canary": canary, "baseline": baseline}

    def sub(m: re.Match[str]) -> str:
        servers = groups[m.group(1)]
        if not servers:
            raise ValueError(f"${m.group(1)} has no servers")
        return promql_regex(servers)

    return _PLACEHOLDER.sub(sub, query)


def prometheus_gate(g: PrometheusGate, canary: Sequence[str], baseline: Sequence[str],
                    read: PromQuery) -> list[GateVerdict]:
    """The query's number against ``max`` and ``min``; one inconclusive verdict when the
    query gives no number."""
    try:
        promql = render_query(g.query, canary, baseline)
    except ValueError as exc:
        return [GateVerdict("prometheus", "inconclusive", None, None, f"{g.query}: {exc}")]
    try:
        answer = read(g.url, promql, g.timeout)
    except Exception as exc:  # a reader that raises is a metric that is not available
        answer = f"the query failed: {type(exc).__name__}: {exc}"
    if isinstance(answer, str) or not math.isfinite(answer):
        why = answer if isinstance(answer, str) else f"the query answered {answer}"
        return [GateVerdict("prometheus", "inconclusive", None, None,
                            f"{g.url}: {promql}: {why}")]
    out = []
    if g.max is not None:
        bad = answer > g.max
        out.append(GateVerdict("prometheus.max", "fail" if bad else "pass", answer, g.max,
                               f"{promql} = {answer:g} {'>' if bad else '<='} {g.max:g}"))
    if g.min is not None:
        bad = answer < g.min
        out.append(GateVerdict("prometheus.min", "fail" if bad else "pass", answer, g.min,
                               f"{promql} = {answer:g} {'<' if bad else '>='} {g.min:g}"))
    return out
