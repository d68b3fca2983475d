"""Field types the spec's sections share: an http(s) URL and an HAProxy backend name, each
refused with what was expected."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator

_HAPROXY_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def http_url(value: str) -> str:
    """``value`` if it is an http:// or https:// URL.

    Example:
        >>> http_url("http://127.0.0.1:9090")
        'http://127.0.0.1:9090'
    """
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, not {value!r}")
    return value


def backend_name(value: str) -> str:
    """``value`` if HAProxy accepts it as a backend name.

    Example:
        >>> backend_name("app_blue")
        'app_blue'
    """
    if not _HAPROXY_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid HAProxy backend name "
                         "(letters, digits, '-', '_', '.', ':')")
    return value


HttpUrl = Annotated[str, AfterValidator(http_url)]
BackendName = Annotated[str, AfterValidator(backend_name)]


def yaml_on_key(data: Any) -> Any:
    """A mapping whose unquoted ``on:`` key YAML 1.1 (PyYAML) read as the boolean true, with
    the key ``on`` again (a model's before-validator; other data passes as it is)."""
    if isinstance(data, dict) and True in data and "on" not in data:
        return {("on" if k is True else k): v for k, v in data.items()}
    return data
