"""What a watch saw, from its samples: rates, errors, capacity, time out of rotation, routes.

The capacity rule and the merged timeline are ``rollout_py.lab.watch_timeline``; for blue/green
pools (``live_key`` set), the route changes, the LBs' disagreement on the live backend and the
capacity per backend are ``rollout_py.lab.watch_routes``.

Example:
    >>> summary = WatchSummary.build(samples, max_unavailable=0)  # doctest: +SKIP
    >>> summary.violations  # doctest: +SKIP
    ()
"""

from __future__ import annotations

import bisect
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollout_py.lab.watch_routes import (
    BackendCapacity,
    Disagreement,
    RouteChange,
    capacity_by_backend,
    disagreements,
    route_changes,
)
from rollout_py.lab.watch_sample import Sample
from rollout_py.lab.watch_timeline import (
    OutInterval,
    Point,
    Violation,
    ViolationWindow,
    merge_spans,
    merged_timeline,
    out_intervals,
    over_limit,
    settled,
    watched,
)

# The map entries a blue/green watch reports changes of (the lab's pools map).
ROUTE_KEYS = ("live", "preview")
BOUNDS_NOTE = ("from the samples: the LBs' live routes are known at each sample only, so each "
               "window is exact to one sampling period (plus a round trip) at either edge; "
               "max_seconds is an upper bound, min_seconds a lower one")


@dataclass(frozen=True)
class WatchSummary:
    """What a watch saw: sampling rates, errors, capacity violations, time out of rotation."""

    backend: str
    lbs: tuple[str, ...]
    servers: tuple[str, ...]  # the watched servers
    max_unavailable: int | None
    started: float  # wall clock
    stopped: float
    samples: dict[str, int]  # per LB, error samples included
    rate_hz: dict[str, float]  # per LB: intervals / time between its first and last sample
    errors: dict[str, int]  # per LB
    violations: tuple[Violation, ...]
    max_out_of_rotation: int
    min_in_rotation: int  # watched servers in rotation on every LB, at the worst moment
    out_intervals: dict[str, list[OutInterval]]
    records: tuple[Sample, ...] = field(default=(), repr=False)
    timeline: tuple[Point, ...] = field(default=(), repr=False)
    proven: tuple[Point, ...] = field(default=(), repr=False)  # settled(timeline): capacity
    # Blue/green pools only (``live_key`` set): servers are ``backend/server``.
    backends: tuple[str, ...] = ()
    live_key: str | None = None
    route_changes: dict[str, list[RouteChange]] = field(default_factory=dict)
    disagreements: tuple[Disagreement, ...] = ()
    capacity: dict[str, BackendCapacity] = field(default_factory=dict)

    @classmethod
    def build(cls, samples: Sequence[Sample], *, backend: str = "app",
              lbs: Sequence[str] | None = None, servers: Sequence[str] | None = None,
              max_unavailable: int | None = None, started: float | None = None,
              stopped: float | None = None, backends: Sequence[str] | None = None,
              live_key: str | None = None) -> WatchSummary:
        """Computes the summary of ``samples`` (from a Watcher, or synthetic ones in tests).

        With ``live_key`` (blue/green pools, servers named ``backend/server``), capacity counts
        per backend where it serves live traffic, and routes are reported."""
        records = tuple(sorted(samples, key=lambda s: s.ts))
        names = tuple(lbs) if lbs is not None else tuple(dict.fromkeys(s.lb for s in records))
        servers_watched = watched(records, servers)
        first = records[0].ts if records else time.time()
        started = first if started is None else started
        # A sample in flight when stop() was called may end after it: the watch ends there.
        stopped = max(started if stopped is None else stopped,
                      records[-1].ts if records else started)
        duration = stopped - started
        points = merged_timeline(records, servers_watched)
        counts = {lb: sum(1 for s in records if s.lb == lb) for lb in names}
        rates = {}
        for lb in names:
            own = [s.ts for s in records if s.lb == lb]
            span = own[-1] - own[0] if len(own) > 1 else 0.0
            # From the LB's own first to last sample: a slow connect or start is not a slow rate.
            rates[lb] = round((len(own) - 1) / span if span > 0 else
                              len(own) / duration if duration > 0 else 0.0, 2)
        proven = settled(points, records, servers_watched)  # what capacity is judged on
        violations: tuple[Violation, ...] = ()
        if max_unavailable is not None:
            violations = tuple(
                Violation(p.ts, tuple(sorted(bad)), max_unavailable) for p in proven
                if (bad := over_limit(p, max_unavailable, live_key, backend)))
        max_out = max((len(p.out) for p in points), default=0)
        pools: dict[str, Any] = {}
        if live_key is not None:
            pool_backends = tuple(backends) if backends is not None else (backend,)
            pools = {
                "backends": pool_backends, "live_key": live_key,
                "route_changes": route_changes(records, names, ROUTE_KEYS),
                "disagreements": tuple(disagreements(points, live_key, stopped=stopped)),
                "capacity": capacity_by_backend(proven, pool_backends, servers_watched,
                                                live_key, max_unavailable, stopped),
            }
        return cls(
            backend=backend, lbs=names, servers=servers_watched,
            max_unavailable=max_unavailable, started=started, stopped=stopped, samples=counts,
            rate_hz=rates,
            errors={lb: sum(1 for s in records if s.lb == lb and not s.ok) for lb in names},
            violations=violations, max_out_of_rotation=max_out,
            min_in_rotation=len(servers_watched) - max_out,
            out_intervals=out_intervals(points, servers_watched, stopped),
            records=records, timeline=tuple(points), proven=tuple(proven), **pools,
        )

    # --- queries -----------------------------------------------------------------------
    def out_of_rotation_at(self, ts: float) -> set[str]:
        """The watched servers out of rotation (on any LB) as last known at ``ts``."""
        index = bisect.bisect_right([p.ts for p in self.timeline], ts) - 1
        return set(self.timeline[index].out) if index >= 0 else set()

    def total_out_seconds(self, server: str) -> float:
        return sum(i.end - i.start for i in self.out_intervals.get(server, []))

    def in_rotation_intervals(self, server: str) -> list[tuple[float, float]]:
        """Spans during which ``server`` was in rotation on every LB, from the first merged
        sample (before it nothing was known) to the end of the watch."""
        if not self.timeline:
            return []
        begin, end = self.timeline[0].ts, self.stopped
        spans = []
        cursor = begin
        for start, stop in merge_spans([(i.start, i.end)
                                        for i in self.out_intervals.get(server, [])]):
            if start > cursor:
                spans.append((cursor, start))
            cursor = max(cursor, stop)
        if end > cursor:
            spans.append((cursor, end))
        return spans

    def violation_windows(self) -> list[ViolationWindow]:
        """Runs of consecutive violating moments; each ends at the next compliant moment (or
        at the end of the watch)."""
        if self.max_unavailable is None:
            return []
        limit = self.max_unavailable
        windows: list[ViolationWindow] = []
        run: list[frozenset[str]] = []
        run_start = last_ts = 0.0

        def close(end: float) -> None:
            servers = tuple(sorted(set().union(*run)))
            windows.append(ViolationWindow(run_start, end, servers,
                                           max(len(out) for out in run), limit, len(run)))
            run.clear()

        for point in self.proven:
            bad = over_limit(point, limit, self.live_key, self.backend)
            if bad:
                if not run:
                    run_start = point.ts
                run.append(bad)
                last_ts = point.ts
            elif run:
                close(point.ts)
        if run:
            close(max(self.stopped, last_ts))
        return windows

    def live_at(self, lb: str, ts: float) -> str | None:
        """The backend ``lb``'s map routed live traffic to, as last known at ``ts``."""
        if self.live_key is None:
            return None
        known = [s for s in self.records if s.lb == lb and s.ok and s.ts <= ts]
        return known[-1].maps.get(self.live_key) if known else None

    def disagreement_seconds(self) -> tuple[float, float, float]:
        """(observed, lower bound, upper bound) of the time the LBs disagreed on live."""
        return (round(sum(d.seconds for d in self.disagreements), 6),
                round(sum(d.min_seconds for d in self.disagreements), 6),
                round(sum(d.max_seconds for d in self.disagreements), 6))

    # --- output ------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        data = {
            "backend": self.backend, "lbs": list(self.lbs), "servers": list(self.servers),
            "max_unavailable": self.max_unavailable, "started": self.started,
            "stopped": self.stopped, "duration": round(self.stopped - self.started, 3),
            "samples": self.samples, "rate_hz": self.rate_hz, "errors": self.errors,
            "max_out_of_rotation": self.max_out_of_rotation,
            "min_in_rotation": self.min_in_rotation,
            "violation_count": len(self.violations),
            "violation_windows": [w._asdict() | {"out_of_rotation": list(w.out_of_rotation)}
                                  for w in self.violation_windows()],
            "out_seconds": {srv: round(self.total_out_seconds(srv), 3) for srv in self.servers},
            "out_intervals": {srv: [i._asdict() for i in spans]
                              for srv, spans in self.out_intervals.items()},
        }
        if self.live_key is not None:
            data |= self._pools_json()
        return data

    def _pools_json(self) -> dict[str, Any]:
        observed, low, high = self.disagreement_seconds()
        routes = {}
        for lb in self.lbs:
            good = [s for s in self.records if s.lb == lb and s.ok]
            routes[lb] = {"first": dict(good[0].maps) if good else None,
                          "last": dict(good[-1].maps) if good else None}
        return {
            "backends": list(self.backends), "live_key": self.live_key, "routes": routes,
            "route_changes": {lb: [c._asdict() for c in changes]
                              for lb, changes in self.route_changes.items()},
            "live_disagreement": {
                "seconds": observed, "min_seconds": low, "max_seconds": high,
                "windows": [d._asdict() | {"routes": list(d.routes)}
                            for d in self.disagreements],
                "bounds": BOUNDS_NOTE,
            },
            "capacity": {b: c._asdict() for b, c in self.capacity.items()},
        }

    def write_records(self, path: Path) -> None:
        """Every sample as one JSON line."""
        with path.open("w") as fh:
            for sample in self.records:
                fh.write(json.dumps(sample.to_json()) + "\n")
