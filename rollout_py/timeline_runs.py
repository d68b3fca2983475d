"""The job events of a deploy's upgrade runs, per batch, from ansible-runner's artifacts under
its record's ``runs/``: a run of its own per batch (``NNN-batchN-upgrade``), or one playbook
session for all batches (``NNN-batches-upgrade``, rollout_py.playbook_session), cut at its gates.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rollout_py.playbook_session import DONE_TASK, GATE_TASK

_UPGRADE_RUN = re.compile(r"^\d+-batch(\d+)-upgrade$")
_SESSION_RUN = re.compile(r"^\d+-batches-upgrade$")
_SESSION_GATE = re.compile("^" + re.escape(GATE_TASK).replace(re.escape("{}"), r"(\d+)") + "$")
_SESSION_DONE = re.compile("^" + re.escape(DONE_TASK).replace(re.escape("{}"), r"(\d+)") + "$")


def load_runs(runs_dir: Path) -> dict[int, list[list[dict[str, Any]]]]:
    """The job events of every batch's upgrade run under a deploy record's ``runs/``
    (``NNN-batchN-upgrade/artifacts/<ident>/job_events/*.json``), each run in counter order.
    Unreadable event files are skipped."""
    found: dict[int, list[list[dict[str, Any]]]] = {}
    if not runs_dir.is_dir():
        return found
    for run_dir in sorted(runs_dir.iterdir()):
        match = _UPGRADE_RUN.match(run_dir.name)
        session = _SESSION_RUN.match(run_dir.name) is not None
        if match is None and not session:
            continue
        for events_dir in sorted(run_dir.glob("artifacts/*/job_events")):
            run: list[dict[str, Any]] = []
            for path in events_dir.glob("*.json"):
                try:
                    data = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if isinstance(data, dict):
                    run.append(data)
            run.sort(key=lambda j: int(j.get("counter") or 0))
            parts = _session_batches(run) if session else \
                ({int(match.group(1)): run} if match and run else {})
            for batch, events in parts.items():
                found.setdefault(batch, []).append(events)
    return found


def _session_batches(run: Sequence[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """A playbook session's events (rollout_py.playbook_session) cut into its batches: from
    the gate that let batch N through to the report that it is done, its own plays only."""
    parts: dict[int, list[dict[str, Any]]] = {}
    opened: int | None = None  # the batch its gate let through, until its report
    for job in run:
        data = job.get("event_data") or {}
        task = str(data.get("task") or "")
        gate = _SESSION_GATE.match(task)
        if job.get("event") == "runner_on_ok" and gate and (data.get("res") or {}).get("go"):
            opened = int(gate.group(1))
            parts[opened] = []
        elif _SESSION_DONE.match(task):
            opened = None
        elif opened is not None and not str(data.get("play") or "").startswith("rollout: "):
            parts[opened].append(job)
    return {n: events for n, events in parts.items() if events}


