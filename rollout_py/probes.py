"""Health probes, run in-process and in parallel: http, tcp, command (on the host), haproxy.

A host is healthy after ``consecutive`` passes of all its probes in a row before ``deadline``;
any failure resets the count.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rollout_py.http_get import http_get
from rollout_py.spec import CommandProbe, HAProxyProbe, HttpProbe, Probe, TcpProbe


@dataclass(frozen=True, slots=True)
class Check:
    """One probe bound to one host: templates rendered, ready to run."""

    kind: str  # http | tcp | command | haproxy
    target: str  # URL, host:port, command, or server name
    spec: Probe

    def describe(self) -> str:
        return f"{self.kind} {self.target}"


def _json_path(data: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(data, list) and part.isdigit():
            data = data[int(part)]
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            raise KeyError(path)
    return data


class Prober:
    """Runs checks. ``command`` probes go through the executor; ``haproxy`` through ``up``."""

    def __init__(self, run_command: Callable[[str, str, float], tuple[bool, str]],
                 haproxy_up: Callable[[str], str | None]) -> None:
        self._run_command = run_command
        self._haproxy_up = haproxy_up

    def run(self, host: str, check: Check) -> str | None:
        """None if the check passes, else a short reason."""
        spec = check.spec
        try:
            if isinstance(spec, HttpProbe):
                return self._http(check.target, spec)
            if isinstance(spec, TcpProbe):
                addr, _, port = check.target.rpartition(":")
                with socket.create_connection((addr.strip("[]"), int(port)), timeout=spec.timeout):
                    return None
            if isinstance(spec, CommandProbe):
                ok, detail = self._run_command(host, check.target, spec.timeout)
                return None if ok else detail or "command failed"
            if isinstance(spec, HAProxyProbe):
                return self._haproxy_up(check.target)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            return f"{type(exc).__name__}: {exc}"
        return f"unknown probe {check.kind}"

    def _http(self, url: str, spec: HttpProbe) -> str | None:
        status, text = http_get(url, spec.timeout)
        if status != spec.status:
            return f"status {status}, expected {spec.status}"
        if spec.body is not None and spec.body not in text:
            return f"body does not contain {spec.body!r}: {text[:80]!r}"
        if spec.match is not None and not re.search(spec.match, text):
            return f"body does not match /{spec.match}/: {text[:80]!r}"
        if spec.json_ is not None:
            data = json.loads(text)
            for path, want in spec.json_.items():
                try:
                    got = _json_path(data, path)
                except (KeyError, IndexError):
                    return f"JSON has no {path}"
                if got != want and str(got) != str(want):
                    return f"JSON {path} is {got!r}, expected {want!r}"
        return None


Outcome = Callable[[str, str | None, str], None]  # host, failure (None = passed), check


def wait_healthy(prober: Prober, checks: Mapping[str, Sequence[Check]], *, deadline: float,
                 interval: float, consecutive: int, on_result: Outcome,
                 stop: Callable[[], bool] = lambda: False) -> dict[str, str | None]:
    """Probes every host in parallel until each passes ``consecutive`` rounds in a row.

    Returns host -> None (healthy) or the last failure. ``on_result`` is told of the outcome per
    host once (passed, or the failure that ended it).
    """
    def one(host: str) -> str | None:
        end = time.monotonic() + deadline
        streak, last = 0, "no probe ran"
        while True:
            failure = None
            for check in checks[host]:
                failure = prober.run(host, check)
                if failure:
                    last = f"{check.describe()}: {failure}"
                    break
            streak = 0 if failure else streak + 1
            if streak >= consecutive:
                on_result(host, None, "")
                return None
            if time.monotonic() + interval > end or stop():
                reason = last if not stop() else f"interrupted ({last})"
                on_result(host, reason, "")
                return reason
            time.sleep(interval)

    return _parallel(one, list(checks))


def soak(prober: Prober, checks: Mapping[str, Sequence[Check]], *, duration: float,
         interval: float, on_result: Outcome,
         stop: Callable[[], bool] = lambda: False) -> dict[str, str | None]:
    """Keeps probing for ``duration`` seconds; the first failure of a host fails it."""
    def one(host: str) -> str | None:
        end = time.monotonic() + duration
        while True:
            for check in checks[host]:
                failure = prober.run(host, check)
                if failure:
                    reason = f"{check.describe()}: {failure}"
                    on_result(host, reason, "")
                    return reason
            if time.monotonic() + interval > end or stop():
                on_result(host, None, "")
                return None
            time.sleep(interval)

    return _parallel(one, list(checks))


def _parallel(fn: Callable[[str], str | None], hosts: list[str]) -> dict[str, str | None]:
    if not hosts:
        return {}
    with ThreadPoolExecutor(max_workers=min(64, len(hosts)),
                            thread_name_prefix="probe") as pool:
        return dict(zip(hosts, pool.map(fn, hosts), strict=True))
