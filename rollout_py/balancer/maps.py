"""HAProxy maps: read and change them over the runtime API, and render/parse map files.

Runtime map changes live in HAProxy's memory only: a reload reads the map file again, so a
change that must survive a reload is written to the file too (``render_map_file``).

Commands and answers (HAProxy 2.6, checked on 2.6.12):

- ``show map <map>`` answers one ``0x<ref> <key> <value>`` line per entry;
- ``set map <map> <key> <value>`` (every entry with that key), ``add map <map> <key> <value>``
  (a new entry, even if the key exists) and ``del map <map> <key>`` answer nothing on success,
  and a message on failure (``entry not found.``, ``Key not found.``, ``Unknown map
  identifier. Please use #<id> or <file>.``);
- ``prepare map <map>`` answers ``New version created: <ver>``; ``add map @<ver> <map> <key>
  <value>`` fills that version unseen; ``commit map @<ver> <map>`` swaps it in atomically.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from rollout_py.balancer.runtime import RuntimeAPI
from rollout_py.errors import BalancerError, UnsafeNameError

# A map file's path (as HAProxy on the LB host sees it) or its numeric id ``#<id>``.
_MAP_PATH = re.compile(r"^/[A-Za-z0-9_./@:+-]{1,255}$")
_MAP_ID = re.compile(r"^#[0-9]{1,9}$")
# Keys and values: printable ASCII without whitespace (HAProxy splits arguments on spaces),
# ';' (chains commands), '\\' (HAProxy's escape) and '#' first (a map id ref, a file comment).
_WORD = re.compile(r"^[!-~]{1,512}$")
_SHOW_LINE = re.compile(r"^0x[0-9a-fA-F]+ (\S+) (.*)$")
_VERSION = re.compile(r"^New version created: ([0-9]+)$")


def validate_map_ref(map_ref: str) -> str:
    """Returns ``map_ref`` if it is an absolute map file path or ``#<id>``, else raises.

    Example:
        >>> validate_map_ref("/etc/haproxy/pools.map")
        '/etc/haproxy/pools.map'
    """
    if _MAP_ID.fullmatch(map_ref) or (_MAP_PATH.fullmatch(map_ref) and ".." not in map_ref):
        return map_ref
    raise UnsafeNameError(
        f"map {map_ref!r} is neither an absolute path (letters, digits, '_./@:+-') nor '#<id>'")


def validate_map_word(kind: str, word: str) -> str:
    """Returns ``word`` if it is safe as a map key or value on one command line, else raises.

    Example:
        >>> validate_map_word("value", "app_green")
        'app_green'
    """
    if not _WORD.fullmatch(word) or ";" in word or "\\" in word or word.startswith("#"):
        raise UnsafeNameError(
            f"map {kind} {word!r} is not allowed: it must be 1-512 printable ASCII characters "
            "without spaces, ';' or '\\\\', not starting with '#'")
    return word


def _expect_empty(api: RuntimeAPI, command: str) -> None:
    answer = api.raw(command)
    if answer.strip():  # map changes answer nothing on success
        raise BalancerError(f"HAProxy refused {command!r}: {answer.strip()}")


def parse_show_map(answer: str) -> dict[str, str]:
    """Parses ``show map <map>``; a key listed twice keeps its first value (HAProxy's match).

    Example:
        >>> parse_show_map("0x55b8 live app_blue\\n0x55b9 preview app_green\\n")
        {'live': 'app_blue', 'preview': 'app_green'}
    """
    entries: dict[str, str] = {}
    for line in answer.splitlines():
        if not line.strip():
            continue
        match = _SHOW_LINE.fullmatch(line.strip())
        if match is None:
            raise BalancerError(f"unexpected 'show map' answer: {answer.strip()[:200]!r}")
        entries.setdefault(match.group(1), match.group(2))
    return entries


def show_map(api: RuntimeAPI, map_ref: str) -> dict[str, str]:
    """The map's entries as HAProxy holds them now (runtime changes included)."""
    validate_map_ref(map_ref)
    return parse_show_map(api.raw(f"show map {map_ref}"))


def set_map(api: RuntimeAPI, map_ref: str, key: str, value: str) -> None:
    """Sets ``key`` (which must exist) to ``value``."""
    validate_map_ref(map_ref)
    validate_map_word("key", key)
    validate_map_word("value", value)
    _expect_empty(api, f"set map {map_ref} {key} {value}")


def add_map(api: RuntimeAPI, map_ref: str, key: str, value: str) -> None:
    """Adds an entry (HAProxy adds a second one if ``key`` exists: use ``set_map`` then)."""
    validate_map_ref(map_ref)
    validate_map_word("key", key)
    validate_map_word("value", value)
    _expect_empty(api, f"add map {map_ref} {key} {value}")


def del_map(api: RuntimeAPI, map_ref: str, key: str) -> None:
    """Deletes every entry with ``key`` (which must exist)."""
    validate_map_ref(map_ref)
    validate_map_word("key", key)
    _expect_empty(api, f"del map {map_ref} {key}")


def replace_map(api: RuntimeAPI, map_ref: str, entries: Mapping[str, str]) -> int:
    """Replaces the map's whole content atomically (``prepare``/``add @ver``/``commit``):
    requests see the old entries or the new ones, never a mix. Returns the committed version.

    Every key and value is validated before anything is sent. If an ``add`` fails, the
    prepared version is never committed (the live map is untouched; HAProxy drops it at the
    next ``prepare``).
    """
    version = prepare_map(api, map_ref, entries)
    commit_map(api, map_ref, version)
    return version


def prepare_map(api: RuntimeAPI, map_ref: str, entries: Mapping[str, str]) -> int:
    """A new version of the map holding exactly ``entries``, unseen by requests until
    ``commit_map``; every key and value validated before anything is sent."""
    validate_map_ref(map_ref)
    for key, value in entries.items():
        validate_map_word("key", key)
        validate_map_word("value", value)
    answer = api.raw(f"prepare map {map_ref}")
    match = _VERSION.fullmatch(answer.strip())
    if match is None:
        raise BalancerError(f"HAProxy refused 'prepare map {map_ref}': {answer.strip()}")
    version = int(match.group(1))
    for key, value in entries.items():
        _expect_empty(api, f"add map @{version} {map_ref} {key} {value}")
    return version


def commit_map(api: RuntimeAPI, map_ref: str, version: int) -> None:
    """Swaps a prepared version in, atomically."""
    _expect_empty(api, f"commit map @{version} {validate_map_ref(map_ref)}")


def render_map_file(entries: Mapping[str, str]) -> str:
    """A map file: one ``key value`` line per entry (keys and values validated).

    Example:
        >>> render_map_file({"live": "app_blue"})
        '# Written by rollout_py.\\nlive app_blue\\n'
    """
    lines = ["# Written by rollout_py."]
    for key, value in entries.items():
        lines.append(f"{validate_map_word('key', key)} {validate_map_word('value', value)}")
    return "\n".join(lines) + "\n"


def parse_map_file(text: str) -> dict[str, str]:
    """Reads a map file as HAProxy does: ``key value`` per line, blank lines and lines that
    start with ``#`` skipped, the value is the rest of the line (trimmed); a key alone is
    refused here (ValueError). A repeated key keeps its first value.

    Example:
        >>> parse_map_file("# pools\\nlive app_blue\\n\\npreview  app_green\\n")
        {'live': 'app_blue', 'preview': 'app_green'}
    """
    entries: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise ValueError(f"map file line {number} has a key but no value: {raw!r}")
        entries.setdefault(parts[0], parts[1].strip())
    return entries
