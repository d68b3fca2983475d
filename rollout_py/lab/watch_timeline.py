"""The merged timeline of a watch's samples and the capacity rule checked over it.

Every successful sample of one LB is combined with the most recent successful sample of every
other LB (a Point). The capacity rule: at any moment, the number of watched servers out of
rotation must not exceed ``max_unavailable``. With one backend, a server counts as out if it is
out on at least one LB. With blue/green pools (a ``live_key``), the rule holds per backend and
only where the backend serves live traffic: a server counts if it is out on an LB whose map
routes ``live`` to its backend (an LB whose live route is not known counts for every backend),
and a backend live on no LB (the idle pool) may be all out.

A violation must be proven by the samples (``settled``): another LB's latest sample is up to
one sampling period old, so a server it shows out counts as out at a point only if that LB's
next sample shows it out too (otherwise it may have come back before the point: an enable and
the next batch's MAINT can be a few ms apart, far less than a period). Any overlap that lasts
a sampling period is still caught.

Example:
    >>> points = merged_timeline(samples, ["app01", "app02"])  # doctest: +SKIP
    >>> over_limit(points[-1], 1, None)  # doctest: +SKIP
    frozenset()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

from rollout_py.lab.watch_sample import ABSENT, Sample, ServerSample, backend_of
from rollout_py.report_spans import merged


class Violation(NamedTuple):
    """A moment of the merged timeline where more servers were out than allowed."""

    ts: float
    out_of_rotation: tuple[str, ...]
    limit: int


class ViolationWindow(NamedTuple):
    """Consecutive violating moments: from the first one to the moment the breach ended."""

    start: float
    end: float
    out_of_rotation: tuple[str, ...]  # every server out at some point of the window
    max_out: int
    limit: int
    points: int


class OutInterval(NamedTuple):
    """A span during which a server was out of rotation, with the state that kept it out."""

    start: float
    end: float
    state: str  # "DRAIN/RUNNING", or "lb1 DRAIN/RUNNING, lb2 READY/RUNNING" if the LBs differ


@dataclass(frozen=True, slots=True)
class Point:
    """One moment of the merged timeline: the newest known sample of every LB."""

    ts: float
    lb: str  # the LB whose sample made this point
    out: frozenset[str]
    views: tuple[Sample, ...]  # the latest successful sample of every LB known so far


def server_view(sample: Sample, server: str) -> ServerSample:
    return sample.servers.get(server, ABSENT)


def describe(server: str, views: Sequence[Sample]) -> str:
    states = [(v.lb, server_view(v, server).describe()) for v in views]
    if len({s for _, s in states}) == 1:
        return states[0][1]
    return ", ".join(f"{lb} {s}" for lb, s in states)


def merged_timeline(samples: Sequence[Sample], servers: Sequence[str]) -> list[Point]:
    """Every successful sample combined with the latest successful sample of every other LB.

    A server counts as out of rotation if any LB shows it out (or does not list it). Error
    samples add no point; that LB's last good sample stands until a new one arrives.
    """
    latest: dict[str, Sample] = {}
    points = []
    for sample in sorted(samples, key=lambda s: s.ts):
        if not sample.ok:
            continue
        latest[sample.lb] = sample
        views = tuple(latest.values())
        points.append(Point(sample.ts, sample.lb, out_in(views, servers), views))
    return points


def out_in(views: Sequence[Sample], servers: Sequence[str]) -> frozenset[str]:
    """The servers out of rotation on at least one of ``views`` (or missing from one)."""
    return frozenset(srv for srv in servers
                     if any(not server_view(v, srv).in_rotation for v in views))


def settled(points: Sequence[Point], samples: Sequence[Sample], servers: Sequence[str]
            ) -> list[Point]:
    """The points as the samples prove them: in each other LB's view, a server shown out of
    rotation that the LB's next sample shows in rotation gets its next state (it may have been
    back by then); the point's own sample, and an LB's last one, stand as they are."""
    after: dict[int, Sample] = {}
    last: dict[str, Sample] = {}
    for sample in sorted(samples, key=lambda s: s.ts):
        if sample.ok:
            if sample.lb in last:
                after[id(last[sample.lb])] = sample
            last[sample.lb] = sample
    out = []
    for point in points:
        views = tuple(v if v.lb == point.lb or id(v) not in after else
                      _benefit_of_doubt(v, after[id(v)]) for v in point.views)
        out.append(Point(point.ts, point.lb, out_in(views, servers), views))
    return out


def _benefit_of_doubt(view: Sample, following: Sample) -> Sample:
    changed = {srv: later for srv, later in following.servers.items()
               if later.in_rotation and not server_view(view, srv).in_rotation}
    return replace(view, servers={**view.servers, **changed}) if changed else view


def live_routes(point: Point, live_key: str) -> dict[str, str | None]:
    """Each LB's live backend as last known at ``point`` (None: its map has no such entry)."""
    return {v.lb: v.maps.get(live_key) for v in point.views}


def serving_out(point: Point, live_key: str | None, default: str) -> frozenset[str]:
    """The servers out of rotation where they matter: on any LB with one backend; with pools,
    on an LB whose live route is their backend (or unknown)."""
    if live_key is None:
        return point.out
    return frozenset(
        srv for srv in point.out
        if any(not server_view(v, srv).in_rotation
               and v.maps.get(live_key) in (None, backend_of(srv, default))
               for v in point.views))


def live_backends(point: Point, live_key: str | None, backends: Sequence[str]) -> set[str]:
    """The backends serving live traffic on at least one LB at ``point`` (every backend if
    some LB's live route is unknown, or without pools)."""
    if live_key is None:
        return set(backends)
    routes = live_routes(point, live_key).values()
    return set(backends) if None in routes else {r for r in routes if r is not None}


def over_limit(point: Point, limit: int, live_key: str | None, default: str = "") -> frozenset[
        str]:
    """The servers that make ``point`` break the capacity rule (empty if it does not)."""
    counted = serving_out(point, live_key, default)
    if live_key is None:
        return counted if len(counted) > limit else frozenset()
    by_backend: dict[str, set[str]] = {}
    for srv in counted:
        by_backend.setdefault(backend_of(srv, default), set()).add(srv)
    return frozenset(srv for group in by_backend.values() if len(group) > limit
                     for srv in group)


def watched(samples: Sequence[Sample], servers: Sequence[str] | None) -> tuple[str, ...]:
    if servers is not None:
        return tuple(servers)
    return tuple(sorted({name for s in samples for name in s.servers}))


def out_intervals(points: Sequence[Point], servers: Sequence[str], end: float
                  ) -> dict[str, list[OutInterval]]:
    """Per server, the spans it was out of rotation on some LB, split where its state changed."""
    result: dict[str, list[OutInterval]] = {srv: [] for srv in servers}
    current: dict[str, tuple[float, str]] = {}
    for point in points:
        for srv in servers:
            opened = current.get(srv)
            if srv in point.out:
                state = describe(srv, point.views)
                if opened is None:
                    current[srv] = (point.ts, state)
                elif opened[1] != state:
                    result[srv].append(OutInterval(opened[0], point.ts, opened[1]))
                    current[srv] = (point.ts, state)
            elif opened is not None:
                result[srv].append(OutInterval(opened[0], point.ts, opened[1]))
                del current[srv]
    for srv, (start, state) in current.items():
        result[srv].append(OutInterval(start, max(start, end), state))
    return result


def merge_spans(spans: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Overlapping or touching spans joined, in order (the report's union of intervals)."""
    return merged(spans)
