"""The ``rollout`` command line: parses arguments, calls the API, reports, sets the exit code.

Exit codes: 0 succeeded; 1 a batch failed and was rolled back; 2 invalid input or preflight
refused (nothing touched); 3 hosts left out of rotation (listed); 4 the fleet is locked by
another deploy or a hold (named); 5 stopped before a batch, nothing rolled back (resumable);
130 interrupted after safe unwinding (resumable).
"""

from __future__ import annotations

import importlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from rollout_py import __version__
from rollout_py.cli_output import json_refusals, live_option
from rollout_py.cli_output import run_with_outputs as _run
from rollout_py.errors import InputError, LabPrerequisiteError, LockHeldError, RolloutError

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_LOCKED = 0, 1, 2, 4

# Subcommands imported only when used: name -> (module, attribute, its help for the listing).
# The lab pulls in its network, process and HAProxy code, which no other command needs.
LAZY_COMMANDS = {
    "lab": ("rollout_py.lab.cli", "lab",
            "A local fleet: network-namespace hosts with sshd and a sample app behind HAProxy."),
    # Operator controls for a running deploy, sent through the state directory.
    "promote": ("rollout_py.cli_controls", "promote",
                "Go to the running canary's next step now (--all: skip every remaining step)."),
    "abort": ("rollout_py.cli_controls", "abort", "Roll the running canary back now."),
    "pause": ("rollout_py.cli_controls", "pause",
              "Hold the running deploy at its next safe point (nothing out of rotation)."),
    "continue": ("rollout_py.cli_controls", "continue_", "End a pause of the running deploy."),
    "switch-back": ("rollout_py.cli_pools", "switch_back",
                    "Blue/green: switch every LB's live route back to the other pool, at once."),
    "flag": ("rollout_py.cli_flags", "flag",
             "Feature flags in flagd's format: check a file; list, set, ramp, kill on the fleet."),
    "contract": ("rollout_py.cli_phases", "contract",
                 "Run the spec's contract phase, refused while a host may run an older version."),
    "report": ("rollout_py.cli_report", "report",
               "A deploy's report: timelines, steps, analysis, rollbacks (HTML, JSON, text)."),
    "schema": ("rollout_py.cli_schema", "schema",
               "Print the JSON Schema of rollout.yml (for editors and CI checks)."),
}


class _LazyGroup(click.Group):
    """A group that imports the modules of its LAZY_COMMANDS only when one of them runs."""

    _listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in LAZY_COMMANDS or cmd_name in self.commands:
            return super().get_command(ctx, cmd_name)
        module, attr, help_text = LAZY_COMMANDS[cmd_name]
        if self._listing:  # `rollout --help` shows one line per command: no import for that
            return click.Command(cmd_name, help=help_text)
        command = getattr(importlib.import_module(module), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{module}.{attr} is not a click command")
        self.add_command(command, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            self._listing = False


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rollout")
def cli() -> None:
    """Rolling deploys for VM fleets behind HAProxy."""


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
                            help="Deploy also to hosts already at the version, and to servers "
                                 "someone put in MAINT or DRAIN (left so afterwards).")
no_rollback_option = click.option(
    "--allow-no-rollback", is_flag=True,
    help="Deploy even if a failed batch could not be rolled back (no previous version known).")


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
    from rollout_py.report import plan_json, plan_lines
    from rollout_py.report_phases import phase_plan
    from rollout_py.session import node_pool

    spec = api.load_spec(spec_file)
    ctx = api.Context.resolve(spec, inventory=inventory, limit=limit)
    phases = phase_plan(ctx)  # expand before batch 1, migrate after the last (InputError)
    versions = read_versions(ctx) if spec.version_url else {}
    the_plan = api.plan(spec, version=version, force=force, current_versions=versions,
                        context=ctx)
    weights = api.lb_weights(spec, the_plan) if the_plan.traffic else None
    nodes = node_pool(ctx)
    if as_json:
        click.echo(json.dumps(plan_json(the_plan, weights, phases, spec.haproxy.shaping,
                                        nodes.placement if nodes is not None else None),
                              indent=2))
    else:
        click.echo("\n".join(plan_lines(the_plan, weights, phases,
                                        nodes.describe if nodes is not None else None)))
        if spec.haproxy.shaping is not None:
            click.echo("\n".join(f"shaping: {line}" for line in spec.haproxy.shaping.describe()))
    return EXIT_OK


def _unattended(fn: Any) -> Any:
    """Options shared by the commands that change the fleet (deploy, resume, rollback)."""
    fn = live_option(json_refusals(fn, refused=EXIT_INPUT, locked=EXIT_LOCKED))
    for option in reversed([
        click.option("-e", "--extra-vars", "extra", multiple=True,
                     help="Extra variables: key=value, @file.yml, or a YAML/JSON mapping."),
        click.option("--secret-var", "secret_vars", multiple=True, metavar="NAME",
                     help="A variable whose value must never be written or shown (repeat)."),
        click.option("--state-dir", type=click.Path(path_type=Path), default=None,
                     help="State directory (default: .rollout beside the spec)."),
        click.option("--lock-wait", type=click.FloatRange(0, 86400), default=0.0,
                     help="Seconds to wait for the fleet's lock (default: fail at once)."),
        click.option("--json", "as_json", is_flag=True,
                     help="One JSON event per line, then the result object."),
        click.option("--log-file", type=click.Path(path_type=Path), default=None,
                     help="Also append the progress lines to this file."),
        click.option("--metrics-file", type=click.Path(path_type=Path), default=None,
                     help="Write a node_exporter textfile with the outcome."),
        click.option("-v", "--verbose", count=True,
                     help="More detail (repeat for Ansible's -vvv)."),
        click.option("--ignore-metrics-unavailable", "ignore_metrics", is_flag=True,
                     help="A Prometheus gate that cannot be read passes with a journaled "
                          "warning (default: inconclusive, which never passes)."),
    ]):
        fn = option(fn)
    return fn


@cli.command()
@spec_option
@version_option
@inventory_option
@limit_option
@force_option
@click.option("--force-drain", is_flag=True,
              help="After drain_timeout, shut the remaining sessions instead of failing.")
@no_rollback_option
@_unattended
def deploy(spec_file: Path, version: str, inventory: str | None, limit: str | None,
           force: bool, force_drain: bool, allow_no_rollback: bool, extra: tuple[str, ...],
           secret_vars: tuple[str, ...], state_dir: Path | None, lock_wait: float,
           as_json: bool, log_file: Path | None, metrics_file: Path | None,
           verbose: int, ignore_metrics: bool) -> int:
    """Roll VERSION out in batches: drain, upgrade, probe, enable; roll back on failure."""
    from rollout_py import api

    spec = api.load_spec(spec_file)
    extravars = parse_extravars(extra)
    return _run(lambda sinks: api.deploy(
        spec, version=version, inventory=inventory, limit=limit, extravars=extravars,
        secret_vars=secret_vars, force=force, force_drain=force_drain,
        allow_no_rollback=allow_no_rollback, sinks=sinks, state_dir=state_dir,
        lock_wait=lock_wait, verbosity=max(0, verbose - 1), ignore_metrics=ignore_metrics),
        as_json=as_json, log_file=log_file, metrics_file=metrics_file, verbose=verbose,
        state_root=state_dir or spec.state_path())


@cli.command()
@spec_option
@click.option("--to", "target", default=None,
              help="Version to return to (default: the one before the last successful deploy).")
@inventory_option
@limit_option
@force_option
@no_rollback_option
@_unattended
def rollback(spec_file: Path, target: str | None, inventory: str | None, limit: str | None,
             force: bool, allow_no_rollback: bool, extra: tuple[str, ...],
             secret_vars: tuple[str, ...], state_dir: Path | None, lock_wait: float,
             as_json: bool, log_file: Path | None, metrics_file: Path | None,
             verbose: int, ignore_metrics: bool) -> int:
    """Return the whole fleet to the previous (or named) version, with the same safety."""
    from rollout_py import api
    from rollout_py.operations import rollback_target

    spec = api.load_spec(spec_file)
    version = target or rollback_target(spec, state_dir=state_dir)
    if not as_json:
        click.echo(f"rolling back to {version}")
    extravars = parse_extravars(extra)
    return _run(lambda sinks: api.deploy(
        spec, version=version, inventory=inventory, limit=limit, extravars=extravars,
        secret_vars=secret_vars, force=force, allow_no_rollback=allow_no_rollback,
        sinks=sinks, state_dir=state_dir, lock_wait=lock_wait, verbosity=max(0, verbose - 1),
        strategy="rolling", ignore_metrics=ignore_metrics),
        as_json=as_json, log_file=log_file, metrics_file=metrics_file, verbose=verbose,
        state_root=state_dir or spec.state_path())


@cli.command()
@click.argument("deploy_id", required=False)
@spec_option
@click.option("--no-continue", is_flag=True,
              help="Only reconcile the interrupted batch; do not run the remaining ones.")
@_unattended
def resume(deploy_id: str | None, spec_file: Path, no_continue: bool, extra: tuple[str, ...],
           secret_vars: tuple[str, ...], state_dir: Path | None, lock_wait: float,
           as_json: bool, log_file: Path | None, metrics_file: Path | None,
           verbose: int, ignore_metrics: bool) -> int:
    """Take over a stopped deploy (default: the last one): died, interrupted or stopped."""
    from rollout_py import api

    spec = api.load_spec(spec_file)
    extravars = parse_extravars(extra)
    return _run(lambda sinks: api.resume(
        spec, deploy_id, continue_=not no_continue, extravars=extravars,
        secret_vars=secret_vars, sinks=sinks, state_dir=state_dir, lock_wait=lock_wait,
        verbosity=max(0, verbose - 1), ignore_metrics=ignore_metrics),
        as_json=as_json, log_file=log_file, metrics_file=metrics_file, verbose=verbose,
        state_root=state_dir or spec.state_path())


state_option = click.option("--state-dir", type=click.Path(path_type=Path), default=None,
                            help="State directory (default: .rollout beside the spec).")


@cli.command()
@spec_option
@state_option
@click.option("--json", "as_json", is_flag=True, help="JSON (schema rollout.status/1).")
def status(spec_file: Path, state_dir: Path | None, as_json: bool) -> int:
    """The current or last deploy beside the live HAProxy state; flags hosts out of rotation."""
    from rollout_py import api, operations

    info = operations.status(api.load_spec(spec_file), state_dir=state_dir)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        from rollout_py.report import status_lines

        click.echo("\n".join(status_lines(info)))
    return EXIT_OK if not info["flagged"] and not info["lb_errors"] else EXIT_FAILED


@cli.command()
@spec_option
@state_option
@click.option("-n", "--count", "count", type=click.IntRange(1), default=None, metavar="N",
              help="Only the newest N deploys.")
@click.option("--json", "as_json", is_flag=True, help="JSON (schema rollout.history/1).")
def history(spec_file: Path, state_dir: Path | None, count: int | None, as_json: bool) -> int:
    """Past deploys: who, when, version from -> to, outcome, duration, rollback cause."""
    from rollout_py import api, operations

    info = operations.history(api.load_spec(spec_file), state_dir=state_dir, limit=count)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        from rollout_py.report import history_lines

        click.echo("\n".join(history_lines(info)))
    return EXIT_OK


@cli.group()
def lock() -> None:
    """The fleet's deploy lock: who holds it; manual holds."""


def _fleet_lock(spec_file: Path, state_dir: Path | None) -> Any:
    from rollout_py import api
    from rollout_py.lock import FleetLock, fleet_key

    spec = api.load_spec(spec_file)
    ctx = api.Context.resolve(spec)
    root = state_dir or spec.state_path()
    return FleetLock(root, fleet_key(spec.name, ctx.inventory_source))


@lock.command("status")
@spec_option
@state_option
@click.option("--json", "as_json", is_flag=True)
def lock_status(spec_file: Path, state_dir: Path | None, as_json: bool) -> int:
    """Who holds the fleet, if anyone (exit 4 if held)."""
    from dataclasses import asdict

    holder = _fleet_lock(spec_file, state_dir).status()
    if as_json:
        click.echo(json.dumps(asdict(holder) if holder else None))
    else:
        click.echo(holder.describe() if holder else "free")
    return EXIT_LOCKED if holder else EXIT_OK


@lock.command("acquire")
@spec_option
@state_option
@click.option("-m", "--message", required=True, help="Why (shown to anyone refused).")
def lock_acquire(spec_file: Path, state_dir: Path | None, message: str) -> int:
    """Leave a manual hold: deploys are refused until `rollout lock release`."""
    holder = _fleet_lock(spec_file, state_dir).hold(message=message)
    click.echo(f"held: {holder.describe()}")
    return EXIT_OK


@lock.command("release")
@spec_option
@state_option
def lock_release(spec_file: Path, state_dir: Path | None) -> int:
    """Remove a manual hold (a running deploy's lock is released when it ends)."""
    released = _fleet_lock(spec_file, state_dir).release_hold()
    click.echo("released" if released else "no manual hold")
    return EXIT_OK


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
    except LockHeldError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_LOCKED)
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
