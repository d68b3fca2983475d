"""The lab's two pools (``rollout lab up --pools 2``): blue/green routing on every LB.

Each LB has a backend per pool (``app_blue``, ``app_green``) and a map file (``pools.map``)
that names which backend serves which frontend: key ``live`` for frontend ``web``, key
``preview`` for frontend ``preview`` (its own loopback port, so checks can reach the idle pool
through the LB). ``set map`` switches at runtime; the file must be written too, or a reload
switches back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rollout_py.atomic import write_atomic
from rollout_py.balancer import RuntimeAPI
from rollout_py.balancer.maps import render_map_file, show_map
from rollout_py.lab.layout import Layout, LbSpec

MAP_NAME = "pools.map"
LIVE_KEY = "live"
PREVIEW_KEY = "preview"
PREVIEW_FRONTEND = "preview"
REMOTE_MAP = f"/run/haproxy/{MAP_NAME}"  # on a remote LB host, next to its admin socket


def enabled(layout: Layout) -> bool:
    return bool(layout.pools)


def backends(layout: Layout, default: str) -> list[str]:
    """The backends an LB has: one per pool, or ``default`` alone without pools."""
    return [p.backend for p in layout.pools] or [default]


def map_path_for(layout: Layout, lb_name: str, remote: bool) -> str:
    """Where HAProxy on the LB's host reads the map: the first LB's own directory, or a
    remote LB host's /run."""
    return REMOTE_MAP if remote else str(layout.path / lb_name / MAP_NAME)


def local_map_file(layout: Layout, lb: LbSpec) -> Path:
    """The map file as this (root-namespace) controller reaches it."""
    assert lb.map_path is not None
    if lb.host is None:
        return Path(lb.map_path)
    return layout.host_dir(lb.host) / "run" / Path(lb.map_path).relative_to("/run")


def initial_entries(layout: Layout) -> dict[str, str]:
    """Blue live, green in preview."""
    blue, green = layout.pools
    return {LIVE_KEY: blue.backend, PREVIEW_KEY: green.backend}


def write_map_file(layout: Layout, lb: LbSpec, entries: dict[str, str]) -> Path:
    """Writes the LB's map file atomically (temp + rename); HAProxy reads it on (re)load."""
    path = local_map_file(layout, lb)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, render_map_file(entries))
    return path


def _route(key: str, lb: LbSpec, fallback: str) -> str:
    # A constant key looked up in the map; a missing key yields ``fallback``.
    return f"use_backend %[str({key}),map({lb.map_path},{fallback})]"


def web_routing(layout: Layout, lb: LbSpec, default: str) -> str:
    """The ``web`` frontend's routing line(s)."""
    if not enabled(layout):
        return f"    default_backend {default}"
    return f"    {_route(LIVE_KEY, lb, layout.pools[0].backend)}"


def preview_frontend(layout: Layout, lb: LbSpec) -> str:
    """The ``preview`` frontend (empty without pools)."""
    if not enabled(layout) or lb.preview_port is None:
        return ""
    green = layout.pools[1]
    return f"""
frontend {PREVIEW_FRONTEND}
    bind 127.0.0.1:{lb.preview_port}
    {_route(PREVIEW_KEY, lb, green.backend)}
"""


def backend_hosts(layout: Layout, default: str) -> dict[str, list[str]]:
    """Backend name -> the app hosts it serves."""
    if not enabled(layout):
        return {default: [h.name for h in layout.app_hosts]}
    return {p.backend: list(p.hosts) for p in layout.pools}


def lb_status(layout: Layout, lb: LbSpec, api: RuntimeAPI) -> dict[str, Any]:
    """Which pool the LB's map sends ``live`` and ``preview`` traffic to, right now."""
    if not enabled(layout) or lb.map_path is None:
        return {}
    by_backend = {p.backend: p.name for p in layout.pools}
    entries = show_map(api, lb.map_path)
    return {"map": lb.map_path, "entries": entries,
            "preview_frontend": f"127.0.0.1:{lb.preview_port}",
            "live": by_backend.get(entries.get(LIVE_KEY, ""), entries.get(LIVE_KEY)),
            "preview": by_backend.get(entries.get(PREVIEW_KEY, ""), entries.get(PREVIEW_KEY))}
