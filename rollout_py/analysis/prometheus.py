"""Reads the one number a Prometheus gate's PromQL query answers, or says why there is none.

``query(url, promql, timeout)`` asks ``GET {url}/api/v1/query`` and returns a float, or a
string naming why there is no number (unreachable, HTTP error, Prometheus' own error, an empty
result, several series, NaN or an infinity, a range vector). Never raises for any of these:
the gate turns a string into an inconclusive verdict. ``parse_answer`` is the pure half.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import requests

# url, query, timeout -> the number the query answers, or why there is none
# (the shape of rollout_py.saga.PromQuery).
PromQuery = Callable[[str, str, float], "float | str"]


def parse_answer(body: Any) -> float | str:
    """The number in a ``/api/v1/query`` JSON answer, or why there is not exactly one.

    Example:
        >>> parse_answer({"status": "success", "data": {"resultType": "vector", "result": [
        ...     {"metric": {"server": "app01"}, "value": [1700000000.0, "0.25"]}]}})
        0.25
        >>> parse_answer({"status": "success", "data": {"resultType": "vector", "result": []}})
        'no series (empty result)'
    """
    if not isinstance(body, dict):
        return f"not a Prometheus answer: {str(body)[:200]!r}"
    if body.get("status") != "success":
        kind, error = body.get("errorType", "error"), body.get("error", "no detail")
        return f"Prometheus refused the query: {kind}: {error}"
    data = body.get("data")
    if not isinstance(data, dict):
        return "not a Prometheus answer: no data"
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        return _number(result)
    if kind != "vector":
        return f"a {kind} result, not one number (use an instant vector or a scalar)"
    if not isinstance(result, list) or not result:
        return "no series (empty result)"
    if len(result) > 1:
        labels = ", ".join(_labels(r) for r in result[:3])
        more = ", ..." if len(result) > 3 else ""
        return f"{len(result)} series, not one (aggregate them, e.g. sum(...)): {labels}{more}"
    sample = result[0]
    return _number(sample.get("value") if isinstance(sample, dict) else None)


def _number(value: Any) -> float | str:
    """The float of a ``[timestamp, "value"]`` pair, if finite."""
    try:
        number = float(value[1])
    except (TypeError, ValueError, IndexError, KeyError):
        return f"not a sample: {str(value)[:200]!r}"
    if not math.isfinite(number):
        return f"the query answered {value[1]} (no traffic to divide by?)"
    return number


def _labels(series: Any) -> str:
    metric = series.get("metric", {}) if isinstance(series, dict) else {}
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(metric.items())) + "}"


def query(url: str, promql: str, timeout: float) -> float | str:
    """Asks the Prometheus at ``url`` for ``promql`` now; a float, or why there is none."""
    endpoint = f"{url.rstrip('/')}/api/v1/query"
    try:
        resp = requests.get(endpoint, params={"query": promql}, timeout=timeout)
    except requests.RequestException as exc:
        return f"Prometheus unreachable at {url}: {exc}"
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code != 200:
        if isinstance(body, dict) and body.get("status") == "error":
            return f"HTTP {resp.status_code}: {parse_answer(body)}"
        return f"HTTP {resp.status_code} from {endpoint}: {resp.text.strip()[:200]}"
    if body is None:
        return f"not JSON from {endpoint}: {resp.text.strip()[:200]!r}"
    return parse_answer(body)
