"""Blue/green over a watch: each LB's map changes, LBs disagreeing on live, capacity per pool.

Everything here comes from the samples, so time is known to one sampling period: a route that
changed between two samples of an LB changed somewhere between them. A window during which the
LBs disagreed on the live backend is reported as observed (from the first merged moment that
disagreed to the first that agreed again) with bounds: at most from the disagreeing LB's
previous sample to the end of the sample that saw agreement again, at least from the end of the
first disagreeing sample to the start of the previous sample of the LB that restored agreement.
A route that flipped and flipped back between two samples is not seen at all.

Example:
    >>> windows = disagreements(points, "live", stopped=t1)  # doctest: +SKIP
    >>> windows[0].max_seconds  # doctest: +SKIP
    0.21
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from rollout_py.lab.watch_sample import Sample, backend_of
from rollout_py.lab.watch_timeline import Point, live_backends, live_routes, serving_out


class RouteChange(NamedTuple):
    """One LB's map entry ``key`` changed between two of its successful samples."""

    lb: str
    key: str  # "live" or "preview"
    before: str | None  # the value in the earlier sample (None: no such entry)
    after: str | None
    last_before: float  # ts of the LB's last good sample that showed ``before``
    at: float  # ts of its first good sample that showed ``after``


class Disagreement(NamedTuple):
    """A span during which the LBs' maps routed live traffic to different backends."""

    start: float  # the first merged moment that disagreed
    end: float  # the first that agreed again (or the end of the watch)
    seconds: float  # end - start, as observed
    min_seconds: float  # lower bound, from the samples around both edges
    max_seconds: float  # upper bound
    routes: tuple[str, ...]  # "lb1 app_green", "lb2 app_blue" at the first moment
    open: bool  # still disagreeing when the watch ended


class BackendCapacity(NamedTuple):
    """One backend over the watch, counting only where it served live traffic."""

    servers: int
    live_seconds: float  # time it was live on at least one LB (merged timeline)
    max_out_while_live: int
    min_in_while_live: int
    violations: int  # merged moments where it had more servers out than the limit


def route_changes(samples: Sequence[Sample], lbs: Sequence[str], keys: Sequence[str]
                  ) -> dict[str, list[RouteChange]]:
    """Per LB, every change of the map entries ``keys`` between its successful samples."""
    result: dict[str, list[RouteChange]] = {lb: [] for lb in lbs}
    last: dict[str, Sample] = {}
    for sample in sorted(samples, key=lambda s: s.ts):
        if not sample.ok:
            continue
        previous = last.get(sample.lb)
        last[sample.lb] = sample
        if previous is None:
            continue
        for key in keys:
            before, after = previous.maps.get(key), sample.maps.get(key)
            if before != after:
                result.setdefault(sample.lb, []).append(
                    RouteChange(sample.lb, key, before, after, previous.ts, sample.ts))
    return result


def _disagree(point: Point, live_key: str) -> bool:
    # An LB whose map lacks the key (or not sampled yet) has no say.
    return len({r for r in live_routes(point, live_key).values() if r is not None}) > 1


def _previous_own(points: Sequence[Point], index: int) -> Sample | None:
    """The sample of the same LB before the one that made ``points[index]``."""
    lb = points[index].lb
    for point in reversed(points[:index]):
        if point.lb == lb:
            return next(v for v in point.views if v.lb == lb)
    return None


def _own(point: Point) -> Sample:
    return next(v for v in point.views if v.lb == point.lb)


def disagreements(points: Sequence[Point], live_key: str, *, stopped: float
                  ) -> list[Disagreement]:
    """The spans of the merged timeline where the LBs' live routes differed (see the module
    docstring for the bounds)."""
    windows: list[Disagreement] = []
    first: int | None = None
    for index, point in enumerate(points):
        if _disagree(point, live_key):
            if first is None:
                first = index
            continue
        if first is not None:
            windows.append(_window(points, live_key, first, index, stopped))
            first = None
    if first is not None:
        windows.append(_window(points, live_key, first, None, stopped))
    return windows


def _window(points: Sequence[Point], live_key: str, first: int, last: int | None,
            stopped: float) -> Disagreement:
    opening = points[first]
    seen_new = _own(opening)
    before = _previous_own(points, first)
    # The change that opened it happened after ``before`` was taken (at its earliest, the start
    # of its round trip), and before ``seen_new`` ended.
    start_min = before.ts - before.rtt / 2 if before is not None else opening.ts
    start_max = seen_new.ts + seen_new.rtt / 2
    if last is None:
        end = end_min = end_max = stopped
    else:
        closing = points[last]
        seen_back = _own(closing)
        previous = _previous_own(points, last)
        end = closing.ts
        end_max = seen_back.ts + seen_back.rtt / 2
        end_min = previous.ts - previous.rtt / 2 if previous is not None else closing.ts
    routes = tuple(f"{lb} {backend}"  # by LB name: not in the order the samples merged
                   for lb, backend in sorted(live_routes(opening, live_key).items()))
    return Disagreement(start=opening.ts, end=end, seconds=round(end - opening.ts, 6),
                        min_seconds=round(max(0.0, end_min - start_max), 6),
                        max_seconds=round(max(0.0, end_max - start_min), 6),
                        routes=routes, open=last is None)


def capacity_by_backend(points: Sequence[Point], backends: Sequence[str],
                        servers: Sequence[str], live_key: str, limit: int | None,
                        stopped: float) -> dict[str, BackendCapacity]:
    """Per backend: how long it served live traffic and its worst moment meanwhile."""
    result = {}
    for backend in backends:
        own = [s for s in servers if backend_of(s, backend) == backend]
        live_seconds, worst, violations = 0.0, 0, 0
        for index, point in enumerate(points):
            if backend not in live_backends(point, live_key, backends):
                continue
            until = points[index + 1].ts if index + 1 < len(points) else stopped
            live_seconds += max(0.0, until - point.ts)
            out = [s for s in serving_out(point, live_key, backend) if s in own]
            worst = max(worst, len(out))
            violations += limit is not None and len(out) > limit
        result[backend] = BackendCapacity(len(own), round(live_seconds, 6), worst,
                                          len(own) - worst, violations)
    return result
