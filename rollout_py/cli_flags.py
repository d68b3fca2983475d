"""``rollout flag check FILE``: validate a flag file in flagd's format and show its flags.

It touches nothing: a file refused here (exit 2, every problem with file:line:col) is never
written to a host. Writing flags to the fleet (set, ramp, kill) comes with the flag commands
that change it.
"""

from __future__ import annotations

from pathlib import Path

import click

from rollout_py.cli import EXIT_OK


@click.group()
def flag() -> None:
    """Feature flags in flagd's format (OpenFeature's flagd provider reads them)."""


@flag.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the normalised file as JSON.")
def check(path: Path, as_json: bool) -> int:
    """Validate FILE (JSON or YAML); print one line per flag, or the file as it would be
    written (--json). Exit 2 with every problem found when it is invalid."""
    from rollout_py.flags.edit import describe, to_json
    from rollout_py.flags.model import load_flags

    flags = load_flags(path)  # FlagError (an InputError): exit 2, said by main
    if as_json:
        click.echo(to_json(flags), nl=False)
    else:
        click.echo("\n".join([f"{path}: valid, {len(describe(flags))} flag(s)",
                              *(f"  {line}" for line in describe(flags))]))
    return EXIT_OK


__all__ = ["flag"]
