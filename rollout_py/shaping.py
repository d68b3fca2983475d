"""Traffic shaping during a deploy: map entries set on every LB at the start, put back at the end.

The spec's ``haproxy.shaping`` names a map and the entries a deploy holds while it runs (e.g.
``heavy shed``); the LB's own config decides what they do (deny a class of clients, change
its priority). The engine calls ``start`` right after ``deploy_started`` (or the resume's
reconcile) and ``finish`` right before ``deploy_finished``, on every path: success, rollback,
abort, interrupt, failure. Each LB's values of the keys are journaled before anything is set
(``shaping_recorded``), so a resume after kill -9 puts back exactly what was there; an entry
someone else changed meanwhile is left as found and reported, never overwritten.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from rollout_py import events as ev
from rollout_py.balancer import maps
from rollout_py.balancer.runtime import RuntimeAPI
from rollout_py.errors import BalancerError, InputError, JournalError, PreflightError
from rollout_py.spec import Spec
from rollout_py.spec_shaping import ShapingSpec

Emit = Callable[..., ev.Event]
ABSENT = ""  # a recorded value for "no such key" (a map value is never empty)


class MapSeam(Protocol):
    """One map on every LB (``RuntimeMaps`` over runtime APIs; ``testing.FakeMaps``)."""

    @property
    def urls(self) -> Sequence[str]: ...

    def show(self, url: str, map_ref: str) -> dict[str, str]: ...
    def put(self, url: str, map_ref: str, key: str, value: str, *, exists: bool) -> None: ...
    def delete(self, url: str, map_ref: str, key: str) -> None: ...


class RuntimeMaps:
    """``MapSeam`` over each LB's runtime API (``show map``, ``set``/``add``/``del map``)."""

    def __init__(self, apis: Sequence[RuntimeAPI]) -> None:
        self._apis = {api.url: api for api in apis}
        self.urls = list(self._apis)

    def show(self, url: str, map_ref: str) -> dict[str, str]:
        return maps.show_map(self._apis[url], map_ref)

    def put(self, url: str, map_ref: str, key: str, value: str, *, exists: bool) -> None:
        (maps.set_map if exists else maps.add_map)(self._apis[url], map_ref, key, value)

    def delete(self, url: str, map_ref: str, key: str) -> None:
        maps.del_map(self._apis[url], map_ref, key)


def open_record(events: Sequence[ev.Event]) -> ev.ShapingRecorded | None:
    """The journal's last ``shaping_recorded`` not followed by a ``shaping_cleared``: entries
    a deploy set (or was about to set) and has not put back yet."""
    record: ev.ShapingRecorded | None = None
    for e in events:
        if isinstance(e, ev.ShapingRecorded):
            record = e
        elif isinstance(e, ev.ShapingCleared):
            record = None
    return record


class Shaping:
    """Holds ``spec.entries`` on every LB for the length of a deploy.

    Example:
        >>> shaping = Shaping(spec.haproxy.shaping, RuntimeMaps(fleet.apis))  # doctest: +SKIP
        >>> shaping.start(engine.emit, engine.events)  # doctest: +SKIP
        >>> shaping.finish(engine.emit, engine.events)  # doctest: +SKIP
    """

    def __init__(self, spec: ShapingSpec, seam: MapSeam) -> None:
        self.spec, self.seam = spec, seam

    def preflight(self) -> None:
        """Raises PreflightError unless every LB answers ``show map`` for the map (a map
        HAProxy did not load from its config cannot be changed at runtime)."""
        problems = []
        for url in self.seam.urls:
            try:
                self.seam.show(url, self.spec.map)
            except BalancerError as exc:
                problems.append(f"{url}: haproxy.shaping.map {self.spec.map}: {exc}")
        if problems:
            raise PreflightError("preflight refused the deploy; nothing was touched:\n  - "
                                 + "\n  - ".join(problems))

    def start(self, emit: Emit, events: Sequence[ev.Event]) -> None:
        """Records each LB's values (unless the journal already holds a record not cleared:
        a resume keeps it), then sets the entries where they are not set."""
        record = open_record(events)
        failed: dict[str, str] = {}
        if record is None:
            previous: dict[str, dict[str, str]] = {}
            for url in self.seam.urls:
                try:
                    live = self.seam.show(url, self.spec.map)
                except BalancerError as exc:
                    failed[url] = str(exc)
                    continue
                previous[url] = {k: live.get(k, ABSENT) for k in self.spec.entries}
            emit(ev.ShapingRecorded, map=self.spec.map, entries=dict(self.spec.entries),
                 previous=previous)
        else:
            previous = record.previous
        done: dict[str, dict[str, str]] = {}
        conflicts: dict[str, str] = {}
        for url, before in previous.items():
            try:
                live = self.seam.show(url, self.spec.map)
                for key, value in self.spec.entries.items():
                    found = live.get(key, ABSENT)
                    if found == value:
                        continue  # set already (a resume), or found so before the deploy
                    if found != before.get(key, ABSENT):  # changed by someone else: theirs
                        conflicts[f"{url} {key}"] = found or "(absent)"
                        continue
                    self.seam.put(url, self.spec.map, key, value, exists=found != ABSENT)
                    done.setdefault(url, {})[key] = value
            except BalancerError as exc:
                failed[url] = str(exc)
        emit(ev.ShapingSet, map=self.spec.map, entries=dict(self.spec.entries), lbs=done,
             conflicts=conflicts, failed=failed)

    def finish(self, emit: Emit, events: Sequence[ev.Event]) -> None:
        """Puts back what the journal recorded, on every LB; an entry no longer holding the
        deploy's value (someone else's change) is left as found and reported."""
        record = open_record(events)
        if record is None:
            return  # nothing set, or put back already
        restored: dict[str, dict[str, str]] = {}
        conflicts: dict[str, str] = {}
        failed: dict[str, str] = {}
        for url, before in record.previous.items():
            try:
                live = self.seam.show(url, record.map)
                for key, value in record.entries.items():
                    found, old = live.get(key, ABSENT), before.get(key, ABSENT)
                    if found == old:
                        continue  # as recorded already (e.g. a reload read the map file)
                    if found != value:
                        conflicts[f"{url} {key}"] = found or "(absent)"
                        continue
                    if old == ABSENT:
                        self.seam.delete(url, record.map, key)
                    else:
                        self.seam.put(url, record.map, key, old, exists=True)
                    restored.setdefault(url, {})[key] = old
            except BalancerError as exc:
                failed[url] = str(exc)
        try:
            emit(ev.ShapingCleared, map=record.map, restored=restored, conflicts=conflicts,
                 failed=failed)
        except JournalError:
            return  # the engine's journal failed: its result says so; a resume clears again


def shaping_for(spec: Spec, balancer: Any) -> Shaping | None:
    """The spec's shaping over the balancer's runtime APIs (None without ``haproxy.shaping``);
    a balancer double offers a ``maps`` attribute (``rollout_py.testing.FakeMaps``)."""
    if spec.haproxy.shaping is None:
        return None
    apis = getattr(balancer, "apis", None)
    if apis is not None:
        return Shaping(spec.haproxy.shaping, RuntimeMaps(apis))
    seam = getattr(balancer, "maps", None)
    if seam is None:
        raise InputError("haproxy.shaping needs the LBs' runtime APIs: this balancer offers "
                         "no maps")
    return Shaping(spec.haproxy.shaping, seam)


def _pairs(per_lb: dict[str, dict[str, str]]) -> str:
    return "; ".join(f"{url}: " + ", ".join(f"{k} {v or '(removed)'}" for k, v in per.items())
                     for url, per in per_lb.items()) or "nothing to change"


def shaping_line(e: ev.ShapingRecorded | ev.ShapingSet | ev.ShapingCleared) -> str:
    """The console line of a shaping event."""
    if isinstance(e, ev.ShapingRecorded):
        return f"shaping: recorded map {e.map} on {len(e.previous)} LB(s) before setting it"
    problems = "".join(f"; LEFT AS FOUND (changed by someone else): {k} = {v}"
                       for k, v in e.conflicts.items())
    problems += "".join(f"; FAILED on {url}: {err}" for url, err in e.failed.items())
    if isinstance(e, ev.ShapingSet):
        return f"shaping: set map {e.map}: {_pairs(e.lbs)}{problems}"
    return f"shaping: map {e.map} put back: {_pairs(e.restored)}{problems}"
