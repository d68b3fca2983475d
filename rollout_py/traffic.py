"""The traffic steps of a plan (set weight, analyse, pause, restore weights) and the operator
controls that act on them; mixed into the Engine.

Weights: before the first ``set weight`` every fleet server's weight on every LB is journaled
(``WeightsRecorded``); whatever ends the steps (promotion, a failed gate, ``rollout abort``,
an interrupt, a resume after a crash) restores exactly those weights.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from typing import Any

from rollout_py import events as ev
from rollout_py.analysis.counters import sample, window_deltas
from rollout_py.analysis.judge import WindowVerdict, judge_window
from rollout_py.analysis.run import AnalysisRun
from rollout_py.balancer.fleet import wait_until
from rollout_py.controls import Control
from rollout_py.errors import BalancerError, InputError
from rollout_py.saga import BatchFailure, SagaBase, Stopped
from rollout_py.spec_canary import absolute_only
from rollout_py.steps import Analyse, Pause, RestoreWeights, SetWeight, TrafficStep
from rollout_py.weights import shape


class TrafficSteps(SagaBase):
    """Executes traffic steps; a failure raises BatchFailure naming the judged batch."""

    def _traffic(self, step: TrafficStep) -> None:
        if isinstance(step, SetWeight):
            if not self._skip_canary:
                self._set_weight(step)
        elif isinstance(step, Analyse):
            if not (self._skip_canary and step.purpose == "canary"):
                self._analyse(step)
        elif isinstance(step, Pause):
            if not self._skip_canary:
                self._hold(step.step, step.duration, "plan")
        elif isinstance(step, RestoreWeights):
            self._restore_weights(step.step)
            self._skip_canary = False
        if self._pause_requested is not None and not isinstance(step, RestoreWeights):
            who, self._pause_requested = self._pause_requested, None
            self._hold(step.step, None, who)

    # --- weights -------------------------------------------------------------------------
    def _set_weight(self, step: SetWeight) -> None:
        batch = self.plan.batches[step.batch - 1]
        states = self.balancer.states()
        if self._weights_recorded is None:
            recorded = {url: {s: st.weight for s, st in per.items()
                              if s in self.plan.servers.values()}
                        for url, per in states.items()}
            self.emit(ev.WeightsRecorded, weights=recorded)
            self._weights_recorded = recorded
        weights: dict[str, dict[str, int]] = {}
        achieved: dict[str, float] = {}
        for url, per in states.items():
            base = self._weights_recorded.get(url, {})
            in_rotation = {s: base.get(s, st.weight) for s, st in per.items()
                           if s in base and st.in_rotation}
            try:
                shaped = shape(in_rotation, batch.servers, step.share)
            except InputError as exc:
                raise BatchFailure("capacity", f"step {step.step}: {url}: {exc}",
                                   batch.hosts) from None
            weights[url], achieved[url] = shaped.weights, shaped.achieved
        self._weights_dirty = True
        failed = self.balancer.set_weights(weights)
        self._weights_set = weights
        event = self.emit(ev.WeightsSet, step=step.step, share=step.share, achieved=achieved,
                          weights=weights)
        assert isinstance(event, ev.WeightsSet)
        self._weights_event = event
        if failed:
            raise BatchFailure("balancer", f"step {step.step}: set weight refused: "
                               + "; ".join(f"{k}: {v}" for k, v in sorted(failed.items())),
                               batch.hosts)

    def _restore_weights(self, step: int = 0) -> None:
        """Every recorded weight back (those already right too: one command each is cheap
        and leaves no doubt); refusals are journaled and said, never silent. ``step``: the
        plan's restore step (its end marks the canary steps done), 0 otherwise."""
        if step == 0 and (self._weights_recorded is None or not self._weights_dirty):
            return
        weights = self._weights_recorded or {}
        failed = self.balancer.set_weights(weights) if weights else {}
        self._weights_set = None
        self.emit(ev.WeightsRestored, weights=weights, failed=failed, step=step)
        self._weights_dirty = bool(failed)

    def _restore_weights_if_changed(self) -> None:
        """At the end of the steps, whatever ended them. Not after kill -9, of course: then
        resume restores them from the journal. An LB lost now: the same."""
        if self._weights_dirty and not self._journal_failed:
            with contextlib.suppress(BalancerError):
                self._restore_weights()

    # --- analysis ------------------------------------------------------------------------
    def _baseline(self, judged: Sequence[str]) -> tuple[str, ...]:
        """The servers still on the old version: neither upgraded in this deploy nor skipped
        for being on the new one already."""
        new = {self.plan.servers[h] for h in self._upgraded_hosts()} | set(judged)
        new |= {self.plan.servers[h] for h in self.plan.skipped}
        return tuple(s for h, s in self.plan.servers.items() if s not in new)

    def _analyse(self, step: Analyse) -> None:
        spec = self.settings.analysis
        assert spec is not None, "a plan with an analysis step needs settings.analysis"
        batch = self.plan.batches[step.batch - 1]
        canary, baseline = batch.servers, self._baseline(batch.servers)
        if not baseline:  # no old server left (a last batch): nothing to compare with
            spec = absolute_only(spec)
        run = AnalysisRun(spec, max(1, math.ceil(step.duration / spec.interval)))
        prev = sample(self.balancer.stats([*canary, *baseline]))
        window = 0
        while True:
            t_end = time.monotonic() + spec.interval
            effect = self._wait_controls(t_end, step.step)
            if effect in ("promote", "promote_all"):
                self.emit(ev.AnalysisFinished, batch=step.batch, step=step.step,
                          purpose=step.purpose, verdict="promoted",
                          cause=f"promoted by {self._control_by}")
                return
            cur = sample(self.balancer.stats([*canary, *baseline]))
            deltas = window_deltas(prev, cur, [*canary, *baseline])
            prev = cur
            window += 1
            if step.purpose == "soak":
                self._probe_round(batch.hosts)
            verdict = judge_window(deltas, canary, baseline, spec,
                                   prometheus=self.settings.prometheus,
                                   ignore_metrics_unavailable=self.settings.ignore_metrics)
            fields = verdict.event_fields()
            if not baseline:
                fields["reason"] = (f"{fields['reason']} (no old server left to compare with: "
                                    "the baseline gates are dropped)")
            self._emit_window(step, window, canary, baseline, verdict, fields)
            if verdict.verdict == "reset":
                self._reapply_weights()
            if self._conclude(step, run, verdict, f"analysis of batch {step.batch}",
                              batch.hosts):
                return

    def _emit_window(self, step: Analyse, window: int, canary: Sequence[str],
                     baseline: Sequence[str], verdict: WindowVerdict,
                     fields: dict[str, Any]) -> None:
        """Journals a judged window (and each unavailable metric let pass)."""
        self.emit(ev.AnalysisWindow, batch=step.batch, step=step.step, purpose=step.purpose,
                  window=window, canary=tuple(canary), baseline=tuple(baseline), **fields)
        for gate, detail in verdict.ignored_metrics():
            self.emit(ev.MetricsUnavailable, gate=gate, detail=detail)

    def _conclude(self, step: Analyse, run: AnalysisRun, verdict: WindowVerdict, what: str,
                  hosts: Sequence[str]) -> bool:
        """Adds the window to the run: True once passed (journaled), raises once failed."""
        status = run.add(verdict)
        if status == "passed":
            self.emit(ev.AnalysisFinished, batch=step.batch, step=step.step,
                      purpose=step.purpose, verdict="pass", cause=run.cause)
            return True
        if status == "failed":
            cause = f"step {step.step} {what}: {run.cause}"
            self.emit(ev.AnalysisFinished, batch=step.batch, step=step.step,
                      purpose=step.purpose, verdict="fail", cause=cause, hosts=tuple(hosts))
            raise BatchFailure("analysis", cause, hosts)
        return False

    def _reapply_weights(self) -> None:
        """After a reload (counters went down) HAProxy is back at its configured weights:
        the canary's share is set again, if it was lost."""
        if self._weights_set is None:
            return
        states = self.balancer.states()
        if all(states.get(url, {}).get(s) is None or states[url][s].weight == w
               for url, per in self._weights_set.items() for s, w in per.items()):
            return
        failed = self.balancer.set_weights(self._weights_set)
        last = self._weights_event
        assert last is not None
        self.emit(ev.WeightsSet, step=last.step, share=last.share, achieved=last.achieved,
                  weights=self._weights_set)
        if failed:
            raise BatchFailure("balancer", "set weight refused after a reload: " + "; ".join(
                f"{k}: {v}" for k, v in sorted(failed.items())))

    def _probe_round(self, hosts: Sequence[str]) -> None:
        """One round of every probe of a batch being soaked (its analysis step's window)."""
        for host in hosts:
            before, after = self.checks(host, self.plan.version)
            for check in [*before, *after]:
                failure = self.prober.run(host, check)
                if failure is not None:
                    self.emit(ev.ProbeFailed, batch=self._batch_of(host), host=host,
                              phase="soak", probe=failure.split(":", 1)[0], detail=failure)
                    raise BatchFailure("probe_failed", f"soak probe failed on {host}: "
                                       f"{failure}", (host,))

    def _batch_of(self, host: str) -> int:
        return next(b.index for b in self.plan.batches if host in b.hosts)

    # --- pauses and operator controls ----------------------------------------------------
    def _hold(self, step: int, duration: float | None, by: str) -> None:
        """A pause: every server stays as it is; ends when elapsed, promoted or continued."""
        self.emit(ev.PauseStarted, step=step, duration=duration, by=by)
        end = time.monotonic() + duration if duration is not None else math.inf
        while True:
            effect = self._wait_controls(end, step)
            if effect is None and time.monotonic() >= end:
                self.emit(ev.PauseEnded, step=step, how="elapsed")
                return
            if effect in ("promote", "promote_all", "continue"):
                how = "continued" if effect == "continue" else "promoted"
                self.emit(ev.PauseEnded, step=step, how=how)
                return

    def _wait_controls(self, until: float, step: int) -> str | None:
        """Waits until ``until`` (monotonic) or an operator's control, whichever comes
        first; abort, an interrupt or a failed watch raise. Returns the control's effect."""
        effect: list[str] = []

        def arrived() -> bool:
            self._check_running()
            for control in self.settings.controls() if self.settings.controls else ():
                effect.append(self._apply_control(control, step))
            return bool([e for e in effect if e != "pause"])

        wait_until(arrived, max(0.0, until - time.monotonic()), self.settings.poll)
        self._check_running()
        return next((e for e in effect if e != "pause"), None)

    def _apply_control(self, control: Control, step: int) -> str:
        action, by = control.action, control.by
        self._control_by = by
        effects = {
            "promote": "ends the current pause or analysis step now",
            "promote_all": "skips every remaining canary step: the rest of the fleet rolls",
            "abort": "rolls the canary back now",
            "pause": "holds after the current step (nothing out of rotation)",
            "continue": "ends the pause",
        }
        self.emit(ev.ControlReceived, action=action, by=by, sent_at=control.sent_at,
                  control_id=control.id,
                  effect=f"step {step}: {effects[action]}")
        if action == "abort":
            self._aborted_by = by
        elif action == "pause":
            self._pause_requested = by
        elif action == "promote_all":
            self._skip_canary = True
        return action

    def _check_running(self) -> None:
        """Raises what ends a traffic step from outside: abort, a failed watch, an interrupt."""
        if self._aborted_by is not None:
            raise BatchFailure("aborted", f"aborted by {self._aborted_by}")
        if self._watch_failure is not None:
            hosts, cause = self._watch_failure
            raise BatchFailure("analysis", cause, hosts)
        if self._stop_after_batch.is_set():
            raise Stopped("interrupted during a traffic step")

    def _upgraded_hosts(self) -> list[str]:
        raise NotImplementedError
