"""Prometheus gates: the query must answer exactly one finite number; anything else (empty,
NaN, several series, an HTTP error, no server) is inconclusive with the reason, never a pass."""

from __future__ import annotations

import json
import math
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

import pytest

from rollout_py.analysis.gates import prometheus_gate, promql_regex, render_query
from rollout_py.analysis.prometheus import parse_answer, query
from rollout_py.spec_canary import PrometheusGate


def vector(*values: str) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"server": f"app0{i}"}, "value": [1700000000.5, v]}
        for i, v in enumerate(values, 1)]}}


@pytest.mark.parametrize(("body", "expected"), [
    (vector("0.25"), 0.25),
    (vector("0"), 0.0),
    ({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3"]}}, 3.0),
    (vector(), "no series"),
    (vector("NaN"), "answered NaN"),
    (vector("+Inf"), "answered +Inf"),
    (vector("1", "2"), '2 series, not one (aggregate them, e.g. sum(...)): {server="app01"}'),
    ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "a matrix result"),
    ({"status": "error", "errorType": "bad_data", "error": "parse error"},
     "Prometheus refused the query: bad_data: parse error"),
    ([1, 2], "not a Prometheus answer"),
    ({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}},
     "not a sample"),
])
def test_parse_answer(body: Any, expected: float | str) -> None:
    got = parse_answer(body)
    if isinstance(expected, float):
        assert got == expected
    else:
        assert isinstance(got, str) and expected in got


class Prometheus(BaseHTTPRequestHandler):
    status = 200
    body = ""
    asked: ClassVar[list[dict[str, list[str]]]] = []

    def do_GET(self) -> None:
        url = urlparse(self.path)
        assert url.path == "/api/v1/query"
        Prometheus.asked.append(parse_qs(url.query))
        data = self.body.encode()
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def prom() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Prometheus)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    Prometheus.asked = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("status", "body", "expected"), [
    (200, json.dumps(vector("0.5")), 0.5),
    (200, json.dumps(vector()), "no series"),
    (400, json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"}),
     "HTTP 400: Prometheus refused the query: bad_data: parse error"),
    (503, "overloaded", "HTTP 503 from http://127.0.0.1"),
    (200, "<html>", "not JSON"),
])
def test_query_over_http(prom: str, status: int, body: str, expected: float | str) -> None:
    Prometheus.status, Prometheus.body = status, body
    got = query(prom, 'sum(up{server=~"app01"})', 2.0)
    assert Prometheus.asked == [{"query": ['sum(up{server=~"app01"})']}]
    if isinstance(expected, float):
        assert got == expected
    else:
        assert isinstance(got, str) and expected in got


def test_query_of_an_unreachable_prometheus_says_so() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    got = query(f"http://127.0.0.1:{port}", "up", 1.0)
    assert isinstance(got, str) and got.startswith(f"Prometheus unreachable at http://127.0.0.1:"
                                                   f"{port}")


@pytest.mark.parametrize(("servers", "expected"), [
    (["app01"], "app01"),
    (["app01", "app02"], "app01|app02"),
    (["web.1:a-b"], r"web\\.1:a-b"),  # the regex's \. written in a PromQL string
    (['a"b', "c|d"], r"a\"b|c\\|d"),
])
def test_promql_regex(servers: list[str], expected: str) -> None:
    assert promql_regex(servers) == expected


def test_render_query() -> None:
    q = 'sum(x{server=~"$canary"}) / sum(x{server=~"$baseline"}) + $canary_not'
    assert render_query(q, ["a.1"], ["b", "c"]) == \
        r'sum(x{server=~"a\\.1"}) / sum(x{server=~"b|c"}) + $canary_not'
    with pytest.raises(ValueError, match=r"\$baseline has no servers"):
        render_query(q, ["a"], [])


def reader(answer: float | str | Exception) -> Any:
    asked: list[tuple[str, str, float]] = []

    def read(url: str, q: str, timeout: float) -> float | str:
        asked.append((url, q, timeout))
        if isinstance(answer, Exception):
            raise answer
        return answer

    read.asked = asked  # type: ignore[attr-defined]
    return read


GATE = PrometheusGate(url="http://prom:9090/", query='rate(e{server=~"$canary"}[1m])',
                      max=0.5, min=0.1, timeout=3)


@pytest.mark.parametrize(("answer", "expected", "words"), [
    (0.3, [("prometheus.max", "pass"), ("prometheus.min", "pass")], "= 0.3 <= 0.5"),
    (0.5, [("prometheus.max", "pass"), ("prometheus.min", "pass")], "= 0.5 <= 0.5"),
    (0.9, [("prometheus.max", "fail"), ("prometheus.min", "pass")], "= 0.9 > 0.5"),
    (0.05, [("prometheus.max", "pass"), ("prometheus.min", "fail")], "= 0.05 < 0.1"),
    ("no series (empty result)", [("prometheus", "inconclusive")], "no series"),
    (math.nan, [("prometheus", "inconclusive")], "answered nan"),
    ("2 series, not one", [("prometheus", "inconclusive")], "2 series"),
    ("HTTP 500 from x", [("prometheus", "inconclusive")], "HTTP 500"),
    (OSError("boom"), [("prometheus", "inconclusive")], "the query failed: OSError: boom"),
])
def test_prometheus_gate(answer: float | str | Exception, expected: list[tuple[str, str]],
                         words: str) -> None:
    read = reader(answer)
    got = prometheus_gate(GATE, ["app.01"], ["app02"], read)
    assert [(v.gate, v.verdict) for v in got] == expected
    assert any(words in v.detail for v in got), [v.detail for v in got]
    assert read.asked == [("http://prom:9090", r'rate(e{server=~"app\\.01"}[1m])', 3)]
    for v in got:
        assert v.value is None if v.verdict == "inconclusive" else v.value == answer


def test_prometheus_gate_on_an_empty_group_asks_nothing() -> None:
    gate = PrometheusGate(url="http://prom:9090", query='x{server=~"$baseline"}', max=1)
    read = reader(0.0)
    (v,) = prometheus_gate(gate, ["app01"], [], read)
    assert v.verdict == "inconclusive" and "$baseline has no servers" in v.detail
    assert read.asked == []
