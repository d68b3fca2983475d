"""Operator controls for a running deploy (promote, abort, pause, continue) through its state
directory: senders only create files; the running deploy alone reads and consumes them.

Layout::

    <state_dir>/controls/<id>.json        sent, not yet read (temp file + fsync + rename)
                        .<id>.json.*.tmp  being written: never read
                        <id>.bad          unreadable or malformed, set aside by the reader
                        done/<id>.json    consumed by the deploy it was sent to, once
                        done/<id>.stale   discarded: its deploy was no longer running

A deploy is running while it holds its fleet lock (rollout_py.lock), whose holder file names
its deploy id; the kernel drops the flock when the deploy dies, so no marker can go stale.
Controls for another running deploy are left alone; those for a deploy no longer running, or
for an earlier run of this one (before ``rollout resume``), are discarded by the next Inbox.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import time
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rollout_py import events as ev
from rollout_py.atomic import write_atomic
from rollout_py.errors import ControlRefusedError, InputError
from rollout_py.lock import FleetLock, Holder, fleet_key
from rollout_py.lock import _user as lock_user  # who holds a lock is who sends a control

ACTIONS: tuple[ev.ControlAction, ...] = typing.get_args(ev.ControlAction)
COMMANDS = {a: a.replace("_all", " --all") for a in ACTIONS}  # what an operator types
_ID = re.compile(r"\d{8}T\d{6}\.\d{9}Z-[0-9a-f]{8}")
_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {  # field: (expected, check)
    "id": ("a control id", lambda v: isinstance(v, str) and bool(_ID.fullmatch(v))),
    "action": (" | ".join(ACTIONS), lambda v: v in ACTIONS),
    "deploy_id": ("a deploy id", lambda v: isinstance(v, str) and bool(v)),
    "by": ("who sent it", lambda v: isinstance(v, str) and bool(v)),
    "sent_at": ("a time", lambda v: isinstance(v, int | float) and not isinstance(v, bool)),
    "reason": ("a string or null", lambda v: v is None or isinstance(v, str)),
}


def new_control_id() -> tuple[str, float]:
    """A unique id sorting in the order sent (UTC to the ns, 32 random bits); its time."""
    ns = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ns // 10**9))
    return f"{stamp}.{ns % 10**9:09d}Z-{secrets.token_hex(4)}", ns / 1e9


@dataclass(frozen=True, slots=True)
class Control:
    """One control sent to one deploy; ``from_json(c.to_json()) == c``."""

    id: str
    action: ev.ControlAction
    deploy_id: str
    by: str  # who sent it: user@host (pid N), as a lock holder is described
    sent_at: float
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Control:
        """Parse what :meth:`to_json` gave; raise ValueError naming what is wrong."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        wrong = [f"{name}: expected {what}, not {data.get(name)!r}"
                 for name, (what, ok) in _FIELDS.items() if not ok(data.get(name))]
        if wrong:
            raise ValueError("; ".join(wrong))
        fields: dict[str, Any] = {name: data.get(name) for name in _FIELDS}
        return cls(**fields | {"sent_at": float(fields["sent_at"])})


@dataclass(frozen=True, slots=True)
class BadControl:
    """A file in ``controls/`` that is not a control: set aside (``path``), never acted on."""

    id: str  # the file's name without .json
    path: Path  # where it is now
    error: str


def running_deploys(state_dir: Path, *, fleet: str | None = None) -> dict[str, Holder]:
    """The deploys running on the state directory: deploy id -> its lock holder. ``fleet``:
    only those of that spec name's fleets (a lock key starts with it, rollout_py.lock)."""
    locks = Path(state_dir) / "locks"
    prefix = fleet_key(fleet, ",").rsplit("-", 1)[0] if fleet is not None else None
    running: dict[str, Holder] = {}
    for path in sorted(locks.glob("*.lock")) if locks.is_dir() else ():
        key = path.name.removesuffix(".lock")
        if prefix is not None and key.rsplit("-", 1)[0] != prefix:
            continue
        try:
            holder = FleetLock(Path(state_dir), key).status()
        except (InputError, OSError):  # not a lock key, or gone meanwhile
            continue
        if holder is not None and holder.kind == "deploy" and holder.deploy_id:
            running[holder.deploy_id] = holder
    return running


def send_control(state_dir: Path, action: ev.ControlAction, *, deploy_id: str | None = None,
                 reason: str | None = None, fleet: str | None = None) -> Control:
    """Send ``action`` to the running deploy (``deploy_id``: only if it is running; ``fleet``:
    a spec name, to look at its deploys only). Raises ControlRefusedError if no deploy is
    running, not the one named, or several and none is named."""
    if action not in ACTIONS:
        raise InputError(f"control {action!r}: expected one of {', '.join(ACTIONS)}")
    ids = tuple(sorted(running_deploys(state_dir, fleet=fleet)))
    where = f"{state_dir}" + (f" for fleet {fleet}" if fleet is not None else "")
    if (deploy_id is None and len(ids) != 1) or (deploy_id is not None and deploy_id not in ids):
        now = f"running: {', '.join(ids)}" if ids else "no deploy is running"
        message = (f"deploy {deploy_id} is not running in {where} ({now})" if deploy_id else
                   f"no deploy is running in {where}" if not ids else
                   f"several deploys run in {where} ({', '.join(ids)}): name one (--deploy-id)")
        raise ControlRefusedError(f"{message}: nothing to {COMMANDS[action]} (nothing sent)",
                                  state_dir=str(state_dir), deploy_id=deploy_id, running=ids)
    ident, sent_at = new_control_id()
    control = Control(id=ident, action=action, deploy_id=deploy_id or ids[0],
                      by=f"{lock_user()}@{socket.gethostname()} (pid {os.getpid()})",
                      sent_at=sent_at, reason=reason)
    (Path(state_dir) / "controls").mkdir(parents=True, exist_ok=True)
    write_atomic(Path(state_dir) / "controls" / f"{ident}.json",
                  json.dumps(control.to_json(), sort_keys=True) + "\n")
    return control


class Inbox:
    """The controls sent to one deploy, read by that deploy alone: create it once the deploy
    holds its fleet lock (that discards stale controls, kept in ``stale``). ``since``: controls
    for ``deploy_id`` sent before are for an earlier run of it (before a resume) and discarded;
    default: when this process took the deploy's fleet lock. Use: ``inbox.wait(5.0)``,
    ``inbox.take_bad()``."""

    def __init__(self, state_dir: Path, deploy_id: str, *, since: float | None = None,
                 interval: float = 0.1) -> None:
        self.dir = Path(state_dir) / "controls"
        self.deploy_id, self.interval = deploy_id, interval
        running = running_deploys(Path(state_dir))
        me = running.get(deploy_id)
        if since is None and me and (me.pid, me.host) == (os.getpid(), socket.gethostname()):
            since = me.started
        self.since = since
        self.stale: list[Control] = []  # discarded, for the deploy to journal if it wishes
        self._bad: list[BadControl] = []
        self._seen: set[str] = set()  # files handled, also when they could not be moved
        for path in self._pending():
            item = _load(path)
            if isinstance(item, Control) and item.deploy_id != deploy_id \
                    and item.deploy_id not in running:
                self._retire(path, item, ".stale")

    def poll(self) -> list[Control]:
        """The controls for this deploy that arrived since the last call, in id order, each
        once; they are moved to ``done/``. Malformed files go to :meth:`take_bad`."""
        got = []
        for path in self._pending():
            item = _load(path)
            if item is None:
                continue  # taken meanwhile (another reader: it is theirs)
            if isinstance(item, str):
                if where := self._move(path, path.with_suffix(".bad")):
                    self._bad.append(BadControl(path.stem, where, item))
            elif item.deploy_id != self.deploy_id:
                continue  # another running deploy's: left for it
            elif self.since is not None and item.sent_at < self.since:
                self._retire(path, item, ".stale")
            elif self._retire(path, item, ".json"):
                got.append(item)
        return got

    def wait(self, timeout: float) -> list[Control]:
        """Like :meth:`poll`, but blocks up to ``timeout`` seconds for a control to arrive."""
        deadline = time.monotonic() + max(timeout, 0.0)
        while not (got := self.poll()) and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(self.interval, left))
        return got

    def take_bad(self) -> list[BadControl]:
        """The malformed control files set aside since the last call (each once)."""
        bad, self._bad = self._bad, []
        return bad

    def _pending(self) -> list[Path]:
        names = sorted(os.listdir(self.dir)) if self.dir.is_dir() else []
        return [self.dir / n for n in names if n.endswith(".json") and not n.startswith(".")
                and n.removesuffix(".json") not in self._seen]

    def _move(self, path: Path, target: Path) -> Path | None:
        """Rename (atomic: one reader wins): where ``path`` is now; None if another took it."""
        self._seen.add(path.stem)
        try:
            target.parent.mkdir(exist_ok=True)
            os.rename(path, target)
        except FileNotFoundError:
            return None
        except OSError:
            return path  # cannot move it (permissions): still handled once, by this Inbox
        return target

    def _retire(self, path: Path, control: Control, suffix: str) -> bool:
        moved = self._move(path, self.dir / "done" / f"{control.id}{suffix}") is not None
        if moved and suffix == ".stale":
            self.stale.append(control)
        return moved


def _load(path: Path) -> Control | str | None:
    """The control in ``path``; a string saying what is wrong with it; None if it is gone."""
    try:
        control = Control.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # JSON, UTF-8 and field errors are ValueErrors
        return f"unreadable: {exc.strerror or exc}" if isinstance(exc, OSError) else \
            f"malformed: {exc}"
    if control.id != path.stem:
        return f"malformed: its id {control.id} is not its file name"
    return control
