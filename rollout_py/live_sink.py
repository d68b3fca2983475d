"""Drives rich's Live with the live view (rollout_py.live_view) on a terminal: each event's
progress line is printed above the table, as the plain console prints it, and the table is
redrawn at once and at least 4 times a second (the elapsed time)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import IO

from rich.console import Console, RenderableType
from rich.live import Live

from rollout_py import events as ev
from rollout_py.errors import RolloutError
from rollout_py.live_view import LiveState, apply, fold, render
from rollout_py.report import progress_line
from rollout_py.state import read_journal


class LiveSink:
    """An event sink; ``start`` before the deploy, ``stop`` after it (the last table stays)."""

    def __init__(self, console: Console, *, verbose: bool = False,
                 consecutive: int | None = None, state_root: Path | None = None) -> None:
        self.console = console
        self.state_root = state_root  # a resume's view starts from the deploy's journal
        self.verbose = verbose
        self.state = LiveState(consecutive=consecutive)
        self._start = time.monotonic()
        self._lock = threading.Lock()  # events may come from the engine's watch threads
        # Python's writes to stderr go above the table only when stderr is a terminal too
        # (else they stay where the user sent them, e.g. `2>err.log`).
        self.live = Live(self, console=console, refresh_per_second=4, transient=False,
                         redirect_stderr=sys.stderr.isatty())

    def __rich__(self) -> RenderableType:
        # What fits under the header, the table's head and the line of hosts not shown.
        return render(self.state, time.time(), max_rows=max(3, self.console.height - 5))

    def __call__(self, e: ev.Event) -> None:
        line = progress_line(e, self._start, verbose=self.verbose)
        with self._lock:
            if isinstance(e, ev.DeployResumed) and not self.state.hosts:
                self.state = self._journaled(e)
            self.state = apply(self.state, e)
            if line is not None:  # printing above the table redraws it
                self.console.print(line, markup=False, highlight=False, emoji=False,
                                   soft_wrap=True)
            else:
                self.live.refresh()

    def _journaled(self, e: ev.Event) -> LiveState:
        """The view after the events the deploy journaled before this run took it over."""
        if self.state_root is None:
            return self.state
        path = self.state_root / "deploys" / e.deploy_id / "journal.jsonl"
        try:
            earlier = [x for x in read_journal(path) if x.seq < e.seq]
        except (OSError, RolloutError):
            return self.state
        return fold(earlier, self.state.consecutive)

    def start(self) -> None:
        self._start = time.monotonic()
        self.live.start()

    def stop(self) -> None:
        self.live.stop()


def _consecutive(spec_file: Path | None) -> int | None:
    """The spec's health.consecutive (the probes a host must pass in a row), if readable."""
    if spec_file is None:
        return None
    from rollout_py import api

    try:
        return int(api.load_spec(spec_file).health.consecutive)
    except (RolloutError, OSError, ValueError, AttributeError):
        return None


def live_sink(out: IO[str], *, verbose: bool, spec_file: Path | None,
              state_root: Path | None = None) -> LiveSink | None:
    """A live sink on ``out`` if it is a terminal that can redraw (else None: plain lines)."""
    if not out.isatty():
        return None
    console = Console(file=out)
    if not console.is_terminal or console.is_dumb_terminal:
        return None
    return LiveSink(console, verbose=verbose, consecutive=_consecutive(spec_file),
                    state_root=state_root)
