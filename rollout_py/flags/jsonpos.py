"""Reads JSON text into plain data and where each field was written, refusing duplicate keys.

``json.loads`` forgets positions and lets a repeated key win silently. This is a small strict
JSON (RFC 8259) reader that fills a :class:`rollout_py.specload.Loaded` (the same field-path to
``line:col`` map the rollout spec uses), so flag file errors can say ``file:line:col``. NaN,
Infinity and numbers too large for a float are refused: they are not JSON.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Callable
from json.scanner import NUMBER_RE
from typing import Any

from rollout_py.errors import FlagError
from rollout_py.specload import Loaded, Path_, Position

# The stdlib's JSON string scanner (escapes, control characters), untyped in typeshed.
_scanstring: Callable[[str, int, bool], tuple[str, int]] = \
    json.decoder.scanstring  # type: ignore[attr-defined]
_WS = " \t\n\r"
_LITERALS: tuple[tuple[str, Any], ...] = (("true", True), ("false", False), ("null", None))


class _Reader:
    def __init__(self, text: str, loaded: Loaded) -> None:
        self.text, self.loaded = text, loaded
        self.line_starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
        self.duplicates: list[tuple[Path_, Position, Position]] = []

    def pos(self, index: int) -> Position:
        line = bisect.bisect_right(self.line_starts, index) - 1
        return Position(line + 1, index - self.line_starts[line] + 1)

    def fail(self, index: int, what: str) -> FlagError:
        at = self.pos(index)
        return FlagError(f"{self.loaded.source}:{at.line}:{at.column}: not valid JSON: {what}")

    def skip(self, i: int) -> int:
        while i < len(self.text) and self.text[i] in _WS:
            i += 1
        return i

    def string(self, i: int) -> tuple[str, int]:
        try:
            value, end = _scanstring(self.text, i + 1, True)
        except json.JSONDecodeError as exc:
            raise self.fail(exc.pos, exc.msg.lower().removesuffix(" at")) from None
        return value, end

    def value(self, i: int, path: Path_) -> tuple[Any, int]:
        i = self.skip(i)
        if i >= len(self.text):
            raise self.fail(i, "a value was expected, the text ended")
        if path:
            self.loaded.values.setdefault(path, self.pos(i))
        c = self.text[i]
        if c == "{":
            return self.obj(i, path)
        if c == "[":
            return self.array(i, path)
        if c == '"':
            return self.string(i)
        for word, literal in _LITERALS:
            if self.text.startswith(word, i):
                return literal, i + len(word)
        m = NUMBER_RE.match(self.text, i)
        if m:
            integer, frac, exp = m.groups()
            if not (frac or exp):
                return int(integer), m.end()
            number = float(integer + (frac or "") + (exp or ""))
            if not math.isfinite(number):
                raise self.fail(i, f"{m.group(0)} is too large for a number")
            return number, m.end()
        raise self.fail(i, f"unexpected {c!r} (a value was expected)")

    def obj(self, i: int, path: Path_) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        first: dict[str, Position] = {}
        i = self.skip(i + 1)
        if self.text.startswith("}", i):
            return out, i + 1
        while True:
            if not self.text.startswith('"', i):
                raise self.fail(i, "a key in double quotes was expected")
            key_at = self.pos(i)
            key, i = self.string(i)
            sub = (*path, key)
            if key in first:
                self.duplicates.append((sub, key_at, first[key]))
            else:
                first[key] = key_at
                self.loaded.keys.setdefault(sub, key_at)
            i = self.skip(i)
            if not self.text.startswith(":", i):
                raise self.fail(i, "':' was expected after a key")
            out[key], i = self.value(i + 1, sub)
            i = self.skip(i)
            if self.text.startswith(",", i):
                i = self.skip(i + 1)
                continue
            if self.text.startswith("}", i):
                return out, i + 1
            raise self.fail(i, "',' or '}' was expected")

    def array(self, i: int, path: Path_) -> tuple[list[Any], int]:
        out: list[Any] = []
        i = self.skip(i + 1)
        if self.text.startswith("]", i):
            return out, i + 1
        while True:
            item, i = self.value(i, (*path, str(len(out))))
            out.append(item)
            i = self.skip(i)
            if self.text.startswith(",", i):
                i += 1
                continue
            if self.text.startswith("]", i):
                return out, i + 1
            raise self.fail(i, "',' or ']' was expected")


def load_json(text: str, *, source: str) -> Loaded:
    """Parses one JSON document; FlagError for invalid JSON and for every duplicate key, each
    with ``file:line:col``.

    Example:
        >>> load_json('{"a": {"b": [1, 2]}}', source="f.json").where(("a", "b", 1))
        'f.json:1:17'
    """
    loaded = Loaded(source)
    reader = _Reader(text, loaded)
    try:
        loaded.data, end = reader.value(0, ())
    except RecursionError:
        raise FlagError(f"{source}: not valid JSON: nested too deeply") from None
    end = reader.skip(end)
    if end < len(text):
        raise reader.fail(end, "extra text after the JSON document")
    if reader.duplicates:
        lines = [f"  {source}:{at.line}:{at.column}: {'.'.join(path)}: duplicate key "
                 f"(first at line {first.line})" for path, at, first in reader.duplicates]
        raise FlagError(f"{source}: invalid flag file:\n" + "\n".join(lines))
    return loaded
