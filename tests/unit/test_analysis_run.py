"""The analysis state machine: passes after enough passed windows, fails on failed windows,
holds on inconclusive ones up to a limit in a row; resets never decide but cannot hang it."""

from __future__ import annotations

from typing import Any

import pytest

from rollout_py.analysis.counters import Counters, Sample, WindowDeltas, window_deltas
from rollout_py.analysis.judge import WindowVerdict, judge_window
from rollout_py.analysis.run import AnalysisRun, windows_needed
from rollout_py.events import Verdict
from rollout_py.spec_canary import AnalysisSpec

LETTERS: dict[str, Verdict] = {"p": "pass", "f": "fail", "i": "inconclusive", "r": "reset"}
REASONS = {"p": "every gate passed", "f": "error_rate.max: canary 5% (10/200) > 1%",
           "i": "too few requests: 12 < 200", "r": "no verdict on this window: counters went down"}


def spec(**kw: Any) -> AnalysisSpec:
    return AnalysisSpec.model_validate({"gates": [{"error_rate": {"max": "1%"}}], **kw})


def feed(run: AnalysisRun, windows: str) -> str:
    """The run's status after each window, one letter each: r(unning), P(assed), F(ailed)."""
    marks = {"running": "r", "passed": "P", "failed": "F"}
    return "".join(marks[run.add(WindowVerdict(LETTERS[w], REASONS[w]))] for w in windows)


@pytest.mark.parametrize(("settings", "needed", "windows", "statuses", "cause"), [
    ({}, 3, "ppp", "rrP", "3 of 3 windows passed"),
    ({}, 1, "p", "P", "1 of 1 windows passed"),
    # hold: inconclusive windows are not passes, and do not fail below the limit
    ({"inconclusive_limit": 3}, 2, "ipiip", "rrrrP", "2 of 2 windows passed"),
    ({"inconclusive_limit": 3}, 2, "iii", "rrF",
     "inconclusive for 3 windows in a row: too few requests: 12 < 200"),
    # a pass or a failure ends a run of inconclusive windows
    ({"inconclusive_limit": 3, "failure_limit": 2}, 5, "iifiip", "rrrrrr", ""),
    # fail mode: an inconclusive window is a failed one
    ({"on_inconclusive": "fail"}, 3, "pi", "rF",
     "window 2 inconclusive (on_inconclusive: fail): too few requests: 12 < 200"),
    ({"on_inconclusive": "fail", "failure_limit": 2}, 3, "pipf", "rrrF",
     "window 4 failed (2 failed windows, failure_limit 2): error_rate.max"),
    # the first failed window fails it by default
    ({}, 3, "ppf", "rrF", "window 3 failed: error_rate.max: canary 5% (10/200) > 1%"),
    # failure_limit counts failed windows in all, not in a row
    ({"failure_limit": 2}, 3, "fppf", "rrrF", "2 failed windows, failure_limit 2"),
    ({"failure_limit": 2}, 2, "fpp", "rrP", "2 of 2 windows passed"),
    # resets never pass nor fail ...
    ({}, 2, "rprp", "rrrP", "2 of 2 windows passed"),
    ({"on_inconclusive": "fail"}, 2, "rrp", "rrr", ""),
    # ... but count against the in-a-row limit, with inconclusive windows, in either mode
    ({"inconclusive_limit": 4}, 2, "rrrr", "rrrF",
     "inconclusive for 4 windows in a row: no verdict on this window: counters went down"),
    ({"inconclusive_limit": 3}, 2, "rir", "rrF", "inconclusive for 3 windows in a row"),
    ({"inconclusive_limit": 3, "on_inconclusive": "fail"}, 2, "rrr", "rrF",
     "inconclusive for 3 windows in a row"),
    ({"inconclusive_limit": 3}, 2, "rrprr", "rrrrr", ""),
])
def test_analysis_run(settings: dict[str, Any], needed: int, windows: str, statuses: str,
                      cause: str) -> None:
    run = AnalysisRun(spec(**settings), needed)
    assert feed(run, windows) == statuses
    assert cause in run.cause
    if statuses[-1] == "r":
        assert run.cause == "" and run.status == "running"


def test_a_finished_run_ignores_later_windows() -> None:
    run = AnalysisRun(spec(), 1)
    assert feed(run, "fpp") == "FFF"
    assert run.windows == 1 and run.cause.startswith("window 1 failed")


def test_the_cause_names_gate_value_and_threshold() -> None:
    zero: Sample = {"lb1": {"app01": Counters()}}
    cur: Sample = {"lb1": {"app01": Counters(hrsp_2xx=190, hrsp_5xx=10)}}
    w = window_deltas(zero, cur, ["app01"])
    assert isinstance(w, WindowDeltas)
    run = AnalysisRun(spec(), 3)
    assert run.add(judge_window(w, ["app01"], [], spec())) == "failed"
    assert run.cause == "window 1 failed: error_rate.max: canary 5% (10/200) > 1%"


def test_no_traffic_never_passes() -> None:
    zero: Sample = {"lb1": {"app01": Counters()}}
    w = window_deltas(zero, zero, ["app01"])
    assert isinstance(w, WindowDeltas)
    run = AnalysisRun(spec(inconclusive_limit=5), 1)
    statuses = [run.add(judge_window(w, ["app01"], [], spec())) for _ in range(5)]
    assert statuses == ["running"] * 4 + ["failed"]
    assert run.cause == "inconclusive for 5 windows in a row: too few requests: 0 < 200"


@pytest.mark.parametrize(("duration", "interval", "expected"), [
    (60, 10, 6), (65, 10, 7), (5, 10, 1), (1.1, 0.1, 11), (0.3, 0.1, 3), (10, 10, 1),
])
def test_windows_needed(duration: float, interval: float, expected: int) -> None:
    assert windows_needed(duration, interval) == expected


def test_windows_needed_must_be_positive() -> None:
    with pytest.raises(ValueError):
        AnalysisRun(spec(), 0)
