"""One deploy at a time per fleet: a kernel flock per fleet key, plus manual holds.

The flock is the truth. The kernel drops it when its holder dies (SIGKILL included), so a dead
deploy never blocks the next one; ``<key>.holder.json`` only says *who* holds it and is read
only while the flock is actually held. A manual hold (``rollout lock acquire -m MSG``) is a
file, ``<key>.hold.json``: it outlives the process that left it and blocks every deploy until
``rollout lock release`` removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import os
import re
import socket
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from rollout_py.atomic import write_atomic
from rollout_py.errors import InputError, LockHeldError

# LockHeldError lives in the exception tree (rollout_py.errors); importable from here too.
__all__ = ["FleetLock", "Holder", "LockHeldError", "fleet_key"]

# How long to poll between two flock attempts while waiting.
_POLL = 0.05
# How long a busy flock may go without a live holder recorded in holder.json before it is
# reported as held by an unknown holder. Covers the instant between a winner's flock and its
# holder.json, and the short probes of status()/hold(), which must not refuse a deploy.
_META_GRACE = 1.0
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def fleet_key(name: str, inventory: str) -> str:
    """Return the stable, filesystem-safe key of a fleet: its spec name and inventory source.

    An inventory that names a file or directory is resolved first, so a relative and an
    absolute path to the same inventory give the same key; a host list (``"a,b,"``) is hashed
    as written.

    Example:
        >>> fleet_key("web", "h1,h2,")
        'web-949a20f075bf'
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:64] or "fleet"
    source = inventory
    if os.path.exists(inventory) or "," not in inventory:
        source = str(Path(inventory).expanduser().resolve())
    return f"{safe}-{hashlib.sha256(source.encode()).hexdigest()[:12]}"


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a fleet: a running deploy (``kind="deploy"``) or a manual hold (``"hold"``).

    Example:
        >>> h = Holder(pid=4242, user="alice", host="ci-01", deploy_id="d-7", started=0.0,
        ...            message="nightly", kind="deploy")
        >>> h.describe()
        'deploy d-7 by alice@ci-01 (pid 4242) since 1970-01-01 00:00:00 UTC: nightly'
    """

    pid: int | None
    user: str
    host: str
    deploy_id: str | None
    started: float
    message: str
    kind: Literal["deploy", "hold"]

    def to_json(self) -> str:
        """Return the holder as one line of JSON (the content of the metadata files).

        Example:
            >>> Holder(None, "bob", "ops", None, 0.0, "db move", "hold").to_json()[:23]
            '{"deploy_id": null, "ho'
        """
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Holder:
        """Parse what :meth:`to_json` wrote; raise ValueError if it is not a holder.

        Example:
            >>> Holder.from_json(Holder(1, "u", "h", None, 0.0, "", "deploy").to_json()).pid
            1
        """
        data: Any = json.loads(text)
        if not isinstance(data, dict) or data.get("kind") not in ("deploy", "hold"):
            raise ValueError("not a lock holder")
        pid, deploy_id, started = data.get("pid"), data.get("deploy_id"), data.get("started")
        if (pid is not None and type(pid) is not int) or not isinstance(started, int | float) \
                or (deploy_id is not None and not isinstance(deploy_id, str)):
            raise ValueError("not a lock holder")
        return cls(pid=pid, user=str(data.get("user", "")), host=str(data.get("host", "")),
                   deploy_id=deploy_id, started=float(started),
                   message=str(data.get("message", "")), kind=data["kind"])

    def describe(self) -> str:
        """Return one line naming who holds the fleet, since when, pid, deploy id and message.

        Example:
            >>> Holder(None, "bob", "ops", None, 0.0, "db move", "hold").describe()
            'manual hold by bob@ops since 1970-01-01 00:00:00 UTC: db move'
        """
        what = "manual hold" if self.kind == "hold" else "deploy"
        if self.deploy_id:
            what += f" {self.deploy_id}"
        pid = f" (pid {self.pid})" if self.pid is not None else ""
        since = (datetime.fromtimestamp(self.started, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
                 if self.started >= 0 else "an unknown time")
        line = f"{what} by {self.user}@{self.host}{pid} since {since}"
        message = " ".join(self.message.split())
        return f"{line}: {message}" if message else line


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        return str(os.getuid())


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists on this machine (a holder that died is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class FleetLock:
    """The deploy lock of one fleet, under ``state_dir/locks/``; usable as a context manager.

    Example:
        >>> lock = FleetLock(Path(".rollout"), fleet_key("web", "inventory.ini"))  # doctest: +SKIP
        >>> lock.acquire(deploy_id="d-7", message="nightly", wait=30)  # doctest: +SKIP
        >>> with lock:  # released on exit, also on error  # doctest: +SKIP
        ...     run_the_deploy()
    """

    def __init__(self, state_dir: Path, key: str) -> None:
        if not _KEY.fullmatch(key):
            raise InputError(f"lock key {key!r}: expected letters, digits, '.', '_' or '-'")
        self.key = key
        self.dir = Path(state_dir) / "locks"
        self.lock_path = self.dir / f"{key}.lock"
        self.holder_path = self.dir / f"{key}.holder.json"
        self.hold_path = self.dir / f"{key}.hold.json"
        self._fd: int | None = None
        self._holder: Holder | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the flock (between acquire and release)."""
        return self._fd is not None

    def acquire(self, *, deploy_id: str | None, message: str = "", wait: float = 0.0) -> None:
        """Take the fleet for a deploy, waiting up to ``wait`` seconds for it to be free.

        Raises:
            LockHeldError: another deploy holds the flock, or a manual hold exists.

        Example:
            >>> lock.acquire(deploy_id="d-7", wait=60)  # doctest: +SKIP
        """
        if self._fd is not None:
            raise RuntimeError(f"lock {self.key} is already held by this FleetLock")
        fd = self._open(create=True)
        try:
            deadline = time.monotonic() + max(wait, 0.0)
            while True:
                holder = self._lock_or_holder(fd)
                if holder is None:
                    # Checked under the flock: hold() writes its file under the flock too.
                    holder = self._read_hold()
                    if holder is None:
                        break
                    fcntl.flock(fd, fcntl.LOCK_UN)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LockHeldError(holder)
                time.sleep(min(_POLL, left))
            me = Holder(pid=os.getpid(), user=_user(), host=socket.gethostname(),
                        deploy_id=deploy_id, started=time.time(), message=message,
                        kind="deploy")
            write_atomic(self.holder_path, me.to_json() + "\n")
        except BaseException:
            os.close(fd)  # also drops the flock if it was taken
            raise
        self._fd, self._holder = fd, me

    def release(self) -> None:
        """Give the fleet back: remove holder.json, then drop the flock. Idempotent.

        Example:
            >>> lock.release()  # doctest: +SKIP
        """
        fd, self._fd, self._holder = self._fd, None, None
        if fd is None:
            return
        try:
            # Removed before the flock goes, so no one can read it as theirs once it is free.
            self.holder_path.unlink(missing_ok=True)
        finally:
            os.close(fd)

    def status(self) -> Holder | None:
        """Return who holds the fleet now (a running deploy first, then a manual hold), or None.

        The flock is probed without blocking and dropped at once; holder.json left behind by a
        dead deploy is never reported.

        Example:
            >>> holder = lock.status()  # doctest: +SKIP
            >>> print(holder.describe() if holder else "free")  # doctest: +SKIP
        """
        if self._holder is not None:
            return self._holder
        try:
            fd = self._open(create=False)
        except FileNotFoundError:
            return self._read_hold()
        try:
            running = self._lock_or_holder(fd)
        finally:
            os.close(fd)  # drops the probe's flock
        return running or self._read_hold()

    def hold(self, *, message: str) -> Holder:
        """Leave a manual hold that blocks every deploy until :meth:`release_hold`.

        Raises:
            LockHeldError: a deploy holds the flock, or a manual hold already exists.

        Example:
            >>> lock.hold(message="db migration, ask bob")  # doctest: +SKIP
        """
        if self._holder is not None:
            raise LockHeldError(self._holder)
        fd = self._open(create=True)
        try:
            running = self._lock_or_holder(fd)
            if running is not None:
                raise LockHeldError(running)
            existing = self._read_hold()
            if existing is not None:
                raise LockHeldError(existing)
            me = Holder(pid=None, user=_user(), host=socket.gethostname(), deploy_id=None,
                        started=time.time(), message=message, kind="hold")
            write_atomic(self.hold_path, me.to_json() + "\n")
        finally:
            os.close(fd)
        return me

    def release_hold(self) -> bool:
        """Remove the manual hold; return True if there was one.

        Example:
            >>> lock.release_hold()  # doctest: +SKIP
            True
        """
        try:
            self.hold_path.unlink()
        except FileNotFoundError:
            return False
        return True

    def __enter__(self) -> FleetLock:
        if self._fd is None:
            self.acquire(deploy_id=None)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def _open(self, *, create: bool) -> int:
        if not create:
            return os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        with contextlib.suppress(PermissionError):  # someone else's file: readable is enough
            os.fchmod(fd, 0o644)
        return fd

    def _lock_or_holder(self, fd: int) -> Holder | None:
        """Take the flock on ``fd`` (None) or return who holds it.

        A busy flock with no live holder recorded is retried for a moment before it is
        reported as held by an unknown holder: it may be a probe, or a winner about to write.
        """
        grace = time.monotonic() + _META_GRACE
        while not _try_flock(fd):
            running = self._read_running()
            if running is not None:
                return running
            if time.monotonic() >= grace:
                return Holder(pid=None, user="unknown", host="unknown", deploy_id=None,
                              started=-1.0, message="the lock is held, its holder is not "
                              f"recorded (see {self.holder_path})", kind="deploy")
            time.sleep(_POLL / 5)
        return None

    def _read_running(self) -> Holder | None:
        """holder.json, if it names a deploy still alive; call only while the flock is busy."""
        try:
            holder = Holder.from_json(self.holder_path.read_text())
        except (OSError, ValueError):
            return None
        if holder.kind != "deploy":
            return None
        if holder.pid is not None and holder.host == socket.gethostname() \
                and not pid_alive(holder.pid):
            return None  # left by a deploy that died; the flock is someone else's now
        return holder

    def _read_hold(self) -> Holder | None:
        try:
            text = self.hold_path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            text = f"unreadable: {exc.strerror or exc}"
        try:
            return Holder.from_json(text)
        except ValueError:
            # A hold file that cannot be parsed still blocks: a hold fails closed.
            return Holder(pid=None, user="unknown", host="unknown", deploy_id=None,
                          started=-1.0, message=f"unreadable hold file {self.hold_path}",
                          kind="hold")
