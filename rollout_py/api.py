"""The Python API: load a spec, plan a deploy, run it. Typed, keyword-only, no printing.

Example:
    >>> import rollout_py
    >>> spec = rollout_py.load_spec("rollout.yml")  # doctest: +SKIP
    >>> plan = rollout_py.plan(spec, version="2.4.1")  # doctest: +SKIP
    >>> result = rollout_py.deploy(spec, version="2.4.1", on_event=print)  # doctest: +SKIP
    >>> result.raise_for_status()  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollout_py import events as ev
from rollout_py.api_pools import PoolChoice, choice_from_meta, plan_args, pool_settings
from rollout_py.api_pools import read_choice as read_pools
from rollout_py.balancer.fleet import Balancer
from rollout_py.balancer.runtime import validate_name
from rollout_py.engine import Engine, new_deploy_id
from rollout_py.engine_build import build_engine
from rollout_py.errors import BalancerError, InputError
from rollout_py.executor import Executor
from rollout_py.inventory import Inventory, InventoryHost
from rollout_py.job_events import previous_versions_from_artifacts
from rollout_py.phase_run import phase_hosts
from rollout_py.planner import Plan, make_plan
from rollout_py.preflight import preflight, read_versions
from rollout_py.procs import stop_leftovers
from rollout_py.redact import Redactor
from rollout_py.result import DeployResult
from rollout_py.session import FleetSession, open_balancer, redactor_for, ssh_options_for
from rollout_py.shaping import shaping_for
from rollout_py.spec import Spec, load_spec
from rollout_py.state import StateDir, digest
from rollout_py.steps import describe_gate
from rollout_py.validate import validate_version

__all__ = ["Context", "deploy", "load_spec", "open_balancer", "plan", "resume",
           "ssh_options_for"]


@dataclass
class Context:
    """A spec resolved against its inventory: who is in the fleet, who is targeted."""

    spec: Spec
    inventory: Inventory
    inventory_source: str
    fleet: list[InventoryHost]
    targets: list[InventoryHost]
    servers: dict[str, str]  # host -> server name, whole fleet

    @classmethod
    def resolve(cls, spec: Spec, *, inventory: str | None = None,
                limit: str | None = None) -> Context:
        source = inventory or str(spec.path(spec.inventory))
        inv = Inventory(source)
        fleet = inv.select(spec.hosts)
        if not fleet:
            raise InputError(f"hosts pattern {spec.hosts!r} matches no host in {source}")
        targets = inv.select(spec.hosts, limit=limit) if limit else fleet
        if not targets:
            raise InputError(f"--limit {limit!r} leaves no host of {spec.hosts!r}")
        servers = {}
        for host in fleet:
            name = inv.render(spec.haproxy.server, host)
            validate_name(f"haproxy.server for host {host.name}", name)
            servers[host.name] = name
        dupes = {s for s in servers.values() if list(servers.values()).count(s) > 1}
        if dupes:
            raise InputError(f"haproxy.server maps several hosts to {', '.join(sorted(dupes))}")
        ctx = cls(spec, inv, source, fleet, targets, servers)
        if spec.executors is not None:  # assign: group leaves no host without a node
            from rollout_py.session import node_pool

            pool = node_pool(ctx)
            assert pool is not None
            pool.check([h.name for h in fleet])
        return ctx

    def host(self, name: str) -> InventoryHost:
        return next(h for h in self.fleet if h.name == name)

    def narrowed(self, hosts: Sequence[str]) -> Context:
        """The same spec and inventory with ``hosts`` as the fleet (blue/green: the idle
        pool)."""
        keep = set(hosts)
        fleet = [h for h in self.fleet if h.name in keep]
        return Context(self.spec, self.inventory, self.inventory_source, fleet,
                       [h for h in self.targets if h.name in keep],
                       {h.name: self.servers[h.name] for h in fleet})


def plan(spec: Spec, *, version: str, inventory: str | None = None, limit: str | None = None,
         force: bool = False, current_versions: Mapping[str, str | None] | None = None,
         context: Context | None = None, order: Sequence[str] | None = None,
         pools: PoolChoice | None = None) -> Plan:
    """What ``deploy`` will do. Reads the inventory; touches no host and no load balancer
    (with ``haproxy.drain_order: fewest_sessions`` it reads every LB's sessions, unless
    ``order`` gives the hosts' order: a resume gives the one its deploy started with).

    Example:
        >>> p = plan(spec, version="2.0", limit="web1,web2")  # doctest: +SKIP
        >>> [b.hosts for b in p.batches]  # doctest: +SKIP
    """
    validate_version(version)
    ctx = context or Context.resolve(spec, inventory=inventory, limit=limit)
    extra: dict[str, Any] = {"backend": spec.haproxy.backend}
    if spec.strategy == "blue_green":  # the idle pool, as every LB's map says now
        pools = pools or _read_pools(spec, ctx)
        extra = plan_args(spec, pools)
        ctx = ctx.narrowed(pools.hosts[pools.idle])
    targets = [h.name for h in ctx.targets]
    if order is None and spec.haproxy.drain_order == "fewest_sessions":
        order = fewest_sessions_first(spec, ctx)
    if order is not None:
        rank = {h: i for i, h in enumerate(order)}
        targets.sort(key=lambda h: rank.get(h, len(rank)))
    return make_plan(
        name=spec.name, version=version, fleet=[h.name for h in ctx.fleet],
        targets=targets, servers=ctx.servers, batches=spec.batches,
        max_unavailable=spec.max_unavailable, current_versions=current_versions or {},
        force=force, sockets=spec.haproxy.sockets, **extra,
        on_failure=spec.on_failure, playbook=str(spec.path(spec.playbook)),
        rollback_playbook=(str(spec.path(spec.rollback_playbook))
                           if spec.rollback_playbook else None),
        drain_timeout=spec.haproxy.drain_timeout,
        pause_between_batches=spec.pause_between_batches,
        strategy=spec.strategy, canary_hosts=spec.canary.hosts if spec.canary else None,
        canary_steps=spec.canary.steps if spec.canary else (),
        gates=[describe_gate(g) for g in spec.analysis.gates] if spec.analysis else (),
        soak=spec.health.soak, interval=spec.analysis.interval if spec.analysis else None,
    )


def _read_pools(spec: Spec, ctx: Context) -> PoolChoice:
    """Which pool is live, read from every LB (read-only)."""
    from rollout_py.balancer.routes import MapRouter

    assert spec.blue_green is not None
    lbs = open_balancer(spec)
    try:
        return read_pools(spec, ctx, MapRouter(lbs.apis, spec.blue_green.map))
    finally:
        lbs.close()


def fewest_sessions_first(spec: Spec, ctx: Context) -> list[str]:
    """The targeted hosts, those whose servers hold the fewest sessions (summed over every
    LB) first; ties keep the inventory's order. Read-only."""
    lbs = open_balancer(spec)
    try:
        sessions = lbs.sessions([ctx.servers[h.name] for h in ctx.targets])
    except BalancerError as exc:
        raise InputError(f"haproxy.drain_order fewest_sessions: cannot read the sessions: "
                         f"{exc}") from exc
    finally:
        lbs.close()
    names = [h.name for h in ctx.targets]
    return sorted(names, key=lambda h: (sessions.get(ctx.servers[h], 0), names.index(h)))


def lb_weights(spec: Spec, the_plan: Plan) -> dict[str, dict[str, int]] | None:
    """Each LB's weights of the plan's servers in rotation (read-only), for ``rollout plan``
    to show traffic shares as weights; None when an LB does not answer."""
    try:
        lbs = open_balancer(spec)
    except BalancerError:
        return None
    try:
        return {url: {s: st.weight for s, st in per.items()
                      if s in the_plan.servers.values() and st.in_rotation}
                for url, per in lbs.states().items()}
    except BalancerError:
        return None
    finally:
        lbs.close()


def _spec_snapshot(spec: Spec, redactor: Redactor) -> dict[str, Any]:
    return redactor.data(spec.model_dump(mode="json", by_alias=True))


def deploy(spec: Spec, *, version: str, inventory: str | None = None, limit: str | None = None,
           extravars: Mapping[str, Any] | None = None, secret_vars: Sequence[str] = (),
           force: bool = False, force_drain: bool = False, allow_no_rollback: bool = False,
           on_event: Callable[[ev.Event], None] | None = None,
           sinks: Sequence[Callable[[ev.Event], None]] = (), state_dir: str | Path | None = None,
           lock_wait: float = 0.0, verbosity: int = 0, install_signal_handlers: bool = True,
           executor: Executor | None = None, balancer: Balancer | None = None,
           strategy: str | None = None, ignore_metrics: bool = False) -> DeployResult:
    """Runs a rolling deploy and returns its result (a failure is a result, not an exception).

    Every event is journaled (fsync'd) in the state directory before anyone else sees it; the
    fleet's locks (the state directory's and a lease on every LB) are held for the whole
    deploy. Raises InputError (or a subclass, e.g. PreflightError, LockHeldError) when input,
    lock or preflight refuse the deploy; nothing has been touched then, and the error's
    ``deploy_id`` attribute names the refused attempt (no record of it is kept).

    Preflight refuses a deploy whose failed batch could not be rolled back (the spec has no
    ``version_url`` and no ``rollback_playbook`` and the playbook is not seen to report
    ``rollout_previous_version``) unless ``allow_no_rollback``; and one that targets a server
    in MAINT or DRAIN on some LB (an operator's) unless ``force``, which also deploys to
    hosts already at the version.

    Example:
        >>> result = deploy(load_spec("rollout.yml"), version="2.0")  # doctest: +SKIP
        >>> result.status  # doctest: +SKIP
        'succeeded'
    """
    validate_version(version)
    if strategy == "rolling" and spec.strategy == "blue_green":
        raise InputError(f"{spec.source}: a blue/green fleet goes back with `rollout "
                         "switch-back` (every LB to the other pool at once), or with a deploy "
                         "of the old version (to the idle pool, then switched)")
    if strategy == "rolling" and spec.strategy != "rolling":
        spec = spec.model_copy(update={"strategy": "rolling", "canary": None})
    ctx = Context.resolve(spec, inventory=inventory, limit=limit)
    phase_hosts(ctx, () if strategy else ("expand", "migrate"))  # phases: `on` checked first
    if strategy is None and spec.phases is not None and (release := spec.phases.release):
        from rollout_py.flag_api import check_release

        check_release(spec, release.flag, release.variant)  # the flag file, before the lock
    deploy_id = new_deploy_id()
    state = StateDir(Path(state_dir) if state_dir else spec.state_path())
    record = None
    with FleetSession(ctx, state=state, extravars=extravars or {}, secret_names=secret_vars,
                      verbosity=verbosity, lock_wait=lock_wait, sinks=sinks, on_event=on_event,
                      executor=executor, balancer=balancer,
                      install_signal_handlers=install_signal_handlers) as session:
        session.lock(deploy_id=deploy_id, message=f"deploy {spec.name} {version}")
        _stop_earlier_leftovers(state, ctx)
        full, choice = ctx, None
        try:
            if spec.strategy == "blue_green":  # the idle pool is the fleet of this deploy
                choice = read_pools(spec, ctx, session.router())
                session.backend, ctx = choice.idle, ctx.narrowed(choice.hosts[choice.idle])
            lbs = session.balancer
            versions = read_versions(ctx) if spec.version_url else {}
            the_plan = plan(spec, version=version, force=force, current_versions=versions,
                            context=ctx, pools=choice)
            control_dir = f"/tmp/rollout-cp-{deploy_id}"
            snapshot = _spec_snapshot(spec, session.redactor)
            record = state.create(deploy_id, meta={
                "name": spec.name, "version": version, "inventory": ctx.inventory_source,
                "limit": limit, "force": force, "spec_file": spec.source,
                "strategy": spec.strategy, "pools": choice.to_meta() if choice else None,
                "control_dir": control_dir, "spec_digest": digest(snapshot),
                "plan_digest": digest(the_plan.identity()),
                "extravars": session.redactor.data(session.plain_vars),
                "secret_vars": session.secret_names, "phases": strategy is None},
                spec=snapshot, plan=the_plan.to_json())
            runner = session.executor(runs=record.runs, control_dir=control_dir)
            preflight(ctx, the_plan, executor=runner, balancer=lbs, force=force,
                      allow_no_rollback=allow_no_rollback, state=state)
            if (shaping := shaping_for(spec, lbs)) is not None:
                shaping.preflight()  # the map is loaded on every LB
            return session.run(lambda all_sinks: build_engine(
                ctx, the_plan, runner, lbs, session.all_vars, versions, force_drain,
                all_sinks, deploy_id, session.redactor, ignore_metrics=ignore_metrics,
                controls=session.controls(deploy_id),
                pools=pool_settings(spec, full, choice, session.router(), version)
                if choice else None, phases=state if strategy is None else None), record.journal)
        except InputError as exc:
            if record is not None and not session.started:
                shutil.rmtree(record.path, ignore_errors=True)  # refused: nothing happened
            _name_deploy(exc, deploy_id)
            raise


def _stop_earlier_leftovers(state: StateDir, ctx: Context, last: int = 3) -> None:
    """What a controller killed at its very end (after its journal closed, before its
    clean-up) left of this fleet's earlier deploys: SSH masters that would linger for their
    ControlPersist. Called with the fleet's lock held, so none of them is running."""
    for record in state.deploys()[-last:]:
        meta = record.meta()
        if (meta.get("name"), meta.get("inventory")) == (ctx.spec.name, ctx.inventory_source):
            stop_leftovers(record.runs, meta.get("control_dir"))


def _name_deploy(exc: InputError, deploy_id: str) -> None:
    """Names the deploy a refusal is about (``rollout ... --json`` prints it)."""
    if getattr(exc, "deploy_id", None) is None:
        setattr(exc, "deploy_id", deploy_id)  # noqa: B010 (InputError declares no such field)


def resume(spec: Spec, deploy_id: str | None = None, *, continue_: bool = True,
           extravars: Mapping[str, Any] | None = None, secret_vars: Sequence[str] = (),
           on_event: Callable[[ev.Event], None] | None = None,
           sinks: Sequence[Callable[[ev.Event], None]] = (), state_dir: str | Path | None = None,
           lock_wait: float = 0.0, verbosity: int = 0,
           install_signal_handlers: bool = True, ignore_metrics: bool = False) -> DeployResult:
    """Takes over a stopped deploy: reconciles its journal with the live LB state, then goes on.

    What it does is decided by ``rollout_py.reconcile``: a server in rotation is drained before
    anything acts on its host; a batch upgraded and verified is probed again and enabled; a
    batch caught earlier is rolled back and run again; a failure being unwound is finished;
    an interrupted stage is staged again. Then, with ``continue_``, the remaining batches run.
    It takes deploys whose controller died, and deploys that ended resumable: interrupted
    (exit 130), stopped before a batch (exit 5), or stopped by an infrastructure failure.
    Refuses if the spec or the plan changed since the deploy started, or if it is finished.

    Example:
        >>> resume(load_spec("rollout.yml")).status  # doctest: +SKIP
        'succeeded'
    """
    state = StateDir(Path(state_dir) if state_dir else spec.state_path())
    record = state.get(deploy_id)
    events = record.events()
    if not events:
        raise InputError(f"deploy {record.deploy_id} never started (empty journal): "
                         "nothing to resume")
    if record.closed(events):
        finished = events[-1]
        assert isinstance(finished, ev.DeployFinished)
        raise InputError(f"deploy {record.deploy_id} is finished ({finished.status}): "
                         "nothing to resume")
    meta = record.meta()
    if meta.get("strategy") == "rolling" and spec.strategy != "rolling":
        # `rollout rollback` rolls a canary spec as a rolling one; its resume does too.
        spec = spec.model_copy(update={"strategy": "rolling", "canary": None})
    names = [*meta.get("secret_vars", []), *secret_vars]
    redactor = redactor_for(spec, extravars or {}, names)
    if digest(_spec_snapshot(spec, redactor)) != meta["spec_digest"]:
        raise InputError(f"the spec changed since deploy {record.deploy_id} started; resume "
                         "refuses to run a different spec (restore it, or start a new deploy)")
    full = ctx = Context.resolve(spec, inventory=meta["inventory"], limit=meta.get("limit"))
    started = next(e for e in events if isinstance(e, ev.DeployStarted))
    pooled = meta.get("strategy") in ("blue_green", "switch_back")
    choice = choice_from_meta(spec, ctx, meta) if pooled else None
    if choice is not None:
        ctx = ctx.narrowed(choice.hosts[choice.idle])
    if meta.get("strategy") == "switch_back":
        from rollout_py.api_switch import plan_for

        assert choice is not None
        the_plan = plan_for(spec, full, choice)
    else:
        the_plan = plan(spec, version=meta["version"], force=bool(meta.get("force")),
                        current_versions=started.versions, context=ctx, pools=choice,
                        order=[h for batch in started.batches for h in batch])
    # identity() has no prose; deploys started before it existed recorded the whole to_json().
    if meta["plan_digest"] not in (digest(the_plan.identity()), digest(the_plan.to_json())):
        old = [tuple(b["hosts"]) for b in record.snapshot("plan")["batches"]]
        new = [b.hosts for b in the_plan.batches]
        raise InputError(f"the plan changed since deploy {record.deploy_id} started (inventory "
                         f"or hosts): batches were {old}, now {new}; resume refuses")
    with FleetSession(ctx, state=state,
                      extravars={**meta.get("extravars", {}), **(extravars or {})},
                      secret_names=names, verbosity=verbosity, lock_wait=lock_wait,
                      sinks=sinks, on_event=on_event,
                      install_signal_handlers=install_signal_handlers) as session:
        session.lock(deploy_id=record.deploy_id, message=f"resume {record.deploy_id}")
        stop_leftovers(record.runs, meta.get("control_dir"))
        known = {**previous_versions_from_artifacts(record.runs), **started.versions}
        runner = session.executor(runs=record.runs, control_dir=meta.get("control_dir"))
        if choice is not None:
            session.backend = choice.idle
        lbs = session.balancer
        pools = pool_settings(spec, full, choice, session.router(), meta["version"]) \
            if choice else None
        if pools is not None and meta.get("strategy") == "switch_back":
            pools.preview, pools.baseline_seconds = (), 0.0

        def engine(all_sinks: Sequence[Callable[[ev.Event], None]]) -> Engine:
            built = build_engine(ctx, the_plan, runner, lbs, session.all_vars, known, False,
                                 all_sinks, record.deploy_id, session.redactor,
                                 ignore_metrics=ignore_metrics,
                                 phases=state if meta.get("phases") else None,
                                 controls=session.controls(record.deploy_id), pools=pools)
            if not continue_:
                built.stop_after_reconcile()
            return built

        return session.run(engine, record.journal, resume=events)
