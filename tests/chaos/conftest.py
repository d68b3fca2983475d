"""A fresh lab per fault scenario (faults leave hosts broken), always torn down."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rollout_py.lab import lab as lab_mod
from rollout_py.lab.layout import Layout
from tests.integration.conftest import assert_lab_gone


@pytest.fixture
def chaos_lab(tmp_path: Path) -> Iterator[Callable[..., Layout]]:
    if os.geteuid() != 0:
        pytest.fail("the fault suite needs root (network namespaces)")
    made: list[Path] = []

    def make(n_hosts: int = 3, n_lbs: int = 1) -> Layout:
        lab_dir = tmp_path / f"lab{len(made)}"
        made.append(lab_dir)
        return lab_mod.up(lab_dir, n_hosts=n_hosts, n_lbs=n_lbs)

    yield make
    for lab_dir in made:
        layout = Layout.load(lab_dir)
        lab_mod.down(lab_dir)
        if layout is not None:
            assert_lab_gone(layout)
