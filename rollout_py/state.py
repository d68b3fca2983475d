"""The state directory: per deploy an append-only journal of events, spec and plan snapshots,
metadata, and ansible-runner's artifacts. The journal is written (and fsync'd) before any other
consumer sees an event; ``status``, ``history`` and ``resume`` read it back.

Layout::

    <state_dir>/deploys/<deploy_id>/journal.jsonl   one event per line
                                    meta.json       who, where, how it was started
                                    spec.json       the validated spec (secrets redacted)
                                    plan.json       the plan it ran
                                    runs/NNN-step/  ansible-runner private data dirs
    <state_dir>/locks/                              see rollout_py.lock
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import hashlib
import itertools
import json
import os
import socket
import time
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollout_py import events as ev
from rollout_py.atomic import write_atomic
from rollout_py.errors import JournalError, StateError

_KINDS = {cls.kind: cls for cls in ev.ALL_EVENTS}


def digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


class Journal:
    """Appends events durably. A write that fails raises JournalError: the deploy stops."""

    critical = True  # the engine lets this sink's failures stop the deploy

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        except OSError as exc:
            raise JournalError(f"cannot open the journal {path}: {exc.strerror or exc}") from exc

    def __call__(self, event: ev.Event) -> None:
        try:
            self._fh.write(json.dumps(event.to_json()) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise JournalError(f"journal write to {self.path} failed: "
                               f"{exc.strerror or exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()


def decode_event(data: dict[str, Any]) -> ev.Event:
    """An event back from its JSON form (lists become the tuples the dataclass declares)."""
    cls = _KINDS.get(str(data.get("event")))
    if cls is None:
        raise StateError(f"unknown event kind {data.get('event')!r} in a journal")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        kwargs[f.name] = _to_type(data[f.name], hints[f.name])
    return cls(**kwargs)


def _to_type(value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        inner = args[0] if args else Any
        return tuple(_to_type(v, inner) for v in value)
    return value


def read_journal(path: Path) -> list[ev.Event]:
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    events = []
    for n, line in enumerate(lines, 1):
        try:
            events.append(decode_event(json.loads(line)))
        except ValueError as exc:
            if n == len(lines):
                break  # a torn last line: the writer was killed mid-write
            raise StateError(f"{path}:{n}: unreadable journal line: {exc}") from exc
    return events


@dataclass(frozen=True)
class DeployRecord:
    """One deploy's directory in the state dir."""

    path: Path

    @property
    def deploy_id(self) -> str:
        return self.path.name

    @property
    def journal(self) -> Path:
        return self.path / "journal.jsonl"

    @property
    def runs(self) -> Path:
        return self.path / "runs"

    def meta(self) -> dict[str, Any]:
        return dict(json.loads((self.path / "meta.json").read_text()))

    def events(self) -> list[ev.Event]:
        return read_journal(self.journal) if self.journal.exists() else []

    def closed(self, events: list[ev.Event] | None = None) -> bool:
        events = self.events() if events is None else events
        last = events[-1] if events else None
        return isinstance(last, ev.DeployFinished) and not last.resumable

    def snapshot(self, name: str) -> Any:
        return json.loads((self.path / f"{name}.json").read_text())


class StateDir:
    """A state directory (default ``.rollout/`` beside the spec).

    Example:
        >>> state = StateDir(Path(".rollout"))  # doctest: +SKIP
        >>> [d.deploy_id for d in state.deploys()]  # doctest: +SKIP
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def deploys_dir(self) -> Path:
        return self.root / "deploys"

    def create(self, deploy_id: str, *, meta: dict[str, Any], spec: Any,
               plan: Any) -> DeployRecord:
        path = self.deploys_dir / deploy_id
        try:
            path.mkdir(parents=True, exist_ok=False)
            base = {"deploy_id": deploy_id, "user": getpass.getuser(),
                    "host": socket.gethostname(), "pid": os.getpid(), "created": time.time()}
            write_atomic(path / "meta.json", json.dumps(base | meta, indent=2) + "\n")
            write_atomic(path / "spec.json", json.dumps(spec, indent=2, default=str) + "\n")
            write_atomic(path / "plan.json", json.dumps(plan, indent=2, default=str) + "\n")
        except OSError as exc:
            raise JournalError(f"cannot write the state directory {path}: "
                               f"{exc.strerror or exc}") from exc
        return DeployRecord(path)

    def deploys(self) -> list[DeployRecord]:
        """Every deploy, oldest first (see :func:`records_in_order`)."""
        return [DeployRecord(p) for p in records_in_order(self.deploys_dir)]

    def get(self, deploy_id: str | None = None) -> DeployRecord:
        deploys = self.deploys()
        if not deploys:
            raise StateError(f"no deploy recorded in {self.root}")
        if deploy_id is None:
            return deploys[-1]
        for record in deploys:
            if record.deploy_id == deploy_id:
                return record
        raise StateError(f"no deploy {deploy_id!r} in {self.root}")

    def __iter__(self) -> Iterator[DeployRecord]:
        return iter(self.deploys())


def records_in_order(root: Path) -> list[Path]:
    """The records under ``root`` (directories with a ``meta.json``), oldest first: by id,
    which starts with the record's UTC second; records of one same second (a refused
    contract, then a forced one), whose random suffixes would order them at random, by the
    ``created`` time in their meta (read for those only)."""
    if not root.is_dir():
        return []
    found = sorted(p for p in root.iterdir() if (p / "meta.json").exists())
    out: list[Path] = []
    for _second, group in itertools.groupby(found, key=lambda p: p.name.split("-", 1)[0]):
        same = list(group)
        out += sorted(same, key=lambda p: (_created(p), p.name)) if len(same) > 1 else same
    return out


def _created(path: Path) -> float:
    try:
        return float(json.loads((path / "meta.json").read_text()).get("created", 0.0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0
