"""Controller CPU per probe GET: rollout_py.http_get (libcurl) beside Python's http.client.

Run:  .venv/bin/python benchmarks/http_get.py [--gets 2000] [--rounds 3]

HAProxy answers on a loopback port in a child process (its CPU is not counted); this sends
GETs of a short body, one new connection each with ``Connection: close``, as the probes do:
one thread after another, then 32 threads at once (the batch probes run a thread per host).
Rounds alternate the clients; the table prints the median CPU per GET of this process (all its
threads) and the wall time per GET, with min-max.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from rollout_py.http_get import http_get

HAPROXY = """global
    maxconn 4000
defaults
    mode http
    timeout client 5s
    timeout connect 5s
    timeout server 5s
frontend probe_target
    bind 127.0.0.1:{port}
    http-request return status 200 content-type "text/plain; charset=utf-8" string "v2.1"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def target() -> Iterator[str]:
    """HAProxy answering every GET itself on a loopback port: a server in C, so the client's
    cost is what the table shows (a Python server would set the pace)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="rollout-bench-") as tmp:
        cfg = Path(tmp) / "haproxy.cfg"
        cfg.write_text(HAPROXY.format(port=port))
        server = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)])
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("haproxy did not start") from None
                    time.sleep(0.05)
            yield f"http://127.0.0.1:{port}/version"
        finally:
            server.terminate()
            server.wait()


def stdlib_get(url: str, timeout: float) -> tuple[int, str]:
    """The probes' GET before libcurl: one http.client connection per call."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/", headers={"Connection": "close"})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    return resp.status, data.decode(resp.headers.get_content_charset() or "utf-8")


def measure(get: Callable[[str, float], tuple[int, str]], url: str, gets: int,
            threads: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per GET."""
    def one(_: int) -> None:
        status, text = get(url, 5)
        assert status == 200 and text == "v2.1", (status, text)

    for i in range(50):
        one(i)
    cpu, wall = time.process_time(), time.monotonic()
    if threads == 1:
        for i in range(gets):
            one(i)
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(one, range(gets)))
    return (1e3 * (time.process_time() - cpu) / gets, 1e3 * (time.monotonic() - wall) / gets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gets", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with target() as url:
        clients = {"http.client": stdlib_get, "rollout_py.http_get (libcurl)": http_get}
        runs: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):
            for threads in (1, 32):
                for name, get in clients.items():
                    runs.setdefault((name, threads), []).append(
                        measure(get, url, args.gets, threads))

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"

    print(f"{args.gets} GETs a round, {args.rounds} rounds; medians (min-max)\n")
    print("| client | threads | ctl CPU ms / GET | wall ms / GET |")
    print("|---|---:|---:|---:|")
    for (name, threads), values in runs.items():
        print(f"| {name} | {threads} | {spread([c for c, _ in values])} "
              f"| {spread([w for _, w in values])} |")


if __name__ == "__main__":
    main()
