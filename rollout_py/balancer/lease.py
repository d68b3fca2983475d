"""One deploy at a time per HAProxy backend: a lease made of one lock per LB, held on the LB's host.

The spec-file lock (rollout_py.lock) cannot see a second copy of the spec in another directory
or on another machine; this lease names the backend on each LB instead. For ``ssh://`` LBs the
lock is a flock on the LB host, held by a shell that the SSH connection keeps alive: when the
controller dies (SIGKILL included) its connection closes, the shell reads EOF and exits, and the
LB host's kernel drops the flock. ``unix://`` LBs are on this machine: their flock is in a
machine-wide directory (``$ROLLOUT_LOCK_DIR``, default ``/run/lock/rollout_py``). A ``tcp://``
LB's host cannot be reached, so its flock is local too and only excludes controllers on this
machine (``LeaseSite.local_only``). Each lock has a ``<key>.holder.json`` naming its holder.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import time
from collections.abc import Callable, Sequence
from types import TracebackType

from rollout_py.balancer.lease_locks import (
    DEFAULT_LOCK_DIR,
    LOCK_DIR_ENV,
    REMOTE_LOCK_DIR,
    LeaseLock,
    LeaseSite,
    LocalLock,
    SshLock,
    ensure_lock_dir,
    lock_dir,
    me,
)
from rollout_py.balancer.runtime import validate_name
from rollout_py.balancer.ssh import SshOptions
from rollout_py.balancer.transports import parse_socket_url
from rollout_py.errors import InputError
from rollout_py.lock import Holder, LockHeldError

__all__ = [
    "DEFAULT_LOCK_DIR",
    "LOCK_DIR_ENV",
    "REMOTE_LOCK_DIR",
    "FleetLease",
    "LeaseSite",
    "acquire_fleet_lease",
    "lease_sites",
    "local_lock_name",
    "lock_dir",
]

_POLL = 0.1  # seconds between two rounds of attempts while waiting
# A busy lock whose holder is not (yet) recorded is retried this long before it is reported
# as held by an unknown holder: a winner takes the flock first, then writes holder.json.
_GRACE = 1.0


def _digest(name: str, backend: str) -> str:
    return hashlib.sha256(f"{name}\0{backend}".encode()).hexdigest()[:16]


def local_lock_name(socket_path: str, backend: str) -> str:
    """The lock file name of a local admin socket: the same for every path to that socket.

    The path is resolved (relative to the working directory, through symlinks) first.

    Example:
        >>> local_lock_name("/run/haproxy/./admin.sock", "app")
        '4d98bb9afb155ebc.lock'
    """
    return f"{_digest(os.path.realpath(socket_path), backend)}.lock"


def lease_sites(sockets: Sequence[str], backend: str) -> list[LeaseSite]:
    """Where the lease of ``backend`` behind ``sockets`` lives: in lock order, no duplicates.

    Touches nothing; used to take the lease and to say where it lives.

    Example:
        >>> [(s.scheme, s.local_only) for s in lease_sites(["tcp://10.0.0.5:9999"], "app")]
        [('tcp', True)]
    """
    validate_name("backend", backend)
    sites: dict[str, LeaseSite] = {}
    for url in sockets:
        addr = parse_socket_url(url)
        if addr.scheme == "ssh":
            name = f"{_digest(posixpath.normpath(addr.path), backend)}.lock"
            site = LeaseSite(url, "ssh", posixpath.join(REMOTE_LOCK_DIR, name),
                             f"{addr.user}@{addr.host}:{addr.port}")
        elif addr.scheme == "unix":
            site = LeaseSite(url, "unix", str(lock_dir() / local_lock_name(addr.path, backend)))
        else:
            name = f"{_digest(f'{addr.host}:{addr.port}', backend)}.lock"
            site = LeaseSite(url, "tcp", str(lock_dir() / name))
        sites.setdefault(site.key, site)
    return [sites[key] for key in sorted(sites)]


def _close_all(locks: Sequence[LeaseLock]) -> None:
    errors: list[Exception] = []
    for lk in reversed(locks):
        try:
            lk.close()
        except Exception as exc:  # free the others first
            errors.append(exc)
    if errors:
        raise errors[0]


class FleetLease:
    """The held lease of one backend on every LB; release it, or use it as a context manager.

    Example:
        >>> with acquire_fleet_lease(spec.haproxy.sockets, "app", ssh=ssh_options_for(spec),
        ...                          deploy_id="d-7", message="nightly") as lease:  # doctest: +SKIP
        ...     print("\\n".join(lease.describe()))
    """

    def __init__(self, backend: str, holder: Holder, locks: Sequence[LeaseLock]) -> None:
        self.backend, self.holder = backend, holder
        self.sites = tuple(lk.site for lk in locks)
        self._locks, self._held = list(locks), True

    @property
    def held(self) -> bool:
        """True until :meth:`release`."""
        return self._held

    @property
    def local_only(self) -> tuple[str, ...]:
        """URLs of LBs whose lock excludes only controllers on this machine (``tcp://``)."""
        return tuple(s.url for s in self.sites if s.local_only)

    def describe(self) -> list[str]:
        """One line per lock of this lease: where it is and what it excludes.

        Example:
            >>> print("\\n".join(lease.describe()))  # doctest: +SKIP
            ssh://root@lb2/run/haproxy/admin.sock: flock /run/lock/rollout_py/4d98bb9afb155ebc.lock on root@lb2:22, held over SSH
        """  # noqa: E501
        return [site.describe() for site in self.sites]

    def release(self) -> None:
        """Give every lock back (each holder file first). Idempotent.

        Example:
            >>> lease.release()  # doctest: +SKIP
        """
        locks, self._locks, self._held = self._locks, [], False
        _close_all(locks)

    def __enter__(self) -> FleetLease:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def acquire_fleet_lease(sockets: Sequence[str], backend: str, *,
                        ssh: Callable[[str], SshOptions], deploy_id: str | None, message: str,
                        wait: float = 0.0) -> FleetLease:
    """Take the lease of ``backend`` on every LB in ``sockets``, waiting up to ``wait`` seconds.

    Locks are tried in the order of :func:`lease_sites`, none blocking. If one is busy, those
    taken in that round are given back before the next, so two controllers never each hold a
    part while waiting for the rest.

    Args:
        sockets: the LBs' admin socket URLs (``unix://``, ``tcp://``, ``ssh://``).
        backend: the HAProxy backend the deploy drives.
        ssh: SSH options for an ``ssh://`` LB, by host name (``api.ssh_options_for(spec)``).
        deploy_id: recorded in the holder files, with ``message``, this user, host and pid.
        message: why the fleet is held.
        wait: seconds to keep trying while a lock is busy.

    Raises:
        LockHeldError: a lock was still busy after ``wait`` seconds; ``.holder`` names who.
        InputError: no sockets, a bad socket URL or backend name.
        PreflightError: a lock directory (here or on an LB host) cannot be used.
        BalancerUnreachable: an ``ssh://`` LB host could not be reached.

    Example:
        >>> lease = acquire_fleet_lease(["unix:///run/haproxy/admin.sock"], "app",
        ...     ssh=lambda host: SshOptions(), deploy_id="d-7", message="nightly")  # doctest: +SKIP
    """
    sites = lease_sites(sockets, backend)
    if not sites:
        raise InputError(f"backend {backend}: no LB socket to take the lease on")
    if any(site.scheme != "ssh" for site in sites):
        ensure_lock_dir(lock_dir())
    locks: list[LeaseLock] = [
        SshLock(s, ssh(parse_socket_url(s.url).host)) if s.scheme == "ssh" else LocalLock(s)
        for s in sites
    ]
    holder_me = me(pid=os.getpid(), started=time.time(), deploy_id=deploy_id, message=message)
    start = time.monotonic()
    try:
        while True:
            taken: list[LeaseLock] = []
            busy: tuple[LeaseSite, Holder] | None = None
            for lk in locks:
                holder = lk.take(holder_me)
                if holder is not None:
                    busy = (lk.site, holder)
                    break
                taken.append(lk)
            if busy is None:
                return FleetLease(backend, holder_me, locks)
            _close_all(taken)
            site, holder = busy
            spent = time.monotonic() - start
            if spent >= wait and (holder.started >= 0 or spent >= _GRACE):
                err = LockHeldError(holder)
                err.add_note(f"busy lock: {site.describe()}")
                raise err
            time.sleep(_POLL)
    except BaseException:
        with contextlib.suppress(Exception):  # the error that stopped us is the one to report
            _close_all(locks)
        raise
