"""A flag change's record and what a dead controller left: ``<state_dir>/flags/<change_id>/``
(``meta.json``, ``journal.jsonl``), listed in order; an unfinished change is finished by the
next flag command (or deploy release) under the fleet's locks: a ramp is reverted, a set or
kill is completed, or superseded by a kill.

Example:
    >>> [p.name for p, _events in unfinished(StateDir(Path(".rollout")))]  # doctest: +SKIP
    ['20261202T101500Z-1a2b']
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rollout_py.atomic import write_atomic
from rollout_py.events import Event
from rollout_py.events import flags as fev
from rollout_py.flag_change import FlagChange, FlagResult
from rollout_py.flag_hosts import FlagHosts
from rollout_py.flags.model import FlagFile
from rollout_py.state import Journal, StateDir, read_journal, records_in_order

Sink = Callable[[Event], None]


def static_variant(ff: FlagFile, name: str) -> str | None:
    """The variant every subject gets when the flag has no targeting (else None)."""
    flag = ff.flag(name)
    return flag.default_variant if not flag.targeting else None


def parse_text(text: str) -> FlagFile:
    from rollout_py.flags.jsonpos import load_json
    from rollout_py.flags.model import parse_flags

    return parse_flags(load_json(text, source="<edit>").data, source="<edit>")


def flags_dir(state: StateDir) -> Path:
    return state.root / "flags"


def create_record(state: StateDir, change_id: str, meta: dict[str, Any]) -> Path:
    path = flags_dir(state) / change_id
    path.mkdir(parents=True, exist_ok=False)
    base = {"change_id": change_id, "user": getpass.getuser(), "host": socket.gethostname(),
            "pid": os.getpid(), "created": time.time()}
    write_atomic(path / "meta.json", json.dumps(base | meta, indent=2) + "\n")
    return path


def records(state: StateDir) -> list[Path]:
    """Every flag change's record, oldest first (``state.records_in_order``)."""
    return records_in_order(flags_dir(state))


def unfinished(state: StateDir) -> list[tuple[Path, list[Event]]]:
    out = []
    for path in records(state):
        events = read_journal(path / "journal.jsonl") if (path / "journal.jsonl").exists() \
            else []
        if events and not isinstance(events[-1], fev.FlagChangeFinished):
            out.append((path, events))
    return out


def recover(path: Path, events: list[Event], hosts: FlagHosts, controller: Path,
             sinks: Sequence[Sink], sleep: Callable[[float], None]) -> FlagResult:
    """An earlier change whose controller stopped: a ramp is reverted to its ``before``; a
    set or kill is completed (its content pushed again), both journaled in its journal."""
    started = next(e for e in events if isinstance(e, fev.FlagChangeStarted))
    journal = Journal(path / "journal.jsonl")
    change = FlagChange(path.name, command=started.command, flag=started.flag, hosts=hosts,
                        controller=controller, before=started.before,
                        sinks=[journal, *sinks], sleep=sleep)
    change.seq = events[-1].seq
    try:
        back = static_variant(parse_text(started.before), started.flag)
        pushes = [e for e in events if isinstance(e, fev.FlagPushStarted) and e.step == 0]
        if started.command == "ramp" or not pushes:
            return change.revert(f"recovered: the controller stopped during this "
                                 f"{started.command}; reverted", before_variant=back)
        content = pushes[-1].content
        left = change.push(content, step=0, variant=started.target)
        change.commit(content)
        if left:
            return change.finish("failed", "recovered, but not on every host", left)
        return change.finish("ok", f"recovered: the {started.command} was completed")
    finally:
        journal.close()


def supersede(path: Path, events: list[Event], hosts: FlagHosts, controller: Path,
               sinks: Sequence[Sink], by: str) -> None:
    """An unfinished change closed without a push of its own, because a kill comes next: the
    kill writes the controller's copy (which never held the unfinished change) with the flag
    killed on every host, which undoes it."""
    started = next(e for e in events if isinstance(e, fev.FlagChangeStarted))
    journal = Journal(path / "journal.jsonl")
    change = FlagChange(path.name, command=started.command, flag=started.flag, hosts=hosts,
                        controller=controller, before=started.before, sinks=[journal, *sinks])
    change.seq = events[-1].seq
    cause = (f"recovered: the controller stopped during this {started.command}; superseded "
             f"by kill {by}, whose file (the controller's copy, flag killed) replaces it")
    try:
        change.emit(fev.FlagRevertStarted, cause=cause)
        change.finish("reverted", cause)
    finally:
        journal.close()
