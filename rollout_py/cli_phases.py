"""``rollout contract``: runs the spec's contract phase once every host runs the version it
requires (rollout_py.contract), printing each host's version, its source and its LB state.

Exit codes: 0 done (or forced); 1 the contract command failed; 2 refused by the version gate
or bad input (nothing ran); 4 the fleet is locked; 130 interrupted.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import click

from rollout_py.cli import EXIT_INPUT, EXIT_LOCKED, spec_option
from rollout_py.cli_output import json_refusals


@click.command("contract")
@spec_option
@click.option("-i", "--inventory", default=None, help="Inventory source (overrides the spec's).")
@click.option("--force", is_flag=True,
              help="Run the contract although some host may run an older version (loud, "
                   "journaled).")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None,
              help="State directory (default: .rollout beside the spec).")
@click.option("--lock-wait", type=click.FloatRange(0, 86400), default=0.0,
              help="Seconds to wait for the fleet's lock (default: fail at once).")
@click.option("--json", "as_json", is_flag=True, help="The result as one JSON object.")
@click.option("-v", "--verbose", count=True, help="More detail (repeat for Ansible's -vvv).")
@functools.partial(json_refusals, refused=EXIT_INPUT, locked=EXIT_LOCKED)
def contract(spec_file: Path, inventory: str | None, force: bool, state_dir: Path | None,
             lock_wait: float, as_json: bool, verbose: int) -> int:
    """Run the contract phase, refused while any host may run an older version."""
    from rollout_py import api
    from rollout_py.contract import contract as run

    spec = api.load_spec(spec_file)
    result = run(spec, force=force, inventory=inventory, state_dir=state_dir,
                 lock_wait=lock_wait, verbosity=max(0, verbose - 1))
    if result.status in ("forced", "failed", "cancelled"):
        for host in result.blocking:
            click.echo(f"rollout: WARNING: --force: {host.line()}", err=True)
        for why in result.unmet:
            click.echo(f"rollout: WARNING: --force: {why}", err=True)
    if as_json:
        click.echo(json.dumps({"result": result.to_json()}))
        return result.exit_code
    click.echo(f"contract (requires {result.requires}, on {result.on}):")
    for host in result.hosts:
        click.echo(f"  {'BLOCKS' if host.blocking else 'ok':<6} {host.line()}")
    for why in result.unmet:
        click.echo(f"  BLOCKS {why}")
    click.echo(f"{result.status} (exit {result.exit_code}): {result.cause}")
    if result.detail and result.status != "refused":
        click.echo("  output: " + result.detail.strip().splitlines()[-1][:300])
    return result.exit_code
