"""``rollout report``: a deploy's report from its record (rollout_py.report_data) as one
self-contained HTML file (rollout_py.report_html), as JSON, or as plain lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from rollout_py.cli import spec_option, state_option

if TYPE_CHECKING:
    from rollout_py.report_data import DeployReport


def _lines(r: DeployReport) -> list[str]:
    """The report in a few plain lines: the deploy, each batch and its steps, rollbacks."""
    out = [f"deploy {r.deploy_id}: {r.name} {', '.join(r.versions_before) or '?'} -> "
           f"{r.version}: {r.status}"
           + (f" (exit {r.exit_code})" if r.exit_code is not None else "")
           + f", {r.duration:.1f} s, run by {r.who.get('user')}@{r.who.get('host')}"]
    if r.cause:
        out.append(f"  cause: {r.cause}")
    for b in r.batches:
        steps = ", ".join(f"{s.name} {s.duration:.1f}" + ("" if s.ok else " FAILED")
                          for s in b.steps)
        took = f"{b.duration:.1f} s" if b.duration is not None else "-"
        out.append(f"  batch {b.batch} ({', '.join(b.hosts)}): {b.outcome}, {took}"
                   + (f": {steps}" if steps else ""))
    for rb in r.rollbacks:
        out.append(f"  rollback of batch {rb.batch} at {rb.start:.1f} s: {rb.cause}"
                   + ("" if rb.ok else f" (INCOMPLETE: {', '.join(rb.stranded)})"))
    out.append("  out of rotation (s): " + ", ".join(
        f"{h.host} {h.out_of_rotation:.1f}" for h in r.hosts))
    return out


@click.command("report")
@click.argument("deploy_id", required=False)
@spec_option
@state_option
@click.option("--html", "html", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the report as one self-contained HTML file here.")
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON (schema rollout.report/1).")
@click.option("--watch", "watch", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A lab watch's records of the same time (`rollout lab watch --records`): "
                   "the LBs' own states beside the deploy's.")
def report(deploy_id: str | None, spec_file: Path, state_dir: Path | None, html: Path | None,
           as_json: bool, watch: Path | None) -> int:
    """A deploy's report (default: the last one): its timeline per host and LB, batches and
    steps, analysis windows, rollbacks, versions, who ran it."""
    from rollout_py.atomic import write_atomic
    from rollout_py.report_data import record_report
    from rollout_py.state import StateDir

    if state_dir is None:
        from rollout_py import api

        state_dir = api.load_spec(spec_file).state_path()
    from rollout_py.errors import StateError

    try:
        record = StateDir(state_dir).get(deploy_id)
    except StateError as exc:
        raise click.ClickException(str(exc)) from exc
    data = record_report(record, watch=watch)
    if html is not None:
        from rollout_py.report_html import render

        try:
            write_atomic(html, render(data))
        except OSError as exc:
            raise click.ClickException(f"{html}: cannot write the report: "
                                       f"{exc.strerror or exc}") from exc
        click.echo(f"wrote {html}", err=True)
    if as_json:
        click.echo(json.dumps(data.to_json(), indent=2))
    elif html is None:
        click.echo("\n".join(_lines(data)))
    return 0
