"""Lab fixtures: a real fleet (namespace hosts, sshd, HAProxy) per test module, always torn down."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rollout_py.lab import lab as lab_mod
from rollout_py.lab import net
from rollout_py.lab.layout import Layout

REPO = Path(__file__).resolve().parents[2]


def rollout(*args: str, check: bool = False, timeout: float = 300
            ) -> subprocess.CompletedProcess[str]:
    """Runs the ``rollout`` CLI as a user would."""
    cmd = [sys.executable, "-m", "rollout_py", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=os.environ | {"PYTHONPATH": str(REPO)})
    if check and proc.returncode != 0:
        raise AssertionError(f"rollout {' '.join(args)} -> {proc.returncode}\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def assert_lab_gone(layout: Layout) -> None:
    """Nothing of the lab is left: namespaces, links, processes, inventory; the guard stays."""
    names = set(net.list_netns())
    assert not [h.netns for h in layout.all_hosts if h.netns in names]
    assert not net.link_exists(layout.bridge)
    assert not [h.veth for h in layout.all_hosts if net.link_exists(h.veth)]
    from rollout_py.lab.procs import Proc
    alive = [key for key, p in layout.procs.items() if Proc.from_json(p).alive()]
    assert alive == []
    assert not (layout.path / "inventory.ini").exists()
    assert not (layout.path / "lab.json").exists()
    assert net.has_guard(net.check_block(layout.block))


@pytest.fixture(scope="session")
def root_required() -> None:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (network namespaces); run the README's "
                    "test command as root")


LabFactory = Callable[..., Layout]


@pytest.fixture(scope="module")
def lab_factory(root_required: None, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[LabFactory]:
    """Brings labs up on demand; every one is brought down at the end, even after failures."""
    made: list[Path] = []

    def make(n_hosts: int = 4, n_lbs: int = 1, name: str = "lab",
             with_prometheus: bool = False, n_pools: int = 1,
             with_shaping: bool = False, with_db: bool = False, n_exec: int = 0) -> Layout:
        lab_dir = tmp_path_factory.mktemp(name)
        made.append(lab_dir)
        return lab_mod.up(lab_dir, n_hosts=n_hosts, n_lbs=n_lbs,
                          with_prometheus=with_prometheus, n_pools=n_pools,
                          with_shaping=with_shaping, with_db=with_db, n_exec=n_exec)

    yield make
    errors = []
    for lab_dir in made:
        layout = Layout.load(lab_dir)
        try:
            lab_mod.down(lab_dir)
        except Exception as exc:  # keep tearing down the others
            errors.append(exc)
        if layout is not None:
            assert_lab_gone(layout)
    if errors:
        raise errors[0]
