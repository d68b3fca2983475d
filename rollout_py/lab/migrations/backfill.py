"""The migrate phase's backfill: users.name into users.full_name, in throttled, resumable batches.

A standalone script (the standard library and psycopg only): the lab runs it with the app's
venv, ``python backfill.py --dsn "service=rollout-lab"``. Safe to kill at any moment and run
again, by construction:

- Keyset batches by id: each batch takes the next ``--batch-size`` ids above the checkpoint (up
  to the largest id when the job first started; later rows were written after ``expand``, whose
  trigger fills their full_name) and updates only those still without a full_name.
- One transaction per batch moves the checkpoint (table ``rollout_backfill``) together with the
  rows, so after a kill -9 either both happened or neither: a re-run neither skips nor repeats.
- ``AND full_name IS NULL`` makes a batch that is repeated anyway (checkpoint lost) a no-op, and
  never overwrites a full_name a newer release wrote.
- A session advisory lock allows one backfill per job at a time; PostgreSQL drops it with the
  connection of a killed run.
- A final pass updates any row still without a full_name (none, while the trigger exists) and
  the exit status says whether any remains.

Example:
    python backfill.py --dsn "service=rollout-lab" --batch-size 500 --sleep 0.05
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

Conn = psycopg.Connection[tuple[Any, ...]]
JOB = "users.full_name"
CHECKPOINTS = """CREATE TABLE IF NOT EXISTS rollout_backfill (
    job text PRIMARY KEY,
    last_id bigint NOT NULL,
    target_id bigint NOT NULL,
    rows_updated bigint NOT NULL DEFAULT 0,
    batches integer NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz)"""


@dataclass(frozen=True, slots=True)
class Batch:
    """One committed batch: ids in (after, upto], ``updated`` rows changed."""

    number: int
    after: int
    upto: int
    updated: int
    rows_updated: int  # the job's total so far
    target_id: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """The job's totals once no id is left below its target."""

    rows_updated: int
    batches: int
    stragglers: int  # rows the final pass found without a full_name
    remaining: int  # rows still without one at the end (0 unless a writer bypasses the trigger)


def start_job(conn: Conn, job: str, *,
              restart: bool = False) -> None:
    """Creates the checkpoint row (target: today's largest id) unless the job has one."""
    with conn.transaction():
        conn.execute(CHECKPOINTS)
        if restart:
            conn.execute("DELETE FROM rollout_backfill WHERE job = %s", (job,))
        conn.execute(
            "INSERT INTO rollout_backfill (job, last_id, target_id) "
            "SELECT %s, 0, coalesce(max(id), 0) FROM users ON CONFLICT (job) DO NOTHING", (job,))


def run_batch(conn: Conn, job: str,
              batch_size: int) -> Batch | None:
    """Backfills the next batch and moves the checkpoint, in one transaction; None when the
    checkpoint has reached the job's target."""
    with conn.transaction():
        row = conn.execute(
            "SELECT last_id, target_id, rows_updated, batches FROM rollout_backfill "
            "WHERE job = %s FOR UPDATE", (job,)).fetchone()
        if row is None:
            raise RuntimeError(f"no checkpoint for job {job!r}: start_job first")
        after, target, total, batches = (int(v) for v in row)
        upto_row = conn.execute(
            "SELECT max(id) FROM (SELECT id FROM users WHERE id > %s AND id <= %s "
            "ORDER BY id LIMIT %s) AS next_ids", (after, target, batch_size)).fetchone()
        if upto_row is None or upto_row[0] is None:
            conn.execute("UPDATE rollout_backfill SET finished_at = coalesce(finished_at, now()),"
                         " updated_at = now() WHERE job = %s", (job,))
            return None
        upto = int(upto_row[0])
        updated = conn.execute(
            "UPDATE users SET full_name = name "
            "WHERE id > %s AND id <= %s AND full_name IS NULL", (after, upto)).rowcount
        conn.execute(
            "UPDATE rollout_backfill SET last_id = %s, rows_updated = rows_updated + %s, "
            "batches = batches + 1, updated_at = now() WHERE job = %s", (upto, updated, job))
    return Batch(batches + 1, after, upto, updated, total + updated, target)


def final_pass(conn: Conn, batch_size: int,
               max_rounds: int = 1000) -> tuple[int, int]:
    """Fills any row still without a full_name, a batch per transaction: (updated, remaining)."""
    updated = 0
    for _ in range(max_rounds):
        with conn.transaction():
            count = conn.execute(
                "UPDATE users SET full_name = name WHERE id IN (SELECT id FROM users "
                "WHERE full_name IS NULL ORDER BY id LIMIT %s)", (batch_size,)).rowcount
        updated += count
        if count == 0:
            break
    row = conn.execute("SELECT count(*) FROM users WHERE full_name IS NULL").fetchone()
    return updated, int(row[0]) if row else 0


def backfill(conn: Conn, *, job: str = JOB,
             batch_size: int = 500, sleep: float = 0.05, restart: bool = False,
             on_batch: Callable[[Batch], None] = lambda _b: None) -> Outcome:
    """Runs (or resumes) the job to its end. ``conn`` must be in autocommit mode."""
    start_job(conn, job, restart=restart)
    while (batch := run_batch(conn, job, batch_size)) is not None:
        on_batch(batch)
        time.sleep(sleep)  # the throttle: let the application's own writes through
    stragglers, remaining = final_pass(conn, batch_size)
    row = conn.execute("SELECT rows_updated, batches FROM rollout_backfill WHERE job = %s",
                       (job,)).fetchone()
    total, batches = (int(v) for v in row) if row else (0, 0)
    return Outcome(total, batches, stragglers, remaining)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default="", help="libpq connection string (default: PG* env)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--sleep", type=float, default=0.05, help="seconds between batches")
    parser.add_argument("--job", default=JOB)
    parser.add_argument("--restart", action="store_true", help="forget the checkpoint first")
    args = parser.parse_args(argv)
    if not 1 <= args.batch_size <= 100_000 or not 0 <= args.sleep <= 60:
        parser.error("--batch-size must be 1..100000 and --sleep 0..60")
    with psycopg.connect(args.dsn, autocommit=True, application_name="backfill") as conn:
        conn.execute("SET lock_timeout = '5s'")
        locked = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (args.job,)).fetchone()
        if not locked or not locked[0]:
            print(f"another backfill of {args.job} is running", flush=True)
            return 2

        def progress(b: Batch) -> None:
            print(f"batch {b.number}: {b.after} < id <= {b.upto}: {b.updated} rows "
                  f"(total {b.rows_updated}, target id {b.target_id})", flush=True)

        out = backfill(conn, job=args.job, batch_size=args.batch_size, sleep=args.sleep,
                       restart=args.restart, on_batch=progress)
    print(f"done: {out.rows_updated} rows in {out.batches} batches; final pass "
          f"{out.stragglers}; without full_name: {out.remaining}", flush=True)
    return 0 if out.remaining == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
