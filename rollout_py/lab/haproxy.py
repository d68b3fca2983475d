"""The lab's HAProxy load balancers: configuration and processes."""

from __future__ import annotations

import contextlib
import shutil
import socket
import time
from pathlib import Path

from rollout_py.errors import LabError
from rollout_py.lab import pools, shaping
from rollout_py.lab.layout import APP_PORT, Layout, LbSpec
from rollout_py.lab.procs import Proc, run, spawn

BACKEND = "app"
METRICS_FRONTEND = "metrics"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all held open while they are chosen)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                 for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def render(layout: Layout, lb: LbSpec) -> str:
    """One LB's config: frontend on 127.0.0.1, backend ``app`` with one server per host,
    health checks sourced from the bridge address (so they fail locally without the lab), and
    HAProxy's Prometheus exporter on its own loopback port (``/metrics``). With pools, a
    backend per pool, chosen through the LB's map (``rollout_py.lab.pools``)."""
    address = {h.name: h.address for h in layout.app_hosts}
    backends = "".join(
        _backend(layout, lb, name, [f"    server {h} {address[h]}:{APP_PORT}" for h in names])
        for name, names in pools.backend_hosts(layout, BACKEND).items())
    metrics = "" if lb.metrics_port is None else f"""
frontend {METRICS_FRONTEND}
    bind 127.0.0.1:{lb.metrics_port}
    no log
    http-request use-service prometheus-exporter if {{ path /metrics }}
    http-request return status 404 content-type text/plain string "try /metrics"
"""
    return f"""# rollout lab: {lb.name}
global
    stats socket {lb.socket_path} mode 600 level admin expose-fd listeners
    stats timeout 30s
    maxconn 4096
    log stderr format short local0 notice

defaults
    mode http
    log global
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 10s
    timeout queue 10s
    # One request per server connection: a restarted app never meets a stale pooled one.
    option http-server-close

frontend web
    bind 127.0.0.1:{lb.port}
{shaping.frontend_rules(layout, BACKEND)}{pools.web_routing(layout, lb, BACKEND)}
{pools.preview_frontend(layout, lb)}{metrics}{backends}"""


def _backend(layout: Layout, lb: LbSpec, name: str, servers: list[str]) -> str:
    lines = "\n".join(servers)
    return f"""
backend {name}
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    source {layout.gateway}
    default-server check inter 500ms fastinter 250ms downinter 500ms fall 2 rise 2
{shaping.backend_lines(layout)}    http-response set-header X-LB-Server %[srv_name]
    http-response set-header X-LB {lb.name}
{lines}
"""


def start(layout: Layout, lb: LbSpec, *, host_sshd: Proc | None) -> Proc:
    """Starts HAProxy (master-worker, foreground) for one LB.

    A remote LB keeps the root network namespace (its frontend is on 127.0.0.1 like the first
    LB's) but lives in its host's mount and UTS namespaces, so its admin socket exists only in
    that host's /run and is reached over SSH, as on a real LB host.
    """
    lb_dir = layout.path / lb.name
    lb_dir.mkdir(parents=True, exist_ok=True)
    cfg = lb_dir / "haproxy.cfg"
    cfg.write_text(render(layout, lb))
    prefix: list[str] = []
    if host_sshd is None:
        Path(lb.socket_path).parent.mkdir(parents=True, exist_ok=True)
    else:
        # socket_path is /run/... inside the LB host, whose /run is this directory.
        host_run = layout.host_dir(str(lb.host)) / "run"
        (host_run / Path(lb.socket_path).parent.relative_to("/run")).mkdir(
            parents=True, exist_ok=True)
        prefix = ["nsenter", "-t", str(host_sshd.pid), "-m", "-u", "--"]
    if pools.enabled(layout):
        pools.write_map_file(layout, lb, pools.initial_entries(layout))
    if shaping.enabled(layout):
        shaping.write_map_file(layout, lb)
    cfg_arg = str(cfg)
    if host_sshd is not None:
        # The LB host sees its own /run, not the lab dir (which may sit under /tmp or /root).
        shutil.copyfile(cfg, host_run / "haproxy" / "haproxy.cfg")
        cfg_arg = "/run/haproxy/haproxy.cfg"
    run([*prefix, "haproxy", "-c", "-q", "-f", cfg_arg])  # where it runs: files it names exist
    child = spawn([*prefix, "haproxy", "-W", "-db", "-f", cfg_arg],
                  str(layout.logs / f"haproxy-{lb.name}.log"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise LabError(f"haproxy {lb.name} exited ({child.returncode}); see "
                           f"{layout.logs / f'haproxy-{lb.name}.log'}")
        proc = Proc.of(child.pid)
        if proc.comm().startswith("haproxy") and _listening(lb.port):
            return proc
        time.sleep(0.02)
    raise LabError(f"haproxy {lb.name} did not listen on 127.0.0.1:{lb.port} within 10 s")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
