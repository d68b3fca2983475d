"""Every LB of a backend at once: drain, disable, enable and restore servers on all of them.

A step either holds on every LB or is reported; the engine undoes what a failed step applied.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from rollout_py.balancer.runtime import (
    AdminState,
    RuntimeAPI,
    ServerState,
    SetState,
    StatRow,
    set_state_of,
)
from rollout_py.errors import BalancerError, BalancerUnreachable


@dataclass(frozen=True, slots=True)
class Recorded:
    """A server's admin state and weight on one LB, as found before rollout_py touched it."""

    admin: AdminState
    weight: int


Snapshot = Mapping[str, Mapping[str, Recorded]]  # LB url -> server -> recorded state


class Balancer(Protocol):
    """The load balancer seam the engine uses (a double replaces it in unit tests)."""

    @property
    def urls(self) -> Sequence[str]: ...

    def states(self, only: Collection[str] | None = None
               ) -> dict[str, dict[str, ServerState]]: ...
    def admin_levels(self) -> dict[str, bool]: ...
    def snapshot(self, servers: Sequence[str]) -> Snapshot: ...
    def set_state(self, servers: Sequence[str], state: SetState) -> None: ...
    def sessions(self, servers: Sequence[str]) -> dict[str, int]: ...
    def sessions_by_lb(self, servers: Sequence[str]) -> dict[str, dict[str, int]]: ...
    def stats(self, servers: Sequence[str]) -> dict[str, dict[str, StatRow]]: ...
    def shutdown_sessions(self, servers: Sequence[str]) -> None: ...
    def restore(self, snapshot: Snapshot, servers: Sequence[str]) -> None: ...
    def set_weights(self, weights: Mapping[str, Mapping[str, int]]) -> dict[str, str]: ...
    def close(self) -> None: ...


class HAProxyFleet:
    """The runtime APIs of every LB in front of one backend.

    Example:
        >>> fleet = HAProxyFleet([RuntimeAPI(t) for t in transports], "app")  # doctest: +SKIP
        >>> fleet.set_state(["app01"], "drain")  # doctest: +SKIP
    """

    def __init__(self, apis: Sequence[RuntimeAPI], backend: str) -> None:
        self.apis = list(apis)
        self.backend = backend
        self.urls = [a.url for a in apis]

    def states(self, only: Collection[str] | None = None
               ) -> dict[str, dict[str, ServerState]]:
        """Every LB's servers of the backend (with ``only``, just those)."""
        return {a.url: {s.name: s for s in a.servers_state(self.backend, only)}
                for a in self.apis}

    def admin_levels(self) -> dict[str, bool]:
        """Whether each LB's socket grants the admin level (needed to change server states)."""
        return {a.url: a.admin_level() for a in self.apis}

    def snapshot(self, servers: Sequence[str]) -> Snapshot:
        snap: dict[str, dict[str, Recorded]] = {}
        for url, states in self.states().items():
            missing = [s for s in servers if s not in states]
            if missing:
                raise BalancerError(f"{url}: backend {self.backend} has no server "
                                    f"{', '.join(missing)}")
            snap[url] = {s: Recorded(states[s].admin, states[s].weight) for s in servers}
        return snap

    def set_state(self, servers: Sequence[str], state: SetState) -> None:
        """Every server to ``state`` on every LB: a round trip per LB (and per 64 servers),
        not per server."""
        for api in self.apis:
            api.set_many(self.backend, [(server, f"state {state}") for server in servers])

    def sessions(self, servers: Sequence[str]) -> dict[str, int]:
        """Current sessions per server, summed over every LB."""
        total = dict.fromkeys(servers, 0)
        for api in self.apis:
            for row in api.stat(self.backend):
                if row.name in total:
                    total[row.name] += row.scur
        return total

    def sessions_by_lb(self, servers: Sequence[str]) -> dict[str, dict[str, int]]:
        """Current sessions per LB and server."""
        out: dict[str, dict[str, int]] = {}
        for api in self.apis:
            per = out.setdefault(api.url, dict.fromkeys(servers, 0))
            for row in api.stat(self.backend):
                if row.name in per:
                    per[row.name] += row.scur
        return out

    def stats(self, servers: Sequence[str]) -> dict[str, dict[str, StatRow]]:
        """Each LB's ``show stat`` row of each of ``servers`` (LB url -> server -> row): one
        ``show stat BACKEND 4 -1`` per LB; a server an LB does not have is absent from it."""
        wanted = set(servers)
        return {api.url: {row.name: row for row in api.stat(self.backend)
                          if row.name in wanted and row.proxy == self.backend}
                for api in self.apis}

    def shutdown_sessions(self, servers: Sequence[str]) -> None:
        for api in self.apis:
            for server in servers:
                api.shutdown_sessions(self.backend, server)

    def set_weights(self, weights: Mapping[str, Mapping[str, int]]) -> dict[str, str]:
        """Sets each LB's server weights (LB url -> server -> weight); tries every one and
        returns those refused ("url server" -> error). An unreachable LB raises."""
        failed: dict[str, str] = {}
        for api in self.apis:
            for server, weight in weights.get(api.url, {}).items():
                try:
                    api.set_weight(self.backend, server, weight)
                except BalancerUnreachable:
                    raise
                except BalancerError as exc:
                    failed[f"{api.url} {server}"] = str(exc)
        return failed

    def restore(self, snapshot: Snapshot, servers: Sequence[str]) -> None:
        """Puts each server back to its recorded weight and admin state, on every LB."""
        errors: list[BalancerError] = []
        for api in self.apis:
            changes = []
            for server in servers:
                rec = snapshot[api.url][server]
                changes += [(server, f"weight {rec.weight}"),
                            (server, f"state {set_state_of(rec.admin)}")]
            try:
                api.set_many(self.backend, changes)
            except BalancerError as exc:
                errors.append(exc)
        if errors:
            text = "; ".join(dict.fromkeys(str(e) for e in errors))
            # An LB that does not answer is not the same failure as one that refuses.
            if any(isinstance(e, BalancerUnreachable) for e in errors):
                raise BalancerUnreachable(text)
            raise BalancerError(text)

    def close(self) -> None:
        for api in self.apis:
            api.close()


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.1,
               stop: Callable[[], bool] = lambda: False) -> bool:
    """Polls ``check`` until it holds (True), ``timeout`` passes or ``stop`` says so (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline or stop():
            return False
        time.sleep(interval)


def on_some_lb(states: Mapping[str, Mapping[str, ServerState]], servers: Iterable[str],
               holds: Callable[[ServerState], bool]) -> set[str]:
    """Servers (of ``servers``) for which ``holds`` is true, or that are missing, on at least
    one LB."""
    names = list(servers)
    return {name for per_lb in states.values() for name in names
            if (st := per_lb.get(name)) is None or holds(st)}


def out_of_rotation(states: Mapping[str, Mapping[str, ServerState]],
                    servers: Iterable[str]) -> set[str]:
    """Servers (of ``servers``) that are not taking new requests on at least one LB."""
    return on_some_lb(states, servers, lambda st: not st.in_rotation)


def exposed(states: Mapping[str, Mapping[str, ServerState]], servers: Iterable[str]
            ) -> frozenset[str]:
    """Servers (of ``servers``) not in MAINT on at least one LB (or missing from one): their
    hosts may serve, so nothing may act on them before they are drained."""
    return frozenset(on_some_lb(states, servers, lambda st: not st.maint))


def not_up(states: Mapping[str, Mapping[str, ServerState]], servers: Iterable[str]) -> list[str]:
    """Servers that HAProxy's check does not report UP (or that are in MAINT) on some LB."""
    bad = []
    for name in servers:
        if any(name not in per_lb or not per_lb[name].running or per_lb[name].maint
               for per_lb in states.values()):
            bad.append(name)
    return bad
