"""``rollout flag check FILE``: validate a flag file in flagd's format and show its flags.

``check`` touches nothing: a file refused here (exit 2, every problem with file:line:col) is
never written to a host. ``list``, ``set``, ``ramp`` and ``kill`` work on the fleet's flag file
(the spec's ``flags:`` section) through rollout_py.flag_api: exit 0 done, 1 reverted, 2 bad
input (nothing touched), 3 some host left on other content (listed), 4 locked, 130
interrupted (reverted).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from rollout_py.cli import EXIT_FAILED, EXIT_INPUT, EXIT_LOCKED, EXIT_OK
from rollout_py.cli_output import json_refusals


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


def _fleet_options(fn: Any) -> Any:
    """Options of the commands that change the fleet's flag file."""
    fn = json_refusals(fn, refused=EXIT_INPUT, locked=EXIT_LOCKED)
    for option in reversed([
        click.option("-f", "--file", "spec_file", type=click.Path(path_type=Path),
                     default=Path("rollout.yml"), show_default=True, help="The rollout spec."),
        click.option("-i", "--inventory", default=None,
                     help="Inventory source (overrides the spec's)."),
        click.option("--state-dir", type=click.Path(path_type=Path), default=None,
                     help="State directory (default: .rollout beside the spec)."),
        click.option("--lock-wait", type=click.FloatRange(0, 86400), default=0.0,
                     help="Seconds to wait for the fleet's lock (default: fail at once)."),
        click.option("--json", "as_json", is_flag=True,
                     help="One JSON event per line, then the result object."),
    ]):
        fn = option(fn)
    return fn


def _run(action: Any, *, as_json: bool) -> int:
    from rollout_py.flag_report import console_sink
    from rollout_py.report import json_sink

    sink = json_sink(sys.stdout) if as_json else console_sink(sys.stdout)
    result = action([sink])
    if as_json:
        click.echo(json.dumps({"result": result.to_json()}))
    return int(result.exit_code)


def _percent(_ctx: Any, _param: Any, value: str) -> int:
    from rollout_py.spec_flags import percent

    try:
        return percent(value, field="--to")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@flag.command("list")
@click.option("-f", "--file", "spec_file", type=click.Path(path_type=Path),
              default=Path("rollout.yml"), show_default=True, help="The rollout spec.")
@click.option("-i", "--inventory", default=None, help="Inventory source (overrides the spec's).")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None,
              help="State directory (default: .rollout beside the spec).")
@click.option("--hosts", "on_hosts", is_flag=True,
              help="Also check that every host's file is the controller's copy.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(spec_file: Path, inventory: str | None, state_dir: Path | None, on_hosts: bool,
          as_json: bool) -> int:
    """The fleet's flags from the controller's copy (exit 1 if --hosts finds a host whose
    file differs)."""
    from rollout_py import api
    from rollout_py.flag_api import flag_list

    info = flag_list(api.load_spec(spec_file), hosts=on_hosts, inventory=inventory,
                     state_dir=state_dir)
    differ = {h: v for h, v in info.get("hosts", {}).items() if v != "ok"}
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        lines = [f"{info['file']} -> {info['path']} on every host (sha1 {info['sha1'][:12]})",
                 *(f"  {f['line']}" for f in info["flags"])]
        if "last_change" in info:
            c = info["last_change"]
            lines.append(f"last change: {c['command']} {c['flag']} {c['target']}: "
                         f"{c['status']} ({c['change_id']})" + (
                             " - the next flag command finishes it (a ramp is reverted)"
                             if c["status"] == "unfinished" else ""))
        if "hosts" in info:
            lines.append(f"hosts: {len(info['hosts']) - len(differ)}/{len(info['hosts'])} "
                         "hold the controller's copy")
            lines += [f"  {h}: {v}" for h, v in differ.items()]
        click.echo("\n".join(lines))
    return EXIT_FAILED if differ else EXIT_OK


@flag.command("set")
@click.argument("name")
@click.argument("variant")
@_fleet_options
def set_(name: str, variant: str, spec_file: Path, inventory: str | None,
         state_dir: Path | None, lock_wait: float, as_json: bool) -> int:
    """Every subject gets VARIANT of flag NAME (default variant, targeting cleared), on every
    host; reverted if a host does not take it."""
    from rollout_py import api
    from rollout_py.flag_api import flag_set

    spec = api.load_spec(spec_file)
    return _run(lambda sinks: flag_set(spec, name, variant, inventory=inventory,
                                       state_dir=state_dir, lock_wait=lock_wait, sinks=sinks),
                as_json=as_json)


@flag.command("ramp")
@click.argument("name")
@click.option("--to", "to", required=True, callback=_percent, metavar="PCT%",
              help="The share to reach, through the spec's ramp steps below it.")
@click.option("--variant", default=None,
              help="The variant to ramp (default: the one that is not the default).")
@_fleet_options
def ramp_(name: str, to: int, variant: str | None, spec_file: Path, inventory: str | None,
          state_dir: Path | None, lock_wait: float, as_json: bool) -> int:
    """Raise a variant of NAME step by step, each step judged against the windows before the
    ramp; on a failed gate, revert every host and exit 1."""
    from rollout_py import api
    from rollout_py.flag_api import flag_ramp

    spec = api.load_spec(spec_file)
    return _run(lambda sinks: flag_ramp(spec, name, to=to, variant=variant,
                                        inventory=inventory, state_dir=state_dir,
                                        lock_wait=lock_wait, sinks=sinks), as_json=as_json)


@flag.command("kill")
@click.argument("name")
@click.option("--variant", default=None, help="The safe variant (default: 'off').")
@_fleet_options
def kill_(name: str, variant: str | None, spec_file: Path, inventory: str | None,
          state_dir: Path | None, lock_wait: float, as_json: bool) -> int:
    """Every host at once serves NAME's safe variant; says how long the whole fleet took."""
    from rollout_py import api
    from rollout_py.flag_api import flag_kill

    spec = api.load_spec(spec_file)
    return _run(lambda sinks: flag_kill(spec, name, variant, inventory=inventory,
                                        state_dir=state_dir, lock_wait=lock_wait, sinks=sinks),
                as_json=as_json)


__all__ = ["flag"]
