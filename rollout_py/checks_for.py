"""The checks of a deploy: the spec's probes rendered for each host and version, and
HAProxy's own check of a server on every LB."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from rollout_py.balancer.fleet import Balancer
from rollout_py.errors import BalancerError
from rollout_py.probes import Check
from rollout_py.spec import HAProxyProbe, HttpProbe, TcpProbe

if TYPE_CHECKING:
    from rollout_py.api import Context


def make_checks(ctx: Context, extravars: Mapping[str, Any]
                ) -> Callable[[str, str], tuple[list[Check], list[Check]]]:
    """Renders every probe of the spec for a host and a version (``rollout_version``); each
    (host, version) once: the continuous watch asks for every host in rotation each round."""
    spec = ctx.spec
    rendered: dict[tuple[str, str], tuple[list[Check], list[Check]]] = {}

    def checks(host: str, version: str) -> tuple[list[Check], list[Check]]:
        if (host, version) not in rendered:
            rendered[host, version] = render(host, version)
        before, after = rendered[host, version]
        return list(before), list(after)

    def render(host: str, version: str) -> tuple[list[Check], list[Check]]:
        ih = ctx.host(host)
        extra = {**extravars, "rollout_version": version}
        before, after = [], []
        for probe in spec.health.probes:
            if isinstance(probe, HAProxyProbe):
                after.append(Check("haproxy", ctx.servers[host], probe))
                continue
            if isinstance(probe, HttpProbe):
                kind, target = "http", probe.http
            elif isinstance(probe, TcpProbe):
                kind, target = "tcp", probe.tcp
            else:
                kind, target = "command", probe.command
            rendered = ctx.inventory.render(target, ih, extra)
            if isinstance(probe, HttpProbe) and (probe.body or probe.match):
                probe = probe.model_copy(update={
                    "body": ctx.inventory.render(probe.body, ih, extra) if probe.body else None,
                    "match": ctx.inventory.render(probe.match, ih, extra) if probe.match
                    else None})
            before.append(Check(kind, rendered, probe))
        return before, after

    return checks


def haproxy_up_check(balancer: Balancer) -> Callable[[str], str | None]:
    from rollout_py.balancer.fleet import not_up

    def up(server: str) -> str | None:
        try:
            states = balancer.states()
        except BalancerError as exc:
            return str(exc)
        if not_up(states, [server]):
            detail = ", ".join(f"{url}: {per[server].op}/{per[server].admin}"
                               for url, per in states.items() if server in per)
            return f"not UP on every LB ({detail})"
        return None

    return up
