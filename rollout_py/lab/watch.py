"""Watches every LB of a fleet at a fixed rate and checks the capacity rule over time.

The public names of the watch, re-exported from the modules that hold them:
``watch_sample`` (what one sample of one LB holds, and the round trip that takes it),
``watch_sampler`` (the Watcher: a thread per LB at a fixed rate), ``watch_timeline`` (the
merged timeline and the capacity rule), ``watch_routes`` (blue/green pools: route changes, LBs
disagreeing on the live backend, capacity per backend), ``watch_summary`` (WatchSummary) and
``watch_render`` (the text report of ``rollout lab watch``).

The capacity rule: at any moment, the number of watched servers that are out of rotation on at
least one LB must not exceed ``max_unavailable``. It is checked over a merged timeline: every
successful sample of one LB is combined with the most recent successful sample of every other LB.
On a lab with pools (``rollout lab up --pools 2``) every pool's backend is watched, with every
LB's pools map, and the rule holds per backend where it serves live traffic.

Example:
    >>> from rollout_py.lab.layout import Layout
    >>> layout = Layout.load(Path(".rollout-lab"))  # doctest: +SKIP
    >>> with Watcher.for_lab(layout, max_unavailable=1) as watcher:  # doctest: +SKIP
    ...     ...  # run a rollout
    >>> watcher.summary.violations  # doctest: +SKIP
    ()
"""

from __future__ import annotations

from rollout_py.lab.watch_render import summary_lines
from rollout_py.lab.watch_routes import (
    BackendCapacity,
    Disagreement,
    RouteChange,
    capacity_by_backend,
    disagreements,
    route_changes,
)
from rollout_py.lab.watch_sample import (
    ABSENT,
    Sample,
    ServerSample,
    backend_of,
    query,
    query_pools,
    server_key,
)
from rollout_py.lab.watch_sampler import MAX_HZ, Watcher
from rollout_py.lab.watch_summary import WatchSummary
from rollout_py.lab.watch_timeline import (
    OutInterval,
    Point,
    Violation,
    ViolationWindow,
    merged_timeline,
    over_limit,
)

__all__ = [
    "ABSENT", "MAX_HZ", "BackendCapacity", "Disagreement", "OutInterval", "Point",
    "RouteChange", "Sample", "ServerSample", "Violation", "ViolationWindow", "WatchSummary",
    "Watcher", "backend_of", "capacity_by_backend", "disagreements", "merged_timeline",
    "over_limit", "query", "query_pools", "route_changes", "server_key", "summary_lines",
]
