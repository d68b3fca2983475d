"""Webhook notifications against a local HTTP server: retries, payloads, dead and hanging ends."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from rollout_py import events as ev
from rollout_py.engine import Engine, Settings
from rollout_py.notify import GAVE_UP, Notifier, Webhook
from rollout_py.planner import make_plan
from rollout_py.spec import HealthSpec, HttpProbe
from rollout_py.testing import FakeFleet


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handlers: nothing outlives a test

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.fail_first = 0  # answer 500 to this many requests first
        self.status = 200
        self.hang = False  # accept, then answer only once `release` is set
        self.entered = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def bodies(self, path: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [b for p, b in self.requests if path is None or p == path]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if srv.hang:
            srv.entered.set()
            srv.release.wait(30)
        with srv.lock:
            srv.requests.append((self.path, body))
            if srv.fail_first > 0:
                srv.fail_first -= 1
                status = 500
            else:
                status = srv.status
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def started(deploy_id: str = "d1", name: str = "web", version: str = "2.0") -> ev.DeployStarted:
    return ev.DeployStarted(deploy_id=deploy_id, seq=1, name=name, version=version,
                            batches=(("h1",), ("h2", "h3")), skipped={"h4": "already 2.0"})


def succeeded_events() -> list[ev.Event]:
    return [started(),
            ev.BatchStarted(deploy_id="d1", seq=2, batch=1, hosts=("h1",)),
            ev.StepFinished(deploy_id="d1", seq=3, batch=1, step="upgrade", ok=True,
                            hosts={"h1": "ok"}, versions={"h1": "1.0"}, duration=1.0),
            ev.BatchSucceeded(deploy_id="d1", seq=4, batch=1, durations={"total": 1.0}),
            ev.BatchStarted(deploy_id="d1", seq=5, batch=2, hosts=("h2", "h3")),
            ev.StepFinished(deploy_id="d1", seq=6, batch=2, step="upgrade", ok=True,
                            hosts={"h2": "ok", "h3": "ok"}, versions={"h2": "1.0", "h3": "1.0"},
                            duration=1.0),
            ev.BatchSucceeded(deploy_id="d1", seq=7, batch=2, durations={"total": 1.0}),
            ev.DeployFinished(deploy_id="d1", seq=8, status="succeeded", exit_code=0, cause=None,
                              stranded=())]


def assert_slack(body: dict[str, Any]) -> None:
    assert isinstance(body["text"], str) and "\n" not in body["text"]
    (attachment,) = body["attachments"]
    assert attachment["fields"]
    for f in attachment["fields"]:
        assert set(f) == {"title", "value", "short"} and isinstance(f["value"], str)


def test_start_and_success_payloads_are_slack_compatible(
        server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy from the environment must not be used (the session ignores the environment).
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    notifier = Notifier([Webhook(server.url())])
    for e in succeeded_events():
        notifier(e)
    assert notifier.close(wait=10) == {server.url(): "delivered"}
    start, success = server.bodies()
    assert_slack(start)
    assert_slack(success)
    assert start["text"].startswith("rollout web 2.0: started")
    assert start["rollout"] == {"event": "start", "deploy_id": "d1", "name": "web",
                                "version": "2.0", "status": "started", "exit_code": None,
                                "cause": None, "stranded": [],
                                "hosts": {"untouched": 3, "skipped": 1}}
    assert success["text"] == "rollout web 2.0: succeeded (exit 0)"
    assert success["attachments"][0]["color"] == "good"
    assert success["rollout"]["event"] == "success"
    assert success["rollout"]["hosts"] == {"upgraded": 3, "skipped": 1}
    assert notifier.deliveries == {server.url(): "delivered"}


def test_a_first_500_is_retried(server: _Server) -> None:
    server.fail_first = 1
    notifier = Notifier([Webhook(server.url(), on=frozenset({"start"}))], backoff=0.01)
    notifier(started())
    assert notifier.close(wait=10) == {server.url(): "delivered"}
    first, second = server.bodies()
    assert first == second and first["rollout"]["event"] == "start"


def test_4xx_is_final(server: _Server) -> None:
    server.status = 404
    notifier = Notifier([Webhook(server.url(), on=frozenset({"start"}))], backoff=0.01)
    notifier(started())
    assert notifier.close(wait=10) == {server.url(): "failed: start: HTTP 404"}
    assert len(server.bodies()) == 1


def test_only_the_kinds_a_webhook_asks_for(server: _Server) -> None:
    everything, failures = server.url("/all"), server.url("/failures")
    notifier = Notifier([Webhook(everything), Webhook(failures, on=frozenset({"failure"}))])
    for e in succeeded_events():
        notifier(e)
    assert notifier.close(wait=10) == {everything: "delivered"}
    assert len(server.bodies("/all")) == 2 and server.bodies("/failures") == []


def test_failure_payload_on_a_rolled_back_deploy(server: _Server) -> None:
    fleet = FakeFleet(["h1", "h2", "h3"], fail_upgrade={"h3": "failed"})
    plan = make_plan(
        name="web", version="2.0", fleet=list(fleet.hosts), targets=list(fleet.hosts),
        servers={h: h for h in fleet.hosts}, batches=[1, 2], max_unavailable=None,
        current_versions={}, force=False, backend="app", sockets=list(fleet.lbs),
        on_failure="rollback_batch", playbook="deploy.yml", rollback_playbook=None,
        drain_timeout=0.2, pause_between_batches=0)
    health = HealthSpec(deadline=0.3, interval=0.01, consecutive=2, soak=0,
                        probes=[HttpProbe(http="http://x")])
    notifier = Notifier([Webhook(server.url(), on=frozenset({"failure"}))])
    engine = Engine(plan, executor=fleet.executor(), balancer=fleet.balancer(),
                    prober=fleet.prober(), checks=fleet.checks,
                    settings=Settings(health=health, drain_timeout=0.2, up_timeout=0.3, poll=0.01),
                    sinks=[notifier])
    result = engine.run()
    assert result.status == "rolled_back"
    assert notifier.close(wait=10) == {server.url(): "delivered"}
    (body,) = server.bodies()
    assert_slack(body)
    assert body["text"].startswith("rollout web 2.0: rolled_back (exit 1): upgrade failed on h3")
    assert body["attachments"][0]["color"] == "warning"
    fields = {f["title"]: f["value"] for f in body["attachments"][0]["fields"]}
    assert fields["Upgraded"] == "1 of 3" and fields["Rolled back"] == "2"
    assert fields["Failure"] == "task_failed"
    assert body["rollout"] == {
        "event": "failure", "deploy_id": result.deploy_id, "name": "web", "version": "2.0",
        "status": "rolled_back", "exit_code": 1, "cause": result.cause, "failure": "task_failed",
        "stranded": [], "hosts": {"upgraded": 1, "rolled_back": 2}}


def test_a_dead_endpoint_fails_within_the_bound_and_never_raises() -> None:
    with socket.socket() as s:  # a port nobody listens on any more
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hook"
    notifier = Notifier([Webhook(url, timeout=1, retries=2)], backoff=0.01)
    for e in succeeded_events():
        notifier(e)
    report = notifier.close(wait=10)
    assert report == {url: "failed: start: connection failed (3 attempts)"}


def test_a_hanging_endpoint_does_not_block_the_deploy(server: _Server) -> None:
    server.hang = True
    notifier = Notifier([Webhook(server.url())])
    for e in succeeded_events():
        notifier(e)  # returns although the endpoint has not answered anything yet
    assert server.entered.wait(10)
    assert not server.release.is_set()  # the request is held inside the server right now
    assert notifier.deliveries == {server.url(): "pending"}
    server.release.set()
    assert notifier.close(wait=10) == {server.url(): "delivered"}
    assert [b["rollout"]["event"] for b in server.bodies()] == ["start", "success"]


def test_close_gives_up_on_a_hanging_endpoint(server: _Server) -> None:
    server.hang = True
    notifier = Notifier([Webhook(server.url(), on=frozenset({"start"}))])
    notifier(started())
    assert server.entered.wait(10)
    assert notifier.close(wait=0.05) == {server.url(): GAVE_UP}
    # The attempt in flight still ends; a second close() waits for it.
    server.release.set()
    assert notifier.close(wait=10) == {server.url(): "delivered"}


def test_redaction_applies_to_the_payload_and_the_report(server: _Server) -> None:
    secret = "s3cr3t-t0ken"
    url = server.url(f"/hooks/{secret}")
    notifier = Notifier([Webhook(url, on=frozenset({"failure"}))],
                        redact=lambda text: text.replace(secret, "***"))
    notifier(started())
    notifier(ev.DeployFinished(deploy_id="d1", seq=2, status="failed", exit_code=3,
                               cause=f"rollback failed: curl -H 'X-Token: {secret}'\nexit 7",
                               stranded=("h1",)))
    assert notifier.close(wait=10) == {server.url("/hooks/***"): "delivered"}
    (body,) = server.bodies()
    assert secret not in json.dumps(body)
    assert "X-Token: ***" in body["text"] and body["rollout"]["stranded"] == ["h1"]
    assert body["attachments"][0]["color"] == "danger"


def test_unknown_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="kinds"):
        Notifier([Webhook("http://127.0.0.1:1/", on=frozenset({"finish"}))])


def test_a_resumed_deploy_is_described_from_its_journal(server: _Server) -> None:
    *journal, finished = succeeded_events()
    notifier = Notifier([Webhook(server.url())], history=journal)
    notifier(ev.DeployResumed(deploy_id="d1", seq=8, batch=None, action="none", detail=""))
    notifier(dataclasses.replace(finished, seq=9))
    assert notifier.close(wait=10) == {server.url(): "delivered"}
    (body,) = server.bodies()
    assert body["text"] == "rollout web 2.0: succeeded (exit 0)"
    assert body["rollout"]["hosts"] == {"upgraded": 3, "skipped": 1}
