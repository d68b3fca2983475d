"""A test double for HAProxy maps on every LB (``rollout_py.shaping.MapSeam``), in memory.

``rollout_py.testing`` re-exports it with the other doubles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rollout_py.errors import BalancerError


class FakeMaps:
    """One HAProxy map on every LB, in memory (``rollout_py.shaping.MapSeam``): each change
    is appended to ``log`` (``set lb key value``, ``del lb key``); ``unreachable`` LBs raise.

    Example:
        >>> maps = FakeMaps(["unix:///lb1.sock"], {"other": "x"})
        >>> maps.put("unix:///lb1.sock", "/m.map", "heavy", "shed", exists=False)
        >>> maps.entries["unix:///lb1.sock"], maps.log
        ({'other': 'x', 'heavy': 'shed'}, ['set unix:///lb1.sock heavy shed'])
    """

    def __init__(self, urls: Sequence[str], initial: Mapping[str, str] | None = None) -> None:
        self.urls = list(urls)
        self.entries: dict[str, dict[str, str]] = {u: dict(initial or {}) for u in urls}
        self.log: list[str] = []
        self.unreachable: set[str] = set()

    def _lb(self, url: str) -> dict[str, str]:
        if url in self.unreachable:
            raise BalancerError(f"{url}: connection refused")
        return self.entries[url]

    def show(self, url: str, map_ref: str) -> dict[str, str]:
        return dict(self._lb(url))

    def put(self, url: str, map_ref: str, key: str, value: str, *, exists: bool) -> None:
        lb = self._lb(url)
        if exists != (key in lb):
            raise BalancerError(f"{url}: {'set' if exists else 'add'} map {key}: "
                                f"{'entry not found' if exists else 'key exists'}")
        lb[key] = value
        self.log.append(f"set {url} {key} {value}")

    def delete(self, url: str, map_ref: str, key: str) -> None:
        lb = self._lb(url)
        if key not in lb:
            raise BalancerError(f"{url}: del map {key}: Key not found.")
        del lb[key]
        self.log.append(f"del {url} {key}")
