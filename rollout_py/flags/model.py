"""A fleet's flag file in flagd's flag definition format: loading, validating, the model.

Design note: what rollout_py validates, and what it leaves to flagd
--------------------------------------------------------------------
rollout_py writes one flag file per fleet to every host; apps read it with OpenFeature's flagd
provider (in-process resolver, file mode). A bad file reaches every host at once, so it is
refused here, every problem in one error naming ``file:line:col`` and the field path, before
anything is touched. Checked (flagd's flag definition reference and its JSON schemas
``flags.json`` / ``targeting.json`` at flagd.dev/schema/v0; fractional operation spec):

- the top level is an object with ``flags`` (required), ``$evaluators``, ``metadata`` and
  ``$schema``; nothing else (a typo is refused, not ignored);
- a flag key is non-empty (flagd); rollout_py also refuses whitespace and control characters;
- a flag has ``state`` (``ENABLED`` | ``DISABLED``), ``variants`` (a non-empty object of
  name -> boolean, string, number or object, all of one type) and ``defaultVariant`` naming one
  of them, plus optional ``targeting`` (an object: JSONLogic, or ``{}``) and ``metadata``
  (string, number or boolean values); other keys are refused. flagd's newest schema lets
  ``defaultVariant`` be null or absent (apps then get their code default): rollout_py requires
  it, so what every host serves is decided by this file, not by code rollout_py cannot see;
- ``fractional``, wherever it appears in targeting or ``$evaluators``: an optional bucketing
  expression, then ``[variant, weight]`` (or ``[variant]``, weight 1) buckets, at least two
  items; weights are whole numbers >= 0 adding up to more than 0 (rollout_py's rule: flagd
  takes relative float weights, rollout_py writes percentages); in a flag, each bucket names
  one of its variants;
- ``{"$ref": name}`` names an entry of ``$evaluators``;
- duplicate keys are refused (JSON parsers keep the last one silently).

Left to flagd: every other JSONLogic operator and its arguments (JSONLogic is extensible,
providers add operators), the variant names that non-fractional rules return (computed at
evaluation), ``sem_ver``/``starts_with`` arguments, and variant names inside shared evaluators
(which flag uses them is only known at evaluation).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

from rollout_py.errors import FlagError, SpecError
from rollout_py.flags.checks import check
from rollout_py.flags.jsonpos import load_json
from rollout_py.specload import Loaded, load_yaml, read_text

State = Literal["ENABLED", "DISABLED"]
Json = Any  # a JSON value: dict, list, str, int, float, bool or None

SCHEMA_URL = "https://flagd.dev/schema/v0/flags.json"


def _frozen(value: Mapping[str, Json]) -> Mapping[str, Json]:
    return MappingProxyType(copy.deepcopy(dict(value)))


@dataclass(frozen=True, slots=True)
class Flag:
    """One flag. Mappings are read-only views; the JSON inside them is not to be changed
    (edits in rollout_py.flags.edit build new flags)."""

    state: State
    variants: Mapping[str, Json]
    default_variant: str
    targeting: Mapping[str, Json] = field(default_factory=lambda: MappingProxyType({}))
    metadata: Mapping[str, Json] | None = None

    def to_data(self) -> dict[str, Json]:
        """The flag as flagd reads it (a deep copy)."""
        out: dict[str, Json] = {"state": self.state, "variants": dict(self.variants),
                                "defaultVariant": self.default_variant,
                                "targeting": dict(self.targeting)}
        if self.metadata is not None:
            out["metadata"] = dict(self.metadata)
        return copy.deepcopy(out)

    def replace(self, **changes: Any) -> Flag:
        """A new flag with ``changes`` (mappings copied and frozen)."""
        fields = {"state": self.state, "variants": self.variants,
                  "default_variant": self.default_variant, "targeting": self.targeting,
                  "metadata": self.metadata, **changes}
        for name in ("variants", "targeting", "metadata"):
            if fields[name] is not None:
                fields[name] = _frozen(fields[name])
        return Flag(**fields)


@dataclass(frozen=True, slots=True)
class FlagFile:
    """A validated flag file: flags by name (in the file's order), shared evaluators, the
    flag set's metadata and ``$schema``; ``source`` names where it came from."""

    flags: Mapping[str, Flag]
    evaluators: Mapping[str, Json] = field(default_factory=lambda: MappingProxyType({}))
    metadata: Mapping[str, Json] | None = None
    schema: str | None = SCHEMA_URL
    source: str = "<memory>"

    def flag(self, name: str) -> Flag:
        """The flag called ``name``; FlagError naming the flags there are otherwise."""
        try:
            return self.flags[name]
        except KeyError:
            raise FlagError(f"{self.source}: no flag {name!r} (flags: "
                            f"{', '.join(self.flags) or '(none)'})") from None

    def with_flag(self, name: str, flag: Flag) -> FlagFile:
        """A new file with ``name`` replaced by ``flag`` (the others shared, unchanged)."""
        flags = dict(self.flags)
        flags[name] = flag
        return FlagFile(MappingProxyType(flags), self.evaluators, self.metadata, self.schema,
                        self.source)

    def to_data(self) -> dict[str, Json]:
        """The file as flagd reads it (a deep copy)."""
        out: dict[str, Json] = {"flags": {n: f.to_data() for n, f in self.flags.items()}}
        if self.schema is not None:
            out["$schema"] = self.schema
        if self.evaluators:
            out["$evaluators"] = copy.deepcopy(dict(self.evaluators))
        if self.metadata is not None:
            out["metadata"] = copy.deepcopy(dict(self.metadata))
        return out


def _error(source: str, problems: list[Any], positions: Loaded | None) -> FlagError:
    lines = []
    for p in problems:
        text = ".".join(p.path) or "(top level)"
        where = f"{positions.where(p.path, key=p.key)}: " if positions is not None else ""
        lines.append(f"  {where}{text}: {p.message}")
    return FlagError(f"{source}: invalid flag file:\n" + "\n".join(lines))


def parse_flags(data: Any, *, source: str = "<memory>",
                positions: Loaded | None = None) -> FlagFile:
    """Validates already-loaded flag file data; with ``positions`` errors say
    ``file:line:col``. The FlagFile holds copies: ``data`` is not kept.

    Example:
        >>> ff = parse_flags({"flags": {"new-greeting": {"state": "ENABLED",
        ...     "variants": {"on": True, "off": False}, "defaultVariant": "off"}}})
        >>> ff.flags["new-greeting"].default_variant
        'off'
    """
    problems = check(data)
    if problems:
        raise _error(source, problems, positions)
    flags = {name: Flag(state=cast(State, f["state"]), variants=_frozen(f["variants"]),
                        default_variant=f["defaultVariant"],
                        targeting=_frozen(f.get("targeting", {})),
                        metadata=_frozen(f["metadata"]) if "metadata" in f else None)
             for name, f in data["flags"].items()}
    return FlagFile(flags=MappingProxyType(flags),
                    evaluators=_frozen(data.get("$evaluators", {})),
                    metadata=_frozen(data["metadata"]) if "metadata" in data else None,
                    schema=data.get("$schema"), source=source)


def _read(path: Path) -> str:
    return read_text(path, what="the flag file", hint="a flag file is JSON", error=FlagError)


def load_flags(path: str | Path) -> FlagFile:
    """Reads and validates a flag file: JSON, or YAML when it ends in .yml/.yaml.

    Example:
        >>> ff = load_flags("flags.json")  # doctest: +SKIP
    """
    path = Path(path)
    text, source = _read(path), str(path)
    if path.suffix in (".yml", ".yaml"):
        try:
            loaded = load_yaml(text, source=source)
        except SpecError as exc:  # specload speaks of rollout specs
            raise FlagError(str(exc).replace("invalid rollout spec", "invalid flag file")
                            ) from None
    else:
        loaded = load_json(text, source=source)
    return parse_flags(loaded.data, source=source, positions=loaded)
