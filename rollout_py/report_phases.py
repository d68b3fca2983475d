"""Console lines of schema-change phases: their events, where ``rollout plan`` puts them, and
their state in ``rollout status``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rollout_py import events as ev

if TYPE_CHECKING:
    from rollout_py.api import Context


@dataclass(frozen=True, slots=True)
class PhasePlan:
    """``rollout plan``'s phase lines: before batch 1, after the last batch, and a note."""

    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # the same for --json


def phase_plan(ctx: Context) -> PhasePlan:
    """Where each phase of the spec runs (InputError when an ``on`` is not one host)."""
    from rollout_py.phase_run import phase_hosts

    phases = ctx.spec.phases
    if phases is None:
        return PhasePlan()
    hosts = phase_hosts(ctx, ("expand", "migrate", "contract"))
    out = PhasePlan()
    if phases.expand is not None:
        out.before.append(f"before batch 1: expand on {hosts['expand']}: "
                          f"{phases.expand.what()} (a failure ends the deploy: nothing drained)")
    if phases.release is not None:
        out.after.append(f"after the last batch: release on the fleet: {phases.release.what()} "
                         "(steps flags.ramp, each judged by the analysis gates; a failed gate "
                         "puts the flag back and ends the deploy, exit 1)")
        out.data["release"] = {"on": "fleet", "what": phases.release.what()}
    if phases.migrate is not None:
        out.after.append(f"after the last batch: migrate on {hosts['migrate']}: "
                         f"{phases.migrate.what()} (run again by `rollout resume` until it "
                         "finishes: it must be idempotent)")
    if phases.contract is not None:
        out.notes.append(f"contract (not run by deploy): `rollout contract` runs "
                         f"{phases.contract.what()} on {hosts['contract']} once every host "
                         f"runs {phases.contract.requires} or newer")
    for name, host in hosts.items():
        phase = getattr(phases, name)
        out.data[name] = {"on": host, "what": phase.what(), "timeout": phase.timeout,
                          **({"requires": phase.requires} if name == "contract" else {})}
    return out


def phase_line(e: ev.Event) -> str | None:
    match e:
        case ev.PhaseStarted():
            again = f" (attempt {e.attempt}: run again)" if e.attempt > 1 else ""
            return f"{e.phase} on {e.on}: {e.what} ...{again}"
        case ev.PhaseFinished():
            if e.ok:
                return f"{e.phase} ok in {e.duration:.1f} s"
            rc = f" (exit {e.rc})" if e.rc is not None else ""
            last = (e.detail.strip().splitlines() or ["no output"])[-1][:300]
            return f"{e.phase} FAILED{rc} in {e.duration:.1f} s: {last}"
        case ev.ContractChecked():
            forced = " (--force)" if e.forced else ""
            return (f"contract gate (requires {e.requires}){forced}: "
                    + (f"blocked by {', '.join(e.blocking)}" if e.blocking else "every host ok"))
        case ev.ContractFinished():
            return f"contract {e.status}: {e.cause}"
    return None


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts)) if ts else "-"


def phase_status_lines(phases: Mapping[str, Any] | None) -> list[str]:
    """``rollout status``: expand/migrate of the last deploy, the last contract."""
    if not phases:
        return []
    release = f"release {phases['release']}, " if phases.get("release", "not run") != \
        "not run" else ""
    lines = [f"phases (deploy {phases.get('deploy_id') or '-'}): expand {phases['expand']}, "
             f"{release}migrate {phases['migrate']}"]
    c = phases.get("contract")
    if c is None:
        lines.append("  contract: not run")
    elif c["status"] in ("done", "forced"):
        lines.append(f"  contract: {c['status']} at {_when(c['at'])} (requires {c['requires']})"
                     + (f"; forced past {', '.join(c['blocking'])}" if c["blocking"] else ""))
    else:
        lines.append(f"  contract: {c['status']} at {_when(c['at'])} (requires "
                     f"{c['requires']}): {c['cause'] or ''}".rstrip(": "))
    return lines
