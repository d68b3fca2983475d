"""The ``rollout`` command line: parses arguments, calls the API, reports, sets the exit code.

Exit codes: 0 succeeded; 1 failed and rolled back; 2 invalid input or preflight refused
(nothing touched); 3 rollback incomplete (hosts left out of rotation, listed); 130 interrupted
after safe unwinding.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from rollout_py import __version__
from rollout_py.errors import InputError, LabPrerequisiteError, RolloutError
from rollout_py.lab.cli import lab

EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rollout")
def cli() -> None:
    """Rolling deploys for VM fleets behind HAProxy."""


cli.add_command(lab)


def parse_extravars(values: tuple[str, ...]) -> dict[str, Any]:
    """Ansible-style ``-e``: ``k=v [k2=v2]``, ``@file.yml`` or an inline YAML/JSON mapping."""
    out: dict[str, Any] = {}
    for value in values:
        if value.startswith("@"):
            path = Path(value[1:])
            try:
                data = yaml.safe_load(path.read_text())
            except OSError as exc:
                raise InputError(f"-e {value}: {exc.strerror or exc}") from exc
            except yaml.YAMLError as exc:
                raise InputError(f"-e {value}: not valid YAML/JSON: {exc}") from exc
            if not isinstance(data, dict):
                raise InputError(f"-e {value}: expected a mapping of variables")
            out.update(data)
        elif value.lstrip().startswith("{"):
            data = yaml.safe_load(value)
            if not isinstance(data, dict):
                raise InputError(f"-e {value!r}: expected a mapping")
            out.update(data)
        else:
            for pair in shlex.split(value):
                key, sep, val = pair.partition("=")
                if not sep or not key.isidentifier():
                    raise InputError(f"-e {pair!r}: expected key=value, @file or a mapping")
                out[key] = val
    return out


spec_option = click.option("-f", "--file", "spec_file", type=click.Path(path_type=Path),
                           default=Path("rollout.yml"), show_default=True,
                           help="The rollout spec.")
version_option = click.option("--version", "version", required=True,
                              help="The release to deploy.")
inventory_option = click.option("-i", "--inventory", default=None,
                                help="Inventory source (overrides the spec's).")
limit_option = click.option("-l", "--limit", default=None,
                            help="Further limit the hosts (Ansible pattern).")
force_option = click.option("--force", is_flag=True,
                            help="Deploy also to hosts already at the version.")


@cli.command()
@spec_option
@version_option
@inventory_option
@limit_option
@force_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(spec_file: Path, version: str, inventory: str | None, limit: str | None, force: bool,
         as_json: bool) -> int:
    """Show what a deploy would do; touches nothing."""
    from rollout_py import api
    from rollout_py.preflight import read_versions
    from rollout_py.report import plan_lines

    spec = api.load_spec(spec_file)
    ctx = api.Context.resolve(spec, inventory=inventory, limit=limit)
    versions = read_versions(ctx) if spec.version_url else {}
    the_plan = api.plan(spec, version=version, force=force, current_versions=versions,
                        context=ctx)
    if as_json:
        click.echo(json.dumps(the_plan.to_json(), indent=2))
    else:
        click.echo("\n".join(plan_lines(the_plan)))
    return EXIT_OK


@cli.command()
@spec_option
@version_option
@inventory_option
@limit_option
@click.option("-e", "--extra-vars", "extra", multiple=True,
              help="Extra variables: key=value, @file.yml, or a YAML/JSON mapping.")
@force_option
@click.option("--force-drain", is_flag=True,
              help="After drain_timeout, shut the remaining sessions instead of failing.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON event per line, then the result object.")
@click.option("-v", "--verbose", count=True, help="More detail (repeat for Ansible's -vvv).")
def deploy(spec_file: Path, version: str, inventory: str | None, limit: str | None,
           extra: tuple[str, ...], force: bool, force_drain: bool, as_json: bool,
           verbose: int) -> int:
    """Roll VERSION out in batches: drain, upgrade, probe, enable; roll back on failure."""
    from rollout_py import api
    from rollout_py.report import console_sink, json_sink, result_json, result_lines

    spec = api.load_spec(spec_file)
    extravars = parse_extravars(extra)
    sink = json_sink(sys.stdout) if as_json else console_sink(sys.stdout, verbose=verbose > 0)
    result = api.deploy(spec, version=version, inventory=inventory, limit=limit,
                        extravars=extravars, force=force, force_drain=force_drain,
                        sinks=[sink], verbosity=max(0, verbose - 1))
    if as_json:
        click.echo(json.dumps(result_json(result)))
    else:
        click.echo("\n".join(result_lines(result)))
    return result.exit_code


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
