"""Remote execution nodes: an Ansible run sent to a node as ansible-runner's
``transmit | worker | process`` stream over SSH, and which hosts each node takes.

The controller builds the run's private data dir as for a local run, adds what the node needs
to run it (the inventory and rollout_py's roles; the secret variables in a file that exists
only in the stream), transmits it into ``ssh NODE python3 -c <rollout_py.node_wrapper> RUNNER
worker``, and processes the stream that comes back: events reach the same handler as a local
run's, artifacts land in the same place. The playbook, and the paths the inventory names (SSH
keys, artifacts, the user's roles path), must exist on the node at the same paths (deployed
to it as the controller's are).

A node whose stream breaks (it died, or its connection did) is *lost* for the rest of the
deploy: the hosts of that run fail with the reason, and later runs (the batch's rollback
first) go to the other nodes, or to the controller (``fallback: controller``).

Example:
    >>> pool = NodePool(ExecutorsSpec.model_validate({"nodes": ["ssh://a", "ssh://b"]}))
    >>> sorted(len(h) for _, h in pool.split([f"app{i}" for i in range(10)]))
    [4, 6]
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from rollout_py.errors import InputError
from rollout_py.job_events import writing_events
from rollout_py.runner_files import write_private_json
from rollout_py.spec_executors import ExecutorsSpec, NodeSpec

Handler = Callable[[dict[str, Any]], bool]
Transport = Callable[[NodeSpec, str], list[str]]  # (node, remote command) -> argv

_CANCEL_GRACE = 15.0  # s after the controller closes the stream before the ssh is killed


def ssh_transport(ssh_config: str | None) -> Transport:
    """``ssh [-F config] -o BatchMode=yes ... [user@]host COMMAND``: OpenSSH with the user's
    settings; keepalives find a silent node in ~15 s."""
    def argv(node: NodeSpec, command: str) -> list[str]:
        return ["ssh", *(["-F", ssh_config] if ssh_config else []), "-o", "BatchMode=yes",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
                *(["-p", str(node.port)] if node.port else []),
                *(["-l", node.user] if node.user else []), "--", node.destination, command]
    return argv


@dataclass
class NodeRun:
    """A streamed run's outcome, shaped like ansible-runner's ``Runner`` where the executor
    reads it (``status``, ``rc``, ``stats``, ``config.artifact_dir``)."""

    status: str
    rc: int
    artifact_dir: str
    lost: str | None = None  # why the node's stream broke, if it did
    stats: dict[str, Any] | None = None

    @property
    def config(self) -> NodeRun:
        return self


@dataclass
class NodePool:
    """A deploy's execution nodes: which hosts go where, which nodes are lost, the runs."""

    spec: ExecutorsSpec
    transport: Transport | None = None
    groups_of: Callable[[str], set[str]] = field(default=lambda _h: set())
    _lost: dict[str, str] = field(default_factory=dict)
    _used: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _token: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    def __post_init__(self) -> None:
        if self.transport is None:
            self.transport = ssh_transport(self.spec.ssh_config)

    @property
    def lost(self) -> dict[str, str]:
        with self._lock:
            return dict(self._lost)

    def lose(self, node: NodeSpec, why: str) -> None:
        with self._lock:
            self._lost.setdefault(node.name, why)

    def check(self, hosts: Sequence[str]) -> None:
        """Refuses (before anything is touched) hosts that ``assign: group`` gives no node."""
        if self.spec.assign != "group":
            return
        orphans = [h for h in hosts if not self.groups_of(h) & set(self.spec.groups)]
        if orphans:
            raise InputError(
                f"executors.groups: {len(orphans)} host(s) are in none of the groups "
                f"{', '.join(sorted(self.spec.groups))} (e.g. {', '.join(orphans[:3])}); "
                "add their group, or use assign: hash")

    def node_for(self, host: str) -> NodeSpec | None:
        """The host's node among those not lost (``assign: group``: its group's node only);
        None when there is none: the controller, or no one (:meth:`nowhere`)."""
        lost = self.lost
        live = [n for n in self.spec.nodes if n.name not in lost]
        if self.spec.assign == "group":
            wanted = {self.spec.groups[g] for g in self.groups_of(host) if g in self.spec.groups}
            live = [n for n in live if n.name in wanted]
        if not live:
            return None
        # Rendezvous hashing: a lost node's hosts spread over the others; no one else moves.
        return max(live, key=lambda n: hashlib.sha256(f"{n.name}\0{host}".encode()).digest())

    def nowhere(self) -> str | None:
        """Why hosts without a node (:meth:`node_for` None) cannot run (``fallback: none``);
        None when the controller runs them."""
        if self.spec.fallback == "controller":
            return None
        lost = "; ".join(f"{n}: {why}" for n, why in sorted(self.lost.items()))
        return f"failed: no execution node left for it (fallback: none; lost {lost or '-'})"

    def split(self, hosts: Sequence[str]) -> list[tuple[NodeSpec | None, list[str]]]:
        """``hosts`` by node, in the nodes' order (None, the controller, last)."""
        parts: dict[str | None, list[str]] = {}
        for host in hosts:
            node = self.node_for(host)
            parts.setdefault(node.name if node else None, []).append(host)
        order = [n for n in self.spec.nodes if n.name in parts]
        out: list[tuple[NodeSpec | None, list[str]]] = [(n, parts[n.name]) for n in order]
        if None in parts:
            out.append((None, parts[None]))
        return out

    def describe(self, hosts: Sequence[str]) -> str:
        """Where ``hosts``' Ansible work runs, for ``rollout plan``: ``exec1 (app01, app03),
        exec2 (app02)``."""
        return ", ".join(f"{node.name if node else 'the controller'} ({', '.join(part)})"
                         for node, part in self.split(hosts))

    def placement(self, hosts: Sequence[str]) -> dict[str, list[str]]:
        """:meth:`describe` as data: node name (``controller``) -> hosts."""
        return {node.name if node else "controller": part for node, part in self.split(hosts)}

    # --- one run ----------------------------------------------------------------------------
    def node_dir(self, node: NodeSpec, private: Path) -> str:
        """The run's private data dir on the node (removed by the worker when it ends)."""
        return f"/tmp/rollout-worker-{self._token}-{private.name}"

    def control_dir(self, node: NodeSpec) -> str:
        """Where the node's Ansible keeps its SSH masters for this deploy."""
        return f"/tmp/rollout-cp-{self._token}-{node.name}"

    def run(self, node: NodeSpec, private: Path, kwargs: dict[str, Any], *,
            secrets: Mapping[str, Any], handler: Handler,
            cancel: Callable[[], bool]) -> NodeRun:
        """Streams one ansible-runner run through ``node``; a broken stream loses the node."""
        import ansible_runner

        remote = self.node_dir(node, private)
        assert self.transport is not None
        argv = self.transport(node, _worker_command(node, remote))
        with self._lock:
            self._used.add(node.name)
        stderr = private / "node-stderr.txt"
        with open(stderr, "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=err, start_new_session=True)
            assert proc.stdin is not None and proc.stdout is not None
            done = threading.Event()
            # The secrets' file exists while the run is transmitted, then only in the stream.
            with _secrets_in(private, secrets) as secret_file:
                if secret_file:
                    kwargs = {**kwargs, "cmdline": f"-e @{remote}/env/{secret_file}"}
                try:
                    # A cancel_callback given, ansible-runner installs no signal handlers of
                    # its own (it would take SIGINT/SIGTERM from the controller's engine).
                    ansible_runner.run(streamer="transmit", _output=proc.stdin,
                                       private_data_dir=str(private), cancel_callback=_never,
                                       **kwargs)
                    proc.stdin.flush()
                except (OSError, ValueError):
                    pass  # the node went away while it was sent: the stream below says so
            watcher = threading.Thread(target=_watch_cancel, args=(proc, cancel, done),
                                       daemon=True)
            watcher.start()
            artifact_dir = private / "artifacts" / node.name
            try:
                processor = ansible_runner.run(
                    streamer="process", _input=proc.stdout, private_data_dir=str(private),
                    ident=node.name, event_handler=writing_events(handler, artifact_dir),
                    quiet=True,
                    cancel_callback=_never)
                status = str(processor.status)
            finally:
                done.set()
                with contextlib.suppress(OSError):
                    proc.stdin.close()
                proc.stdout.close()
                try:
                    code = proc.wait(_CANCEL_GRACE)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = proc.wait()
        rc = _read_rc(artifact_dir)
        if status in ("successful", "failed", "canceled", "timeout") and rc is not None:
            return NodeRun(status, rc, str(artifact_dir))
        why = _stream_broken(status, code, stderr)
        self.lose(node, why)
        return NodeRun("failed", rc or 1, str(artifact_dir), lost=why)

    def close(self) -> None:
        """Asks each node this pool used to end its SSH masters for the deploy (best effort:
        a lost node is skipped)."""
        assert self.transport is not None
        lost = self.lost
        for node in self.spec.nodes:
            if node.name not in self._used or node.name in lost:
                continue
            cp = shlex.quote(self.control_dir(node))
            command = (f"for s in {cp}/*; do [ -S \"$s\" ] && ssh -o ControlPath=\"$s\" "
                       f"-O exit x >/dev/null 2>&1; done; rm -rf {cp}")
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(self.transport(node, command), stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=20, check=False)


def _never() -> bool:
    return False


def _worker_command(node: NodeSpec, remote: str) -> str:
    """``python3 -c WRAPPER RUNNER worker --private-data-dir DIR --delete``, shell-quoted."""
    code = resources.files("rollout_py").joinpath("node_wrapper.py").read_text()
    runner = node.runner
    python = os.path.join(os.path.dirname(runner), "python3") if os.path.isabs(runner) \
        else "python3"
    return shlex.join([python, "-c", code, runner, "worker", "--private-data-dir", remote,
                       "--delete"])


@contextlib.contextmanager
def _secrets_in(private: Path, secrets: Mapping[str, Any]) -> Iterator[str | None]:
    """Secret variables as a 0600 file in the run's ``env/`` while it is transmitted."""
    if not secrets:
        yield None
        return
    name = "rollout-secrets.json"
    path = private / "env" / name
    path.parent.mkdir(mode=0o700, exist_ok=True)
    write_private_json(path, secrets)
    try:
        yield name
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)


def _watch_cancel(proc: subprocess.Popen[bytes], cancel: Callable[[], bool],
                  done: threading.Event) -> None:
    """On cancel, closes the stream to the node (the wrapper then stops the worker)."""
    while not done.wait(0.2):
        if cancel():
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
            return


def _read_rc(artifact_dir: Path) -> int | None:
    try:
        return int((artifact_dir / "rc").read_text().strip())
    except (OSError, ValueError):
        return None


def _stream_broken(status: str, code: int, stderr: Path) -> str:
    try:
        said = stderr.read_text(errors="replace").strip().splitlines()
    except OSError:
        said = []
    tail = f": {said[-1][:300]}" if said else ""
    return f"its stream ended without a result (status {status}, ssh exit {code}){tail}"


def ship(private: Path, *, inventory: str, roles: Sequence[str]) -> dict[str, Any]:
    """Copies into the run's private data dir what the node could not have: the inventory
    (file or directory) as ``inventory/``, and each of ``roles`` (rollout_py's own) under
    ``roles/N``. Returns the run's ``inventory`` argument. The playbook is not copied: its
    directory may hold anything (a state dir, a whole repository); it runs from its path."""
    inv = Path(inventory)
    target = private / "inventory"
    target.mkdir(parents=True, exist_ok=True)
    if inv.is_dir():
        shutil.copytree(inv, target / inv.name, symlinks=False, dirs_exist_ok=True)
    else:
        shutil.copy2(inv, target / inv.name)
    for i, path in enumerate(roles):
        shutil.copytree(path, private / "roles" / str(i), dirs_exist_ok=True)
    return {"inventory": str(target / inv.name)}
