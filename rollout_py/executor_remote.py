"""The executor's side of execution nodes: a run's hosts split by node, the parts run side by
side and merged into one result, and a run's arguments rewritten for the node it goes to
(rollout_py.exec_nodes streams it)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rollout_py._lifeline import PLUGIN_DIR as LIFELINE_DIR
from rollout_py._lifeline import lifeline_env
from rollout_py.exec_nodes import NodePool, NodeRun, ship
from rollout_py.resources import roles_path

if TYPE_CHECKING:
    from rollout_py.executor import RunResult
    from rollout_py.spec_executors import NodeSpec

Part = tuple["NodeSpec | None", list[str]]
T = TypeVar("T")
# Settings of a local run that name the controller's own files or processes.
_CONTROLLER_ONLY = ("ANSIBLE_CALLBACK_PLUGINS", *lifeline_env({}).keys())


def parts(pool: NodePool, hosts: Sequence[str]) -> list[Part] | None:
    """``hosts`` by node; None when all of them run on the controller."""
    split = pool.split(hosts)
    if len(split) == 1 and split[0][0] is None and pool.nowhere() is None:
        return None
    return split


def lost(outcome: str) -> bool:
    """Whether a host's outcome is its execution node's loss (not its own failure)."""
    return outcome.startswith("failed: execution node ") and " lost: " in outcome


def run_parts(pool: NodePool, split: Sequence[Part],
              run: Callable[[NodeSpec | None, list[str]], RunResult], *,
              again_if_lost: bool = False) -> RunResult:
    """Runs each part (a node's hosts, or the controller's) at once; one result for all.

    ``again_if_lost`` (for runs safe to repeat, rollbacks above all): the hosts of a node lost
    during the run are run again on the nodes left (or the controller), until they have a
    result of their own or no node is left to try.
    """
    def placed(node: NodeSpec | None, hosts: list[str]) -> RunResult:
        why = pool.nowhere() if node is None else None
        if why is None:
            return run(node, hosts)
        from rollout_py.executor import RunResult

        return RunResult(status="failed", rc=1, hosts=dict.fromkeys(hosts, why))

    results = _all(split, placed)
    for _ in range(len(pool.spec.nodes) if again_if_lost else 0):
        hosts = [h for r in results for h, o in r.hosts.items() if lost(o)]
        if not hosts:
            break
        results += _all(pool.split(hosts), placed)
    return _merged(results)


def each_part(split: Sequence[Part],
              run: Callable[[NodeSpec | None, list[str]], dict[str, T]]) -> dict[str, T]:
    """Runs each part at once (``run(node, hosts)``); their host -> value maps, merged.
    (Preflight: with ``fallback: none`` a host without a node fails its node's run there.)"""
    return {h: v for part in _all(split, run) for h, v in part.items()}


def _all(split: Sequence[Part], run: Callable[[NodeSpec | None, list[str]], T]) -> list[T]:
    """``run(node, hosts)`` of each part, side by side (a single part in this thread)."""
    if len(split) == 1:
        return [run(*split[0])]
    with ThreadPoolExecutor(max_workers=len(split), thread_name_prefix="exec-node") as pool:
        return list(pool.map(lambda part: run(*part), split))


def _merged(results: Sequence[RunResult]) -> RunResult:
    """One result; a host run again has its last outcome."""
    from rollout_py.executor import RunResult

    if len(results) == 1:
        return results[0]
    hosts = {h: o for r in results for h, o in r.hosts.items()}
    previous = {h: v for r in results for h, v in r.previous_versions.items()}
    last = {h: i for i, r in enumerate(results) for h in r.hosts}
    statuses = {results[i].status for i in set(last.values())}  # of the runs that count
    status = "successful" if statuses == {"successful"} else \
        "canceled" if "canceled" in statuses else "failed"
    return RunResult(status=status, rc=0 if status == "successful" else
                     max(r.rc for r in results) or 1,
                     hosts=hosts, previous_versions=previous,
                     artifact_dir=results[0].artifact_dir)


def start(pool: NodePool, node: NodeSpec, private: Path,
          handler: Callable[[dict[str, Any]], bool], cancel: Callable[[], bool],
          kwargs: dict[str, Any], *, inventory: str, envvars: Mapping[str, str],
          settings: Mapping[str, Any], secrets: Mapping[str, Any], verbosity: int) -> NodeRun:
    """One run through ``node``: its inventory, playbook and roles shipped with it, paths and
    SSH control dir on the node's side, secrets through the stream only."""
    remote = pool.node_dir(node, private)
    control = pool.control_dir(node)
    ours = str(roles_path())
    shipped = ship(private, inventory=inventory, roles=[ours])
    env = {k: v for k, v in envvars.items() if k not in _CONTROLLER_ONLY}
    # The lifeline plugin, armed by the node's wrapper on the worker (rollout_py.node_wrapper).
    shutil.copy2(Path(LIFELINE_DIR) / "rollout_lifeline.py", _mkdir(private / "lifeline"))
    user_callbacks = os.environ.get("ANSIBLE_CALLBACK_PLUGINS")
    env["ANSIBLE_CALLBACK_PLUGINS"] = os.pathsep.join(
        p for p in (f"{remote}/lifeline", user_callbacks) if p)
    env["ANSIBLE_ROLES_PATH"] = os.pathsep.join(  # the user's own paths as they are
        f"{remote}/roles/0" if p == ours else p
        for p in envvars.get("ANSIBLE_ROLES_PATH", ours).split(os.pathsep) if p)
    user_plugins = os.environ.get("ANSIBLE_ACTION_PLUGINS")  # without the session's gate
    env.pop("ANSIBLE_ACTION_PLUGINS", None)
    if user_plugins:
        env["ANSIBLE_ACTION_PLUGINS"] = user_plugins
    env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = control
    bindir = os.path.dirname(node.runner) if os.path.isabs(node.runner) else ""
    env["PATH"] = os.pathsep.join(p for p in (bindir, "/usr/local/bin", "/usr/bin", "/bin") if p)
    run_kwargs = {k: v for k, v in kwargs.items() if k != "cmdline"}
    run_kwargs.update(shipped)
    run_kwargs["extravars"] = {**kwargs.get("extravars", {}),
                               "ansible_control_path_dir": control}
    run_kwargs.update({"envvars": env, "settings": dict(settings), "suppress_env_files": True})
    if verbosity:
        run_kwargs["verbosity"] = verbosity
    return pool.run(node, private, run_kwargs, secrets=secrets, handler=handler, cancel=cancel)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
