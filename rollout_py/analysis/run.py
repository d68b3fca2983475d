"""An analysis step decided from its windows' verdicts: running, passed or failed (pure).

* ``windows_needed`` passed windows pass it (``windows_needed(duration, interval)``);
* ``failure_limit`` failed windows (in all, not only in a row) fail it;
* an inconclusive window: with ``on_inconclusive: fail`` it counts as a failed window; with
  ``hold`` it counts for nothing, but ``inconclusive_limit`` of them *in a row* fail it;
* a reset window (HAProxy's counters went down) never passes nor fails, but counts toward the
  same in-a-row limit in either mode: a fleet that reloads forever must not hang the deploy.

A passed or failed window ends a run of inconclusive ones.
"""

from __future__ import annotations

import math
from typing import Literal

from rollout_py.analysis.judge import WindowVerdict
from rollout_py.spec_canary import AnalysisSpec

Status = Literal["running", "passed", "failed"]


def windows_needed(duration: float, interval: float) -> int:
    """Windows of ``interval`` seconds that cover ``duration`` (at least one).

    Example:
        >>> windows_needed(60, 10), windows_needed(65, 10), windows_needed(1.1, 0.1)
        (6, 7, 11)
    """
    return max(1, math.ceil(round(duration / interval, 9)))


class AnalysisRun:
    """Feed it each window's verdict with ``add``; ``cause`` says why it ended.

    Example:
        >>> from rollout_py.spec_canary import AnalysisSpec
        >>> spec = AnalysisSpec(gates=[{"error_rate": {"max": "1%"}}])
        >>> run = AnalysisRun(spec, windows_needed=2)
        >>> run.add(WindowVerdict("pass", "every gate passed"))
        'running'
        >>> run.add(WindowVerdict("pass", "every gate passed")), run.cause
        ('passed', '2 of 2 windows passed')
    """

    def __init__(self, spec: AnalysisSpec, windows_needed: int) -> None:
        if windows_needed < 1:
            raise ValueError(f"windows_needed must be at least 1, not {windows_needed}")
        self.spec = spec
        self.needed = windows_needed
        self.status: Status = "running"
        self.cause = ""
        self.windows = 0
        self.passed = 0
        self.failed = 0
        self.held = 0  # inconclusive or reset windows in a row

    def add(self, verdict: WindowVerdict) -> Status:
        """One more window; once passed or failed, later windows change nothing."""
        if self.status != "running":
            return self.status
        self.windows += 1
        v = verdict.verdict
        if v == "pass":
            self.held = 0
            self.passed += 1
            if self.passed >= self.needed:
                self._end("passed", f"{self.passed} of {self.needed} windows passed")
        elif v == "fail" or (v == "inconclusive" and self.spec.on_inconclusive == "fail"):
            self.held = 0
            self.failed += 1
            if self.failed >= self.spec.failure_limit:
                what = "failed" if v == "fail" else "inconclusive (on_inconclusive: fail)"
                count = (f" ({self.failed} failed windows, failure_limit "
                         f"{self.spec.failure_limit})" if self.spec.failure_limit > 1 else "")
                self._end("failed", f"window {self.windows} {what}{count}: {verdict.reason}")
        else:  # inconclusive (hold) or reset
            self.held += 1
            if self.held >= self.spec.inconclusive_limit:
                self._end("failed", f"inconclusive for {self.held} windows in a row: "
                          f"{verdict.reason}")
        return self.status

    def _end(self, status: Status, cause: str) -> None:
        self.status, self.cause = status, cause
