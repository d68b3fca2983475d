"""Reading a fleet's record: ``status`` (last deploy beside the live LB state), ``history``
(every deploy), and the version ``rollback`` returns to."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

from rollout_py import events as ev
from rollout_py.errors import BalancerError, InputError, RolloutError
from rollout_py.lock import FleetLock, fleet_key
from rollout_py.result import fold
from rollout_py.spec import Spec
from rollout_py.state import DeployRecord, StateDir

STATUS_SCHEMA = "rollout.status/1"
HISTORY_SCHEMA = "rollout.history/1"


def schema(name: str) -> dict[str, Any]:
    """The JSON Schema documenting ``status`` or ``history`` output."""
    text = resources.files("rollout_py.schemas").joinpath(f"{name}.schema.json").read_text()
    return dict(json.loads(text))


def _state(spec: Spec, state_dir: str | Path | None) -> StateDir:
    return StateDir(Path(state_dir) if state_dir else spec.state_path())


def analysis_of(events: Sequence[ev.Event], last: int = 12) -> dict[str, Any]:
    """What a deploy's gates saw: its last windows (raw numbers and verdicts), each analysis'
    end, the pause it is in (if any) and the operators' controls, with who sent them."""
    windows = [e for e in events if isinstance(e, ev.AnalysisWindow)]
    pauses = [e for e in events if isinstance(e, ev.PauseStarted | ev.PauseEnded)]
    paused = pauses[-1] if pauses and isinstance(pauses[-1], ev.PauseStarted) else None
    return {
        "windows": [{"batch": w.batch, "step": w.step, "purpose": w.purpose,
                     "window": w.window, "servers": list(w.canary), "verdict": w.verdict,
                     "reason": w.reason, "groups": w.groups, "gates": list(w.gates)}
                    for w in windows[-last:]],
        "windows_total": len(windows),
        "analyses": [{"batch": e.batch, "step": e.step, "purpose": e.purpose,
                      "verdict": e.verdict, "cause": e.cause, "hosts": list(e.hosts)}
                     for e in events if isinstance(e, ev.AnalysisFinished)],
        "paused": {"step": paused.step, "by": paused.by, "since": paused.ts,
                   "duration": paused.duration} if paused else None,
        "controls": [{"action": e.action, "by": e.by, "at": e.ts, "effect": e.effect}
                     for e in events if isinstance(e, ev.ControlReceived)],
    }


def summarize(record: DeployRecord, *, running: bool = False) -> dict[str, Any]:
    """One deploy as ``history`` and ``status`` show it."""
    meta = record.meta()
    events = record.events()
    result = fold(events) if events else None
    started = events[0].ts if events else meta.get("created")
    finished = events[-1].ts if events and isinstance(events[-1], ev.DeployFinished) else None
    befores = sorted({h.before for h in (result.hosts.values() if result else [])
                      if h.before is not None})
    rollback_cause = next((e.cause for e in events if isinstance(e, ev.RollbackStarted)), None)
    if not events:
        status = "not_started"
    elif finished is not None and result is not None:
        status = result.status
    else:
        status = "running" if running else "interrupted"
    return {
        "deploy_id": record.deploy_id, "user": meta.get("user"), "host": meta.get("host"),
        "pid": meta.get("pid"), "version": meta.get("version"), "from_versions": befores,
        "status": status, "exit_code": result.exit_code if result and finished else None,
        "started": started, "finished": finished,
        "duration": round(finished - started, 3) if finished and started else None,
        "cause": result.cause if result and finished else None,
        "rollback_cause": rollback_cause,
        "stranded": list(result.stranded) if result and finished else [],
        "batches": [{"index": b.index, "hosts": list(b.hosts), "outcome": b.outcome}
                    for b in (result.batches if result else ())],
        "resumable": (bool(events) and finished is None and not running)
                     or bool(result and finished and result.resumable),
        **analysis_of(events),
    }


def history(spec: Spec, *, state_dir: str | Path | None = None,
            limit: int | None = None) -> dict[str, Any]:
    """Every recorded deploy of this spec's state dir, newest first (schema rollout.history/1).

    Example:
        >>> history(load_spec("rollout.yml"))["deploys"][0]["status"]  # doctest: +SKIP
        'succeeded'
    """
    state = _state(spec, state_dir)
    running = _running_deploy(spec, state)
    rows = [summarize(r, running=r.deploy_id == running) for r in reversed(state.deploys())]
    return {"schema": HISTORY_SCHEMA, "fleet": spec.name, "state_dir": str(state.root),
            "deploys": rows[:limit] if limit else rows}


def _running_deploy(spec: Spec, state: StateDir) -> str | None:
    from rollout_py.api import Context

    try:
        inventory = Context.resolve(spec).inventory_source
    except InputError:
        inventory = str(spec.path(spec.inventory))
    holder = FleetLock(state.root, fleet_key(spec.name, inventory)).status()
    return holder.deploy_id if holder is not None and holder.kind == "deploy" else None


def status(spec: Spec, *, state_dir: str | Path | None = None) -> dict[str, Any]:
    """The last deploy (folded from its journal) beside the live HAProxy state; servers out of
    rotation are flagged (schema rollout.status/1).

    Example:
        >>> status(load_spec("rollout.yml"))["flagged"]  # doctest: +SKIP
        []
    """
    from rollout_py.api import Context, open_balancer

    state = _state(spec, state_dir)
    ctx = Context.resolve(spec)
    lock = FleetLock(state.root, fleet_key(spec.name, ctx.inventory_source))
    holder = lock.status()
    running = holder.deploy_id if holder is not None and holder.kind == "deploy" else None
    deploys = state.deploys()
    last = summarize(deploys[-1], running=deploys[-1].deploy_id == running) if deploys else None
    servers: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    flagged: list[dict[str, str]] = []
    backends = _backends(spec, ctx)  # backend -> its servers
    live: dict[str, str | None] = {}
    try:
        fleet = open_balancer(spec)
    except RolloutError as exc:
        errors["*"] = str(exc)
    else:
        try:
            for api in fleet.apis:
                try:
                    live[api.url] = _live_backend(spec, api)
                    for backend, wanted in backends.items():
                        servers.setdefault(api.url, {}).update(_read_servers(
                            api, backend, wanted, flagged,
                            judged=live[api.url] in (None, backend)))
                except BalancerError as exc:
                    errors[api.url] = str(exc)
        finally:
            fleet.close()
    out = {
        "schema": STATUS_SCHEMA, "fleet": spec.name, "state_dir": str(state.root),
        "lock": asdict(holder) if holder else None, "deploy": last, "servers": servers,
        "flagged": flagged, "lb_errors": errors,
    }
    if spec.blue_green is not None:  # only the pool live on an LB is judged there
        out["pools"] = {"live": live, "backends": {b: sorted(v) for b, v in backends.items()}}
    if spec.phases is not None:  # expand/migrate of the last deploy, the last contract
        from rollout_py.phase_status import phase_summary

        out["phases"] = phase_summary(state, deploys[-1] if deploys else None,
                                      running=bool(deploys) and deploys[-1].deploy_id == running)
    return out


def _backends(spec: Spec, ctx: Any) -> dict[str, set[str]]:
    """Backend -> the servers of the spec's hosts in it (blue/green: each pool's)."""
    if spec.blue_green is None:
        return {spec.haproxy.backend: set(ctx.servers.values())}
    from rollout_py.api_pools import pool_hosts

    return {b: {ctx.servers[h] for h in hosts} for b, hosts in pool_hosts(spec, ctx).items()}


def _live_backend(spec: Spec, api: Any) -> str | None:
    """Blue/green: the backend the LB's live route serves now (None for other specs)."""
    if spec.blue_green is None:
        return None
    from rollout_py.balancer.routes import MapRouter

    router = MapRouter([api], spec.blue_green.map)
    return router.entries()[api.url].get(spec.blue_green.live_key)


def _read_servers(api: Any, backend: str, wanted: set[str], flagged: list[dict[str, str]],
                  *, judged: bool) -> dict[str, Any]:
    """Each wanted server's live state in ``backend`` on one LB; with ``judged``, a server
    out of rotation, DOWN, at weight 0 or missing is flagged."""
    states = {s.name: s for s in api.servers_state(backend)}
    out: dict[str, Any] = {}
    for name in sorted(wanted):
        st = states.get(name)
        if st is None:
            if judged:
                flagged.append({"lb": api.url, "server": name, "problem": "missing"})
            continue
        out[name] = {"admin": st.admin, "op": st.op, "weight": st.weight,
                     "in_rotation": st.in_rotation}
        problem = ("maint" if st.maint else "drained" if st.drain else
                   "down" if not st.running else "weight 0" if st.weight == 0 else None)
        if problem and judged:
            flagged.append({"lb": api.url, "server": name, "problem": problem})
    return out


def rollback_target(spec: Spec, *, state_dir: str | Path | None = None) -> str:
    """The version the fleet ran before its last successful deploy (for ``rollout rollback``)."""
    for row in history(spec, state_dir=state_dir)["deploys"]:
        if row["status"] != "succeeded":
            continue
        befores = [v for v in row["from_versions"] if v != row["version"]]
        if len(befores) == 1:
            return str(befores[0])
        raise InputError(
            f"deploy {row['deploy_id']} upgraded hosts from several versions "
            f"({', '.join(befores) or 'unknown'}): name the target with --to VERSION")
    raise InputError("no successful deploy in the history to roll back from: use --to VERSION")
