"""rollout_py.http_get against loopback servers: failures read as the standard library's, no
proxy from the environment, one curl handle per thread with nothing carried between GETs."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rollout_py.http_get import http_get


class _Echo(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        data = f"{self.path} auth={self.headers.get('Authorization')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def echo() -> Iterator[int]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def raw_server() -> Iterator[Callable[[bytes | None], int]]:
    """A server that answers each connection with the given bytes and closes it (None: reads the
    request and then holds the connection open, never answering)."""
    sockets: list[socket.socket] = []
    held: list[socket.socket] = []

    def start(reply: bytes | None) -> int:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        sockets.append(srv)

        def serve() -> None:
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                conn.recv(65536)
                if reply is None:
                    held.append(conn)
                    continue
                conn.sendall(reply)
                conn.close()

        threading.Thread(target=serve, daemon=True).start()
        return int(srv.getsockname()[1])

    yield start
    for s in sockets + held:
        s.close()


@pytest.mark.parametrize(("reply", "error", "says"), [
    (b"", http.client.RemoteDisconnected, "closed connection without response"),
    (b"hello there\r\n", http.client.HTTPException, "HTTP/0.9"),
    (b"HTTP/1.1 abc\r\n\r\n", http.client.HTTPException, "HTTP"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", http.client.HTTPException, "missing"),
    (None, TimeoutError, "timed out"),
])
def test_an_answer_that_is_not_http_fails_as_the_standard_library_would(
        raw_server: Callable[[bytes | None], int], reply: bytes | None,
        error: type[Exception], says: str) -> None:
    port = raw_server(reply)
    with pytest.raises(error, match=says):
        http_get(f"http://127.0.0.1:{port}/", 0.5)


def test_refused_and_not_http_urls() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(ConnectionRefusedError, match=r"\[Errno 111\] Connection refused"):
        http_get(f"http://127.0.0.1:{closed}/", 1)
    for url in ("ftp://127.0.0.1/x", "127.0.0.1:80/health", "http:///nohost"):
        with pytest.raises(ValueError, match="not an http"):
            http_get(url, 1)


def test_no_proxy_from_the_environment(echo: int, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a proxy that is not there: using it would fail the GET
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "ALL_PROXY",
                "all_proxy"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{dead}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert http_get(f"http://127.0.0.1:{echo}/direct", 2) == (200, "/direct auth=None")


def test_a_thread_reuses_its_handle_with_nothing_carried_over(
        echo: int, raw_server: Callable[[bytes | None], int]) -> None:
    """Credentials, a body, a failure: none of them reach the next GET of the same thread."""
    url = f"http://127.0.0.1:{echo}"
    assert http_get(f"http://u:p@127.0.0.1:{echo}/a", 2) == (200, "/a auth=Basic dTpw")
    assert http_get(f"{url}/b", 2) == (200, "/b auth=None")
    with pytest.raises(TimeoutError):
        http_get(f"http://127.0.0.1:{raw_server(None)}/", 0.3)
    assert http_get(f"{url}/c", 2) == (200, "/c auth=None")


def test_threads_get_their_own_answers(echo: int) -> None:
    paths = [f"/p{i}" for i in range(64)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        got = list(pool.map(lambda p: http_get(f"http://127.0.0.1:{echo}{p}", 5), paths))
    assert got == [(200, f"{p} auth=None") for p in paths]
