"""What rollout_py reads from ansible-runner's job events, and which of them it keeps on disk:
a failure's message on one line, set_stats data, the previous versions an upgrade reported.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def previous_versions_from_artifacts(runs: Path) -> dict[str, str | None]:
    """``rollout_previous_version`` values reported by set_stats in earlier runs' artifacts
    (used by resume when the controller died before it could record them)."""
    found: dict[str, str | None] = {}
    for event_file in sorted(runs.glob("*-upgrade/artifacts/*/job_events/*.json")):
        try:
            data = json.loads(event_file.read_text())
        except (OSError, ValueError):
            continue
        if data.get("event") != "runner_on_ok":
            continue
        stats = ((data.get("event_data") or {}).get("res") or {}).get("ansible_stats") or {}
        value = (stats.get("data") or {}).get("rollout_previous_version")
        if isinstance(value, dict):
            for host, version in value.items():  # the first report: before this deploy
                found.setdefault(str(host), None if version is None else str(version))
    return found


# What a line that says what went wrong looks like (ssh's "Host key verification failed.",
# "Permission denied (publickey).", "Connection refused", ...).
_VERDICT = re.compile(r"failed|denied|refused|timed out|unreachable|no route|not known|"
                      r"could not|cannot|error", re.IGNORECASE)


def failure_message(kind: str, data: Mapping[str, Any]) -> str | None:
    """What a failed or unreachable job event says, on one line (None for other events and
    for failures Ansible was told to ignore)."""
    if kind not in ("runner_on_failed", "runner_on_unreachable") or not data.get("host"):
        return None
    if kind == "runner_on_failed" and data.get("ignore_errors"):
        return None
    res = data.get("res") or {}
    prefix = "unreachable" if kind == "runner_on_unreachable" else "failed"
    msg = res.get("msg") or res.get("stderr") or res.get("reason") or "no message"
    if msg == "non-zero return code":  # command/shell: say what the command said
        msg = f"rc {res.get('rc')}: {res.get('stderr') or res.get('stdout') or msg}"
    return f"{prefix}: {data.get('task', '')}: {one_line(msg)}"


def merge_stats(into: dict[str, Any], stats: Any) -> None:
    """Adds the per-host dicts of a set_stats result (``{"data": {key: {host: value}}}``)."""
    for key, value in ((stats or {}).get("data") or {}).items():
        if isinstance(value, dict):
            into.setdefault(key, {}).update(value)


def one_line(msg: Any, limit: int = 300) -> str:
    """The message on one line, cut to about ``limit`` characters. ssh prints what failed last,
    after banners (a changed host key's warning alone is longer than 300 characters), so a cut
    message keeps its last line naming a failure (or its last line) at the end."""
    raw = str(msg)
    text = " ".join(raw.split())
    if len(text) <= limit:
        return text
    lines = [" ".join(line.split()) for line in raw.splitlines()]
    lines = [line for line in lines if line.strip("@ ")]  # not blank, not a banner of @
    if len(lines) < 2:
        return text[:limit] + "..."
    verdict = next((line for line in reversed(lines) if _VERDICT.search(line)), lines[-1])
    verdict = verdict[:limit // 2]
    head = text[:max(0, limit - len(verdict))]
    if verdict in head:
        return head + "..."
    return f"{head} ... {verdict}"


# playbook_on_stats' counts, as ansible-runner's ``Runner.stats`` gives them.
STATS_KEYS = ("skipped", "ok", "dark", "failures", "ignored", "rescued", "processed", "changed")
# One per host and task, before its result (which has its ``start`` too): nothing reads them.
_UNREAD_EVENTS = frozenset({"runner_on_start"})


def keep_event(kind: str, data: Mapping[str, Any], keep_results: bool) -> bool:
    """Whether a job event is written to ``artifacts/<ident>/job_events`` (by
    :func:`writing_events`): every JSON file written costs the controller an open, an encode
    and a rename (the event's partial file is read and removed either way).

    Kept: the play and task events, failures and unreachables, warnings, the stats, and a
    set_stats result (``previous_versions_from_artifacts``). Dropped: ``runner_on_start``, and
    outside upgrade runs (``keep_results`` false) ok and skipped results, which
    rollout_py.timeline reads of upgrade runs only; the ``stdout`` artifact still has them.
    """
    if kind in _UNREAD_EVENTS:
        return False
    if keep_results or kind not in ("runner_on_ok", "runner_on_skipped"):
        return True
    return bool((data.get("res") or {}).get("ansible_stats"))


Handler = Callable[[dict[str, Any]], bool]


def writing_events(handler: Handler, artifact_dir: Path) -> Handler:
    """``handler`` as ansible-runner's ``event_handler``: an event it keeps is written here to
    ``artifact_dir/job_events/<counter>-<uuid>.json`` (mode 0600, through a rename, as
    ansible-runner writes it) and ansible-runner is told not to write it. ansible-runner's own
    ``json.dump`` runs Python's pure-Python encoder and writes each of ~170 fragments of an
    event through a codec: ~1 ms of controller CPU per event, most of its handling of an
    event; ``json.dumps`` (the C encoder) and one write are a tenth of it."""
    events_dir = artifact_dir / "job_events"

    def on_event(event: dict[str, Any]) -> bool:
        if handler(event) and event.get("uuid") and event.get("counter") is not None:
            path = events_dir / f"{event['counter']}-{event['uuid']}.json"
            temporary = path.with_name(path.name + ".tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with open(fd, "wb") as out:
                out.write(json.dumps(event).encode())
            os.replace(temporary, path)
        return False

    return on_event
