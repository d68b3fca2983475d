"""Is the canary's error rate worse than the baseline's by more than a margin? One test.

The question a canary gate asks is one-sided and has a margin: "is p_canary > p_baseline +
margin?" (a non-inferiority question; a canary *better* than the baseline never fails, and a
difference within the margin is accepted). The test:

    H0: p_c - p_b <= margin        H1: p_c - p_b > margin

    z = (p̂_c - p̂_b - margin) / sqrt(p̂_c (1 - p̂_c) / n_c + p̂_b (1 - p̂_b) / n_b)

    p-value = 1 - Φ(z);  worse when p-value < 1 - confidence (z above Φ⁻¹(confidence))

Why this one:

* *Unpooled* variance: the pooled z-test estimates one common rate, which assumes H0 is
  ``p_c == p_b``; with a non-zero margin H0 is ``p_c == p_b + margin``, so each group's rate
  carries its own variance (the Wald form). The restricted maximum likelihood form
  (Farrington-Manning) is more exact but solves a cubic for little gain at the request counts a
  window needs (``min_requests``, 200 by default).
* *Normal approximation*, from the standard library (``statistics.NormalDist``): no new
  dependency. It is poor with very few errors in small groups; ``min_requests`` keeps windows
  large, and the absolute ``error_rate.max`` gate covers what the test is not for.

Edge cases: error counts are clipped to ``0..n`` (HAProxy's econ/eresp can in principle exceed
the responses counted); zero variance (both observed rates 0 or 1) makes the difference exact:
worse if it is above the margin (z = +inf, p = 0), not worse otherwise (z = -inf, p = 1; or 0
and 0.5 when it equals the margin); a group without requests raises ValueError (there is
nothing to test: callers judge that window inconclusive first).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import NamedTuple

_NORMAL = NormalDist()


class Comparison(NamedTuple):
    """The test's outcome: z, its one-sided p-value, and whether the canary is worse."""

    z: float
    p_value: float
    worse: bool


def worse_than_baseline(errors_c: int, n_c: int, errors_b: int, n_b: int, *, margin: float,
                        confidence: float) -> Comparison:
    """Whether the canary's error rate exceeds the baseline's by more than ``margin``, at
    ``confidence`` (one-sided, unpooled two-proportion z-test; see the module).

    Example:
        >>> r = worse_than_baseline(10, 200, 0, 1800, margin=0.005, confidence=0.95)
        >>> round(r.z, 3), r.worse
        (2.92, True)
        >>> worse_than_baseline(1, 200, 5, 1800, margin=0.005, confidence=0.95).worse
        False
    """
    if n_c <= 0 or n_b <= 0:
        raise ValueError(f"no requests to compare (canary {n_c}, baseline {n_b})")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, not {confidence}")
    p_c = min(max(errors_c, 0), n_c) / n_c
    p_b = min(max(errors_b, 0), n_b) / n_b
    diff = p_c - p_b - margin
    se = math.sqrt(p_c * (1 - p_c) / n_c + p_b * (1 - p_b) / n_b)
    # Without variation observed (se 0), the difference is exact: ±inf, or 0 at the margin.
    z = diff / se if se > 0 else math.copysign(math.inf, diff) if diff else 0.0
    p_value = _NORMAL.cdf(-z)  # the upper tail, exact for large z (and 0 or 1 at ±inf)
    return Comparison(z=z, p_value=p_value, worse=p_value < 1 - confidence)
