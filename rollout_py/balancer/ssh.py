"""The admin socket of an LB host reached over SSH (paramiko): host keys checked against
known_hosts, one connection per LB host, and every runtime API command through one long-lived
exec channel to a relay on the LB host (``RELAY``), which opens the socket with socat once per
command and frames each answer with an end line. The fleet lease shares the connection code.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shlex
import socket
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rollout_py.errors import BalancerError, BalancerUnreachable

if TYPE_CHECKING:
    import paramiko


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


def load_host_keys(keys: paramiko.HostKeys, path: str, name: str) -> None:
    """Adds to ``keys`` the keys ``path`` (a known_hosts file) holds for ``name`` (``host`` or
    ``[host]:port``), plain or hashed, the first of each type: what paramiko's own loading
    would let the connection find. paramiko's loading checks each line against all lines
    before it (quadratic: a known_hosts of a few thousand hosts costs seconds of CPU at each
    connection); this reads each line once.

    Example:
        >>> import paramiko
        >>> keys = paramiko.HostKeys()
        >>> load_host_keys(keys, "/dev/null", "lb2")
        >>> len(keys)
        0
    """
    import paramiko

    with open(path, encoding="utf-8") as lines:
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                entry = paramiko.hostkeys.HostKeyEntry.from_line(line, number)
            except paramiko.SSHException:  # a line paramiko would skip too
                continue
            if entry is None or not any(
                    h == name or (h.startswith("|1|")
                                  and paramiko.HostKeys.hash_host(name, h) == h)
                    for h in entry.hostnames):
                continue
            known = keys.lookup(name)
            if known is None or entry.key.get_name() not in known:
                keys.add(name, entry.key.get_name(), entry.key)


@functools.cache
def _transport_class() -> type[paramiko.Transport]:
    import paramiko

    class Transport(paramiko.Transport):
        _active_check_timeout = 1.0

    return Transport


def _transport(sock: Any, /, **kwargs: Any) -> paramiko.Transport:
    """paramiko's Transport (made with what SSHClient.connect hands its factory), its thread
    waking once a second when nothing comes in, not ten times: it wakes only to see whether
    the connection was closed, and closing does not wait on it (``stop_thread`` returns once
    the socket is closed). At 0.1 s an idle connection cost the controller ~1 ms of CPU a
    second per LB connection (the relay's and the lease's), for the whole deploy: work that
    grew with the deploy's length, not with what it did."""
    return _transport_class()(sock, **kwargs)


def ssh_connect(user: str, host: str, port: int, options: SshOptions) -> paramiko.SSHClient:
    """Opens an SSH connection to an LB host with host-key checking on (unknown keys are refused).

    Shared by the ssh:// transport and the fleet lease, so both reach an LB host the same way.

    Example:
        >>> client = ssh_connect("root", "lb2", 22, SshOptions(known_hosts="kh"))  # doctest: +SKIP
        >>> client.exec_command("true")  # doctest: +SKIP
    """
    import paramiko  # deferred: only SSH users pay for importing paramiko

    client = paramiko.SSHClient()
    name = host if port == 22 else f"[{host}]:{port}"  # as paramiko looks it up
    if options.known_hosts:
        load_host_keys(client.get_host_keys(), options.known_hosts, name)
    else:
        with contextlib.suppress(FileNotFoundError):  # as paramiko's load_system_host_keys
            load_host_keys(client.get_host_keys(), os.path.expanduser("~/.ssh/known_hosts"),
                           name)
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
            transport_factory=_transport,
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


# Runs on the LB host for the life of an SshTransport: per command line read from stdin, one
# socat connection to the admin socket ($1), then the answer and a line "\n<token> <socat's
# status> <its stderr>" that ends it (the token is random per channel, so no answer holds it),
# written together by one printf: one SSH packet per answer where it fits (a packet of its own
# for the end line cost the controller ~0.1 ms more per command, most of it paramiko's reading
# thread). The answer is kept whole: the status printed after it keeps $(...) from stripping
# its trailing newlines. socat's stderr goes to a file of the relay's own, removed at its exit.
RELAY = """t=$(mktemp) || exit 1
trap 'rm -f "$t"' EXIT
trap 'exit 1' HUP INT TERM
n='
'
while IFS= read -r l; do
  o=$(printf '%s\\n' "$l" | socat -t 5 - UNIX-CONNECT:"$1" 2>"$t"; printf '\\n%s' "$?")
  e=
  [ -s "$t" ] && e=$(tr '\\n' ' ' < "$t")
  printf '%s\\n%s %s %s\\n' "${{o%"$n"*}}" {token} "${{o##*"$n"}}" "$e"
done"""


class SshTransport:
    """The admin socket on a remote LB host, reached with paramiko and ``socat`` over SSH.

    One SSH connection is opened lazily and reused: commands go through one long-lived exec
    channel running ``RELAY`` (a channel per command cost the controller ~2 ms of CPU and
    ~50 ms each); ``exec`` opens a channel of its own for other remote commands.
    """

    def __init__(self, url: str, user: str, host: str, port: int, path: str,
                 options: SshOptions) -> None:
        self.url = url
        self._user, self._host, self._port, self._path = user, host, port, path
        self._options = options
        self._client: paramiko.SSHClient | None = None
        self._relay: paramiko.Channel | None = None
        self._marker = b""
        self._lock = threading.Lock()

    def _connected(self) -> paramiko.SSHClient:
        if self._client is None:
            self._client = ssh_connect(self._user, self._host, self._port, self._options)
        return self._client

    def exec(self, remote: str, stdin_text: str) -> tuple[int, str, str]:
        """Runs ``remote`` (a shell command line) on the LB host over the shared connection,
        feeding it ``stdin_text``: (exit status, stdout, stderr)."""
        import paramiko

        with self._lock:
            try:
                client = self._connected()
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
        import paramiko

        if "\n" in command:
            raise BalancerError(f"{self.url}: a runtime API command is one line: {command!r}")
        with self._lock:
            try:
                relay = self._relay_channel()
                relay.sendall(command.encode() + b"\n")
                out, status, err = self._answer(relay)
            except (OSError, paramiko.SSHException) as exc:
                self.close_locked()
                raise BalancerUnreachable(f"{self.url}: {exc}") from exc
        if status != 0:
            # socat could not connect to the socket on the LB host.
            raise BalancerUnreachable(f"{self.url}: socat exited {status}: "
                                      f"{err or 'no message'}")
        return out

    def _relay_channel(self) -> paramiko.Channel:
        import paramiko

        relay = self._relay
        if relay is not None and (relay.closed or relay.exit_status_ready()
                                  or not relay.get_transport().is_active()):
            self.close_locked()  # gone between commands (nothing was sent): open it again
        if self._relay is None:
            transport = self._connected().get_transport()
            if transport is None:
                raise paramiko.SSHException("the SSH connection is closed")
            token = secrets.token_hex(16)
            channel = transport.open_session(timeout=self._options.timeout)
            channel.settimeout(self._options.timeout)
            channel.exec_command("exec sh -c " + shlex.quote(RELAY.format(token=token))
                                 + " rollout-relay " + shlex.quote(self._path))
            self._relay, self._marker = channel, f"\n{token} ".encode()
        assert isinstance(self._relay, paramiko.Channel)
        return self._relay

    def _answer(self, relay: paramiko.Channel) -> tuple[str, int, str]:
        """Reads one answer up to its marker line: (answer, socat's status, its stderr)."""
        buf = bytearray()
        seen, at = 0, -1  # bytes searched for the marker so far; where it starts
        while True:
            if at < 0:  # a marker cut by the last chunk starts at most len - 1 before it
                at = buf.find(self._marker, max(0, seen - len(self._marker) + 1))
            if at >= 0:  # then its line (status, stderr) may still be on its way
                line_end = buf.find(b"\n", at + len(self._marker))
                if line_end >= 0:
                    line = buf[at + len(self._marker):line_end].decode(errors="replace")
                    status, _, err = line.partition(" ")
                    if not status.isdigit():
                        raise OSError(f"unexpected line from the relay: {line[:200]!r}")
                    return buf[:at].decode(errors="replace"), int(status), err.strip()
            seen = len(buf)
            data = relay.recv(65536)
            if not data:
                why = relay.recv_stderr(4096).decode(errors="replace").strip()
                raise OSError(f"the command channel closed{': ' + why if why else ''}")
            buf += data

    def close_locked(self) -> None:
        client, self._client, self._relay = self._client, None, None
        if client is not None:
            client.close()

    def close(self) -> None:
        with self._lock:
            self.close_locked()
