"""The relay an ssh:// LB's commands go through: the shell loop itself (run here with sh and socat
against a local unix socket that answers like HAProxy), and the controller's reading of the
framed answers however the channel cuts them into chunks."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from rollout_py.balancer.ssh import RELAY, SshOptions, SshTransport

TOKEN = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def admin_socket(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A unix socket answering one command per connection, as HAProxy's non-interactive
    mode does: "show two" gets two lines, anything else an empty answer."""
    path = tmp_path / "admin.sock"
    seen: list[str] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                command = data.decode().strip()
                seen.append(command)
                conn.sendall(b"line one\nline two\n\n" if command == "show two" else b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path, seen
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)  # wakes the accept() (Linux)
        server.close()
        thread.join(5)
        assert not thread.is_alive()


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is set up by tools/dev.sh")
def test_the_relay_frames_each_answer_with_its_status(admin_socket: tuple[Path, list[str]],
                                                      tmp_path: Path) -> None:
    path, seen = admin_socket
    script = RELAY.format(token=TOKEN)
    commands = "show two\nset server app/a state ready\nshow two\n"
    for target, expect_ok in ((path, True), (tmp_path / "missing.sock", False)):
        proc = subprocess.run(["sh", "-c", script, "rollout-relay", str(target)],
                              input=commands, capture_output=True, text=True, timeout=30,
                              check=True)
        marker = f"\n{TOKEN} "
        parts = proc.stdout.split(marker)
        assert len(parts) == 4 and parts[-1].endswith("\n")
        answers = [parts[0]] + [p.split("\n", 1)[1] for p in parts[1:-1]]
        statuses = [p.split("\n", 1)[0] for p in parts[1:]]
        if expect_ok:
            assert answers == ["line one\nline two\n\n", "\n", "line one\nline two\n\n"]
            assert [s.split(" ", 1)[0] for s in statuses] == ["0", "0", "0"]
        else:  # socat's status and its message, on the marker line
            assert answers == ["", "", ""]
            assert all(s.startswith("1 ") and "No such file" in s for s in statuses)
    assert seen == ["show two", "set server app/a state ready", "show two"]


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is set up by tools/dev.sh")
def test_an_answer_and_its_end_line_leave_the_relay_in_one_write(
        admin_socket: tuple[Path, list[str]]) -> None:
    """One write per answer, so the SSH channel carries it in one packet (one for the answer
    and one for its end line cost paramiko's thread twice the work). A pipe's write of at most
    PIPE_BUF bytes is atomic: the first read after each command gets the answer whole."""
    path, _ = admin_socket
    with subprocess.Popen(["sh", "-c", RELAY.format(token=TOKEN), "rollout-relay", str(path)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        for command in ("show two", "set server app/a state ready") * 5:
            proc.stdin.write(f"{command}\n".encode())
            proc.stdin.flush()
            first = os.read(proc.stdout.fileno(), 65536).decode()
            answer = "line one\nline two\n\n" if command == "show two" else "\n"
            assert first == f"{answer}\n{TOKEN} 0 \n"
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0


def test_the_relay_leaves_no_file_behind(admin_socket: tuple[Path, list[str]],
                                         tmp_path: Path) -> None:
    if shutil.which("socat") is None:
        pytest.skip("socat is set up by tools/dev.sh")
    path, _ = admin_socket
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    subprocess.run(["sh", "-c", RELAY.format(token=TOKEN), "rollout-relay", str(path)],
                   input="show two\n", capture_output=True, text=True, timeout=30, check=True,
                   env={**os.environ, "TMPDIR": str(tmp)})
    assert list(tmp.iterdir()) == []


class ChunkedChannel:
    """Hands back the given bytes in chunks of ``size``, then b"" (closed)."""

    def __init__(self, data: bytes, size: int) -> None:
        self.chunks = [data[i:i + size] for i in range(0, len(data), size)]

    def recv(self, _n: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    def recv_stderr(self, _n: int) -> bytes:
        return b"sh: 1: socat: not found\n"


def transport() -> SshTransport:
    t = SshTransport("ssh://root@lb2/run/haproxy/admin.sock", "root", "lb2", 22,
                     "/run/haproxy/admin.sock", SshOptions())
    t._marker = f"\n{TOKEN} ".encode()
    return t


@pytest.mark.parametrize("size", [1, 2, 7, 33, 4096])
def test_an_answer_is_read_up_to_its_marker_however_it_is_cut(size: int) -> None:
    body = b"1\n# be_id be_name\n3 app\n\n"
    data = body + f"\n{TOKEN} 0 \n".encode()
    out = transport()._answer(cast(Any, ChunkedChannel(data, size)))
    assert out == (body.decode(), 0, "")
    failed = f"\n{TOKEN} 1 socat: E connect(...): No such file or directory \n".encode()
    assert transport()._answer(cast(Any, ChunkedChannel(failed, size))) == (
        "", 1, "socat: E connect(...): No such file or directory")


def test_a_channel_that_closes_before_the_marker_says_why() -> None:
    with pytest.raises(OSError, match="the command channel closed: sh: 1: socat: not found"):
        transport()._answer(cast(Any, ChunkedChannel(b"partial answer\n", 4)))


def test_a_marker_line_without_a_status_is_an_error_not_a_crash() -> None:
    garbled = f"answer\n{TOKEN} ?? \n".encode()
    with pytest.raises(OSError, match="unexpected line from the relay: '\\?\\? '"):
        transport()._answer(cast(Any, ChunkedChannel(garbled, 5)))


def test_a_command_of_more_than_one_line_is_refused_before_anything_is_sent() -> None:
    from rollout_py.errors import BalancerError

    t = transport()
    with pytest.raises(BalancerError, match="a runtime API command is one line"):
        t.send("show stat\nshutdown sessions server app/a")
    assert t._relay is None and t._client is None  # no connection was even opened


def test_an_lb_connections_thread_wakes_once_a_second_when_idle(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """paramiko's reading thread wakes at its socket's timeout only to see whether the
    connection was closed: ssh_connect's connections use 1 s, not paramiko's 0.1 s."""
    import paramiko

    from rollout_py.balancer import ssh

    seen: dict[str, Any] = {}

    def connect(self: paramiko.SSHClient, *args: Any, **kwargs: Any) -> None:
        seen.update(kwargs)
        raise paramiko.SSHException("stop here")

    monkeypatch.setattr(paramiko.SSHClient, "connect", connect)
    with pytest.raises(paramiko.SSHException, match="stop here"):
        ssh.ssh_connect("root", "lb2", 22, SshOptions(known_hosts=os.devnull))
    mine, theirs = socket.socketpair()
    with mine, theirs:
        transport = seen["transport_factory"](mine, disabled_algorithms=None)
        assert isinstance(transport, paramiko.Transport)
        assert mine.gettimeout() == 1.0
        assert paramiko.Transport(theirs).sock.gettimeout() == 0.1  # paramiko's own, as was
