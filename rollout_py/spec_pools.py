"""The ``blue_green`` section of a rollout spec: two pools, the map that routes between them,
the checks before the switch and the analysis after it (validated user input)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rollout_py.balancer.maps import validate_map_word
from rollout_py.errors import UnsafeNameError
from rollout_py.spec_types import BackendName, HttpUrl

_MAP_NAME = re.compile(r"^[A-Za-z0-9_.@:+-]{1,128}$")
_MAP_PATH = re.compile(r"^/[A-Za-z0-9_./@:+-]{1,255}$")
_PERCENT = re.compile(r"^(\d{1,3})%$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PoolSpec(_Model):
    """One pool: its HAProxy backend and the inventory pattern of its hosts."""

    backend: BackendName
    hosts: str


class PreviewCheck(_Model):
    """Requests through the LB's preview route, which reaches the idle pool before the switch:
    each must answer ``status`` (and contain ``body``, templated with ``rollout_version``)."""

    http: HttpUrl
    status: int = Field(200, ge=100, le=599)
    body: str | None = None
    requests: int = Field(20, ge=1, le=10000)
    timeout: float = Field(2.0, gt=0, le=60)


class ScaleDownSpec(_Model):
    """After the post-switch analysis passed: hold ``after`` seconds (``rollout promote`` ends
    the hold early), then run ``playbook`` on the old pool's hosts (e.g. stop the app)."""

    after: float = Field(0, ge=0, le=86400)
    playbook: str


class BlueGreenSpec(_Model):
    """Two pools behind every LB, switched with one map entry (``live_key``)."""

    pools: dict[str, PoolSpec]
    map: str  # an absolute path on every LB, or a file name HAProxy's `show map` lists
    live_key: str = "live"
    preview_key: str | None = "preview"  # switched to the old pool when the live one changes
    preview: list[PreviewCheck] = Field(default_factory=list)
    # The idle pool's servers UP on every LB, as a count or a share of the live pool's UP ones.
    min_up: int | str = "100%"
    analysis_duration: float = Field(60, ge=0, le=86400)  # after the switch; 0: none
    baseline_duration: float | None = Field(None, gt=0, le=3600)  # default: one interval
    scale_down: ScaleDownSpec | None = None

    @field_validator("pools")
    @classmethod
    def _two(cls, v: dict[str, PoolSpec]) -> dict[str, PoolSpec]:
        if len(v) != 2:
            raise ValueError(f"pools: exactly two pools are needed (e.g. blue and green), not "
                             f"{len(v)}")
        backends = [p.backend for p in v.values()]
        if backends[0] == backends[1]:
            raise ValueError(f"pools: both pools use backend {backends[0]!r}")
        return v

    @field_validator("map")
    @classmethod
    def _map(cls, v: str) -> str:
        if v.startswith("/"):
            if not _MAP_PATH.fullmatch(v) or ".." in v:
                raise ValueError(f"map {v!r}: an absolute path of letters, digits, '_./@:+-'")
        elif not _MAP_NAME.fullmatch(v):
            raise ValueError(f"map {v!r}: an absolute path, or a file name (letters, digits, "
                             "'_.@:+-') that HAProxy's `show map` lists on every LB")
        return v

    @field_validator("live_key", "preview_key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                validate_map_word("key", v)
            except UnsafeNameError as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("min_up", mode="before")
    @classmethod
    def _min_up(cls, v: Any) -> int | str:
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise ValueError(f"min_up must be a whole number or 'N%', not {v!r}")
        if isinstance(v, int):
            if v < 1:
                raise ValueError(f"min_up must be at least 1, not {v}")
            return v
        m = _PERCENT.fullmatch(v.strip())
        if not m or not 1 <= int(m.group(1)) <= 100:
            raise ValueError(f"min_up must be a whole number or a percentage from 1% to 100%, "
                             f"not {v!r}")
        return f"{int(m.group(1))}%"

    @model_validator(mode="after")
    def _keys_differ(self) -> BlueGreenSpec:
        if self.preview_key == self.live_key:
            raise ValueError("preview_key: must differ from live_key")
        if self.preview and self.preview_key is None:
            raise ValueError("preview: the preview checks need a preview_key (the route that "
                             "reaches the idle pool)")
        return self

    def floor(self, live_up: int) -> int:
        """The idle pool's servers that must be UP, given the live pool's UP servers.

        Example:
            >>> BlueGreenSpec(pools={"a": {"backend": "a", "hosts": "a"}, "b": {
            ...     "backend": "b", "hosts": "b"}}, map="/m", min_up="50%").floor(4)
            2
        """
        if isinstance(self.min_up, int):
            return self.min_up
        return max(1, -(-live_up * int(self.min_up.rstrip("%")) // 100))
