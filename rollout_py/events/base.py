"""What every event is: the base class, its JSON form, and the literal types events carry."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, dataclass_transform

# How a deploy ended; rollout_py.result.EXIT_CODES maps each to the command's exit code.
Status = Literal["succeeded", "rolled_back", "stopped", "failed", "cancelled"]
# Why a batch failed. The release's fault: unreachable, task_failed, probe_failed,
# drain_timeout, balancer (an LB refused a command). Not the release's (resume runs the batch
# again, rollout_py.reconcile.RETRYABLE): controller, balancer_unreachable, cancelled,
# capacity. foreign_change: someone else changed a server of the batch.
Failure = Literal["unreachable", "task_failed", "probe_failed", "drain_timeout", "balancer",
                  "controller", "balancer_unreachable", "cancelled", "capacity",
                  "foreign_change", "analysis", "aborted"]
# analysis: a gate failed (canary step, a rolling batch's soak, or the continuous watch of the
# batches back in rotation); aborted: `rollout abort`.
# A window's verdict: never "pass" on no data; "reset" when HAProxy's counters went down.
Verdict = Literal["pass", "fail", "inconclusive", "reset"]
# What a window judged: a canary step, a rolling batch's soak, the watch over done batches, a
# blue/green switch's new pool (against the old pool's windows before the switch).
Purpose = Literal["canary", "soak", "watch", "post_switch"]
# Operator controls, sent through the state directory (rollout_py.controls).
ControlAction = Literal["promote", "promote_all", "abort", "pause", "continue"]
# The host-side steps of a deploy, and the phases in which probes run.
StepName = Literal["stage", "upgrade", "rollback"]
Phase = Literal["verify", "soak", "rollback", "watch", "preview"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of all events. ``seq`` orders them within a deploy."""

    kind: ClassVar[str] = "event"
    deploy_id: str
    seq: int
    ts: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        data = {"event": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            data[f.name] = _jsonable(value)
        return data


_E = TypeVar("_E", bound="Event")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


@dataclass_transform(frozen_default=True, kw_only_default=True)
def frozen_event(cls: type[_E]) -> type[_E]:
    """Every event: a frozen, slotted, keyword-only dataclass (declared so to type checkers)."""
    return dataclass(frozen=True, slots=True, kw_only=True)(cls)

