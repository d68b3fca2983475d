"""Blue/green steps, mixed into the Engine: the capacity floor and preview checks on the idle
pool, the switch of every LB, the post-switch analysis against the old pool's windows before
the switch, the switch back when anything after the switch fails, and the scale-down.

The deploy's one batch is the idle pool (drained of nothing, MAINT while it is upgraded, so no
request reaches the new version before its probes pass, then READY on the idle backend).
Whatever fails after the switch (a gate, ``rollout abort``, a probe) switches every LB back
*before* the engine rolls the idle pool back: the pool being rolled back is never live.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import requests

from rollout_py import events as ev
from rollout_py.analysis.counters import Counters, WindowDeltas, sample, window_deltas
from rollout_py.analysis.judge import WindowVerdict, judge_window
from rollout_py.analysis.run import AnalysisRun
from rollout_py.balancer.routes import Router
from rollout_py.errors import BalancerError
from rollout_py.saga import BatchFailure, SagaBase
from rollout_py.spec_canary import AnalysisSpec, absolute_only
from rollout_py.spec_pools import PreviewCheck
from rollout_py.steps import Analyse, CheckPreview, ScaleDown, Switch, TrafficStep


@dataclass
class PoolSettings:
    """What the blue/green steps need beside the plan (from the spec and the live LBs)."""

    router: Router
    live_key: str
    preview_key: str | None
    live_backend: str  # the pool live when the deploy started (the old one)
    live_servers: tuple[str, ...]  # its servers (the post-switch baseline)
    live_hosts: tuple[str, ...]
    min_up: int | str = "100%"  # the idle pool's floor (count, or share of live UP)
    preview: Sequence[tuple[str, PreviewCheck]] = ()  # (URL, check; body templated)
    baseline_seconds: float = 0.0
    scale_down_playbook: str | None = None


def floor(min_up: int | str, live_up: int) -> int:
    """Servers the idle pool needs UP, from ``min_up`` and the live pool's UP servers.

    Example:
        >>> floor("100%", 4), floor("50%", 3), floor(2, 8)
        (4, 2, 2)
    """
    if isinstance(min_up, int):
        return min_up
    return max(1, -(-live_up * int(min_up.rstrip("%")) // 100))


def preview_round(url: str, check: PreviewCheck) -> tuple[int, int, str]:
    """``check.requests`` GETs of ``url``: (sent, failed, the first failure)."""
    failures, first = 0, ""
    with requests.Session() as session:
        for _ in range(check.requests):
            try:
                r = session.get(url, timeout=check.timeout)
                why = ("" if r.status_code == check.status else
                       f"status {r.status_code} (expected {check.status})")
                if not why and check.body is not None and check.body not in r.text:
                    why = f"body lacks {check.body!r}"
            except requests.RequestException as exc:
                why = f"{type(exc).__name__}: {exc}"
            if why:
                failures += 1
                first = first or f"{url}: {why}"
    return check.requests, failures, first


class SwitchSteps(SagaBase):
    """Executes the blue/green steps; a failure raises BatchFailure for the engine."""

    _events: list[ev.Event]
    _baseline_by_lb: dict[str, dict[str, Counters]] | None = None
    _last_switch_back_error: str | None = None

    @property
    def _pools(self) -> PoolSettings:
        pools = self.settings.pools
        assert pools is not None, "a blue/green plan needs settings.pools"
        return pools

    def _pool_step(self, step: TrafficStep) -> bool:
        """Runs ``step`` if it is a blue/green one (False: it is not). Whatever fails after
        the switch switches back; ``rollout abort`` too."""
        if isinstance(step, CheckPreview):
            self._check_preview(step)
        elif isinstance(step, Switch):
            self._switch(step)
        elif isinstance(step, Analyse) and step.purpose == "post_switch":
            self._analyse_switched(step)
        elif isinstance(step, ScaleDown):
            self._scale_down(step)
        else:
            return False
        return True

    # --- before the switch -----------------------------------------------------------------
    def _check_preview(self, step: CheckPreview) -> None:
        pools, plan = self._pools, self.plan
        batch = plan.batches[step.batch - 1] if plan.batches else None
        hosts = batch.hosts if batch else ()
        entries = pools.router.entries()
        live = {url: e.get(pools.live_key, "") for url, e in entries.items()}
        if any(v != pools.live_backend for v in live.values()):
            raise BatchFailure("foreign_change", f"step {step.step}: the live route changed "
                               f"since the deploy started (expected {pools.live_backend}): "
                               + ", ".join(f"{u}: {v}" for u, v in live.items()), hosts)
        self.emit(ev.PoolsRead, live=pools.live_backend, idle=plan.backend,
                  per_lb={u: dict(e) for u, e in entries.items()}, maps=pools.router.maps())
        t0 = time.monotonic()
        before = self._baseline_sample()
        idle = pools.router.states(plan.backend)
        live_states = pools.router.states(pools.live_backend)
        servers = tuple(plan.servers.values())
        up = {url: sum(1 for s in servers if (st := per.get(s)) is not None
                       and st.running and not st.maint) for url, per in idle.items()}
        live_up = max((sum(1 for s in pools.live_servers if (st := per.get(s)) is not None
                           and st.running and not st.maint) for per in live_states.values()),
                      default=0)
        need = floor(pools.min_up, live_up)
        short = {url: n for url, n in up.items() if n < need}
        if short:
            detail = (f"the idle pool {plan.backend} has too few servers UP to carry the live "
                      f"pool's traffic: " + ", ".join(f"{u}: {n}" for u, n in short.items())
                      + f" (floor {need}: min_up of the {live_up} UP in {pools.live_backend})")
            self.emit(ev.PreviewChecked, step=step.step, ok=False, up=up, floor=need,
                      requests=0, failures=0, detail=detail)
            raise BatchFailure("capacity", f"step {step.step}: {detail}", hosts)
        sent = failed = 0
        first = ""
        for url, check in pools.preview if step.requests else ():
            n, bad, why = preview_round(url, check)
            sent, failed, first = sent + n, failed + bad, first or why
        ok = failed == 0
        detail = (f"{sent} preview requests passed" if ok else
                  f"{failed} of {sent} preview requests failed; first: {first}")
        self.emit(ev.PreviewChecked, step=step.step, ok=ok, up=up, floor=need,
                  requests=sent, failures=failed, detail=detail)
        if not ok:
            raise BatchFailure("probe_failed", f"step {step.step}: preview of {plan.backend} "
                               f"refused before the switch: {detail}", hosts)
        if before is not None:
            self._record_baseline(step.step, before, t0)

    def _baseline_sample(self) -> dict[str, dict[str, Counters]] | None:
        pools = self._pools
        if pools.baseline_seconds <= 0 or not self._post_switch_planned():
            return None
        return sample(pools.router.stats(pools.live_backend, pools.live_servers))

    def _post_switch_planned(self) -> bool:
        return any(isinstance(t, Analyse) and t.purpose == "post_switch"
                   for t in self.plan.traffic)

    def _record_baseline(self, step: int, before: dict[str, dict[str, Counters]],
                         t0: float) -> None:
        """The live pool's counters over ``baseline_seconds`` before the switch."""
        pools = self._pools
        self._wait_controls(t0 + pools.baseline_seconds, step)
        cur = sample(pools.router.stats(pools.live_backend, pools.live_servers))
        window = window_deltas(before, cur, pools.live_servers)
        if not isinstance(window, WindowDeltas):  # a reload meanwhile: once more, from now
            before, t0 = cur, time.monotonic()
            self._wait_controls(t0 + pools.baseline_seconds, step)
            cur = sample(pools.router.stats(pools.live_backend, pools.live_servers))
            window = window_deltas(before, cur, pools.live_servers)
        if not isinstance(window, WindowDeltas):
            raise BatchFailure("balancer", f"step {step}: no baseline before the switch: "
                               f"{window.detail}")
        self._baseline_by_lb = window.by_lb
        self.emit(ev.BaselineRecorded, step=step, backend=pools.live_backend,
                  servers=pools.live_servers, seconds=round(time.monotonic() - t0, 3),
                  deltas={lb: {s: c.as_dict() for s, c in per.items()}
                          for lb, per in window.by_lb.items()})

    # --- the switch --------------------------------------------------------------------------
    def _switch(self, step: Switch, reason: str = "plan") -> None:
        """Every LB's live route to ``step.to_backend`` (and preview to the other pool);
        refused commits are undone and raise."""
        pools = self._pools
        changes = {pools.live_key: step.to_backend}
        if pools.preview_key is not None:
            changes[pools.preview_key] = step.from_backend
        self.emit(ev.SwitchStarted, step=step.step, from_backend=step.from_backend,
                  to_backend=step.to_backend, reason=reason)
        try:
            outcome = pools.router.switch(changes)
        except BalancerError as exc:
            outcome = None
            failed = {"*": str(exc)}
        if outcome is not None:
            for lb in outcome.switched:
                self.emit(ev.PoolSwitched, step=step.step, lb=lb.url, entries=lb.entries,
                          at=lb.at, file=lb.file, file_error=lb.file_error)
            failed = dict(outcome.failed)
            failed.update({lb.url: f"map file not written: {lb.file_error}"
                           for lb in outcome.switched if lb.file_error})
        disagreement = outcome.disagreement if outcome is not None else 0.0
        self.emit(ev.SwitchFinished, step=step.step, to_backend=step.to_backend,
                  ok=not failed, disagreement=disagreement, failed=failed)
        if failed:
            hosts = self.plan.batches[0].hosts if self.plan.batches else ()
            raise BatchFailure("balancer", f"step {step.step}: switch to {step.to_backend} "
                               "failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items()),
                               hosts)

    def _switch_back_if_switched(self, cause: str) -> bool:
        """After a failure: every LB back to the old pool if the journal shows a switch to
        the new one began and some LB's live route is not on the old pool now (a partial
        switch, or a switch-back a dead controller left half done); journaled. An LB that
        refuses is reported, not hidden: False then (the new pool may still be live)."""
        switch = next((t for t in self.plan.traffic if isinstance(t, Switch)), None)
        if switch is None or not any(isinstance(e, ev.SwitchStarted)
                                     and e.to_backend == switch.to_backend
                                     for e in self._events):
            return True
        pools = self._pools
        try:
            live = [e.get(pools.live_key) for e in pools.router.entries().values()]
            if all(v == switch.from_backend for v in live):
                return True
        except BalancerError:
            pass  # not known: switch back, every LB that answers
        back = Switch(switch.step, switch.batch, switch.to_backend, switch.from_backend)
        try:
            self._switch(back, reason=f"automatic switch-back: {cause}")
        except BatchFailure as exc:
            self._last_switch_back_error = (
                f"the automatic switch-back failed ({exc.cause}): {switch.to_backend} may "
                "still be live; nothing is rolled back; run `rollout resume` or `rollout "
                "switch-back` once every LB answers")
            return False
        return True

    # --- after the switch -------------------------------------------------------------------
    def _analyse_switched(self, step: Analyse) -> None:
        """Windows of the new pool judged against the old pool's baseline windows."""
        spec = self.settings.analysis
        assert spec is not None, "a post-switch analysis needs settings.analysis"
        canary = tuple(self.plan.servers.values())
        baseline = self._baseline_by_lb or {}
        old = tuple(dict.fromkeys(s for per in baseline.values() for s in per))
        judged: AnalysisSpec = spec if old else absolute_only(spec)
        run = AnalysisRun(judged, max(1, math.ceil(step.duration / spec.interval)))
        router = self._pools.router
        prev = sample(router.stats(self.plan.backend, canary))
        window_no = 0
        while True:
            effect = self._wait_controls(time.monotonic() + spec.interval, step.step)
            if effect in ("promote", "promote_all"):
                self.emit(ev.AnalysisFinished, batch=step.batch, step=step.step,
                          purpose=step.purpose, verdict="promoted",
                          cause=f"promoted by {self._control_by}")
                return
            cur = sample(router.stats(self.plan.backend, canary))
            window = window_deltas(prev, cur, canary)
            prev = cur
            window_no += 1
            if isinstance(window, WindowDeltas):
                merged = {lb: dict(per) for lb, per in window.by_lb.items()}
                for lb, per in baseline.items():
                    merged.setdefault(lb, {}).update(per)
                window = WindowDeltas(servers=(*canary, *old), by_lb=merged, raw=window.raw,
                                      missing=window.missing)
            verdict = judge_window(window, canary, old, judged,
                                   prometheus=self.settings.prometheus,
                                   ignore_metrics_unavailable=self.settings.ignore_metrics)
            self._emit_window(step, window_no, canary, old, verdict, verdict.event_fields())
            if self._conclude(step, run, verdict, f"post-switch analysis of {self.plan.backend}",
                              self.plan.batches[0].hosts if self.plan.batches else ()):
                return

    def _scale_down(self, step: ScaleDown) -> None:
        """Holds ``after`` seconds (``rollout promote`` ends it early), then runs the
        scale-down playbook on the old pool's hosts; a failure there is reported, the new
        pool stays live."""
        self._hold(step.step, step.after, "plan")
        playbook = self._pools.scale_down_playbook
        assert playbook is not None
        result = self.executor.run_playbook(
            playbook, step.hosts, self._extravars(self.plan.version, step.batch,
                                                  rollout_pool=step.backend),
            label=f"scale-down-{step.backend}", cancel=self._aborted)
        bad = {h: o for h, o in result.hosts.items() if o != "ok"}
        self.emit(ev.PoolScaledDown, step=step.step, backend=step.backend, hosts=step.hosts,
                  ok=result.ok, detail="scaled down" if result.ok else
                  f"scale-down failed on {', '.join(bad) or 'the pool'}: {result.status}",
                  outcomes=dict(result.hosts))

    def _hold(self, step: int, duration: float | None, by: str) -> None:
        raise NotImplementedError

    def _emit_window(self, step: Analyse, window: int, canary: Sequence[str],
                     baseline: Sequence[str], verdict: WindowVerdict,
                     fields: dict[str, Any]) -> None:
        raise NotImplementedError

    def _conclude(self, step: Analyse, run: AnalysisRun, verdict: WindowVerdict, what: str,
                  hosts: Sequence[str]) -> bool:
        raise NotImplementedError

    def _wait_controls(self, until: float, step: int) -> str | None:
        raise NotImplementedError


def baseline_from(events: Sequence[ev.Event]) -> dict[str, dict[str, Counters]] | None:
    """The last baseline a journal recorded (a resume judges the new pool against it)."""
    found = [e for e in events if isinstance(e, ev.BaselineRecorded)]
    if not found:
        return None
    return {lb: {s: Counters(**c) for s, c in per.items()}
            for lb, per in found[-1].deltas.items()}
