"""Builds the Engine of a deploy from its resolved context: probes, checks, settings from the
spec, shaping, and the phases the deploy runs (``rollout deploy`` and its resume only).

Example:
    >>> engine = build_engine(ctx, the_plan, runner, lbs, {}, {}, False, sinks, deploy_id,
    ...                       redactor)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rollout_py import events as ev
from rollout_py.balancer.fleet import Balancer
from rollout_py.checks_for import haproxy_up_check, make_checks
from rollout_py.controls import Control
from rollout_py.engine import Engine, Settings
from rollout_py.executor import Executor
from rollout_py.phase_run import phases_for
from rollout_py.planner import Plan
from rollout_py.preflight import version_reader
from rollout_py.probes import Prober
from rollout_py.redact import Redactor
from rollout_py.shaping import shaping_for
from rollout_py.state import StateDir
from rollout_py.switch import PoolSettings

if TYPE_CHECKING:
    from rollout_py.api import Context


def build_engine(ctx: Context, the_plan: Plan, executor: Executor, lbs: Balancer,
            all_vars: Mapping[str, Any], versions: Mapping[str, str | None], force_drain: bool,
            sinks: Sequence[Callable[[ev.Event], None]], deploy_id: str,
            redactor: Redactor, *, ignore_metrics: bool = False,
            controls: Callable[[], Sequence[Control]] | None = None,
            pools: PoolSettings | None = None, phases: StateDir | None = None) -> Engine:
    """The engine of a deploy, resume, rollback or switch-back over ``ctx``; ``phases``: the
    deploy's state directory when it runs the spec's phases (a release's flag record is
    kept there), None for a switch-back or a rollback."""
    from rollout_py.analysis.prometheus import query as prom_query

    spec = ctx.spec
    prober = Prober(executor.run_command, haproxy_up_check(lbs))
    engine = Engine(
        the_plan, executor=executor, balancer=lbs, prober=prober,
        checks=make_checks(ctx, all_vars),
        settings=Settings(health=spec.health, drain_timeout=spec.haproxy.drain_timeout,
                          up_timeout=spec.haproxy.up_timeout, force_drain=force_drain,
                          extravars={}, known_versions=versions,
                          version_of=version_reader(ctx) if spec.version_url else None,
                          stage_tags=spec.stage.tags if spec.stage else None,
                          switch_tags=spec.stage.switch_tags if spec.stage else None,
                          analysis=spec.analysis, prometheus=prom_query,
                          ignore_metrics=ignore_metrics, controls=controls,
                          warmup=spec.haproxy.warmup, warmup_from=spec.haproxy.warmup_from,
                          pools=pools, watch=pools is None),
        sinks=sinks, deploy_id=deploy_id, redactor=redactor)
    engine.shaping = shaping_for(spec, lbs)  # map entries held while it runs
    engine.phases = phases_for(ctx, executor, redactor, lbs, phases) if phases else None
    return engine
