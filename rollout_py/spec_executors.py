"""The ``executors`` section of a rollout spec: remote execution nodes that run the deploy's
Ansible work (ansible-runner ``transmit | worker | process`` over SSH), and which hosts go to
which node (validated user input).

Example:
    >>> ExecutorsSpec.model_validate({"nodes": ["ssh://root@exec1"]}).nodes[0].name
    'exec1'
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_URL = re.compile(r"^ssh://(?:(?P<user>[A-Za-z0-9._-]{1,64})@)?"
                  r"(?P<host>[A-Za-z0-9._-]{1,253})(?::(?P<port>\d{1,5}))?/?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSpec(_Model):
    """One execution node: ``ssh://[user@]host[:port]`` and the ansible-runner it has."""

    url: str
    name: str = ""  # default: the URL's host
    runner: str = "ansible-runner"  # the node's ansible-runner executable (absolute or on PATH)

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: Any) -> Any:
        return {"url": value} if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        m = _URL.fullmatch(v)
        if not m or (m.group("port") and not 1 <= int(m.group("port")) <= 65535):
            raise ValueError(f"expected ssh://[user@]host[:port], not {v!r}")
        return v

    @field_validator("runner")
    @classmethod
    def _runner(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_./+-]{1,255}", v):
            raise ValueError(f"{v!r}: a path or command name of letters, digits and ._/+- only")
        return v

    @model_validator(mode="after")
    def _default_name(self) -> NodeSpec:
        if not self.name:
            object.__setattr__(self, "name", self.destination)
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"name {self.name!r}: use letters, digits, '.', '_', '-'")
        return self

    @property
    def user(self) -> str | None:
        m = _URL.fullmatch(self.url)
        return m.group("user") if m else None

    @property
    def destination(self) -> str:
        m = _URL.fullmatch(self.url)
        return m.group("host") if m else self.url

    @property
    def port(self) -> int | None:
        m = _URL.fullmatch(self.url)
        return int(m.group("port")) if m and m.group("port") else None


class ExecutorsSpec(_Model):
    """Execution nodes and the rule that assigns hosts to them.

    ``assign: hash``: each host goes to a node by rendezvous hashing of its name (stable; a
    node lost during the deploy moves only its own hosts). ``assign: group``: ``groups`` maps
    inventory groups to node names; a host in none of them is refused before the deploy.
    """

    nodes: list[NodeSpec] = Field(min_length=1, max_length=64)
    assign: Literal["hash", "group"] = "hash"
    groups: dict[str, str] = Field(default_factory=dict)
    ssh_config: str | None = None  # an ssh_config for reaching the nodes (relative to the spec)
    # When every node a host could use is lost: run its work (a rollback, above all) on the
    # controller, or fail it.
    fallback: Literal["controller", "none"] = "controller"

    @model_validator(mode="after")
    def _consistent(self) -> ExecutorsSpec:
        names = [n.name for n in self.nodes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"nodes: the node name {dupes[0]!r} is used twice (set name:)")
        if self.assign == "group" and not self.groups:
            raise ValueError("groups: assign: group needs groups (inventory group: node name)")
        if self.assign == "hash" and self.groups:
            raise ValueError("groups: only with assign: group")
        for group, node in self.groups.items():
            if node not in names:
                raise ValueError(f"groups.{group}: {node!r} is not a node name "
                                 f"(expected one of {', '.join(names)})")
        return self
