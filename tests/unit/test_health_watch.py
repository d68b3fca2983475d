"""The continuous watch probes a bounded number of hosts per round, taking turns: every host gets
its turn, and a host that turns bad is still caught on its own consecutive failures."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from rollout_py import events as ev
from rollout_py.health_watch import HealthWatch
from rollout_py.planner import PlannedBatch
from rollout_py.probes import Check
from rollout_py.spec import HttpProbe

CHECK = Check("http", "http://x/health", HttpProbe(http="http://x/health"))


class CountingProber:
    """Records the hosts of each round; ``bad`` hosts fail every probe. Stops the watch (by
    setting ``enough``) once ``rounds`` rounds were seen."""

    def __init__(self, hosts: int, rounds: int, bad: Sequence[str] = ()) -> None:
        self.hosts, self.rounds, self.bad = hosts, rounds, set(bad)
        self.seen: list[str] = []
        self.enough = threading.Event()

    def run(self, host: str, check: Check) -> str | None:
        self.seen.append(host)
        if len(self.seen) >= self.rounds * self.hosts:
            self.enough.set()
        return f"http {check.target}: 500" if host in self.bad else None


def batch(index: int, hosts: Sequence[str]) -> PlannedBatch:
    return PlannedBatch(index=index, hosts=tuple(hosts), servers=tuple(hosts), in_rotation=0)


class RecordingWatch(HealthWatch):
    """Records the hosts each round was given."""

    rounds: list[list[str]]

    def _probe(self, hosts: Sequence[str]) -> None:
        self.rounds.append(list(hosts))
        super()._probe(hosts)


def watch(prober: CountingProber, per_round: int, failed: list[tuple[tuple[str, ...], str]],
          emitted: list[Any]) -> RecordingWatch:
    def emit(cls: type[ev.Event], **fields: Any) -> ev.Event:
        emitted.append((cls, fields))
        return None  # type: ignore[return-value]

    def on_fail(hosts: tuple[str, ...], cause: str) -> None:
        failed.append((hosts, cause))
        prober.enough.set()

    w = RecordingWatch(balancer=None, prober=prober,  # type: ignore[arg-type]
                       checks=lambda host: [CHECK], servers={}, baseline=lambda s: (),
                       emit=emit, on_fail=on_fail, interval=0.001, consecutive=2,
                       analysis=None, per_round=per_round)
    w.rounds = []
    return w


def test_each_round_probes_at_most_per_round_hosts_and_every_host_takes_its_turn() -> None:
    hosts = [f"h{i}" for i in range(7)]
    prober = CountingProber(hosts=3, rounds=14)  # 14 rounds of 3 probes: 42 = 6 per host
    failed: list[tuple[tuple[str, ...], str]] = []
    w = watch(prober, 3, failed, [])
    w.add(batch(1, hosts[:2]))
    w.add(batch(2, hosts[2:]))
    assert prober.enough.wait(10)
    w.stop()
    seen = prober.seen[:42]
    # In turn: the order repeats the hosts, 3 at a time, wrapping around.
    assert seen == [hosts[i % 7] for i in range(42)]
    assert set(Counter(seen).values()) == {6}
    assert all(len(r) == 3 for r in w.rounds[:14])
    assert not failed


def test_a_fleet_within_per_round_is_probed_whole_every_round() -> None:
    hosts = ["a", "b", "c"]
    prober = CountingProber(hosts=3, rounds=4)
    w = watch(prober, 10, [], [])
    w.add(batch(1, hosts))
    assert prober.enough.wait(10)
    w.stop()
    assert prober.seen[:12] == hosts * 4
    assert w.rounds[:4] == [hosts] * 4


def test_a_bad_host_fails_the_watch_after_its_own_consecutive_failures() -> None:
    hosts = [f"h{i}" for i in range(6)]
    prober = CountingProber(hosts=2, rounds=1000, bad=["h4"])
    failed: list[tuple[tuple[str, ...], str]] = []
    emitted: list[Any] = []
    w = watch(prober, 2, failed, emitted)
    w.add(batch(1, hosts))
    assert prober.enough.wait(10)
    w.stop()
    assert failed and failed[0][0] == ("h4",)
    assert "h4 (batch 1) failed its probe 2 times in a row" in failed[0][1]
    # h4's turns: rounds 3 and 6 (2 hosts a round): it failed on its second turn, and the
    # watch stopped there (h5, after it in round 6, was not probed).
    assert prober.seen.count("h4") == 2
    assert len(prober.seen) == 11
    assert w.rounds == [["h0", "h1"], ["h2", "h3"], ["h4", "h5"]] * 2
    probe_failed = [f for cls, f in emitted if cls is ev.ProbeFailed]
    assert [f["host"] for f in probe_failed] == ["h4", "h4"]


def test_per_round_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="per_round must be at least 1"):
        watch(CountingProber(1, 1), 0, [], [])
