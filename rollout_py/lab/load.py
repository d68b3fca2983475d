"""Open-loop HTTP load through a lab LB: requests leave on a fixed schedule, whatever the replies.

Latency is measured from each request's scheduled time, so a stalled backend shows up as latency
instead of silently lowering the rate (no coordinated omission). Each request carries a
targeting key (``X-User: u<seq>``), so a flag's fractional split sees distinct users; the
variant a flag-enabled release served (``X-Flag-new-greeting``) is counted per request.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rollout_py.errors import InputError

FLAG_HEADER = "X-Flag-new-greeting"  # the variant a flag-enabled lab release evaluated
USER_HEADER = "X-User"  # the targeting key sent with each request: u<seq>


@dataclass(frozen=True, slots=True)
class Record:
    """One request's outcome."""

    seq: int
    scheduled: float  # seconds since the run started
    sent_at: float  # wall-clock time (time.time()) when the request was sent
    latency: float  # seconds from scheduled time to the end of the response (or error)
    status: int | None
    error: str | None
    served_by: str | None  # the app's X-Served-By
    lb_server: str | None  # HAProxy's X-LB-Server (the server it chose)
    version: str | None
    variant: str | None = None  # the app's X-Flag-new-greeting, if any

    @property
    def ok(self) -> bool:
        """200, and the app that answered is the server HAProxy says it picked."""
        if self.error is not None or self.status != 200:
            return False
        return self.lb_server is None or self.served_by == self.lb_server


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    rank = max(1, round(pct / 100 * len(sorted_values) + 0.4999))  # nearest-rank
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True)
class Summary:
    """Totals of a load run."""

    url: str
    rps: float
    duration: float
    sent: int
    ok: int
    failed: int
    by_host: dict[str, int]
    by_version: dict[str, int]
    failures: dict[str, int]
    p50_ms: float
    p99_ms: float
    max_ms: float
    by_variant: dict[str, int] = field(default_factory=dict)  # requests per flag variant
    failed_by_variant: dict[str, int] = field(default_factory=dict)
    records: tuple[Record, ...] = field(repr=False, default=())

    @classmethod
    def of(cls, url: str, rps: float, duration: float, records: list[Record]) -> Summary:
        records = sorted(records, key=lambda r: r.seq)
        lat = sorted(r.latency * 1000 for r in records)
        failures: Counter[str] = Counter()
        for rec in records:
            if not rec.ok:
                failures[rec.error or (f"http {rec.status}" if rec.status != 200
                                       else "served_by mismatch")] += 1
        return cls(
            url=url, rps=rps, duration=round(duration, 3), sent=len(records),
            ok=sum(r.ok for r in records), failed=sum(not r.ok for r in records),
            by_host=dict(sorted(Counter(r.served_by for r in records if r.served_by).items())),
            by_version=dict(sorted(Counter(r.version for r in records if r.version).items())),
            failures=dict(failures), p50_ms=round(_percentile(lat, 50), 2),
            p99_ms=round(_percentile(lat, 99), 2), max_ms=round(lat[-1] if lat else 0.0, 2),
            by_variant=dict(sorted(Counter(r.variant for r in records if r.variant).items())),
            failed_by_variant=dict(sorted(Counter(
                r.variant for r in records if r.variant and not r.ok).items())),
            records=tuple(records),
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("records")
        return data

    def write_records(self, path: Path) -> None:
        with path.open("w") as fh:
            for rec in self.records:
                fh.write(json.dumps(asdict(rec) | {"ok": rec.ok}) + "\n")


def check_target(url: str) -> tuple[str, int, str]:
    """Only loopback targets: load never leaves this machine."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise InputError(f"load target {url!r}: expected http://127.0.0.1:PORT/path")
    try:
        addr = ipaddress.ip_address(parts.hostname)
    except ValueError as exc:
        raise InputError(f"load target {url!r}: use a loopback IP address, not a name") from exc
    if not addr.is_loopback:
        raise InputError(f"load target {url!r}: only loopback addresses (127.0.0.0/8, ::1)")
    return parts.hostname, parts.port or 80, (parts.path or "/") + (
        f"?{parts.query}" if parts.query else "")


class LoadGenerator:
    """Sends ``rps`` requests per second for ``duration`` seconds (or until stop()).

    Example:
        >>> gen = LoadGenerator("http://127.0.0.1:8000/", rps=300, duration=20)  # doctest: +SKIP
        >>> summary = gen.run()  # doctest: +SKIP
        >>> summary.failed  # doctest: +SKIP
        0
    """

    def __init__(self, url: str, *, rps: float, duration: float, keepalive: bool = False,
                 timeout: float = 10.0, workers: int = 64,
                 headers: dict[str, str] | None = None) -> None:
        if not 0 < rps <= 20000:
            raise InputError(f"rps must be between 0 and 20000, not {rps}")
        if not 0 < duration <= 86400:
            raise InputError(f"duration must be between 0 and 86400 seconds, not {duration}")
        self.url, self.rps, self.duration = url, rps, duration
        self._host, self._port, self._path = check_target(url)
        self._keepalive, self._timeout = keepalive, timeout
        self._headers = dict(headers or {})  # sent with every request (e.g. X-Client-Class)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="load")
        self._local = threading.local()
        self._records: list[Record] = []
        self._open: list[http.client.HTTPConnection] = []  # keep-alive connections to close
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._elapsed = 0.0

    def _conn(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None or not self._keepalive:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._local.conn = conn
            if self._keepalive:
                with self._lock:
                    self._open.append(conn)
        return conn

    def _one(self, seq: int, scheduled: float) -> None:
        status = served_by = lb_server = version = variant = error = None
        sent_at = time.time()
        conn = self._conn()
        try:
            headers = {USER_HEADER: f"u{seq}"}
            if not self._keepalive:
                headers["Connection"] = "close"
            headers.update(self._headers)
            conn.request("GET", self._path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            status = resp.status
            served_by, lb_server = resp.getheader("X-Served-By"), resp.getheader("X-LB-Server")
            version, variant = resp.getheader("X-Version"), resp.getheader(FLAG_HEADER)
            if not self._keepalive or resp.will_close:
                conn.close()
                self._local.conn = None
        except (OSError, http.client.HTTPException) as exc:
            error = type(exc).__name__ + (f": {exc}" if str(exc) else "")
            conn.close()
            self._local.conn = None
        latency = time.monotonic() - (self._t0 + scheduled)
        rec = Record(seq, round(scheduled, 4), sent_at, round(latency, 5), status, error,
                     served_by, lb_server, version, variant)
        with self._lock:
            self._records.append(rec)

    def _schedule(self) -> None:
        interval = 1.0 / self.rps
        seq = 0
        while not self._stop.is_set():
            scheduled = seq * interval
            if scheduled >= self.duration:
                break
            delay = self._t0 + scheduled - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            self._pool.submit(self._one, seq, scheduled)
            seq += 1
        self._elapsed = min(seq * interval, self.duration)

    def start(self) -> LoadGenerator:
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._schedule, name="load-scheduler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> Summary:
        """Stops scheduling, waits for requests in flight, returns the summary."""
        self._stop.set()
        return self.wait()

    def wait(self) -> Summary:
        if self._thread is not None:
            self._thread.join()
        self._pool.shutdown(wait=True)
        with self._lock:
            records = list(self._records)
            for conn in self._open:
                conn.close()
            self._open.clear()
        return Summary.of(self.url, self.rps, self._elapsed, records)

    def run(self) -> Summary:
        return self.start().wait()
