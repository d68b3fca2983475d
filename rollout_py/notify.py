"""Webhook notifications (Slack-compatible JSON) of a deploy's start and end, off the deploy thread.

A Notifier is an event sink. Calling it only records the event and queues work; one daemon
thread per webhook POSTs the payloads, so a slow or dead endpoint never blocks or fails a
deploy. ``close()`` waits a bounded time for the queues to drain and returns what happened.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import requests

from rollout_py import events as ev
from rollout_py.result import DeployResult, fold

KINDS = frozenset({"start", "success", "failure"})
GAVE_UP = "pending (gave up waiting)"
_COLORS = {"succeeded": "good", "rolled_back": "warning", "stopped": "warning",
           "cancelled": "warning", "failed": "danger"}


def _identity(text: str) -> str:
    return text


@dataclass(frozen=True, slots=True)
class Webhook:
    """One endpoint and the kinds of notification it wants: start, success, failure.

    ``retries`` is the number of attempts after the first one; ``timeout`` bounds each attempt.

    Example:
        >>> hook = Webhook("https://hooks.example.com/T0/B0/x", on=frozenset({"failure"}))
        >>> hook.retries
        3
    """

    url: str
    on: frozenset[str] = KINDS
    timeout: float = 5.0
    retries: int = 3


@dataclass(slots=True)
class _Delivery:
    kind: str
    state: str = "pending"  # pending | delivered | failed | abandoned
    reason: str = ""


class Notifier:
    """An event sink that notifies webhooks when a deploy starts and when it ends.

    Args:
        webhooks: the endpoints; each gets its own worker thread and HTTP session.
        redact: applied to the whole serialized payload before it is sent, and to the keys
            and reasons of the delivery report (webhook URLs often carry a token).
        backoff: the first pause between attempts; it doubles after each retry.
        history: the deploy's events from before this notifier was attached (on resume, the
            journal), so that the final message describes the whole deploy.

    Example:
        >>> notifier = Notifier([Webhook("https://hooks.example.com/T0/B0/x")])
        >>> result = rollout_py.deploy(spec, version="2.0", sinks=[notifier])  # doctest: +SKIP
        >>> notifier.close(wait=10)  # doctest: +SKIP
        {'https://hooks.example.com/T0/B0/x': 'delivered'}
    """

    def __init__(self, webhooks: Sequence[Webhook], *,
                 redact: Callable[[str], str] = _identity, backoff: float = 0.5,
                 history: Sequence[ev.Event] = ()) -> None:
        for hook in webhooks:
            unknown = set(hook.on) - KINDS
            if unknown:
                raise ValueError(f"webhook kinds must be among {sorted(KINDS)}, "
                                 f"not {sorted(unknown)}")
        self._webhooks = tuple(webhooks)
        self._redact = redact
        self._keys = [redact(hook.url) for hook in self._webhooks]
        self._backoff = backoff
        self._history: list[ev.Event] = list(history)
        self._lock = threading.Lock()
        self._records: list[tuple[str, _Delivery]] = []  # (report key, delivery)
        self._queues: list[queue.SimpleQueue[tuple[str, int, _Delivery] | None]] = []
        self._threads: list[threading.Thread] = []
        self._abandon = threading.Event()
        self._closed = False
        for i, hook in enumerate(self._webhooks):
            q: queue.SimpleQueue[tuple[str, int, _Delivery] | None] = queue.SimpleQueue()
            thread = threading.Thread(target=self._work, args=(hook, q), daemon=True,
                                      name=f"rollout-webhook-{i}")
            self._queues.append(q)
            self._threads.append(thread)
            thread.start()

    # --- the sink: never blocks, never raises ----------------------------------------------
    def __call__(self, event: ev.Event) -> None:
        if self._closed:
            return
        self._history.append(event)
        if isinstance(event, ev.DeployStarted):
            kind = "start"
        elif isinstance(event, ev.DeployFinished):
            kind = "success" if event.status == "succeeded" else "failure"
        else:
            return
        upto = len(self._history)
        for hook, key, q in zip(self._webhooks, self._keys, self._queues, strict=True):
            if kind in hook.on:
                delivery = _Delivery(kind)
                with self._lock:
                    self._records.append((key, delivery))
                q.put((kind, upto, delivery))

    # --- the report ------------------------------------------------------------------------
    @property
    def deliveries(self) -> dict[str, str]:
        """Webhook (redacted URL) -> "delivered" | "failed: reason" | "pending" | GAVE_UP.

        A webhook appears once something was queued for it; the worst of its notifications
        wins (failed, then pending, then delivered).
        """
        report: dict[str, str] = {}
        rank = {"failed": 3, "abandoned": 2, "pending": 1, "delivered": 0}
        worst: dict[str, _Delivery] = {}
        with self._lock:
            for key, d in self._records:
                if key not in worst or rank[d.state] > rank[worst[key].state]:
                    worst[key] = _Delivery(d.kind, d.state, d.reason)
        for key, d in worst.items():
            report[key] = {"delivered": "delivered", "pending": "pending",
                           "abandoned": GAVE_UP}.get(d.state, f"failed: {d.reason}")
        return report

    def close(self, wait: float = 10.0) -> dict[str, str]:
        """Waits at most ``wait`` seconds in all for queued notifications; returns the report.

        What is still queued or being retried then is given up (reported as
        "pending (gave up waiting)"); an attempt already in flight ends within its timeout.
        Calling close again waits again and returns the report as it then stands.
        """
        deadline = time.monotonic() + max(0.0, wait)
        if not self._closed:
            self._closed = True
            for q in self._queues:
                q.put(None)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            self._abandon.set()
        with self._lock:
            for _, d in self._records:
                if d.state == "pending":
                    d.state = "abandoned"
        return self.deliveries

    # --- the worker ------------------------------------------------------------------------
    def _work(self, hook: Webhook,
              q: queue.SimpleQueue[tuple[str, int, _Delivery] | None]) -> None:
        session: requests.Session | None = None
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                kind, upto, delivery = item
                if self._abandon.is_set():
                    self._settle(delivery, "abandoned")
                    continue
                try:
                    body = self._redact(json.dumps(self.payload(kind, self._history[:upto])))
                except Exception as exc:  # a bug or a failing redact must not kill the thread
                    self._settle(delivery, "failed",
                                 f"{kind}: payload not built: {type(exc).__name__}")
                    continue
                if session is None:
                    session = requests.Session()
                    session.trust_env = False  # no proxy or netrc from the environment
                state, reason = self._post(session, hook, body.encode())
                self._settle(delivery, state, f"{kind}: {reason}" if reason else "")
        except Exception:  # never let an exception escape the thread
            return
        finally:
            if session is not None:
                session.close()

    def _settle(self, delivery: _Delivery, state: str, reason: str = "") -> None:
        with self._lock:
            # A late success still counts, even after close() gave up on it.
            if delivery.state in ("pending", "abandoned"):
                delivery.state, delivery.reason = state, self._redact(reason)

    def _post(self, session: requests.Session, hook: Webhook, body: bytes) -> tuple[str, str]:
        attempts = max(0, hook.retries) + 1
        reason = ""
        for attempt in range(attempts):
            if attempt and self._abandon.wait(self._backoff * 2 ** (attempt - 1)):
                return "abandoned", ""
            try:
                with session.post(hook.url, data=body, timeout=hook.timeout,
                                  allow_redirects=False,
                                  headers={"Content-Type": "application/json"}) as resp:
                    status = resp.status_code
            except requests.Timeout:
                reason = f"timed out after {hook.timeout:g} s"
            except requests.ConnectionError:
                reason = "connection failed"
            except Exception as exc:  # bad URL and the like: retrying will not help
                return "failed", type(exc).__name__
            else:
                if 200 <= status < 300:
                    return "delivered", ""
                reason = f"HTTP {status}"
                if status < 500:
                    return "failed", reason
        return "failed", f"{reason} ({attempts} attempt{'s' if attempts > 1 else ''})"

    # --- the payload -----------------------------------------------------------------------
    @staticmethod
    def payload(kind: str, history: Sequence[ev.Event]) -> dict[str, Any]:
        """The Slack-compatible message for ``kind``, from the deploy's events so far."""
        last = history[-1]
        mine = [e for e in history if e.deploy_id == last.deploy_id]
        try:
            result = fold(mine)
        except (KeyError, IndexError):  # attached mid-deploy: fold what can be folded
            result = fold([last])
        if isinstance(last, ev.DeployStarted):
            return _start_payload(last, result)
        return _finish_payload(kind, result)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _field(title: str, value: object, short: bool = True) -> dict[str, Any]:
    return {"title": title, "value": str(value), "short": short}


def _outcomes(result: DeployResult) -> dict[str, int]:
    counts: dict[str, int] = {}
    for host in result.hosts.values():
        counts[host.outcome] = counts.get(host.outcome, 0) + 1
    return counts


def _start_payload(e: ev.DeployStarted, result: DeployResult) -> dict[str, Any]:
    hosts = sum(len(b) for b in e.batches)
    text = (f"rollout {e.name} {e.version}: started, {hosts} hosts in {len(e.batches)} "
            f"batches (deploy {e.deploy_id})")
    fields = [_field("Deploy", e.deploy_id), _field("Version", e.version),
              _field("Hosts", hosts), _field("Batches", len(e.batches))]
    if e.skipped:
        fields.append(_field("Skipped", len(e.skipped)))
    return {"text": text, "attachments": [{"fallback": text, "fields": fields}],
            "rollout": {"event": "start", "deploy_id": e.deploy_id, "name": e.name,
                        "version": e.version, "status": "started", "exit_code": None,
                        "cause": None, "stranded": [], "hosts": _outcomes(result)}}


def _finish_payload(kind: str, r: DeployResult) -> dict[str, Any]:
    text = f"rollout {r.name} {r.version}: {r.status} (exit {r.exit_code})"
    if r.cause:
        text += f": {_one_line(r.cause)}"
    if r.stranded:
        text += f"; OUT OF ROTATION: {', '.join(r.stranded)}"
    counts = _outcomes(r)
    fields = [_field("Status", r.status), _field("Exit code", r.exit_code),
              _field("Deploy", r.deploy_id), _field("Version", r.version),
              _field("Upgraded", f"{counts.get('upgraded', 0)} of {len(r.hosts)}")]
    if counts.get("rolled_back"):
        fields.append(_field("Rolled back", counts["rolled_back"]))
    if r.failure:
        fields.append(_field("Failure", r.failure))
    if r.stranded:
        fields.append(_field("Stranded (in MAINT)", ", ".join(r.stranded), short=False))
    if r.cause:
        fields.append(_field("Cause", r.cause, short=False))
    return {"text": text,
            "attachments": [{"fallback": text, "color": _COLORS.get(r.status, "danger"),
                             "fields": fields}],
            "rollout": {"event": kind, "deploy_id": r.deploy_id, "name": r.name,
                        "version": r.version, "status": r.status, "exit_code": r.exit_code,
                        "cause": r.cause, "failure": r.failure, "stranded": list(r.stranded),
                        "hosts": counts}}
