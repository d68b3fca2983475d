"""Open-loop load in several client classes at once, each at its own rate, summarised per class.

Each class is a ``LoadGenerator`` whose requests carry ``X-Client-Class: <class>`` (what the
lab's ``--shaping`` HAProxy config prioritises and sheds by).

Example:
    >>> parse_classes(["production=200", "heavy=100"])
    {'production': 200.0, 'heavy': 100.0}
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from rollout_py.errors import InputError
from rollout_py.lab.load import LoadGenerator, Summary
from rollout_py.lab.shaping import CLASS_HEADER

_CLASS = re.compile(r"^([A-Za-z0-9_.-]{1,64})=([0-9]+(?:\.[0-9]+)?)$")


def parse_classes(values: Iterable[str]) -> dict[str, float]:
    """``NAME=RPS`` values (``--class production=200``) as {class: rate}; raises InputError."""
    rates: dict[str, float] = {}
    for value in values:
        m = _CLASS.fullmatch(value.strip())
        if m is None:
            raise InputError(f"--class {value!r}: expected NAME=RPS, e.g. production=200 "
                             "(letters, digits, '_.-')")
        if m.group(1) in rates:
            raise InputError(f"--class {m.group(1)} is given twice")
        rates[m.group(1)] = float(m.group(2))
    return rates


class ClassLoad:
    """One open-loop generator per class, started and stopped together.

    Example:
        >>> load = ClassLoad("http://127.0.0.1:8000/", {"production": 50}, duration=10
        ...                  ).start()  # doctest: +SKIP
        >>> load.stop()["production"].failed  # doctest: +SKIP
        0
    """

    def __init__(self, url: str, rates: Mapping[str, float], *, duration: float,
                 keepalive: bool = False, workers: int = 64) -> None:
        if not rates:
            raise InputError("no client class to send: give --class NAME=RPS")
        self.generators = {
            name: LoadGenerator(url, rps=rps, duration=duration, keepalive=keepalive,
                                workers=workers, headers={CLASS_HEADER: name})
            for name, rps in rates.items()}

    def start(self) -> ClassLoad:
        for gen in self.generators.values():
            gen.start()
        return self

    def stop(self) -> dict[str, Summary]:
        """Stops every class now; waits for requests in flight."""
        for gen in self.generators.values():
            gen._stop.set()  # all at once, then wait for each
        return self.wait()

    def wait(self) -> dict[str, Summary]:
        return {name: gen.wait() for name, gen in self.generators.items()}

    def run(self) -> dict[str, Summary]:
        return self.start().wait()


def class_lines(summaries: Mapping[str, Summary]) -> list[str]:
    """One line per class: requests, ok, failed (and why), p50/p99/max latency."""
    lines = []
    for name, s in summaries.items():
        why = ", ".join(f"{k}: {v}" for k, v in s.failures.items())
        lines.append(f"{name:<12} {s.sent:6d} sent {s.ok:6d} ok {s.failed:6d} failed  "
                     f"p50 {s.p50_ms:7.1f} ms  p99 {s.p99_ms:7.1f} ms  max {s.max_ms:7.1f} ms"
                     + (f"  ({why})" if why else ""))
    return lines


def classes_json(summaries: Mapping[str, Summary]) -> dict[str, Any]:
    return {name: s.to_json() for name, s in summaries.items()}
