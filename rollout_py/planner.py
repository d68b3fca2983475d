"""Turns a spec, the selected hosts and a version into a Plan: pure, cheap, touches nothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rollout_py.errors import InputError
from rollout_py.steps import (
    Analyse,
    CheckPreview,
    Pause,
    RestoreWeights,
    ScaleDown,
    SetWeight,
    Switch,
    TrafficStep,
    step_line,
)


def _size(value: int | str, total: int) -> int:
    """An Ansible ``serial``-style size: a count, or a percentage of ``total`` (at least 1)."""
    if isinstance(value, int):
        return value
    return max(1, int(total * int(value.rstrip("%")) / 100))


def batch_sizes(spec_batches: Sequence[int | str], total: int) -> list[int]:
    """Ansible's ``serial`` semantics: sizes in order, the last one repeating, until none left.

    Example:
        >>> batch_sizes([1, "50%", "100%"], 6)
        [1, 3, 2]
    """
    sizes, left, i = [], total, 0
    while left > 0:
        size = min(_size(spec_batches[min(i, len(spec_batches) - 1)], total), left)
        sizes.append(size)
        left -= size
        i += 1
    return sizes


@dataclass(frozen=True, slots=True)
class PlannedBatch:
    index: int
    hosts: tuple[str, ...]
    servers: tuple[str, ...]
    in_rotation: int  # fleet servers left in rotation while this batch is out


@dataclass(frozen=True, slots=True)
class Plan:
    """What a deploy will do, step by step. ``deploy`` runs exactly this."""

    name: str
    version: str
    backend: str
    sockets: tuple[str, ...]
    fleet: tuple[str, ...]  # every host the spec's pattern selects (the capacity base)
    servers: Mapping[str, str]  # host -> HAProxy server name, for the whole fleet
    batches: tuple[PlannedBatch, ...]
    skipped: Mapping[str, str]  # host -> why it is not deployed to
    max_unavailable: int
    on_failure: str
    playbook: str
    rollback_playbook: str | None
    drain_timeout: float
    pause_between_batches: float
    strategy: str = "rolling"
    traffic: tuple[TrafficStep, ...] = ()  # each after its batch (``step.batch``; 0: first)
    interval: float | None = None  # analysis window, seconds
    live_backend: str | None = None  # blue/green: the pool live now (``backend`` is the idle)

    @property
    def steps(self) -> tuple[PlannedBatch | TrafficStep, ...]:
        """Every step in order: each batch, then the traffic steps that act on it."""
        out: list[PlannedBatch | TrafficStep] = [t for t in self.traffic if t.batch == 0]
        for batch in self.batches:
            out.append(batch)
            out += [t for t in self.traffic if t.batch == batch.index]
        return tuple(out)

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(h for b in self.batches for h in b.hosts)

    def rollback_description(self) -> str:
        how = (f"{self.rollback_playbook} on the batch" if self.rollback_playbook else
               f"{self.playbook} with each host's previous version (rollout_version)")
        scope = ("the failed batch" if self.on_failure == "rollback_batch" else
                 "the failed batch, then every earlier batch, newest first")
        return (f"on failure ({self.on_failure}): roll back {scope}: drain and MAINT on every LB, "
                f"run {how}, probe, then restore each server's recorded state and weight")

    def identity(self) -> dict[str, Any]:
        """The plan's structure, without prose: what resume checks has not changed (a reworded
        message in a newer rollout_py must not stop a resume).

        Example:
            >>> sorted(make_plan(name="web", version="2", fleet=["a"], targets=["a"],
            ...     servers={"a": "a"}, batches=[1], max_unavailable=None,
            ...     current_versions={"a": "2"}, force=False, backend="app",
            ...     sockets=["unix:///s"], on_failure="rollback_batch", playbook="p.yml",
            ...     rollback_playbook=None, drain_timeout=30,
            ...     pause_between_batches=0).identity()["skipped"])
            ['a']
        """
        data = asdict(self)
        data["servers"] = dict(self.servers)
        data["skipped"] = sorted(self.skipped)  # who, not why
        return data

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["servers"] = dict(self.servers)
        data["skipped"] = dict(self.skipped)
        data["rollback"] = self.rollback_description()
        data["steps"] = [self.batch_steps(b) for b in self.batches]
        data["traffic"] = [{**asdict(t), "line": step_line(t, self.interval)}
                           for t in self.traffic]
        return data

    def batch_steps(self, batch: PlannedBatch) -> list[str]:
        """The LB actions and host steps of one batch, in order."""
        servers = ", ".join(batch.servers)
        steps = []
        for sock in self.sockets:
            steps.append(f"{sock}: set server {self.backend}/{{{servers}}} state drain; wait "
                         f"until their sessions are 0 (up to {self.drain_timeout:g} s); "
                         "state maint")
        steps.append(f"run {self.playbook} on {', '.join(batch.hosts)} "
                     f"(rollout_version={self.version}, rollout_batch={batch.index})")
        steps.append("probe until healthy")
        for sock in self.sockets:
            steps.append(f"{sock}: set server {self.backend}/{{{servers}}} state ready "
                         "(their recorded state and weight); wait for UP")
        steps.append(f"in rotation meanwhile: {batch.in_rotation} of {len(self.fleet)}")
        return steps


def make_plan(*, name: str, version: str, fleet: Sequence[str], targets: Sequence[str],
              servers: Mapping[str, str], batches: Sequence[int | str],
              max_unavailable: int | str | None, current_versions: Mapping[str, str | None],
              force: bool, backend: str, sockets: Sequence[str], on_failure: str,
              playbook: str, rollback_playbook: str | None, drain_timeout: float,
              pause_between_batches: float, strategy: str = "rolling",
              canary_hosts: int | str | None = None, canary_steps: Sequence[Any] = (),
              gates: Sequence[str] = (), soak: float = 0,
              interval: float | None = None, live_backend: str | None = None,
              post_switch: float = 0,
              scale_down: tuple[float, Sequence[str]] | None = None) -> Plan:
    """Builds the plan; raises InputError when no valid plan exists.

    Example:
        >>> p = make_plan(name="web", version="2", fleet=["a", "b"], targets=["a", "b"],
        ...     servers={"a": "a", "b": "b"}, batches=[1], max_unavailable=None,
        ...     current_versions={}, force=False, backend="app", sockets=["unix:///s"],
        ...     on_failure="rollback_batch", playbook="p.yml", rollback_playbook=None,
        ...     drain_timeout=30, pause_between_batches=0)
        >>> [b.hosts for b in p.batches]
        [('a',), ('b',)]
    """
    skipped = {}
    todo = []
    if strategy == "blue_green":  # the idle pool is deployed whole, whatever it runs now
        force, batches, max_unavailable = True, [len(targets) or 1], len(targets) or 1
    for host in targets:
        if not force and current_versions.get(host) == version:
            skipped[host] = f"already at {version}"
        else:
            todo.append(host)
    if strategy == "canary" and todo:
        first = min(_size(canary_hosts or 1, len(todo)), len(todo))
        if first == len(todo) and len(todo) > 0:
            raise InputError(f"canary.hosts ({canary_hosts}) takes every host to deploy "
                             f"({len(todo)}): no old server would be left to compare with")
        sizes = [first, *batch_sizes(batches, len(todo) - first)]
    else:
        sizes = batch_sizes(batches, len(todo)) if todo else []
    limit = max(sizes, default=1) if max_unavailable is None else _size(max_unavailable,
                                                                         len(fleet))
    planned, start = [], 0
    for i, size in enumerate(sizes, 1):
        hosts = tuple(todo[start:start + size])
        start += size
        if size > limit:
            raise InputError(f"batch {i} would take {size} hosts out of rotation, but "
                             f"max_unavailable allows {limit} (of {len(fleet)}); use smaller "
                             "batches or raise max_unavailable")
        planned.append(PlannedBatch(i, hosts, tuple(servers[h] for h in hosts),
                                    len(fleet) - size))
    return Plan(
        name=name, version=version, backend=backend, sockets=tuple(sockets), fleet=tuple(fleet),
        servers=dict(servers), batches=tuple(planned), skipped=skipped, max_unavailable=limit,
        on_failure=on_failure, playbook=playbook, rollback_playbook=rollback_playbook,
        drain_timeout=drain_timeout, pause_between_batches=pause_between_batches,
        strategy=strategy, interval=interval, live_backend=live_backend,
        traffic=(_pool_steps(backend, live_backend, tuple(gates), post_switch, scale_down)
                 if strategy == "blue_green" and live_backend and planned else
                 _traffic_steps(strategy, len(planned), canary_steps, tuple(gates), soak)),
    )


def _pool_steps(idle: str, live: str, gates: tuple[str, ...], post_switch: float,
                scale_down: tuple[float, Sequence[str]] | None) -> tuple[TrafficStep, ...]:
    """Blue/green, after the idle pool's batch: preview, switch, post-switch analysis (and
    switch back on failure), scale-down of the old pool."""
    out: list[TrafficStep] = [CheckPreview(2, 1), Switch(3, 1, live, idle)]
    if post_switch > 0:
        out.append(Analyse(4, 1, post_switch, "post_switch", gates))
    if scale_down is not None:
        out.append(ScaleDown(len(out) + 2, 1, live, tuple(scale_down[1]), scale_down[0]))
    return tuple(out)


def switch_back_plan(*, name: str, live: str, to: str, sockets: Sequence[str],
                     servers: Mapping[str, str], fleet: Sequence[str]) -> Plan:
    """``rollout switch-back``: the old pool's floor checked, then every LB switched to it.
    ``servers`` are the old pool's (the one switched to)."""
    return Plan(name=name, version="-", backend=to, sockets=tuple(sockets),
                fleet=tuple(fleet), servers=dict(servers), batches=(), skipped={},
                max_unavailable=0, on_failure="rollback_batch", playbook="-",
                rollback_playbook=None, drain_timeout=0, pause_between_batches=0,
                strategy="switch_back", live_backend=live,
                traffic=(CheckPreview(1, 0, requests=False), Switch(2, 0, live, to)))


def _traffic_steps(strategy: str, batches: int, canary_steps: Sequence[Any],
                   gates: tuple[str, ...], soak: float) -> tuple[TrafficStep, ...]:
    """The strategy's traffic steps, numbered by their place in the plan (batches count).
    Canary: the spec's steps after batch 1, then every weight restored. Rolling (and a
    canary's later batches) with gates and a soak: each batch analysed for the soak."""
    out: list[TrafficStep] = []
    n = 0
    for index in range(1, batches + 1):
        n += 1  # the batch itself
        if strategy == "canary" and index == 1:
            for spec_step in canary_steps:
                n += 1
                if hasattr(spec_step, "traffic"):
                    out.append(SetWeight(n, 1, float(spec_step.traffic)))
                elif hasattr(spec_step, "analysis"):
                    out.append(Analyse(n, 1, float(spec_step.analysis.duration), "canary",
                                       gates))
                else:
                    out.append(Pause(n, 1, spec_step.pause.duration))
            n += 1
            out.append(RestoreWeights(n, 1))
        elif gates and soak > 0:
            n += 1
            out.append(Analyse(n, index, soak, "soak", gates))
    return tuple(out)
