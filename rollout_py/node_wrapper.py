"""Runs on an execution node (sent as ``python3 -c``; standard library only): starts
``ansible-runner worker`` and ties it to the controller's connection.

It hands the worker the transmit stream on stdin (its JSON lines and base64 zip) up to its
``{"eof": true}`` line, then keeps reading its own stdin, which the controller holds open for
the whole run. When that ends (the controller cancelled, died, or the connection dropped) the
worker's process group gets SIGTERM (ansible-runner then cancels its ansible-playbook), and
SIGKILL 10 s later. The worker's stdout is this process's: the stream goes straight back.
The worker's Ansible runs get the rollout_lifeline plugin (shipped with the run) armed on the
worker's pid, so they die with it, module processes included, as local runs die with the
controller.

Usage: python3 -c "$(cat node_wrapper.py)" ANSIBLE-RUNNER worker --private-data-dir DIR ...
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from typing import IO


def _forward(src: IO[bytes], dst: IO[bytes]) -> bool:
    """Copies the transmit stream to ``dst`` through its eof line; False if it ended early."""
    while True:
        line = src.readline()
        if not line:
            return False
        dst.write(line)
        try:
            data = json.loads(line)
        except ValueError:
            return False
        if "zipfile" in data:  # base64 of that many bytes follows, without a newline
            left = 4 * ((int(data["zipfile"]) + 2) // 3)
            while left:
                chunk = src.read(min(left, 1 << 20))
                if not chunk:
                    return False
                dst.write(chunk)
                left -= len(chunk)
        elif "eof" in data:
            return True


def _stop(child: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# rollout_py._lifeline.ENV_VAR: Ansible's runs under the worker die with it (its parent).
LIFELINE = "ROLLOUT_CONTROLLER_PID"


def main(argv: list[str]) -> int:
    # The worker is the shell exec'd: its pid is $$, which its Ansible runs inherit as theirs.
    child = subprocess.Popen(["/bin/sh", "-c", f'{LIFELINE}=$$; export {LIFELINE}; exec "$@"',
                              "sh", *argv], stdin=subprocess.PIPE, start_new_session=True)
    src = sys.stdin.buffer
    assert child.stdin is not None
    complete = _forward(src, child.stdin)
    child.stdin.close()
    if not complete:
        _stop(child)
        return 1

    def watch() -> None:
        while src.read(65536):
            pass
        if child.poll() is None:
            _stop(child)

    threading.Thread(target=watch, daemon=True).start()
    return child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
