"""``rollout lab db``: the lab database's rows (count and checksum), its phases and a psql shell."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import yaml

from rollout_py.lab import db as db_mod
from rollout_py.lab import net, pgserver
from rollout_py.lab.layout import Layout


def _layout(lab_dir: Path) -> Layout:
    layout = Layout.load(lab_dir.absolute())
    if layout is None or layout.state != "up":
        raise click.UsageError(f"no lab up in {lab_dir.absolute()}")
    if not layout.db:
        raise click.UsageError(f"the lab in {lab_dir.absolute()} has no database: "
                               "bring it up with `rollout lab up --db`")
    return layout


def check_line(row: dict[str, object]) -> str:
    """``db check``'s one line: what the acceptance compares before and after."""
    return (f"users: {row['rows']} rows ({row['distinct_ids']} distinct ids), md5 {row['md5']}; "
            f"without full_name {row['full_name_null']}, name != full_name "
            f"{row['out_of_step']}; columns {','.join(row['columns'])}")  # type: ignore[arg-type]


def db_group(dir_option: Callable[[Any], Any]) -> click.Group:
    """The ``db`` command group, with the lab CLI's ``--dir`` option."""

    @click.group(name="db")
    def db() -> None:
        """The lab's PostgreSQL (`rollout lab up --db`)."""

    @db.command()
    @dir_option
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def check(lab_dir: Path, as_json: bool) -> int:
        """Count and checksum table users (md5 over ordered id:coalesce(full_name, name))."""
        row = db_mod.check(_layout(lab_dir))
        click.echo(json.dumps(row, indent=2) if as_json else check_line(row))
        return 0

    @db.command()
    @dir_option
    def phases(lab_dir: Path) -> int:
        """Print the spec's phases section that runs the lab's migrations."""
        click.echo(yaml.safe_dump({"phases": db_mod.phases(_layout(lab_dir))}, sort_keys=False),
                   nl=False)
        return 0

    @db.command()
    @dir_option
    def psql(lab_dir: Path) -> None:
        """An interactive psql as role app."""
        layout = _layout(lab_dir)
        net.assert_routed_via(layout.db_host.address, layout.bridge)
        os.environ["PGSERVICEFILE"] = str(db_mod.service_file(layout))
        exe = str(pgserver.require_bindir() / "psql")
        os.execv(exe, [exe, "-X", "-d", f"service={db_mod.SERVICE}"])

    return db
