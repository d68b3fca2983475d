"""Unit-test setup shared by every module."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def children_tmpdir() -> Iterator[Path]:
    """The processes the unit tests start put their temporary files in a directory of their
    own, removed at the end: a module run a test kills on purpose (a cancel, a lost node)
    cannot clean up after itself, and Ansible's module payloads would stay in /tmp. Short
    (under /tmp), so sockets made there keep within the length Unix allows."""
    path = Path(tempfile.mkdtemp(prefix="rollout-unit-"))
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(path)
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = before
        shutil.rmtree(path, ignore_errors=True)
