"""Samples every LB in a thread of its own at a fixed rate until stopped (and once more then),
then summarises.

Each LB is sampled by a thread of its own (a remote LB reached over SSH answers in tens of
milliseconds, a local socket in well under one; the slow one must not delay the other); what one
sample holds and how it is taken is ``rollout_py.lab.watch_sample``.

Example:
    >>> watcher = Watcher([api1, api2], "app", max_unavailable=1).start()  # doctest: +SKIP
    >>> summary = watcher.stop()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from rollout_py.balancer.maps import validate_map_ref
from rollout_py.balancer.runtime import RuntimeAPI, validate_name
from rollout_py.errors import InputError
from rollout_py.lab.watch_sample import Sample, query, query_pools, server_key
from rollout_py.lab.watch_summary import WatchSummary

if TYPE_CHECKING:
    from rollout_py.lab.layout import Layout

MAX_HZ = 100.0


class Watcher:
    """Samples every LB of a backend (or several, with a route map) at ``hz`` in background
    threads until stop().

    Example:
        >>> watcher = Watcher([api1, api2], "app", max_unavailable=1).start()  # doctest: +SKIP
        >>> summary = watcher.stop()  # doctest: +SKIP
    """

    def __init__(self, apis: Sequence[RuntimeAPI], backend: str | Sequence[str], *,
                 servers: Sequence[str] | None = None, max_unavailable: int | None = None,
                 hz: float = 10.0, names: Sequence[str] | None = None,
                 owns_apis: bool = False, maps: Sequence[str | None] | None = None,
                 live_key: str = "live") -> None:
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
        backends = [backend] if isinstance(backend, str) else list(backend)
        if not backends or len(set(backends)) != len(backends):
            raise InputError("watch one backend or several distinct ones")
        self.backends = tuple(validate_name("backend", b) for b in backends)
        self.backend = self.backends[0] if len(self.backends) == 1 else ",".join(self.backends)
        if maps is not None and len(maps) != len(apis):
            raise InputError("give one map per LB (or none)")
        self.maps = [validate_map_ref(m) if m is not None else None
                     for m in (maps or [None] * len(apis))]
        # Blue/green: the map key that routes live traffic; capacity then counts per backend.
        self.live_key = live_key if maps is not None else None
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
        """Every LB of a lab (lb2 over SSH, one connection kept for the whole watch); with
        pools, every pool's backend and every LB's pools map."""
        from rollout_py.lab import haproxy, pools
        from rollout_py.lab import lab as lab_mod

        apis = [lab_mod.lb_api(layout, lb) for lb in layout.lbs]
        names = [lb.name for lb in layout.lbs]
        if not pools.enabled(layout):
            return cls(apis, haproxy.BACKEND, servers=[h.name for h in layout.app_hosts],
                       max_unavailable=max_unavailable, hz=hz, names=names, owns_apis=True)
        return cls(apis, [p.backend for p in layout.pools],
                   servers=[server_key(p.backend, h) for p in layout.pools for h in p.hosts],
                   max_unavailable=max_unavailable, hz=hz, names=names, owns_apis=True,
                   maps=[lb.map_path for lb in layout.lbs], live_key=pools.LIVE_KEY)

    def start(self) -> Watcher:
        if self._threads:
            raise RuntimeError("this Watcher was already started")
        self._started = time.time()
        for api, name, map_ref in zip(self.apis, self.names, self.maps, strict=True):
            thread = threading.Thread(target=self._run, args=(api, name, map_ref), daemon=True,
                                      name=f"watch-{name}")
            self._threads.append(thread)
            thread.start()
        return self

    def _sample(self, api: RuntimeAPI, name: str, map_ref: str | None = None) -> Sample:
        t0 = time.time()
        maps: dict[str, str] = {}
        try:
            if len(self.backends) == 1 and map_ref is None:
                servers = query(api, self.backends[0])
            else:
                servers, maps = query_pools(api, self.backends, map_ref)
        except Exception as exc:  # a sample never raises: the error is the sample
            t1 = time.time()
            return Sample(name, (t0 + t1) / 2, t1 - t0, {}, f"{type(exc).__name__}: {exc}")
        t1 = time.time()
        return Sample(name, (t0 + t1) / 2, t1 - t0, servers, maps=maps)

    def _run(self, api: RuntimeAPI, name: str, map_ref: str | None = None) -> None:
        # A first query opens the connection (0.45 s for SSH): kept only if it failed, since a
        # sample's timestamp is the midpoint of its round trip and a connect would blur it.
        first = self._sample(api, name, map_ref)
        with self._lock:
            if self.summary is not None:
                return
            if not first.ok:
                self._samples.append(first)
        interval = 1.0 / self.hz
        due = time.monotonic()
        while not self._stopping.is_set():
            sample = self._sample(api, name, map_ref)
            with self._lock:
                if self.summary is not None:
                    return  # stop() gave up waiting for this thread; its summary is final
                self._samples.append(sample)
            due += interval
            now = time.monotonic()
            if due < now:  # the sample overran its slot: go on at once, never catch up in bursts
                due = now
            self._stopping.wait(due - now)
        # One more once stop() is called: every earlier sample of this LB then has a next one,
        # which is what shows a server it saw out was back by a later moment of another LB
        # (watch_timeline.settled). Without it, a watch stopped as its run ended (a kill -9)
        # kept this LB's last view, up to a period old, as proof against the other's.
        final = self._sample(api, name, map_ref)
        with self._lock:
            if self.summary is None:
                self._samples.append(final)

    def samples(self) -> list[Sample]:
        """The samples so far (a copy; safe while running)."""
        with self._lock:
            return list(self._samples)

    def stop(self, join_timeout: float = 15.0) -> WatchSummary:
        """Stops sampling and returns the summary (the same one if called again)."""
        if self.summary is not None:
            return self.summary
        self._stopping.set()
        deadline = time.monotonic() + join_timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stopped = time.time()  # after each LB's closing sample
        with self._lock:
            self.summary = WatchSummary.build(
                self._samples, backend=self.backend, lbs=self.names, servers=self.servers,
                max_unavailable=self.max_unavailable, started=self._started or stopped,
                stopped=stopped, backends=self.backends, live_key=self.live_key)
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
