"""Byte transports to one HAProxy admin socket: a local unix socket, TCP, or SSH to the LB host.

Each call sends one command and reads the answer until HAProxy closes the stream (the runtime
API's non-interactive mode), so one command can never run into the next. Over SSH
(rollout_py.balancer.ssh), one long-lived exec channel carries every command to a relay on the
LB host, which still opens the socket once per command and frames each answer with an end line.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import unquote, urlsplit

from rollout_py.balancer.ssh import SshOptions, SshTransport
from rollout_py.errors import BalancerUnreachable, InputError


class Transport(Protocol):
    """Sends one runtime API command and returns HAProxy's whole answer."""

    url: str

    def send(self, command: str) -> str: ...

    def close(self) -> None: ...


def _recv_all(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


@dataclass
class UnixTransport:
    """The admin socket as a local unix socket path."""

    url: str
    path: str
    timeout: float = 5.0

    def send(self, command: str) -> str:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                sock.sendall(command.encode() + b"\n")
                return _recv_all(sock).decode(errors="replace")
        except OSError as exc:
            raise BalancerUnreachable(f"{self.url}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        return None


@dataclass
class TcpTransport:
    """The admin socket exposed on TCP (``stats socket ipv4@host:port level admin``)."""

    url: str
    host: str
    port: int
    timeout: float = 5.0

    def send(self, command: str) -> str:
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
                sock.sendall(command.encode() + b"\n")
                return _recv_all(sock).decode(errors="replace")
        except OSError as exc:
            raise BalancerUnreachable(f"{self.url}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class SocketAddress:
    """Where an admin socket URL points: a local path, a TCP address, or a path on an SSH host.

    Example:
        >>> parse_socket_url("ssh://lb2/run/haproxy/admin.sock").user
        'root'
    """

    url: str
    scheme: Literal["unix", "tcp", "ssh"]
    path: str = ""  # unix: on this machine; ssh: on the LB host
    host: str = ""
    port: int = 0
    user: str = ""


def parse_socket_url(url: str) -> SocketAddress:
    """Parses an admin socket URL; raises InputError naming the expected form.

    Example:
        >>> parse_socket_url("tcp://10.0.0.5:9999").port
        9999
    """
    parts = urlsplit(url)
    if parts.scheme == "unix":
        path = unquote(parts.netloc + parts.path)
        if not path.startswith("/"):
            raise InputError(f"socket {url!r}: a unix socket needs an absolute path")
        return SocketAddress(url, "unix", path=path)
    if parts.scheme == "tcp":
        if not parts.hostname or not parts.port:
            raise InputError(f"socket {url!r}: expected tcp://host:port")
        return SocketAddress(url, "tcp", host=parts.hostname, port=parts.port)
    if parts.scheme == "ssh":
        if not parts.hostname or not parts.path.startswith("/"):
            raise InputError(f"socket {url!r}: expected ssh://[user@]host[:port]/path/to/admin.sock")
        return SocketAddress(url, "ssh", path=unquote(parts.path), host=parts.hostname,
                             port=parts.port or 22, user=parts.username or "root")
    raise InputError(f"socket {url!r}: scheme must be unix://, tcp:// or ssh://")


def open_transport(url: str, *, ssh: SshOptions | None = None, timeout: float = 5.0) -> Transport:
    """Builds the transport for a socket URL.

    Args:
        url: ``unix:///path``, ``tcp://host:port`` or ``ssh://[user@]host[:port]/path``.
        ssh: SSH options for ``ssh://`` URLs.
        timeout: seconds for connecting and reading.

    Example:
        >>> open_transport("unix:///run/haproxy/admin.sock").url
        'unix:///run/haproxy/admin.sock'
    """
    addr = parse_socket_url(url)
    if addr.scheme == "unix":
        return UnixTransport(url, addr.path, timeout)
    if addr.scheme == "tcp":
        return TcpTransport(url, addr.host, addr.port, timeout)
    return SshTransport(url, addr.user, addr.host, addr.port, addr.path, ssh or SshOptions())
