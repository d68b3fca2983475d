"""Keeps secret values out of events, files and output: every copy is replaced by a mask."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

MASK = "********"
T = TypeVar("T")


class Redactor:
    """Replaces the values of secret variables wherever they appear.

    Example:
        >>> Redactor(["hunter22"]).text("password is hunter22")
        'password is ********'
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    @classmethod
    def for_vars(cls, variables: Mapping[str, Any], names: Iterable[str]) -> Redactor:
        values: list[str] = []
        for name in names:
            if name in variables:
                values += _leaves(variables[name])
        return cls(values)

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def text(self, value: str) -> str:
        for secret in self.secrets:
            value = value.replace(secret, MASK)
        return value

    def data(self, value: T) -> T:
        """A copy of a JSON-like value (or a dataclass) with every string redacted."""
        if not self.secrets:
            return value
        return self._walk(value)  # type: ignore[no-any-return]

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self._walk(k): self._walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._walk(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self._walk(v) for v in value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes = {f.name: self._walk(getattr(value, f.name))
                       for f in dataclasses.fields(value) if f.init}
            return dataclasses.replace(value, **changes)
        return value

    def scrub_tree(self, root: Path) -> int:
        """Rewrites every file under ``root`` that holds a secret; returns how many."""
        if not self.secrets or not root.exists():
            return 0
        needles = [s.encode() for s in self.secrets] + [
            json.dumps(s)[1:-1].encode() for s in self.secrets]  # JSON-escaped forms too
        changed = 0
        for path in root.rglob("*"):
            if not path.is_file() or path.is_symlink():
                continue
            data = path.read_bytes()
            if not any(n in data for n in needles):
                continue
            for needle in sorted(set(needles), key=len, reverse=True):
                data = data.replace(needle, MASK.encode())
            path.write_bytes(data)
            changed += 1
        return changed


def _leaves(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _leaves(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _leaves(v)]
    return [str(value)] if value is not None and str(value) else []
