"""The lab's migrations (expand, backfill, contract, check) against a throwaway PostgreSQL."""

from __future__ import annotations

import hashlib
import math
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rollout_py.lab.migrations import backfill
from tests.pgkit import LocalPostgres, local_postgres

SQL = Path(str(resources.files("rollout_py.lab.migrations")))
SCRIPT = SQL / "backfill.py"


@pytest.fixture(scope="module")
def pg() -> Iterator[LocalPostgres]:
    if os.geteuid() == 0 and subprocess.run(["id", "postgres"], capture_output=True,
                                            check=False).returncode != 0:
        pytest.fail("these tests need Debian's postgresql (tools/dev.sh installs it)")
    with local_postgres() as server:
        yield server


@pytest.fixture
def dsn(pg: LocalPostgres, request: pytest.FixtureRequest) -> str:
    return pg.fresh_database(request.node.name[:50].lower().replace("[", "_").replace("]", ""))


def q(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params or None)
        return cur.fetchall() if cur.description else []


def seed(dsn: str, n: int) -> None:
    q(dsn, "INSERT INTO users (name) SELECT 'user ' || g FROM generate_series(1, %s) AS g", (n,))


def expand(pg: LocalPostgres, dsn: str) -> None:
    proc = pg.psql_file(dsn, SQL / "001_expand.sql")
    assert proc.returncode == 0, proc.stderr


def check(dsn: str) -> tuple[int, int, str, int, int, str]:
    row = q(dsn, (SQL / "check.sql").read_text())[0]
    return (int(row[0]), int(row[1]), str(row[2]), int(row[3]), int(row[4]), str(row[5]))


def expected_md5(pairs: list[tuple[int, str]]) -> str:
    return hashlib.md5("\n".join(f"{i}:{n}" for i, n in sorted(pairs)).encode()).hexdigest()


def test_check_sql_counts_and_checksums_in_every_phase(pg: LocalPostgres, dsn: str) -> None:
    seed(dsn, 30)
    pairs = [(i, f"user {i}") for i in range(1, 31)]
    assert check(dsn) == (30, 30, expected_md5(pairs), 0, 0, "id,name")
    expand(pg, dsn)
    q(dsn, "UPDATE users SET full_name = NULL")  # as before a backfill (the trigger is newer)
    assert check(dsn) == (30, 30, expected_md5(pairs), 30, 0, "id,name,full_name")
    with psycopg.connect(dsn, autocommit=True) as conn:
        backfill.backfill(conn, batch_size=7, sleep=0)
    assert check(dsn) == (30, 30, expected_md5(pairs), 0, 0, "id,name,full_name")
    assert pg.psql_file(dsn, SQL / "003_contract.sql").returncode == 0
    assert check(dsn) == (30, 30, expected_md5(pairs), 0, 0, "id,full_name")


def test_backfill_fills_every_row_in_keyset_batches_and_keeps_newer_values(
        pg: LocalPostgres, dsn: str) -> None:
    seed(dsn, 1050)
    q(dsn, "DELETE FROM users WHERE id % 10 = 3")  # gaps: batches are by ids, not by ranges
    expand(pg, dsn)
    q(dsn, "UPDATE users SET full_name = NULL")
    q(dsn, "UPDATE users SET full_name = 'renamed ' || id WHERE id % 100 = 7")  # a schema-2 write
    nulls = q(dsn, "SELECT count(*) FROM users WHERE full_name IS NULL")[0][0]
    seen: list[backfill.Batch] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        out = backfill.backfill(conn, batch_size=100, sleep=0, on_batch=seen.append)
    rows = q(dsn, "SELECT count(*) FROM users")[0][0]
    assert out == backfill.Outcome(rows_updated=nulls, batches=math.ceil(rows / 100),
                                   stragglers=0, remaining=0)
    assert [b.after for b in seen[1:]] == [b.upto for b in seen[:-1]]  # contiguous keyset
    assert all(b.upto - b.after >= 100 for b in seen[:-1])
    assert q(dsn, "SELECT count(*) FROM users WHERE full_name IS DISTINCT FROM name "
                  "AND full_name NOT LIKE 'renamed %'")[0][0] == 0
    assert q(dsn, "SELECT count(*) FROM users WHERE full_name LIKE 'renamed %'")[0][0] == 11
    with psycopg.connect(dsn, autocommit=True) as conn:  # a re-run finds nothing to do
        again = backfill.backfill(conn, batch_size=100, sleep=0)
    assert again == out


def _run_script(dsn: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(SCRIPT), "--dsn", dsn, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_backfill_killed_midway_resumes_without_losing_or_repeating_rows(
        pg: LocalPostgres, dsn: str) -> None:
    seed(dsn, 2000)
    expand(pg, dsn)
    q(dsn, "UPDATE users SET full_name = NULL")
    before = check(dsn)
    proc = _run_script(dsn, "--batch-size", "100", "--sleep", "0.2")
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # synchronised on the script's own progress lines
            if line.startswith("batch 3:"):
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    last_id, done, batches = q(dsn, "SELECT last_id, rows_updated, batches FROM "
                                    "rollout_backfill")[0]
    assert 3 <= batches < 20 and done == batches * 100
    # The checkpoint and the rows moved together: every row up to it, none beyond.
    assert q(dsn, "SELECT count(*) FROM users WHERE full_name IS NOT NULL")[0][0] == done
    assert q(dsn, "SELECT max(id) FROM users WHERE full_name IS NOT NULL")[0][0] == last_id
    # Rows written meanwhile by an old release (name only) get full_name from the trigger.
    q(dsn, "INSERT INTO users (name) VALUES ('written during the pause')")
    rerun = _run_script(dsn, "--batch-size", "100", "--sleep", "0")
    out, _ = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, out
    assert "done: 2000 rows in 20 batches; final pass 0; without full_name: 0" in out
    after = check(dsn)
    assert after[0] == before[0] + 1 and after[1] == after[0] and after[3:5] == (0, 0)


def test_only_one_backfill_runs_at_a_time(pg: LocalPostgres, dsn: str) -> None:
    seed(dsn, 10)
    expand(pg, dsn)
    with psycopg.connect(dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtext(%s))", (backfill.JOB,))
        second = _run_script(dsn)
        out, _ = second.communicate(timeout=60)
    assert second.returncode == 2 and "another backfill" in out


def test_trigger_keeps_rows_of_old_writers_in_step_after_the_backfill(
        pg: LocalPostgres, dsn: str) -> None:
    seed(dsn, 5)
    expand(pg, dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        backfill.backfill(conn, sleep=0)
    # A schema-1 host still in the fleet (or back after a rollback) writes only name.
    q(dsn, "INSERT INTO users (name) VALUES ('old writer')")
    q(dsn, "UPDATE users SET name = 'old rename' WHERE id = 1")
    # A schema-2 host writes both: its full_name stands.
    q(dsn, "INSERT INTO users (name, full_name) VALUES ('n', 'new writer')")
    q(dsn, "UPDATE users SET name = 'x', full_name = 'new rename' WHERE id = 2")
    rows = dict(q(dsn, "SELECT id, full_name FROM users"))
    assert rows[1] == "old rename" and rows[2] == "new rename"
    assert rows[6] == "old writer" and rows[7] == "new writer"
    assert check(dsn)[3] == 0


def test_expand_is_repeatable_and_contract_refuses_an_incomplete_backfill(
        pg: LocalPostgres, dsn: str) -> None:
    seed(dsn, 3)
    expand(pg, dsn)
    expand(pg, dsn)  # a resumed deploy may run it again
    q(dsn, "UPDATE users SET full_name = NULL WHERE id = 2")
    refused = pg.psql_file(dsn, SQL / "003_contract.sql")
    assert refused.returncode != 0 and "full_name" in refused.stderr
    assert check(dsn)[5] == "id,name,full_name"  # one transaction: nothing dropped
    with psycopg.connect(dsn, autocommit=True) as conn:
        backfill.backfill(conn, sleep=0)
    assert pg.psql_file(dsn, SQL / "003_contract.sql").returncode == 0
    assert check(dsn)[5] == "id,full_name"
    assert q(dsn, "SELECT is_nullable FROM information_schema.columns "
                  "WHERE table_name = 'users' AND column_name = 'full_name'") == [("NO",)]
