"""One flag change on a fleet, as a saga: journal, push, wait for the effect, judge, and revert.

The order of side effects is fixed: the change's intent with the file every host had
(``flag_started``, journaled first) -> for each push its content (``flag_push_started``) ->
Ansible's run over every host -> the effect -> windows (a ramp) -> on a failed push, a failed
gate or an interrupt the revert to ``before`` on every host -> ``flag_finished``. The
controller's copy is written (temp + rename) once, when the change succeeded: until then it
holds what the fleet had before, and the journal says where the hosts are.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollout_py.analysis.counters import Reset, window_deltas
from rollout_py.analysis.judge import WindowVerdict
from rollout_py.analysis.run import AnalysisRun, windows_needed
from rollout_py.atomic import write_atomic
from rollout_py.events import Event
from rollout_py.events import flags as fev
from rollout_py.flag_analysis import FleetCounters, bound, combine, fleet_group, judge
from rollout_py.flag_hosts import FlagHosts, sha1
from rollout_py.spec_canary import AnalysisSpec

Sink = Callable[[Event], None]
EXIT_CODES: dict[str, int] = {"ok": 0, "reverted": 1, "refused": 2, "failed": 3,
                              "cancelled": 130}


class Interrupted(Exception):
    """Raised inside a ramp's waits once an interrupt arrived: the ramp reverts."""


@dataclass(frozen=True, slots=True)
class FlagResult:
    """What a flag command did: ``status`` is ok | reverted | refused | failed | cancelled."""

    change_id: str
    command: str
    flag: str
    status: str
    exit_code: int
    cause: str
    seconds: float
    written_s: float | None = None  # the last push: its start -> the file on every host
    fleet_s: float | None = None  # the last push: its start -> every host serving it
    left: dict[str, str] = field(default_factory=dict)
    bound: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


class FlagChange:
    """Runs one command's change; every event goes to ``sinks`` (the journal first)."""

    def __init__(self, change_id: str, *, command: fev.FlagCommand, flag: str,
                 hosts: FlagHosts, controller: Path, before: str, sinks: Sequence[Sink],
                 settle: float = 1.0, effect_timeout: float = 15.0,
                 sleep: Callable[[float], None] = time.sleep,
                 cancel: Callable[[], bool] | None = None) -> None:
        self.change_id, self.command, self.flag = change_id, command, flag
        self.hosts, self.controller, self.before = hosts, controller, before
        self.sinks, self.settle, self.effect_timeout = list(sinks), settle, effect_timeout
        self.sleep = sleep
        self.cancel = cancel  # polled like an interrupt (a deploy's ramp: its interrupts)
        self.seq = 0
        self.started = time.monotonic()
        self.interrupts = 0
        self.last_written: float | None = None
        self.last_fleet: float | None = None
        self.the_bound: dict[str, Any] | None = None

    # --- events --------------------------------------------------------------------------
    def emit(self, cls: type[Event], **fields: Any) -> None:
        self.seq += 1
        event = cls(deploy_id=self.change_id, seq=self.seq, **fields)
        for sink in self.sinks:
            sink(event)

    def interrupt(self, _why: str = "") -> None:
        """A signal: a ramp stops at its next wait and reverts (set and kill finish)."""
        self.interrupts += 1

    def _wait(self, seconds: float) -> None:
        """Sleeps in small steps (an interrupt ends the wait within 50 ms)."""
        left = seconds
        while left > 0:
            self._check()
            self.sleep(min(0.05, left))
            left -= 0.05
        self._check()

    def _check(self) -> None:
        if self.interrupts or (self.cancel is not None and self.cancel()):
            raise Interrupted

    def start(self, *, target: str, steps: Sequence[int] = ()) -> None:
        self.emit(fev.FlagChangeStarted, command=self.command, flag=self.flag, target=target,
                  path=self.hosts.path, hosts=tuple(self.hosts.hosts), before=self.before,
                  steps=tuple(steps))

    def finish(self, status: fev.FlagStatus, cause: str, left: dict[str, str] | None = None
               ) -> FlagResult:
        seconds = round(time.monotonic() - self.started, 3)
        code = EXIT_CODES[status]
        self.emit(fev.FlagChangeFinished, status=status, cause=cause, exit_code=code,
                  seconds=seconds, left=dict(left or {}))
        return FlagResult(self.change_id, self.command, self.flag, status, code, cause,
                          seconds, self.last_written, self.last_fleet, dict(left or {}),
                          self.the_bound)

    # --- hosts ---------------------------------------------------------------------------
    def push(self, content: str, *, step: int, variant: str | None) -> dict[str, str]:
        """Writes ``content`` on every host and waits until it is served: ``variant`` seen in
        every host's responses, or (a split) ``settle`` seconds. Returns the hosts that did
        not take it (why), empty when every host did."""
        digest = sha1(content)
        self.emit(fev.FlagPushStarted, step=step, content=content, sha1=digest)
        since = time.monotonic()
        pushed = self.hosts.push(content, label="flag-revert" if step < 0 else
                                 f"flag-{self.command}-{step}")
        self.emit(fev.FlagPushed, step=step, sha1=digest, hosts=pushed.hosts,
                  seconds=pushed.seconds)
        if not pushed.ok:
            return pushed.bad()
        self.last_written = pushed.seconds
        if variant is not None and self.hosts.effect_urls:
            effect = self.hosts.wait_effect(variant, since=since, timeout=self.effect_timeout)
            self.last_fleet = effect.fleet_s
            self.emit(fev.FlagInEffect, step=step, variant=variant, written_s=pushed.seconds,
                      hosts=effect.hosts, fleet_s=effect.fleet_s, detail=effect.detail)
            return {h: f"written, not serving {variant!r} after {self.effect_timeout:g} s"
                    for h, s in effect.hosts.items() if s is None}
        self.last_fleet = None
        if variant is None:  # a split: one response cannot show it
            self.sleep(self.settle)
        self.emit(fev.FlagInEffect, step=step, variant=variant, written_s=pushed.seconds,
                  detail=f"a split: waited {self.settle:g} s for the provider to read the file"
                  if variant is None else "written on every host (no effect check in the "
                                          "spec: not seen served)")
        return {}

    def revert(self, cause: str, *, status: fev.FlagStatus = "reverted",
               before_variant: str | None = None) -> FlagResult:
        """``before`` on every host again; ``failed`` (exit 3) when some host did not take
        it. The controller's copy still holds ``before``."""
        self.emit(fev.FlagRevertStarted, cause=cause)
        left = self.push(self.before, step=-1, variant=before_variant)
        if left:
            return self.finish("failed", f"{cause}; the revert did not reach every host", left)
        return self.finish(status, cause)

    def commit(self, content: str) -> None:
        """The change succeeded: the controller's copy becomes ``content``."""
        write_atomic(self.controller, content)

    # --- a ramp --------------------------------------------------------------------------
    def baseline(self, counters: FleetCounters, spec: AnalysisSpec, *, duration: float,
                 share: float, push_s: float) -> tuple[Any, str | None]:
        """The windows before the ramp, summed, and the bound (journaled together); the
        second value says why a ramp cannot be judged (too few requests)."""
        needed = windows_needed(duration, spec.interval)
        groups = []
        prev, t0 = counters.sample(), time.monotonic()
        for _ in range(needed):
            self._wait(spec.interval)
            cur = counters.sample()
            w = window_deltas(prev, cur, counters.servers)
            prev = cur
            if not isinstance(w, Reset):
                groups.append(fleet_group(w))
        seconds = round(time.monotonic() - t0, 3)
        group = combine(groups)
        rps = group.requests / seconds if seconds > 0 else 0.0
        self.the_bound = bound(rps=rps, share=share, push_s=push_s, settle_s=self.settle,
                               spec=spec)
        self.emit(fev.FlagBaseline, windows=len(groups), seconds=seconds,
                  group=group.as_dict(), rps=round(rps, 3), bound=self.the_bound)
        if group.requests < spec.min_requests:
            return group, (f"too few requests before the ramp to judge against: "
                           f"{group.requests} in {seconds:g} s < min_requests "
                           f"{spec.min_requests}")
        return group, None

    def analyse(self, counters: FleetCounters, spec: AnalysisSpec, baseline: Any, *,
                step: int, percent: int, duration: float) -> tuple[bool, str]:
        """The step's windows until the analysis passes or fails: (passed, cause)."""
        run = AnalysisRun(spec, windows_needed(duration, spec.interval))
        prev = counters.sample()
        while run.status == "running":
            self._wait(spec.interval)
            cur = counters.sample()
            w = window_deltas(prev, cur, counters.servers)
            prev = cur
            if isinstance(w, Reset):
                verdict = WindowVerdict("reset", f"no verdict on this window: {w.detail}")
            else:
                verdict = judge(fleet_group(w), baseline, spec, share=percent / 100)
            fields = verdict.event_fields()
            self.emit(fev.FlagWindow, step=step, percent=percent, window=run.windows + 1,
                      verdict=verdict.verdict, reason=verdict.reason, gates=fields["gates"],
                      groups=fields["groups"])
            run.add(verdict)
        return run.status == "passed", run.cause
