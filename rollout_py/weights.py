"""Traffic shares as HAProxy weights: pure arithmetic over one LB's current weights.

HAProxy spreads a backend's requests over the servers in rotation in proportion to their
weights (0..256). To give the canary servers a share ``s`` of the requests, the canary servers
get one weight ``c`` each and every other server in rotation keeps its weight times ``k``, so
the others' proportions among themselves do not change: ``n*c / (n*c + k*W) = s``. Small
weights leave little room (five servers of weight 1 cannot give one canary 10 %: 1/6 is
16.7 %), so ``k`` is searched up to the 256 limit for the closest share.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rollout_py.errors import InputError

MAX_WEIGHT = 256


@dataclass(frozen=True, slots=True)
class Shaped:
    """The weights to set on one LB and the share they give the canary servers."""

    weights: dict[str, int]  # server -> weight (every server in rotation)
    achieved: float


def shape(current: Mapping[str, int], canary: Sequence[str], share: float) -> Shaped:
    """Weights that give ``canary`` (servers in rotation on this LB) ``share`` of requests.

    ``current`` holds the weight of every server in rotation on the LB, canary included.

    Example:
        >>> shape({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1, "f": 1}, ["a"], 0.10)
        Shaped(weights={'a': 5, 'b': 9, 'c': 9, 'd': 9, 'e': 9, 'f': 9}, achieved=0.1)
    """
    if not 0 < share < 1:
        raise InputError(f"traffic share must be between 0% and 100%, not {share * 100:g}%")
    canary = [s for s in canary if s in current]
    others = {s: w for s, w in current.items() if s not in canary}
    if not canary:
        raise InputError("no canary server is in rotation on this LB")
    total = sum(others.values())
    if total == 0:
        raise InputError("no other server with a weight is in rotation: no share to give")
    best: tuple[float, int, int] | None = None  # (error, k, c)
    for k in range(1, MAX_WEIGHT // max(others.values()) + 1):
        c = round(share / (1 - share) * k * total / len(canary))
        c = min(max(c, 1), MAX_WEIGHT)
        got = len(canary) * c / (len(canary) * c + k * total)
        err = abs(got - share)
        if best is None or err < best[0] - 1e-12:
            best = (err, k, c)
    assert best is not None
    _, k, c = best
    weights = {s: c for s in canary} | {s: w * k for s, w in others.items()}
    got = len(canary) * c / (len(canary) * c + k * total)
    return Shaped(dict(sorted(weights.items())), round(got, 6))
