"""A typed client of HAProxy's runtime API: validated commands, parsed answers, detected errors."""

from __future__ import annotations

import csv
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from rollout_py.balancer.transports import Transport
from rollout_py.errors import BalancerError, BalancerUnreachable, UnsafeNameError

# HAProxy accepts letters, digits, '-', '_', '.' and ':' in proxy and server names
# (src/tools.c invalid_char). Anything else, above all ';' and newlines, could end the command
# and start a second one, so it is refused before it reaches a socket.
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")

# Server admin state bits (include/haproxy/server-t.h).
ADMF_FMAINT, ADMF_IMAINT, ADMF_CMAINT = 0x01, 0x02, 0x04
ADMF_FDRAIN, ADMF_IDRAIN = 0x08, 0x10
ADMF_RMAINT, ADMF_HMAINT = 0x20, 0x40
_MAINT_MASK = ADMF_FMAINT | ADMF_IMAINT | ADMF_CMAINT | ADMF_RMAINT | ADMF_HMAINT
_DRAIN_MASK = ADMF_FDRAIN | ADMF_IDRAIN

OP_STATES = {0: "STOPPED", 1: "STARTING", 2: "RUNNING", 3: "STOPPING"}
# A server's admin state as ``show servers state`` reports it, and as ``set server`` sets it.
AdminState = Literal["READY", "DRAIN", "MAINT"]
SetState = Literal["ready", "drain", "maint"]


# Several state changes go on one CLI line, separated by "; " (HAProxy runs each): at most
# this many, well inside the CLI's line buffer (tune.bufsize, 16 kB by default).
_PER_LINE = 64
_CHANGE = re.compile(r"state (ready|drain|maint)|weight (25[0-6]|2[0-4]\d|1?\d?\d)")

def set_state_of(admin: AdminState) -> SetState:
    """The ``set server ... state`` word that puts a server back in ``admin``."""
    words: dict[AdminState, SetState] = {"READY": "ready", "DRAIN": "drain", "MAINT": "maint"}
    return words[admin]


def admin_state(text: str) -> AdminState:
    """READY, DRAIN or MAINT from text (a journal's recorded state); ValueError otherwise."""
    for state in ("READY", "DRAIN", "MAINT"):
        if text == state:
            return state
    raise ValueError(f"not an admin state: {text!r}")

# First words of the runtime API's plain-text error answers.
_ERROR_PREFIXES = (
    "unknown command", "no such", "can't find", "permission denied", "require ",
    "invalid ", "'set server", "unexpected", "missing ", "expects ", "not ", "error",
)


def validate_name(kind: str, name: str) -> str:
    """Returns ``name`` if HAProxy would accept it as a proxy/server name, else raises.

    Example:
        >>> validate_name("server", "app01")
        'app01'
    """
    if not _NAME.fullmatch(name):
        raise UnsafeNameError(
            f"{kind} name {name!r} is not a valid HAProxy name "
            "(allowed: letters, digits, '-', '_', '.', ':')"
        )
    return name


@dataclass(frozen=True, slots=True)
class ServerState:
    """One line of ``show servers state``."""

    backend: str
    name: str
    address: str
    op_state: int
    admin_state: int
    weight: int
    port: int | None

    @property
    def running(self) -> bool:
        """HAProxy's checks (or presumption) say the server is up."""
        return self.op_state == 2

    @property
    def maint(self) -> bool:
        return bool(self.admin_state & _MAINT_MASK)

    @property
    def drain(self) -> bool:
        return bool(self.admin_state & _DRAIN_MASK)

    @property
    def admin(self) -> AdminState:
        """READY, DRAIN or MAINT, as ``set server ... state`` names them."""
        if self.maint:
            return "MAINT"
        return "DRAIN" if self.drain else "READY"

    @property
    def in_rotation(self) -> bool:
        """New requests can reach this server."""
        return self.running and not self.maint and not self.drain and self.weight > 0

    @property
    def op(self) -> str:
        return OP_STATES.get(self.op_state, str(self.op_state))


# Per-server counters of ``show stat`` that the canary analysis reads (rollout_py.analysis):
# cumulative since HAProxy started (a reload resets them to 0) ...
STAT_COUNTERS = ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other",
                 "eresp", "econ", "srv_abrt", "cli_abrt", "stot")
# ... and averages in ms over the server's last 1024 requests (not cumulative).
STAT_AVERAGES = ("qtime", "ctime", "rtime", "ttime")


@dataclass(frozen=True, slots=True)
class StatRow:
    """The fields of one ``show stat`` row that rollout_py reads (counters: empty cells are 0)."""

    proxy: str
    name: str
    scur: int
    status: str
    weight: int
    check_status: str
    hrsp_1xx: int = 0
    hrsp_2xx: int = 0
    hrsp_3xx: int = 0
    hrsp_4xx: int = 0
    hrsp_5xx: int = 0
    hrsp_other: int = 0
    eresp: int = 0
    econ: int = 0
    srv_abrt: int = 0
    cli_abrt: int = 0
    stot: int = 0
    qtime: int = 0
    ctime: int = 0
    rtime: int = 0
    ttime: int = 0


def _check_error(command: str, answer: str) -> None:
    first = answer.strip().splitlines()[0].strip().lower() if answer.strip() else ""
    if first.startswith(_ERROR_PREFIXES):
        raise BalancerError(f"HAProxy refused {command!r}: {answer.strip()}")


# The fields of a ``show servers state`` line that ServerState reads, in its order (the port,
# last, may be absent).
_STATE_FIELDS = ("be_name", "srv_name", "srv_addr", "srv_op_state", "srv_admin_state",
                 "srv_uweight", "srv_port")


# A line of ``show servers state`` as parsed before, under the same header: (header, line).
KnownLines = Mapping[tuple[str, str], ServerState]


def parse_servers_state(answer: str, only: Collection[str] | None = None, *,
                        known: KnownLines | None = None,
                        into: dict[tuple[str, str], ServerState] | None = None
                        ) -> tuple[ServerState, ...]:
    """Parses the answer of ``show servers state [backend]``; with ``only``, just those
    servers' lines (the others are split no further than their name: the maint guard reads a
    batch's servers ten times a second from backends of hundreds). A line found in ``known``
    (an earlier answer's, see ``into``) is not parsed again; ``into`` gets every line of this
    answer that was read.

    Example:
        >>> text = "1\\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state "\\
        ...     "srv_uweight srv_iweight srv_port\\n3 app 1 app01 10.0.0.1 2 0 1 1 8080\\n"
        >>> parse_servers_state(text)[0].in_rotation
        True
    """
    lines = [ln for ln in answer.splitlines() if ln.strip()]
    header: list[str] | None = None
    at: list[int] = []  # where each field ServerState needs is in a line
    missing = ""  # a field the header lacks
    rows: list[ServerState] = []
    header_line = ""
    for line in lines:
        if line.startswith("#"):
            header_line = line
            header = line.lstrip("#").split()
            at = [header.index(k) if k in header else -1 for k in _STATE_FIELDS]
            missing = next((k for k, i in zip(_STATE_FIELDS[:6], at, strict=False) if i < 0), "")
            continue
        if header is None:
            continue  # the format version line
        try:
            if missing:
                raise KeyError(missing)
            if only is not None and line.split(None, at[1] + 1)[at[1]] not in only:
                continue
            row = known.get((header_line, line)) if known is not None else None
            if row is None:
                values = line.split()
                port = values[at[6]] if 0 <= at[6] < len(values) else "-"
                row = ServerState(
                    backend=values[at[0]], name=values[at[1]], address=values[at[2]],
                    op_state=int(values[at[3]]), admin_state=int(values[at[4]]),
                    weight=int(values[at[5]]), port=int(port) if port.isdigit() else None)
            if into is not None:
                into[(header_line, line)] = row
            rows.append(row)
        except (KeyError, ValueError, IndexError) as exc:
            raise BalancerError(f"unexpected 'show servers state' line: {line!r}") from exc
    if header is None and lines:
        raise BalancerError(f"unexpected 'show servers state' answer: {answer.strip()[:200]!r}")
    return tuple(rows)


def parse_stat_csv(answer: str) -> tuple[StatRow, ...]:
    """Parses ``show stat`` CSV into rows (frontends and backends included). Fields the
    answer lacks, and empty cells (a counter that does not apply), read as 0.

    Example:
        >>> parse_stat_csv("# pxname,svname,qcur,qmax,scur,status,weight,check_status\\n"
        ...                "app,app01,0,0,3,UP,1,L7OK\\n")[0].scur
        3
        >>> row = parse_stat_csv("# pxname,svname,hrsp_2xx,hrsp_5xx,rtime,econ\\n"
        ...                      "app,app01,120,3,14,\\n")[0]
        >>> (row.hrsp_2xx, row.hrsp_5xx, row.rtime, row.econ)
        (120, 3, 14, 0)
    """
    text = answer.lstrip()
    if not text.startswith("# "):
        raise BalancerError(f"unexpected 'show stat' answer: {answer.strip()[:200]!r}")
    reader = csv.DictReader(text[2:].splitlines())
    rows = []
    for rec in reader:
        try:
            numbers = {f: int(rec.get(f) or 0) for f in ("scur", "weight", *STAT_COUNTERS,
                                                         *STAT_AVERAGES)}
        except ValueError as exc:
            raise BalancerError(f"unexpected 'show stat' row: {rec!r}") from exc
        rows.append(StatRow(
            proxy=rec.get("pxname", ""), name=rec.get("svname", ""),
            status=rec.get("status", ""), check_status=rec.get("check_status", ""), **numbers,
        ))
    return tuple(rows)


class RuntimeAPI:
    """Commands to one HAProxy, over any transport. Every name is validated before sending.

    Example:
        >>> from rollout_py.balancer import open_transport
        >>> api = RuntimeAPI(open_transport("unix:///run/haproxy/admin.sock"))  # doctest: +SKIP
        >>> api.servers_state("app")  # doctest: +SKIP
    """

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        # The lines of the last ``show servers state`` answer, parsed. The maint guard reads a
        # batch's servers ten times a second; a server's line changes about once a second
        # (srv_time_since_last_change), so most lines were parsed the time before.
        self._known: KnownLines = {}

    @property
    def url(self) -> str:
        return self.transport.url

    def raw(self, command: str) -> str:
        """Sends one command (refusing any that holds ';' or a newline); errors raise."""
        if ";" in command or "\n" in command or "\r" in command:
            raise UnsafeNameError(
                f"refusing to send {command!r}: ';' or a newline would chain commands")
        answer = self.transport.send(command)
        _check_error(command, answer)
        return answer

    def servers_state(self, backend: str, only: Collection[str] | None = None
                      ) -> tuple[ServerState, ...]:
        """The backend's servers (with ``only``, just those)."""
        validate_name("backend", backend)
        answer = self.raw(f"show servers state {backend}")
        read: dict[tuple[str, str], ServerState] = {}
        rows = parse_servers_state(answer, only, known=self._known, into=read)
        self._known = read  # replaced whole: another thread may be reading the one before
        return rows

    def stat(self, backend: str | None = None) -> tuple[StatRow, ...]:
        if backend is None:
            return parse_stat_csv(self.raw("show stat"))
        validate_name("backend", backend)
        return parse_stat_csv(self.raw(f"show stat {backend} 4 -1"))

    def set_state(self, backend: str, server: str, state: SetState) -> None:
        if state not in ("ready", "drain", "maint"):
            raise ValueError(f"state must be ready, drain or maint, not {state!r}")
        self._set(backend, server, f"state {state}")

    def set_weight(self, backend: str, server: str, weight: int) -> None:
        if not 0 <= weight <= 256:
            raise ValueError(f"weight must be 0..256, not {weight}")
        self._set(backend, server, f"weight {weight}")

    def shutdown_sessions(self, backend: str, server: str) -> None:
        validate_name("backend", backend)
        validate_name("server", server)
        self._expect_empty(f"shutdown sessions server {backend}/{server}")

    def set_many(self, backend: str, changes: Sequence[tuple[str, str]]) -> None:
        """Several ``set server`` changes (server, "state maint" / "weight 10") in as few round
        trips as the CLI's line allows ("a; b; c", up to 64 a line); each is validated alone.
        An answer that is not empty (some change refused) is followed by each change of that
        line alone, so the error names the ones refused (a change sent again is a no-op); every
        line is tried, then one BalancerError lists every refusal."""
        validate_name("backend", backend)
        commands = []
        for server, what in changes:
            validate_name("server", server)
            if not _CHANGE.fullmatch(what):
                raise ValueError(f"not a server change: {what!r}")
            commands.append(f"set server {backend}/{server} {what}")
        refused: list[str] = []
        for start in range(0, len(commands), _PER_LINE):
            line = commands[start:start + _PER_LINE]
            if len(line) == 1 or self.transport.send("; ".join(line)).strip():
                for command in line:
                    try:
                        self._expect_empty(command)
                    except BalancerUnreachable:
                        raise
                    except BalancerError as exc:
                        refused.append(str(exc))
        if refused:
            raise BalancerError("; ".join(refused))

    def _set(self, backend: str, server: str, what: str) -> None:
        validate_name("backend", backend)
        validate_name("server", server)
        self._expect_empty(f"set server {backend}/{server} {what}")

    def _expect_empty(self, command: str) -> None:
        answer = self.raw(command)
        if answer.strip():  # state changes answer nothing on success
            raise BalancerError(f"HAProxy refused {command!r}: {answer.strip()}")

    def admin_level(self) -> bool:
        """True if this socket accepts admin-level commands (probed with a harmless one)."""
        answer = self.transport.send("show cli level")
        return answer.strip().lower() == "admin"

    def close(self) -> None:
        self.transport.close()
