"""The spec's ``flags:`` section: where a fleet's flag file lives, how ramps step and are judged.

Example (rollout.yml)::

    flags:
      file: flags.json                     # the controller's copy (the source of truth)
      path: /srv/app/shared/flags.json     # where the app reads it on every host
      ramp: ["10%", "50%", "100%"]         # a ramp's steps (`--to` stops earlier)
      step_duration: 60                    # seconds of passing windows per step
      baseline_duration: 30                # seconds of windows before the ramp
      effect:                              # optional: when is a change served?
        url: "http://{{ ansible_host }}:8080/"
        header: "X-Flag-{flag}"
        timeout: 15
        settle: 1

Windows (interval, min_requests, gates) come from the spec's ``analysis:`` section.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rollout_py.spec_types import HttpUrl

_PERCENT = re.compile(r"^\s*(\d{1,3})\s*%\s*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def percent(value: Any, *, field: str) -> int:
    """A whole percentage written ``50%`` (or 50), from 1 to 100.

    Example:
        >>> percent("50%", field="ramp"), percent(10, field="ramp")
        (50, 10)
    """
    if isinstance(value, bool):
        raise ValueError(f"{field}: a percentage like '50%', not a boolean")
    if isinstance(value, int):
        pct = value
    elif isinstance(value, str) and (m := _PERCENT.fullmatch(value)):
        pct = int(m.group(1))
    else:
        raise ValueError(f"{field}: a whole percentage like '50%', not {value!r}")
    if not 1 <= pct <= 100:
        raise ValueError(f"{field}: between 1% and 100%, not {pct}%")
    return pct


class EffectCheck(_Model):
    """How to see that a host serves a change: GET ``url`` on the host, read ``header``
    (``{flag}`` becomes the flag's name), expect the variant's name."""

    url: HttpUrl
    header: str = "X-Flag-{flag}"
    timeout: float = Field(15, gt=0, le=600)  # seconds for every host to serve the change
    # A fractional split cannot be seen in one response: after its push, wait this long
    # (the provider's file poll) before judging.
    settle: float = Field(1.0, ge=0, le=60)

    def header_for(self, flag: str) -> str:
        return self.header.replace("{flag}", flag)


class FlagsSpec(_Model):
    """A fleet's flag file: the controller's copy and where every host reads it."""

    file: str  # relative to the spec
    path: str  # absolute, on every host
    ramp: list[int] = Field(default_factory=lambda: [10, 50, 100], min_length=1)
    step_duration: float = Field(60, gt=0, le=86400)
    baseline_duration: float = Field(30, gt=0, le=86400)
    effect: EffectCheck | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or "\n" in v or "\x00" in v or "/../" in f"{v}/":
            raise ValueError(f"an absolute path on the hosts (no '..'), not {v!r}")
        return v

    @field_validator("ramp", mode="before")
    @classmethod
    def _ramp(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        steps = [percent(s, field=f"ramp step {i}") for i, s in enumerate(v)]
        if steps != sorted(set(steps)):
            raise ValueError(f"ramp steps must increase: {steps}")
        return steps


def ramp_steps(steps: list[int], *, current: int, to: int) -> list[int]:
    """The steps a ramp from ``current``% to ``to``% takes: the spec's steps in between,
    then ``to``.

    Example:
        >>> ramp_steps([10, 50, 100], current=0, to=50)
        [10, 50]
        >>> ramp_steps([10, 50, 100], current=10, to=30)
        [30]
    """
    return [s for s in steps if current < s < to] + [to]
