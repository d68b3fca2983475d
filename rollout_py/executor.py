"""The Ansible seam: runs playbooks and commands on hosts through ansible-runner.

The only module that imports ansible_runner. A host counts as done only if Ansible processed
it and it is neither failed nor unreachable; ``rc == 0`` alone is never trusted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from rollout_py import executor_remote
from rollout_py._display import CALLBACK_DIR, RESULTS_ENV
from rollout_py._gate import PLUGIN_DIR as GATE_DIR
from rollout_py._lifeline import lifeline_env
from rollout_py.errors import ControllerError
from rollout_py.events import Failure
from rollout_py.job_events import (
    STATS_KEYS,
    failure_message,
    keep_event,
    merge_stats,
    one_line,
    writing_events,
)
from rollout_py.procs import close_control_dir
from rollout_py.redact import Redactor
from rollout_py.resources import roles_path
from rollout_py.runner_files import runner_settings as _runner_settings
from rollout_py.runner_files import secrets_file as _secrets_file

if TYPE_CHECKING:
    from rollout_py.exec_nodes import NodePool
    from rollout_py.playbook_session import PlaybookSession
    from rollout_py.spec_executors import NodeSpec

Cancel = Callable[[], bool]
# Runs whose ok and skipped results nothing reads, one job event per host each: the stage
# (what it reports through set_stats arrives whole with the run's stats; a failure, its
# message; a cancelled stage switched nothing, so no previous version is missed).
QUIET_RUNS = frozenset({"stage"})



@dataclass(frozen=True, slots=True)
class RunResult:
    """Per-host outcome of one ansible-runner run."""

    status: str  # ansible-runner's: successful | failed | canceled | timeout
    rc: int
    hosts: dict[str, str]  # host -> "ok" | "failed: msg" | "unreachable: msg" | "not run"
    previous_versions: dict[str, str | None] = field(default_factory=dict)
    artifact_dir: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "successful" and all(v == "ok" for v in self.hosts.values())

    def failure_kind(self) -> Failure:
        if any(v.startswith("unreachable") for v in self.hosts.values()):
            return "unreachable"
        if self.status == "canceled":
            return "cancelled"
        return "task_failed"


class Executor(Protocol):
    """Runs work on hosts (the seam the engine's tests replace with a double)."""

    def run_playbook(self, playbook: str, hosts: Sequence[str], extravars: Mapping[str, Any],
                     *, label: str, tags: str | None = None,
                     cancel: Cancel | None = None) -> RunResult: ...

    def run_command(self, host: str, command: str, timeout: float) -> tuple[bool, str]: ...

    def reachable(self, hosts: Sequence[str]) -> dict[str, str | None]: ...

    def syntax_check(self, playbook: str) -> str | None: ...

    def close(self) -> None: ...


@runtime_checkable
class PreparesBatches(Protocol):
    """An executor that gets a deploy's batch runs ready ahead (the engine tells it when it
    is one); each batch still comes as a ``run_playbook`` call."""

    def prepare_batches(self, playbook: str, batches: Sequence[tuple[int, Sequence[str]]],
                        extravars: Mapping[str, Any], *, tags: str | None) -> None:
        """The batch runs that come next (``extravars`` as the calls pass them, without
        ``rollout_batch``)."""

    def wait_batches(self, timeout: float) -> bool:
        """Waits (at most ``timeout`` s) until a prepared batch run would start at once (called
        before a batch is drained, so the wait is not spent out of rotation); True if so."""

    def end_batches(self) -> None:
        """No more of the prepared batch runs will be asked for."""


class AnsibleExecutor:
    """ansible-runner against the user's inventory, one private data dir per run.

    SSH masters (ControlPersist) live in a directory of this executor's own, and ``close()``
    asks each to exit, so no ssh process outlives the deploy.
    """

    def __init__(self, inventory: str, *, work_dir: Path,
                 extravars: Mapping[str, Any] | None = None,
                 secret_vars: Mapping[str, Any] | None = None, forks: int = 50,
                 verbosity: int = 0, control_dir: str | None = None,
                 redactor: Redactor | None = None, nodes: NodePool | None = None) -> None:
        self.inventory = inventory
        self.work_dir = work_dir
        self.extravars = dict(extravars or {})
        self.secret_vars = dict(secret_vars or {})
        self.forks = forks
        self.verbosity = verbosity
        self.redactor = redactor or Redactor()
        # Short path: unix socket names are limited to 107 bytes.
        if control_dir:
            os.makedirs(control_dir, mode=0o700, exist_ok=True)
            self.control_dir = control_dir
        else:
            self.control_dir = tempfile.mkdtemp(prefix="rollout-cp-", dir="/tmp")
        self._runs = 0
        self._lock = threading.Lock()
        self._session: PlaybookSession | None = None
        self._ended: list[PlaybookSession] = []
        self.nodes = nodes  # remote execution nodes (rollout_py.exec_nodes), if the spec has

    def _envvars(self) -> dict[str, str]:
        user_roles = os.environ.get("ANSIBLE_ROLES_PATH")
        roles = f"{user_roles}:{roles_path()}" if user_roles else str(roles_path())
        bindir = os.path.dirname(sys.executable)
        return {
            "ANSIBLE_ROLES_PATH": roles,
            # The playbook session's gate (rollout_py._gate) comes after the user's plugins.
            "ANSIBLE_ACTION_PLUGINS": os.pathsep.join(
                p for p in (os.environ.get("ANSIBLE_ACTION_PLUGINS"), GATE_DIR) if p),
            "ANSIBLE_PIPELINING": "True",
            # ansible-runner turns host-key checking off unless told otherwise; we keep
            # Ansible's own default (on) unless the user's environment says differently.
            "ANSIBLE_HOST_KEY_CHECKING": os.environ.get("ANSIBLE_HOST_KEY_CHECKING", "True"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": self.control_dir,
            "ANSIBLE_FORCE_COLOR": "False",
            "ANSIBLE_NOCOLOR": "True",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_SHOW_CUSTOM_STATS": "False",
            # The ansible executables beside this interpreter (a venv) come first.
            "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            # Ansible dies with this process (kill -9 included): see rollout_py/_lifeline.
            **lifeline_env(os.environ),
        }

    def _private_dir(self, label: str) -> Path:
        with self._lock:
            self._runs += 1
            path = self.work_dir / f"{self._runs:03d}-{label}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _run(self, label: str, hosts: Sequence[str], cancel: Cancel | None, *,
             node: NodeSpec | None = None,
             **kwargs: Any) -> tuple[Any, dict[str, str], dict[str, Any]]:
        messages: dict[str, str] = {}
        stats_data: dict[str, Any] = {}
        # The playbook_on_stats event's counts, kept here: ``runner.stats`` would read every
        # job event file of the run back from disk to find it.
        final: dict[str, Any] = {}
        keep_results = label.endswith("-upgrade")  # the runs timeline/resume read back
        # A stage run's ok results: no job event (rollout_py._display), unless Ansible runs -v.
        results = label not in QUIET_RUNS or self.verbosity > 0

        def on_event(event: dict[str, Any]) -> bool:
            """Collects what the run's outcome needs; returns whether ansible-runner writes the
            event to ``job_events`` (see :func:`keep_event`)."""
            kind = event.get("event", "")
            data = event.get("event_data") or {}
            message = failure_message(kind, data)
            if message is not None:
                messages.setdefault(str(data["host"]), message)
            elif kind == "runner_on_ok" and data.get("host"):
                # set_stats results stream per host, so they survive a cancelled run.
                merge_stats(stats_data, (data.get("res") or {}).get("ansible_stats"))
            elif kind == "playbook_on_stats":
                merge_stats(stats_data, {"data": data.get("artifact_data")})
                final.update({k: data.get(k) or {} for k in STATS_KEYS})
            return keep_event(kind, data, keep_results)

        extravars = {**self.extravars, **kwargs.pop("extravars", {}),
                     "ansible_control_path_dir": self.control_dir}
        try:
            private = self._private_dir(f"{node.name}@{label}" if node else label)
        except OSError as exc:
            raise ControllerError(f"cannot create {self.work_dir}/...{label}: "
                                  f"{exc.strerror or exc}") from exc
        with _secrets_file(self.secret_vars) as cmdline:
            try:
                runner = self._start(private, on_event, cancel or (lambda: False), {
                    "limit": ",".join(hosts), "extravars": extravars,
                    "forks": min(self.forks, max(1, len(hosts))), "cmdline": cmdline,
                    **kwargs}, node, results=results)
            except OSError as exc:  # e.g. the state directory is full
                raise ControllerError(f"ansible-runner failed on the controller: "
                                      f"{exc.strerror or exc}") from exc
            finally:
                # Artifacts are kept for inspection, never with a secret value in them.
                with contextlib.suppress(OSError):
                    self.redactor.scrub_tree(private)
        messages = {h: self.redactor.text(m) for h, m in messages.items()}
        outcomes: dict[str, str] = {}
        # runner.stats (which reads all job events back) only if the handler saw no stats:
        # a cancelled run, or an ansible-runner that did not call it.
        lost = getattr(runner, "lost", None)  # the execution node's stream broke
        stats = final or runner.stats or {}
        processed = set(stats.get("processed", {}))
        failed = set(stats.get("failures", {}))
        dark = set(stats.get("dark", {}))
        for host in hosts:
            if host in dark:
                outcomes[host] = messages.get(host, "unreachable: no message")
            elif host in failed:
                outcomes[host] = messages.get(host, "failed: no message")
            elif host in processed:
                outcomes[host] = "ok"
            elif lost and node:
                outcomes[host] = f"failed: execution node {node.name} lost: {lost}"
            else:
                outcomes[host] = "not run" if runner.status != "canceled" else "not run: cancelled"
        return runner, outcomes, stats_data

    def run_playbook(self, playbook: str, hosts: Sequence[str], extravars: Mapping[str, Any],
                     *, label: str, tags: str | None = None,
                     cancel: Cancel | None = None) -> RunResult:
        session = self._session
        index = session.serves(playbook, hosts, extravars, tags) if session else None
        if session is not None and index is not None:
            served = session.run_batch(index, cancel)
            if served is not None:
                return served
        if self.nodes is not None:
            parts = executor_remote.parts(self.nodes, hosts)
            if parts is not None:
                return executor_remote.run_parts(
                    self.nodes, parts, lambda node, subset: self._playbook(
                        playbook, subset, extravars, label=label, tags=tags, cancel=cancel,
                        node=node), again_if_lost=label.endswith("-rollback"))
        return self._playbook(playbook, hosts, extravars, label=label, tags=tags, cancel=cancel)

    def _playbook(self, playbook: str, hosts: Sequence[str], extravars: Mapping[str, Any], *,
                  label: str, tags: str | None, cancel: Cancel | None,
                  node: NodeSpec | None = None) -> RunResult:
        extra: dict[str, Any] = {"extravars": dict(extravars)}
        if tags:
            extra["tags"] = tags
        runner, outcomes, data = self._run(label, hosts, cancel, node=node,
                                           playbook=playbook, **extra)
        previous = data.get("rollout_previous_version") or {}
        return RunResult(status=runner.status, rc=runner.rc or 0, hosts=outcomes,
                         previous_versions={h: previous.get(h) for h in hosts if h in previous},
                         artifact_dir=str(runner.config.artifact_dir))

    def run_command(self, host: str, command: str, timeout: float) -> tuple[bool, str]:
        node = self.nodes.node_for(host) if self.nodes is not None else None
        nowhere = self.nodes.nowhere() if self.nodes is not None and node is None else None
        if nowhere is not None:
            return False, nowhere
        _, outcomes, _ = self._run(
            "probe", [host], None, node=node, module="ansible.builtin.shell", module_args=command,
            host_pattern=host, timeout=int(max(1, timeout)) + 5)
        return outcomes.get(host) == "ok", outcomes.get(host, "")

    def reachable(self, hosts: Sequence[str]) -> dict[str, str | None]:
        """SSH login to every host; None means reachable.

        ``ssh host true`` per host with the settings Ansible would use (rollout_py.reach: one
        ansible-inventory run for all hosts, then a few ms of CPU per host); hosts it cannot
        represent (another connection, a password, a template) get the Ansible raw round.
        With execution nodes, the raw round runs on each host's node: the hosts must be
        reachable from where their Ansible work runs.
        """
        from rollout_py import reach  # reach imports this module

        def ansible_round(subset: Sequence[str],
                          node: NodeSpec | None = None) -> dict[str, str | None]:
            _, outcomes, _ = self._run("preflight-ssh", subset, None, node=node,
                                       module="ansible.builtin.raw", module_args="true",
                                       host_pattern="all")
            return {h: None if o == "ok" else o for h, o in outcomes.items()}

        parts = executor_remote.parts(self.nodes, hosts) if self.nodes is not None else None
        if parts is not None:
            nowhere = self.nodes.nowhere() if self.nodes is not None else None

            def on_node(node: NodeSpec | None, sub: list[str]) -> dict[str, str | None]:
                if node is None and nowhere is not None:
                    return dict.fromkeys(sub, nowhere)
                return ansible_round(sub, node)

            found = executor_remote.each_part(parts, on_node)
        else:
            found = reach.reachable(hosts, inventory=self.inventory,
                                    env={**os.environ, **self._envvars()},
                                    overrides={**self.extravars, **self.secret_vars},
                                    fallback=ansible_round, workers=self.forks)
        return {h: None if m is None else self.redactor.text(m) for h, m in found.items()}

    def syntax_check(self, playbook: str) -> str | None:
        """None if the playbook passes ``ansible-playbook --syntax-check``, else the error."""
        env = {**os.environ, **self._envvars()}
        proc = subprocess.run(
            [shutil.which("ansible-playbook", path=env["PATH"]) or "ansible-playbook",
             "--syntax-check", "-i", self.inventory, playbook],
            capture_output=True, text=True, env=env, timeout=120, check=False)
        if proc.returncode == 0:
            return None
        return one_line(proc.stderr or proc.stdout, 1000)

    def prepare_batches(self, playbook: str, batches: Sequence[tuple[int, Sequence[str]]],
                        extravars: Mapping[str, Any], *, tags: str | None) -> None:
        """Starts one ansible-playbook for all these batches (rollout_py.playbook_session),
        which waits before each batch until its ``run_playbook`` call comes."""
        from rollout_py.playbook_session import PlaybookSession  # it imports this module

        self.end_batches()
        if not batches or self.nodes is not None:  # execution nodes take a run per batch
            return
        try:
            private = self._private_dir("batches-upgrade")
        except (OSError, ControllerError):
            return  # each batch then is a run of its own (and meets the problem there)
        session = PlaybookSession(
            playbook=playbook, batches=batches,
            extravars=extravars,
            base_vars={**self.extravars, "ansible_control_path_dir": self.control_dir},
            tags=tags, private=private,
            inventory=self.inventory, env={**os.environ, **self._envvars()},
            secrets=lambda: _secrets_file(self.secret_vars), runner=self._start,
            redact=self.redactor.text, forks=self.forks)
        try:
            session.start()
        except OSError:
            session.close()
            return
        self._session = session

    def wait_batches(self, timeout: float) -> bool:
        return self._session is None or self._session.wait_ready(timeout)

    def end_batches(self) -> None:
        """Stops the session at its next gate; :meth:`close` waits for its end."""
        session, self._session = self._session, None
        if session is not None:
            session.stop()
            self._ended.append(session)

    def _start(self, private: Path, handler: Callable[[dict[str, Any]], bool], cancel: Cancel,
               kwargs: dict[str, Any], node: NodeSpec | None = None, *,
               results: bool = True) -> Any:
        """ansible-runner as every run of this executor calls it (``kwargs`` on top); with
        ``node``, streamed through that execution node. ``results`` false: a local run's ok
        and skipped results make no job event (see rollout_py._display)."""
        import ansible_runner

        if node is not None and self.nodes is not None:
            return executor_remote.start(
                self.nodes, node, private, handler, cancel, kwargs, inventory=self.inventory,
                envvars=self._envvars(), settings=_runner_settings(private),
                secrets=self.secret_vars, verbosity=self.verbosity)

        ident = private.name  # the artifacts' dir: private/artifacts/<ident>
        return ansible_runner.run(**{
            "private_data_dir": str(private), "inventory": self.inventory, "ident": ident,
            # ansible-runner's event callback without the start events (rollout_py._display)
            "envvars": {**self._envvars(), "AWX_LIB_DIRECTORY": CALLBACK_DIR,
                        RESULTS_ENV: "all" if results else "failures"},
            "quiet": True, "suppress_env_files": True,
            "event_handler": writing_events(handler, private / "artifacts" / ident),
            "cancel_callback": cancel,
            "settings": _runner_settings(private), "verbosity": self.verbosity or None,
            **kwargs})

    def close(self) -> None:
        """Ends a playbook session, asks every SSH master this executor's runs opened to exit,
        then removes their dir."""
        self.end_batches()
        for session in self._ended:
            session.close()
            with contextlib.suppress(OSError):
                self.redactor.scrub_tree(session.private)
        self._ended.clear()
        if self.nodes is not None:
            self.nodes.close()
        close_control_dir(self.control_dir)
