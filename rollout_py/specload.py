"""Reads rollout.yml into plain data and where each field was written, so errors can say line:col.

``yaml.safe_load`` alone loses what a user needs to fix a spec: it lets a repeated key win
silently, turns an unquoted ``1.10`` into ``1.1`` and forgets positions. This loader is PyYAML's
safe loader with three additions: a map from field path to line and column, an error for
every duplicate key (naming both lines), and version-like floats under ``vars:`` kept as text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from rollout_py.errors import InputError, SpecError

_FLOAT = "tag:yaml.org,2002:float"
_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"

Path_ = tuple[str, ...]  # a field path: mapping keys and list indices, as text


@dataclass(frozen=True, slots=True)
class Position:
    """A 1-based line and column in the spec file."""

    line: int
    column: int

    @classmethod
    def of(cls, mark: yaml.Mark) -> Position:
        return cls(mark.line + 1, mark.column + 1)


@dataclass(slots=True)
class Loaded:
    """The spec's data with the position of each field's value and key.

    Example:
        >>> loaded = load_yaml("a:\\n  b: [1, 2]\\n", source="x.yml")
        >>> loaded.where(("a", "b", 1))
        'x.yml:2:10'
    """

    source: str
    data: Any = None
    values: dict[Path_, Position] = field(default_factory=dict)
    keys: dict[Path_, Position] = field(default_factory=dict)

    def where(self, loc: Sequence[str | int], *, key: bool = False) -> str:
        """``file:line:col`` of the field at ``loc`` (its key with ``key=True``), or of the
        nearest enclosing key the file has (a missing key is reported where its parent is);
        just ``file`` when the file has none of it."""
        path = tuple(str(p) for p in loc)
        exact = (self.keys if key else self.values).get(path)
        if exact is None:
            exact = self.keys.get(path) or self.values.get(path)
        while exact is None and len(path) > 1:
            path = path[:-1]
            exact = self.keys.get(path) or self.values.get(path)
        return self.source if exact is None else f"{self.source}:{exact.line}:{exact.column}"


def read_text(path: Path, *, what: str, hint: str,
              error: type[InputError] = SpecError) -> str:
    """A user file's text; one that is not UTF-8 text (a binary passed by mistake) is an
    ``error`` naming the first bad byte's line and column, not a UnicodeDecodeError.
    ``what``: "the rollout spec"; ``hint``: "a rollout spec is a YAML text file"."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise error(f"{path}:{line}:{column}: not a text file (byte 0x{raw[exc.start]:02x} "
                    f"is not UTF-8): {hint}") from None


def read_spec_text(path: Path) -> str:
    """The spec file's text (see ``read_text``)."""
    return read_text(path, what="the rollout spec", hint="a rollout spec is a YAML text file")


def keeps_text(text: str, value: float) -> bool:
    """Whether an unquoted float under ``vars:`` stays the text written: when it is whole
    (``1.0``) or its float prints differently (``1.10`` -> 1.1), as versions do; infinities
    and NaN stay floats.

    Example:
        >>> keeps_text("1.10", 1.1), keeps_text("1.0", 1.0), keeps_text("0.5", 0.5)
        (True, True, False)
    """
    return math.isfinite(value) and (repr(value) != text or value.is_integer())


class _Loader(yaml.SafeLoader):
    """SafeLoader that notes plain (unquoted, untagged) floats and every duplicate key."""

    def __init__(self, text: str, name: str) -> None:
        super().__init__(text)
        self.name = name  # PyYAML's own messages then name the file, not "<unicode string>"
        self.plain_floats: set[int] = set()  # ids of nodes; the node tree outlives the load
        self.duplicates: list[tuple[Node, Node]] = []  # (first key, repeated key)

    def compose_scalar_node(self, anchor: Any) -> ScalarNode:
        # types-PyYAML leaves peek_event untyped (and mistypes anchor, a str or None).
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        node = super().compose_scalar_node(anchor)
        if node.tag == _FLOAT and getattr(event, "tag", None) is None and \
                getattr(event, "style", None) is None:
            self.plain_floats.add(id(node))
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        # Only keys written in this mapping count: keys a `<<:` merge brings in are meant to
        # be overridden, so they are checked before flatten_mapping mixes them in.
        if isinstance(node, MappingNode):
            seen: dict[Any, Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE or not isinstance(key_node, ScalarNode):
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    self.duplicates.append((seen[key], key_node))
                else:
                    seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _mark_error(source: str, exc: yaml.YAMLError) -> SpecError:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = Position.of(exc.problem_mark)
        context = ""
        if exc.context and exc.context_mark is not None:
            context = f" ({exc.context} at line {exc.context_mark.line + 1})"
        return SpecError(f"{source}:{mark.line}:{mark.column}: not valid YAML: "
                         f"{exc.problem}{context}")
    return SpecError(f"{source}: not valid YAML: {exc}")


def _pairs(node: MappingNode, chain: frozenset[int] = frozenset()
           ) -> Iterator[tuple[Node, Node]]:
    """The mapping's own pairs, then those its ``<<:`` merges bring in (which they lose to)."""
    if id(node) in chain:
        at = Position.of(node.start_mark)
        raise SpecError(f"{node.start_mark.name}:{at.line}:{at.column}: a `<<:` merge "
                        "includes the mapping it is in (a recursive structure)")
    chain = chain | {id(node)}
    merges: list[Node] = []
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE:
            merges.extend(value_node.value if isinstance(value_node, SequenceNode)
                          else [value_node])
        else:
            yield key_node, value_node
    for merged in merges:
        if isinstance(merged, MappingNode):
            yield from _pairs(merged, chain)


class _Walker:
    """Records where each field is and keeps version-like floats under ``vars:`` as text."""

    def __init__(self, loader: _Loader, loaded: Loaded) -> None:
        self.loader, self.loaded = loader, loaded
        self.key_paths: dict[int, Path_] = {}  # id(key node) -> its field path
        self.visited: set[int] = set()
        self.stack: set[int] = set()

    def walk(self, node: Node, path: Path_) -> None:
        if path:
            self.loaded.values.setdefault(path, Position.of(node.start_mark))
        if id(node) in self.stack:
            where = self.loaded.where(path)
            raise SpecError(f"{where}: {'.'.join(path)}: an alias refers to a value that "
                            "contains it (a recursive structure)")
        if id(node) in self.visited:  # an alias: walked once, however often it is used
            return
        self.visited.add(id(node))
        if isinstance(node, ScalarNode):
            if path[:1] == ("vars",) and len(path) > 1 and id(node) in self.loader.plain_floats \
                    and keeps_text(node.value, self.loader.construct_yaml_float(node)):
                node.tag = _STR
            return
        self.stack.add(id(node))
        if isinstance(node, MappingNode):
            for key_node, value_node in _pairs(node):
                if not isinstance(key_node, ScalarNode):
                    continue
                sub = (*path, str(key_node.value))
                self.key_paths.setdefault(id(key_node), sub)
                self.loaded.keys.setdefault(sub, Position.of(key_node.start_mark))
                self.walk(value_node, sub)
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                self.walk(item, (*path, str(i)))
        self.stack.discard(id(node))


def load_yaml(text: str, *, source: str) -> Loaded:
    """Parses one YAML document; SpecError for invalid YAML and for duplicate keys, each with
    ``file:line:col``.

    Example:
        >>> load_yaml("a: 1\\na: 2\\n", source="x.yml")
        Traceback (most recent call last):
        ...
        rollout_py.errors.SpecError: x.yml: invalid rollout spec:
          x.yml:2:1: a: duplicate key (first at line 1)
    """
    loaded = Loaded(source)
    loader = _Loader(text, source)
    try:
        node = loader.get_single_node()
        if node is None:
            return loaded
        walker = _Walker(loader, loaded)
        walker.walk(node, ())
        loaded.data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _mark_error(source, exc) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        lines = []
        # In the file's order (PyYAML builds a mapping before the mappings inside it).
        for first, again in sorted(loader.duplicates, key=lambda d: d[1].start_mark.index):
            path = walker.key_paths.get(id(again), (str(again.value),))
            at = Position.of(again.start_mark)
            lines.append(f"  {source}:{at.line}:{at.column}: {'.'.join(path)}: duplicate key "
                         f"(first at line {first.start_mark.line + 1})")
        raise SpecError(f"{source}: invalid rollout spec:\n" + "\n".join(lines))
    return loaded


_LEADING_PATH = re.compile(r"^([A-Za-z_][\w.]*): (.*)$", re.S)


def split_leading_path(message: str) -> tuple[Path_, str]:
    """``("health", "probes"), "at least one"`` from ``"health.probes: at least one"``: the
    field a model-level check names first, so its error can point at that field.

    Example:
        >>> split_leading_path("health.probes: at least one probe is needed")
        (('health', 'probes'), 'at least one probe is needed')
    """
    m = _LEADING_PATH.match(message)
    return (tuple(m.group(1).split(".")), m.group(2)) if m else ((), message)
