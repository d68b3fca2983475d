"""Continuous health: once a batch is back in rotation its hosts stay under probes and, with an
analysis section, under per-server analysis windows against the old servers, until the deploy
ends. A host that turns bad is named with the probe or gate that caught it.

The watch only decides; the engine acts (it cancels the running step and rolls back per
``on_failure``). Inconclusive windows are recorded, never a failure: the watch fails on
evidence (``failure_limit`` failed windows in a row for one server, or ``health.consecutive``
failed probe rounds for one host).

A round probes at most ``per_round`` hosts, taking turns (a host's failures count over its own
turns), so the controller's work per round does not grow with the fleet: at 100 hosts back in
rotation and 10 a round, each host is probed every 10th round. The analysis windows judge
every watched server each window (one ``show stat`` per LB, whatever the fleet's size).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence

from rollout_py import events as ev
from rollout_py.analysis.counters import sample, window_deltas
from rollout_py.analysis.judge import judge_each
from rollout_py.balancer.fleet import Balancer
from rollout_py.errors import BalancerError, JournalError
from rollout_py.planner import PlannedBatch
from rollout_py.probes import Check, Prober
from rollout_py.saga import PromQuery
from rollout_py.spec_canary import AnalysisSpec

Emit = Callable[..., ev.Event]


class HealthWatch:
    """A thread over the batches handed to it with ``add``; ``stop`` ends it.

    Example:
        >>> watch = HealthWatch(balancer=..., prober=..., checks=..., ...)  # doctest: +SKIP
        >>> watch.add(batch); watch.start()  # doctest: +SKIP
    """

    def __init__(self, *, balancer: Balancer, prober: Prober,
                 checks: Callable[[str], list[Check]], servers: Mapping[str, str],
                 baseline: Callable[[Sequence[str]], tuple[str, ...]],
                 emit: Emit, on_fail: Callable[[tuple[str, ...], str], None],
                 interval: float, consecutive: int, analysis: AnalysisSpec | None,
                 prometheus: PromQuery | None = None, ignore_metrics: bool = False,
                 per_round: int = 10) -> None:
        if per_round < 1:
            raise ValueError(f"per_round must be at least 1, got {per_round}")
        self.balancer, self.prober, self.checks = balancer, prober, checks
        self.servers, self.baseline, self.emit, self.on_fail = servers, baseline, emit, on_fail
        self.interval, self.consecutive, self.analysis = interval, consecutive, analysis
        self.prometheus, self.ignore_metrics = prometheus, ignore_metrics
        self.per_round = per_round
        self._next = 0  # where the next round's turn starts in _hosts
        self._hosts: list[str] = []
        self._batch_of: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._probe_fails: dict[str, int] = {}
        self._gate_fails: dict[str, int] = {}
        self._window = 0
        self.failed: tuple[tuple[str, ...], str] | None = None

    def add(self, batch: PlannedBatch) -> None:
        with self._lock:
            for host in batch.hosts:
                if host not in self._batch_of:
                    self._hosts.append(host)
                    self._batch_of[host] = batch.index
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="health-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        prev = None
        while not self._stop.wait(self.interval) and self.failed is None:
            with self._lock:
                hosts = list(self._hosts)
            try:
                self._probe(self._turn(hosts))
                if self.failed is None and self.analysis is not None \
                        and self.analysis.continuous:
                    prev = self._judge(hosts, prev)
            except JournalError:
                return  # the engine meets the journal failure itself
            except BalancerError:
                prev = None  # an LB that does not answer: the engine's steps meet it

    def _turn(self, hosts: Sequence[str]) -> list[str]:
        """The hosts this round probes: all of them, or the next ``per_round`` in turn."""
        if len(hosts) <= self.per_round:
            return list(hosts)
        start = self._next % len(hosts)
        self._next = start + self.per_round
        return [hosts[(start + i) % len(hosts)] for i in range(self.per_round)]

    def _probe(self, hosts: Sequence[str]) -> None:
        for host in hosts:
            failure = next((f for c in self.checks(host)
                            if (f := self.prober.run(host, c)) is not None), None)
            if failure is None:
                self._probe_fails[host] = 0
                continue
            n = self._probe_fails[host] = self._probe_fails.get(host, 0) + 1
            self.emit(ev.ProbeFailed, batch=self._batch_of[host], host=host, phase="watch",
                      probe=failure.split(":", 1)[0], detail=failure)
            if n >= self.consecutive:
                self._fail((host,), f"continuous health: {host} (batch "
                           f"{self._batch_of[host]}) failed its probe {n} times in a row: "
                           f"{failure}")
                return

    def _judge(self, hosts: Sequence[str], prev: object) -> object:
        assert self.analysis is not None
        judged = tuple(self.servers[h] for h in hosts)
        baseline = self.baseline(judged)
        # Every fleet server, every time: a batch joining the watch must not void a window.
        fleet = list(self.servers.values())
        cur = sample(self.balancer.stats(fleet))
        if prev is None:
            return cur
        deltas = window_deltas(prev, cur, fleet)  # type: ignore[arg-type]
        self._window += 1
        verdicts = judge_each(deltas, judged, baseline, self.analysis,
                              prometheus=self.prometheus,
                              ignore_metrics_unavailable=self.ignore_metrics)
        host_of = {s: h for h, s in self.servers.items()}
        for server, verdict in verdicts.items():
            host = host_of[server]
            self.emit(ev.AnalysisWindow, batch=self._batch_of[host], step=0, purpose="watch",
                      window=self._window, canary=(server,), baseline=baseline,
                      **verdict.event_fields())
            if verdict.verdict != "fail":
                if verdict.verdict == "pass":
                    self._gate_fails[server] = 0
                continue
            n = self._gate_fails[server] = self._gate_fails.get(server, 0) + 1
            if n >= self.analysis.failure_limit:
                self._fail((host,), f"continuous analysis: {host} (batch "
                           f"{self._batch_of[host]}) failed {n} window(s): {verdict.reason}")
                break
        return cur

    def _fail(self, hosts: tuple[str, ...], cause: str) -> None:
        self.failed = (hosts, cause)
        with contextlib.suppress(JournalError):
            self.emit(ev.AnalysisFinished, batch=self._batch_of[hosts[0]], step=0,
                      purpose="watch", verdict="fail", cause=cause, hosts=hosts)
        self.on_fail(hosts, cause)
