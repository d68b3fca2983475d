"""Renders events, plans and results for people (console lines) and machines (JSON lines)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any

from rollout_py import events as ev
from rollout_py.errors import InputError
from rollout_py.planner import Plan, PlannedBatch
from rollout_py.report_phases import PhasePlan, phase_line, phase_status_lines
from rollout_py.report_pools import pool_line
from rollout_py.result import DeployResult
from rollout_py.shaping import shaping_line
from rollout_py.spec_shaping import ShapingSpec
from rollout_py.steps import SetWeight, step_line
from rollout_py.weights import shape


def plan_lines(plan: Plan, weights: Mapping[str, Mapping[str, int]] | None = None,
               phases: PhasePlan | None = None,
               placement: Callable[[Sequence[str]], str] | None = None) -> list[str]:
    """``rollout plan``: every step in order; with ``weights`` (each LB's current weights of
    the servers in rotation) traffic shares are shown as the weights each LB will get; with
    ``phases``, expand before batch 1 and migrate after the last batch; with ``placement``
    (execution nodes), where each batch's Ansible work runs."""
    lines = [f"plan {plan.name}: version {plan.version}, {len(plan.hosts)} of {len(plan.fleet)} "
             f"hosts in {len(plan.batches)} batches ({plan.strategy}); max_unavailable "
             f"{plan.max_unavailable}"]
    if plan.live_backend:
        lines.append(f"  pools: live {plan.live_backend} (read from every LB), deploying to "
                     f"the idle {plan.backend}")
    for host, why in plan.skipped.items():
        lines.append(f"  skip {host}: {why}")
    phases = phases or PhasePlan()
    lines += phases.before
    for step in plan.steps:
        if isinstance(step, PlannedBatch):
            lines.append(f"batch {step.index}: {', '.join(step.hosts)}")
            if placement is not None:
                lines.append(f"  Ansible on {placement(step.hosts)}")
            lines += [f"  - {line}" for line in plan.batch_steps(step)]
            continue
        lines.append(step_line(step, plan.interval))
        if isinstance(step, SetWeight):
            lines += _shaped_lines(plan, step, weights)
    lines += [*phases.after, *phases.notes]
    lines.append(plan.rollback_description())
    if plan.traffic:
        lines.append("a failed analysis, `rollout abort` or an interrupt restores every "
                     "recorded weight; a failed gate rolls the judged batch back")
    if not plan.batches:
        lines.append("nothing to do")
    return lines


def plan_json(plan: Plan, weights: Mapping[str, Mapping[str, int]] | None, phases: PhasePlan,
              shaping: ShapingSpec | None,
              placement: Callable[[Sequence[str]], dict[str, list[str]]] | None
              ) -> dict[str, Any]:
    """``rollout plan --json``: the plan's data, with what :func:`plan_lines` adds to it."""
    data = plan.to_json()
    if placement is not None:
        data["executors"] = {str(b.index): placement(b.hosts) for b in plan.batches}
    if weights is not None:
        data["lb_weights"] = weights
    if phases.data:
        data["phases"] = phases.data
    if shaping is not None:  # rollout_py.shaping
        data["shaping"] = {**shaping.model_dump(), "actions": shaping.describe()}
    return data


def _shaped_lines(plan: Plan, step: SetWeight,
                  weights: Mapping[str, Mapping[str, int]] | None) -> list[str]:
    if weights is None:
        return ["  - weights computed from each LB's weights at deploy time (LBs not read)"]
    servers = plan.batches[step.batch - 1].servers
    out = []
    for url, per in sorted(weights.items()):
        try:
            shaped = shape(per, servers, step.share)
        except InputError as exc:
            out.append(f"  - {url}: cannot shape: {exc}")
            continue
        out.append(f"  - {url}: " + " ".join(f"{s}={w}" for s, w in shaped.weights.items())
                   + f" (canary share {shaped.achieved * 100:.1f}%)")
    return out


def console_line(e: ev.Event) -> str | None:
    b = f"[batch {getattr(e, 'batch', '')}]"
    match e:
        case ev.DeployStarted():
            return (f"deploy {e.deploy_id}: {e.name} -> {e.version}, "
                    + " | ".join(", ".join(b) for b in e.batches))
        case ev.BatchStarted():
            return f"{b} {', '.join(e.hosts)}"
        case ev.CapacityChecked():
            return (f"{b} capacity: {e.taking_out} out of rotation during the batch "
                    f"(max {e.max_unavailable})")
        case ev.DrainStarted():
            if not e.found_out:
                return None
            return (f"{b} already out of rotation before the deploy, restored so afterwards: "
                    + ", ".join(f"{k} {v}" for k, v in sorted(e.found_out.items())))
        case ev.ServersDrained():
            cut = "; ".join(f"{url}: " + ", ".join(f"{s} {n}" for s, n in sorted(per.items()))
                            for url, per in sorted(e.cut.items()))
            forced = (f" (sessions shut after the drain timeout: {cut})" if cut else
                      f" (sessions shut: {', '.join(e.forced)})" if e.forced else "")
            return f"{b} drained {', '.join(e.servers)}{forced}"
        case ev.ServersDisabled():
            return f"{b} MAINT {', '.join(e.servers)}"
        case ev.StepStarted():
            return f"{b} {e.step} {', '.join(e.hosts)} ..."
        case ev.StepFinished():
            detail = ", ".join(f"{h}: {o}" for h, o in e.hosts.items() if o != "ok")
            return f"{b} {e.step} {'ok' if e.ok else 'FAILED'} in {e.duration:.1f} s" + (
                f" ({detail})" if detail else "")
        case ev.ProbePassed():
            return f"{b} probe {e.host}: healthy ({e.phase})"
        case ev.ProbeFailed():
            return f"{b} probe {e.host}: FAILED ({e.phase}): {e.detail}"
        case ev.ForeignChange():
            return (f"{b} STOPPING: someone else changed {', '.join(e.servers)}: "
                    + "; ".join(f"{k}: {v}" for k, v in sorted(e.found.items()))
                    + " (left as found, not fought)")
        case ev.ServersEnabled():
            return f"{b} back to their recorded state: {', '.join(e.servers)}"
        case ev.BatchSucceeded():
            return f"{b} done in {e.durations.get('total', 0):.1f} s"
        case ev.BatchFailed():
            return f"{b} FAILED ({e.failure}): {e.cause}"
        case ev.RollbackStarted():
            return f"{b} rolling back {', '.join(e.hosts)}"
        case ev.RollbackFinished():
            if e.ok:
                return f"{b} rolled back; its servers back to their recorded state"
            return f"{b} ROLLBACK INCOMPLETE: left in MAINT: {', '.join(e.stranded)} {e.detail}"
        case ev.Interrupted():
            return f"{e.signal} ({e.count}): {e.action}"
        case ev.DeployResumed():
            where = f"batch {e.batch}" if e.batch is not None else "the deploy"
            return f"resumed {e.deploy_id} ({where}): {e.action}: {e.detail}"
        case ev.WeightsRecorded():
            return "weights recorded (restored exactly afterwards): " + _weights(e.weights)
        case ev.WeightsSet():
            got = ", ".join(f"{url} {v * 100:.1f}%" for url, v in sorted(e.achieved.items()))
            return (f"step {e.step}: traffic {e.share * 100:g}% (achieved {got}): "
                    + _weights(e.weights))
        case ev.WeightsRestored():
            bad = f"; REFUSED: {e.failed}" if e.failed else ""
            return "weights restored: " + _weights(e.weights) + bad
        case ev.AnalysisWindow():
            return window_line(e)
        case ev.WarmupStep():
            return f"{b} warm-up {e.step}/{e.of}: " + _weights(e.weights)
        case ev.AnalysisFinished():
            return f"{b} step {e.step} analysis ({e.purpose}): {e.verdict.upper()}: {e.cause}"
        case ev.PauseStarted():
            until = f"{e.duration:g} s" if e.duration is not None else "`rollout promote`"
            return f"step {e.step}: paused by {e.by} until {until} (nothing out of rotation)"
        case ev.PauseEnded():
            return f"step {e.step}: pause ended ({e.how})"
        case ev.ControlReceived():
            return f"{e.action} from {e.by}: {e.effect}"
        case ev.MetricsUnavailable():
            return (f"WARNING: {e.gate}: metrics unavailable, passed under "
                    f"--ignore-metrics-unavailable: {e.detail}")
        case ev.ShapingRecorded() | ev.ShapingSet() | ev.ShapingCleared():
            return shaping_line(e)
        case ev.DeployFinished():
            return None
    return pool_line(e) or phase_line(e)


def _weights(weights: Mapping[str, Mapping[str, int]]) -> str:
    return "; ".join(f"{url}: " + " ".join(f"{s}={w}" for s, w in sorted(per.items()))
                     for url, per in sorted(weights.items()))


def window_line(e: ev.AnalysisWindow) -> str:
    """One analysis window: verdict, each group's numbers, each gate's value and threshold."""
    groups = " | ".join(
        f"{name} {g.get('errors', 0)}/{g.get('requests', 0)} errors"
        for name, g in e.groups.items())
    gates = "; ".join(f"{g['gate']} {g['verdict']}: {g.get('detail') or ''}".rstrip(": ")
                      for g in e.gates)
    # The reason repeats the failed gates; said alone when no gate was judged (no data).
    why = e.reason if not e.gates or e.verdict in ("inconclusive", "reset") else ""
    what = f"step {e.step}" if e.step else "watch"
    return " ".join(p for p in (
        f"[batch {e.batch}] {what} window {e.window} ({', '.join(e.canary)}):",
        e.verdict.upper(), why, f"[{groups}]", gates) if p)


def console_sink(out: IO[str], verbose: bool = False,
                 wall_clock: bool = False) -> Callable[[ev.Event], None]:
    """Progress lines: seconds since start, or UTC timestamps (``wall_clock``, for logs)."""
    start = time.monotonic()

    def sink(e: ev.Event) -> None:
        line = progress_line(e, start, verbose=verbose, wall_clock=wall_clock)
        if line is not None:
            out.write(line + "\n")
            out.flush()

    return sink


def progress_line(e: ev.Event, start: float, *, verbose: bool = False,
                  wall_clock: bool = False) -> str | None:
    """The console's line for ``e`` (None: not shown), stamped with the seconds since
    ``start`` (time.monotonic) or, with ``wall_clock``, the event's UTC time."""
    line = console_line(e)
    if line is None or (not verbose and isinstance(e, ev.ProbePassed)):
        return None
    stamp = (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.ts)) if wall_clock
             else f"{time.monotonic() - start:7.1f}s")
    return f"{stamp}  {line}"


def when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts)) if ts else "-"


def status_lines(info: dict[str, Any]) -> list[str]:
    lines = [f"fleet {info['fleet']} (state in {info['state_dir']})"]
    lock = info["lock"]
    lines.append("lock: " + (f"{lock['kind']} by {lock['user']}@{lock['host']} "
                             f"{lock.get('deploy_id') or ''} {lock['message']}".rstrip()
                             if lock else "free"))
    d = info["deploy"]
    if d is None:
        lines.append("no deploy recorded")
    else:
        lines.append(f"last deploy {d['deploy_id']} by {d['user']}: "
                     f"{'/'.join(d['from_versions']) or '?'} -> {d['version']}: {d['status']}"
                     + (f" ({d['cause']})" if d["cause"] else ""))
        if d["resumable"]:
            lines.append(f"  resumable: rollout resume {d['deploy_id']}")
        if d["stranded"]:
            lines.append(f"  left out of rotation: {', '.join(d['stranded'])}")
        lines += _analysis_lines(d)
    lines += phase_status_lines(info.get("phases"))
    pools = info.get("pools")
    if pools is not None:
        owner = {srv: b for b, names in pools["backends"].items() for srv in names}
        lines.append("pools: live " + ", ".join(f"{url} -> {b or '?'}"
                                                 for url, b in pools["live"].items()))
    for url, servers in info["servers"].items():
        lines.append(f"{url}:")
        for name, s in servers.items():
            if pools is not None:
                name = f"{owner.get(name, '?')}/{name}"
            lines.append(f"  {name:<12} {s['admin']:<6} {s['op']:<9} weight {s['weight']}")
    for url, error in info["lb_errors"].items():
        lines.append(f"{url}: ERROR {error}")
    for f in info["flagged"]:
        lines.append(f"FLAGGED {f['server']} on {f['lb']}: {f['problem']}")
    return lines


def _analysis_lines(d: Mapping[str, Any]) -> list[str]:
    lines = []
    if d.get("paused"):
        p = d["paused"]
        until = f"{p['duration']:g} s" if p["duration"] is not None else "`rollout promote`"
        lines.append(f"  PAUSED at step {p['step']} by {p['by']} since {when(p['since'])} "
                     f"until {until}")
    for c in d.get("controls", []):
        lines.append(f"  {c['action']} from {c['by']} at {when(c['at'])}: {c['effect']}")
    for a in d.get("analyses", []):
        lines.append(f"  analysis step {a['step']} ({a['purpose']}, batch {a['batch']}): "
                     f"{a['verdict']}: {a['cause']}")
    if d.get("windows"):
        shown = len(d["windows"])
        lines.append(f"  last {shown} of {d['windows_total']} analysis windows:")
        for w in d["windows"]:
            groups = " | ".join(f"{n} {g.get('errors', 0)}/{g.get('requests', 0)}"
                                for n, g in w["groups"].items())
            failed = [g["gate"] for g in w["gates"] if g["verdict"] == "fail"]
            what = f"step {w['step']}" if w["step"] else "watch"
            lines.append(f"    {what} w{w['window']} {','.join(w['servers'])}: "
                         f"{w['verdict']} [{groups}]"
                         + (f" failed: {', '.join(failed)}" if failed else
                            f" {w['reason']}" if w["verdict"] != "pass" else ""))
    return lines


def history_lines(info: dict[str, Any]) -> list[str]:
    lines = [f"{'deploy':<24} {'user':<8} {'started':<20} {'from':<10} {'to':<10} "
             f"{'status':<12} {'duration':>8}  cause"]
    for d in info["deploys"]:
        duration = f"{d['duration']:.0f}s" if d["duration"] is not None else "-"
        lines.append(f"{d['deploy_id']:<24} {d['user'] or '-':<8} {when(d['started']):<20} "
                     f"{'/'.join(d['from_versions']) or '-':<10} {d['version'] or '-':<10} "
                     f"{d['status']:<12} {duration:>8}  {d['rollback_cause'] or ''}")
    return lines


def json_sink(out: IO[str]) -> Callable[[ev.Event], None]:
    def sink(e: ev.Event) -> None:
        out.write(json.dumps(e.to_json()) + "\n")
        out.flush()

    return sink


def found_out(events: Iterable[ev.Event]) -> dict[str, dict[str, str]]:
    """Servers already out of rotation (DRAIN or MAINT) before the deploy touched them:
    server -> LB url -> admin state. The deploy left them so; it did not put them in rotation.

    Example:
        >>> found_out(read_journal(record.journal))  # doctest: +SKIP
        {'app01': {'unix:///run/lb2.sock': 'MAINT'}}
    """
    out: dict[str, dict[str, str]] = {}
    for e in events:
        if isinstance(e, ev.DrainStarted):
            for key, admin in e.found_out.items():
                url, _, server = key.rpartition(" ")
                out.setdefault(server, {})[url] = admin
    return out


def result_lines(result: DeployResult,
                 found: Mapping[str, Mapping[str, str]] | None = None) -> list[str]:
    """The final lines; ``found`` (see ``found_out``) lists servers left out as found."""
    found = found or {}
    lines = [f"{result.status} (exit {result.exit_code})"
             + (f": {result.cause}" if result.cause else ""),
             f"  fleet: {result.fleet_state}"
             + (" (except the servers left out of rotation as found, below)" if found else "")]
    by_outcome: dict[str, list[str]] = {}
    for host in result.hosts.values():
        by_outcome.setdefault(host.outcome, []).append(
            f"{host.host} ({host.before or '?'} -> {host.after or '?'})"
            if host.outcome in ("upgraded", "rolled_back") else host.host)
    for outcome, hosts in by_outcome.items():
        lines.append(f"  {outcome}: {', '.join(hosts)}")
    by_state: dict[str, list[str]] = {}
    for server, per in sorted(found.items()):
        for admin in sorted(set(per.values())):
            lbs = ", ".join(sorted(url for url, a in per.items() if a == admin))
            by_state.setdefault(admin, []).append(f"{server} ({lbs})")
    for admin, servers in sorted(by_state.items()):
        lines.append(f"  left in {admin} as found before the deploy: {', '.join(servers)}")
    if result.stranded:
        lines.append(f"  OUT OF ROTATION (MAINT), fix by hand: {', '.join(result.stranded)}")
    if result.resumable:
        lines.append(f"  continue with: rollout resume {result.deploy_id}")
    return lines


def result_json(result: DeployResult,
                found: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, Any]:
    """``{"result": {...}}``; with ``found``, also ``left_out_as_found`` (server -> LB ->
    DRAIN|MAINT)."""
    data = result.to_json()
    if found is not None:
        data["left_out_as_found"] = {k: dict(v) for k, v in found.items()}
    return {"result": data}


def refusal_json(cause: str, *, status: str = "refused", exit_code: int = 2,
                 deploy_id: str | None = None) -> dict[str, Any]:
    """The result of a deploy refused before it touched anything (``--json``): status
    ``refused`` (exit 2: input or preflight) or ``locked`` (exit 4), and why."""
    return {"result": {"deploy_id": deploy_id, "status": status, "exit_code": exit_code,
                       "cause": cause}}
