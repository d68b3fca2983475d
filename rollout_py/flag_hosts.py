"""The flag file on the hosts: written through Ansible (playbooks/flags_push.yml), compared, and
watched until every host serves it.

Ansible acts on hosts: one ansible-runner run over every host at once (forks = hosts) writes
the file with the copy module, which renames a temporary file over the target, so an app that
polls the file never reads half of one. The effect check is in-process HTTP, in parallel, like
the probes: GET the spec's ``effect.url`` on each host and read the header naming the variant
the host evaluated.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests

from rollout_py.executor import Cancel, Executor
from rollout_py.resources import playbook

# (url, header) -> the header's value, or None (no answer, no header)
Fetch = Callable[[str, str], str | None]


def sha1(text: str) -> str:
    """The SHA-1 of the text's UTF-8 bytes, as Ansible's stat reports a file's checksum."""
    return hashlib.sha1(text.encode()).hexdigest()


def http_header(url: str, header: str, timeout: float = 2.0) -> str | None:
    """One GET; the response's ``header`` (None on any error or without it)."""
    try:
        with requests.Session() as session:
            session.trust_env = False  # never through a proxy from the environment
            resp = session.get(url, timeout=timeout, allow_redirects=False)
    except (OSError, ValueError, requests.RequestException):
        return None
    return resp.headers.get(header)


@dataclass(frozen=True, slots=True)
class Pushed:
    """One run over every host: each host's outcome ("ok" or why not) and its duration."""

    hosts: dict[str, str]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(v == "ok" for v in self.hosts.values())

    def bad(self) -> dict[str, str]:
        return {h: v for h, v in self.hosts.items() if v != "ok"}


@dataclass(frozen=True, slots=True)
class Effect:
    """When each host served a variant, from the push's start (None: not within the timeout)."""

    hosts: dict[str, float | None]
    fleet_s: float | None
    detail: str


class FlagHosts:
    """The fleet's hosts for one flag file at ``path`` on each.

    Example:
        >>> fh = FlagHosts(executor, ["app01"], "/srv/app/flags.json",
        ...                work_dir=Path("runs"))  # doctest: +SKIP
        >>> fh.push('{"flags": {}}\\n', label="flag-set").ok  # doctest: +SKIP
        True
    """

    def __init__(self, executor: Executor, hosts: Sequence[str], path: str, *, work_dir: Path,
                 effect_urls: Mapping[str, str] | None = None, header: str = "",
                 fetch: Fetch = http_header, poll: float = 0.05) -> None:
        self.executor, self.hosts, self.path = executor, list(hosts), path
        self.work_dir = work_dir
        self.effect_urls = dict(effect_urls or {})
        self.header, self.fetch, self.poll = header, fetch, poll
        self._n = 0

    def _source(self, content: str, label: str) -> Path:
        """The content as a file on the controller (the copy module's ``src``), kept beside
        the change's journal."""
        self._n += 1
        self.work_dir.mkdir(parents=True, exist_ok=True)
        path = self.work_dir / f"{self._n:03d}-{label}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, path)
        return path.resolve()

    def push(self, content: str, *, label: str, cancel: Cancel | None = None) -> Pushed:
        """Writes ``content`` at ``path`` on every host, all at once."""
        src = self._source(content, label)
        started = time.monotonic()
        result = self.executor.run_playbook(
            str(playbook("flags_push.yml")), self.hosts,
            {"rollout_flag_src": str(src), "rollout_flag_path": self.path},
            label=label, cancel=cancel)
        return Pushed(dict(result.hosts), round(time.monotonic() - started, 3))

    def compare(self, content: str) -> Pushed:
        """Each host: "ok" when its file is ``content`` byte for byte, else why not."""
        started = time.monotonic()
        result = self.executor.run_playbook(
            str(playbook("flags_push.yml")), self.hosts,
            {"rollout_flag_compare": True, "rollout_flag_sha1": sha1(content),
             "rollout_flag_path": self.path}, label="flag-compare")
        return Pushed(dict(result.hosts), round(time.monotonic() - started, 3))

    def wait_effect(self, variant: str, *, since: float, timeout: float) -> Effect:
        """Polls every host until its response names ``variant``; times from ``since``
        (a ``time.monotonic()`` value: the push's start)."""
        if not self.effect_urls:
            return Effect({}, None, "no effect check in the spec")
        deadline = time.monotonic() + timeout
        last: dict[str, str | None] = {}

        def one(host: str) -> float | None:
            url = self.effect_urls[host]
            while True:
                last[host] = value = self.fetch(url, self.header)
                if value == variant:
                    return round(time.monotonic() - since, 3)
                if time.monotonic() >= deadline:
                    return None
                time.sleep(self.poll)

        hosts = list(self.effect_urls)
        with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
            seen = dict(zip(hosts, pool.map(one, hosts), strict=True))
        missing = [h for h, s in seen.items() if s is None]
        fleet = None if missing else max((s for s in seen.values() if s is not None),
                                         default=0.0)
        detail = (f"not serving {variant!r} after {timeout:g} s: " + ", ".join(
            f"{h} ({self.header}: {last.get(h)!r})" for h in missing)) if missing else ""
        return Effect(seen, fleet, detail)
