"""DeployResult: the outcome of a deploy, computed as a fold over its events."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from rollout_py import events as ev
from rollout_py.errors import DeployFailedError

EXIT_CODES: dict[ev.Status, int] = {"succeeded": 0, "rolled_back": 1, "failed": 3, "stopped": 5,
                                    "cancelled": 130}

# The state the fleet is left in, for each status (the README's exit-code table says the same).
FLEET_STATE: dict[ev.Status, str] = {
    "succeeded": "every targeted host serves the new version, in rotation",
    "rolled_back": "a batch failed and was rolled back (or the expand phase failed before any "
                   "drain): every host is in rotation; hosts of earlier batches keep the new "
                   "version unless on_failure is rollback_all",
    "stopped": "stopped before a batch, nothing rolled back: every host is in rotation; "
               "batches before it serve the new version, the rest the old one; "
               "`rollout resume` continues",
    "failed": "hosts are out of rotation (MAINT) on an unknown release: listed in stranded",
    "cancelled": "interrupted between batches: every host is in rotation; finished batches "
                 "serve the new version; `rollout resume` continues",
}


@dataclass(frozen=True, slots=True)
class HostResult:
    host: str
    before: str | None
    after: str | None
    outcome: str  # upgraded | rolled_back | untouched | skipped | stranded | failed


@dataclass(frozen=True, slots=True)
class BatchResult:
    index: int
    hosts: tuple[str, ...]
    outcome: str  # succeeded | rolled_back | rollback_failed | not_started | refused
    started: float | None
    finished: float | None
    durations: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeployResult:
    """What a deploy did. ``status`` is succeeded | rolled_back | stopped | failed | cancelled;
    ``fleet_state`` says what each means for the fleet.

    Example:
        >>> result = rollout_py.deploy(spec, version="2.0")  # doctest: +SKIP
        >>> result.raise_for_status()  # doctest: +SKIP
    """

    deploy_id: str
    name: str
    version: str
    status: ev.Status
    exit_code: int
    cause: str | None
    failure: str | None  # the failure class of the first failed batch
    hosts: dict[str, HostResult]
    batches: tuple[BatchResult, ...]
    stranded: tuple[str, ...]
    resumable: bool = False  # `rollout resume` (rollout_py.resume) takes the deploy up again

    @property
    def fleet_state(self) -> str:
        """What the status means for the fleet, in one sentence."""
        return FLEET_STATE[self.status]

    def raise_for_status(self) -> None:
        """Raises DeployFailedError unless the deploy succeeded."""
        if self.status != "succeeded":
            raise DeployFailedError(self)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["hosts"] = {k: asdict(v) for k, v in self.hosts.items()}
        return data


def fold(events: Iterable[ev.Event]) -> DeployResult:
    """Folds a deploy's events into its result (also for a journal read back from disk)."""
    deploy_id = name = version = ""
    status: ev.Status = "failed"
    exit_code, cause, failure, resumable = 3, None, None, False
    stranded: tuple[str, ...] = ()
    hosts: dict[str, dict[str, Any]] = {}
    batches: dict[int, dict[str, Any]] = {}
    for e in events:
        deploy_id = e.deploy_id
        if isinstance(e, ev.DeployStarted):
            name, version = e.name, e.version
            for i, batch in enumerate(e.batches, 1):
                batches[i] = {"index": i, "hosts": tuple(batch), "outcome": "not_started",
                              "started": None, "finished": None, "durations": {}}
                for h in batch:
                    hosts[h] = {"host": h, "before": None, "after": None, "outcome": "untouched"}
            for h in e.skipped:
                hosts[h] = {"host": h, "before": version, "after": version, "outcome": "skipped"}
        elif isinstance(e, ev.BatchStarted):
            batches[e.batch].update(started=e.ts, finished=None, outcome="not_started")
        elif isinstance(e, ev.StepFinished):
            for h, before in e.versions.items():
                if e.step == "upgrade" and h in hosts:
                    hosts[h]["before"] = before
            if e.step == "upgrade":
                for h, outcome in e.hosts.items():
                    if outcome == "ok":
                        hosts[h].update(after=version, outcome="upgraded")
                    else:
                        hosts[h].update(outcome="failed")
        elif isinstance(e, ev.BatchSucceeded):
            batches[e.batch].update(outcome="succeeded", finished=e.ts, durations=e.durations)
        elif isinstance(e, ev.BatchFailed):
            failure = failure or e.failure
            cause = cause or e.cause
            if e.failure == "capacity":  # refused before anything was touched
                batches[e.batch].update(outcome="refused", finished=e.ts)
        elif isinstance(e, ev.RollbackFinished):
            b = batches[e.batch]
            b.update(outcome="rolled_back" if e.ok else "rollback_failed", finished=e.ts)
            for h in b["hosts"]:
                if h in e.stranded:
                    hosts[h]["outcome"] = "stranded"
                elif hosts[h]["outcome"] in ("upgraded", "failed", "stranded"):
                    # (stranded: an earlier rollback of it stopped; this one finished it)
                    hosts[h].update(after=hosts[h]["before"], outcome="rolled_back")
        elif isinstance(e, ev.DeployFinished):
            status, exit_code, stranded = e.status, e.exit_code, e.stranded
            cause, resumable = e.cause or cause, e.resumable
    return DeployResult(
        deploy_id=deploy_id, name=name, version=version, status=status, exit_code=exit_code,
        cause=cause, failure=failure,
        hosts={h: HostResult(**v) for h, v in hosts.items()},
        batches=tuple(BatchResult(**b) for _, b in sorted(batches.items())),
        stranded=stranded, resumable=resumable,
    )
