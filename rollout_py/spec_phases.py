"""The spec's ``phases:`` section: the user's expand, migrate and contract steps of a schema change.

Example (rollout.yml)::

    phases:
      expand:                       # before the first batch (and before staging)
        command: alembic upgrade expand
        on: db-runner               # an inventory host or a pattern matching exactly one
      release:                      # after the last batch: ramp a flag with the analysis gates
        flag: new-greeting          # a flag of the spec's flags: file
        to: "100%"
      migrate:                      # after the last batch (and release); run again on resume
        playbook: backfill.yml      # relative to the spec
        on: local                   # the controller
        vars: {batch_rows: 1000}
        timeout: 7200
      contract:                     # only through `rollout contract`
        command: alembic upgrade contract
        on: db-runner
        requires: "2.0"             # every host must run 2.0 or newer

rollout_py runs the user's own tool; it does not write or check SQL.
"""

from __future__ import annotations

import re
from typing import Any

from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rollout_py.spec_flags import percent
from rollout_py.spec_types import yaml_on_key

_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LOCAL = "local"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_version(value: str) -> Version | None:
    """A version as ``packaging`` orders it, or None when it does not parse.

    Example:
        >>> parse_version("2.10") > parse_version("2.9"), parse_version("two")
        (True, None)
    """
    try:
        return Version(value)
    except InvalidVersion:
        return None


class PhaseSpec(_Model):
    """One phase: a shell ``command`` or an Ansible ``playbook`` (one of them), run ``on`` one
    inventory host (a pattern matching exactly one) or ``local`` (the controller)."""

    command: str | None = None
    playbook: str | None = None
    on: str
    vars: dict[str, Any] = Field(default_factory=dict)
    timeout: float = Field(3600, gt=0, le=7 * 86400)

    @model_validator(mode="before")
    @classmethod
    def _on_key(cls, data: Any) -> Any:
        return yaml_on_key(data)

    @field_validator("command", "playbook", "on")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or "\x00" in v):
            raise ValueError("must not be empty")
        return v

    @field_validator("on")
    @classmethod
    def _on(cls, v: str) -> str:
        if any(c.isspace() for c in v):
            raise ValueError(f"'local' or an inventory host or pattern (no spaces), not {v!r}")
        return v

    @field_validator("vars")
    @classmethod
    def _vars(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not _VAR.fullmatch(name):
                raise ValueError(f"{name!r}: a variable name (letters, digits, _), also used "
                                 "as an environment variable for a command")
            if name.lower().startswith("rollout_"):
                raise ValueError(f"{name!r}: rollout_* names are set by rollout_py")
        return v

    @model_validator(mode="after")
    def _one(self) -> PhaseSpec:
        if (self.command is None) == (self.playbook is None):
            raise ValueError("set exactly one of command or playbook")
        return self

    @property
    def local(self) -> bool:
        return self.on == LOCAL

    def what(self) -> str:
        """``command: ...`` or ``playbook: ...``, for plans and journals."""
        return f"command: {self.command}" if self.command is not None else \
            f"playbook: {self.playbook}"


class ContractSpec(PhaseSpec):
    """The contract phase, and the version every host must run (or newer) before it runs."""

    requires: str

    @field_validator("requires", mode="before")
    @classmethod
    def _requires(cls, v: Any) -> Any:
        if isinstance(v, bool | float):
            raise ValueError(f"write the version quoted (requires: \"{v}\"): YAML reads "
                             f"{v!r} as a number (2.10 would be 2.1)")
        if isinstance(v, int):
            v = str(v)
        if isinstance(v, str) and parse_version(v) is None:
            raise ValueError(f"{v!r} is not a version that can be ordered (PEP 440, e.g. "
                             "'2.0' or '2.1.3')")
        return v


class ReleaseSpec(_Model):
    """Turns the release's feature on after the last batch: a ramp of ``flag`` to ``to``
    through the spec's ``flags.ramp`` steps, each judged by its ``analysis`` gates (the code
    shipped dark, flag off; a failed gate puts the flag back)."""

    flag: str = Field(min_length=1)
    to: int = 100
    variant: str | None = None  # "on" unless named (the same on every run and resume)

    @field_validator("to", mode="before")
    @classmethod
    def _to(cls, v: Any) -> int:
        return percent(v, field="to")

    @field_validator("variant", mode="before")
    @classmethod
    def _variant(cls, v: Any) -> Any:
        # YAML 1.1 (PyYAML) reads an unquoted on / off as a boolean.
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    def what(self) -> str:
        """``flag ramp NAME to N%``, for plans and journals."""
        variant = f" ({self.variant})" if self.variant else ""
        return f"flag ramp {self.flag}{variant} to {self.to}%"


class PhasesSpec(_Model):
    """The phases, each optional; ``contract`` runs only through ``rollout contract``."""

    expand: PhaseSpec | None = None
    release: ReleaseSpec | None = None
    migrate: PhaseSpec | None = None
    contract: ContractSpec | None = None
