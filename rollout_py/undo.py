"""A batch's undo: out of rotation again, the previous release, probes, the recorded LB
state; and ``rollback_all``'s undo of earlier batches, newest first."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

from rollout_py import events as ev
from rollout_py.balancer.fleet import wait_until
from rollout_py.errors import BalancerError, BalancerUnreachable, ControllerError
from rollout_py.planner import PlannedBatch
from rollout_py.saga import Applied, LBLost, RunState, SagaBase, not_up_where_ready


class UndoSteps(SagaBase):
    """The undo half of the saga (mixed into the Engine)."""

    def _rollback_earlier(self, done: list[Applied], index: int, cause: str,
                          state: RunState) -> None:
        if self.plan.on_failure == "rollback_all":
            for earlier in reversed(done):
                state.stranded += self._rollback(
                    earlier, f"rollback_all after batch {index}: {cause}")
            done.clear()

    def _rollback(self, applied: Applied, cause: str) -> list[str]:
        """Undoes what the batch applied, newest first. Returns hosts left out of rotation."""
        batch = applied.batch
        host_of = dict(zip(batch.servers, batch.hosts, strict=True))
        self._end_watch()
        self.emit(ev.RollbackStarted, batch=batch.index, hosts=batch.hosts, cause=cause)
        self._undid = True
        # Servers someone else changed meanwhile are left as found and reported, not fought.
        foreign = {k.split(" ", 1)[1] for k in self._foreign} & set(batch.servers)
        servers = tuple(s for s in batch.servers if s not in foreign)
        stranded: set[str] = {host_of[s] for s in foreign}
        detail = ""
        failure: ev.Failure | None = None
        if foreign:
            detail = "left as found, changed by someone else: " + "; ".join(
                f"{k}: {v}" for k, v in sorted(self._foreign.items()))
        try:
            if applied.enabled and servers:  # undo enable: out of rotation again, gently
                self.balancer.set_state(servers, "drain")
                left = self.balancer.sessions(servers)
                if any(left.values()):
                    wait_until(lambda: not any(self.balancer.sessions(servers).values()),
                               self.settings.drain_timeout, self.settings.poll)
                self.balancer.set_state(servers, "maint")
            if applied.upgraded and servers:  # undo upgrade: the previous release
                stranded |= self._undo_upgrade(batch, [host_of[s] for s in servers])
            if applied.snapshot is not None:  # undo drain: recorded state, UP again
                healthy = [s for s in servers if host_of[s] not in stranded]
                if healthy:
                    self.balancer.restore(applied.snapshot, healthy)
                snap = applied.snapshot
                if healthy and not wait_until(
                        lambda: not not_up_where_ready(self.balancer.states(), snap, healthy),
                        self.settings.up_timeout, self.settings.poll):
                    late = not_up_where_ready(self.balancer.states(), snap, healthy)
                    detail = f"HAProxy did not report {', '.join(late)} UP after the rollback"
                    stranded |= {host_of[s] for s in late}
                if stranded:
                    self.balancer.set_state([s for s in servers if host_of[s] in stranded],
                                            "maint")
            elif servers:  # no recorded state to go back to: they stay out, reported
                stranded |= {host_of[s] for s in servers}
                detail = "no LB state was recorded before the drain: left in MAINT"
        except BalancerUnreachable as exc:
            raise LBLost(f"during the rollback of batch {batch.index}: {exc}") from exc
        except ControllerError as exc:
            failure = "controller"
            detail = f"the controller failed during the rollback: {exc}"
            stranded = set(batch.hosts)
            with contextlib.suppress(BalancerError):
                self.balancer.set_state(servers, "maint")
        except BalancerError as exc:
            failure = "balancer"
            detail = f"load balancer error during rollback: {exc}"
            stranded = set(batch.hosts)
        ordered = [h for h in batch.hosts if h in stranded]
        self.emit(ev.RollbackFinished, batch=batch.index, ok=not ordered,
                  stranded=tuple(ordered), detail=detail, failure=failure)
        return ordered

    def _undo_upgrade(self, batch: PlannedBatch, batch_hosts: Sequence[str]) -> set[str]:
        plan = self.plan
        stranded: set[str] = set()
        self.emit(ev.StepStarted, batch=batch.index, step="rollback", hosts=tuple(batch_hosts))
        t = time.monotonic()
        outcomes: dict[str, str] = {}
        if plan.rollback_playbook:
            groups: dict[str | None, list[str]] = {plan.version: list(batch_hosts)}
        else:
            groups = {}
            for host in batch_hosts:
                groups.setdefault(self._previous.get(host), []).append(host)
        for version, hosts in groups.items():
            if version is None:
                for host in hosts:
                    outcomes[host] = "failed: previous version unknown (no rollback_playbook)"
                continue
            playbook = plan.rollback_playbook or plan.playbook
            extra = {"rollout_rollback": True,
                     "rollout_previous_versions": {h: self._previous.get(h) for h in hosts}}
            result = self.executor.run_playbook(
                playbook, hosts, self._extravars(version, batch.index, **extra),
                label=f"batch{batch.index}-rollback", cancel=None)
            outcomes.update(result.hosts)
        stranded |= {h for h, o in outcomes.items() if o != "ok"}
        # A host the rollback could not reach (or change) may still serve its previous
        # release untouched, e.g. when SSH died before the upgrade reached it. If the spec's
        # version_url says so, the probes below decide; otherwise it stays out.
        if self.settings.version_of is not None:
            for host in sorted(stranded):
                previous = self._previous.get(host)
                if previous is not None and self.settings.version_of(host) == previous:
                    stranded.discard(host)
                    outcomes[host] = f"{outcomes[host]} (serves {previous}: verified by probes)"
        self.emit(ev.StepFinished, batch=batch.index, step="rollback", ok=not stranded,
                  hosts=outcomes, versions={h: self._previous.get(h) for h in batch_hosts},
                  duration=round(time.monotonic() - t, 3))
        to_probe = [h for h in batch_hosts if h not in stranded]
        if to_probe:
            results = self._probe(batch, {h: self._previous.get(h) for h in to_probe},
                                  phase="rollback", hosts=to_probe)
            stranded |= {h for h, failure in results.items() if failure}
        return stranded

