"""A batch's forward steps: capacity, drain, upgrade, verify, enable, soak; the stage before
the first batch; the guard that keeps a batch out of rotation while its hosts change."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping, Sequence

from rollout_py import events as ev
from rollout_py.balancer.fleet import out_of_rotation, wait_until
from rollout_py.errors import BalancerError, BalancerUnreachable, ControllerError, JournalError
from rollout_py.executor import PreparesBatches
from rollout_py.planner import PlannedBatch
from rollout_py.probes import Check, soak, wait_healthy
from rollout_py.reconcile import RETRYABLE
from rollout_py.saga import (
    Applied,
    BatchFailure,
    LBLost,
    RunState,
    drift,
    not_up_where_ready,
)
from rollout_py.warmup import WarmupSteps, starting


class BatchSteps(WarmupSteps):
    """The forward half of the saga (mixed into the Engine)."""

    def _run_batch(self, applied: Applied, *, finish_only: bool = False
                   ) -> tuple[bool, str | None, list[str]]:
        batch = applied.batch
        if not finish_only:
            self.emit(ev.BatchStarted, batch=batch.index, hosts=batch.hosts)
        failure: ev.Failure
        try:
            durations = self._finish_batch(applied) if finish_only else self._forward(applied)
        except BatchFailure as exc:
            failure, cause, hosts = exc.failure, exc.cause, exc.hosts or batch.hosts
        except BalancerUnreachable as exc:
            self.emit(ev.BatchFailed, batch=batch.index, failure="balancer_unreachable",
                      cause=str(exc), hosts=batch.hosts)
            raise LBLost(str(exc)) from exc
        except BalancerError as exc:
            failure, cause, hosts = "balancer", str(exc), batch.hosts
        except ControllerError as exc:
            failure, cause, hosts = "controller", str(exc), batch.hosts
        else:
            self.emit(ev.BatchSucceeded, batch=batch.index, durations=durations)
            return True, None, []
        if self._watch_failure is not None:  # the watch cancelled the step: say why
            failure, cause = "analysis", self._watch_failure[1]
        elif self._foreign:
            failure, cause = "foreign_change", ("someone else changed servers of the batch: "
                                                + "; ".join(f"{k}: {v}" for k, v in
                                                            sorted(self._foreign.items())))
        self._last_failure = failure
        self.emit(ev.BatchFailed, batch=batch.index, failure=failure, cause=cause, hosts=hosts)
        if not (applied.drained or applied.upgraded or applied.enabled or applied.snapshot):
            return False, cause, []  # nothing was touched
        return False, cause, self._rollback(applied, cause)

    def _forward(self, applied: Applied) -> dict[str, float]:
        batch, plan, s = applied.batch, self.plan, self.settings
        servers = batch.servers
        if isinstance(self.executor, PreparesBatches):  # its Ansible ready before the drain
            ready = self.executor.wait_batches
            wait_until(lambda: ready(0.05), 30.0, 0.0, stop=self._aborted)
        t0 = time.monotonic()
        durations: dict[str, float] = {}

        # Capacity, from the live state of every LB, before anything is touched.
        out = out_of_rotation(self.balancer.states(), plan.servers.values())
        taking_out = len(out | set(servers))
        self.emit(ev.CapacityChecked, batch=batch.index, out_of_rotation=len(out),
                  taking_out=taking_out, max_unavailable=plan.max_unavailable)
        if taking_out > plan.max_unavailable:
            raise BatchFailure("capacity", f"batch {batch.index} would leave {taking_out} servers "
                               f"out of rotation ({len(out)} already are: "
                               f"{', '.join(sorted(out)) or '-'}); max_unavailable is "
                               f"{plan.max_unavailable}")

        # Drain: no new requests; wait for sessions to end; then MAINT.
        applied.snapshot = self.balancer.snapshot(servers)
        recorded = {url: {srv: [r.admin, r.weight] for srv, r in per.items()}
                    for url, per in applied.snapshot.items()}
        # Out of rotation before we touched it (an operator's DRAIN/MAINT): restored so, and said.
        found_out = {f"{url} {srv}": r.admin for url, per in applied.snapshot.items()
                     for srv, r in per.items() if r.admin != "READY"}
        applied.drained = True
        # Journaled before the drain is applied: a resume then knows the state to restore.
        self.emit(ev.StateRecorded, batch=batch.index, servers=servers, recorded=recorded,
                  found_out=found_out)
        self.balancer.set_state(servers, "drain")
        self.emit(ev.DrainStarted, batch=batch.index, servers=servers, recorded=recorded,
                  found_out=found_out)
        forced, cut = self._wait_drained(servers, force=s.force_drain)
        self.emit(ev.ServersDrained, batch=batch.index, servers=servers, forced=forced, cut=cut)
        self.balancer.set_state(servers, "maint")
        self.emit(ev.ServersDisabled, batch=batch.index, servers=servers)
        durations["drain"] = time.monotonic() - t0

        # Upgrade: one run limited to the batch.
        t = time.monotonic()
        applied.upgraded = True
        self.emit(ev.StepStarted, batch=batch.index, step="upgrade", hosts=batch.hosts)
        with self._guard(applied):
            result = self.executor.run_playbook(
                plan.playbook, batch.hosts, self._extravars(plan.version, batch.index),
                label=f"batch{batch.index}-upgrade", tags=s.switch_tags, cancel=self._aborted)
        for host in batch.hosts:
            if host in result.previous_versions:
                self._previous[host] = result.previous_versions[host]
        durations["upgrade"] = time.monotonic() - t
        self.emit(ev.StepFinished, batch=batch.index, step="upgrade", ok=result.ok,
                  hosts=result.hosts,
                  versions={h: self._previous.get(h) for h in batch.hosts},
                  duration=durations["upgrade"])
        if not result.ok:
            bad = [h for h, o in result.hosts.items() if o != "ok"]
            first = next((result.hosts[h] for h in bad), result.status)
            raise BatchFailure(result.failure_kind(),
                               f"upgrade failed on {', '.join(bad) or 'the batch'}: {first}", bad)

        durations.update(self._finish_batch(applied))
        durations["total"] = time.monotonic() - t0
        return {k: round(v, 3) for k, v in durations.items()}

    def _finish_batch(self, applied: Applied) -> dict[str, float]:
        """Verify, enable, soak: the part of a batch after its upgrade."""
        batch, plan, s = applied.batch, self.plan, self.settings
        servers = batch.servers
        durations: dict[str, float] = {}
        t0 = time.monotonic()
        # Verify with our own probes before HAProxy sees the servers again.
        t = time.monotonic()
        with self._guard(applied):
            self._probe(batch, plan.version, phase="verify")
        durations["verify"] = time.monotonic() - t

        # Enable: the recorded state and weight on every LB, then HAProxy's own check UP.
        t = time.monotonic()
        applied.enabled = True
        self._enable(applied)
        self.emit(ev.ServersEnabled, batch=batch.index, servers=servers)
        if s.warmup > 0:
            self._warm_up(applied)
        durations["enable"] = time.monotonic() - t

        judged = any(t.batch == batch.index and t.kind == "analyse" and t.purpose == "soak"
                     for t in plan.traffic)
        if s.health.soak > 0 and not judged:  # else its analysis step soaks it, probes too
            t = time.monotonic()
            self._probe(batch, plan.version, phase="soak")
            durations["soak"] = time.monotonic() - t
        durations["total"] = time.monotonic() - t0
        return durations

    def _prepare_batches(self, start: int) -> None:
        """Tells the executor which batch runs come (from ``start``, 0-based), so it can get
        their Ansible ready while the stage runs (rollout_py.playbook_session)."""
        if isinstance(self.executor, PreparesBatches):
            extravars = self._extravars(self.plan.version, 0)
            del extravars["rollout_batch"]
            self.executor.prepare_batches(
                self.plan.playbook, [(b.index, b.hosts) for b in self.plan.batches[start:]],
                extravars, tags=self.settings.switch_tags)

    def _end_batches(self) -> None:
        if isinstance(self.executor, PreparesBatches):
            self.executor.end_batches()

    def _stage(self, state: RunState) -> None:
        """Copies the release to every host of the plan while they still serve: the part of
        an upgrade that is safe in rotation. Nothing is drained; a failure stops the deploy."""
        hosts = self.plan.hosts
        if not hosts:
            return
        self.emit(ev.StepStarted, batch=0, step="stage", hosts=hosts)
        t = time.monotonic()
        try:
            result = self.executor.run_playbook(
                self.plan.playbook, hosts, self._extravars(self.plan.version, 0),
                label="stage", tags=self.settings.stage_tags, cancel=self._aborted)
        except ControllerError as exc:
            self.emit(ev.StepFinished, batch=0, step="stage", ok=False,
                      hosts=dict.fromkeys(hosts, f"not run: {exc}"), versions={},
                      duration=round(time.monotonic() - t, 3))
            state.failed, state.resumable = True, True
            state.cause = f"staging stopped (nothing was drained): the controller failed: {exc}"
            return
        self.emit(ev.StepFinished, batch=0, step="stage", ok=result.ok, hosts=result.hosts,
                  versions={h: result.previous_versions.get(h) for h in hosts},
                  duration=round(time.monotonic() - t, 3))
        for host, version in result.previous_versions.items():
            self._previous.setdefault(host, version)
        if not result.ok:
            bad = [h for h, o in result.hosts.items() if o != "ok"]
            state.failed = True
            state.resumable = result.failure_kind() in RETRYABLE
            state.cause = (f"staging failed on {', '.join(bad) or 'the fleet'} (nothing was "
                           f"drained): {next((result.hosts[h] for h in bad), result.status)}")

    @contextlib.contextmanager
    def _guard(self, applied: Applied) -> Iterator[None]:
        """While a batch must stay out of rotation, watches every LB and puts its servers back
        in MAINT if something (an HAProxy reload without its state) brought them back."""
        servers = applied.batch.servers
        stop = threading.Event()

        def watch() -> None:
            clean = None  # the last states found with nothing to correct
            while not stop.wait(self.settings.guard_interval):
                try:
                    states = self.balancer.states(only=servers)
                except BalancerError:
                    continue  # the main flow meets (and handles) a lost LB itself
                if states == clean:
                    continue  # as last judged: still nothing to correct
                reloaded, foreign = drift(states, applied.snapshot, servers)
                if not reloaded and not foreign:
                    clean = states
                if foreign and not self._foreign:
                    self._foreign.update(foreign)
                    self._abort.set()  # cancels the running step; the batch stops
                    with contextlib.suppress(JournalError):
                        self.emit(ev.ForeignChange, batch=applied.batch.index,
                                  servers=tuple(sorted({k.split(" ", 1)[1] for k in foreign})),
                                  found=foreign)
                    return
                if reloaded:
                    try:
                        self.balancer.set_state(servers, "maint")
                    except BalancerError:
                        continue
                    with contextlib.suppress(JournalError):
                        self.emit(ev.DriftCorrected, batch=applied.batch.index,
                                  servers=servers, found=reloaded)

        thread = threading.Thread(target=watch, name="maint-guard", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
        if self._journal_failed:
            raise JournalError(self._journal_failed)

    def _wait_drained(self, servers: Sequence[str], *, force: bool
                      ) -> tuple[tuple[str, ...], dict[str, dict[str, int]]]:
        """Waits for the servers' sessions to end; with ``force``, shuts those left after the
        timeout. Returns the servers whose sessions were shut and, per LB, how many."""
        left: dict[str, int] = {}

        def drained() -> bool:
            left.clear()
            left.update({k: v for k, v in self.balancer.sessions(servers).items() if v})
            return not left

        if wait_until(drained, self.settings.drain_timeout, self.settings.poll, self._aborted):
            return (), {}
        if self._aborted():
            raise BatchFailure("cancelled", "interrupted while draining")
        if not force:
            raise BatchFailure("drain_timeout", "sessions still open after "
                               f"{self.settings.drain_timeout:g} s: "
                               + ", ".join(f"{k} {v}" for k, v in sorted(left.items())),
                               tuple(left))
        forced = tuple(sorted(left))
        cut = {url: {s: n for s, n in per.items() if n}
               for url, per in self.balancer.sessions_by_lb(forced).items()}
        self.balancer.shutdown_sessions(forced)
        wait_until(drained, 10, self.settings.poll)
        return forced, {url: per for url, per in cut.items() if per}

    def _enable(self, applied: Applied) -> None:
        assert applied.snapshot is not None
        servers = applied.batch.servers
        snapshot = applied.snapshot
        warm = self.settings.warmup > 0
        self.balancer.restore(starting(snapshot, servers, self.settings.warmup_from) if warm
                              else snapshot, servers)
        bad: list[str] = []

        def up() -> bool:
            bad[:] = not_up_where_ready(self.balancer.states(), snapshot, servers)
            return not bad

        if not wait_until(up, self.settings.up_timeout, self.settings.poll, self._aborted):
            raise BatchFailure("probe_failed", "HAProxy's check did not report "
                               f"{', '.join(bad)} UP within {self.settings.up_timeout:g} s", bad)

    def _probe(self, batch: PlannedBatch, version: str | Mapping[str, str | None], *,
               phase: str, hosts: Sequence[str] | None = None) -> dict[str, str | None]:
        hosts = list(hosts if hosts is not None else batch.hosts)
        h = self.settings.health
        checks: dict[str, list[Check]] = {}
        for host in hosts:
            v = version if isinstance(version, str) else (version.get(host) or "")
            before, after = self.checks(host, v)
            checks[host] = before + after if phase == "soak" else before

        def report(host: str, failure: str | None, _check: str) -> None:
            if failure is None:
                self.emit(ev.ProbePassed, batch=batch.index, host=host, phase=phase)
            else:
                self.emit(ev.ProbeFailed, batch=batch.index, host=host, phase=phase,
                          probe=failure.split(":", 1)[0], detail=failure)

        stop = (lambda: False) if phase == "rollback" else self._aborted
        if phase == "soak":
            results = soak(self.prober, checks, duration=h.soak, interval=h.interval,
                           on_result=report, stop=stop)
        else:
            results = wait_healthy(self.prober, checks, deadline=h.deadline, interval=h.interval,
                                   consecutive=h.consecutive, on_result=report, stop=stop)
        bad = {k: v for k, v in results.items() if v}
        if bad and phase != "rollback":
            first = next(iter(bad))
            raise BatchFailure("probe_failed", f"{phase} probe failed on {', '.join(bad)}: "
                               f"{first}: {bad[first]}", tuple(bad))
        return results

    # --- undo ----------------------------------------------------------------------------
