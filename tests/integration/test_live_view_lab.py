"""The live view on a real terminal: `rollout deploy` under a pseudo-terminal on a 2-host lab
shows each host's new state within a second of the event that changed it (the journal's
``ts``), and the plain progress lines still go above the table."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pexpect
import pytest

from rollout_py import live_view as lv
from rollout_py.lab import artifact
from rollout_py.lab.layout import Layout
from rollout_py.state import read_journal
from tests.integration.conftest import LabFactory
from tests.integration.deploykit import REPO, write_spec

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
# A host's row of the table: host │ batch │ state │ ...
_ROW = re.compile(r"^\s*(\S+)\s*│\s*(?:\d+|-)\s*│\s*([^│]+?)\s*│", re.M)


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> Layout:
    layout = lab_factory(n_hosts=2, n_lbs=1, name="live")
    artifact.build_artifact(layout.artifacts, "2.0")
    return layout


def test_each_host_state_shows_on_the_terminal_within_a_second(
        lab: Layout, tmp_path: Path) -> None:
    spec = write_spec(lab, tmp_path / "rollout.yml", batches=[1])
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env |= {"PYTHONPATH": str(REPO), "TERM": "xterm-256color"}
    child = pexpect.spawn(sys.executable, ["-m", "rollout_py", "deploy", "-f", str(spec),
                                           "--version", "2.0"],
                          cwd=str(REPO), env=env, encoding="utf-8", codec_errors="replace",
                          dimensions=(50, 250))
    hosts = {h.name for h in lab.app_hosts}
    seen: dict[tuple[str, str], float] = {}  # (host, state) -> when the terminal first showed it
    raw = ""
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline, f"deploy still running; output so far:\n{raw}"
        try:
            chunk = child.read_nonblocking(65536, timeout=0.05)
        except pexpect.TIMEOUT:
            continue
        except pexpect.EOF:
            break
        now = time.time()
        start = max(0, len(raw) - 4000)  # rows redrawn across the chunk's boundary
        raw += chunk
        for host, state in _ROW.findall(_ANSI.sub("", raw[start:])):
            if host in hosts:
                seen.setdefault((host, state), now)
    child.close()
    text = _ANSI.sub("", raw)
    assert child.exitstatus == 0, text
    assert "succeeded (exit 0)" in text
    assert re.search(r"\d+\.\ds  \[batch 1\] MAINT ", text), text  # the lines, as before

    # When each host's state changed, by the fold over the journal.
    journal = next((tmp_path / ".rollout" / "deploys").glob("*/journal.jsonl"))
    state = lv.LiveState()
    changes: dict[str, list[tuple[str, float]]] = {h: [] for h in hosts}
    for e in read_journal(journal):
        before = {h: v.state for h, v in state.hosts.items()}
        state = lv.apply(state, e)
        for host, view in state.hosts.items():
            if host in changes and before.get(host) != view.state:
                changes[host].append((view.state, e.ts))
    late = []
    for host, sequence in changes.items():
        assert sequence[-1][0] == lv.DONE and (host, lv.DONE) in seen, (host, sequence, seen)
        for i, (new, at) in enumerate(sequence):
            # It shows within a second, or is replaced by a later state that does (a state
            # that lasted less than a redraw need not be drawn).
            shown = [seen[(host, s)] for s, _ in sequence[i:] if (host, s) in seen]
            if not shown or min(shown) - at > 1.0:
                late.append((host, new, at, min(shown) - at if shown else None))
    assert not late, (late, changes, seen)
