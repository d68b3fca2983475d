"""The lab's PostgreSQL (``lab up --db``) and its migrations, end to end under write load:
schema 1 deployed, expand, schema 2 rolled out, the backfill killed with -9 and run again,
contract, schema 3 rolled out; every acknowledged row is in the table exactly once, with its
name, and the checksum says so."""

from __future__ import annotations

import hashlib
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from rollout_py.lab import artifact, db
from rollout_py.lab import lab as lab_mod
from rollout_py.lab.dbload import DbWriteLoad
from rollout_py.lab.layout import Layout
from tests.integration.conftest import LabFactory
from tests.integration.deploykit import rollout_cli, versions, write_spec


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> Layout:
    layout = lab_factory(n_hosts=2, name="db", with_db=True)
    for version, schema in (("1.1", 1), ("2.0", 2), ("3.0", 3)):
        artifact.build_artifact(layout.artifacts, version, artifact.Behaviour(db_schema=schema))
    return layout


def phase(lab: Layout, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(db.migrations_dir(lab) / "run-phase"), name, *args],
                          capture_output=True, text=True, timeout=300, check=False)


def deploy(lab: Layout, tmp_path: Path, version: str) -> None:
    spec = write_spec(lab, tmp_path / f"rollout-{version}.yml")
    proc = rollout_cli("deploy", "-f", str(spec), "--version", version)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert set(versions(lab).values()) == {version}


def rows(lab: Layout) -> list[tuple[int, str]]:
    """Every row as (id, the name the app reads), in id order."""
    out = db.psql(lab, "-A", "-t", "-F", "|", "-c",
                  "SELECT id, coalesce(to_jsonb(u)->>'full_name', to_jsonb(u)->>'name') "
                  "FROM users u ORDER BY id")
    return [(int(i), n) for i, n in (line.split("|", 1) for line in out.splitlines() if line)]


def md5_of(pairs: list[tuple[int, str]]) -> str:
    return hashlib.md5("\n".join(f"{i}:{n}" for i, n in sorted(pairs)).encode()).hexdigest()


def kill_backfill_midway(lab: Layout) -> dict[str, Any]:
    """Starts the migrate phase, SIGKILLs it once it reported its third batch; returns the
    checkpoint it left."""
    proc = subprocess.Popen([str(db.migrations_dir(lab) / "run-phase"), "migrate",
                             "--batch-size", "200", "--sleep", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the script's own progress: committed batches
            seen.append(line)
            if line.startswith("batch 3:"):
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    last_id, done, batches = db.psql(lab, "-A", "-t", "-F", "|", "-c",
                                     "SELECT last_id, rows_updated, batches "
                                     "FROM rollout_backfill").strip().split("|")
    return {"last_id": int(last_id), "rows_updated": int(done), "batches": int(batches)}


def test_expand_rolling_deploy_and_a_killed_backfill_keep_every_row(
        lab: Layout, tmp_path: Path) -> None:
    status = lab_mod.status(lab.path)["db"]
    assert status["running"] and status["users"]["rows"] == 0
    assert status["users"]["columns"] == ["id", "name"]
    deploy(lab, tmp_path, "1.1")  # schema 1: reads and writes name

    url = f"http://127.0.0.1:{lab.lbs[0].port}/users"
    seed = DbWriteLoad(url, rps=50, duration=4, prefix="seed-")
    seeded = seed.run()
    assert seeded.failed == 0 and len(seed.written) == seeded.sent == 200
    # Enough old rows for a backfill of several batches (as schema-1 writers left them).
    db.psql(lab, "-c", "INSERT INTO users (name) SELECT 'old ' || g "
                       "FROM generate_series(1, 1500) AS g")
    before = rows(lab)
    assert len(before) == 1700 and db.check(lab)["md5"] == md5_of(before)

    load = DbWriteLoad(url, rps=20, duration=3600, prefix="during-")
    load.start()
    try:
        expanded = phase(lab, "expand")
        assert expanded.returncode == 0, expanded.stderr
        deploy(lab, tmp_path, "2.0")  # schema 2 beside schema 1, batch by batch
        checkpoint = kill_backfill_midway(lab)
        assert checkpoint["batches"] >= 3
        assert checkpoint["rows_updated"] == 200 * checkpoint["batches"]
        mid = db.check(lab)
        assert mid["full_name_null"] > 0 and mid["out_of_step"] == 0
        resumed = phase(lab, "migrate", "--batch-size", "200", "--sleep", "0.05")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "without full_name: 0" in resumed.stdout
        assert db.check(lab)["full_name_null"] == 0
        contracted = phase(lab, "contract")  # the fleet is on schema 2: no host needs name
        assert contracted.returncode == 0, contracted.stderr
        deploy(lab, tmp_path, "3.0")
    finally:
        during = load.stop()
    assert during.failed == 0, during.failures
    assert during.by_version.keys() >= {"1.1", "2.0", "3.0"}

    after = db.check(lab)
    expected = sorted(before + load.written)
    assert after["columns"] == ["id", "full_name"]
    assert after["rows"] == after["distinct_ids"] == len(expected) == 1700 + during.sent
    assert rows(lab) == expected
    assert after["md5"] == md5_of(expected)
    # The backfill counted each row it filled once: the 1700 older than the load, and those the
    # load wrote before expand committed (later ones got full_name from the trigger).
    updated = int(db.psql(lab, "-A", "-t", "-c", "SELECT rows_updated FROM rollout_backfill"))
    assert 1700 <= updated < 1700 + during.sent


def test_status_and_down_remove_the_database(lab_factory: LabFactory) -> None:
    layout = lab_factory(n_hosts=1, name="db-down", with_db=True)
    postgres = layout.procs[db.PROC_KEY]["pid"]
    assert (layout.host_dir("db1") / "srv" / "postgresql" / "data" / "PG_VERSION").exists()
    assert db.check(layout)["rows"] == 0
    lab_mod.down(layout.path)
    assert not Path(f"/proc/{postgres}").exists() or \
        Path(f"/proc/{postgres}/stat").read_text().split(") ")[1][0] in "ZX"
    assert not db.service_file(layout).exists()
    assert not layout.host_dir("db1").exists()
