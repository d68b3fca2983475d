"""Checks before a deploy touches anything: load balancers, servers, capacity, playbooks, SSH."""

from __future__ import annotations

import http.client
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from rollout_py import events as ev
from rollout_py.balancer.fleet import Balancer, out_of_rotation
from rollout_py.balancer.runtime import ServerState
from rollout_py.errors import BalancerError, PreflightError, StateError
from rollout_py.executor import Executor
from rollout_py.http_get import http_get
from rollout_py.planner import Plan
from rollout_py.state import StateDir

if TYPE_CHECKING:
    from rollout_py.api import Context


def version_reader(ctx: Context) -> Callable[[str], str | None]:
    """Reads one host's running version from the spec's ``version_url`` (None if unknown)."""
    url = ctx.spec.version_url
    assert url is not None

    def one(name: str) -> str | None:
        target = ctx.inventory.render(url, ctx.host(name))
        try:  # as an http probe reads it (no proxy, no redirect): a few times cheaper
            status, text = http_get(target, 3)
        except (OSError, ValueError, http.client.HTTPException):
            return None
        return text.strip() or None if status == 200 else None

    return one


def read_versions(ctx: Context) -> dict[str, str | None]:
    """Each targeted host's running version from the spec's ``version_url`` (None if unknown)."""
    one = version_reader(ctx)
    names = [h.name for h in ctx.targets]
    with ThreadPoolExecutor(max_workers=min(32, len(names))) as pool:
        return dict(zip(names, pool.map(one, names), strict=True))


# A playbook that reports the version it replaces: it names the set_stats key, or uses the
# shipped app_release role (playbooks/deploy.yml does), which reports it.
_REPORTS = re.compile(r"rollout_previous_version\b|\bapp_release\b")
_IMPORTS = re.compile(r"import_playbook:\s*['\"]?([^'\"\s#]+)")


def playbook_reports_previous(path: Path, depth: int = 0) -> bool:
    """Whether the playbook (or one it imports) says it reports ``rollout_previous_version``
    through set_stats. A static look: a role of your own that reports it is not seen (a first
    deploy then shows it, see ``reported_before``)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    if _REPORTS.search(text):
        return True
    return depth < 4 and any(playbook_reports_previous(path.parent / m.group(1), depth + 1)
                             for m in _IMPORTS.finditer(text))


def reported_before(state: StateDir, playbook: str, *, newest: int = 20) -> bool:
    """Whether an earlier deploy (no version_url, same playbook) had previous versions: then
    they came from the playbook's set_stats."""
    for record in reversed(state.deploys()[-newest:]):
        try:
            spec = record.snapshot("spec")
            if spec.get("version_url") or spec.get("playbook") != playbook:
                continue
            events = record.events()
        except (OSError, ValueError, StateError):
            continue
        if any(isinstance(e, ev.StepFinished) and e.step == "upgrade"
               and any(v is not None for v in e.versions.values()) for e in events):
            return True
    return False


def rollback_problem(ctx: Context, plan: Plan, state: StateDir | None) -> str | None:
    """Why a failed batch could not be rolled back automatically, or None if it could."""
    spec = ctx.spec
    if spec.version_url or plan.rollback_playbook or not plan.batches:
        return None
    if playbook_reports_previous(Path(plan.playbook)):
        return None
    if state is not None and reported_before(state, spec.playbook):
        return None
    hosts = ", ".join(plan.hosts[:5]) + (f" and {len(plan.hosts) - 5} more"
                                         if len(plan.hosts) > 5 else "")
    return (f"rollback: no version to go back to is known for {hosts}: the "
            "spec has no version_url and no rollback_playbook, and the playbook "
            f"{plan.playbook} does not report rollout_previous_version through set_stats (as "
            "far as rollout_py can see); if a batch failed, its hosts would stay in MAINT "
            "(exit 3). Fix one of: set version_url (answers each host's running version); set "
            "rollback_playbook; or make the playbook report it (set_stats: data: "
            "{rollout_previous_version: {'{{ inventory_hostname }}': <running version>}}, "
            "per_host: false, aggregate: true, as roles/app_release does) and run one deploy "
            "with --allow-no-rollback, after which it is known. Or pass --allow-no-rollback to "
            "deploy without an automatic rollback")


def out_on_purpose(plan: Plan, states: Mapping[str, Mapping[str, ServerState]]) -> list[str]:
    """Targeted servers that are in MAINT or DRAIN on some LB: someone took them out."""
    found: dict[str, list[str]] = {}
    for url, per in states.items():
        for server in (s for b in plan.batches for s in b.servers):
            if server in per and per[server].admin != "READY":
                found.setdefault(server, []).append(f"{per[server].admin} on {url}")
    return [f"{server} is out of rotation: {', '.join(where)}, set by an operator (or left by "
            "an earlier deploy: see `rollout status`); a deploy would upgrade it and leave it "
            "so. Find out why, put it back in rotation, or pass --force to deploy to it anyway"
            for server, where in found.items()]


def preflight(ctx: Context, plan: Plan, *, executor: Executor, balancer: Balancer,
              force: bool = False, allow_no_rollback: bool = False,
              state: StateDir | None = None) -> None:
    """Raises PreflightError listing every problem found; touches nothing.

    Beside the fleet's checks, it refuses (unless ``allow_no_rollback``) a deploy whose failed
    batch could not be rolled back (no previous version known: ``rollback_problem``), and
    (unless ``force``) one that targets a server an operator put in MAINT or DRAIN.
    """
    problems: list[str] = []
    # Refusals of policy: they do not stop the checks below from running and being listed.
    no_rollback = None if allow_no_rollback else rollback_problem(ctx, plan, state)
    policy = [no_rollback] if no_rollback else []
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
        if not force:
            policy += out_on_purpose(plan, states)
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

    problems += policy
    if problems:
        raise PreflightError("preflight refused the deploy; nothing was touched:\n  - "
                             + "\n  - ".join(problems))
