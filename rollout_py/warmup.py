"""Warm-up: a batch put back in rotation gets a share of its recorded weight first, raised in
steps to the recorded weight over ``haproxy.warmup`` seconds on every LB, so caches and pools
fill before the server carries its full share. Mixed into the Engine.

HAProxy's weights are whole numbers: a server recorded at weight 1 cannot get less, so only
servers recorded at weight 2 or more are ramped (give the backend's servers weights such as
100 for a fine ramp); the others are enabled at their weight, as without warm-up.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from rollout_py import events as ev
from rollout_py.balancer.fleet import Recorded, Snapshot, wait_until
from rollout_py.saga import Applied, BatchFailure, SagaBase


def ramp(snapshot: Snapshot, servers: Sequence[str], start: float, steps: int
         ) -> list[dict[str, dict[str, int]]]:
    """The weights of each step, the last one the recorded weights (only servers recorded in
    rotation at weight 2 or more appear).

    Example:
        >>> ramp({"lb": {"a": Recorded("READY", 100)}}, ["a"], 0.1, 3)
        [{'lb': {'a': 10}}, {'lb': {'a': 55}}, {'lb': {'a': 100}}]
    """
    out = []
    for i in range(steps):
        share = start + (1 - start) * i / max(1, steps - 1)
        out.append({url: {s: max(1, round(rec.weight * share)) for s, rec in per.items()
                          if s in servers and rec.admin == "READY" and rec.weight >= 2}
                    for url, per in snapshot.items()})
    return out


def starting(snapshot: Snapshot, servers: Sequence[str], start: float) -> Snapshot:
    """The snapshot to enable with: the ramp's first weights in place of the recorded ones."""
    first = ramp(snapshot, servers, start, 1)[0]
    return {url: {s: Recorded(rec.admin, first.get(url, {}).get(s, rec.weight))
                  for s, rec in per.items()} for url, per in snapshot.items()}


class WarmupSteps(SagaBase):
    """Raises a batch's weights step by step after its enable."""

    def _warm_up(self, applied: Applied) -> None:
        s, snapshot = self.settings, applied.snapshot
        assert snapshot is not None
        steps = ramp(snapshot, applied.batch.servers, s.warmup_from,
                     max(2, min(20, round(s.warmup)) + 1))
        if not any(steps[-1].values()):
            return  # every server recorded at weight 1 (or out of rotation): nothing to ramp
        every = s.warmup / (len(steps) - 1)
        t0 = time.monotonic()
        for i, weights in enumerate(steps):
            if i:
                wait_until(self._aborted, t0 + every * i - time.monotonic(), s.poll)
                if self._aborted():  # a second interrupt: the batch's rollback restores them
                    raise BatchFailure("cancelled", "interrupted during the warm-up")
                self.balancer.set_weights(weights)
            self.emit(ev.WarmupStep, batch=applied.batch.index, step=i + 1, of=len(steps),
                      weights=weights)
