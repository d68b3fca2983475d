"""Asks an OpenSSH multiplexing master to exit, as ``ssh -O exit`` does, without starting ssh.

A deploy ends by closing the SSH masters (ControlPersist) its Ansible runs opened, one per
host: one ``ssh -O exit`` process each cost the controller a fork and an exec, and the machine
an ssh start, per host. This speaks the master's own control protocol (OpenSSH's
PROTOCOL.mux, version 4) over its socket instead: a hello each way, then MUX_C_TERMINATE,
answered by MUX_S_OK (or the socket closing as the master exits).
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

_VERSION = 4
_HELLO = 0x00000001
_TERMINATE = 0x10000005
_OK = 0x80000001
_MAX_PACKET = 256 * 1024  # a hello with extensions is far smaller


class MuxError(Exception):
    """The socket's other end does not speak the protocol as expected."""


def _packet(kind: int, value: int) -> bytes:
    body = struct.pack(">II", kind, value)
    return struct.pack(">I", len(body)) + body


def _read_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("the master closed the socket")
        data += chunk
    return data


def _read_packet(sock: socket.socket) -> tuple[int, bytes]:
    (size,) = struct.unpack(">I", _read_exact(sock, 4))
    if not 4 <= size <= _MAX_PACKET:
        raise MuxError(f"packet of {size} bytes")
    body = _read_exact(sock, size)
    (kind,) = struct.unpack(">I", body[:4])
    return kind, body[4:]


def terminate_master(path: Path, timeout: float = 5.0) -> None:
    """Asks the master listening on ``path`` to exit. Raises OSError (no master there: a
    stale socket is refused), MuxError or EOFError (not a master's answer)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(_packet(_HELLO, _VERSION))
        kind, body = _read_packet(sock)
        if kind != _HELLO or struct.unpack(">I", body[:4])[0] != _VERSION:
            raise MuxError(f"unexpected hello 0x{kind:08x}")
        sock.sendall(_packet(_TERMINATE, 1))
        try:
            kind, body = _read_packet(sock)
        except EOFError:
            return  # the master exited before answering
        if kind != _OK:
            reason = body[8:].decode(errors="replace") if len(body) > 8 else ""
            raise MuxError(f"the master refused to exit (0x{kind:08x}) {reason}".rstrip())
