"""Byte transports to one HAProxy admin socket: a local unix socket, TCP, or SSH to the LB host.

Each call sends one command and reads the answer until HAProxy closes the stream (the runtime
API's non-interactive mode), so one command can never run into the next.
"""

from __future__ import annotations

import shlex
import socket
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol
from urllib.parse import unquote, urlsplit

from rollout_py.errors import BalancerUnreachable, InputError

if TYPE_CHECKING:
    import paramiko


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
class SshOptions:
    """How to reach LB hosts over SSH: key, known_hosts (host keys are always checked)."""

    key_filename: str | None = None
    known_hosts: str | None = None
    bind_address: str | None = None
    timeout: float = 10.0


def _host_key_hint(exc: Exception, host: str, port: int, options: SshOptions) -> str | None:
    """What to set when paramiko refuses an LB host's key (unknown, or not the one recorded)."""
    import paramiko

    entry = host if port == 22 else f"[{host}]:{port}"
    if isinstance(exc, paramiko.BadHostKeyException):
        where = options.known_hosts or "~/.ssh/known_hosts"
        return (f"the key {entry} presents is not the one in {where}; if the LB host was "
                "reinstalled, replace its line there (ssh-keygen -R, then add the new key)")
    if "not found in known_hosts" not in str(exc):
        return None
    if options.known_hosts:
        return (f"add {entry}'s host key to {options.known_hosts} (the UserKnownHostsFile "
                "haproxy.ssh_config names for it), e.g. from the LB host's "
                "/etc/ssh/ssh_host_ed25519_key.pub")
    return ("set haproxy.ssh_config in the spec to an ssh_config file with a "
            f"'Host {host}' entry whose UserKnownHostsFile holds {entry}'s host key "
            "(IdentityFile and BindAddress are read there too); without it only "
            "~/.ssh/known_hosts is searched")


def ssh_connect(user: str, host: str, port: int, options: SshOptions) -> paramiko.SSHClient:
    """Opens an SSH connection to an LB host with host-key checking on (unknown keys are refused).

    Shared by the ssh:// transport and the fleet lease, so both reach an LB host the same way.

    Example:
        >>> client = ssh_connect("root", "lb2", 22, SshOptions(known_hosts="kh"))  # doctest: +SKIP
        >>> client.exec_command("true")  # doctest: +SKIP
    """
    import paramiko  # deferred: only SSH users pay for importing paramiko

    client = paramiko.SSHClient()
    if options.known_hosts:
        client.load_host_keys(options.known_hosts)
    else:
        client.load_system_host_keys()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    sock = None
    try:
        if options.bind_address:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(options.timeout)
            sock.bind((options.bind_address, 0))
            sock.connect((host, port))
        client.connect(
            host, port=port, username=user, key_filename=options.key_filename,
            timeout=options.timeout, allow_agent=False,
            look_for_keys=options.key_filename is None, sock=sock,
        )
    except paramiko.SSHException as exc:
        client.close()
        if sock is not None:
            sock.close()
        hint = _host_key_hint(exc, host, port, options)
        if hint:
            raise paramiko.SSHException(f"{exc}: {hint}") from exc
        raise
    except BaseException:
        client.close()
        if sock is not None:
            sock.close()
        raise
    return client


class SshTransport:
    """The admin socket on a remote LB host, reached with paramiko and ``socat`` over SSH.

    One SSH connection is opened lazily and reused for every command (one exec channel each).
    """

    def __init__(self, url: str, user: str, host: str, port: int, path: str,
                 options: SshOptions) -> None:
        self.url = url
        self._user, self._host, self._port, self._path = user, host, port, path
        self._options = options
        self._client: object | None = None
        self._lock = threading.Lock()

    def _connect(self) -> object:
        return ssh_connect(self._user, self._host, self._port, self._options)

    def exec(self, remote: str, stdin_text: str) -> tuple[int, str, str]:
        """Runs ``remote`` (a shell command line) on the LB host over the shared connection,
        feeding it ``stdin_text``: (exit status, stdout, stderr)."""
        import paramiko

        with self._lock:
            try:
                if self._client is None:
                    self._client = self._connect()
                client = self._client
                assert isinstance(client, paramiko.SSHClient)
                stdin, stdout, stderr = client.exec_command(remote, timeout=self._options.timeout)
                stdin.write(stdin_text)
                stdin.channel.shutdown_write()
                out = stdout.read().decode(errors="replace")
                status = stdout.channel.recv_exit_status()
                err = stderr.read().decode(errors="replace").strip()
            except (OSError, paramiko.SSHException) as exc:
                self.close_locked()
                raise BalancerUnreachable(f"{self.url}: {exc}") from exc
        return status, out, err

    def send(self, command: str) -> str:
        remote = f"socat -t 5 - UNIX-CONNECT:{shlex.quote(self._path)}"
        status, out, err = self.exec(remote, command + "\n")
        if status != 0:
            # socat could not connect to the socket on the LB host.
            raise BalancerUnreachable(f"{self.url}: socat exited {status}: "
                                      f"{err or 'no message'}")
        return str(out)

    def close_locked(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()  # type: ignore[attr-defined]

    def close(self) -> None:
        with self._lock:
            self.close_locked()


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
