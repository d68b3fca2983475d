"""Writes a deploy's result as a Prometheus textfile (node_exporter's textfile collector format)."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path

from rollout_py.result import EXIT_CODES, DeployResult

STATUSES = tuple(EXIT_CODES)  # succeeded, rolled_back, failed, stopped, cancelled
OUTCOMES = ("upgraded", "rolled_back", "untouched", "skipped", "stranded", "failed")
_ROLLED_BACK_BATCHES = ("rolled_back", "rollback_failed")


def escape_label(value: str) -> str:
    r"""Escapes a label value for the text exposition format.

    Example:
        >>> escape_label('a"b\\c\nd')
        'a\\"b\\\\c\\nd'
    """
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer() and abs(v) < 2**53:
        return str(int(v))
    return repr(float(v))


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items()) + "}"


def render(result: DeployResult, *, started: float, finished: float) -> str:
    """The textfile's content for ``result``; ``started``/``finished`` are unix seconds."""
    name = result.name
    hosts = {o: 0 for o in OUTCOMES}
    for host in result.hosts.values():
        if host.outcome in hosts:
            hosts[host.outcome] += 1
    rollbacks = sum(1 for b in result.batches if b.outcome in _ROLLED_BACK_BATCHES)
    families: list[tuple[str, str, list[tuple[dict[str, str], float]]]] = [
        ("rollout_last_deploy_timestamp_seconds",
         "Unix time at which the last deploy finished.", [({}, finished)]),
        ("rollout_last_deploy_status",
         "Status of the last deploy: 1 for its status, 0 for the others.",
         [({"status": s}, 1 if result.status == s else 0) for s in STATUSES]),
        ("rollout_last_deploy_exit_code",
         "Exit code of the last deploy (0 succeeded, 1 rolled back, 3 failed, 5 stopped, "
         "130 cancelled).",
         [({}, result.exit_code)]),
        ("rollout_last_deploy_duration_seconds",
         "Wall-clock duration of the last deploy in seconds.", [({}, finished - started)]),
        ("rollout_last_deploy_hosts",
         "Hosts of the last deploy by outcome.",
         [({"outcome": o}, n) for o, n in hosts.items()]),
        ("rollout_last_deploy_rollbacks",
         "Batches rolled back (fully or not) in the last deploy.", [({}, rollbacks)]),
    ]
    lines: list[str] = []
    for metric, help_text, samples in families:
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
        lines += [f"{metric}{_labels(name=name, **extra)} {_value(v)}" for extra, v in samples]
    return "\n".join(lines) + "\n"


def write_metrics(path: Path, result: DeployResult, *, started: float, finished: float) -> None:
    """Writes ``result`` to ``path`` atomically (a temporary file beside it, then a rename).

    The file is mode 0644 so that node_exporter can read it. The temporary file's name does
    not end in ``.prom``, so the collector never reads a half-written file.

    Example:
        >>> write_metrics(Path("/var/lib/node_exporter/textfile/rollout_web.prom"), result,
        ...               started=t0, finished=time.time())  # doctest: +SKIP
    """
    path = Path(path)
    text = render(result, started=started, finished=finished)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
