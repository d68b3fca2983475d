"""The lab's traffic shaping (``rollout lab up --shaping``): priority classes and a shed map.

Every server takes ``MAXCONN`` requests at a time; more wait in HAProxy's queue (at most
``QUEUE_TIMEOUT``), and the queue serves lower priority classes first: the ``X-Client-Class``
header's ``production`` before unclassified requests, ``background`` and ``heavy`` after.
The frontend denies (503, ``X-Shed: deploy``) a class whose entry in the map ``shaping.map`` is
``shed`` while the backend has fewer usable servers than it was built with (a batch is out of
rotation); rollout_py sets ``heavy shed`` for the length of a deploy (``haproxy.shaping``).
The map file stays empty: the entry lives in HAProxy's memory only, so a reload clears it.
"""

from __future__ import annotations

import os
from pathlib import Path

from rollout_py.balancer.maps import render_map_file
from rollout_py.lab.layout import Layout, LbSpec

MAP_NAME = "shaping.map"
CLASS_HEADER = "X-Client-Class"
PRIORITY = {"production": -10, "background": 10, "heavy": 20}  # lower is served first
SHED = {"heavy": "shed"}  # what the lab's spec sets while a deploy runs
MAXCONN = 4  # requests a server takes at a time; /slow?seconds=0.1 makes that 40/s
QUEUE_TIMEOUT = "3s"


def enabled(layout: Layout) -> bool:
    return bool(getattr(layout, "shaping", False))


def map_path(layout: Layout) -> str:
    """The map's path as every LB's HAProxy sees it: the lab's run dir exists at the same
    path in the root namespace (the first LB) and in a remote LB host's own /run."""
    return str(layout.run_dir / MAP_NAME)


def write_map_file(layout: Layout, lb: LbSpec) -> Path:
    """Writes the LB's (empty) map file, which HAProxy needs to exist when it starts."""
    path = Path(map_path(layout))
    if lb.host is not None:
        path = layout.host_dir(lb.host) / "run" / path.relative_to("/run")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_map_file({}))
    os.replace(tmp, path)
    return path


def frontend_rules(layout: Layout, backend: str) -> str:
    """The ``web`` frontend's shaping lines (empty without ``--shaping``)."""
    if not enabled(layout):
        return ""
    header = CLASS_HEADER.lower()
    classes = "".join(
        f"    http-request set-priority-class int({prio}) if {{ req.hdr({header}) -m str "
        f"{name} }}\n" for name, prio in PRIORITY.items())
    return (
        f"    # Shaping: shed a class the map says 'shed' while servers are missing\n"
        f"    acl shed_class req.hdr({header}),map({map_path(layout)}) -m str shed\n"
        f"    acl capacity_dropped nbsrv({backend}) lt {layout.n_hosts}\n"
        f"    http-request deny deny_status 503 content-type text/plain "
        f"string \"shed during a deploy\" hdr X-Shed deploy if shed_class capacity_dropped\n"
        f"{classes}")


def backend_lines(layout: Layout) -> str:
    """The backend's queueing lines (empty without ``--shaping``)."""
    if not enabled(layout):
        return ""
    return f"    timeout queue {QUEUE_TIMEOUT}\n    default-server maxconn {MAXCONN}\n"


def spec_section(layout: Layout) -> str:
    """rollout.yml's ``haproxy.shaping`` (under ``haproxy:``), empty without ``--shaping``."""
    if not enabled(layout):
        return ""
    entries = ", ".join(f"{k}: {v}" for k, v in SHED.items())
    return f"  shaping:\n    map: {map_path(layout)}\n    entries: {{{entries}}}\n"
