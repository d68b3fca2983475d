"""Watches every LB of a fleet at a fixed rate and checks the capacity rule over time.

Each LB is sampled by a thread of its own (a remote LB reached over SSH answers in tens of
milliseconds, a local socket in well under one; the slow one must not delay the other). A sample
is one round trip carrying ``show servers state <be>`` and ``show stat <be> 4 -1`` together (the
runtime API runs commands separated by ``;`` one after the other on one connection), so an SSH LB
pays for one exec channel per sample, not two.

The capacity rule: at any moment, the number of watched servers that are out of rotation on at
least one LB must not exceed ``max_unavailable``. It is checked over a merged timeline: every
successful sample of one LB is combined with the most recent successful sample of every other LB.

Example:
    >>> from rollout_py.lab.layout import Layout
    >>> layout = Layout.load(Path(".rollout-lab"))  # doctest: +SKIP
    >>> with Watcher.for_lab(layout, max_unavailable=1) as watcher:  # doctest: +SKIP
    ...     ...  # run a rollout
    >>> watcher.summary.violations  # doctest: +SKIP
    ()
"""

from __future__ import annotations

import bisect
import contextlib
import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

from rollout_py.balancer.runtime import (
    RuntimeAPI,
    parse_servers_state,
    parse_stat_csv,
    validate_name,
)
from rollout_py.errors import BalancerError, InputError

if TYPE_CHECKING:
    from rollout_py.lab.layout import Layout

MAX_HZ = 100.0


@dataclass(frozen=True, slots=True)
class ServerSample:
    """One server's state on one LB at one sample."""

    admin: str  # READY, DRAIN or MAINT
    op: str  # RUNNING, STOPPED, STARTING, STOPPING
    weight: int
    in_rotation: bool
    scur: int | None  # current sessions (None if ``show stat`` had no row for it)

    def describe(self) -> str:
        weight0 = self.weight == 0 and self.admin != "ABSENT"
        return f"{self.admin}/{self.op}" + (" weight 0" if weight0 else "")


ABSENT = ServerSample(admin="ABSENT", op="-", weight=0, in_rotation=False, scur=None)


@dataclass(frozen=True, slots=True)
class Sample:
    """One LB's answer at one moment, or the error that stood in for it."""

    lb: str
    ts: float  # wall clock (time.time()): the midpoint of the round trip
    rtt: float  # seconds the round trip took
    servers: Mapping[str, ServerSample] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return {"lb": self.lb, "ts": self.ts, "rtt": round(self.rtt, 6), "error": self.error,
                "servers": {name: asdict(s) for name, s in self.servers.items()}}


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


def _server_view(sample: Sample, server: str) -> ServerSample:
    return sample.servers.get(server, ABSENT)


def _describe(server: str, views: Sequence[Sample]) -> str:
    states = [(v.lb, _server_view(v, server).describe()) for v in views]
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
        out = frozenset(srv for srv in servers
                        if any(not _server_view(v, srv).in_rotation for v in views))
        points.append(Point(sample.ts, sample.lb, out, views))
    return points


def _watched(samples: Sequence[Sample], servers: Sequence[str] | None) -> tuple[str, ...]:
    if servers is not None:
        return tuple(servers)
    return tuple(sorted({name for s in samples for name in s.servers}))


def _out_intervals(points: Sequence[Point], servers: Sequence[str], end: float
                   ) -> dict[str, list[OutInterval]]:
    result: dict[str, list[OutInterval]] = {srv: [] for srv in servers}
    current: dict[str, tuple[float, str]] = {}
    for point in points:
        for srv in servers:
            opened = current.get(srv)
            if srv in point.out:
                state = _describe(srv, point.views)
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


def _merge_spans(spans: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


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

    @classmethod
    def build(cls, samples: Sequence[Sample], *, backend: str = "app",
              lbs: Sequence[str] | None = None, servers: Sequence[str] | None = None,
              max_unavailable: int | None = None, started: float | None = None,
              stopped: float | None = None) -> WatchSummary:
        """Computes the summary of ``samples`` (from a Watcher, or synthetic ones in tests)."""
        records = tuple(sorted(samples, key=lambda s: s.ts))
        names = tuple(lbs) if lbs is not None else tuple(dict.fromkeys(s.lb for s in records))
        watched = _watched(records, servers)
        first = records[0].ts if records else time.time()
        started = first if started is None else started
        # A sample in flight when stop() was called may end after it: the watch ends there.
        stopped = max(started if stopped is None else stopped,
                      records[-1].ts if records else started)
        duration = stopped - started
        points = merged_timeline(records, watched)
        counts = {lb: sum(1 for s in records if s.lb == lb) for lb in names}
        rates = {}
        for lb in names:
            own = [s.ts for s in records if s.lb == lb]
            span = own[-1] - own[0] if len(own) > 1 else 0.0
            # From the LB's own first to last sample: a slow connect or start is not a slow rate.
            rates[lb] = round((len(own) - 1) / span if span > 0 else
                              len(own) / duration if duration > 0 else 0.0, 2)
        violations: tuple[Violation, ...] = ()
        if max_unavailable is not None:
            violations = tuple(Violation(p.ts, tuple(sorted(p.out)), max_unavailable)
                               for p in points if len(p.out) > max_unavailable)
        max_out = max((len(p.out) for p in points), default=0)
        return cls(
            backend=backend, lbs=names, servers=watched, max_unavailable=max_unavailable,
            started=started, stopped=stopped, samples=counts,
            rate_hz=rates,
            errors={lb: sum(1 for s in records if s.lb == lb and not s.ok) for lb in names},
            violations=violations, max_out_of_rotation=max_out,
            min_in_rotation=len(watched) - max_out,
            out_intervals=_out_intervals(points, watched, stopped),
            records=records, timeline=tuple(points),
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
        for start, stop in _merge_spans([(i.start, i.end)
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
        run: list[Point] = []

        def close(end: float) -> None:
            servers = tuple(sorted(set().union(*(p.out for p in run))))
            windows.append(ViolationWindow(run[0].ts, end, servers,
                                           max(len(p.out) for p in run), limit, len(run)))
            run.clear()

        for point in self.timeline:
            if len(point.out) > limit:
                run.append(point)
            elif run:
                close(point.ts)
        if run:
            close(max(self.stopped, run[-1].ts))
        return windows

    # --- output ------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
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

    def write_records(self, path: Path) -> None:
        """Every sample as one JSON line."""
        with path.open("w") as fh:
            for sample in self.records:
                fh.write(json.dumps(sample.to_json()) + "\n")


def query(api: RuntimeAPI, backend: str) -> dict[str, ServerSample]:
    """Both commands in one round trip; raises BalancerError if either answer is unusable."""
    validate_name("backend", backend)
    # Built from a validated name only, so the ';' chains exactly these two commands.
    answer = api.transport.send(f"show servers state {backend};show stat {backend} 4 -1")
    head, sep, tail = answer.partition("\n# pxname")
    if not sep:
        raise BalancerError(f"{api.url}: unexpected answer: {answer.strip()[:200]!r}")
    states = parse_servers_state(head)
    scur = {row.name: row.scur for row in parse_stat_csv("# pxname" + tail)
            if row.proxy == backend}
    return {s.name: ServerSample(admin=s.admin, op=s.op, weight=s.weight,
                                 in_rotation=s.in_rotation, scur=scur.get(s.name))
            for s in states if s.backend == backend}


class Watcher:
    """Samples every LB of a backend at ``hz`` in background threads until stop().

    Example:
        >>> watcher = Watcher([api1, api2], "app", max_unavailable=1).start()  # doctest: +SKIP
        >>> summary = watcher.stop()  # doctest: +SKIP
    """

    def __init__(self, apis: Sequence[RuntimeAPI], backend: str, *,
                 servers: Sequence[str] | None = None, max_unavailable: int | None = None,
                 hz: float = 10.0, names: Sequence[str] | None = None,
                 owns_apis: bool = False) -> None:
        if not apis:
            raise InputError("nothing to watch: no LB")
        if not 0 < hz <= MAX_HZ:
            raise InputError(f"hz must be between 0 and {MAX_HZ:g}, not {hz}")
        if max_unavailable is not None and max_unavailable < 0:
            raise InputError(f"max_unavailable must be 0 or more, not {max_unavailable}")
        names = list(names) if names is not None else [api.url for api in apis]
        if len(names) != len(apis) or len(set(names)) != len(names):
            raise InputError("every LB needs a distinct name")
        self.apis, self.names = list(apis), names
        self.backend = validate_name("backend", backend)
        self.servers = list(servers) if servers is not None else None
        self.max_unavailable, self.hz = max_unavailable, hz
        self.summary: WatchSummary | None = None
        self._owns_apis = owns_apis
        self._samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = 0.0

    @classmethod
    def for_lab(cls, layout: Layout, *, max_unavailable: int | None = None,
                hz: float = 10.0) -> Watcher:
        """Every LB of a lab (lb2 over SSH, one connection kept for the whole watch)."""
        from rollout_py.lab import haproxy
        from rollout_py.lab import lab as lab_mod

        return cls([lab_mod.lb_api(layout, lb) for lb in layout.lbs], haproxy.BACKEND,
                   servers=[h.name for h in layout.app_hosts], max_unavailable=max_unavailable,
                   hz=hz, names=[lb.name for lb in layout.lbs], owns_apis=True)

    def start(self) -> Watcher:
        if self._threads:
            raise RuntimeError("this Watcher was already started")
        self._started = time.time()
        for api, name in zip(self.apis, self.names, strict=True):
            thread = threading.Thread(target=self._run, args=(api, name), daemon=True,
                                      name=f"watch-{name}")
            self._threads.append(thread)
            thread.start()
        return self

    def _sample(self, api: RuntimeAPI, name: str) -> Sample:
        t0 = time.time()
        try:
            servers = query(api, self.backend)
        except Exception as exc:  # a sample never raises: the error is the sample
            t1 = time.time()
            return Sample(name, (t0 + t1) / 2, t1 - t0, {}, f"{type(exc).__name__}: {exc}")
        t1 = time.time()
        return Sample(name, (t0 + t1) / 2, t1 - t0, servers)

    def _run(self, api: RuntimeAPI, name: str) -> None:
        # A first query opens the connection (0.45 s for SSH): kept only if it failed, since a
        # sample's timestamp is the midpoint of its round trip and a connect would blur it.
        first = self._sample(api, name)
        with self._lock:
            if self.summary is not None:
                return
            if not first.ok:
                self._samples.append(first)
        interval = 1.0 / self.hz
        due = time.monotonic()
        while not self._stopping.is_set():
            sample = self._sample(api, name)
            with self._lock:
                if self.summary is not None:
                    return  # stop() gave up waiting for this thread; its summary is final
                self._samples.append(sample)
            due += interval
            now = time.monotonic()
            if due < now:  # the sample overran its slot: go on at once, never catch up in bursts
                due = now
            self._stopping.wait(due - now)

    def samples(self) -> list[Sample]:
        """The samples so far (a copy; safe while running)."""
        with self._lock:
            return list(self._samples)

    def stop(self, join_timeout: float = 15.0) -> WatchSummary:
        """Stops sampling and returns the summary (the same one if called again)."""
        if self.summary is not None:
            return self.summary
        self._stopping.set()
        stopped = time.time()
        deadline = time.monotonic() + join_timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self.summary = WatchSummary.build(
                self._samples, backend=self.backend, lbs=self.names, servers=self.servers,
                max_unavailable=self.max_unavailable, started=self._started or stopped,
                stopped=stopped)
        if self._owns_apis:
            for api in self.apis:
                # Closing is best effort; the summary is what matters.
                with contextlib.suppress(Exception):
                    api.close()
        return self.summary

    def __enter__(self) -> Watcher:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
