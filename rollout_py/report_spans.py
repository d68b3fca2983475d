"""Time spans of a deploy's report: each host's state, its cell on every LB, its weights, and
(when a lab watch ran) what the LBs themselves said, all as contiguous spans over the deploy.

Host states and LB cells come from replaying the journal through the live view's fold
(rollout_py.live_view): the report shows the same states the terminal showed during the deploy.
A host's time out of rotation is the union, over the LBs, of its spans there that take it out:
DRAIN, MAINT, or weight 0.

Times are seconds since ``t0`` (the deploy's first event).

Example:
    >>> from rollout_py import events as ev
    >>> def at(cls, ts, **kw):
    ...     return cls(deploy_id="d", seq=0, ts=ts, **kw)
    >>> journal = [
    ...     at(ev.DeployStarted, 0.0, name="f", version="2", batches=(("app1",),), skipped={}),
    ...     at(ev.BatchStarted, 1.0, batch=1, hosts=("app1",)),
    ...     at(ev.DrainStarted, 1.0, batch=1, servers=("app1",),
    ...        recorded={"lb1": {"app1": ["READY", 1]}}),
    ...     at(ev.ServersDisabled, 3.0, batch=1, servers=("app1",)),
    ...     at(ev.ServersEnabled, 9.0, batch=1, servers=("app1",)),
    ... ]
    >>> spans = replay(journal, t0=0.0, end=10.0)
    >>> [(s.state, s.start, s.end) for s in spans.lbs["lb1"]["app1"]]
    [('READY 1', 0.0, 1.0), ('DRAIN', 1.0, 3.0), ('MAINT', 3.0, 9.0), ('READY 1', 9.0, 10.0)]
    >>> out_of_rotation(spans.lbs, "app1")
    8.0
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rollout_py import events as ev
from rollout_py import live_view as lv


@dataclass(frozen=True, slots=True)
class Span:
    """One state held from ``start`` to ``end`` (seconds since the deploy's first event)."""

    state: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Replayed:
    """The spans of a journal: host -> states; LB -> host -> cell; LB -> server -> weights."""

    hosts: dict[str, list[Span]]
    lbs: dict[str, dict[str, list[Span]]]
    weights: dict[str, dict[str, list[tuple[float, int]]]] = field(default_factory=dict)
    weights_changed: bool = False  # a traffic or warm-up step set weights (a chart is worth it)


def _spans(changes: Sequence[tuple[float, str]], end: float) -> list[Span]:
    """Contiguous spans from (time, state) changes, the last one held until ``end``."""
    out: list[Span] = []
    for i, (start, state) in enumerate(changes):
        stop = changes[i + 1][0] if i + 1 < len(changes) else max(end, start)
        if out and out[-1].state == state:
            out[-1] = Span(state, out[-1].start, stop)
        else:
            out.append(Span(state, start, stop))
    return out


def _note(changes: dict[str, list[tuple[float, str]]], key: str, t: float, state: str) -> None:
    seq = changes.setdefault(key, [])
    if not seq or seq[-1][1] != state:
        seq.append((t, state))


def replay(events: Iterable[ev.Event], *, t0: float, end: float,
           consecutive: int | None = None) -> Replayed:
    """Every host's live-view state and LB cells over time, and every server's weight per LB."""
    state = lv.LiveState(consecutive=consecutive)
    hosts: dict[str, list[tuple[float, str]]] = {}
    cells: dict[str, dict[str, list[tuple[float, str]]]] = {}
    weights: dict[str, dict[str, list[tuple[float, int]]]] = {}
    changed = False
    for e in events:
        before = state.hosts
        state = lv.apply(state, e)
        t = round(e.ts - t0, 3)
        for name, view in state.hosts.items():
            if before.get(name) is view:
                continue
            _note(hosts, name, t, view.state)
            for lb, cell in view.lbs.items():
                _note(cells.setdefault(lb, {}), name, t, cell)
        found = _weights_of(e)
        changed = changed or isinstance(e, ev.WeightsSet | ev.WarmupStep)
        for lb, per in found.items():
            for server, weight in per.items():
                series = weights.setdefault(lb, {}).setdefault(server, [])
                if not series or series[-1][1] != weight:
                    series.append((t, int(weight)))
    horizon = round(end - t0, 3)
    lbs: dict[str, dict[str, list[Span]]] = {}
    for lb, per_host in cells.items():
        lbs[lb] = {}
        for host, seq in per_host.items():
            first = state.recorded.get(host, {}).get(lb)
            if first is not None and seq[0][0] > 0:  # as recorded, since the deploy's start
                seq = [(0.0, first), *seq]
            lbs[lb][host] = _spans(seq, horizon)
    return Replayed(hosts={h: _spans(seq, horizon) for h, seq in hosts.items()}, lbs=lbs,
                    weights=weights, weights_changed=changed)


def _weights_of(e: ev.Event) -> Mapping[str, Mapping[str, Any]]:
    """LB -> server -> weight, as an event records or sets them."""
    match e:
        case ev.WeightsRecorded() | ev.WeightsSet() | ev.WeightsRestored() | ev.WarmupStep():
            return e.weights
        case ev.StateRecorded() | ev.DrainStarted():
            return {lb: {s: aw[1] for s, aw in per.items()} for lb, per in e.recorded.items()}
    return {}


def takes_out(cell: str) -> bool:
    """Whether an LB cell ("DRAIN", "MAINT", "READY 1", "READY 0") keeps traffic off."""
    admin, _, weight = cell.partition(" ")
    return admin in ("DRAIN", "MAINT") or weight.strip() == "0"


def merged(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Overlapping or touching intervals joined, in order."""
    out: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def out_intervals(lbs: Mapping[str, Mapping[str, Sequence[Span]]], host: str
                  ) -> list[tuple[float, float]]:
    """When ``host`` was out of rotation on at least one LB."""
    return merged((s.start, s.end) for per in lbs.values() for s in per.get(host, ())
                  if takes_out(s.state))


def out_of_rotation(lbs: Mapping[str, Mapping[str, Sequence[Span]]], host: str) -> float:
    """Seconds ``host`` was out of rotation on at least one LB."""
    return round(sum(end - start for start, end in out_intervals(lbs, host)), 3)


def watch_spans(samples: Iterable[Mapping[str, Any]], *, t0: float, end: float
                ) -> tuple[dict[str, dict[str, list[Span]]], int]:
    """LB -> server -> what the LB said (``ADMIN/OP weight W``, ``ABSENT``) over the deploy,
    from a lab watch's records (``rollout lab watch --records``); and how many samples were
    errors. Samples outside the deploy are left out, but the state at its start is kept."""
    changes: dict[str, dict[str, list[tuple[float, str]]]] = {}
    errors = 0
    for sample in sorted(samples, key=lambda s: float(s.get("ts", 0.0))):
        if float(sample["ts"]) > end:
            continue
        if sample.get("error"):
            errors += float(sample["ts"]) >= t0
            continue
        t = round(max(float(sample["ts"]) - t0, 0.0), 3)
        per = changes.setdefault(str(sample["lb"]), {})
        for server, s in dict(sample.get("servers") or {}).items():
            what = (str(s.get("admin")) if s.get("admin") == "ABSENT" else
                    f"{s.get('admin')}/{s.get('op')} weight {s.get('weight')}")
            seq = per.setdefault(server, [])
            if seq and seq[-1][0] == t and t == 0.0:  # before the start: the latest holds
                seq[-1] = (t, what)
            elif not seq or seq[-1][1] != what:
                seq.append((t, what))
    horizon = round(end - t0, 3)
    return ({lb: {server: _spans(seq, horizon) for server, seq in per.items()}
             for lb, per in changes.items()}, errors)
