"""Debian's PostgreSQL for the lab: its binaries, a cached template cluster, and the server's argv.

``initdb`` costs seconds, so the lab runs it once per machine and PostgreSQL version: the
template (the cluster with database ``app``, role ``app`` and the schema-1 table ``users``,
made in single-user mode, no server and no socket) is cached beside the app venv
(``appenv.cache_dir()``) and every lab copies it. PostgreSQL refuses to run as root, so as root
the cluster belongs to, and the server runs as, the ``postgres`` user Debian's package creates.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import pwd
import shutil
from pathlib import Path

from rollout_py.errors import LabError
from rollout_py.lab import appenv
from rollout_py.lab.procs import run

INSTALL_HINT = "apt-get install -y postgresql"
USER = "postgres"
DATABASE = "app"
ROLE = "app"
PORT = 5432
COMPLETE = ".rollout-complete"
# What every lab database starts with: the release that reads and writes users.name (schema 1).
INITIAL_SQL = f"""CREATE ROLE {ROLE} LOGIN;
ALTER DATABASE {DATABASE} OWNER TO {ROLE};
ALTER SCHEMA public OWNER TO {ROLE};
SET ROLE {ROLE};
CREATE TABLE users (id bigserial PRIMARY KEY, name text NOT NULL);
"""


def bindir() -> Path | None:
    """The server's binaries (``pg_config --bindir``, else the newest /usr/lib/postgresql/N)."""
    found = shutil.which("pg_config")
    if found:
        proc = run([found, "--bindir"], check=False)
        path = Path(proc.stdout.strip())
        if proc.returncode == 0 and (path / "postgres").exists() and (path / "initdb").exists():
            return path
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                      key=lambda p: int(Path(p).parent.parent.name)
                      if Path(p).parent.parent.name.isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


def require_bindir() -> Path:
    found = bindir()
    if found is None:
        raise LabError(f"--db needs Debian's PostgreSQL server: `{INSTALL_HINT}` "
                       "(its system service is not needed)")
    return found


def as_owner() -> list[str]:
    """The prefix that runs a command as the cluster's owner (``postgres`` when we are root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(USER)
    except KeyError as exc:
        raise LabError(f"user {USER!r} is missing: `{INSTALL_HINT}` creates it") from exc
    return ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", "--"]


def chown_owner(path: Path) -> None:
    """Gives ``path`` to the cluster's owner (as root; otherwise it is ours already)."""
    if os.geteuid() == 0:
        entry = pwd.getpwnam(USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def template_dir() -> Path:
    """The cached template cluster for this PostgreSQL and this initial schema."""
    binaries = require_bindir()
    version = run([str(binaries / "postgres"), "--version"]).stdout.strip()
    key = hashlib.sha256(f"{version}\n{INITIAL_SQL}".encode()).hexdigest()[:16]
    return appenv.cache_dir() / f"pg-template-{key}"


def ensure_template() -> Path:
    """The template's data directory, built once (initdb + the initial schema) under a lock,
    marked complete last: a build that died half way is redone, never copied."""
    root = template_dir()
    if (root / COMPLETE).exists():
        return root / "data"
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / ".pg-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / COMPLETE).exists():
            _build_template(root)
    return root / "data"


def _build_template(root: Path) -> None:
    binaries = require_bindir()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    os.chmod(root, 0o755)  # the owner must reach data/ inside it
    data = root / "data"
    data.mkdir(mode=0o700)
    chown_owner(data)
    owner = as_owner()
    run([*owner, str(binaries / "initdb"), "-D", str(data), "-U", USER, "-E", "UTF8",
         "--locale=C", "--auth-local=peer", "--auth-host=scram-sha-256", "--no-sync"],
        timeout=120)
    single = [*owner, str(binaries / "postgres"), "--single", "-j", "-D", str(data)]
    run([*single, "postgres"], input=f"CREATE DATABASE {DATABASE};\n", timeout=60)
    run([*single, DATABASE], input=INITIAL_SQL, timeout=60)
    (root / COMPLETE).write_text(INITIAL_SQL)


def copy_template(dest: Path) -> None:
    """Copies the template cluster to ``dest`` (its parent must exist), owner and modes kept."""
    source = ensure_template()
    run(["cp", "-a", str(source), str(dest)], timeout=120)


def hba(subnet: str) -> str:
    """pg_hba.conf: the superuser over the unix socket only (peer); role ``app`` with its
    password from the lab's subnet only; nobody else, from nowhere else."""
    return (f"# Written by rollout's lab\nlocal all {USER} peer\n"
            f"host {DATABASE} {ROLE} {subnet} scram-sha-256\n")


def server_argv(data: str, *, listen: str, port: int, socket_dir: str) -> list[str]:
    """The postmaster's command line (in the foreground: the PID the lab records is its own)."""
    binaries = require_bindir()
    return [*as_owner(), str(binaries / "postgres"), "-D", data,
            "-c", f"listen_addresses={listen}", "-c", f"port={port}",
            "-c", f"unix_socket_directories={socket_dir}", "-c", "logging_collector=off",
            "-c", "max_connections=200"]


def password_sql(password: str) -> str:
    """Sets role ``app``'s password (letters and digits only: nothing to quote)."""
    if not password.isalnum():
        raise LabError("the lab's database password must be letters and digits")
    return f"ALTER ROLE {ROLE} PASSWORD '{password}';\n"
