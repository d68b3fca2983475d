"""The flag commands as a Python API: list, set, ramp and kill a fleet's flag, locked and
journaled like deploys.

Each command validates the controller's flag file and the edit first (FlagError, exit 2, with
``file:line:col``: nothing touched), then takes the fleet's locks (the state directory's and
the lease on every LB: a running deploy and a flag change exclude each other), finishes an
earlier change its controller left unfinished (a ramp is reverted, a set or kill is
completed; before a kill, the kill's own push does it), and runs the change
(rollout_py.flag_change) with its own journal in ``<state_dir>/flags/<change_id>/``
(``rollout status`` and ``history`` read ``deploys/``).

Example:
    >>> spec = load_spec("rollout.yml")  # doctest: +SKIP
    >>> flag_ramp(spec, "new-greeting", to=50).status  # doctest: +SKIP
    'ok'
"""

from __future__ import annotations

import contextlib
import json
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollout_py.api import Context
from rollout_py.balancer.fleet import Balancer
from rollout_py.engine import new_deploy_id
from rollout_py.errors import InputError, RolloutError
from rollout_py.events import Event
from rollout_py.events import flags as fev
from rollout_py.executor import AnsibleExecutor, Executor
from rollout_py.flag_analysis import FleetCounters
from rollout_py.flag_change import FlagChange, FlagResult, Interrupted
from rollout_py.flag_hosts import Fetch, FlagHosts, http_header, sha1
from rollout_py.flag_records import (
    create_record,
    parse_text,
    records,
    recover,
    static_variant,
    supersede,
    unfinished,
)
from rollout_py.flags.edit import describe, kill, ramp, set_variant, to_json
from rollout_py.flags.model import Flag, FlagFile, load_flags
from rollout_py.session import FleetSession
from rollout_py.spec import Spec
from rollout_py.spec_flags import FlagsSpec, ramp_steps
from rollout_py.state import Journal, StateDir, read_journal

Sink = Callable[[Event], None]
__all__ = ["flag_kill", "flag_list", "flag_ramp", "flag_set", "release_ramp"]


def _flags(spec: Spec) -> tuple[FlagsSpec, Path, FlagFile]:
    if spec.flags is None:
        raise InputError(f"{spec.source}: flags: the spec has no flags section (file, path)")
    controller = spec.path(spec.flags.file)
    return spec.flags, controller, load_flags(controller)


def current_percent(flag: Flag, variant: str) -> int:
    """The share ``variant`` has now: 100 as the default without targeting, its bucket of a
    plain fractional split, else 0."""
    if not flag.targeting:
        return 100 if flag.default_variant == variant else 0
    frac = flag.targeting.get("fractional") if len(flag.targeting) == 1 else None
    if isinstance(frac, list) and frac and all(isinstance(b, list) for b in frac):
        weights = {b[0]: (b[1] if len(b) > 1 else 1) for b in frac}
        total = sum(weights.values())
        return round(100 * weights.get(variant, 0) / total) if total else 0
    return 0


def ramp_variant(flag: Flag, name: str, variant: str | None) -> str:
    """The variant a ramp raises: as named, or the one that is not the default when the
    flag has two."""
    if variant is not None:
        return variant
    others = [v for v in flag.variants if v != flag.default_variant]
    if len(others) != 1:
        raise InputError(f"flags.{name}: name the variant to ramp with --variant (one of "
                         f"{', '.join(others)})")
    return others[0]


@contextlib.contextmanager
def _signals(change: FlagChange, install: bool) -> Iterator[None]:
    if not install or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda s, _f: change.interrupt(str(s)))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# --- the commands --------------------------------------------------------------------------
def flag_set(spec: Spec, name: str, variant: str, **options: Any) -> FlagResult:
    """Every subject gets ``variant`` (default variant, targeting cleared), on every host."""
    return _change(spec, "set", name, variant=variant, **options)


def flag_kill(spec: Spec, name: str, variant: str | None = None, **options: Any) -> FlagResult:
    """Every host at once serves the safe variant (``off`` unless named); the result says how
    long until the file was on every host (``written_s``) and served by every host
    (``fleet_s``, with the spec's effect check)."""
    return _change(spec, "kill", name, variant=variant, **options)


def flag_ramp(spec: Spec, name: str, *, to: int, variant: str | None = None,
              **options: Any) -> FlagResult:
    """Raises ``variant`` to ``to``% through the spec's ramp steps, each judged by the
    analysis gates against the windows before the ramp; reverts on a failed gate."""
    return _change(spec, "ramp", name, variant=variant, to=to, **options)


@dataclass(frozen=True, slots=True)
class _Edit:
    """A change validated before anything is touched: the file before it, the file of each
    step, the variant it aims at (``target``: ``on@50%`` for a ramp)."""

    fs: FlagsSpec
    controller: Path
    ff: FlagFile
    before: str
    targets: list[str]
    steps: list[int]
    variant: str | None
    target: str


def _edit(spec: Spec, command: fev.FlagCommand, name: str, *, variant: str | None,
          to: int | None) -> _Edit:
    fs, controller, ff = _flags(spec)  # FlagError (exit 2) before anything else
    before = to_json(ff)
    steps: list[int] = []
    if command == "set":
        assert variant is not None
        targets = [to_json(set_variant(ff, name, variant))]
    elif command == "kill":
        targets = [to_json(kill(ff, name, variant))]
        variant = static_variant(parse_text(targets[0]), name)
    else:
        assert to is not None
        if spec.analysis is None:
            raise InputError(f"{spec.source}: analysis: a ramp is judged by the spec's "
                             "analysis section (interval, min_requests, gates); add one")
        variant = ramp_variant(ff.flag(name), name, variant)
        now = current_percent(ff.flag(name), variant)
        if to <= now:
            raise InputError(f"flags.{name}: {variant!r} is at {now}% already (--to {to}%)")
        steps = ramp_steps(fs.ramp, current=now, to=to)
        targets = [to_json(ramp(ff, name, variant, pct)) for pct in steps]  # all valid first
    target = f"{variant}@{to}%" if command == "ramp" else str(variant)
    return _Edit(fs, controller, ff, before, targets, steps, variant, target)


def _change(spec: Spec, command: fev.FlagCommand, name: str, *, variant: str | None = None,
            to: int | None = None, inventory: str | None = None,
            state_dir: str | Path | None = None, lock_wait: float = 0.0,
            sinks: Sequence[Sink] = (), executor: Executor | None = None,
            balancer: Balancer | None = None, fetch: Fetch = http_header,
            install_signal_handlers: bool = True, verbosity: int = 0,
            sleep: Callable[[float], None] = time.sleep) -> FlagResult:
    edit = _edit(spec, command, name, variant=variant, to=to)
    ctx = Context.resolve(spec, inventory=inventory)
    state = StateDir(Path(state_dir) if state_dir else spec.state_path())
    change_id = new_deploy_id()
    with FleetSession(ctx, state=state, extravars={}, secret_names=[], verbosity=verbosity,
                      lock_wait=lock_wait, executor=executor, balancer=balancer,
                      install_signal_handlers=False) as session:
        session.lock(deploy_id=change_id, message=f"flag {command} {name} {edit.target}")
        record = create_record(state, change_id, {
            "command": command, "flag": name, "target": edit.target,
            "spec_file": spec.source, "inventory": ctx.inventory_source,
            "controller": str(edit.controller)})
        runner = session.executor(runs=record / "runs",
                                  control_dir=f"/tmp/rollout-cp-{change_id}")
        return _apply(spec, ctx, state, edit, _Run(
            command, name, change_id, record, runner, session.balancer, sinks, fetch, sleep,
            install_signal_handlers))


@dataclass(frozen=True, slots=True)
class _Run:
    """Who runs a change, where it is journaled and how it is stopped."""

    command: fev.FlagCommand
    name: str
    change_id: str
    record: Path
    runner: Executor
    balancer: Balancer
    sinks: Sequence[Sink]
    fetch: Fetch
    sleep: Callable[[float], None]
    install_signal_handlers: bool
    cancel: Callable[[], bool] | None = None


def _apply(spec: Spec, ctx: Context, state: StateDir, edit: _Edit, run: _Run) -> FlagResult:
    """With the fleet's locks held: finishes earlier unfinished changes, then runs this one
    with its own journal."""
    effect = edit.fs.effect
    urls = {h.name: ctx.inventory.render(effect.url, h) for h in ctx.fleet} if effect else {}
    hosts = FlagHosts(run.runner, [h.name for h in ctx.fleet], edit.fs.path,
                      work_dir=run.record / "files", effect_urls=urls,
                      header=effect.header_for(run.name) if effect else "", fetch=run.fetch)
    for path, events in unfinished(state):
        if path.name == run.change_id:
            continue
        if run.command == "kill":  # an emergency: its own push replaces what was left
            supersede(path, events, hosts, edit.controller, run.sinks, run.change_id)
        else:
            recover(path, events, hosts, edit.controller, run.sinks, run.sleep)
    journal = Journal(run.record / "journal.jsonl")
    change = FlagChange(run.change_id, command=run.command, flag=run.name, hosts=hosts,
                        controller=edit.controller, before=edit.before,
                        sinks=[journal, *run.sinks], settle=effect.settle if effect else 1.0,
                        effect_timeout=effect.timeout if effect else 15.0, sleep=run.sleep,
                        cancel=run.cancel)
    try:
        with _signals(change, run.install_signal_handlers):
            if run.command == "ramp":
                assert spec.analysis is not None and edit.variant is not None
                counters = FleetCounters(run.balancer, sorted(ctx.servers.values()))
                return _ramp(change, edit.ff, run.name, edit.variant, edit.steps,
                             edit.targets, edit.fs, spec, counters)
            return _set_or_kill(change, edit.ff, run.name, run.command, str(edit.variant),
                                edit.targets[0])
    finally:
        journal.close()


def check_release(spec: Spec, name: str, variant: str | None) -> tuple[str, Flag]:
    """The variant a deploy's release raises and its flag, or FlagError/InputError naming the
    problem (a deploy checks this before it touches anything). The variant is fixed by the
    spec (``on`` unless named), never by the file: a done ramp is not undone by a resume."""
    _, _, ff = _flags(spec)
    flag = ff.flag(name)
    chosen = variant or "on"
    if chosen not in flag.variants:
        field = "variant" if variant else "variant (default on)"
        raise InputError(f"{spec.source}: phases.release.{field}: flag {name} has no variant "
                         f"{chosen!r}; name the one to release (one of "
                         f"{', '.join(flag.variants)})")
    return chosen, flag


def release_ramp(spec: Spec, ctx: Context, state: StateDir, *, name: str, to: int,
                 variant: str | None, deploy_id: str, executor: Executor, balancer: Balancer,
                 cancel: Callable[[], bool], sinks: Sequence[Sink] = (),
                 fetch: Fetch = http_header,
                 sleep: Callable[[float], None] = time.sleep) -> FlagResult | None:
    """A deploy's ``phases.release``: the ramp run inside the deploy (its locks held, its
    executor and LBs; journaled in ``flags/`` like a ``flag ramp``, naming the deploy).
    None when the flag's variant is at ``to`` or above already (nothing to do)."""
    variant, flag = check_release(spec, name, variant)
    if current_percent(flag, variant) >= to:
        return None
    edit = _edit(spec, "ramp", name, variant=variant, to=to)
    change_id = new_deploy_id()
    record = create_record(state, change_id, {
        "command": "ramp", "flag": name, "target": edit.target, "spec_file": spec.source,
        "inventory": ctx.inventory_source, "controller": str(edit.controller),
        "deploy_id": deploy_id})
    return _apply(spec, ctx, state, edit, _Run(
        "ramp", name, change_id, record, executor, balancer, sinks, fetch, sleep, False,
        cancel))


def _set_or_kill(change: FlagChange, ff: FlagFile, name: str, command: str, variant: str,
                 content: str) -> FlagResult:
    change.start(target=variant)
    left = change.push(content, step=0, variant=variant)
    if command == "kill":  # never reverted: the old variant is what is being killed
        change.commit(content)
        if left:
            return change.finish("failed", f"the kill did not reach every host ({len(left)} "
                                           f"of {len(change.hosts.hosts)})", left)
        return change.finish("ok", _took(change, variant))
    if left:
        return change.revert(f"the push did not reach every host: {_first(left)}",
                             before_variant=static_variant(ff, name))
    change.commit(content)
    return change.finish("ok", _took(change, variant))


def _took(change: FlagChange, variant: str) -> str:
    served = (f", served by every host after {change.last_fleet:g} s"
              if change.last_fleet is not None else "")
    return (f"every host has {change.flag}={variant}: written on {len(change.hosts.hosts)} "
            f"hosts in {change.last_written:g} s{served}")


def _first(left: dict[str, str]) -> str:
    host = next(iter(left))
    more = f" and {len(left) - 1} more" if len(left) > 1 else ""
    return f"{host}: {left[host]}{more}"


def _ramp(change: FlagChange, ff: FlagFile, name: str, variant: str, steps: list[int],
          targets: list[str], fs: FlagsSpec, spec: Spec, counters: FleetCounters
          ) -> FlagResult:
    analysis = spec.analysis
    assert analysis is not None
    back = static_variant(ff, name)
    change.start(target=f"{variant}@{steps[-1]}%", steps=steps)
    try:
        # The controller's copy on every host first: drift is fixed before the baseline, and
        # the run measures a push over every host (the bound's push time).
        left = change.push(change.before, step=0, variant=back)
        if left:
            return change.finish("failed", "the hosts do not all hold the controller's copy "
                                           f"and the push failed: {_first(left)}", left)
        push_s = change.last_written or 0.0
        baseline, why = change.baseline(counters, analysis, duration=fs.baseline_duration,
                                        share=steps[0] / 100, push_s=push_s)
        if why is not None:
            return change.finish("refused", why)
        for i, (pct, content) in enumerate(zip(steps, targets, strict=True), 1):
            left = change.push(content, step=i, variant=variant if pct == 100 else None)
            if left:
                return change.revert(f"step {i} ({pct}%): not on every host: {_first(left)}",
                                     before_variant=back)
            passed, cause = change.analyse(counters, analysis, baseline, step=i, percent=pct,
                                           duration=fs.step_duration)
            if not passed:
                return change.revert(f"step {i} ({pct}%): {cause}", before_variant=back)
            change.emit(fev.FlagStepPassed, step=i, percent=pct, cause=cause)
        change.commit(targets[-1])
        return change.finish("ok", f"{name}: {variant} at {steps[-1]}% on every host, "
                                   f"{len(steps)} step(s) passed")
    except Interrupted:
        return change.revert("interrupted: reverted to the file from before the ramp",
                             status="cancelled", before_variant=back)
    except RolloutError as exc:
        return change.revert(f"stopped by an error: {exc}", before_variant=back)


def flag_list(spec: Spec, *, hosts: bool = False, inventory: str | None = None,
              executor: Executor | None = None, state_dir: str | Path | None = None
              ) -> dict[str, Any]:
    """The controller copy's flags; with ``hosts``, whether each host's file is that copy
    (one read-only Ansible run); and the last change recorded."""
    fs, controller, ff = _flags(spec)
    content = to_json(ff)
    out: dict[str, Any] = {
        "file": str(controller), "path": fs.path, "sha1": sha1(content),
        "flags": [{"name": n, "state": f.state, "default": f.default_variant,
                   "targeting": dict(f.targeting), "line": line}
                  for (n, f), line in zip(ff.flags.items(), describe(ff), strict=True)]}
    state = StateDir(Path(state_dir) if state_dir else spec.state_path())
    recs = records(state)
    if recs:
        events = read_journal(recs[-1] / "journal.jsonl") \
            if (recs[-1] / "journal.jsonl").exists() else []
        end = events[-1] if events and isinstance(events[-1], fev.FlagChangeFinished) else None
        meta = json.loads((recs[-1] / "meta.json").read_text())
        out["last_change"] = {"change_id": recs[-1].name, "command": meta.get("command"),
                              "flag": meta.get("flag"), "target": meta.get("target"),
                              "status": end.status if end else "unfinished",
                              "cause": end.cause if end else None}
    if hosts:
        ctx = Context.resolve(spec, inventory=inventory)
        with tempfile.TemporaryDirectory(prefix="rollout-flags-") as tmp:
            runner = executor or AnsibleExecutor(ctx.inventory_source, work_dir=Path(tmp),
                                                 extravars={"rollout_hosts": spec.hosts})
            try:
                fh = FlagHosts(runner, [h.name for h in ctx.fleet], fs.path,
                               work_dir=Path(tmp))
                out["hosts"] = fh.compare(content).hosts
            finally:
                if executor is None:
                    runner.close()
    return out
