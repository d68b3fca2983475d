"""One sample of one LB: its servers' states (and, for blue/green pools, its route map).

A sample is one round trip carrying ``show servers state <be>`` and ``show stat <be> 4 -1``
together (the runtime API runs commands separated by ``;`` one after the other on one
connection), so an SSH LB pays for one exec channel per sample, not two. With several backends
(the lab's pools) the round trip chains that pair per backend, then ``show map <map>``: servers
are keyed ``backend/server`` and the map's entries (``live``, ``preview``) come with the
sample.

Example:
    >>> servers = query(api, "app")  # doctest: +SKIP
    >>> servers["app01"].in_rotation  # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rollout_py.balancer.maps import parse_show_map, validate_map_ref
from rollout_py.balancer.runtime import (
    RuntimeAPI,
    parse_servers_state,
    parse_stat_csv,
    validate_name,
)
from rollout_py.errors import BalancerError


@dataclass(frozen=True, slots=True)
class ServerSample:
    """One server's state on one LB at one sample."""

    admin: str  # READY, DRAIN or MAINT
    op: str  # RUNNING, STOPPED, STARTING, STOPPING
    weight: int
    in_rotation: bool
    scur: int | None  # current sessions (None if ``show stat`` had no row for it)

    def describe(self) -> str:
        weight0 = self.weight == 0 and self.admin != "ABSENT"
        return f"{self.admin}/{self.op}" + (" weight 0" if weight0 else "")


ABSENT = ServerSample(admin="ABSENT", op="-", weight=0, in_rotation=False, scur=None)


@dataclass(frozen=True, slots=True)
class Sample:
    """One LB's answer at one moment, or the error that stood in for it."""

    lb: str
    ts: float  # wall clock (time.time()): the midpoint of the round trip
    rtt: float  # seconds the round trip took
    servers: Mapping[str, ServerSample] = field(default_factory=dict)
    error: str | None = None
    maps: Mapping[str, str] = field(default_factory=dict)  # route map entries (pools only)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        data = {"lb": self.lb, "ts": self.ts, "rtt": round(self.rtt, 6), "error": self.error,
                "servers": {name: asdict(s) for name, s in self.servers.items()}}
        if self.maps:  # a single-backend watch's records stay as they were
            data["maps"] = dict(self.maps)
        return data


def server_key(backend: str, server: str) -> str:
    """How a server is named when several backends are watched: ``backend/server``.

    Example:
        >>> server_key("app_blue", "app01")
        'app_blue/app01'
    """
    return f"{backend}/{server}"


def backend_of(key: str, default: str) -> str:
    """The backend part of a ``backend/server`` key (``default`` for a plain server name)."""
    backend, sep, _ = key.partition("/")
    return backend if sep else default


def _servers(backend: str, states_text: str, stat_text: str) -> dict[str, ServerSample]:
    states = parse_servers_state(states_text)
    scur = {row.name: row.scur for row in parse_stat_csv(stat_text) if row.proxy == backend}
    return {s.name: ServerSample(admin=s.admin, op=s.op, weight=s.weight,
                                 in_rotation=s.in_rotation, scur=scur.get(s.name))
            for s in states if s.backend == backend}


def query(api: RuntimeAPI, backend: str) -> dict[str, ServerSample]:
    """Both commands in one round trip; raises BalancerError if either answer is unusable."""
    validate_name("backend", backend)
    # Built from a validated name only, so the ';' chains exactly these two commands.
    answer = api.transport.send(f"show servers state {backend};show stat {backend} 4 -1")
    head, sep, tail = answer.partition("\n# pxname")
    if not sep:
        raise BalancerError(f"{api.url}: unexpected answer: {answer.strip()[:200]!r}")
    return _servers(backend, head, "# pxname" + tail)


def query_pools(api: RuntimeAPI, backends: Sequence[str], map_ref: str | None
                ) -> tuple[dict[str, ServerSample], dict[str, str]]:
    """Every backend's servers (keyed ``backend/server``) and the map's entries, in one round
    trip; raises BalancerError if any answer is unusable.

    Each command's answer ends with an empty line, and ``show map`` comes last, so the answer
    is cut after each backend's ``show stat`` and the rest is the map.
    """
    for backend in backends:
        validate_name("backend", backend)
    commands = [f"show servers state {b};show stat {b} 4 -1" for b in backends]
    if map_ref is not None:
        commands.append(f"show map {validate_map_ref(map_ref)}")
    answer = api.transport.send(";".join(commands))
    servers: dict[str, ServerSample] = {}
    rest = answer
    for backend in backends:
        head, sep, tail = rest.partition("\n# pxname")
        # A refused command answers one line then an empty one: never a header further down.
        if not sep or "\n\n" in head.strip("\n"):
            raise BalancerError(f"{api.url}: unexpected answer for backend {backend}: "
                                f"{answer.strip()[:200]!r}")
        stat, _, rest = tail.partition("\n\n")
        for name, state in _servers(backend, head, "# pxname" + stat).items():
            servers[server_key(backend, name)] = state
    maps = parse_show_map(rest) if map_ref is not None else {}
    return servers, maps
