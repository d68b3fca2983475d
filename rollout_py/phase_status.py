"""What the state directory says about schema-change phases: the version each host last ran by
this fleet's journals, the contract records (``<state_dir>/contracts/<id>/``), and each phase's
state for ``rollout status``."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from rollout_py import events as ev
from rollout_py.errors import StateError
from rollout_py.events.phases import SchemaPhase
from rollout_py.state import DeployRecord, StateDir, read_journal, records_in_order


def contracts_dir(state: StateDir) -> Path:
    return state.root / "contracts"


def create_contract_record(state: StateDir, contract_id: str, meta: dict[str, Any]) -> Path:
    """``<state_dir>/contracts/<id>/meta.json`` (who, where, what); the journal beside it."""
    path = contracts_dir(state) / contract_id
    path.mkdir(parents=True, exist_ok=False)
    base = {"contract_id": contract_id, "user": getpass.getuser(),
            "host": socket.gethostname(), "pid": os.getpid(), "created": time.time()}
    tmp = path / "meta.json.tmp"
    tmp.write_text(json.dumps(base | meta, indent=2) + "\n")
    os.replace(tmp, path / "meta.json")
    return path


def contract_records(state: StateDir) -> list[Path]:
    """Every contract record, oldest first (``state.records_in_order``)."""
    return records_in_order(contracts_dir(state))


def journaled_versions(state: StateDir, fleet: str) -> dict[str, tuple[str | None, str]]:
    """host -> (the version this fleet's journals last say it runs, the deploy saying so).

    Read in order over every deploy of the fleet (``meta.json`` name): a deploy's start
    (``DeployStarted.versions``, read live then), each upgrade (``ok`` hosts run the deploy's
    version; ``versions`` is what they ran before) and each rollback (``ok`` hosts run what
    they ran before the upgrade; a failed rollback leaves that older version counted, as the
    host may run it). None: the journal says the version is not known.
    """
    found: dict[str, tuple[str | None, str]] = {}
    for record in state.deploys():
        with contextlib.suppress(OSError, ValueError, StateError):
            if record.meta().get("name") == fleet:
                _fold(record, found)
    return found


def unmet_phase(state: StateDir, fleet: str, phase: SchemaPhase, requires: str) -> str | None:
    """None when some deploy of this fleet of version ``requires`` or newer journaled
    ``phase`` as done (the contract may follow it); else why not, naming the last such
    deploy.

    Example:
        >>> unmet_phase(StateDir(Path("/nonexistent")), "web", "migrate", "2.0")
        'migrate has not finished in a deploy of 2.0 or newer (none journaled)'
    """
    from rollout_py.phases import phase_state
    from rollout_py.spec_phases import parse_version

    need = parse_version(requires)
    last = "none journaled"
    for record in state.deploys() if state.root.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, StateError):
            if record.meta().get("name") != fleet:
                continue
            events = record.events()
            start = next((e for e in events if isinstance(e, ev.DeployStarted)), None)
            version = parse_version(start.version) if start is not None else None
            if start is None or version is None or need is None or version < need:
                continue
            st = phase_state(events, phase)
            if st == "done":
                return None
            last = f"last: deploy {record.deploy_id} of {start.version}: {phase} {st}"
    return f"{phase} has not finished in a deploy of {requires} or newer ({last})"


def _fold(record: DeployRecord, found: dict[str, tuple[str | None, str]]) -> None:
    did = record.deploy_id
    version = ""
    before: dict[str, str | None] = {}
    for e in record.events():
        if isinstance(e, ev.DeployStarted):
            version = e.version
            for host, v in e.versions.items():
                if v is not None:
                    found[host] = (v, did)
                    before[host] = v
        elif isinstance(e, ev.StepFinished) and e.step == "upgrade":
            for host, v in e.versions.items():
                if v is not None:
                    before[host] = v
            for host, outcome in e.hosts.items():
                if outcome == "ok":
                    found[host] = (version, did)
                elif host in before:  # a failed upgrade: the older version may still run
                    found[host] = (before[host], did)
        elif isinstance(e, ev.StepFinished) and e.step == "rollback":
            for host in e.hosts:
                found[host] = (before.get(host), did)


def contract_state(state: StateDir) -> dict[str, Any] | None:
    """The last contract: status, when, what it required, who blocked it (None: never run)."""
    for path in reversed(contract_records(state)):
        journal = path / "journal.jsonl"
        try:
            events = read_journal(journal) if journal.exists() else []
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError, StateError):
            continue
        end = next((e for e in reversed(events) if isinstance(e, ev.ContractFinished)), None)
        return {"contract_id": path.name, "requires": meta.get("requires"),
                "user": meta.get("user"), "at": end.ts if end else meta.get("created"),
                "status": end.status if end else "running",
                "cause": end.cause if end else None,
                "blocking": list(end.blocking) if end else []}
    return None


def phase_summary(state: StateDir, record: DeployRecord | None, *,
                  running: bool = False) -> dict[str, Any]:
    """``rollout status``'s phases: expand, release and migrate of the last deploy (done | failed |
    running | interrupted | not run; interrupted: started, no end journaled, and the deploy
    is not running: a resume runs it again), and the last contract (``contract_state``)."""
    from rollout_py.phases import phase_state

    events: list[ev.Event] = []
    if record is not None:
        with contextlib.suppress(OSError, ValueError, StateError):
            events = record.events()
    out: dict[str, Any] = {"deploy_id": record.deploy_id if record else None}
    names: tuple[SchemaPhase, ...] = ("expand", "release", "migrate")
    for name in names:
        st = phase_state(events, name)
        out[name] = "interrupted" if st == "running" and not running else st
    out["contract"] = contract_state(state)
    return out
