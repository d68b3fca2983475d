"""The engine's phases: ``expand`` before the first batch; after the last one ``release`` (the
feature's flag ramped with the analysis gates) then ``migrate``; each journaled
(``PhaseStarted``/``PhaseFinished``) and taken up again by a resume. Mixed into the Engine.

Rules:

- ``expand`` runs after ``DeployStarted`` and before staging, shaping or any drain; a failure
  ends the deploy with nothing else touched (``rolled_back``, exit 1: the release is refused
  and the fleet is whole on its version); once journaled as finished it never runs again.
- ``release`` runs once every batch and its traffic steps succeeded: a ramp reverted by a
  gate ends the deploy ``rolled_back`` (exit 1: the flag is back as it was on every host, the
  fleet keeps the new version dark; migrate does not run); refused (too few requests), a host
  that did not take the file, an error or an interrupt stop it resumable (a resume, after the
  flag change's own recovery reverted what was left, ramps again from the start).
- ``migrate`` runs only once every batch, its traffic steps and the release succeeded
  (never on a stop, a rollback or an interrupt before it); a run not journaled as finished
  is run again by a resume (the user's backfill must be idempotent); a failure stops the
  deploy resumable (``stopped``, exit 5): nothing is rolled back, the fleet keeps the new
  version.
- the first interrupt lets a running expand or migrate finish, the second kills it
  (journaled); a release's ramp stops at the first and reverts.

Example:
    >>> engine.phases = Phases(spec=spec.phases, runner=runner)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from rollout_py import events as ev
from rollout_py.errors import ControllerError
from rollout_py.events.phases import SchemaPhase
from rollout_py.phase_run import PhaseOutcome, Phases
from rollout_py.saga import RunState, SagaBase
from rollout_py.spec_phases import PhaseSpec


def phase_state(events: Iterable[ev.Event], name: SchemaPhase) -> str:
    """``done``, ``failed``, ``running`` (started, no end journaled) or ``not run``.

    Example:
        >>> phase_state([], "migrate")
        'not run'
    """
    state = "not run"
    for e in events:
        if isinstance(e, ev.PhaseStarted) and e.phase == name:
            state = "running"
        elif isinstance(e, ev.PhaseFinished) and e.phase == name:
            state = "done" if e.ok else "failed"
            if e.ok:
                return state  # never run again once done
    return state


class PhaseSteps(SagaBase):
    """The phase half of the engine (expand and migrate)."""

    phases: Phases | None = None  # set by api._engine for `rollout deploy` and its resume
    _events: list[ev.Event]
    _completed: bool
    _interrupts: int

    def _flush_interrupts(self) -> None:
        raise NotImplementedError

    def _attempt(self, name: SchemaPhase) -> int:
        """1 for a phase's first run, 2 and more for runs again (by resumes)."""
        return 1 + sum(1 for e in self._events
                       if isinstance(e, ev.PhaseStarted) and e.phase == name)

    def _run_phase(self, name: SchemaPhase, phase: PhaseSpec) -> PhaseOutcome:
        """Journals the start, runs the phase (cancelled by a second interrupt), journals
        the end. A controller error is an outcome too (``rc`` None)."""
        assert self.phases is not None
        runner = self.phases.runner
        attempt = self._attempt(name)
        self.emit(ev.PhaseStarted, phase=name, on=runner.host(name), what=phase.what(),
                  attempt=attempt)
        t = time.monotonic()
        try:
            out = runner.run(name, phase, version=self.plan.version, deploy_id=self.deploy_id,
                             cancel=self._aborted)
        except ControllerError as exc:
            out = PhaseOutcome(ok=False, rc=None, detail=f"the controller failed: {exc}")
        self.emit(ev.PhaseFinished, phase=name, ok=out.ok, rc=out.rc, detail=out.detail,
                  duration=round(time.monotonic() - t, 3))
        self._flush_interrupts()
        return out

    def _expand(self, state: RunState) -> bool:
        """Runs ``expand`` unless the journal has it done; False when the deploy ends here."""
        phase = self.phases.spec.expand if self.phases is not None else None
        if phase is None or phase_state(self._events, "expand") == "done":
            return True
        if self._stop_after_batch.is_set():  # an interrupt, or resume without continue
            state.failed, state.resumable = True, True
            state.cause = "stopped before expand (nothing touched); `rollout resume` runs it"
            return False
        out = self._run_phase("expand", phase)
        if out.ok:
            return True
        state.failed = True
        where = self.phases.runner.host("expand") if self.phases else "?"
        state.cause = (f"expand failed on {where} (nothing was drained, no host touched): "
                       f"{_last_line(out.detail)}")
        if out.cancelled or (out.rc is None and out.detail.startswith("the controller")):
            state.resumable = True  # not the release's fault: resume runs expand again
        else:
            self._undid = True  # the release is refused: exit 1, like a rolled-back batch
        return False

    def _release(self, state: RunState) -> None:
        """After every batch succeeded: ramps the release's flag unless the journal has it
        done."""
        release = self.phases.spec.release if self.phases is not None else None
        if release is None or state.failed or not self._completed:
            return
        assert self.phases is not None and self.phases.release is not None
        if phase_state(self._events, "release") == "done":
            return
        if self._stop_after_batch.is_set():  # interrupted before it: resume runs it
            self._completed = False
            return
        self._end_watch()  # every host runs the release: the ramp judges the fleet itself
        attempt = self._attempt("release")
        self.emit(ev.PhaseStarted, phase="release", on="fleet", what=release.what(),
                  attempt=attempt)
        t = time.monotonic()
        runner = self.phases.release
        out = runner.run(release, deploy_id=self.deploy_id,
                         cancel=lambda: self._stop_after_batch.is_set() or self._aborted())
        self.emit(ev.PhaseFinished, phase="release", ok=out.ok, rc=out.rc, detail=out.detail,
                  duration=round(time.monotonic() - t, 3))
        self._flush_interrupts()
        if out.ok:
            return
        state.failed = True
        if out.rc == 1:  # a gate (or a push) failed and the flag is back as it was
            self._undid = True
            state.cause = (f"release reverted: {_last_line(out.detail)}; the fleet runs "
                           f"{self.plan.version} with the flag as before (dark); migrate not run")
            return
        state.resumable = True
        state.cause = (f"release not done: {_last_line(out.detail)}; every batch is done, the "
                       f"fleet runs {self.plan.version}; `rollout resume` ramps again")

    def _migrate(self, state: RunState) -> None:
        """After every batch succeeded: runs ``migrate`` unless the journal has it done."""
        phase = self.phases.spec.migrate if self.phases is not None else None
        if phase is None or state.failed or not self._completed:
            return
        if phase_state(self._events, "migrate") == "done":
            return
        if self._stop_after_batch.is_set():  # interrupted before it: resume runs it
            self._completed = False
            return
        self._end_watch()  # the release is out; a backfill's load is no signal about it
        out = self._run_phase("migrate", phase)
        if out.ok:
            return
        where = self.phases.runner.host("migrate") if self.phases else "?"
        state.failed, state.resumable = True, True
        state.cause = (f"migrate failed on {where} (every batch is done, the fleet runs "
                       f"{self.plan.version}; nothing rolled back): {_last_line(out.detail)}; "
                       "`rollout resume` runs migrate again")


def _last_line(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else "no output"
    return last if len(last) <= limit else last[:limit] + "..."


__all__ = ["PhaseSteps", "Phases", "phase_state"]
