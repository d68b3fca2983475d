"""A deploy's ``phases.release``: after the last batch, the feature's flag is ramped through
the spec's ``flags.ramp`` steps, each judged by its ``analysis`` gates; the code went out dark
(flag off) and only now serves the feature. It is ``rollout flag ramp`` run inside the deploy
(its locks, its Ansible executor, its LBs), journaled in ``<state_dir>/flags/<change_id>/``
like any flag change (naming the deploy); the deploy journals the phase itself
(``PhaseStarted``/``PhaseFinished``: the change's id, its status and cause).

The outcome's ``rc`` is the flag change's exit code: 0 ok, 1 reverted (a gate failed: the
file from before is back on every host), 2 refused (too few baseline requests, bad input),
3 failed (some host may hold other content), 130 cancelled (reverted).

Example:
    >>> FlagRelease(ctx, state, executor, lbs).run(spec.phases.release, deploy_id="d-1",
    ...                                            cancel=lambda: False).ok  # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from rollout_py.balancer.fleet import Balancer
from rollout_py.errors import InputError, RolloutError
from rollout_py.executor import Executor
from rollout_py.spec_phases import ReleaseSpec
from rollout_py.state import StateDir

if TYPE_CHECKING:
    from rollout_py.api import Context
    from rollout_py.phase_run import PhaseOutcome

FLAG_EXIT_INPUT = 2


class ReleaseRunner(Protocol):
    """Runs a deploy's release (the seam the engine's tests replace with a double)."""

    def run(self, spec: ReleaseSpec, *, deploy_id: str,
            cancel: Callable[[], bool]) -> PhaseOutcome: ...


@dataclass(frozen=True, slots=True)
class FlagRelease:
    """The release as the deploy runs it: a flag ramp over the whole fleet (``ctx.fleet``,
    whatever ``--limit`` targeted), judged on every server's counters."""

    ctx: Context
    state: StateDir
    executor: Executor
    balancer: Balancer

    def run(self, spec: ReleaseSpec, *, deploy_id: str,
            cancel: Callable[[], bool]) -> PhaseOutcome:
        from rollout_py.flag_api import release_ramp
        from rollout_py.phase_run import PhaseOutcome

        try:
            result = release_ramp(self.ctx.spec, self.ctx, self.state, name=spec.flag,
                                  to=spec.to, variant=spec.variant, deploy_id=deploy_id,
                                  executor=self.executor, balancer=self.balancer, cancel=cancel)
        except InputError as exc:  # e.g. the flag file was edited into something invalid
            return PhaseOutcome(ok=False, rc=FLAG_EXIT_INPUT, detail=f"refused: {exc}")
        except RolloutError as exc:
            return PhaseOutcome(ok=False, rc=None, detail=f"the controller failed: {exc}")
        if result is None:
            return PhaseOutcome(ok=True, rc=0, detail=f"{spec.flag} is at {spec.to}% or more "
                                                      "already: nothing to ramp")
        return PhaseOutcome(ok=result.status == "ok", rc=result.exit_code,
                            detail=f"flag change {result.change_id}: {result.status}: "
                                   f"{result.cause}", cancelled=result.status == "cancelled")
