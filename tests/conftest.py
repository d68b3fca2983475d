"""Shared test configuration: markers by directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_BY_DIR = {"unit": pytest.mark.unit, "integration": pytest.mark.integration,
           "chaos": pytest.mark.chaos}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for name, mark in _BY_DIR.items():
            if name in parts:
                item.add_marker(mark)


# Ansible's executables live beside this interpreter (the project's venv); ansible-runner and
# molecule look for them on PATH, also when pytest is started as .venv/bin/python -m pytest.
_BIN = os.path.dirname(sys.executable)
if _BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")
