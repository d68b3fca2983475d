"""Blue/green's part of the commands' setup: which pool is live (read from every LB, never
assumed), the idle pool as the deploy's fleet, the engine's pool settings, and the plan of
``rollout switch-back``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rollout_py.balancer.routes import Router
from rollout_py.errors import BalancerError, InputError
from rollout_py.spec import Spec
from rollout_py.switch import PoolSettings

if TYPE_CHECKING:
    from rollout_py.api import Context


@dataclass(frozen=True, slots=True)
class PoolChoice:
    """The live pool and the idle one (which a deploy goes to), with their hosts."""

    live: str
    idle: str
    hosts: Mapping[str, tuple[str, ...]]  # backend -> its hosts (inventory order)
    entries: Mapping[str, Mapping[str, str]]  # LB url -> map entries, when read
    maps: Mapping[str, str]  # LB url -> map path

    def to_meta(self) -> dict[str, Any]:
        return {"live": self.live, "idle": self.idle}


def pool_hosts(spec: Spec, ctx: Context) -> dict[str, tuple[str, ...]]:
    """Backend -> the hosts its pool's pattern selects among the spec's hosts; each pool
    needs hosts and no host is in both."""
    assert spec.blue_green is not None
    fleet = [h.name for h in ctx.fleet]
    out: dict[str, tuple[str, ...]] = {}
    for name, pool in spec.blue_green.pools.items():
        chosen = {h.name for h in ctx.inventory.select(pool.hosts)}
        hosts = tuple(h for h in fleet if h in chosen)
        if not hosts:
            raise InputError(f"blue_green.pools.{name}.hosts {pool.hosts!r} selects no host "
                             f"of {spec.hosts!r} in {ctx.inventory_source}")
        out[pool.backend] = hosts
    a, b = out.values()
    if set(a) & set(b):
        raise InputError(f"blue_green.pools: hosts in both pools: "
                         f"{', '.join(sorted(set(a) & set(b)))}")
    return out


def read_choice(spec: Spec, ctx: Context, router: Router) -> PoolChoice:
    """Reads every LB's live route; refused unless they all name the same pool."""
    assert spec.blue_green is not None
    bg = spec.blue_green
    hosts = pool_hosts(spec, ctx)
    try:
        maps, entries = router.maps(), router.entries()
    except BalancerError as exc:
        raise InputError(f"blue_green: cannot read the pools map: {exc}") from exc
    live = {url: e.get(bg.live_key) for url, e in entries.items()}
    names = set(live.values())
    if len(names) != 1 or next(iter(names)) not in hosts:
        said = ", ".join(f"{url}: {v or 'no ' + bg.live_key + ' entry'}"
                         for url, v in live.items())
        raise InputError(f"blue_green: the LBs do not agree on one of the pools "
                         f"({', '.join(hosts)}) as live: {said}; finish the deploy that "
                         "switched them (`rollout resume`) or `rollout switch-back`")
    current = next(iter(names))
    assert current is not None
    idle = next(b for b in hosts if b != current)
    return PoolChoice(current, idle, hosts, entries, maps)


def choice_from_meta(spec: Spec, ctx: Context, meta: Mapping[str, Any]) -> PoolChoice:
    """The pools a deploy chose when it started (a resume keeps them, whatever is live)."""
    hosts = pool_hosts(spec, ctx)
    pools = meta.get("pools") or {}
    if pools.get("live") not in hosts or pools.get("idle") not in hosts:
        raise InputError("the deploy's record names no pools (meta.json 'pools'); resume "
                         "refuses to guess which pool was live")
    return PoolChoice(pools["live"], pools["idle"], hosts, {}, {})


def render(text: str, version: str) -> str:
    """``{{ rollout_version }}`` in a preview check, replaced."""
    for form in ("{{ rollout_version }}", "{{rollout_version}}"):
        text = text.replace(form, version)
    return text


def pool_settings(spec: Spec, ctx: Context, choice: PoolChoice, router: Router,
                  version: str) -> PoolSettings:
    assert spec.blue_green is not None and choice is not None
    bg = spec.blue_green
    interval = spec.analysis.interval if spec.analysis else 0.0
    return PoolSettings(
        router=router, live_key=bg.live_key, preview_key=bg.preview_key,
        live_backend=choice.live, live_hosts=choice.hosts[choice.live],
        live_servers=tuple(ctx.servers[h] for h in choice.hosts[choice.live]),
        min_up=bg.min_up,
        preview=[(render(c.http, version), c.model_copy(update={
            "body": render(c.body, version) if c.body else None})) for c in bg.preview],
        baseline_seconds=(bg.baseline_duration or interval) if bg.analysis_duration else 0.0,
        scale_down_playbook=str(spec.path(bg.scale_down.playbook)) if bg.scale_down else None)


def plan_args(spec: Spec, choice: PoolChoice) -> dict[str, Any]:
    """make_plan's blue/green arguments."""
    assert spec.blue_green is not None
    bg = spec.blue_green
    return {"backend": choice.idle, "live_backend": choice.live,
            "post_switch": bg.analysis_duration,
            "scale_down": (bg.scale_down.after, choice.hosts[choice.live])
            if bg.scale_down else None}


def servers_of(ctx: Context, hosts: Sequence[str]) -> dict[str, str]:
    return {h: ctx.servers[h] for h in hosts}
