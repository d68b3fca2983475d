"""Checks before a deploy touches anything: load balancers, servers, capacity, playbooks, SSH."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from rollout_py.balancer.fleet import Balancer, out_of_rotation
from rollout_py.errors import BalancerError, PreflightError
from rollout_py.executor import Executor
from rollout_py.planner import Plan

if TYPE_CHECKING:
    from rollout_py.api import Context


def version_reader(ctx: Context) -> Callable[[str], str | None]:
    """Reads one host's running version from the spec's ``version_url`` (None if unknown)."""
    url = ctx.spec.version_url
    assert url is not None

    def one(name: str) -> str | None:
        target = ctx.inventory.render(url, ctx.host(name))
        try:
            with requests.Session() as session:
                session.trust_env = False
                resp = session.get(target, timeout=3)
            return resp.text.strip() or None if resp.status_code == 200 else None
        except requests.RequestException:
            return None

    return one


def read_versions(ctx: Context) -> dict[str, str | None]:
    """Each targeted host's running version from the spec's ``version_url`` (None if unknown)."""
    one = version_reader(ctx)
    names = [h.name for h in ctx.targets]
    with ThreadPoolExecutor(max_workers=min(32, len(names))) as pool:
        return dict(zip(names, pool.map(one, names), strict=True))


def preflight(ctx: Context, plan: Plan, *, executor: Executor, balancer: Balancer) -> None:
    """Raises PreflightError listing every problem found; touches nothing."""
    problems: list[str] = []
    for path in filter(None, (plan.playbook, plan.rollback_playbook)):
        if not Path(path).is_file():
            problems.append(f"playbook {path} does not exist")

    try:
        levels = balancer.admin_levels()
        for url, ok in levels.items():
            if not ok:
                problems.append(f"{url}: the socket does not grant the admin level "
                                "(stats socket ... level admin)")
        states = balancer.states()
    except BalancerError as exc:
        problems.append(f"load balancer: {exc}")
        states = None
    if states is not None:
        for url, per in states.items():
            missing = [s for s in plan.servers.values() if s not in per]
            if missing:
                problems.append(f"{url}: backend {plan.backend} has no server "
                                f"{', '.join(missing)}")
        if plan.batches and not problems:
            first = plan.batches[0]
            out = out_of_rotation(states, plan.servers.values())
            taking_out = len(out | set(first.servers))
            if taking_out > plan.max_unavailable:
                problems.append(
                    f"capacity: batch 1 would leave {taking_out} servers out of rotation "
                    f"({len(out)} already are: {', '.join(sorted(out))}); max_unavailable is "
                    f"{plan.max_unavailable}")

    if plan.batches and not problems:
        # Syntax checks and the SSH round to every host are independent: run them together.
        books = [p for p in (plan.playbook, plan.rollback_playbook) if p]
        with ThreadPoolExecutor(max_workers=1 + len(books)) as pool:
            checks = [pool.submit(executor.syntax_check, path) for path in books]
            reach = pool.submit(executor.reachable, plan.hosts)
            for path, fut in zip(books, checks, strict=True):
                error = fut.result()
                if error:
                    problems.append(f"playbook {path} fails the syntax check: {error}")
            for host, error in reach.result().items():
                if error:
                    problems.append(f"SSH to {host}: {error}")

    if problems:
        raise PreflightError("preflight refused the deploy; nothing was touched:\n  - "
                             + "\n  - ".join(problems))
