"""``rollout switch-back``: every LB's live route back to the other pool, at once, journaled
and locked like a deploy (the old pool's floor checked first; nothing is deployed)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from rollout_py import events as ev
from rollout_py.api import Context, _spec_snapshot
from rollout_py.api_pools import PoolChoice, pool_settings, read_choice
from rollout_py.engine import new_deploy_id
from rollout_py.engine_build import build_engine
from rollout_py.errors import InputError
from rollout_py.planner import Plan, switch_back_plan
from rollout_py.result import DeployResult
from rollout_py.session import FleetSession
from rollout_py.spec import Spec
from rollout_py.state import StateDir, digest

VERSION = "switch-back"  # what history shows as the "version" of a switch-back


def plan_for(spec: Spec, ctx: Context, choice: PoolChoice) -> Plan:
    """Live pool -> the other one (``choice.idle``)."""
    hosts = choice.hosts[choice.idle]
    return switch_back_plan(name=spec.name, live=choice.live, to=choice.idle,
                            sockets=spec.haproxy.sockets,
                            servers={h: ctx.servers[h] for h in hosts}, fleet=hosts)


def switch_back(spec: Spec, *, inventory: str | None = None,
                on_event: Callable[[ev.Event], None] | None = None,
                sinks: Sequence[Callable[[ev.Event], None]] = (),
                state_dir: str | Path | None = None, lock_wait: float = 0.0,
                install_signal_handlers: bool = True) -> DeployResult:
    """Switches every LB to the pool that is not live now (the old one, after a blue/green
    deploy). Refused (InputError) for a spec without ``strategy: blue_green`` or when the LBs
    disagree (then ``rollout resume`` finishes the deploy that switched them).

    Example:
        >>> switch_back(load_spec("rollout-bluegreen.yml")).status  # doctest: +SKIP
        'succeeded'
    """
    if spec.blue_green is None:
        raise InputError(f"{spec.source}: switch-back needs strategy: blue_green")
    ctx = Context.resolve(spec, inventory=inventory)
    deploy_id = new_deploy_id()
    state = StateDir(Path(state_dir) if state_dir else spec.state_path())
    with FleetSession(ctx, state=state, extravars={}, secret_names=[], lock_wait=lock_wait,
                      sinks=sinks, on_event=on_event,
                      install_signal_handlers=install_signal_handlers) as session:
        session.lock(deploy_id=deploy_id, message=f"switch-back {spec.name}")
        router = session.router()
        choice = read_choice(spec, ctx, router)
        session.backend = choice.idle
        the_plan = plan_for(spec, ctx, choice)
        snapshot = _spec_snapshot(spec, session.redactor)
        record = state.create(deploy_id, meta={
            "name": spec.name, "version": VERSION, "inventory": ctx.inventory_source,
            "limit": None, "force": False, "spec_file": spec.source, "strategy": "switch_back",
            "pools": choice.to_meta(), "control_dir": None, "spec_digest": digest(snapshot),
            "plan_digest": digest(the_plan.identity()), "extravars": {}, "secret_vars": []},
            spec=snapshot, plan=the_plan.to_json())
        runner = session.executor(runs=record.runs, control_dir=None)
        lbs = session.balancer
        pools = pool_settings(spec, ctx, choice, router, VERSION)
        pools.preview, pools.baseline_seconds, pools.scale_down_playbook = (), 0.0, None
        return session.run(lambda all_sinks: build_engine(
            ctx.narrowed(choice.hosts[choice.idle]), the_plan, runner, lbs, {}, {}, False,
            all_sinks, deploy_id, session.redactor, pools=pools), record.journal)
