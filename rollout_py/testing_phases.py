"""Test doubles for the phase seams (``rollout_py.phase_run.PhaseRunner`` and
``rollout_py.release_run.ReleaseRunner``): each records its runs in a FakeFleet's log
(``expand on db1 -> 2.0``, ``release new-greeting to 100%``), so tests see phases and LB/host
side effects in one order, and fails as told.

Example:
    >>> from rollout_py.testing import FakeFleet
    >>> fleet = FakeFleet(["web1"])
    >>> runner = FakePhaseRunner(fleet, hosts={"expand": "db1"}, fail={"expand": 1})
    >>> runner.run("expand", None, version="2.0", deploy_id="d").ok  # type: ignore[arg-type]
    False
    >>> fleet.log
    ['expand on db1 -> 2.0']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from rollout_py.events.phases import SchemaPhase
from rollout_py.executor import Cancel
from rollout_py.phase_run import PhaseOutcome
from rollout_py.spec_phases import PhaseSpec, ReleaseSpec
from rollout_py.testing import FakeFleet

__all__ = ["FakePhaseRunner", "FakeRelease"]


class FakePhaseRunner:
    """Runs nothing; ``fail`` maps a phase to how many of its next runs fail (exit 1)."""

    def __init__(self, fleet: FakeFleet, *, hosts: Mapping[str, str] | None = None,
                 fail: Mapping[str, int] | None = None) -> None:
        self.fleet = fleet
        self.hosts = dict(hosts or {})
        self.fail = dict(fail or {})
        self.calls: list[tuple[str, str, str]] = []  # (phase, version, deploy id)

    def host(self, name: SchemaPhase) -> str:
        return self.hosts.get(name, "local")

    def run(self, name: SchemaPhase, phase: PhaseSpec, *, version: str, deploy_id: str,
            cancel: Cancel | None = None) -> PhaseOutcome:
        self.fleet.record(f"{name} on {self.host(name)} -> {version}")
        self.calls.append((name, version, deploy_id))
        if cancel is not None and cancel():
            return PhaseOutcome(ok=False, rc=-15, detail="cancelled", cancelled=True)
        if self.fail.get(name, 0) > 0:
            self.fail[name] -= 1
            return PhaseOutcome(ok=False, rc=1, detail=f"ERROR: {name}: injected failure")
        return PhaseOutcome(ok=True, rc=0, detail=f"{name} done")


class FakeRelease:
    """Ramps nothing; ``outcomes`` are the flag change's exit codes of the next runs (0 ok,
    1 reverted, 2 refused, 3 failed; then ok). A ``cancel`` seen true is a cancelled ramp
    (exit 130, as the real one reverts at its next wait)."""

    def __init__(self, fleet: FakeFleet, outcomes: Sequence[int] = ()) -> None:
        self.fleet = fleet
        self.outcomes = list(outcomes)
        self.calls: list[str] = []  # deploy ids

    def run(self, spec: ReleaseSpec, *, deploy_id: str,
            cancel: Callable[[], bool]) -> PhaseOutcome:
        self.fleet.record(f"release {spec.flag} to {spec.to}%")
        self.calls.append(deploy_id)
        if cancel():
            return PhaseOutcome(ok=False, rc=130, detail="cancelled: reverted", cancelled=True)
        rc = self.outcomes.pop(0) if self.outcomes else 0
        return PhaseOutcome(ok=rc == 0, rc=rc, detail=f"flag change c-{len(self.calls)}: rc {rc}")
