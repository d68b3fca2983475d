"""The rules a flag file (flagd's flag definition format) must follow, as a list of problems.

Each problem is a field path and what is wrong with it; ``rollout_py.flags.model`` turns them
into one error naming ``file:line:col`` for each. All problems are found in one pass, so a
user fixes a file once. The rules and where they come from are listed in model.py's note.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

STATES = ("ENABLED", "DISABLED")
TOP_KEYS = ("$schema", "flags", "$evaluators", "metadata")
FLAG_KEYS = ("state", "variants", "defaultVariant", "targeting", "metadata")
# flagd's schema accepts any non-empty key; rollout_py also refuses whitespace and control
# characters, which make a flag impossible to name on a command line or in a message.
_FLAG_NAME = re.compile(r"[^\s\x00-\x1f\x7f]+")


@dataclass(frozen=True, slots=True)
class Problem:
    """One broken rule: the field it is about (its key when ``key``) and the message."""

    path: tuple[str, ...]
    message: str
    key: bool = False


def kind(value: Any) -> str:
    """The JSON type of a value, as messages say it: ``a boolean``, ``an object``."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "null" if value is None else "an object"


def _names(names: Sequence[Any]) -> str:
    return ", ".join(map(str, names)) if names else "(none)"


def _not_text(value: Any) -> str:
    """Why a YAML key is not a string: unquoted on/off/yes/no/1 are booleans and numbers."""
    return f"{value!r} is not a string (quote it in YAML: on, off, yes, no are booleans there)"


class _Checker:
    def __init__(self, evaluators: Mapping[str, Any]) -> None:
        self.problems: list[Problem] = []
        self.evaluators = evaluators

    def add(self, path: Sequence[Any], message: str, *, key: bool = False) -> None:
        self.problems.append(Problem(tuple(str(p) for p in path), message, key))

    def unknown_keys(self, data: Mapping[str, Any], path: Sequence[str],
                     allowed: Sequence[str]) -> None:
        for k in data:
            if k not in allowed:
                self.add((*path, k), f"unknown key (expected one of {', '.join(allowed)})",
                         key=True)

    def metadata(self, value: Any, path: Sequence[str]) -> None:
        if not isinstance(value, dict):
            self.add(path, f"must be an object, not {kind(value)}")
            return
        for k, v in value.items():
            if not isinstance(v, str | int | float):  # bool is an int
                self.add((*path, k), f"metadata values are strings, numbers or booleans, "
                                     f"not {kind(v)}")

    def variants(self, value: Any, path: Sequence[str]) -> list[str]:
        if not isinstance(value, dict) or not value:
            what = "an empty object" if value == {} else kind(value)
            self.add(path, f"must be an object of variant name -> value, not {what}")
            return []
        first_name, first = next(iter(value.items()))
        for name, v in value.items():
            if not isinstance(name, str):
                self.add(path, f"variant name {_not_text(name)}")
                continue
            if name == "":
                self.add((*path, name), "a variant name must not be empty", key=True)
            if v is None or isinstance(v, list):
                self.add((*path, name), f"a variant value is a boolean, string, number or "
                                        f"object, not {kind(v)}")
            elif kind(v) != kind(first) and kind(first) not in ("null", "an array"):
                self.add((*path, name), f"all variants of a flag must have the same type: "
                                        f"{first_name!r} is {kind(first)}, {name!r} is "
                                        f"{kind(v)}")
        return [name for name in value if isinstance(name, str)]

    def targeting(self, value: Any, path: Sequence[str], variants: Sequence[str] | None
                  ) -> None:
        """JSONLogic: any operator is allowed; ``fractional`` and ``$ref`` are checked."""
        if isinstance(value, list):
            for i, item in enumerate(value):
                self.targeting(item, (*path, str(i)), variants)
        elif isinstance(value, dict):
            for op, arg in value.items():
                if op == "fractional":
                    self.fractional(arg, (*path, op), variants)
                elif op == "$ref":
                    if not isinstance(arg, str) or arg not in self.evaluators:
                        self.add((*path, op), f"{arg!r} is not one of the shared evaluators "
                                              f"($evaluators): {_names(list(self.evaluators))}")
                else:
                    self.targeting(arg, (*path, op), variants)

    def fractional(self, arg: Any, path: Sequence[str], variants: Sequence[str] | None
                   ) -> None:
        if not isinstance(arg, list):
            self.add(path, f"must be an array of [variant, weight] buckets, not {kind(arg)}")
            return
        buckets = list(enumerate(arg))
        if arg and not isinstance(arg[0], list):  # a bucketing expression comes first
            self.targeting(arg[0], (*path, "0"), variants)
            buckets = buckets[1:]
        if len(arg) < 2 or not buckets:
            self.add(path, "needs at least two items: [variant, weight] buckets, optionally "
                           "after a bucketing expression")
            return
        total = 0
        for i, bucket in buckets:
            at = (*path, str(i))
            if not isinstance(bucket, list) or not 1 <= len(bucket) <= 2:
                self.add(at, "a bucket is [variant, weight] (or [variant], weight 1), "
                             f"not {kind(bucket) if not isinstance(bucket, list) else bucket}")
                continue
            name, weight = bucket[0], bucket[1] if len(bucket) == 2 else 1
            if not isinstance(name, str):
                self.add((*at, "0"), f"a bucket's variant is a string, not {kind(name)}")
            elif variants is not None and name not in variants:
                self.add((*at, "0"), f"{name!r} is not one of the variants {_names(variants)}")
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
                self.add((*at, "1"), f"a weight is a whole number 0 or more, not {weight!r}")
            else:
                total += weight
        if total == 0 and not any(p.path[:len(path)] == tuple(path) and p.path != tuple(path)
                                  for p in self.problems):
            self.add(path, "the weights add up to 0: no variant can be chosen")

    def flag(self, name: Any, value: Any) -> None:
        path = ("flags", str(name))
        if not isinstance(name, str):
            self.add(("flags",), f"flag name {_not_text(name)}")
            return
        if not _FLAG_NAME.fullmatch(name):
            self.add(path, f"flag name {name!r} must be non-empty, without spaces or control "
                           "characters", key=True)
        if not isinstance(value, dict):
            self.add(path, f"a flag is an object, not {kind(value)}")
            return
        self.unknown_keys(value, path, FLAG_KEYS)
        for required in ("state", "variants", "defaultVariant"):
            if required not in value:
                self.add((*path, required), "required key is missing")
        state = value.get("state", STATES[0])
        if state not in STATES:
            self.add((*path, "state"), f"{state!r} is not ENABLED or DISABLED")
        names = self.variants(value["variants"], (*path, "variants")) \
            if "variants" in value else []
        default = value.get("defaultVariant")
        if "defaultVariant" in value and default not in names:
            what = repr(default) if isinstance(default, str) else kind(default)
            self.add((*path, "defaultVariant"), f"{what} is not one of the variants "
                                                f"{_names(names)}")
        targeting = value.get("targeting", {})
        if not isinstance(targeting, dict):
            self.add((*path, "targeting"), f"must be an object (JSONLogic, or {{}}), "
                                           f"not {kind(targeting)}")
        else:
            self.targeting(targeting, (*path, "targeting"), names)
        if "metadata" in value:
            self.metadata(value["metadata"], (*path, "metadata"))


def check(data: Any) -> list[Problem]:
    """Every problem in a flag file's data (empty when it is valid): top-level keys and
    metadata, then $evaluators, then the flags in the file's order."""
    if not isinstance(data, dict):
        return [Problem((), f"a flag file is a JSON object, not {kind(data)}")]
    evaluators = data.get("$evaluators", {})
    checker = _Checker(evaluators if isinstance(evaluators, dict) else {})
    checker.unknown_keys(data, (), TOP_KEYS)
    if "$schema" in data and not isinstance(data["$schema"], str):
        checker.add(("$schema",), f"must be a string, not {kind(data['$schema'])}")
    if "metadata" in data:
        checker.metadata(data["metadata"], ("metadata",))
    if not isinstance(evaluators, dict):
        checker.add(("$evaluators",), f"must be an object of name -> JSONLogic, "
                                      f"not {kind(evaluators)}")
    else:
        for name, rule in evaluators.items():
            # The flag using a shared rule is unknown here: variant names are checked in
            # flags only, bucket shapes and weights everywhere.
            checker.targeting(rule, ("$evaluators", name), None)
    flags = data.get("flags")
    if "flags" not in data:
        checker.add(("flags",), "required key is missing")
    elif not isinstance(flags, dict):
        checker.add(("flags",), f"must be an object of flag name -> flag, not {kind(flags)}")
    else:
        for name, flag in flags.items():
            checker.flag(name, flag)
    return checker.problems
