"""One window's verdict on the judged servers: pass, fail, inconclusive, or reset.

* reset: HAProxy's counters went down (or a server came or went) - no verdict on the release;
* inconclusive: the judged group had fewer than ``min_requests`` requests ("too few requests:
  N < M"; no gate is asked), or some gate could not judge;
* fail: some gate failed (a failure outweighs an inconclusive gate);
* pass: every gate passed. With ``ignore_metrics_unavailable`` an inconclusive *Prometheus*
  gate counts as passed, and is flagged (``GateVerdict.ignored``, ``ignored_metrics()``) for
  the engine to journal a warning.

``judge_each`` judges each server of a group alone against the same baseline (the continuous
watch); ``failures`` says which servers failed, by which gates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rollout_py.analysis import prometheus as prom
from rollout_py.analysis.counters import Group, Reset, WindowDeltas, raw_of
from rollout_py.analysis.gates import GateVerdict, evaluate
from rollout_py.events import Verdict
from rollout_py.spec_canary import AnalysisSpec, Prometheus


@dataclass(frozen=True, slots=True)
class WindowVerdict:
    """A judged window, with what the journal's ``AnalysisWindow`` records of it."""

    verdict: Verdict
    reason: str
    gates: tuple[GateVerdict, ...] = ()
    groups: dict[str, Group] = field(default_factory=dict)  # "canary", "baseline"
    deltas: dict[str, dict[str, int]] = field(default_factory=dict)  # server -> summed
    raw: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # LB -> server

    @property
    def failed_gates(self) -> tuple[GateVerdict, ...]:
        return tuple(g for g in self.gates if g.verdict == "fail")

    def ignored_metrics(self) -> tuple[tuple[str, str], ...]:
        """(gate, detail) of each unavailable metric let pass: the engine journals each."""
        return tuple((g.gate, g.detail) for g in self.gates if g.ignored)

    def event_fields(self) -> dict[str, Any]:
        """The keyword arguments of ``events.AnalysisWindow`` this verdict knows (verdict,
        reason, gates, groups, deltas, raw), as plain JSON-able values."""
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "gates": tuple(g.as_dict() for g in self.gates),
            "groups": {name: g.as_dict() for name, g in self.groups.items()},
            "deltas": {s: dict(c) for s, c in self.deltas.items()},
            "raw": {lb: {s: dict(c) for s, c in per.items()} for lb, per in self.raw.items()},
        }


def judge_window(window: WindowDeltas | Reset, canary: Sequence[str], baseline: Sequence[str],
                 spec: AnalysisSpec, *, prometheus: prom.PromQuery | None = None,
                 ignore_metrics_unavailable: bool = False) -> WindowVerdict:
    """The verdict of one window on ``canary`` against ``baseline`` by the spec's gates.
    ``prometheus`` reads a PromQL gate's number (default: ``prometheus.query``, over HTTP)."""
    servers = list(dict.fromkeys([*canary, *baseline]))
    if isinstance(window, Reset):
        return WindowVerdict("reset", f"no verdict on this window: {window.detail}",
                             raw=raw_of(window.raw, servers))
    c, b = window.group(canary), window.group(baseline)
    groups = {"canary": c, "baseline": b}
    deltas, raw = window.totals(servers), raw_of(window.raw, servers)
    if c.requests < spec.min_requests:
        return WindowVerdict("inconclusive", f"too few requests: {c.requests} < "
                             f"{spec.min_requests}", (), groups, deltas, raw)
    read = prometheus if prometheus is not None else prom.query
    results: list[GateVerdict] = []
    for gate in spec.gates:
        for v in evaluate(gate, c, b, min_requests=spec.min_requests, prometheus=read):
            if ignore_metrics_unavailable and isinstance(gate, Prometheus) \
                    and v.verdict == "inconclusive":
                v = dataclasses.replace(v, ignored=True)
            results.append(v)
    failed = [v for v in results if v.verdict == "fail"]
    held = [v for v in results if v.verdict == "inconclusive" and not v.ignored]
    ignored = [v for v in results if v.ignored]
    if failed:
        verdict: Verdict = "fail"
        reason = "; ".join(str(v) for v in failed)
    elif held:
        verdict, reason = "inconclusive", "; ".join(str(v) for v in held)
    else:
        verdict, reason = "pass", "every gate passed"
        if ignored:
            reason += " (unavailable metrics ignored: " + "; ".join(str(v) for v in ignored) \
                + ")"
    return WindowVerdict(verdict, reason, tuple(results), groups, deltas, raw)


def judge_each(window: WindowDeltas | Reset, servers: Sequence[str], baseline: Sequence[str],
               spec: AnalysisSpec, *, prometheus: prom.PromQuery | None = None,
               ignore_metrics_unavailable: bool = False) -> dict[str, WindowVerdict]:
    """Each of ``servers`` judged alone against the ``baseline`` group (``min_requests``
    applies to each server): server -> its verdict, whose deltas and raw counters are its own
    and the baseline's."""
    return {s: judge_window(window, [s], baseline, spec, prometheus=prometheus,
                            ignore_metrics_unavailable=ignore_metrics_unavailable)
            for s in dict.fromkeys(servers)}


def failures(verdicts: Mapping[str, WindowVerdict]) -> dict[str, tuple[str, ...]]:
    """The servers whose window failed, and the gates that failed it.

    Example:
        >>> from rollout_py.analysis.gates import GateVerdict
        >>> bad = WindowVerdict("fail", "x", (GateVerdict("error_rate.max", "fail"),))
        >>> failures({"app01": bad, "app02": WindowVerdict("pass", "ok")})
        {'app01': ('error_rate.max',)}
    """
    return {s: tuple(g.gate for g in v.failed_gates) for s, v in verdicts.items()
            if v.verdict == "fail"}
