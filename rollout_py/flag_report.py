"""One console line per flag change event, and the bound on failed requests said in words."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO, Any

from rollout_py.events import Event
from rollout_py.events import flags as fev


def _pct(rate: Any) -> str:
    return "n/a" if rate is None else f"{rate * 100:.3g}%"


def bound_line(b: dict[str, Any]) -> str:
    """The printed bound: how many requests a variant failing every request can fail."""
    return (f"bound: a variant failing every request it serves fails at most {b['requests']} "
            f"requests before it is reverted ({b['rps']:g} rps x {b['share'] * 100:g}% x "
            f"{b['exposure_s']:g} s = 2 x (push {b['push_s']:g} s + pick-up "
            f"{b['settle_s']:g} s) + {b['windows_s']:g} s of windows); an error rate e "
            "fails e times that")


def _step(step: int) -> str:
    return "revert" if step < 0 else "push" if step == 0 else f"step {step}"


def line(e: Event) -> str | None:
    """The line for one event (None: not shown)."""
    if isinstance(e, fev.FlagChangeStarted):
        steps = f" in steps {', '.join(f'{s}%' for s in e.steps)}" if e.steps else ""
        return (f"flag {e.command} {e.flag} -> {e.target}{steps} on {len(e.hosts)} hosts "
                f"({e.path}; change {e.deploy_id})")
    if isinstance(e, fev.FlagPushed):
        bad = {h: v for h, v in e.hosts.items() if v != "ok"}
        said = "; ".join(f"{h}: {v}" for h, v in bad.items())
        return (f"{_step(e.step)}: written on {len(e.hosts) - len(bad)}/{len(e.hosts)} hosts "
                f"in {e.seconds:g} s" + (f" - NOT on {said}" if bad else ""))
    if isinstance(e, fev.FlagInEffect):
        if e.variant is None or e.fleet_s is None:
            return f"{_step(e.step)}: {e.detail or 'no effect check'}"
        return (f"{_step(e.step)}: every host serves {e.variant} {e.fleet_s:g} s after the "
                f"push started (written on every host after {e.written_s:g} s)")
    if isinstance(e, fev.FlagBaseline):
        return (f"baseline: {e.windows} windows, {e.seconds:g} s, {e.rps:g} rps, error rate "
                f"{_pct(e.group.get('error_rate'))}\n{bound_line(e.bound)}")
    if isinstance(e, fev.FlagWindow):
        fleet, base = e.groups.get("fleet", {}), e.groups.get("baseline", {})
        nums = (f" (fleet {_pct(fleet.get('error_rate'))} of {fleet.get('requests')}, "
                f"baseline {_pct(base.get('error_rate'))})" if fleet else "")
        return f"step {e.step} ({e.percent}%) window {e.window}: {e.verdict}{nums}: {e.reason}"
    if isinstance(e, fev.FlagStepPassed):
        return f"step {e.step} ({e.percent}%) passed: {e.cause}"
    if isinstance(e, fev.FlagRevertStarted):
        return f"reverting: {e.cause}"
    if isinstance(e, fev.FlagChangeFinished):
        left = "".join(f"\n  {h}: {why}" for h, why in e.left.items())
        return f"{e.status} (exit {e.exit_code}) after {e.seconds:g} s: {e.cause}{left}"
    return None


def console_sink(out: IO[str]) -> Callable[[Event], None]:
    start = time.monotonic()

    def sink(e: Event) -> None:
        text = line(e)
        if text is not None:
            out.write(f"{time.monotonic() - start:7.1f}s  {text}\n")
            out.flush()

    return sink
