"""A throwaway PostgreSQL on 127.0.0.1 for tests: a copy of the lab's template cluster, started
by the test, stopped by its PID (even when the test fails), its directory removed."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from rollout_py.lab import pgserver
from rollout_py.lab.haproxy import free_port


class LocalPostgres:
    """The server's port, a superuser connection string and fresh databases made from ``app``.

    Example:
        >>> with local_postgres() as pg:  # doctest: +SKIP
        ...     dsn = pg.fresh_database("t1")
    """

    def __init__(self, port: int, data: Path) -> None:
        self.port, self.data = port, data

    def dsn(self, dbname: str = "app", user: str = "app") -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}"

    def url(self, dbname: str) -> str:
        return f"postgresql://app@127.0.0.1:{self.port}/{dbname}"

    def fresh_database(self, name: str) -> str:
        """A new database copied from the template's ``app`` (schema 1, empty users)."""
        with psycopg.connect(self.dsn("postgres", "postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE app OWNER app')
        return self.dsn(name)

    def psql_file(self, dsn: str, path: Path) -> subprocess.CompletedProcess[str]:
        """Applies an SQL file as the lab's ``run-phase`` does (one transaction, stop on error)."""
        psql = str(pgserver.require_bindir() / "psql")
        return subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                               "-d", dsn, "-f", str(path)], capture_output=True, text=True,
                              timeout=60, check=False)


@contextlib.contextmanager
def local_postgres() -> Iterator[LocalPostgres]:
    """Starts the server; stops it by PID and removes its files on the way out.

    The cluster is not in pytest's tmp_path: that is private to root (0700), and PostgreSQL
    refuses to run as root, so its owner ``postgres`` must reach the directory."""
    root = Path(tempfile.mkdtemp(prefix="rollout-pgtest-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        pgserver.chown_owner(root)
        data = root / "data"
        pgserver.copy_template(data)
        (data / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")
        port = free_port()
        argv = pgserver.server_argv(str(data), listen="127.0.0.1", port=port, socket_dir="")
        with open(root / "postgres.log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        ready = str(pgserver.require_bindir() / "pg_isready")
        deadline = time.monotonic() + 30
        while subprocess.run([ready, "-q", "-h", "127.0.0.1", "-p", str(port), "-t", "1"],
                             check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("postgres did not start: "
                                     + (root / "postgres.log").read_text(errors="replace"))
            time.sleep(0.05)  # polling a condition, with a deadline
        yield LocalPostgres(port, data)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown: ends sessions, then exits
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)
