"""Open-loop load that writes and reads through the app (``rollout lab load --db-writes``).

Each scheduled request is ``POST /users`` (a name unique to this run) then ``GET /users/<id>``,
both through the same LB frontend. It counts as ok only if the write answered 201 with an id,
the read answered 200 with the name written, and each reply came from the server HAProxy says
it chose. Every acknowledged write is kept (``written``): a test can then ask the database for
exactly those rows.
"""

from __future__ import annotations

import http.client
import json
import time

from rollout_py.lab.load import LoadGenerator, Record


class _Failed(Exception):
    """One step of a request failed; the message says which and how."""


class DbWriteLoad(LoadGenerator):
    """Writes then reads one user per request, at ``rps``, for ``duration`` seconds.

    Example:
        >>> gen = DbWriteLoad("http://127.0.0.1:8000/users", rps=50, duration=10)  # doctest: +SKIP
        >>> summary = gen.run()  # doctest: +SKIP
        >>> len(gen.written) == summary.ok  # doctest: +SKIP
        True
    """

    def __init__(self, url: str, *, rps: float, duration: float, keepalive: bool = False,
                 timeout: float = 10.0, workers: int = 64, prefix: str | None = None) -> None:
        super().__init__(url, rps=rps, duration=duration, keepalive=keepalive, timeout=timeout,
                         workers=workers)
        self.prefix = prefix or f"load-{time.time_ns():x}-"
        self.written: list[tuple[int, str]] = []  # (id, name) of every acknowledged write
        self.failed_writes: list[str] = []  # names whose write may or may not have landed

    def _exchange(self, method: str, path: str, body: bytes | None
                  ) -> tuple[int, dict[str, str], bytes]:
        conn = self._conn()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if not self._keepalive:
            headers["Connection"] = "close"
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            self._local.conn = None
            raise
        if not self._keepalive or resp.will_close:
            conn.close()
            self._local.conn = None
        got = {k: resp.getheader(k) or "" for k in ("X-Served-By", "X-LB-Server", "X-Version")}
        if got["X-LB-Server"] and got["X-Served-By"] != got["X-LB-Server"]:
            raise _Failed(f"{method} served_by mismatch")
        return resp.status, got, data

    def _one(self, seq: int, scheduled: float) -> None:
        name = f"{self.prefix}{seq}"
        sent_at = time.time()
        status: int | None = None
        error: str | None = None
        got: dict[str, str] = {}
        acknowledged = False
        try:
            status, got, data = self._exchange("POST", self._path,
                                               json.dumps({"name": name}).encode())
            if status != 201:
                raise _Failed(f"POST http {status}")
            user_id = int(json.loads(data)["id"])
            with self._lock:
                self.written.append((user_id, name))
            acknowledged = True
            status, got, data = self._exchange("GET", f"{self._path.rstrip('/')}/{user_id}", None)
            if status != 200:
                raise _Failed(f"GET http {status}")
            if json.loads(data).get("name") != name:
                raise _Failed("GET answered another name")
            status = 200
        except _Failed as exc:
            error = str(exc)
        except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
            error = type(exc).__name__ + (f": {exc}" if str(exc) else "")
        if error is not None and not acknowledged:
            with self._lock:
                self.failed_writes.append(name)
        latency = time.monotonic() - (self._t0 + scheduled)
        rec = Record(seq, round(scheduled, 4), sent_at, round(latency, 5), status, error,
                     got.get("X-Served-By") or None, got.get("X-LB-Server") or None,
                     got.get("X-Version") or None)
        with self._lock:
            self._records.append(rec)
