"""Canary analysis gates and window verdicts: each gate's pass, fail and inconclusive; no
traffic is never a pass; a reset is no verdict; the journal event takes the verdict as is."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rollout_py import events as ev
from rollout_py.analysis.counters import Counters, Group, Reset, Sample, WindowDeltas, window_deltas
from rollout_py.analysis.gates import GateVerdict, evaluate
from rollout_py.analysis.judge import failures, judge_each, judge_window
from rollout_py.spec_canary import AnalysisSpec, Gate

Traffic = tuple[int, int, int]  # requests, errors (5xx), rtime ms


def spec(*gates: dict[str, Any], **kw: Any) -> AnalysisSpec:
    return AnalysisSpec.model_validate({"gates": list(gates), **kw})


def gate(data: dict[str, Any]) -> Gate:
    return spec(data).gates[0]


def group(traffic: Traffic | None, servers: tuple[str, ...] = ("app01",)) -> Group:
    if traffic is None:
        return Group((), 0, 0, None, {"rtime": None})
    req, err, rtime = traffic
    return Group(servers, req, err, err / req if req else None,
                 {"rtime": float(rtime) if req else None, "ttime": float(rtime) * 2})


def no_prometheus(url: str, query: str, timeout: float) -> float | str:
    raise AssertionError("no Prometheus gate here")


ER = {"error_rate": {"max": "1%"}}
EB = {"error_rate": {"max_over_baseline": "0.5%"}}
LM = {"latency": {"max_ms": 50}}
LR = {"latency": {"max_ratio_to_baseline": 1.5, "min_difference_ms": 5}}


@pytest.mark.parametrize(("data", "canary", "baseline", "expected"), [
    (ER, (200, 2, 10), None, [("error_rate.max", "pass", 0.01, 0.01)]),  # equal passes
    (ER, (200, 3, 10), None, [("error_rate.max", "fail", 0.015, 0.01)]),
    (EB, (200, 10, 10), (1800, 0, 10),
     [("error_rate.max_over_baseline", "fail", 0.05, 0.005)]),
    (EB, (200, 1, 10), (1800, 5, 10),
     [("error_rate.max_over_baseline", "pass", 0.005 - 5 / 1800, 0.005)]),
    (EB, (200, 10, 10), None, [("error_rate.max_over_baseline", "inconclusive", None, 0.005)]),
    (EB, (200, 10, 10), (199, 0, 10),
     [("error_rate.max_over_baseline", "inconclusive", None, 0.005)]),
    ({"error_rate": {"max": "1%", "max_over_baseline": "0.5%"}}, (200, 10, 10), None,
     [("error_rate.max", "fail", 0.05, 0.01),
      ("error_rate.max_over_baseline", "inconclusive", None, 0.005)]),
    (LM, (200, 0, 40), None, [("latency.rtime.max_ms", "pass", 40, 50)]),
    (LM, (200, 0, 50), None, [("latency.rtime.max_ms", "pass", 50, 50)]),
    (LM, (200, 0, 51), None, [("latency.rtime.max_ms", "fail", 51, 50)]),
    ({"latency": {"field": "ttime", "max_ms": 50}}, (200, 0, 30), None,
     [("latency.ttime.max_ms", "fail", 60, 50)]),
    # ratio 2 and 20 ms over: fails; the threshold is the effective limit in ms
    (LR, (200, 0, 40), (1800, 0, 20), [("latency.rtime.max_ratio_to_baseline", "fail", 40, 30)]),
    # ratio 2 but 1 ms over: noise
    (LR, (200, 0, 2), (1800, 0, 1), [("latency.rtime.max_ratio_to_baseline", "pass", 2, 6)]),
    # 10 ms over but ratio 1.11
    (LR, (200, 0, 100), (1800, 0, 90),
     [("latency.rtime.max_ratio_to_baseline", "pass", 100, 135)]),
    (LR, (200, 0, 30), (1800, 0, 20), [("latency.rtime.max_ratio_to_baseline", "pass", 30, 30)]),
    (LR, (200, 0, 10), (1800, 0, 0), [("latency.rtime.max_ratio_to_baseline", "fail", 10, 5)]),
    (LR, (200, 0, 40), None, [("latency.rtime.max_ratio_to_baseline", "inconclusive", None,
                               None)]),
    (LR, (200, 0, 40), (100, 0, 20),
     [("latency.rtime.max_ratio_to_baseline", "inconclusive", None, None)]),
])
def test_gates(data: dict[str, Any], canary: Traffic, baseline: Traffic | None,
               expected: list[tuple[str, str, float | None, float | None]]) -> None:
    got = evaluate(gate(data), group(canary), group(baseline, ("app02",)), min_requests=200,
                   prometheus=no_prometheus)
    assert [(v.gate, v.verdict) for v in got] == [(e[0], e[1]) for e in expected]
    for v, (_, _, value, threshold) in zip(got, expected, strict=True):
        assert v.value == (None if value is None else pytest.approx(value))
        assert v.threshold == (None if threshold is None else pytest.approx(threshold))
        assert v.detail


@pytest.mark.parametrize(("baseline", "words"), [
    (None, "no baseline servers"),
    ((199, 0, 10), "too few baseline requests: 199 < 200"),
])
def test_baseline_gates_say_why_they_cannot_judge(baseline: Traffic | None, words: str) -> None:
    (v,) = evaluate(gate(EB), group((200, 10, 10)), group(baseline, ("app02",)),
                    min_requests=200, prometheus=no_prometheus)
    assert words in v.detail


# --- window verdicts ------------------------------------------------------------------

def window(traffic: dict[str, Traffic]) -> WindowDeltas:
    zero: Sample = {"lb1": {s: Counters() for s in traffic}}
    cur: Sample = {"lb1": {s: Counters(hrsp_2xx=r - e, hrsp_5xx=e, stot=r, rtime=t)
                           for s, (r, e, t) in traffic.items()}}
    w = window_deltas(zero, cur, list(traffic))
    assert isinstance(w, WindowDeltas)
    return w


def unavailable(url: str, query: str, timeout: float) -> float | str:
    return "Prometheus unreachable at http://prom:9090: connection refused"


PROM = {"prometheus": {"url": "http://prom:9090", "query": "up", "max": 1}}


@pytest.mark.parametrize(("gates", "traffic", "verdict", "reason"), [
    # no traffic: never a pass, and no gate is asked
    ([ER], {"app01": (0, 0, 0), "app02": (0, 0, 0)}, "inconclusive", "too few requests: 0 < 200"),
    ([ER], {"app01": (199, 0, 5), "app02": (5000, 0, 5)}, "inconclusive",
     "too few requests: 199 < 200"),
    ([ER], {"app01": (200, 0, 5), "app02": (0, 0, 0)}, "pass", "every gate passed"),
    ([ER, LM], {"app01": (200, 3, 60), "app02": (0, 0, 0)}, "fail",
     "error_rate.max: canary 1.5% (3/200) > 1%; latency.rtime.max_ms: canary rtime 60 ms > 50"),
    # a failure outweighs an inconclusive gate
    ([ER, EB], {"app01": (200, 3, 5), "app02": (10, 0, 5)}, "fail", "error_rate.max"),
    ([ER, EB], {"app01": (200, 0, 5), "app02": (10, 0, 5)}, "inconclusive",
     "too few baseline requests: 10 < 200"),
    ([ER, PROM], {"app01": (200, 0, 5), "app02": (0, 0, 0)}, "inconclusive",
     "connection refused"),
])
def test_judge_window(gates: list[dict[str, Any]], traffic: dict[str, Traffic], verdict: str,
                      reason: str) -> None:
    v = judge_window(window(traffic), ["app01"], ["app02"], spec(*gates),
                     prometheus=unavailable)
    assert v.verdict == verdict
    assert reason in v.reason
    if reason.startswith("too few requests"):
        assert v.gates == () and v.reason == reason


def test_a_reset_window_is_no_verdict() -> None:
    prev: Sample = {"lb1": {"app01": Counters(hrsp_2xx=500)}}
    cur: Sample = {"lb1": {"app01": Counters(hrsp_2xx=10)}}
    reset = window_deltas(prev, cur, ["app01"])
    assert isinstance(reset, Reset)
    v = judge_window(reset, ["app01"], [], spec(ER))
    assert v.verdict == "reset" and "hrsp_2xx 500 -> 10" in v.reason
    assert v.gates == () and v.raw["lb1"]["app01"]["hrsp_2xx"] == 10


@pytest.mark.parametrize(("gates", "reader", "verdict", "ignored"), [
    ([ER, PROM], unavailable, "pass", 1),  # unavailable metric let pass, flagged
    ([ER, PROM], lambda u, q, t: 5.0, "fail", 0),  # a number above max still fails
    ([ER, EB, PROM], unavailable, "inconclusive", 1),  # only metrics gates are let pass
])
def test_ignore_metrics_unavailable(gates: list[dict[str, Any]], reader: Any, verdict: str,
                                    ignored: int) -> None:
    w = window({"app01": (200, 0, 5), "app02": (10, 0, 5)})
    v = judge_window(w, ["app01"], ["app02"], spec(*gates), prometheus=reader,
                     ignore_metrics_unavailable=True)
    assert v.verdict == verdict
    assert len(v.ignored_metrics()) == ignored
    if ignored:
        (name, detail), = v.ignored_metrics()
        assert name == "prometheus" and "connection refused" in detail
        assert any(g.get("ignored") for g in v.event_fields()["gates"])


def test_event_fields_make_a_journal_event() -> None:
    w = window({"app01": (200, 3, 60), "app02": (1800, 1, 20)})
    v = judge_window(w, ["app01"], ["app02"], spec(ER, LR))
    fields = v.event_fields()
    assert set(fields) == {"verdict", "reason", "gates", "groups", "deltas", "raw"}
    event = ev.AnalysisWindow(deploy_id="d1", seq=7, batch=1, step=2, purpose="canary",
                              window=1, canary=("app01",), baseline=("app02",), **fields)
    data = json.loads(json.dumps(event.to_json(), allow_nan=False))
    assert data["verdict"] == "fail"
    assert [g["gate"] for g in data["gates"]] == ["error_rate.max",
                                                  "latency.rtime.max_ratio_to_baseline"]
    assert data["gates"][0] == {"gate": "error_rate.max", "verdict": "fail", "value": 0.015,
                                "threshold": 0.01, "detail": "canary 1.5% (3/200) > 1%"}
    assert data["groups"]["canary"]["requests"] == 200
    assert data["groups"]["baseline"]["latency"]["rtime"] == 20
    assert data["deltas"]["app01"]["hrsp_5xx"] == 3 and data["deltas"]["app01"]["errors"] == 3
    assert data["raw"]["lb1"]["app02"]["stot"] == 1800


def test_judge_each_names_the_failing_server_and_gate() -> None:
    w = window({"app01": (300, 0, 20), "app02": (300, 15, 20), "app03": (50, 0, 20),
                "app09": (1800, 2, 20)})
    verdicts = judge_each(w, ["app01", "app02", "app03"], ["app09"], spec(ER, LR))
    assert {s: v.verdict for s, v in verdicts.items()} == {
        "app01": "pass", "app02": "fail", "app03": "inconclusive"}
    assert failures(verdicts) == {"app02": ("error_rate.max",)}
    assert set(verdicts["app02"].deltas) == {"app02", "app09"}
    assert verdicts["app02"].groups["canary"].servers == ("app02",)


def test_judge_each_on_a_reset_is_no_verdict_for_anyone() -> None:
    reset = Reset(detail="counters went down", raw={})
    verdicts = judge_each(reset, ["app01", "app02"], ["app09"], spec(ER))
    assert {v.verdict for v in verdicts.values()} == {"reset"} and failures(verdicts) == {}


def test_gate_verdict_says_the_gate_and_why() -> None:
    v = GateVerdict("error_rate.max", "fail", 0.05, 0.01, "canary 5% (10/200) > 1%")
    assert str(v) == "error_rate.max: canary 5% (10/200) > 1%"
    assert "ignored" not in v.as_dict()
