#!/usr/bin/python
# Copyright: rollout_py contributors
# Apache License 2.0 (see the project's LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: rollout_haproxy_server
short_description: Drain, disable or enable one HAProxy server through the runtime API
description:
  - Sets the administrative state (C(ready), C(drain) or C(maint)) and optionally the weight
    of one server of one HAProxy backend, by talking to HAProxy's admin socket (a unix
    socket) directly. Neither socat nor any collection is needed; only the Python standard
    library on the host where the task runs.
  - Runs on the host that has the admin socket. For a remote load balancer use
    C(delegate_to) with the LB host; for an LB on the controller, delegate to C(localhost).
  - Reads C(show servers state <backend>) first and reports C(changed) only when the
    forced admin state (bit 0x01 FMAINT, bit 0x08 FDRAIN of C(srv_admin_state)) or the user
    weight (C(srv_uweight)) actually changes.
  - Backend and server names are checked against HAProxy's name rules before anything is
    sent, so a name can never carry a second command (HAProxy splits commands on C(;) and
    newlines).
  - Sends one command per connection and reads the answer until HAProxy closes it.
    HAProxy's plain-text error answers (for example C(No such server.) or
    C(Can't find backend.)) make the module fail with that text.
version_added: "0.1.0"
author: rollout_py
options:
  socket:
    description:
      - Path of HAProxy's admin socket (C(stats socket ... level admin)) on the host where
        the task runs.
    type: path
    required: true
  backend:
    description:
      - Backend holding the server. Letters, digits, C(-), C(_), C(.) and C(:) only.
    type: str
    required: true
  server:
    description:
      - Server name in the backend. Letters, digits, C(-), C(_), C(.) and C(:) only.
    type: str
    required: true
  state:
    description:
      - C(ready) puts the server back in rotation, C(drain) stops new sessions while
        current ones finish, C(maint) takes it out entirely (and stops its health checks).
      - These are HAProxy's forced states (C(set server <be>/<srv> state ...)); states
        inherited from a tracked server, the configuration or DNS are reported, not changed.
    type: str
    required: true
    choices: [ready, drain, maint]
  weight:
    description:
      - Absolute weight to set (C(set weight)), 0 to 256. Set before the state changes.
      - Unset leaves the weight as it is.
    type: int
  wait:
    description:
      - With C(state=drain) or C(state=maint), wait until the server has no current
        sessions (C(scur) of C(show stat)).
      - With C(state=ready), wait until HAProxy reports the server running
        (C(srv_op_state) 2 in C(show servers state)). Note that HAProxy presumes a server
        UP as soon as it leaves C(maint), before any check has run; probe the application
        yourself before enabling it.
      - Not done in check mode.
    type: bool
    default: false
  wait_timeout:
    description:
      - Seconds to wait before giving up (see I(shutdown_sessions)).
    type: float
    default: 30
  wait_interval:
    description:
      - Seconds between two polls while waiting.
    type: float
    default: 0.5
  shutdown_sessions:
    description:
      - When draining (or entering maint) with I(wait) and sessions are still open after
        I(wait_timeout), send C(shutdown sessions server <be>/<srv>) and succeed instead of
        failing.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    details: Reads the server's state and reports what would change; sends no change, does
      not wait.
  diff_mode:
    support: full
notes:
  - The socket must be at admin level; a lower level answers C(Permission denied), which
    the module reports.
  - One command per connection (HAProxy's non-interactive mode), so one answer can never be
    mistaken for another.
seealso:
  - name: HAProxy management guide, runtime API
    description: Commands this module sends.
    link: https://docs.haproxy.org/2.6/management.html#9.3
"""

EXAMPLES = r"""
- name: Drain this host on the local LB and wait for its sessions to end
  rollout_haproxy_server:
    socket: /run/haproxy/admin.sock
    backend: app
    server: "{{ inventory_hostname }}"
    state: drain
    wait: true
    wait_timeout: 60
  delegate_to: localhost

- name: Drain on a remote LB; cut what is still open after 30 s
  rollout_haproxy_server:
    socket: /run/haproxy/admin.sock
    backend: app
    server: "{{ inventory_hostname }}"
    state: drain
    wait: true
    shutdown_sessions: true
  delegate_to: lb2

- name: Put it back in rotation with weight 10 and wait until HAProxy says UP
  rollout_haproxy_server:
    socket: /run/haproxy/admin.sock
    backend: app
    server: "{{ inventory_hostname }}"
    state: ready
    weight: 10
    wait: true
  delegate_to: lb2
"""

RETURN = r"""
before:
  description: The server as read before any change.
  returned: always (also on most failures, once the server was found)
  type: dict
  contains:
    admin_state:
      description: C(READY), C(DRAIN) or C(MAINT), from every admin bit (forced or not).
      type: str
      sample: READY
    admin_state_bits:
      description: C(srv_admin_state) as HAProxy reports it.
      type: int
      sample: 0
    weight:
      description: C(srv_uweight), the user weight.
      type: int
      sample: 1
    op_state:
      description: C(STOPPED), C(STARTING), C(RUNNING) or C(STOPPING).
      type: str
      sample: RUNNING
    op_state_code:
      description: C(srv_op_state) (2 = running).
      type: int
      sample: 2
    sessions:
      description: Current sessions (C(scur) of C(show stat)).
      type: int
      sample: 0
  sample:
    admin_state: READY
    admin_state_bits: 0
    weight: 1
    op_state: RUNNING
    op_state_code: 2
    sessions: 3
after:
  description: The server as read after the change and the wait (in check mode, the
    predicted admin state and weight).
  returned: always
  type: dict
  sample:
    admin_state: DRAIN
    admin_state_bits: 8
    weight: 1
    op_state: RUNNING
    op_state_code: 2
    sessions: 0
commands:
  description: State-changing commands sent (or, in check mode, that would be sent).
  returned: always
  type: list
  elements: str
  sample: ["set server app/app01 state drain"]
waited:
  description: Seconds spent waiting.
  returned: always
  type: float
  sample: 0.51
sessions_shutdown:
  description: True if open sessions were cut with C(shutdown sessions server).
  returned: always
  type: bool
  sample: false
"""

# Ansible modules keep their imports below the documentation strings.
import re  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

# HAProxy's rule for proxy and server names (src/tools.c invalid_char): letters, digits,
# '-', '_', '.', ':'. ';' or a newline would end the command and start another one.
NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")

# srv_admin_state bits (include/haproxy/server-t.h)
ADMF_FMAINT = 0x01  # forced maint (set server ... state maint)
ADMF_IMAINT = 0x02  # inherited from a tracked server
ADMF_CMAINT = 0x04  # "disabled" in the configuration
ADMF_FDRAIN = 0x08  # forced drain (set server ... state drain)
ADMF_IDRAIN = 0x10  # inherited drain
ADMF_RMAINT = 0x20  # DNS resolution failed
ADMF_HMAINT = 0x40  # address not set
MAINT_MASK = ADMF_FMAINT | ADMF_IMAINT | ADMF_CMAINT | ADMF_RMAINT | ADMF_HMAINT
DRAIN_MASK = ADMF_FDRAIN | ADMF_IDRAIN
FORCED_MASK = ADMF_FMAINT | ADMF_FDRAIN
# The forced bits each state leaves (srv_adm_set_ready/drain/maint).
FORCED_BITS = {"ready": 0, "drain": ADMF_FDRAIN, "maint": ADMF_FMAINT}
OP_STATES = {0: "STOPPED", 1: "STARTING", 2: "RUNNING", 3: "STOPPING"}

SOCKET_TIMEOUT = 10.0


class HAProxyError(Exception):
    """HAProxy refused a command or could not be reached; the message says which."""


def valid_name(name):
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


def admin_name(bits):
    if bits & MAINT_MASK:
        return "MAINT"
    return "DRAIN" if bits & DRAIN_MASK else "READY"


class Socket:
    """HAProxy's admin socket: one command per connection, answer read until EOF."""

    def __init__(self, path, timeout=SOCKET_TIMEOUT):
        self.path = path
        self.timeout = timeout

    def send(self, command):
        # Names are validated before any command is built; this is the last line of defence.
        if any(ch in command for ch in ";\n\r"):
            raise HAProxyError(
                f"refusing to send {command!r}: ';' or a newline would chain commands")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            try:
                sock.connect(self.path)
            except OSError as exc:
                raise HAProxyError(
                    f"cannot connect to HAProxy admin socket {self.path}: {exc}") from exc
            try:
                sock.sendall(command.encode("ascii") + b"\n")
                chunks = []
                while True:
                    data = sock.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
            except OSError as exc:
                raise HAProxyError(
                    f"HAProxy admin socket {self.path}: {command!r} failed: {exc}") from exc
        finally:
            sock.close()
        return b"".join(chunks).decode("utf-8", "replace")

    def change(self, command):
        """A state-changing command: HAProxy answers nothing on success, an error text else."""
        answer = self.send(command).strip()
        if answer:
            raise HAProxyError(f"HAProxy refused {command!r}: {answer}")


class Server:
    """One server of one backend, read through the runtime API."""

    def __init__(self, sock, backend, server):
        self.sock, self.backend, self.server = sock, backend, server

    @property
    def ref(self):
        return f"{self.backend}/{self.server}"

    def state_row(self):
        """Our server's line of ``show servers state <backend>`` as a dict."""
        command = f"show servers state {self.backend}"
        answer = self.sock.send(command)
        lines = [ln for ln in answer.splitlines() if ln.strip()]
        if len(lines) < 2 or not lines[0].strip().isdigit() or not lines[1].startswith("#"):
            raise HAProxyError(f"HAProxy refused {command!r}: {answer.strip()[:300]}")
        header = lines[1].lstrip("#").split()
        for line in lines[2:]:
            values = dict(zip(header, line.split(), strict=False))
            if values.get("be_name") == self.backend and values.get("srv_name") == self.server:
                try:
                    return {
                        "admin_state_bits": int(values["srv_admin_state"]),
                        "op_state_code": int(values["srv_op_state"]),
                        "weight": int(values["srv_uweight"]),
                    }
                except (KeyError, ValueError) as exc:
                    raise HAProxyError(f"unexpected 'show servers state' line: {line!r}") from exc
        # Not listed: let HAProxy say why in its own words (read-only command).
        probe = f"get weight {self.ref}"
        answer = self.sock.send(probe).strip()
        why = answer or f"not in 'show servers state {self.backend}'"
        raise HAProxyError(f"HAProxy has no server {self.ref}: {why}")

    def sessions(self):
        """``scur`` (current sessions, column 5) of our server's ``show stat`` row."""
        command = f"show stat {self.backend} 4 -1"
        answer = self.sock.send(command)
        text = answer.lstrip()
        if not text.startswith("# "):
            raise HAProxyError(f"HAProxy refused {command!r}: {answer.strip()[:300]}")
        lines = text[2:].splitlines()
        header = lines[0].split(",")
        try:
            px, sv, scur = header.index("pxname"), header.index("svname"), header.index("scur")
        except ValueError as exc:
            raise HAProxyError(f"unexpected 'show stat' header: {lines[0][:300]!r}") from exc
        for line in lines[1:]:
            fields = line.split(",")
            if len(fields) > scur and fields[px] == self.backend and fields[sv] == self.server:
                return int(fields[scur] or 0)
        raise HAProxyError(f"server {self.server} not in 'show stat {self.backend}'")

    def snapshot(self, with_sessions=True):
        row = self.state_row()
        snap = {
            "admin_state": admin_name(row["admin_state_bits"]),
            "admin_state_bits": row["admin_state_bits"],
            "weight": row["weight"],
            "op_state": OP_STATES.get(row["op_state_code"], str(row["op_state_code"])),
            "op_state_code": row["op_state_code"],
        }
        if with_sessions:
            snap["sessions"] = self.sessions()
        return snap


def predicted(before, state, weight):
    bits = (before["admin_state_bits"] & ~FORCED_MASK) | FORCED_BITS[state]
    after = dict(before)
    after["admin_state_bits"] = bits
    after["admin_state"] = admin_name(bits)
    if weight is not None:
        after["weight"] = weight
    return after


def wait_for(predicate, timeout, interval):
    """Polls ``predicate`` until it is true or ``timeout`` passes; returns (ok, seconds)."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if predicate():
            return True, time.monotonic() - start
        if time.monotonic() >= deadline:
            return False, time.monotonic() - start
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))


def run_module():
    module = AnsibleModule(
        argument_spec=dict(
            socket=dict(type="path", required=True),
            backend=dict(type="str", required=True),
            server=dict(type="str", required=True),
            state=dict(type="str", required=True, choices=["ready", "drain", "maint"]),
            weight=dict(type="int"),
            wait=dict(type="bool", default=False),
            wait_timeout=dict(type="float", default=30.0),
            wait_interval=dict(type="float", default=0.5),
            shutdown_sessions=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    result = dict(changed=False, commands=[], waited=0.0, sessions_shutdown=False)

    # Everything is checked before the first byte goes to the socket.
    for kind in ("backend", "server"):
        if not valid_name(p[kind]):
            module.fail_json(msg=f"{kind} name {p[kind]!r} is not a valid HAProxy name "
                                 "(allowed: letters, digits, '-', '_', '.', ':'); nothing was "
                                 "sent", **result)
    if p["weight"] is not None and not 0 <= p["weight"] <= 256:
        module.fail_json(msg=f"weight must be between 0 and 256, not {p['weight']}", **result)
    if p["wait_timeout"] < 0:
        module.fail_json(msg="wait_timeout must be >= 0", **result)
    if p["wait_interval"] <= 0:
        module.fail_json(msg="wait_interval must be > 0", **result)

    srv = Server(Socket(p["socket"]), p["backend"], p["server"])
    state, weight = p["state"], p["weight"]
    try:
        before = srv.snapshot()
    except HAProxyError as exc:
        module.fail_json(msg=str(exc), **result)
    result["before"] = before

    commands = []
    if weight is not None and before["weight"] != weight:
        commands.append(f"set weight {srv.ref} {weight}")
    if before["admin_state_bits"] & FORCED_MASK != FORCED_BITS[state]:
        commands.append(f"set server {srv.ref} state {state}")
    result["commands"] = commands
    result["changed"] = bool(commands)

    if module.check_mode:
        result["after"] = predicted(before, state, weight)
        finish(module, result)

    try:
        for command in commands:
            srv.sock.change(command)
        if p["wait"]:
            wait(module, srv, state, result)
        result["after"] = srv.snapshot()
    except HAProxyError as exc:
        module.fail_json(msg=str(exc), **result)
    finish(module, result)


def wait(module, srv, state, result):
    p = module.params
    timeout, interval = p["wait_timeout"], p["wait_interval"]
    if state == "ready":
        last = {}

        def running():
            last.update(srv.snapshot(with_sessions=False))
            return last["op_state_code"] == 2

        ok, waited = wait_for(running, timeout, interval)
        result["waited"] = round(waited, 3)
        if not ok:
            result["after"] = srv.snapshot()
            module.fail_json(msg=f"{srv.ref} is still {last.get('op_state')} (not RUNNING) after "
                                 f"{waited:.1f} s: HAProxy's checks do not report it UP",
                             **result)
        return
    # drain and maint: wait for the sessions in flight to end.
    ok, waited = wait_for(lambda: srv.sessions() == 0, timeout, interval)
    result["waited"] = round(waited, 3)
    if ok:
        return
    left = srv.sessions()
    if left and p["shutdown_sessions"]:
        command = f"shutdown sessions server {srv.ref}"
        srv.sock.change(command)
        result["commands"].append(command)
        result["sessions_shutdown"] = True
        result["changed"] = True
        # Sessions are killed asynchronously; give HAProxy a moment to account for it.
        wait_for(lambda: srv.sessions() == 0, min(5.0, max(timeout, 1.0)), 0.1)
        return
    if left:
        result["after"] = srv.snapshot()
        module.fail_json(msg=f"{srv.ref} still has {left} session(s) after {waited:.1f} s "
                             "(set shutdown_sessions to cut them)", **result)


def finish(module, result):
    if module._diff and "after" in result:
        keys = ("admin_state", "weight")
        ref = f"{module.params['backend']}/{module.params['server']}"
        result["diff"] = {
            "before": "".join(f"{k}: {result['before'][k]}\n" for k in keys),
            "after": "".join(f"{k}: {result['after'][k]}\n" for k in keys),
            "before_header": ref,
            "after_header": ref,
        }
    module.exit_json(**result)


def main():
    run_module()


if __name__ == "__main__":
    main()
