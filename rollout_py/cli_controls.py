"""``rollout promote|abort|pause|continue``: send an operator control to the running deploy.

Each command writes one file in the state directory (rollout_py.controls) and returns at once;
the running deploy reads it at its next check, acts on it and journals it. Exit 0 when sent;
2 when no deploy is running there (or not the one named): nothing is sent then.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from rollout_py import events as ev
from rollout_py.cli import (
    EXIT_INPUT,
    EXIT_LOCKED,
    EXIT_OK,
    LAZY_COMMANDS,
    spec_option,
    state_option,
)
from rollout_py.cli_output import json_refusals


def _options(fn: Any) -> Any:
    """The options every control command takes."""
    fn = json_refusals(fn, refused=EXIT_INPUT, locked=EXIT_LOCKED)
    for option in reversed([
        spec_option,
        state_option,
        click.option("--deploy-id", default=None, metavar="ID",
                     help="Send only if this is the running deploy (needed if several run "
                          "on the state directory)."),
        click.option("--reason", default=None, metavar="TEXT",
                     help="Why (journaled with the control)."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print what was sent as one JSON object."),
    ]):
        fn = option(fn)
    return fn


def send(action: ev.ControlAction, *, spec_file: Path, state_dir: Path | None,
         deploy_id: str | None, reason: str | None, as_json: bool) -> int:
    """Sends ``action`` to the deploy running on the spec's state directory; says what."""
    from rollout_py.controls import COMMANDS, send_control
    from rollout_py.spec import load_spec

    spec = load_spec(spec_file)
    root = state_dir or spec.state_path()
    control = send_control(root, action, deploy_id=deploy_id, reason=reason, fleet=spec.name)
    if as_json:
        click.echo(json.dumps({"status": "sent", "state_dir": str(root),
                               "control": control.to_json()}))
    else:
        click.echo(f"sent {COMMANDS[action]} to deploy {control.deploy_id} (control "
                   f"{control.id}); the running deploy journals it when it acts on it")
    return EXIT_OK


@click.command("promote", help=LAZY_COMMANDS["promote"][2])
@click.option("--all", "all_steps", is_flag=True, help="Skip every remaining canary step.")
@_options
def promote(all_steps: bool, spec_file: Path, state_dir: Path | None, deploy_id: str | None,
            reason: str | None, as_json: bool) -> int:
    return send("promote_all" if all_steps else "promote", spec_file=spec_file,
                state_dir=state_dir, deploy_id=deploy_id, reason=reason, as_json=as_json)


@click.command("abort", help=LAZY_COMMANDS["abort"][2])
@_options
def abort(spec_file: Path, state_dir: Path | None, deploy_id: str | None, reason: str | None,
          as_json: bool) -> int:
    return send("abort", spec_file=spec_file, state_dir=state_dir, deploy_id=deploy_id,
                reason=reason, as_json=as_json)


@click.command("pause", help=LAZY_COMMANDS["pause"][2])
@_options
def pause(spec_file: Path, state_dir: Path | None, deploy_id: str | None, reason: str | None,
          as_json: bool) -> int:
    return send("pause", spec_file=spec_file, state_dir=state_dir, deploy_id=deploy_id,
                reason=reason, as_json=as_json)


@click.command("continue", help=LAZY_COMMANDS["continue"][2])
@_options
def continue_(spec_file: Path, state_dir: Path | None, deploy_id: str | None,
              reason: str | None, as_json: bool) -> int:
    return send("continue", spec_file=spec_file, state_dir=state_dir, deploy_id=deploy_id,
                reason=reason, as_json=as_json)
