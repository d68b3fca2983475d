"""One setup for every command that changes the fleet (deploy, resume, rollback).

Variables and secrets, the locks (the state directory's and the fleet lease on every LB), the
balancer, the executor, the journal, the notifier, the event sinks, verbosity, signals and the
cleanup live here once, so no command can forget a piece of them.

Example:
    >>> with FleetSession(ctx, state=state, extravars={}, secret_names=[]) as session:
    ...     session.lock(deploy_id="d-1", message="deploy web 2.0")  # doctest: +SKIP
    ...     result = session.run(engine_for)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from rollout_py import events as ev
from rollout_py.balancer.fleet import Balancer, HAProxyFleet
from rollout_py.balancer.lease import FleetLease, acquire_fleet_lease
from rollout_py.balancer.runtime import RuntimeAPI
from rollout_py.balancer.ssh import SshOptions
from rollout_py.balancer.transports import open_transport
from rollout_py.controls import Control
from rollout_py.errors import BalancerError, InputError, PreflightError
from rollout_py.exec_nodes import NodePool, ssh_transport
from rollout_py.executor import AnsibleExecutor, Executor
from rollout_py.lock import FleetLock, fleet_key
from rollout_py.notify import Notifier, Webhook
from rollout_py.redact import Redactor
from rollout_py.result import DeployResult
from rollout_py.spec import Spec
from rollout_py.state import Journal, StateDir

if TYPE_CHECKING:
    import paramiko

    from rollout_py.api import Context
    from rollout_py.balancer.routes import Router
    from rollout_py.engine import Engine

Sink = Callable[[ev.Event], None]


def ssh_options_for(spec: Spec) -> Callable[[str], SshOptions]:
    """SSH settings for an ``ssh://`` LB socket, from the spec's ssh_config (if any).

    The file is parsed once and each host looked up once while it is unchanged (a deploy asks
    for the lease and again for the balancer): paramiko reads every ``Host`` block of it per
    lookup, ~5 ms for a file that lists a hundred hosts.
    """
    if not spec.haproxy.ssh_config:
        return lambda host: SshOptions()
    path = str(spec.path(spec.haproxy.ssh_config))
    try:
        st = os.stat(path)
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        config = _ssh_config(path, stamp)
    except OSError as exc:
        raise InputError(f"haproxy.ssh_config {path}: {exc.strerror or exc}") from exc
    return functools.partial(_ssh_options, config)


@functools.lru_cache(maxsize=4)
def _ssh_config(path: str, stamp: tuple[int, int, int]) -> paramiko.SSHConfig:
    """``path`` parsed; ``stamp`` (inode, size, mtime) keys the cache: a changed file is read
    again."""
    import paramiko

    return paramiko.SSHConfig.from_path(path)


@functools.lru_cache(maxsize=64)
def _ssh_options(config: paramiko.SSHConfig, host: str) -> SshOptions:
    entry = config.lookup(host)
    keys = entry.get("identityfile") or [None]
    known = (entry.get("userknownhostsfile") or "").split()
    return SshOptions(key_filename=keys[0], known_hosts=known[0] if known else None,
                      bind_address=entry.get("bindaddress"))


def node_pool(ctx: Context) -> NodePool | None:
    """The spec's execution nodes (None without an ``executors`` section)."""
    spec = ctx.spec.executors
    if spec is None:
        return None
    config = str(ctx.spec.path(spec.ssh_config)) if spec.ssh_config else None
    members = {g: {h.name for h in ctx.inventory.select(g)} for g in spec.groups}
    return NodePool(spec, ssh_transport(config),
                    groups_of=lambda host: {g for g, names in members.items() if host in names})


def lease_backends(spec: Spec) -> list[str]:
    """The backends whose fleet lease a command holds: the spec's, or both pools'."""
    if spec.blue_green is not None:
        return sorted(p.backend for p in spec.blue_green.pools.values())
    return [spec.haproxy.backend]


def open_balancer(spec: Spec, backend: str | None = None) -> HAProxyFleet:
    """The runtime APIs of every LB the spec names, for its backend (or ``backend``)."""
    options = ssh_options_for(spec)
    apis = [RuntimeAPI(open_transport(url, ssh=options(urlsplit(url).hostname or "")))
            for url in spec.haproxy.sockets]
    return HAProxyFleet(apis, backend or spec.haproxy.backend)


def redactor_for(spec: Spec, extravars: Mapping[str, Any], names: Sequence[str]) -> Redactor:
    """Masks the values of the spec's and the command line's secret variables."""
    return Redactor.for_vars({**spec.vars, **extravars}, [*spec.secret_vars, *names])


@contextmanager
def _signals(engine: Engine, install: bool) -> Iterator[None]:
    """SIGINT/SIGTERM go to the engine (first: finish the batch; second: roll back now)."""
    if not install or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum: int, _frame: Any) -> None:
        engine.interrupt(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class FleetSession:
    """Everything a fleet-changing command holds while it runs, released in reverse on exit.

    ``extravars`` are the variables on top of the spec's ``vars``; ``secret_names`` the
    variables (beside the spec's ``secret_vars``) whose values are masked and passed to
    Ansible through a private file only.
    """

    def __init__(self, ctx: Context, *, state: StateDir, extravars: Mapping[str, Any],
                 secret_names: Sequence[str], verbosity: int = 0, lock_wait: float = 0.0,
                 sinks: Sequence[Sink] = (), on_event: Sink | None = None,
                 executor: Executor | None = None, balancer: Balancer | None = None,
                 install_signal_handlers: bool = True, router: Router | None = None) -> None:
        spec = ctx.spec
        self.ctx, self.spec, self.state = ctx, spec, state
        self.all_vars: dict[str, Any] = {**spec.vars, **extravars, "rollout_hosts": spec.hosts}
        self.secret_names = [*spec.secret_vars, *secret_names]
        self.redactor = redactor_for(spec, extravars, secret_names)
        self.plain_vars = {k: v for k, v in self.all_vars.items()
                           if k not in self.secret_names}
        self._secret_values = {k: v for k, v in self.all_vars.items()
                               if k in self.secret_names}
        self.verbosity, self.lock_wait = verbosity, lock_wait
        self._sinks = [*sinks, *([on_event] if on_event else [])]
        self._given_executor, self._given_balancer = executor, balancer
        self._install_signals = install_signal_handlers
        self.notifier = Notifier(
            [Webhook(url=w.url, on=frozenset(w.on), timeout=w.timeout, retries=w.retries)
             for w in spec.notify.webhooks], redact=self.redactor.text) \
            if spec.notify.webhooks else None
        self._lock: FleetLock | None = None
        self._leases: list[FleetLease] = []
        self.backend = spec.haproxy.backend
        self._given_router = router
        self._router: Router | None = None
        self._router_lbs: HAProxyFleet | None = None
        self._balancer: Balancer | None = None
        self._executor: Executor | None = None
        self._journal: Journal | None = None
        self.notifications: dict[str, str] = {}  # webhook -> delivered | failed: ... | ...

    # --- what a command takes, in order ----------------------------------------------------
    def lock(self, *, deploy_id: str, message: str) -> None:
        """The state directory's lock, then the fleet lease on every LB (sorted, so two
        controllers never hold one each). Raises LockHeldError naming the holder."""
        self._lock = FleetLock(self.state.root,
                               fleet_key(self.spec.name, self.ctx.inventory_source))
        self._lock.acquire(deploy_id=deploy_id, message=message, wait=self.lock_wait)
        if self._given_balancer is None:  # doubles in tests have no LB to hold a lease on
            try:  # blue/green: both pools' backends (a rolling deploy of either is excluded)
                for backend in lease_backends(self.spec):
                    self._leases.append(acquire_fleet_lease(
                        self.spec.haproxy.sockets, backend,
                        ssh=ssh_options_for(self.spec), deploy_id=deploy_id, message=message,
                        wait=self.lock_wait))
            except BalancerError as exc:  # an LB we cannot reach: refused, nothing touched
                raise PreflightError(f"preflight refused: cannot take the fleet lease: {exc}"
                                     ) from exc

    @property
    def balancer(self) -> Balancer:
        """The backend's LBs (blue/green: set ``backend`` to the idle pool's first)."""
        if self._balancer is None:
            self._balancer = self._given_balancer or open_balancer(self.spec, self.backend)
        return self._balancer

    def router(self) -> Router:
        """Blue/green: the pools map on every LB, over the balancer's connections."""
        from rollout_py.balancer.routes import MapRouter

        if self._given_router is not None:
            return self._given_router
        assert self.spec.blue_green is not None
        if self._router is None:
            self._router_lbs = open_balancer(self.spec)
            self._router = MapRouter(self._router_lbs.apis, self.spec.blue_green.map)
        return self._router

    def controls(self, deploy_id: str) -> Callable[[], Sequence[Control]]:
        """The operator controls sent to this deploy (``rollout promote``...), each once;
        call after ``lock`` (controls from before it are stale and set aside)."""
        from rollout_py.controls import Inbox

        return Inbox(self.state.root, deploy_id).poll

    def executor(self, *, runs: Path, control_dir: str | None) -> Executor:
        """The executor for this command's runs (ansible-runner unless one was given)."""
        if self._executor is None:
            self._executor = self._given_executor or AnsibleExecutor(
                self.ctx.inventory_source, work_dir=runs, extravars=self.plain_vars,
                secret_vars=self._secret_values, verbosity=self.verbosity,
                control_dir=control_dir, redactor=self.redactor, nodes=node_pool(self.ctx))
        return self._executor

    def run(self, engine: Callable[[Sequence[Sink]], Engine], journal: Path,
            resume: Sequence[ev.Event] | None = None) -> DeployResult:
        """Opens the journal, builds the engine with every sink (the journal first), and runs
        it with the signals routed to it."""
        self._journal = Journal(journal)
        sinks: list[Sink] = [self._journal, *self._sinks,
                             *([self.notifier] if self.notifier else [])]
        the_engine = engine(sinks)
        with _signals(the_engine, self._install_signals):
            return the_engine.run(resume=resume)

    @property
    def started(self) -> bool:
        """True once the journal is open: from then on the deploy has a record to keep."""
        return self._journal is not None

    # --- cleanup -----------------------------------------------------------------------------
    def close(self) -> None:
        """Releases everything, newest first; the locks last, so no one starts meanwhile."""
        if self._journal is not None:
            self._journal.close()
        if self._given_executor is None and self._executor is not None:
            self._executor.close()
        if self._given_balancer is None and self._balancer is not None:
            self._balancer.close()
        if self._router_lbs is not None:
            self._router_lbs.close()
        if self.notifier is not None:
            self.notifications = self.notifier.close(wait=15)
            if self._journal is not None:  # kept beside the journal: nothing lost unsaid
                with contextlib.suppress(OSError):
                    (self._journal.path.parent / "notifications.json").write_text(
                        json.dumps(self.notifications, indent=2, sort_keys=True) + "\n")
        for lease in reversed(self._leases):
            lease.release()
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> FleetSession:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
