"""The lab's database (``rollout lab up --db``): PostgreSQL on a host of its own, and migrations.

Host ``db1`` (sshd like every lab host, inventory group ``db``) runs Debian's PostgreSQL as a
daemon the lab records by PID. Its cluster is a copy of a cached template
(``rollout_py.lab.pgserver``) in the host's private ``/srv`` (``DIR/hosts/db1/srv/postgresql``),
so it lives in the lab dir and goes with ``down``. It listens on the host's address only; the
superuser connects over the host's own unix socket, role ``app`` with a password made for this
lab and only from the lab's subnet. App hosts get the URL in their app.env
(``APP_DATABASE_URL``); ``DIR/migrations`` gets the phases' SQL, the backfill script, a libpq
service file with the password (mode 0600) and ``run-phase``, which runs one phase; and
``DIR/rollout-db.yml`` is the lab's rollout.yml with a ``phases:`` section that runs them.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import time
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from rollout_py.errors import LabError, RolloutError
from rollout_py.lab import net, pgserver
from rollout_py.lab.layout import Layout
from rollout_py.lab.procs import Proc, run, spawn

PROC_KEY = "postgres"
HOST_DATA = "/srv/postgresql/data"  # as the db host sees it
HOST_SOCKET_DIR = "/run/postgresql"
SERVICE = "rollout-lab"  # the libpq service name in DIR/migrations/pg_service.conf
MIGRATIONS = "migrations"
SPEC = "rollout-db.yml"  # beside rollout.yml
RELEASE_SPEC = "rollout-release.yml"  # the canary spec with the phases and the flag's release
SHIPPED = ("001_expand.sql", "003_contract.sql", "check.sql", "backfill.py")
PHASE_COMMANDS = ("expand", "migrate", "contract", "check")


def migrations_dir(layout: Layout) -> Path:
    return layout.path / MIGRATIONS


def service_file(layout: Layout) -> Path:
    return migrations_dir(layout) / "pg_service.conf"


def _host_base(layout: Layout) -> Path:
    return layout.host_dir(layout.db_host.name)


def prepare(layout: Layout) -> None:
    """Before the hosts start: the password, the cluster (a template copy) with its pg_hba for
    the lab's subnet, the socket directory and ``DIR/migrations``."""
    pgserver.require_bindir()
    layout.db_password = secrets.token_hex(16)
    base = _host_base(layout)
    parent = base / "srv" / "postgresql"
    data = parent / "data"
    shutil.rmtree(data, ignore_errors=True)  # from a lab killed half way
    parent.mkdir(parents=True, exist_ok=True)
    os.chmod(base / "srv", 0o755)
    pgserver.copy_template(data)
    (data / "pg_hba.conf").write_text(pgserver.hba(str(layout.subnet)))
    sock = base / "run" / HOST_SOCKET_DIR.removeprefix("/run/")
    sock.mkdir(parents=True, exist_ok=True)
    pgserver.chown_owner(sock)
    write_migrations(layout)
    layout.save()


def start(layout: Layout, host_sshd: Proc) -> Proc:
    """Starts the server in the db host (its network, mount and UTS namespaces), records its
    PID at once, waits until role ``app`` can log in from the controller and returns it."""
    host = layout.db_host
    argv = pgserver.server_argv(HOST_DATA, listen=host.address, port=layout.db_port,
                                socket_dir=HOST_SOCKET_DIR)
    log = layout.logs / "postgres.log"
    child = spawn(["nsenter", "-t", str(host_sshd.pid), "-n", "-m", "-u", "--", *argv], str(log))
    deadline = time.monotonic() + 30
    proc: Proc | None = None
    while proc is None:  # nsenter and setpriv exec: the pid becomes the postmaster's
        if child.poll() is not None:
            raise LabError(f"postgres exited ({child.returncode}): {_tail(log)}")
        candidate = Proc.of(child.pid)
        if candidate.comm() == "postgres":
            proc = candidate
        elif time.monotonic() > deadline:
            raise LabError(f"postgres did not start within 30 s: {_tail(log)}")
        else:
            time.sleep(0.01)
    layout.procs[PROC_KEY] = proc.to_json()
    layout.save()
    _wait_accepting(layout, proc, deadline)
    owner = pgserver.as_owner()
    psql = str(pgserver.require_bindir() / "psql")
    run(["nsenter", "-t", str(host_sshd.pid), "-n", "-m", "-u", "--", *owner, psql, "-X", "-q",
         "-v", "ON_ERROR_STOP=1", "-h", HOST_SOCKET_DIR, "-p", str(layout.db_port),
         "-U", pgserver.USER, "-d", pgserver.DATABASE],
        input=pgserver.password_sql(str(layout.db_password)))
    check(layout)  # the app's own way in: TCP from the lab's subnet, with the password
    (layout.path / SPEC).write_text(spec(layout))  # the LBs are planned by now
    (layout.path / RELEASE_SPEC).write_text(release_spec(layout))
    return proc


def _wait_accepting(layout: Layout, proc: Proc, deadline: float) -> None:
    net.assert_routed_via(layout.db_host.address, layout.bridge)
    ready = str(pgserver.require_bindir() / "pg_isready")
    while True:
        if not proc.alive():
            raise LabError(f"postgres exited: {_tail(layout.logs / 'postgres.log')}")
        probe = run([ready, "-q", "-h", layout.db_host.address, "-p", str(layout.db_port),
                     "-U", pgserver.ROLE, "-d", pgserver.DATABASE, "-t", "1"], check=False)
        if probe.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise LabError(f"postgres not accepting connections in time: "
                           f"{_tail(layout.logs / 'postgres.log')}")
        time.sleep(0.05)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return f"no log at {path}"


def psql(layout: Layout, *args: str, input: str | None = None,
         timeout: float = 60) -> str:
    """Runs psql as role ``app`` against the lab's database from the controller."""
    net.assert_routed_via(layout.db_host.address, layout.bridge)
    env = ["env", f"PGSERVICEFILE={service_file(layout)}"]
    return run([*env, str(pgserver.require_bindir() / "psql"), "-X", "-q", "-v",
                "ON_ERROR_STOP=1", "-d", f"service={SERVICE}", *args],
               input=input, timeout=timeout).stdout


CHECK_FIELDS = ("rows", "distinct_ids", "md5", "full_name_null", "out_of_step", "columns")


def check(layout: Layout) -> dict[str, Any]:
    """Count and checksum of table users (``check.sql``): rows, distinct ids, an md5 over the
    ordered ``id:coalesce(full_name, name)``, rows still without full_name, rows whose name and
    full_name differ, and the table's columns."""
    sql = resources.files("rollout_py.lab.migrations").joinpath("check.sql").read_text()
    out = psql(layout, "-A", "-t", "-F", "|", input=sql).strip()
    cells = out.split("|")
    if len(cells) != len(CHECK_FIELDS):
        raise LabError(f"unexpected answer from check.sql: {out!r}")
    row: dict[str, Any] = dict(zip(CHECK_FIELDS, cells, strict=True))
    for key in ("rows", "distinct_ids", "full_name_null", "out_of_step"):
        row[key] = int(row[key])
    row["columns"] = row["columns"].split(",") if row["columns"] else []
    return row


def status(layout: Layout) -> dict[str, Any] | None:
    """The database's address, whether its server runs, and the table's check (or the error)."""
    if not layout.db:
        return None
    proc = layout.procs.get(PROC_KEY)
    row: dict[str, Any] = {"url": layout.db_url_public, "host": layout.db_host.name,
                           "running": bool(proc and Proc.from_json(proc).alive())}
    try:
        row["users"] = check(layout)
    except (RolloutError, OSError) as exc:
        row["error"] = str(exc)
    return row


def write_migrations(layout: Layout) -> None:
    """``DIR/migrations``: the shipped SQL and backfill, the service file and ``run-phase``."""
    target = migrations_dir(layout)
    target.mkdir(parents=True, exist_ok=True)
    shipped = resources.files("rollout_py.lab.migrations")
    for name in SHIPPED:
        (target / name).write_bytes(shipped.joinpath(name).read_bytes())
    host = layout.db_host
    conf = service_file(layout)
    conf.touch(mode=0o600)
    os.chmod(conf, 0o600)  # it holds the password
    conf.write_text(f"# Written by `rollout lab up --db`; removed by `rollout lab down`\n"
                    f"[{SERVICE}]\nhost={host.address}\nport={layout.db_port}\n"
                    f"dbname={pgserver.DATABASE}\nuser={pgserver.ROLE}\n"
                    f"password={layout.db_password}\nconnect_timeout=5\n")
    script = target / "run-phase"
    script.write_text(run_phase_script(layout))
    os.chmod(script, 0o755)


def run_phase_script(layout: Layout) -> str:
    """``run-phase expand|migrate|contract|check [ARGS]``: what the spec's phases run."""
    here = shlex.quote(str(migrations_dir(layout)))
    psql = shlex.quote(str(pgserver.require_bindir() / "psql"))
    python = shlex.quote(layout.app_flags_python or "python3")
    return f"""#!/bin/sh
# Written by `rollout lab up --db`: runs one phase of the lab's schema change.
#   expand    {MIGRATIONS}/001_expand.sql in one transaction (add full_name + the trigger)
#   migrate   {MIGRATIONS}/backfill.py: batches, throttled, resumable (ARGS: --batch-size N
#             --sleep S --restart)
#   contract  {MIGRATIONS}/003_contract.sql in one transaction (drop name and the trigger)
#   check     rows | distinct ids | md5 | rows without full_name | out of step | columns
set -eu
HERE={here}
export PGSERVICEFILE="$HERE/pg_service.conf" PGSERVICE={SERVICE}
PSQL="{psql} -X -q -v ON_ERROR_STOP=1"
phase=${{1:-}}
[ $# -gt 0 ] && shift
case "$phase" in
    expand) exec $PSQL --single-transaction -f "$HERE/001_expand.sql" ;;
    migrate) exec {python} "$HERE/backfill.py" --dsn "service={SERVICE}" "$@" ;;
    contract) exec $PSQL --single-transaction -f "$HERE/003_contract.sql" ;;
    check) exec $PSQL -A -t -F '|' -f "$HERE/check.sql" ;;
    *) echo "usage: run-phase {'|'.join(PHASE_COMMANDS)} [ARGS]" >&2; exit 2 ;;
esac
"""


def phases(layout: Layout, requires: str = "2.0", *, batch_size: int | None = None,
           sleep: float | None = None) -> dict[str, Any]:
    """The spec's ``phases:`` section for the lab: each phase runs ``run-phase`` on the
    controller; contract only once every host runs ``requires`` (schema 2) or newer.
    ``batch_size`` and ``sleep`` (seconds between batches) throttle the backfill (migrate):
    they become the phase's ``vars``, which its command gets as environment variables."""
    script = str(migrations_dir(layout) / "run-phase")
    section: dict[str, Any] = {name: {"command": f"{script} {name}", "on": "local"}
                               for name in ("expand", "migrate", "contract")}
    throttle = {"batch_size": batch_size, "sleep": sleep}
    for key, value in throttle.items():
        if value is not None:
            section["migrate"]["command"] += f' --{key.replace("_", "-")} "${key}"'
            section["migrate"].setdefault("vars", {})[key] = value
    section["contract"]["requires"] = requires
    return section


def spec(layout: Layout) -> str:
    """``rollout-db.yml``: the lab's rollout.yml with the ``phases:`` section."""
    from rollout_py.lab import files

    return files.rollout_spec(layout).replace(
        "# A rollout spec for this lab, written by `rollout lab up`.",
        "# The lab's rollout.yml with its schema change's phases, written by `lab up --db`.", 1
    ) + yaml.safe_dump({"phases": phases(layout)}, sort_keys=False)


def release_spec(layout: Layout) -> str:
    """``rollout-release.yml``: the safest release of a feature that changes the schema, one
    deploy: expand, the canary (the feature's flag off: the code ships dark), the rest of the
    fleet, the flag ramped to 100 % with the analysis gates, migrate; then ``rollout
    contract``."""
    from rollout_py.lab import files, flagfiles

    own = phases(layout)
    section = {"expand": own["expand"], "release": {"flag": flagfiles.FLAG, "to": "100%"},
               "migrate": own["migrate"], "contract": own["contract"]}
    return files.canary_spec(layout).replace(
        "# A canary rollout spec for this lab, written by `rollout lab up`.",
        "# The lab's canary spec with a schema change and the feature's release, written by\n"
        "# `lab up --db`: expand, the canary and the rest with the flag off, the flag ramped\n"
        "# with the analysis gates, migrate; then `rollout contract -f rollout-release.yml`.", 1
    ) + yaml.safe_dump({"phases": section}, sort_keys=False)


def remove_files(lab_dir: Path) -> None:
    """``down``: the service file names a lab address and holds its password; the spec names
    the lab's hosts."""
    (lab_dir / MIGRATIONS / "pg_service.conf").unlink(missing_ok=True)
    (lab_dir / SPEC).unlink(missing_ok=True)
    (lab_dir / RELEASE_SPEC).unlink(missing_ok=True)
