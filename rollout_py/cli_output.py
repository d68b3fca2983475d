"""What the commands that change the fleet (deploy, rollback, resume) print and write: progress
sinks, the final result (also for a refusal, with ``--json``), the log and metrics files."""

from __future__ import annotations

import contextvars
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from rollout_py.errors import InputError, LockHeldError, RolloutError


def undelivered(deploy_id: str, state_root: Path) -> dict[str, str]:
    """Webhook notifications of the deploy that were not delivered (from its record)."""
    path = state_root / "deploys" / deploy_id / "notifications.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in report.items() if v != "delivered"}


def json_refusals(fn: Any, *, refused: int, locked: int) -> Any:
    """Wraps a command: with ``--json``, a refusal (InputError: exit ``refused``; exit
    ``locked`` for LockHeldError) is also printed as the result on stdout, one line
    ``{"result": {"status": "refused"|"locked", "exit_code", "cause", "deploy_id"}}``; then
    the error goes on, to be said on stderr and mapped to the exit code as ever."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InputError as exc:
            if kwargs.get("as_json"):
                from rollout_py.report import refusal_json

                held = isinstance(exc, LockHeldError)
                click.echo(json.dumps(refusal_json(
                    str(exc), status="locked" if held else "refused",
                    exit_code=locked if held else refused,
                    deploy_id=getattr(exc, "deploy_id", None) or kwargs.get("deploy_id"))))
            raise

    return wrapper


# Set by live_option while a command runs: may it show the live view, and its spec file.
_LIVE: contextvars.ContextVar[tuple[bool, Path | None]] = contextvars.ContextVar(
    "rollout_live", default=(False, None))


def live_option(fn: Any) -> Any:
    """Adds ``--no-live`` to a command that changes the fleet: without it, on a terminal (and
    without ``--json``), run_with_outputs shows the live view (rollout_py.live_sink)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = _LIVE.set((not kwargs.pop("no_live", False), kwargs.get("spec_file")))
        try:
            return fn(*args, **kwargs)
        finally:
            _LIVE.reset(token)

    return click.option("--no-live", is_flag=True,
                        help="Plain progress lines also on a terminal (no live table).")(wrapper)


def run_with_outputs(action: Any, *, as_json: bool, log_file: Path | None,
                     metrics_file: Path | None, verbose: int, state_root: Path) -> int:
    """Runs a deploy-like action with the console/JSON/log sinks; reports; writes metrics.
    Returns the result's exit code."""
    from rollout_py.metrics import write_metrics
    from rollout_py.report import console_sink, found_out, json_sink, result_json, result_lines
    from rollout_py.state import read_journal

    live_wanted, spec_file = _LIVE.get()
    live = None
    if live_wanted and not as_json:
        from rollout_py.live_sink import live_sink

        live = live_sink(sys.stdout, verbose=verbose > 0, spec_file=spec_file,
                         state_root=state_root)
    sinks = [json_sink(sys.stdout) if as_json else
             live or console_sink(sys.stdout, verbose=verbose > 0)]
    log = None
    if log_file is not None:
        log = open(log_file, "a", encoding="utf-8")  # noqa: SIM115 (closed below)
        sinks.append(console_sink(log, verbose=True, wall_clock=True))
    started = time.time()
    try:
        if live is not None:
            live.start()
        try:
            result = action(sinks)
        finally:
            if live is not None:
                live.stop()
        for webhook, delivery in undelivered(result.deploy_id, state_root).items():
            click.echo(f"rollout: warning: webhook {webhook}: {delivery}", err=True)
        try:  # the journal has every batch, also those a resumed deploy ran before
            found = found_out(read_journal(state_root / "deploys" / result.deploy_id
                                           / "journal.jsonl"))
        except (OSError, RolloutError):
            found = {}
        lines = result_lines(result, found)
        if as_json:
            click.echo(json.dumps(result_json(result, found)))
        else:
            click.echo("\n".join(lines))
        if log is not None:
            log.write("\n".join(lines) + "\n")
        if metrics_file is not None:
            write_metrics(metrics_file, result, started=started, finished=time.time())
        return int(result.exit_code)
    finally:
        if log is not None:
            log.close()
