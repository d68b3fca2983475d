"""A window's traffic: HAProxy's cumulative per-server counters differenced between two samples.

Counters are cumulative and go back to 0 when HAProxy reloads: any cumulative counter that went
down, on any LB, makes the window a ``Reset`` (no verdict; the next window starts from the new
values). Deltas are kept per LB and summed per server over the LBs.

A server missing on an LB:

* in both samples (that LB does not have it, or not in this backend): the LB contributes
  nothing for it; the window records the pair in ``WindowDeltas.missing``;
* in one sample only (it appeared or vanished between them, as a reload with a new
  configuration does): that LB's traffic for it in the window is unknown, so the window is a
  ``Reset`` naming the LB and server.

The averages (qtime, ctime, rtime, ttime, in ms over the last 1024 requests) are not
cumulative: a window's ``Counters`` holds the *current* sample's averages beside the deltas, and
a group's latency weighs each LB's average for each server by that server's requests on that LB
in the window.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rollout_py.balancer.runtime import STAT_AVERAGES, STAT_COUNTERS, StatRow

CUMULATIVE: tuple[str, ...] = STAT_COUNTERS
AVERAGES: tuple[str, ...] = STAT_AVERAGES
RESPONSES = ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other")
_SHOWN = 5  # items a reset's detail names before "and N more"


@dataclass(frozen=True, slots=True)
class Counters:
    """One server's counters on one LB (or a window's differences of them; see the module)."""

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

    @property
    def requests(self) -> int:
        """Responses of every class (HAProxy 2.6 has no per-server req_tot)."""
        return (self.hrsp_1xx + self.hrsp_2xx + self.hrsp_3xx + self.hrsp_4xx + self.hrsp_5xx
                + self.hrsp_other)

    @property
    def errors(self) -> int:
        """5xx responses, plus response errors (eresp) and connection errors (econ)."""
        return self.hrsp_5xx + self.eresp + self.econ

    @classmethod
    def of(cls, row: StatRow) -> Counters:
        """A ``show stat`` row's counters."""
        return cls(**{f: getattr(row, f) for f in (*CUMULATIVE, *AVERAGES)})

    def since(self, prev: Counters) -> Counters:
        """The cumulative counters minus ``prev``'s, with this sample's averages."""
        return dataclasses.replace(self, **{f: getattr(self, f) - getattr(prev, f)
                                            for f in CUMULATIVE})

    def went_down(self, prev: Counters) -> list[str]:
        """The cumulative counters lower than in ``prev``, as ``name before -> now``."""
        return [f"{f} {getattr(prev, f)} -> {getattr(self, f)}" for f in CUMULATIVE
                if getattr(self, f) < getattr(prev, f)]

    def as_dict(self) -> dict[str, int]:
        return {f: getattr(self, f) for f in (*CUMULATIVE, *AVERAGES)}


Sample = dict[str, dict[str, Counters]]  # LB url -> server -> Counters


def sample(stats: Mapping[str, Mapping[str, StatRow]]) -> Sample:
    """``Balancer.stats`` output (LB url -> server -> StatRow) as Counters."""
    return {lb: {name: Counters.of(row) for name, row in per.items()}
            for lb, per in stats.items()}


def raw_of(smp: Mapping[str, Mapping[str, Counters]], servers: Iterable[str] | None = None
           ) -> dict[str, dict[str, dict[str, int]]]:
    """A sample as plain dicts (LB url -> server -> counter -> value), for the journal."""
    keep = None if servers is None else set(servers)
    return {lb: {s: c.as_dict() for s, c in per.items() if keep is None or s in keep}
            for lb, per in smp.items()}


@dataclass(frozen=True, slots=True)
class Group:
    """Servers judged together in one window: their traffic summed over servers and LBs."""

    servers: tuple[str, ...]
    requests: int
    errors: int
    error_rate: float | None  # errors / requests; None without requests
    latency: dict[str, float | None]  # qtime..ttime, request-weighted; None without requests

    def as_dict(self) -> dict[str, Any]:
        return {"servers": list(self.servers), "requests": self.requests, "errors": self.errors,
                "error_rate": self.error_rate, "latency": dict(self.latency)}


@dataclass(frozen=True, slots=True)
class WindowDeltas:
    """The counters of one window, per LB and server (see the module on averages)."""

    servers: tuple[str, ...]  # the servers asked for, in order
    by_lb: dict[str, dict[str, Counters]]  # LB url -> server -> window counters
    raw: Sample  # the window's closing sample (cumulative)
    missing: tuple[tuple[str, str], ...] = ()  # (LB url, server) absent from both samples

    def group(self, servers: Sequence[str]) -> Group:
        """The servers' requests, errors, error rate and request-weighted latency."""
        requests = errors = 0
        weighted = dict.fromkeys(AVERAGES, 0.0)
        for per in self.by_lb.values():
            for name in dict.fromkeys(servers):
                c = per.get(name)
                if c is None:
                    continue
                requests, errors = requests + c.requests, errors + c.errors
                for f in AVERAGES:
                    weighted[f] += getattr(c, f) * c.requests
        return Group(
            servers=tuple(servers), requests=requests, errors=errors,
            error_rate=errors / requests if requests else None,
            latency={f: (weighted[f] / requests if requests else None) for f in AVERAGES},
        )

    def totals(self, servers: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
        """Server -> its cumulative counters' deltas summed over the LBs, with requests and
        errors (a server no LB has reads all 0)."""
        out: dict[str, dict[str, int]] = {}
        for name in self.servers if servers is None else servers:
            sums = dict.fromkeys(CUMULATIVE, 0)
            for per in self.by_lb.values():
                if (c := per.get(name)) is not None:
                    for f in CUMULATIVE:
                        sums[f] += getattr(c, f)
            sums["requests"] = sum(sums[f] for f in RESPONSES)
            sums["errors"] = sums["hrsp_5xx"] + sums["eresp"] + sums["econ"]
            out[name] = sums
        return out


@dataclass(frozen=True, slots=True)
class Reset:
    """A window without a verdict: counters went down (a reload) or a server came or went."""

    detail: str
    raw: Sample  # the closing sample: the next window starts from it


def window_deltas(prev: Mapping[str, Mapping[str, Counters]],
                  cur: Mapping[str, Mapping[str, Counters]],
                  servers: Iterable[str]) -> WindowDeltas | Reset:
    """The window between two samples for ``servers``, or a Reset naming what broke it.

    Example:
        >>> a = {"lb1": {"app01": Counters(hrsp_2xx=100, rtime=10)}}
        >>> b = {"lb1": {"app01": Counters(hrsp_2xx=150, hrsp_5xx=2, rtime=12)}}
        >>> w = window_deltas(a, b, ["app01"])
        >>> w.group(["app01"]).requests, w.group(["app01"]).latency["rtime"]
        (52, 12.0)
        >>> window_deltas(b, a, ["app01"]).detail  # doctest: +ELLIPSIS
        'counters went down (HAProxy reloaded?): lb1 app01: hrsp_2xx 150 -> 100, ...'
    """
    names = tuple(dict.fromkeys(servers))
    down: list[str] = []
    gaps: list[str] = []
    missing: list[tuple[str, str]] = []
    by_lb: dict[str, dict[str, Counters]] = {}
    for lb in dict.fromkeys([*prev, *cur]):
        before, now = prev.get(lb, {}), cur.get(lb, {})
        per = by_lb.setdefault(lb, {})
        for name in names:
            b, n = before.get(name), now.get(name)
            if b is None and n is None:
                missing.append((lb, name))
            elif b is None:
                gaps.append(f"{lb} {name} appeared")
            elif n is None:
                gaps.append(f"{lb} {name} vanished")
            elif lowered := n.went_down(b):
                down.append(f"{lb} {name}: {', '.join(lowered)}")
            else:
                per[name] = n.since(b)
    parts = []
    if down:
        parts.append(f"counters went down (HAProxy reloaded?): {_some(down)}")
    if gaps:
        parts.append(f"servers changed between samples (no counters to subtract): "
                     f"{_some(gaps)}")
    if parts:
        return Reset(detail="; ".join(parts), raw=_plain(cur))
    return WindowDeltas(servers=names, by_lb=by_lb, raw=_plain(cur), missing=tuple(missing))


def _some(items: Sequence[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return "; ".join(items[:_SHOWN]) + more


def _plain(smp: Mapping[str, Mapping[str, Counters]]) -> Sample:
    return {lb: dict(per) for lb, per in smp.items()}
