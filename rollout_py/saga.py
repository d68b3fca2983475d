"""The saga's shared parts: settings, what a batch applied (its undo stack), failures, the
LB-state checks the steps share, and ``SagaBase``: the state every step reads and writes,
declared once for the engine and its step mixins (``rollout_py.batch``, ``rollout_py.undo``).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rollout_py import events as ev
from rollout_py.balancer.fleet import Balancer, Recorded, Snapshot, not_up
from rollout_py.balancer.runtime import ServerState, admin_state
from rollout_py.controls import Control
from rollout_py.executor import Executor
from rollout_py.planner import Plan, PlannedBatch
from rollout_py.probes import Check, Prober
from rollout_py.spec import HealthSpec
from rollout_py.spec_canary import AnalysisSpec

if TYPE_CHECKING:
    from rollout_py.switch import PoolSettings

Sink = Callable[[ev.Event], None]
# url, query, timeout -> the number the query answers, or why there is none
PromQuery = Callable[[str, str, float], "float | str"]
# host, version -> (checks before enable, checks after enable)
ChecksFor = Callable[[str, str], tuple[list[Check], list[Check]]]


def new_deploy_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


class LBLost(Exception):
    """An LB stopped answering: nothing more can be done safely; the deploy stops, resumable."""


class Stopped(Exception):
    """An interrupt ended a traffic step: weights are restored, the deploy stops, resumable."""


class BatchFailure(Exception):
    """A step of a batch failed; ``failure`` is the class of the failure."""

    def __init__(self, failure: ev.Failure, cause: str, hosts: Sequence[str] = ()) -> None:
        super().__init__(cause)
        self.failure, self.cause, self.hosts = failure, cause, tuple(hosts)


@dataclass
class Settings:
    """How the engine behaves (from the spec and the command line)."""

    health: HealthSpec
    drain_timeout: float
    up_timeout: float
    force_drain: bool = False
    extravars: Mapping[str, Any] = field(default_factory=dict)
    known_versions: Mapping[str, str | None] = field(default_factory=dict)
    # Reads the version a host serves (from the spec's version_url); None when unknown.
    version_of: Callable[[str], str | None] | None = None
    # Tags for the stage phase (every host, before any drain) and for the per-batch run.
    stage_tags: str | None = None
    switch_tags: str | None = None
    guard_interval: float = 0.1
    poll: float = 0.1
    # Canary and gates (spec.analysis); a PromQL reader; operator controls since last asked.
    analysis: AnalysisSpec | None = None
    prometheus: PromQuery | None = None
    ignore_metrics: bool = False
    controls: Callable[[], Sequence[Control]] | None = None
    watch: bool = True  # continuous health over batches back in rotation
    warmup: float = 0  # seconds over which an enabled batch's weights ramp up (0: off)
    warmup_from: float = 0.1  # the share of its recorded weight it starts at
    pools: PoolSettings | None = None  # blue/green: the router, the old pool, the checks


@dataclass
class RunState:
    failed: bool = False
    cause: str | None = None
    stranded: list[str] = field(default_factory=list)
    resumable: bool = False


def snapshot_of(recorded: Mapping[str, Mapping[str, Sequence[Any]]] | None) -> Snapshot | None:
    """The LB state recorded before a batch's drain, from its journal event."""
    if not recorded:
        return None
    return {url: {srv: Recorded(admin_state(str(v[0])), int(v[1])) for srv, v in per.items()}
            for url, per in recorded.items()}


def drift(states: Mapping[str, Mapping[str, ServerState]], snapshot: Snapshot | None,
           servers: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Servers of a batch that must be in MAINT but are not, split in two: back in READY at
    their recorded weight (what an HAProxy reload without its state does: put back in MAINT),
    and changed by someone else (a DRAIN, or a weight rollout_py did not set: not fought)."""
    reloaded: dict[str, str] = {}
    foreign: dict[str, str] = {}
    for url, per in states.items():
        for name in servers:
            st = per.get(name)
            if st is None:
                continue
            rec = snapshot.get(url, {}).get(name) if snapshot else None
            if rec is not None and st.weight != rec.weight:
                foreign[f"{url} {name}"] = (f"{st.admin} weight {st.weight} (expected MAINT "
                                            f"weight {rec.weight})")
            elif st.drain and not st.maint:
                foreign[f"{url} {name}"] = f"DRAIN weight {st.weight} (expected MAINT)"
            elif not st.maint:
                reloaded[f"{url} {name}"] = st.admin
    return reloaded, foreign


def not_up_where_ready(states: Mapping[str, Mapping[str, ServerState]], snapshot: Snapshot,
                        servers: Sequence[str]) -> list[str]:
    """Servers that HAProxy does not report UP on an LB where they were recorded in rotation
    (a server an operator left in MAINT on one LB is expected UP only on the others)."""
    bad = []
    for name in servers:
        for url, per in states.items():
            rec = snapshot.get(url, {}).get(name)
            if rec is not None and rec.admin == "MAINT":
                continue
            if not not_up({url: per}, [name]):
                continue
            bad.append(name)
            break
    return bad


@dataclass
class Applied:
    """What a batch has applied so far: the undo stack of the saga."""

    batch: PlannedBatch
    snapshot: Snapshot | None = None
    drained: bool = False
    upgraded: bool = False
    enabled: bool = False




class SagaBase:
    """The engine's seams, settings and run state, as the step mixins see them."""

    plan: Plan
    executor: Executor
    balancer: Balancer
    prober: Prober
    checks: ChecksFor
    settings: Settings
    deploy_id: str
    _abort: threading.Event
    _previous: dict[str, str | None]
    _journal_failed: str | None
    _current: Applied | None
    _last_failure: ev.Failure | None
    _undid: bool  # a rollback ran in this run: the outcome is no mere stop
    _foreign: dict[str, str]  # "lb server" -> what someone else set
    _stop_after_batch: threading.Event
    # Traffic steps (rollout_py.traffic): weights journaled before the first set weight,
    # whether some are still changed, and what operators and the watch asked for.
    _weights_recorded: dict[str, dict[str, int]] | None
    _weights_dirty: bool
    _weights_set: dict[str, dict[str, int]] | None  # what the last set weight set
    _weights_event: ev.WeightsSet | None
    _skip_canary: bool
    _pause_requested: str | None
    _aborted_by: str | None
    _control_by: str
    _watch_failure: tuple[tuple[str, ...], str] | None

    def emit(self, cls: type[ev.Event], **fields: Any) -> ev.Event:
        raise NotImplementedError

    def _aborted(self) -> bool:
        return self._abort.is_set()

    def _rollback(self, applied: Applied, cause: str) -> list[str]:
        raise NotImplementedError

    def _end_watch(self) -> None:
        """Ends the continuous watch (before any rollback: hosts going back are no signal)."""

    def _extravars(self, version: str, batch: int, **more: Any) -> dict[str, Any]:
        return {**self.settings.extravars, "rollout_version": version,
                "rollout_deploy_id": self.deploy_id, "rollout_batch": batch, **more}

    def _probe(self, batch: PlannedBatch, version: str | Mapping[str, str | None], *,
               phase: str, hosts: Sequence[str] | None = None) -> dict[str, str | None]:
        raise NotImplementedError
