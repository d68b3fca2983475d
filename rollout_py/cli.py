"""The ``rollout`` command line: parses arguments, calls the API, reports, sets the exit code."""

from __future__ import annotations

import sys

import click

from rollout_py import __version__
from rollout_py.errors import InputError, LabPrerequisiteError, RolloutError
from rollout_py.lab.cli import lab

# Exit codes (documented in the README).
EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rollout")
def cli() -> None:
    """Rolling deploys for VM fleets behind HAProxy."""


cli.add_command(lab)


def main() -> None:
    """Console entry point: maps rollout_py's errors to messages and exit codes."""
    try:
        # Commands return their exit code; click returns it (or an Exit's code) here.
        rc = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_INPUT)
    except (InputError, LabPrerequisiteError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_INPUT)
    except RolloutError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else EXIT_OK)
