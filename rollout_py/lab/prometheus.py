"""A Prometheus for one lab (``rollout lab up --prometheus``).

Debian's ``prometheus`` binary, started by the lab and recorded by PID like its other daemons,
listening on 127.0.0.1 only and scraping every LB's HAProxy exporter each second (label
``lb=<name>``). Its config and storage live in ``DIR/prometheus`` and go with ``down``. Its
command line carries a marker naming the lab's bridge, so that a lab whose record is lost
(``up`` killed before it saved the PID, or lab.json deleted) still finds it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from rollout_py.errors import LabError, RolloutError
from rollout_py.lab.layout import Layout
from rollout_py.lab.procs import Proc, spawn

PROC_KEY = "prometheus"
JOB = "haproxy"
INSTALL_HINT = "apt-get install -y prometheus"
SCRAPE_INTERVAL = "1s"
# Lab traffic never goes through a proxy from the environment.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def binary() -> str | None:
    return shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None)


def marker(bridge: str) -> str:
    """The argument that tells this lab's Prometheus apart (the web UI's title)."""
    return f"--web.page-title=rollout lab {bridge}"


def home(lab_dir: Path) -> Path:
    """Config and storage: removed by ``down``."""
    return lab_dir / "prometheus"


def render(layout: Layout) -> str:
    """prometheus.yml: one job, one target per LB exporter, each labelled with its LB."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL,
                   "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [{
            "job_name": JOB,
            "metrics_path": "/metrics",
            "static_configs": [
                {"targets": [f"127.0.0.1:{lb.metrics_port}"], "labels": {"lb": lb.name}}
                for lb in layout.lbs if lb.metrics_port is not None
            ],
        }],
    }
    # JSON is YAML: no YAML writer needed, and nothing in it needs quoting rules.
    return "# Written by `rollout lab up --prometheus`\n" + json.dumps(config, indent=2) + "\n"


def start(layout: Layout) -> Proc:
    """Starts Prometheus on ``layout.prometheus_port`` and records its PID in lab.json at once;
    does not wait (see ``wait_ready``)."""
    exe = binary()
    if exe is None:
        raise LabError(f"prometheus is not installed: `{INSTALL_HINT}`")
    if layout.prometheus_port is None or not layout.lbs or \
            any(lb.metrics_port is None for lb in layout.lbs):
        raise LabError("Prometheus and every LB exporter need their ports before it starts")
    root = home(layout.path)
    shutil.rmtree(root, ignore_errors=True)  # a stale store from a lab killed mid-way
    (root / "data").mkdir(parents=True)
    cfg = root / "prometheus.yml"
    cfg.write_text(render(layout))
    child = spawn([exe, f"--config.file={cfg}", f"--storage.tsdb.path={root / 'data'}",
                   "--storage.tsdb.retention.time=1d",
                   f"--web.listen-address=127.0.0.1:{layout.prometheus_port}",
                   marker(layout.bridge)], str(log_path(layout)))
    try:
        proc = Proc.of(child.pid)
    except RolloutError as exc:
        raise LabError(f"prometheus exited at once; see {log_path(layout)}") from exc
    layout.procs[PROC_KEY] = proc.to_json()
    layout.save()
    return proc


def log_path(layout: Layout) -> Path:
    return layout.logs / "prometheus.log"


def _log_tail(layout: Layout, lines: int = 3) -> str:
    try:
        text = log_path(layout).read_text(errors="replace")
    except OSError:
        return "no log"
    return " | ".join(text.strip().splitlines()[-lines:]) or "empty log"


def get_json(url: str, timeout: float = 2.0) -> Any:
    with _NO_PROXY.open(url, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


def query(base_url: str, promql: str, timeout: float = 2.0) -> list[dict[str, Any]]:
    """An instant query's result vector (``[{"metric": {...}, "value": [ts, "v"]}, ...]``)."""
    url = f"{base_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    body = get_json(url, timeout)
    if body.get("status") != "success":
        raise LabError(f"prometheus query {promql!r} failed: {body}")
    return list(body["data"]["result"])


def targets_up(base_url: str) -> dict[str, float]:
    """Each LB's last scrape: 1.0 if it succeeded, 0.0 if not; LBs not scraped yet are absent."""
    return {str(s["metric"].get("lb")): float(s["value"][1])
            for s in query(base_url, f'up{{job="{JOB}"}}')}


def status(layout: Layout) -> dict[str, Any] | None:
    """The lab's Prometheus: its URL, whether it runs, and its last scrape of each LB."""
    if layout.prometheus_url is None:
        return None
    proc = layout.procs.get(PROC_KEY)
    row: dict[str, Any] = {"url": layout.prometheus_url,
                           "running": bool(proc and Proc.from_json(proc).alive())}
    try:
        row["targets_up"] = targets_up(layout.prometheus_url)
    except (OSError, ValueError, LabError) as exc:
        row["error"] = str(exc)
    return row


def wait_ready(layout: Layout, proc: Proc, deadline: float) -> None:
    """Until ``/-/ready`` answers and a first scrape of every LB's exporter has succeeded."""
    url = layout.prometheus_url
    assert url is not None
    wanted = {lb.name for lb in layout.lbs}
    last = "no answer"
    while True:
        if not proc.alive():
            raise LabError(f"prometheus exited: {_log_tail(layout)} (see {log_path(layout)})")
        try:
            with _NO_PROXY.open(f"{url}/-/ready", timeout=1) as resp:
                ready = resp.status == 200
            up = targets_up(url) if ready else {}
            missing = sorted(name for name in wanted if up.get(name) != 1.0)
            if ready and not missing:
                return
            last = f"not scraped yet: {', '.join(missing)}" if ready else "not ready"
        except (OSError, ValueError, LabError) as exc:  # starting: refused, 503, ...
            last = str(exc)
        if time.monotonic() > deadline:
            raise LabError(f"prometheus at {url} not ready in time ({last}); "
                           f"see {log_path(layout)}")
        time.sleep(0.1)


def orphans(bridge: str) -> list[Proc]:
    """The Prometheus processes of lab ``bridge``, found by the marker in their command line."""
    wanted = marker(bridge).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in argv:
            try:
                found.append(Proc.of(int(entry)))
            except RolloutError:  # exited meanwhile
                continue
    return found
