"""The spec's ``haproxy.shaping`` section: the map entries every LB holds while a deploy runs.

Example (rollout.yml)::

    haproxy:
      shaping:
        map: /etc/haproxy/shaping.map     # as HAProxy on the LB host names it
        entries: {heavy: shed}            # set at the start, removed at the end
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rollout_py.balancer.maps import validate_map_ref, validate_map_word
from rollout_py.errors import UnsafeNameError


class ShapingSpec(BaseModel):
    """Map entries rollout_py sets on every LB at a deploy's start and clears at its end (also
    after a rollback, an abort, an interrupt, a failure, and on resume after kill -9)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    map: str  # an absolute map file path (as loaded by HAProxy on the LB host) or #<id>
    entries: dict[str, str] = Field(min_length=1, max_length=64)

    @field_validator("map")
    @classmethod
    def _map(cls, v: str) -> str:
        try:
            return validate_map_ref(v)
        except UnsafeNameError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("entries")
    @classmethod
    def _entries(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            try:
                validate_map_word("key", key)
                validate_map_word("value", value)
            except UnsafeNameError as exc:
                raise ValueError(str(exc)) from None
        return v

    def describe(self) -> list[str]:
        """What ``rollout plan`` says about it, one line per action.

        Example:
            >>> ShapingSpec(map="/etc/haproxy/shaping.map", entries={"heavy": "shed"}
            ...             ).describe()[0]
            'before the first drain, on every LB: set map /etc/haproxy/shaping.map heavy shed'
        """
        pairs = ", ".join(f"{k} {v}" for k, v in self.entries.items())
        keys = ", ".join(self.entries)
        return [f"before the first drain, on every LB: set map {self.map} {pairs}",
                f"at the end (success, rollback, abort, interrupt, failure, resume), on every "
                f"LB: {keys} back to what they were before (removed if absent)"]
