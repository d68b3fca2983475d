"""Shaping events: the map entries a deploy sets on every LB while it runs, and their clearing."""

from __future__ import annotations

from dataclasses import field
from typing import ClassVar

from rollout_py.events.base import Event
from rollout_py.events.base import frozen_event as _frozen


@_frozen
class ShapingRecorded(Event):
    """Journaled before any entry is set: each LB's values of the keys as found ("" when the
    key was absent); what the end of the deploy, or a resume, puts back exactly."""

    kind: ClassVar[str] = "shaping_recorded"
    map: str
    entries: dict[str, str]  # key -> value rollout_py sets
    previous: dict[str, dict[str, str]]  # LB url -> key -> value found ("" = absent)


@_frozen
class ShapingSet(Event):
    """The entries set on each LB (on resume: set again where an LB had lost them)."""

    kind: ClassVar[str] = "shaping_set"
    map: str
    entries: dict[str, str]
    lbs: dict[str, dict[str, str]]  # LB url -> key -> value set now
    conflicts: dict[str, str] = field(default_factory=dict)  # "lb key" -> what was found
    failed: dict[str, str] = field(default_factory=dict)  # LB url -> error


@_frozen
class ShapingCleared(Event):
    """The entries put back as recorded; an entry someone else changed meanwhile is left as
    found and named in ``conflicts``; an LB that did not answer is named in ``failed``."""

    kind: ClassVar[str] = "shaping_cleared"
    map: str
    restored: dict[str, dict[str, str]]  # LB url -> key -> value put back ("" = removed)
    conflicts: dict[str, str] = field(default_factory=dict)  # "lb key" -> what was found
    failed: dict[str, str] = field(default_factory=dict)  # LB url -> error


EVENTS: tuple[type[Event], ...] = (ShapingRecorded, ShapingSet, ShapingCleared)
