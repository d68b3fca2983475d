"""Reads lb1's own state of app01 after converge (MAINT, weight 7) and side_effect (drain,
a check-mode enable, enable): READY and UP, weight 7 kept."""

import json
import os
import socket

testinfra_hosts = ["ansible://app"]


def _servers_state() -> dict[str, list[str]]:
    lab = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "lab", "lab.json")
    with open(lab, encoding="utf-8") as fh:
        path = json.load(fh)["lbs"][0]["socket_path"]
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        sock.sendall(b"show servers state app\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    rows = [line.split() for line in answer.decode().splitlines()[2:] if line.strip()]
    return {row[3]: row for row in rows}


def test_app01_is_ready_up_and_kept_its_weight(host):
    row = _servers_state()[host.backend.get_hostname()]
    # srv_op_state 2 = running (UP); srv_admin_state 0 = READY; srv_uweight
    assert (row[5], row[6], row[7]) == ("2", "0", "7")
