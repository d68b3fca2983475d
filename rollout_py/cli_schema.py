"""``rollout schema``: the JSON Schema of rollout.yml, for editors and CI checks
(rollout_py.schema_spec; the package ships the same as rollout_py/schemas/rollout.schema.json).
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("schema")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write it to FILE instead of standard output.")
def schema(output: Path | None) -> int:
    """Print the JSON Schema (draft 2020-12) of rollout.yml."""
    from rollout_py.atomic import write_atomic
    from rollout_py.schema_spec import render, rollout_schema

    text = render(rollout_schema())
    if output is None:
        click.echo(text, nl=False)
        return 0
    try:
        write_atomic(output, text)
    except OSError as exc:
        raise click.ClickException(f"{output}: cannot write the schema: "
                                   f"{exc.strerror or exc}") from exc
    click.echo(f"wrote {output}", err=True)
    return 0
