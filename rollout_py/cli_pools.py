"""``rollout switch-back``: every LB's live route back to the other pool of a blue/green
fleet, at once, journaled and locked like a deploy.

Exit codes as for deploys: 0 switched, 5 refused by the capacity floor (nothing switched),
1 an LB refused (nothing left switched), 2 bad input, 4 locked, 130 interrupted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from rollout_py.cli import _unattended, spec_option
from rollout_py.cli_output import run_with_outputs


@click.command("switch-back")
@spec_option
@_unattended
def switch_back(spec_file: Path, extra: tuple[str, ...], secret_vars: tuple[str, ...],
                state_dir: Path | None, lock_wait: float, as_json: bool,
                log_file: Path | None, metrics_file: Path | None, verbose: int,
                ignore_metrics: bool) -> int:
    """Switch every LB's live route back to the other pool (blue/green), at once."""
    from rollout_py import api
    from rollout_py.api_switch import switch_back as run

    spec = api.load_spec(spec_file)
    del extra, secret_vars, verbose, ignore_metrics  # shared options a switch-back ignores

    def go(sinks: Any) -> Any:
        return run(spec, sinks=sinks, state_dir=state_dir, lock_wait=lock_wait)

    return run_with_outputs(go, as_json=as_json, log_file=log_file,
                            metrics_file=metrics_file, verbose=0,
                            state_root=state_dir or spec.state_path())
