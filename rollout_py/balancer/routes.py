"""Blue/green routing on every LB: which backend a map key (``live``, ``preview``) sends
traffic to, read from HAProxy and switched on all LBs with the map file written beside.

A switch prepares the new map content on every LB first (``prepare map`` + ``add map @ver``,
unseen by requests), then commits LB after LB (the LBs disagree only between the first and
the last commit), then writes each LB's map file (temp file + rename on the LB's host), so a
reload keeps the switch. A commit refused on some LB undoes the commits before it.
"""

from __future__ import annotations

import os
import re
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from rollout_py import failpoints
from rollout_py.atomic import write_atomic
from rollout_py.balancer.maps import (
    commit_map,
    parse_show_map,
    prepare_map,
    render_map_file,
    validate_map_ref,
    validate_map_word,
)
from rollout_py.balancer.runtime import RuntimeAPI, ServerState, StatRow
from rollout_py.balancer.ssh import SshTransport
from rollout_py.balancer.transports import UnixTransport
from rollout_py.errors import BalancerError, BalancerUnreachable

_LISTED = re.compile(r"^(-?[0-9]+) \((.*?)\) ")


@dataclass(frozen=True, slots=True)
class LbSwitch:
    """One LB's part of a switch."""

    url: str
    entries: dict[str, str]  # the map's entries after it
    at: float  # time.time() when its commit answered
    file: str
    file_error: str | None = None


@dataclass(frozen=True, slots=True)
class SwitchOutcome:
    switched: tuple[LbSwitch, ...] = ()
    failed: dict[str, str] = field(default_factory=dict)  # url -> why (nothing left switched)

    @property
    def disagreement(self) -> float:
        times = [s.at for s in self.switched]
        return round(max(times) - min(times), 4) if len(times) > 1 else 0.0


class Router(Protocol):
    """The routing seam the engine's blue/green steps use (a double replaces it in tests)."""

    @property
    def urls(self) -> Sequence[str]: ...

    def maps(self) -> dict[str, str]: ...
    def entries(self) -> dict[str, dict[str, str]]: ...
    def switch(self, changes: Mapping[str, str]) -> SwitchOutcome: ...
    def states(self, backend: str) -> dict[str, dict[str, ServerState]]: ...
    def stats(self, backend: str, servers: Sequence[str]) -> dict[str, dict[str, StatRow]]: ...


def listed_maps(api: RuntimeAPI) -> list[str]:
    """The map files HAProxy holds (``show map`` without an argument)."""
    out = []
    for line in api.raw("show map").splitlines():
        m = _LISTED.match(line.strip())
        if m:
            out.append(m.group(2))
    return out


def resolve_map(api: RuntimeAPI, name: str) -> str:
    """``name`` itself when absolute, else the one map HAProxy lists whose file name it is."""
    if name.startswith("/"):
        return validate_map_ref(name)
    found = [p for p in listed_maps(api) if os.path.basename(p) == name]
    if len(found) != 1:
        what = "no map" if not found else f"{len(found)} maps ({', '.join(found)})"
        raise BalancerError(f"{api.url}: blue_green.map {name!r}: HAProxy has {what} of that "
                            "file name; name the map by its absolute path")
    return validate_map_ref(found[0])


def write_lb_file(api: RuntimeAPI, path: str, text: str) -> None:
    """Writes ``text`` to ``path`` on the LB's host, atomically (temp file + rename): a local
    LB (unix socket) directly, a remote one over its SSH connection. A TCP socket reaches no
    file: refused."""
    transport = api.transport
    if isinstance(transport, UnixTransport):
        try:
            write_atomic(Path(path), text)
        except OSError as exc:
            raise BalancerError(f"{api.url}: cannot write {path}: {exc.strerror or exc}"
                                ) from exc
        return
    if isinstance(transport, SshTransport):
        remote_tmp = shlex.quote(f"{os.path.dirname(path)}/.{os.path.basename(path)}"
                                 ".rollout-tmp")
        status, _, err = transport.exec(f"cat > {remote_tmp} && mv -f {remote_tmp} "
                                        f"{shlex.quote(path)}",
                                        text)
        if status != 0:
            raise BalancerError(f"{api.url}: cannot write {path}: {err or f'exit {status}'}")
        return
    raise BalancerError(f"{api.url}: the map file cannot be written through a TCP socket; "
                        "use a unix:// or ssh:// socket for blue/green")


class MapRouter:
    """The pools map on every LB (one RuntimeAPI each)."""

    def __init__(self, apis: Sequence[RuntimeAPI], map_name: str, *,
                 write: Callable[[RuntimeAPI, str, str], None] = write_lb_file) -> None:
        self.apis = list(apis)
        self.map_name = map_name
        self._write = write
        self._maps: dict[str, str] | None = None

    @property
    def urls(self) -> Sequence[str]:
        return [a.url for a in self.apis]

    def maps(self) -> dict[str, str]:
        """LB url -> the map's path as HAProxy on that LB knows it (resolved once)."""
        if self._maps is None:
            self._maps = {a.url: resolve_map(a, self.map_name) for a in self.apis}
        return dict(self._maps)

    def entries(self) -> dict[str, dict[str, str]]:
        maps = self.maps()
        return {a.url: parse_show_map(a.raw(f"show map {maps[a.url]}")) for a in self.apis}

    def states(self, backend: str) -> dict[str, dict[str, ServerState]]:
        return {a.url: {s.name: s for s in a.servers_state(backend)} for a in self.apis}

    def stats(self, backend: str, servers: Sequence[str]) -> dict[str, dict[str, StatRow]]:
        wanted = set(servers)
        return {a.url: {r.name: r for r in a.stat(backend)
                        if r.name in wanted and r.proxy == backend} for a in self.apis}

    def switch(self, changes: Mapping[str, str]) -> SwitchOutcome:
        """Sets ``changes`` (key -> backend) on every LB; see the module's docstring."""
        for key, value in changes.items():
            validate_map_word("key", key)
            validate_map_word("value", value)
        maps = self.maps()
        before: dict[str, dict[str, str]] = {}
        prepared: dict[str, int] = {}
        failed: dict[str, str] = {}
        for api in self.apis:
            try:
                before[api.url] = parse_show_map(api.raw(f"show map {maps[api.url]}"))
                missing = [k for k in changes if k not in before[api.url]]
                if missing:
                    raise BalancerError(f"map {maps[api.url]} has no key "
                                        f"{', '.join(missing)}")
                prepared[api.url] = prepare_map(api, maps[api.url],
                                               {**before[api.url], **changes})
            except BalancerError as exc:
                failed[api.url] = str(exc)
        if failed:  # nothing committed anywhere: the prepared versions are never used
            return SwitchOutcome(failed=failed)
        committed: list[tuple[RuntimeAPI, float]] = []
        for api in self.apis:
            try:
                commit_map(api, maps[api.url], prepared[api.url])
                committed.append((api, time.time()))
                if len(committed) < len(self.apis):  # a test's kill -9 between two LBs
                    failpoints.hit("between-lb-commits")
            except BalancerError as exc:
                failed[api.url] = str(exc)
                self._undo([a for a, _ in committed], maps, before)
                return SwitchOutcome(failed=failed)
        out = []
        for api, at in committed:
            after = {**before[api.url], **changes}
            error = None
            try:
                self._write(api, maps[api.url], render_map_file(after))
            except BalancerError as exc:
                error = str(exc)
            out.append(LbSwitch(api.url, after, at, maps[api.url], error))
        return SwitchOutcome(switched=tuple(out))

    def _undo(self, apis: Sequence[RuntimeAPI], maps: Mapping[str, str],
              before: Mapping[str, Mapping[str, str]]) -> None:
        """Puts the entries back on LBs already committed (best effort: an LB that does not
        answer keeps the switch, and the caller reports the whole switch as failed)."""
        for api in apis:
            try:
                commit_map(api, maps[api.url], prepare_map(api, maps[api.url],
                                                            before[api.url]))
            except (BalancerError, BalancerUnreachable):
                continue
