"""Probes against local servers, and the runtime API over the tcp:// transport (loopback)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rollout_py.balancer import RuntimeAPI, open_transport
from rollout_py.probes import Check, Prober, wait_healthy
from rollout_py.spec import HttpProbe, TcpProbe

SEEN: list[tuple[int, str | None]] = []  # each request's client port and Connection header


class _Handler(BaseHTTPRequestHandler):
    # Keeps every connection open whatever the client asks, as a loaded server may for a
    # while: a client that pooled its connection would send the next probe on the same one.
    protocol_version = "HTTP/1.1"
    timeout = 5

    def handle_one_request(self) -> None:
        super().handle_one_request()
        if getattr(self, "raw_requestline", b""):
            self.close_connection = False

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        SEEN.append((self.client_address[1], self.headers.get("Connection")))
        if self.path == "/latin":
            data = "café crème".encode("iso-8859-1")
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=ISO-8859-1")
        elif self.path == "/auth":
            good = self.headers.get("Authorization") == "Basic dTpwIHc="  # u:p w
            data = b"in" if good else b"who?"
            self.send_response(200 if good else 401)
        elif self.path == "/moved":
            data = b""
            self.send_response(302)
            self.send_header("Location", "/ok")
        else:
            status, text = {"/ok": (200, "all good v2.1"),
                            "/json": (200, json.dumps({"app": {"version": "2.1"}})),
                            "/bad": (503, "down")}.get(self.path, (404, "nope"))
            data = text.encode()
            self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server() -> Iterator[int]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads, srv.block_on_close = True, False  # kept-open connections
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def prober() -> Prober:
    return Prober(lambda h, c, t: (True, ""), lambda s: None)


def http(port: int, path: str, **kw: object) -> Check:
    url = f"http://127.0.0.1:{port}{path}"
    return Check("http", url, HttpProbe.model_validate({"http": url, **kw}))


def test_http_status_body_regex_and_json(server: int) -> None:
    p = prober()
    assert p.run("h", http(server, "/ok", body="v2.1")) is None
    assert "does not contain" in (p.run("h", http(server, "/ok", body="v3")) or "")
    assert p.run("h", http(server, "/ok", match=r"v2\.\d")) is None
    assert "does not match" in (p.run("h", http(server, "/ok", match=r"v3\.")) or "")
    assert "status 503" in (p.run("h", http(server, "/bad")) or "")
    assert p.run("h", http(server, "/json", **{"json": {"app.version": "2.1"}})) is None
    assert "JSON app.version is '2.1'" in (p.run("h", http(server, "/json", **{
        "json": {"app.version": "2.2"}})) or "")
    assert "has no app.missing" in (p.run("h", http(server, "/json", **{
        "json": {"app.missing": 1}})) or "")


def test_each_http_probe_is_a_new_connection_and_reads_the_charset(server: int) -> None:
    """A probe never reuses a connection (a server that closes it late, or an app restarted
    between probes, must not fail the next probe): Connection: close and a new client port
    each time, even from a server that keeps it open; the body is decoded with its charset;
    a redirect is an answer, not followed."""
    p = prober()
    SEEN.clear()
    assert [p.run("h", http(server, "/ok")) for _ in range(3)] == [None] * 3
    assert [header for _, header in SEEN] == ["close"] * 3
    assert len({port for port, _ in SEEN}) == 3
    assert p.run("h", http(server, "/latin", body="café crème")) is None
    assert p.run("h", http(server, "/moved")) == "status 302, expected 200"


def test_an_http_probe_that_cannot_connect_says_why(server: int) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    failure = prober().run("h", http(closed, "/ok")) or ""
    assert failure.startswith("ConnectionRefusedError: ") and "Connection refused" in failure
    assert " object at 0x" not in failure


def test_tcp_probe(server: int) -> None:
    p = prober()
    assert p.run("h", Check("tcp", f"127.0.0.1:{server}", TcpProbe(tcp="x:1"))) is None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert "Refused" in (p.run("h", Check("tcp", f"127.0.0.1:{closed}", TcpProbe(tcp="x:1")))
                         or "")


def test_consecutive_passes_are_required(server: int) -> None:
    results: list[tuple[str, str | None]] = []
    out = wait_healthy(prober(), {"a": [http(server, "/ok")], "b": [http(server, "/bad")]},
                       deadline=0.5, interval=0.05, consecutive=3,
                       on_result=lambda h, f, _c: results.append((h, f)))
    assert out["a"] is None and "status 503" in (out["b"] or "")
    assert sorted(h for h, _ in results) == ["a", "b"]


def test_runtime_api_over_tcp() -> None:
    answers = {"show servers state app": "1\n# be_id be_name srv_id srv_name srv_addr "
               "srv_op_state srv_admin_state srv_uweight srv_iweight srv_port\n"
               "3 app 1 web1 10.0.0.1 2 0 1 1 80\n"}
    received: list[str] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            line = conn.makefile().readline().strip()
            received.append(line)
            conn.sendall(answers.get(line, "Unknown command.\n").encode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    api = RuntimeAPI(open_transport(f"tcp://127.0.0.1:{listener.getsockname()[1]}"))
    states = api.servers_state("app")
    thread.join(5)
    listener.close()
    assert received == ["show servers state app"]
    assert states[0].name == "web1" and states[0].in_rotation


def test_http_credentials_in_the_url_go_as_basic_auth(server: int) -> None:
    p = prober()
    url = f"http://u:p%20w@127.0.0.1:{server}/auth"
    assert p.run("h", Check("http", url, HttpProbe.model_validate({"http": url}))) is None
    assert p.run("h", http(server, "/auth")) == "status 401, expected 200"


def test_an_https_probe_checks_the_servers_certificate(tmp_path: Path) -> None:
    """A self-signed certificate is refused: the CA bundle decides, not the probe."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    srv.daemon_threads, srv.block_on_close = True, False
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"https://127.0.0.1:{srv.server_address[1]}/ok"
        failure = prober().run("h", Check("http", url, HttpProbe.model_validate({"http": url})))
    finally:
        srv.shutdown()
        srv.server_close()
    assert failure is not None and failure.startswith("SSLCertVerificationError: ")
