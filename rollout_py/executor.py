"""The Ansible seam: runs playbooks and commands on hosts through ansible-runner.

The only module that imports ansible_runner. A host counts as done only if Ansible processed
it and it is neither failed nor unreachable; ``rc == 0`` alone is never trusted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rollout_py._lifeline import lifeline_env
from rollout_py.errors import ControllerError
from rollout_py.events import Failure
from rollout_py.procs import close_control_dir
from rollout_py.redact import Redactor
from rollout_py.resources import roles_path

Cancel = Callable[[], bool]



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


@contextlib.contextmanager
def _secrets_file(secret_vars: Mapping[str, Any]) -> Iterator[str | None]:
    """Secret variables reach Ansible as ``-e @file`` from a private temporary file, so they
    are neither on a command line (visible in ps) nor in ansible-runner's artifacts."""
    if not secret_vars:
        yield None
        return
    tmp = tempfile.mkdtemp(prefix="rollout-secrets-")
    path = os.path.join(tmp, "vars.json")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(dict(secret_vars), fh)
        yield f"-e @{path}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def previous_versions_from_artifacts(runs: Path) -> dict[str, str | None]:
    """``rollout_previous_version`` values reported by set_stats in earlier runs' artifacts
    (used by resume when the controller died before it could record them)."""
    found: dict[str, str | None] = {}
    for event_file in sorted(runs.glob("*-upgrade/artifacts/*/job_events/*.json")):
        try:
            data = json.loads(event_file.read_text())
        except (OSError, ValueError):
            continue
        if data.get("event") != "runner_on_ok":
            continue
        stats = ((data.get("event_data") or {}).get("res") or {}).get("ansible_stats") or {}
        value = (stats.get("data") or {}).get("rollout_previous_version")
        if isinstance(value, dict):
            for host, version in value.items():  # the first report: before this deploy
                found.setdefault(str(host), None if version is None else str(version))
    return found


# What a line that says what went wrong looks like (ssh's "Host key verification failed.",
# "Permission denied (publickey).", "Connection refused", ...).
_VERDICT = re.compile(r"failed|denied|refused|timed out|unreachable|no route|not known|"
                      r"could not|cannot|error", re.IGNORECASE)


def _short(msg: Any, limit: int = 300) -> str:
    """The message on one line, cut to about ``limit`` characters. ssh prints what failed last,
    after banners (a changed host key's warning alone is longer than 300 characters), so a cut
    message keeps its last line naming a failure (or its last line) at the end."""
    raw = str(msg)
    text = " ".join(raw.split())
    if len(text) <= limit:
        return text
    lines = [" ".join(line.split()) for line in raw.splitlines()]
    lines = [line for line in lines if line.strip("@ ")]  # not blank, not a banner of @
    if len(lines) < 2:
        return text[:limit] + "..."
    verdict = next((line for line in reversed(lines) if _VERDICT.search(line)), lines[-1])
    verdict = verdict[:limit // 2]
    head = text[:max(0, limit - len(verdict))]
    if verdict in head:
        return head + "..."
    return f"{head} ... {verdict}"


class AnsibleExecutor:
    """ansible-runner against the user's inventory, one private data dir per run.

    SSH masters (ControlPersist) live in a directory of this executor's own, and ``close()``
    asks each to exit, so no ssh process outlives the deploy.
    """

    def __init__(self, inventory: str, *, work_dir: Path,
                 extravars: Mapping[str, Any] | None = None,
                 secret_vars: Mapping[str, Any] | None = None, forks: int = 50,
                 verbosity: int = 0, control_dir: str | None = None,
                 redactor: Redactor | None = None) -> None:
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

    def _envvars(self) -> dict[str, str]:
        user_roles = os.environ.get("ANSIBLE_ROLES_PATH")
        roles = f"{user_roles}:{roles_path()}" if user_roles else str(roles_path())
        bindir = os.path.dirname(sys.executable)
        return {
            "ANSIBLE_ROLES_PATH": roles,
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

    def _run(self, label: str, hosts: Sequence[str], cancel: Cancel | None,
             **kwargs: Any) -> tuple[Any, dict[str, str], dict[str, Any]]:
        import ansible_runner

        messages: dict[str, str] = {}
        stats_data: dict[str, Any] = {}

        def on_event(event: dict[str, Any]) -> bool:
            kind = event.get("event", "")
            data = event.get("event_data", {})
            host = data.get("host")
            if kind in ("runner_on_failed", "runner_on_unreachable") and host:
                res = data.get("res", {})
                if kind == "runner_on_failed" and data.get("ignore_errors"):
                    return True
                prefix = "unreachable" if kind == "runner_on_unreachable" else "failed"
                msg = res.get("msg") or res.get("stderr") or res.get("reason") or "no message"
                if msg == "non-zero return code":  # command/shell: say what the command said
                    msg = f"rc {res.get('rc')}: {res.get('stderr') or res.get('stdout') or msg}"
                messages.setdefault(host, f"{prefix}: {data.get('task', '')}: {_short(msg)}")
            elif kind == "runner_on_ok" and host:
                # set_stats results stream per host, so they survive a cancelled run.
                stats = (data.get("res") or {}).get("ansible_stats") or {}
                for key, value in (stats.get("data") or {}).items():
                    if isinstance(value, dict):
                        stats_data.setdefault(key, {}).update(value)
            elif kind == "playbook_on_stats":
                for key, value in (data.get("artifact_data") or {}).items():
                    if isinstance(value, dict):
                        stats_data.setdefault(key, {}).update(value)
            return True  # keep every event (dropping them would also drop the stats)

        extravars = {**self.extravars, **kwargs.pop("extravars", {}),
                     "ansible_control_path_dir": self.control_dir}
        try:
            private = self._private_dir(label)
        except OSError as exc:
            raise ControllerError(f"cannot create {self.work_dir}/...{label}: "
                                  f"{exc.strerror or exc}") from exc
        with _secrets_file(self.secret_vars) as cmdline:
            try:
                runner = ansible_runner.run(
                    private_data_dir=str(private), inventory=self.inventory,
                    limit=",".join(hosts), extravars=extravars, envvars=self._envvars(),
                    quiet=True, suppress_env_files=True,
                    forks=min(self.forks, max(1, len(hosts))),
                    event_handler=on_event, cancel_callback=cancel or (lambda: False),
                    settings={"pexpect_timeout": 0.2, "suppress_ansible_output": True},
                    verbosity=self.verbosity or None, cmdline=cmdline, **kwargs,
                )
            except OSError as exc:  # e.g. the state directory is full
                raise ControllerError(f"ansible-runner failed on the controller: "
                                      f"{exc.strerror or exc}") from exc
            finally:
                # Artifacts are kept for inspection, never with a secret value in them.
                with contextlib.suppress(OSError):
                    self.redactor.scrub_tree(private)
        messages = {h: self.redactor.text(m) for h, m in messages.items()}
        outcomes: dict[str, str] = {}
        stats = runner.stats or {}
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
            else:
                outcomes[host] = "not run" if runner.status != "canceled" else "not run: cancelled"
        return runner, outcomes, stats_data

    def run_playbook(self, playbook: str, hosts: Sequence[str], extravars: Mapping[str, Any],
                     *, label: str, tags: str | None = None,
                     cancel: Cancel | None = None) -> RunResult:
        extra: dict[str, Any] = {"extravars": dict(extravars)}
        if tags:
            extra["tags"] = tags
        runner, outcomes, data = self._run(label, hosts, cancel, playbook=playbook, **extra)
        previous = data.get("rollout_previous_version") or {}
        return RunResult(status=runner.status, rc=runner.rc or 0, hosts=outcomes,
                         previous_versions={h: previous.get(h) for h in hosts if h in previous},
                         artifact_dir=str(runner.config.artifact_dir))

    def run_command(self, host: str, command: str, timeout: float) -> tuple[bool, str]:
        _, outcomes, _ = self._run(
            "probe", [host], None, module="ansible.builtin.shell", module_args=command,
            host_pattern=host, timeout=int(max(1, timeout)) + 5)
        return outcomes.get(host) == "ok", outcomes.get(host, "")

    def reachable(self, hosts: Sequence[str]) -> dict[str, str | None]:
        """SSH login to every host (raw module: no Python needed); None means reachable."""
        _, outcomes, _ = self._run("preflight-ssh", hosts, None, module="ansible.builtin.raw",
                                   module_args="true", host_pattern="all")
        return {h: None if o == "ok" else o for h, o in outcomes.items()}

    def syntax_check(self, playbook: str) -> str | None:
        """None if the playbook passes ``ansible-playbook --syntax-check``, else the error."""
        env = {**os.environ, **self._envvars()}
        proc = subprocess.run(
            [shutil.which("ansible-playbook", path=env["PATH"]) or "ansible-playbook",
             "--syntax-check", "-i", self.inventory, playbook],
            capture_output=True, text=True, env=env, timeout=120, check=False)
        if proc.returncode == 0:
            return None
        return _short(proc.stderr or proc.stdout, 1000)

    def close(self) -> None:
        """Asks every SSH master this executor's runs opened to exit, then removes their dir."""
        close_control_dir(self.control_dir)
