"""The sample app's behaviour flags and the open-loop load generator, on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from rollout_py.errors import InputError
from rollout_py.lab import artifact
from rollout_py.lab.haproxy import free_port
from rollout_py.lab.load import LoadGenerator, check_target

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@contextmanager
def app(tmp_path: Path, behaviour: artifact.Behaviour | None = None,
        version: str = "3.0") -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    release = tmp_path / "release"
    built = artifact.build_artifact(tmp_path, version, behaviour or artifact.Behaviour())
    artifact.unpack(built, release)
    port = free_port()
    env = os.environ | {"APP_BIND": "127.0.0.1", "APP_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, str(release / "app.py")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def wait_listening(port: int, timeout: float = 10) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return time.monotonic() - start
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"nothing listened on {port}")


def get(port: int, path: str) -> tuple[int, dict[str, str], str]:
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def test_good_release_answers_with_host_and_version(tmp_path: Path) -> None:
    with app(tmp_path) as (_, port):
        wait_listening(port)
        status, headers, body = get(port, "/")
        assert status == 200 and headers["X-Version"] == "3.0"
        assert headers["X-Served-By"] == socket.gethostname() and "version 3.0" in body
        assert get(port, "/health")[0] == 200
        assert get(port, "/version")[2].strip() == "3.0"


def test_health_fail_release(tmp_path: Path) -> None:
    with app(tmp_path, artifact.Behaviour(health_fail=True)) as (_, port):
        wait_listening(port)
        assert get(port, "/health")[0] == 500
        assert get(port, "/")[0] == 200


def test_crash_on_start_release_exits(tmp_path: Path) -> None:
    with app(tmp_path, artifact.Behaviour(crash_on_start=True)) as (proc, _):
        assert proc.wait(10) != 0


def test_start_delay_release_listens_late(tmp_path: Path) -> None:
    with app(tmp_path, artifact.Behaviour(start_delay=1.0)) as (_, port):
        assert wait_listening(port) >= 0.9


def test_error_rate_release_fails_that_share(tmp_path: Path) -> None:
    with app(tmp_path, artifact.Behaviour(error_rate=0.5)) as (_, port):
        wait_listening(port)
        codes = [get(port, "/")[0] for _ in range(200)]
        assert 50 < codes.count(500) < 150 and codes.count(200) + codes.count(500) == 200


def timed_get(port: int, path: str) -> tuple[int, float]:
    start = time.monotonic()
    status = get(port, path)[0]
    return status, time.monotonic() - start


def test_latency_release_slows_every_root_response_only(tmp_path: Path) -> None:
    with app(tmp_path, artifact.Behaviour(latency_ms=250, error_rate=1.0)) as (_, port):
        wait_listening(port)
        for _ in range(3):
            status, took = timed_get(port, "/")
            assert status == 500 and took >= 0.25  # errors are slow too
        status, took = timed_get(port, "/health")
        assert status == 200 and took < 0.25


def test_fail_after_release_turns_bad_while_health_stays_good(tmp_path: Path) -> None:
    with app(tmp_path, artifact.Behaviour(fail_after=1.0)) as (_, port):
        started = time.monotonic()
        wait_listening(port)
        assert get(port, "/")[0] == 200  # good at first
        first_500 = None
        while first_500 is None and time.monotonic() - started < 10:
            status = get(port, "/")[0]
            assert get(port, "/health")[0] == 200
            if status == 500:
                first_500 = time.monotonic() - started
            elif status != 200:
                raise AssertionError(f"unexpected status {status}")
        assert first_500 is not None and first_500 >= 0.9
        # Without --error-rate, every / fails from then on; /health never does.
        assert [get(port, "/")[0] for _ in range(20)] == [500] * 20
        assert get(port, "/health")[0] == 200 and get(port, "/version")[0] == 200


def test_fail_after_uses_the_error_rate_once_bad(tmp_path: Path) -> None:
    with app(tmp_path, artifact.Behaviour(fail_after=0, error_rate=0.5)) as (_, port):
        wait_listening(port)
        codes = [get(port, "/")[0] for _ in range(200)]
        assert 50 < codes.count(500) < 150 and codes.count(200) + codes.count(500) == 200


def test_error_rate_waits_for_fail_after(tmp_path: Path) -> None:
    with app(tmp_path, artifact.Behaviour(fail_after=600, error_rate=1.0)) as (_, port):
        wait_listening(port)
        assert [get(port, "/")[0] for _ in range(50)] == [200] * 50


def test_sigterm_lets_an_in_flight_request_finish(tmp_path: Path) -> None:
    with app(tmp_path) as (proc, port):
        wait_listening(port)
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"GET /slow?seconds=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            reply = conn.recv(4096)
        assert reply.startswith(b"HTTP/1.1 200")
        assert proc.wait(10) == 0


@pytest.mark.parametrize("keepalive", [False, True])
def test_load_is_open_loop_and_counts_outcomes(tmp_path: Path, keepalive: bool) -> None:
    with app(tmp_path, artifact.Behaviour(error_rate=0.2)) as (_, port):
        wait_listening(port)
        summary = LoadGenerator(f"http://127.0.0.1:{port}/", rps=200, duration=1.0,
                                keepalive=keepalive).run()
    assert summary.sent == 200  # one request every 5 ms for 1 s, whatever the answers
    assert summary.ok + summary.failed == 200
    assert 10 < summary.failed < 80 and summary.failures.get("http 500") == summary.failed
    assert summary.by_version == {"3.0": 200}
    assert 0 < summary.p50_ms <= summary.p99_ms <= summary.max_ms


def test_load_counts_refused_connections_as_failures() -> None:
    port = free_port()  # nothing listens there
    summary = LoadGenerator(f"http://127.0.0.1:{port}/", rps=50, duration=0.2).run()
    assert summary.sent == 10 and summary.failed == 10
    assert all("ConnectionRefused" in k for k in summary.failures)


def test_load_writes_json_records(tmp_path: Path) -> None:
    with app(tmp_path) as (_, port):
        wait_listening(port)
        summary = LoadGenerator(f"http://127.0.0.1:{port}/", rps=100, duration=0.2).run()
    out = tmp_path / "records.jsonl"
    summary.write_records(out)
    lines = out.read_text().splitlines()
    assert len(lines) == summary.sent == 20 and '"version": "3.0"' in lines[0]


@pytest.mark.parametrize("url", ["http://10.0.0.1/", "http://example.org/", "https://127.0.0.1/",
                                 "ftp://127.0.0.1/"])
def test_load_refuses_non_loopback_targets(url: str) -> None:
    with pytest.raises(InputError):
        check_target(url)
