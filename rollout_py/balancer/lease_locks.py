"""The locks a fleet lease is made of: a flock on this machine, or a flock on an LB host over SSH.

Each lock is taken without blocking: ``take`` returns None when it got the lock, else who holds
it (from ``<key>.holder.json`` beside the lock file). The SSH lock is held by a remote shell
whose stdin is the SSH channel, so it ends, and its flock with it, when the connection does.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import getpass
import os
import posixpath
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from rollout_py.balancer.ssh import SshOptions, ssh_connect
from rollout_py.balancer.transports import parse_socket_url
from rollout_py.errors import BalancerUnreachable, PreflightError
from rollout_py.lock import Holder, pid_alive

if TYPE_CHECKING:
    import paramiko

LOCK_DIR_ENV = "ROLLOUT_LOCK_DIR"
DEFAULT_LOCK_DIR = "/run/lock/rollout_py"
REMOTE_LOCK_DIR = "/run/lock/rollout_py"  # on ssh:// LB hosts


@dataclass(frozen=True, slots=True)
class LeaseSite:
    """Where the lease lock for one LB lives: a lock file on this machine or on an SSH host.

    Example:
        >>> site = LeaseSite("tcp://10.0.0.5:9999", "tcp", "/run/lock/rollout_py/ad.lock")
        >>> site.local_only, site.key
        (True, 'local:/run/lock/rollout_py/ad.lock')
    """

    url: str  # the LB's admin socket URL
    scheme: str  # unix | tcp | ssh
    path: str  # the lock file, on this machine or on the SSH host
    ssh_host: str = ""  # "user@host:port" for ssh://, else ""

    @property
    def local_only(self) -> bool:
        """True if the lock only excludes controllers on this machine (``tcp://`` LBs)."""
        return self.scheme == "tcp"

    @property
    def key(self) -> str:
        """Identity of the lock (lock order, duplicates): its machine and file."""
        return f"{self.ssh_host.split('@')[-1] or 'local'}:{self.path}"

    @property
    def holder_path(self) -> str:
        """The file naming the holder, beside the lock file (on the same machine)."""
        return self.path.removesuffix(".lock") + ".holder.json"

    def describe(self) -> str:
        """One line: which lock file, on which machine, and what it excludes.

        Example:
            >>> LeaseSite("unix:///a.sock", "unix", "/run/lock/rollout_py/x.lock").describe()
            "unix:///a.sock: flock /run/lock/rollout_py/x.lock on this machine (the LB's host)"
        """
        if self.scheme == "ssh":
            return f"{self.url}: flock {self.path} on {self.ssh_host}, held over SSH"
        if self.scheme == "unix":
            return f"{self.url}: flock {self.path} on this machine (the LB's host)"
        return (f"{self.url}: flock {self.path} on this machine only: it excludes other "
                "controllers on this machine, not on other machines")

    def unknown_holder(self) -> Holder:
        """The holder reported for a busy lock whose holder file is missing or stale."""
        where = f" on {self.ssh_host}" if self.ssh_host else ""
        return Holder(pid=None, user="unknown", host="unknown", deploy_id=None, started=-1.0,
                      message=f"the lock is held, its holder is not recorded (see "
                      f"{self.holder_path}{where})", kind="deploy")


class LeaseLock(Protocol):
    """One lock of a lease."""

    site: LeaseSite

    def take(self, me: Holder) -> Holder | None:
        """Take the lock without blocking: None if taken, else who holds it."""
        ...

    def close(self) -> None:
        """Drop the lock (holder file first) and any connection; idempotent."""
        ...


def lock_dir() -> Path:
    """The machine-wide directory of local lease locks: ``$ROLLOUT_LOCK_DIR`` or the default.

    Example:
        >>> lock_dir()  # doctest: +SKIP
        PosixPath('/run/lock/rollout_py')
    """
    return Path(os.environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)


def _unusable(directory: Path, exc: OSError) -> PreflightError:
    return PreflightError(f"lease lock directory {directory}: {exc.strerror or exc}; set "
                          f"{LOCK_DIR_ENV} to a directory this user can write "
                          f"(default {DEFAULT_LOCK_DIR})")


def ensure_lock_dir(directory: Path) -> None:
    """Create the lock directory (mode 1777, like /tmp) if missing; PreflightError if unusable.

    Example:
        >>> ensure_lock_dir(lock_dir())  # doctest: +SKIP
    """
    try:
        if not directory.is_dir():
            directory.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, 0o1777)
                os.chmod(directory, 0o1777)  # shared by every user, whatever the umask
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(13, "not writable by this user")
    except OSError as exc:
        raise _unusable(directory, exc) from exc


def me(*, pid: int, started: float, deploy_id: str | None, message: str) -> Holder:
    """The holder record of this process.

    Example:
        >>> me(pid=7, started=0.0, deploy_id="d-7", message="").kind
        'deploy'
    """
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        user = str(os.getuid())
    return Holder(pid=pid, user=user, host=socket.gethostname(), deploy_id=deploy_id,
                  started=started, message=message, kind="deploy")


class LocalLock:
    """A flock on a file in this machine's lock directory (``unix://`` and ``tcp://`` LBs)."""

    def __init__(self, site: LeaseSite) -> None:
        self.site = site
        self._path, self._holder = Path(site.path), Path(site.holder_path)
        self._fd: int | None = None

    def _open(self) -> int:
        # Read-only is enough for flock and opens lock files other users created.
        with contextlib.suppress(FileNotFoundError):
            return os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.open(self._path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)

    def take(self, me: Holder) -> Holder | None:
        try:
            fd = self._open()
        except OSError as exc:
            raise _unusable(self._path.parent, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return self._read_holder()
        self._fd = fd
        tmp = self._holder.with_name(f".{self._holder.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(me.to_json() + "\n")
            tmp.chmod(0o644)  # whatever the umask: other users may read who holds it
            os.replace(tmp, self._holder)
        except OSError:  # the flock is the truth; an unrecorded holder is reported as unknown
            tmp.unlink(missing_ok=True)
        return None

    def _read_holder(self) -> Holder:
        try:
            holder = Holder.from_json(self._holder.read_text())
        except (OSError, ValueError):
            return self.site.unknown_holder()
        if holder.pid is not None and holder.host == socket.gethostname() \
                and not pid_alive(holder.pid):
            return self.site.unknown_holder()  # left by a holder that died
        return holder

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:  # removed while still locked: no one reads it as the next holder's
                self._holder.unlink(missing_ok=True)
            except OSError:
                pass
            finally:
                os.close(fd)


def remote_script(site: LeaseSite, holder: Holder) -> str:
    """POSIX sh run on the LB host: prints LOCKED and keeps the flock until stdin ends, or BUSY.

    Example:
        >>> site = LeaseSite("ssh://lb2/s", "ssh", "/run/lock/rollout_py/x.lock", "root@lb2:22")
        >>> "flock -n 9" in remote_script(site, me(pid=1, started=0, deploy_id=None, message=""))
        True
    """
    q = shlex.quote
    lock, info = q(site.path), q(site.holder_path)
    data = base64.b64encode((holder.to_json() + "\n").encode()).decode()  # nothing to quote
    return (
        "command -v flock >/dev/null 2>&1 || { echo 'flock not found: install util-linux' >&2;"
        " exit 3; }; "
        f"mkdir -p -m 1777 {q(posixpath.dirname(site.path))} || exit 3; "
        f"[ -e {lock} ] || : >>{lock} || exit 3; exec 9<{lock}; "
        f"if flock -n 9; then printf %s {data} | base64 -d >{info}.$$ && mv -f {info}.$$ {info};"
        f" echo LOCKED; cat >/dev/null 9<&-; rm -f {info}; exit 0; "
        f"else echo BUSY; cat {info} 2>/dev/null; exit 0; fi"
    )


class SshLock:
    """A flock on the LB host, held by a remote shell for as long as its SSH channel is open."""

    def __init__(self, site: LeaseSite, options: SshOptions) -> None:
        self.site, self._options = site, options
        self._addr = parse_socket_url(site.url)
        self._client: paramiko.SSHClient | None = None
        self._chan: paramiko.Channel | None = None

    def take(self, me: Holder) -> Holder | None:
        import paramiko

        try:
            if self._client is None:
                self._client = ssh_connect(self._addr.user, self._addr.host, self._addr.port,
                                           self._options)
            transport = self._client.get_transport()
            if transport is None:
                raise paramiko.SSHException("the SSH connection is closed")
            chan = transport.open_session(timeout=self._options.timeout)
            chan.settimeout(self._options.timeout)
            chan.exec_command(remote_script(self.site, me))
            out, seen = chan.makefile("rb"), []
            for raw in iter(out.readline, b""):
                line = raw.decode(errors="replace").strip()
                if line == "LOCKED":
                    self._chan = chan
                    return None
                if line == "BUSY":
                    text = out.read().decode(errors="replace")
                    chan.close()
                    try:
                        return Holder.from_json(text)
                    except ValueError:
                        return self.site.unknown_holder()
                seen.append(line)  # login noise before the answer
            err = chan.makefile_stderr("rb").read().decode(errors="replace").strip()
            status = chan.recv_exit_status()
            chan.close()
        except (OSError, paramiko.SSHException) as exc:
            self.close()
            raise BalancerUnreachable(f"{self.site.url}: lease lock over SSH: {exc}") from exc
        raise PreflightError(f"{self.site.url}: cannot take the lease lock {self.site.path} on "
                             f"{self.site.ssh_host} (exit {status}): "
                             f"{err or ' '.join(seen) or 'no message'}")

    def close(self) -> None:
        chan, self._chan = self._chan, None
        client, self._client = self._client, None
        try:
            if chan is not None:
                # EOF to the remote shell: it removes holder.json, exits and frees the flock.
                with contextlib.suppress(OSError, EOFError):
                    chan.shutdown_write()
                    chan.status_event.wait(self._options.timeout)
                chan.close()
        finally:
            if client is not None:
                client.close()
