"""Schema-change phase events: a phase's start and end (expand, migrate, contract), and the
contract's version gate with what every host runs."""

from __future__ import annotations

from dataclasses import field
from typing import ClassVar, Literal

from rollout_py.events.base import Event
from rollout_py.events.base import frozen_event as _frozen

# release: the flag ramp between the last batch and migrate (phases.release)
SchemaPhase = Literal["expand", "release", "migrate", "contract"]
# done: the gate passed and the contract ran; forced: ran under --force past blocking hosts;
# refused: the gate refused, nothing ran; failed: the command failed; cancelled: interrupted.
ContractStatus = Literal["done", "forced", "refused", "failed", "cancelled"]


@_frozen
class PhaseStarted(Event):
    """Journaled before the user's command or playbook starts (a resume sees it unfinished)."""

    kind: ClassVar[str] = "phase_started"
    phase: SchemaPhase
    on: str  # the host it runs on, or "local" (the controller)
    what: str  # "command: ..." or "playbook: ..."
    attempt: int = 1  # 2 and more: run again by a resume


@_frozen
class PhaseFinished(Event):
    kind: ClassVar[str] = "phase_finished"
    phase: SchemaPhase
    ok: bool
    rc: int | None  # the command's exit code (None: not known, e.g. killed or through Ansible)
    detail: str  # the output's tail (redacted), or Ansible's message
    duration: float


@_frozen
class ContractChecked(Event):
    """The version gate: each host the spec selects, the version that counts for it and
    where it came from (reported | journaled | unknown), its LB state, and the verdict."""

    kind: ClassVar[str] = "contract_checked"
    requires: str
    hosts: dict[str, dict[str, str]]  # host -> version, source, lb, verdict (ok | why not)
    blocking: tuple[str, ...]
    forced: bool = False
    # the deploy's phases that must be done first (release, migrate), each not done: why
    unmet: tuple[str, ...] = ()


@_frozen
class ContractFinished(Event):
    kind: ClassVar[str] = "contract_finished"
    status: ContractStatus
    exit_code: int
    cause: str
    blocking: tuple[str, ...] = field(default_factory=tuple)


EVENTS: tuple[type[Event], ...] = (
    PhaseStarted,
    PhaseFinished,
    ContractChecked,
    ContractFinished,
)
