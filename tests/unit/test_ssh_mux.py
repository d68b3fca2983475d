"""Closing a deploy's SSH masters through their control protocol (rollout_py.ssh_mux), with a
stand-in master on a Unix socket that answers as OpenSSH's does (PROTOCOL.mux), and what
close_ssh_masters does when the answer is not a master's. A real master is closed in the lab
tests (no SSH master of a deploy is left after it)."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollout_py import procs
from rollout_py.ssh_mux import MuxError, terminate_master

HELLO, TERMINATE, OK, DENIED = 0x00000001, 0x10000005, 0x80000001, 0x80000002


def packet(*words: int, tail: bytes = b"") -> bytes:
    body = struct.pack(f">{len(words)}I", *words) + tail
    return struct.pack(">I", len(body)) + body


def read_packet(conn: socket.socket) -> tuple[int, ...]:
    size = struct.unpack(">I", conn.recv(4, socket.MSG_WAITALL))[0]
    body = conn.recv(size, socket.MSG_WAITALL)
    return struct.unpack(f">{size // 4}I", body[:size - size % 4])


class Master:
    """Listens on ``path``; answers a hello with ``hello`` and a terminate with ``answer``
    (None: closes the socket, as a master exiting at once does). Records what it read."""

    def __init__(self, path: Path, hello: bytes, answer: bytes | None) -> None:
        self.got: list[tuple[int, ...]] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.hello, self.answer = hello, answer
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            self.got.append(read_packet(conn))
            conn.sendall(self.hello)
            if not conn.recv(4, socket.MSG_PEEK):
                return  # the client gave up after the hello
            self.got.append(read_packet(conn))
            if self.answer is not None:
                conn.sendall(self.answer)

    def close(self) -> None:
        self.thread.join(5)
        self.server.close()


@pytest.fixture
def sock(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "cp-host"


@pytest.mark.parametrize("answer", [packet(OK, 1), None], ids=["ok", "closed"])
def test_says_hello_then_asks_the_master_to_exit(sock: Path, answer: bytes | None) -> None:
    master = Master(sock, packet(HELLO, 4, tail=b"\0\0\0\0"), answer)
    terminate_master(sock)
    master.close()
    assert master.got == [(HELLO, 4), (TERMINATE, 1)]


@pytest.mark.parametrize(("hello", "answer", "asked"), [
    (packet(HELLO, 3), packet(OK, 1), False),  # another protocol version: nothing asked
    (packet(0x80000003, 0), packet(OK, 1), False),  # not a hello
    (packet(HELLO, 4), packet(DENIED, 1, tail=b"\0\0\0\x06denied"), True),
], ids=["version", "no-hello", "denied"])
def test_an_answer_that_is_not_a_masters_ok_raises(sock: Path, hello: bytes, answer: bytes,
                                                   asked: bool) -> None:
    master = Master(sock, hello, answer)
    with pytest.raises(MuxError):
        terminate_master(sock)
    master.close()
    assert master.got == [(HELLO, 4), (TERMINATE, 1)] if asked else [(HELLO, 4)]


def test_close_ssh_masters_falls_back_to_ssh_o_exit_and_skips_stale_sockets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[list[str]] = []
    monkeypatch.setattr("rollout_py.procs.subprocess.run",
                        lambda argv, **kw: ran.append(argv))
    refusing = tmp_path / "refusing"
    master = Master(refusing, packet(HELLO, 4), packet(DENIED, 1))
    stale = tmp_path / "stale"  # a socket nobody listens on any more
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as gone:
        gone.bind(str(stale))
    plain = tmp_path / "not-a-socket"
    plain.write_text("")
    good = tmp_path / "good"
    answering = Master(good, packet(HELLO, 4), packet(OK, 1))
    procs.close_ssh_masters([refusing, stale, plain, good])
    master.close()
    answering.close()
    assert ran == [["ssh", "-o", f"ControlPath={refusing}", "-O", "exit", "host"]]
    assert answering.got == [(HELLO, 4), (TERMINATE, 1)]


