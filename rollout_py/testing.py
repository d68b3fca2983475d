"""Test doubles for each seam (executor, balancer, probes), for the engine's and users' tests.

``FakeFleet`` couples them the way a real fleet does: a host serves the version its last
playbook run installed; HAProxy reports a server UP only if that host is healthy; probes pass
only on healthy hosts. Every side effect is appended to ``fleet.log`` as a short line, and a
playbook run that upgrades or rolls back a host whose server is not in MAINT on every LB is
appended to ``fleet.violations`` (the invariant every deploy must keep). A run labelled
``stage`` only copies the release (``fleet.staged``); with ``require_stage`` an upgrade fails on
a host where its release was not staged, as a real switch-only playbook does.

Example:
    >>> fleet = FakeFleet(["web1", "web2"], version="1.0")
    >>> fleet.unhealthy_versions.add("2.0-bad")
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rollout_py.balancer.fleet import Recorded, Snapshot
from rollout_py.balancer.routes import LbSwitch, SwitchOutcome
from rollout_py.balancer.runtime import AdminState, ServerState, SetState, StatRow, admin_state
from rollout_py.errors import BalancerError
from rollout_py.executor import Cancel, RunResult
from rollout_py.probes import Check, Prober
from rollout_py.spec import HAProxyProbe, HttpProbe
from rollout_py.testing_maps import FakeMaps
from rollout_py.testing_transport import FakeTransport

__all__ = ["FakeBalancer", "FakeExecutor", "FakeFleet", "FakeMaps", "FakeRouter",
           "FakeTransport"]

_ADMIN_BITS = {"READY": 0, "DRAIN": 0x08, "MAINT": 0x01}


@dataclass
class FakeServer:
    admin: AdminState = "READY"
    weight: int = 1
    sessions: int = 0


@dataclass
class FakeFleet:
    """An in-memory fleet behind ``lbs`` load balancers."""

    hosts: Sequence[str]
    version: str = "1.0"
    lbs: Sequence[str] = ("unix:///lb1.sock",)
    unhealthy_versions: set[str] = field(default_factory=set)
    down_hosts: set[str] = field(default_factory=set)  # HAProxy checks fail (host dead)
    fail_upgrade: dict[str, str] = field(default_factory=dict)  # host -> "failed"|"unreachable"
    fail_rollback: set[str] = field(default_factory=set)
    sticky_sessions: dict[str, int] = field(default_factory=dict)  # server -> sessions left
    balancer_fails_on: str | None = None  # e.g. "maint": that command raises BalancerError
    hooks: dict[str, Callable[[], None]] = field(default_factory=dict)  # log line -> once
    require_stage: bool = False
    # Traffic for the analysis: requests each LB serves per ``stats`` read, spread over the
    # servers in rotation by weight; a version's share of 5xx and its response time.
    requests_per_read: int = 0
    error_rates: dict[str, float] = field(default_factory=dict)  # version -> share of 5xx
    latency_ms: dict[str, int] = field(default_factory=dict)  # version -> rtime
    log: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    # Blue/green (FakeRouter): the servers each LB sends traffic to; None: every server.
    route: Callable[[str], set[str]] | None = None

    def __post_init__(self) -> None:
        self.versions: dict[str, str | None] = dict.fromkeys(self.hosts, self.version)
        self.servers: dict[str, dict[str, FakeServer]] = {
            lb: {h: FakeServer() for h in self.hosts} for lb in self.lbs}
        self.staged: dict[str, set[str]] = {h: set() for h in self.hosts}
        # LB -> server -> cumulative (requests, 5xx, error credit); reset_counters() = reload
        self.counters: dict[str, dict[str, list[float]]] = {
            lb: {h: [0, 0, 0.0] for h in self.hosts} for lb in self.lbs}

    def reset_counters(self) -> None:
        """What an HAProxy reload does to the per-server counters."""
        for per in self.counters.values():
            for c in per.values():
                c[:] = [0, 0, 0.0]

    def serve(self) -> None:
        """One round of traffic on every LB: ``requests_per_read`` by weight, deterministic
        5xx from each version's error rate."""
        for lb, per in self.servers.items():
            routed = self.route(lb) if self.route is not None else set(per)
            live = {s: srv.weight for s, srv in per.items()
                    if srv.admin == "READY" and self.healthy(s) and srv.weight > 0
                    and s in routed}
            total = sum(live.values())
            for s, w in live.items():
                n = self.requests_per_read * w // total if total else 0
                c = self.counters[lb][s]
                c[2] += n * self.error_rates.get(self.versions[s] or "", 0.0)
                errors = int(c[2])
                c[2] -= errors
                c[0] += n
                c[1] += errors

    def check_out_of_rotation(self, step: str, hosts: Sequence[str]) -> None:
        """Records a violation for each host not in MAINT on every LB (server name = host)."""
        for host in hosts:
            found = {lb: srv[host].admin for lb, srv in self.servers.items()
                     if srv[host].admin != "MAINT"}
            if found:
                self.violations.append(f"{step} {host} while {found}")

    def record(self, line: str) -> None:
        self.log.append(line)
        hook = self.hooks.pop(line, None)  # fires once, on the first such line
        if hook is not None:
            hook()

    def healthy(self, host: str) -> bool:
        return host not in self.down_hosts and self.versions.get(host) not in \
            self.unhealthy_versions

    def executor(self) -> FakeExecutor:
        return FakeExecutor(self)

    def balancer(self) -> FakeBalancer:
        return FakeBalancer(self)

    def prober(self) -> Prober:
        fleet = self

        class _Prober(Prober):
            def run(self, host: str, check: Check) -> str | None:
                if check.kind == "haproxy":
                    return fleet_up(host)
                if not fleet.healthy(host):
                    return "unhealthy"
                want = check.target.rpartition("@")[2]
                if want and fleet.versions.get(host) != want:
                    return f"serves {fleet.versions.get(host)}, expected {want}"
                return None

        def fleet_up(server: str) -> str | None:
            return None if fleet.healthy(server) else "DOWN"

        return _Prober(lambda h, c, t: (True, ""), fleet_up)

    def checks(self, host: str, version: str) -> tuple[list[Check], list[Check]]:
        """One version-aware check before enable, one HAProxy check after."""
        return ([Check("http", f"http://{host}/version@{version}", HttpProbe(http="http://x"))],
                [Check("haproxy", host, HAProxyProbe(haproxy="UP"))])


class FakeExecutor:
    """Installs versions on the fake fleet; fails where the fleet says so."""

    def __init__(self, fleet: FakeFleet) -> None:
        self.fleet = fleet
        self.closed = False

    def run_playbook(self, playbook: str, hosts: Sequence[str], extravars: Mapping[str, Any],
                     *, label: str, tags: str | None = None,
                     cancel: Cancel | None = None) -> RunResult:
        version = str(extravars["rollout_version"])
        rollback = bool(extravars.get("rollout_rollback"))
        if label.startswith("scale-down"):  # blue/green's old pool: its app stopped
            self.fleet.record(f"scale-down {','.join(hosts)}")
            self.fleet.down_hosts.update(hosts)
            return RunResult("successful", 0, dict.fromkeys(hosts, "ok"), {})
        if label == "stage":
            self.fleet.record(f"stage {','.join(hosts)} -> {version}")
            for host in hosts:
                self.fleet.staged[host].add(version)
            return RunResult("successful", 0, dict.fromkeys(hosts, "ok"),
                             {h: self.fleet.versions[h] for h in hosts})
        step = "rollback" if rollback else "upgrade"
        self.fleet.record(f"{step} {','.join(hosts)} -> {version}")
        self.fleet.check_out_of_rotation(step, hosts)
        outcomes: dict[str, str] = {}
        previous: dict[str, str | None] = {}
        if cancel is not None and cancel():
            # Reading the current version is the playbook's first task (streamed per host).
            return RunResult("canceled", 254, dict.fromkeys(hosts, "not run: cancelled"),
                             {h: self.fleet.versions[h] for h in hosts})
        for host in hosts:
            previous[host] = self.fleet.versions[host]
            failure = (("failed" if host in self.fleet.fail_rollback else None) if rollback
                       else self.fleet.fail_upgrade.get(host))
            if (not rollback and self.fleet.require_stage
                    and version not in self.fleet.staged[host]):
                failure = f"failed: release {version} is not staged on {host}"
            if failure:
                outcomes[host] = f"{failure}: injected"
            else:
                self.fleet.versions[host] = version
                outcomes[host] = "ok"
        status = "successful" if all(v == "ok" for v in outcomes.values()) else "failed"
        return RunResult(status, 0 if status == "successful" else 2, outcomes, previous)

    def run_command(self, host: str, command: str, timeout: float) -> tuple[bool, str]:
        return self.fleet.healthy(host), ""

    def reachable(self, hosts: Sequence[str]) -> dict[str, str | None]:
        return {h: None for h in hosts}

    def syntax_check(self, playbook: str) -> str | None:
        return None

    def close(self) -> None:
        self.closed = True


class FakeBalancer:
    """Every LB of the fake fleet; logs each state change once per batch of servers."""

    def __init__(self, fleet: FakeFleet) -> None:
        self.fleet = fleet
        self.urls = list(fleet.lbs)

    def _maybe_fail(self, what: str) -> None:
        if self.fleet.balancer_fails_on == what:
            raise BalancerError(f"injected failure on {what}")

    def states(self, only: Collection[str] | None = None
               ) -> dict[str, dict[str, ServerState]]:
        out: dict[str, dict[str, ServerState]] = {}
        for lb, servers in self.fleet.servers.items():
            out[lb] = {}
            for name, srv in servers.items():
                if only is not None and name not in only:
                    continue
                running = self.fleet.healthy(name) and srv.admin != "MAINT"
                out[lb][name] = ServerState("app", name, name, 2 if running else 0,
                                            _ADMIN_BITS[srv.admin], srv.weight, 8080)
        return out

    def admin_levels(self) -> dict[str, bool]:
        return dict.fromkeys(self.urls, True)

    def snapshot(self, servers: Sequence[str]) -> Snapshot:
        return {lb: {s: Recorded(self.fleet.servers[lb][s].admin, self.fleet.servers[lb][s].weight)
                     for s in servers} for lb in self.fleet.lbs}

    def set_state(self, servers: Sequence[str], state: SetState) -> None:
        self._maybe_fail(state)
        for lb in self.fleet.lbs:
            for s in servers:
                self.fleet.servers[lb][s].admin = admin_state(state.upper())
                if state == "maint":
                    self.fleet.servers[lb][s].sessions = 0
        self.fleet.record(f"{state} {','.join(servers)}")

    def sessions(self, servers: Sequence[str]) -> dict[str, int]:
        return {s: self.fleet.sticky_sessions.get(s, 0) for s in servers}

    def sessions_by_lb(self, servers: Sequence[str]) -> dict[str, dict[str, int]]:
        """Every session of a server is counted on the first LB."""
        return {lb: {s: self.fleet.sticky_sessions.get(s, 0) if i == 0 else 0 for s in servers}
                for i, lb in enumerate(self.fleet.lbs)}

    def shutdown_sessions(self, servers: Sequence[str]) -> None:
        for s in servers:
            self.fleet.sticky_sessions.pop(s, None)
        self.fleet.record(f"shutdown sessions {','.join(servers)}")

    def set_weights(self, weights: Mapping[str, Mapping[str, int]]) -> dict[str, str]:
        self._maybe_fail("weight")
        for lb, per in weights.items():
            for s, w in per.items():
                self.fleet.servers[lb][s].weight = w
        self.fleet.record("weight " + " ".join(
            f"{s}={w}" for s, w in sorted(next(iter(weights.values()), {}).items())))
        return {}

    def stats(self, servers: Sequence[str]) -> dict[str, dict[str, StatRow]]:
        """Serves a round of traffic (``FakeFleet.serve``), then reads the counters."""
        self.fleet.serve()
        out: dict[str, dict[str, StatRow]] = {}
        for lb, per in self.fleet.counters.items():
            out[lb] = {}
            for s in servers:
                req, err, _ = per[s]
                srv = self.fleet.servers[lb][s]
                rtime = self.fleet.latency_ms.get(self.fleet.versions[s] or "", 1)
                out[lb][s] = StatRow(proxy="app", name=s, scur=0, status="UP",
                                     weight=srv.weight, check_status="L7OK",
                                     hrsp_2xx=int(req - err), hrsp_5xx=int(err),
                                     rtime=rtime if req else 0, ttime=rtime if req else 0)
        return out

    def restore(self, snapshot: Snapshot, servers: Sequence[str]) -> None:
        self._maybe_fail("restore")
        for lb in self.fleet.lbs:
            for s in servers:
                rec = snapshot[lb][s]
                self.fleet.servers[lb][s].admin = rec.admin
                self.fleet.servers[lb][s].weight = rec.weight
        self.fleet.record(f"restore {','.join(servers)}")

    def close(self) -> None:
        pass


class FakeRouter:
    """Blue/green routing over a FakeFleet (server name = host): two pools and, per LB, the
    pool its live route serves (only that pool gets the fleet's traffic). Each LB's switch is
    logged as ``switch <lb> <backend>``; ``fail_commit_on`` names an LB whose commit is
    refused (the LBs switched before it are switched back, logged ``undo <lb>``)."""

    def __init__(self, fleet: FakeFleet, pools: Mapping[str, Sequence[str]], live: str, *,
                 live_key: str = "live", preview_key: str = "preview") -> None:
        self.fleet = fleet
        self.pools = {b: tuple(h) for b, h in pools.items()}
        self.live = dict.fromkeys(fleet.lbs, live)
        self.live_key, self.preview_key = live_key, preview_key
        self.fail_commit_on: str | None = None
        fleet.route = lambda lb: set(self.pools[self.live[lb]])

    @property
    def urls(self) -> Sequence[str]:
        return list(self.fleet.lbs)

    def maps(self) -> dict[str, str]:
        return dict.fromkeys(self.fleet.lbs, "/fake/pools.map")

    def _other(self, backend: str) -> str:
        return next(b for b in self.pools if b != backend)

    def entries(self) -> dict[str, dict[str, str]]:
        return {lb: {self.live_key: b, self.preview_key: self._other(b)}
                for lb, b in self.live.items()}

    def switch(self, changes: Mapping[str, str]) -> SwitchOutcome:
        to = changes[self.live_key]
        before: dict[str, str] = {}
        for lb in self.fleet.lbs:
            if lb == self.fail_commit_on:
                for done, backend in before.items():
                    self.live[done] = backend
                    self.fleet.record(f"undo {done}")
                return SwitchOutcome(failed={lb: "injected: commit refused"})
            before[lb], self.live[lb] = self.live[lb], to
            self.fleet.record(f"switch {lb} {to}")
        return SwitchOutcome(switched=tuple(
            LbSwitch(lb, {self.live_key: to, self.preview_key: self._other(to)}, time.time(),
                     "/fake/pools.map") for lb in self.fleet.lbs))

    def states(self, backend: str) -> dict[str, dict[str, ServerState]]:
        return {lb: {s: st for s, st in per.items() if s in self.pools[backend]}
                for lb, per in FakeBalancer(self.fleet).states().items()}

    def stats(self, backend: str, servers: Sequence[str]) -> dict[str, dict[str, StatRow]]:
        return FakeBalancer(self.fleet).stats(servers)
