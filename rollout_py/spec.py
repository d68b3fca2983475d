"""The rollout spec (rollout.yml): validated user input, the only pydantic code in rollout_py.

Errors name the file, the field path and what was expected, and are raised before anything is
touched.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from rollout_py.errors import SpecError
from rollout_py.spec_canary import AnalysisSpec, CanarySpec, dispatch, share
from rollout_py.spec_executors import ExecutorsSpec
from rollout_py.spec_flags import FlagsSpec
from rollout_py.spec_phases import PhasesSpec
from rollout_py.spec_pools import BlueGreenSpec
from rollout_py.spec_shaping import ShapingSpec
from rollout_py.spec_types import BackendName, HttpUrl, yaml_on_key
from rollout_py.specload import Loaded, load_yaml, read_spec_text, split_leading_path

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PERCENT = re.compile(r"^(\d{1,3})%$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _kind(value: Any) -> str:
    """A value as the YAML author wrote it, for messages: ``1.5``, ``a list``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, list | dict):
        return "a list" if isinstance(value, list) else "a mapping"
    return repr(value)


def _count_or_percent(value: Any, *, field: str, allow_zero: bool = False) -> int | str:
    # Takes any YAML value: anything but an int or a str is refused here, with the field's
    # name, rather than reaching str methods (a traceback) or the planner's arithmetic.
    if isinstance(value, bool):
        raise ValueError(f"{field} must be a whole number or 'N%', not a boolean")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 2.0 is 2, as pydantic took it before this check existed
    if not isinstance(value, int | str):
        raise ValueError(f"{field} must be a whole number or a percentage like '25%', "
                         f"not {_kind(value)}")
    if isinstance(value, int):
        if value < (0 if allow_zero else 1):
            raise ValueError(f"{field} must be {'0 or more' if allow_zero else 'at least 1'}, "
                             f"not {value}")
        return value
    m = _PERCENT.fullmatch(value.strip())
    if not m:
        raise ValueError(f"{field} must be a whole number or a percentage like '25%', "
                         f"not {value!r}")
    pct = int(m.group(1))
    if not 1 <= pct <= 100:
        raise ValueError(f"{field} percentage must be between 1% and 100%, not {value!r}")
    return f"{pct}%"




class HttpProbe(_Model):
    """GET a URL: status, and optionally a body substring, a regex or JSON fields."""

    http: HttpUrl
    status: int = Field(200, ge=100, le=599)
    body: str | None = None
    match: str | None = None
    json_: dict[str, Any] | None = Field(None, alias="json")
    timeout: float = Field(2.0, gt=0, le=60)

    @field_validator("match")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {v!r}: {exc}") from exc
        return v


class TcpProbe(_Model):
    """Connect to host:port."""

    tcp: str
    timeout: float = Field(2.0, gt=0, le=60)

    @field_validator("tcp")
    @classmethod
    def _addr(cls, v: str) -> str:
        if "{{" not in v and not re.fullmatch(r".+:\d{1,5}", v):
            raise ValueError(f"expected host:port, not {v!r}")
        return v


class CommandProbe(_Model):
    """Run a command on the host (through Ansible/SSH); exit 0 passes."""

    command: str
    timeout: float = Field(10.0, gt=0, le=600)


class HAProxyProbe(_Model):
    """After enable, HAProxy's own check must report the server UP on every LB."""

    haproxy: Literal["UP"]


Probe = HttpProbe | TcpProbe | CommandProbe | HAProxyProbe
_PROBE_KEYS: dict[str, type[BaseModel]] = {
    "http": HttpProbe, "tcp": TcpProbe, "command": CommandProbe, "haproxy": HAProxyProbe}


class HealthSpec(_Model):
    deadline: float = Field(60, gt=0, le=3600)
    interval: float = Field(1, gt=0, le=60)
    consecutive: int = Field(3, ge=1, le=100)
    soak: float = Field(0, ge=0, le=3600)
    # Hosts the continuous watch probes per round, taking turns (rollout_py.health_watch).
    watch_hosts: int = Field(10, ge=1, le=10000)
    probes: list[Probe] = Field(default_factory=list)

    @field_validator("probes", mode="before")
    @classmethod
    def _dispatch(cls, value: Any) -> Any:
        return dispatch(value, _PROBE_KEYS, "probe", alone=False, example="{http: URL}")


class HAProxySpec(_Model):
    sockets: list[str] = Field(min_length=1)
    backend: BackendName = "app"
    server: str = "{{ inventory_hostname }}"
    drain_timeout: float = Field(30, ge=0, le=86400)
    up_timeout: float = Field(30, gt=0, le=3600)
    ssh_config: str | None = None
    # Warm-up: an enabled batch starts at warmup_from of its recorded weight, raised in steps
    # to it over warmup seconds on every LB (servers recorded at weight 2 or more).
    warmup: float = Field(0, ge=0, le=3600)
    warmup_from: float = 0.1
    # Which hosts go first: the inventory's order, or those with the fewest sessions now.
    drain_order: Literal["inventory", "fewest_sessions"] = "inventory"
    shaping: ShapingSpec | None = None  # map entries held while a deploy runs (spec_shaping)

    @field_validator("warmup_from", mode="before")
    @classmethod
    def _warmup_from(cls, v: Any) -> float:
        return share(v, field="warmup_from", low=1, high=99)

    @field_validator("sockets")
    @classmethod
    def _schemes(cls, v: list[str]) -> list[str]:
        for url in v:
            if not url.startswith(("unix:///", "tcp://", "ssh://")):
                raise ValueError(f"socket {url!r}: expected unix:///path, tcp://host:port or "
                                 "ssh://[user@]host/path")
        if len(set(v)) != len(v):
            raise ValueError("the same socket is listed twice")
        return v



class WebhookSpec(_Model):
    """A Slack-compatible webhook told about a deploy's start, success and/or failure."""

    url: HttpUrl
    on: tuple[Literal["start", "success", "failure"], ...] = ("start", "success", "failure")
    timeout: float = Field(5, gt=0, le=60)
    retries: int = Field(3, ge=0, le=10)

    @model_validator(mode="before")
    @classmethod
    def _on_key(cls, data: Any) -> Any:
        return yaml_on_key(data)


class StageSpec(_Model):
    """Stage before drain: run ``tags`` of the playbook on every host up front, while they
    serve (copying and unpacking a release is safe in rotation); each batch then runs only
    ``switch_tags`` while out of rotation. Tasks tagged ``always`` run in both; untagged
    tasks run with the batch (``untagged`` is in the default switch tags)."""

    tags: str = "stage,prune"
    switch_tags: str = "switch,untagged"


class NotifySpec(_Model):
    webhooks: list[WebhookSpec] = Field(default_factory=list)


def _batch_size(value: Any) -> Any:
    return _count_or_percent(value, field="batch size")


BatchSize = Annotated[int | str, BeforeValidator(_batch_size)]


def _default_batches() -> list[int | str]:
    return [1, "25%", "100%"]


class Spec(_Model):
    """A validated rollout spec; paths are resolved relative to the spec file."""

    name: str
    inventory: str
    hosts: str = "all"
    playbook: str
    rollback_playbook: str | None = None
    batches: list[BatchSize] = Field(default_factory=_default_batches, min_length=1)
    max_unavailable: int | str | None = None
    on_failure: Literal["rollback_batch", "rollback_all"] = "rollback_batch"
    pause_between_batches: float = Field(0, ge=0, le=86400)
    version_url: str | None = None
    vars: dict[str, Any] = Field(default_factory=dict)
    secret_vars: list[str] = Field(default_factory=list)  # names whose values are masked
    state_dir: str | None = None  # default: .rollout beside this file
    notify: NotifySpec = NotifySpec()
    stage: StageSpec | None = None
    haproxy: HAProxySpec
    health: HealthSpec = HealthSpec()
    strategy: Literal["rolling", "canary", "blue_green"] = "rolling"
    canary: CanarySpec | None = None
    blue_green: BlueGreenSpec | None = None
    analysis: AnalysisSpec | None = None
    flags: FlagsSpec | None = None
    phases: PhasesSpec | None = None  # expand / migrate / contract (rollout_py.spec_phases)
    executors: ExecutorsSpec | None = None  # remote execution nodes (rollout_py.exec_nodes)
    # Where the spec came from (set by load_spec; not a YAML key).
    source: str = Field("<memory>", exclude=True)
    base_dir: str = Field(".", exclude=True)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.fullmatch(v):
            raise ValueError(f"{v!r}: use letters, digits, '.', '_', '-' (at most 64)")
        return v

    @field_validator("batches", mode="before")
    @classmethod
    def _batches(cls, v: Any) -> Any:
        return v if isinstance(v, list) else [v]  # a single size repeats, like Ansible serial

    @field_validator("max_unavailable", mode="before")
    @classmethod
    def _max_unavailable(cls, v: Any) -> Any:
        return None if v is None else _count_or_percent(v, field="max_unavailable")

    @model_validator(mode="after")
    def _needs_probes(self) -> Spec:
        if not self.health.probes:
            raise ValueError("health.probes: at least one probe is needed: without one a broken "
                             "release would be put back in rotation")
        return self

    @model_validator(mode="after")
    def _strategy(self) -> Spec:
        if self.strategy == "canary" and self.canary is None:
            raise ValueError("canary: required by strategy: canary (the canary hosts and steps)")
        if self.strategy != "canary" and self.canary is not None:
            raise ValueError("strategy: the canary section needs strategy: canary")
        if self.strategy == "blue_green" and self.blue_green is None:
            raise ValueError("blue_green: required by strategy: blue_green (the two pools and "
                             "the map that routes between them)")
        if self.strategy != "blue_green" and self.blue_green is not None:
            raise ValueError("strategy: the blue_green section needs strategy: blue_green")
        if self.blue_green and self.blue_green.analysis_duration and self.analysis is None:
            raise ValueError("analysis: blue_green.analysis_duration needs an analysis section "
                             "(interval, min_requests, gates); or set analysis_duration: 0")
        steps = self.canary.steps if self.canary else []
        if self.analysis is None and any(hasattr(s, "analysis") for s in steps):
            raise ValueError("analysis: the canary's analysis steps need an analysis section "
                             "(interval, min_requests, gates)")
        if self.phases is not None and self.phases.release is not None:
            for section in ("flags", "analysis"):
                if getattr(self, section) is None:
                    raise ValueError(f"{section}: phases.release ramps a flag of the spec's "
                                     "flags section, judged by its analysis section; add both")
            if self.strategy == "blue_green":
                raise ValueError("phases.release: not with strategy blue_green (release the "
                                 "flag with `rollout flag ramp` after the switch)")
        return self

    def state_path(self) -> Path:
        return self.path(self.state_dir) if self.state_dir else Path(self.base_dir) / ".rollout"

    def path(self, value: str) -> Path:
        """A path from the spec, resolved relative to the spec file's directory."""
        p = Path(value)
        return p if p.is_absolute() else Path(self.base_dir) / p


_ITEM_ERROR = re.compile(r"(?:probe|step|gate) (\d+)(?: \(\w+\): ([\w.]+):)?")
_ITEM_LISTS = {("health", "probes"), ("canary", "steps"), ("analysis", "gates")}


def _error_line(err: Any, positions: Loaded | None) -> str:
    """``  file:line:col: field.path: what was expected`` (no position for in-memory data)."""
    loc: tuple[str | int, ...] = tuple(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key (not part of the spec; check its spelling)"
    elif err["type"] == "missing":
        msg = "required key is missing"
    if not loc:  # a model-level check names its field first: "health.probes: ..."
        loc, msg = split_leading_path(msg)
    elif msg.startswith(f"{loc[-1]} "):  # "max_unavailable: must be ...", said once
        msg = msg[len(str(loc[-1])) + 1:]
    text = ".".join(str(p) for p in loc) or "(top level)"
    if positions is None:
        return f"  {text}: {msg}"
    at: Sequence[str | int] = loc
    m = _ITEM_ERROR.match(msg) if loc in _ITEM_LISTS else None
    if m:  # list items are validated one by one; point at the item (and its key) meant
        at = (*loc, m.group(1), *(m.group(2).split(".") if m.group(2) else ()))
    return f"  {positions.where(at, key=err['type'] == 'extra_forbidden')}: {text}: {msg}"


def _format_errors(source: str, exc: ValidationError, positions: Loaded | None = None) -> str:
    lines = [_error_line(err, positions) for err in exc.errors()]
    return f"{source}: invalid rollout spec:\n" + "\n".join(lines)


def parse_spec(data: Any, *, source: str = "<memory>", base_dir: str = ".",
               positions: Loaded | None = None) -> Spec:
    """Validates already-loaded spec data; with ``positions`` errors say ``file:line:col``.

    Example:
        >>> parse_spec({"name": "web", "inventory": "inv.ini", "playbook": "p.yml",
        ...             "haproxy": {"sockets": ["unix:///run/haproxy.sock"]},
        ...             "health": {"probes": [{"tcp": "{{ ansible_host }}:80"}]}}).name
        'web'
    """
    if not isinstance(data, dict):
        what = "an empty file" if data is None else _kind(data)
        raise SpecError(f"{source}: a rollout spec must be a YAML mapping, not {what}")
    for reserved in ("source", "base_dir"):
        if reserved in data:
            where = f"{positions.where((reserved,), key=True)}: " if positions else ""
            raise SpecError(f"{source}: invalid rollout spec:\n  {where}{reserved}: unknown key "
                            "(not part of the spec; check its spelling)")
    try:
        return Spec.model_validate({**data, "source": source, "base_dir": base_dir})
    except ValidationError as exc:
        raise SpecError(_format_errors(source, exc, positions)) from None


def load_spec(path: str | Path) -> Spec:
    """Reads and validates a rollout.yml.

    Example:
        >>> spec = load_spec("rollout.yml")  # doctest: +SKIP
    """
    path = Path(path)
    loaded = load_yaml(read_spec_text(path), source=str(path))
    return parse_spec(loaded.data, source=str(path), base_dir=str(path.resolve().parent),
                      positions=loaded)
