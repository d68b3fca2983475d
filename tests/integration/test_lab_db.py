"""Expand → migrate → contract through the real engine, on one lab with its PostgreSQL
(``lab up --db``: 3 app hosts, one LB, host db1) under constant load that writes and reads
users through the LB (``DbWriteLoad``).

The tests share the lab and run in file order, each starting where the one before left the
fleet and the table (one state directory: every spec is written in the same directory):

1. a failing expand (broken SQL in one transaction, run on a lab host): exit 1 before any
   drain, nothing changed; 2. expand, then 2.1 fails in batch 2 of 3 and every host is rolled
   back to 1.1, which runs on the expanded schema; contract is refused; 3. 2.0 on app01 and
   app02, the controller killed with -9 during the backfill (migrate), resumed to the end;
   4. contract refused while app03 (still 1.1) is in MAINT or does not answer, forced on a
   marker spec, then 2.0 on app03, the contract, and 3.0 everywhere; 5. ``lab down`` removes
   the database. Along the way every acknowledged write is kept (``Fleet.rows``) and the
   table must hold exactly those rows (and the old ones the fixture inserted), each once,
   with its name: compared row by row and by the lab's own checksum (``db.check``).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rollout_py.errors import RolloutError
from rollout_py.lab import artifact, db, pgserver
from rollout_py.lab import lab as lab_mod
from rollout_py.lab.dbload import DbWriteLoad
from rollout_py.lab.layout import Layout
from rollout_py.lab.load import Summary
from rollout_py.state import StateDir
from tests.integration.conftest import LabFactory
from tests.integration.deploykit import (
    REPO,
    all_ready_and_up,
    json_result,
    rollout_cli,
    versions,
    write_spec,
)
from tests.integration.lab_ssh import lab_ssh

FAIL_PLAYBOOK = REPO / "tests/integration/playbooks/deploy_fail_batch.yml"
OLD_ROWS = 1500  # written by schema 1 before expand: the backfill's work (15 batches of 100)
BATCH_ROWS, BATCH_SLEEP = 100, 0.3  # the migrate phase's throttle: killable mid-way


@dataclass
class Fleet:
    """The shared lab, the directory of every spec (one state dir), the rows the table must
    hold, and the deploys the tests refer back to."""

    lab: Layout
    specs: Path
    rows: list[tuple[int, str]] = field(default_factory=list)
    deploys: dict[str, str] = field(default_factory=dict)

    @property
    def state(self) -> StateDir:
        return StateDir(self.specs / ".rollout")


@pytest.fixture(scope="module")
def fleet(lab_factory: LabFactory, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """The lab on 1.1 (schema 1) with OLD_ROWS users written before any expand."""
    lab = lab_factory(n_hosts=3, n_lbs=1, name="db", with_db=True)
    for version, schema in (("1.1", 1), ("2.0", 2), ("2.1", 2), ("3.0", 3)):
        artifact.build_artifact(lab.artifacts, version, artifact.Behaviour(db_schema=schema))
    status = lab_mod.status(lab.path)["db"]
    assert status["running"] and status["users"]["rows"] == 0
    assert status["users"]["columns"] == ["id", "name"]
    out = Fleet(lab, tmp_path_factory.mktemp("specs"))
    proc = deploy(spec(out, "rollout-1.1.yml", phases=None), "1.1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert set(versions(lab).values()) == {"1.1"}
    db.psql(lab, "-c", f"INSERT INTO users (name) SELECT 'old ' || g "
                       f"FROM generate_series(1, {OLD_ROWS}) AS g")
    out.rows = rows(lab)
    assert len(out.rows) == OLD_ROWS
    return out


def spec(fleet: Fleet, name: str, **overrides: Any) -> Path:
    """A spec in the shared directory: 3 batches of one host; the lab's phases unless
    ``phases`` is given (None: no phases at all)."""
    overrides.setdefault("phases", db.phases(fleet.lab))
    if overrides["phases"] is None:
        del overrides["phases"]
    return write_spec(fleet.lab, fleet.specs / name, batches=[1, 1, 1], **overrides)


def deploy(spec_path: Path, version: str, *args: str) -> subprocess.CompletedProcess[str]:
    return rollout_cli("deploy", "-f", str(spec_path), "--version", version, "--json", *args)


def journal(fleet: Fleet, deploy_id: str) -> list[dict[str, Any]]:
    record = fleet.state.get(deploy_id)
    return [json.loads(line) for line in record.journal.read_text().splitlines()]


def contract_journal(fleet: Fleet, contract_id: str) -> list[dict[str, Any]]:
    path = fleet.specs / ".rollout" / "contracts" / contract_id / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def rows(lab: Layout) -> list[tuple[int, str]]:
    """Every row as (id, the name the app reads), in id order."""
    out = db.psql(lab, "-A", "-t", "-F", "|", "-c",
                  "SELECT id, coalesce(to_jsonb(u)->>'full_name', to_jsonb(u)->>'name') "
                  "FROM users u ORDER BY id")
    return [(int(i), n) for i, n in (line.split("|", 1) for line in out.splitlines() if line)]


def md5_of(pairs: list[tuple[int, str]]) -> str:
    return hashlib.md5("\n".join(f"{i}:{n}" for i, n in sorted(pairs)).encode()).hexdigest()


def assert_rows_exact(fleet: Fleet) -> dict[str, Any]:
    """Every acknowledged row (and old row) present exactly once with its name; nothing
    else. Returns the lab's check."""
    expected = sorted(fleet.rows)
    assert len({i for i, _ in expected}) == len(expected)  # the app never gave an id twice
    assert rows(fleet.lab) == expected
    check = db.check(fleet.lab)
    assert check["rows"] == check["distinct_ids"] == len(expected)
    assert check["md5"] == md5_of(expected)
    return check


@contextmanager
def writes(fleet: Fleet, prefix: str) -> Iterator[list[Summary]]:
    """Writes and reads users through the LB (20/s) for the block; the acknowledged rows are
    added to ``fleet.rows`` whatever happens."""
    load = DbWriteLoad(f"http://127.0.0.1:{fleet.lab.lbs[0].port}/users", rps=20,
                       duration=3600, prefix=prefix)
    out: list[Summary] = []
    load.start()
    try:
        yield out
    finally:
        summary = load.stop()
        fleet.rows.extend(load.written)
        out.append(summary)


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def kinds(events: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(e["event"], e.get("phase")) for e in events]


def backfill_batches(lab: Layout) -> int:
    """Batches the backfill has committed (its checkpoint), 0 before it made its table."""
    try:
        out = db.psql(lab, "-A", "-t", "-c", "SELECT batches FROM rollout_backfill")
    except RolloutError:
        return 0
    return int(out.strip() or 0)


def backfill_pids(lab: Layout) -> list[int]:
    """Processes running the lab's backfill script."""
    needle = str(db.migrations_dir(lab) / "backfill.py").encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found


def test_a_failing_expand_exits_1_before_any_drain_and_changes_nothing(fleet: Fleet) -> None:
    """Expand on app01 (a lab host, through Ansible): it runs only if the ROLLOUT_* variables
    arrived, then adds the column and fails in the same transaction."""
    lab = fleet.lab
    before = versions(lab)
    psql = pgserver.require_bindir() / "psql"
    phases = db.phases(lab)
    phases["expand"] = {"on": "app01", "command": (
        'test "$ROLLOUT_PHASE $ROLLOUT_VERSION" = "expand 2.1" && '
        f'. /srv/app/app.env && {psql} "$APP_DATABASE_URL" -X -q -v ON_ERROR_STOP=1 '
        "--single-transaction -c 'ALTER TABLE users ADD COLUMN full_name text' "
        """-c "SELECT 'expand of deploy $ROLLOUT_DEPLOY_ID'::int" """)}
    with writes(fleet, "t1-") as load:
        proc = deploy(spec(fleet, "rollout-bad-expand.yml", phases=phases), "2.1")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr
    result = json_result(proc)
    assert result["status"] == "rolled_back", result
    # the broken statement names the deploy: the variables arrived and the SQL ran
    error = f'invalid input syntax for type integer: "expand of deploy {result["deploy_id"]}"'
    assert error in result["cause"]
    events = journal(fleet, result["deploy_id"])
    assert [e["event"] for e in events] == [
        "deploy_started", "phase_started", "phase_finished", "deploy_finished"]
    assert (events[1]["on"], events[2]["ok"]) == ("app01", False) and error in events[2]["detail"]
    assert versions(lab) == before and all_ready_and_up(lab)
    assert db.check(lab)["columns"] == ["id", "name"]  # the transaction rolled back
    assert load[0].failed == 0, load[0].failures
    assert load[0].ok > 0
    assert_rows_exact(fleet)


def test_expand_then_a_failure_in_batch_2_rolls_every_host_back_onto_the_new_schema(
        fleet: Fleet) -> None:
    lab = fleet.lab
    # The pause keeps app01 in rotation on 2.1 for 2 s before batch 2 fails, so the load sees
    # it serve 2.1 however loaded the machine is (the batches alone take well under a second).
    path = spec(fleet, "rollout-2.1.yml", playbook=str(FAIL_PLAYBOOK), vars={"fail_batch": 2},
                on_failure="rollback_all", pause_between_batches=2)
    with writes(fleet, "t2-") as load:
        proc = deploy(path, "2.1")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr
    result = json_result(proc)
    assert result["status"] == "rolled_back", result
    fleet.deploys["2.1"] = result["deploy_id"]
    events = journal(fleet, result["deploy_id"])
    assert ("phase_finished", "expand") in kinds(events)
    assert [e["ok"] for e in events if e["event"] == "phase_finished"] == [True]  # no migrate
    upgraded = [e for e in events if e["event"] == "step_finished" and e["step"] == "upgrade"]
    assert [(e["batch"], list(e["hosts"])) for e in upgraded] == [(1, ["app01"]), (2, ["app02"])]
    assert upgraded[0]["hosts"]["app01"] == "ok"
    assert upgraded[1]["hosts"]["app02"].startswith("failed")
    assert db.check(lab)["columns"] == ["id", "name", "full_name"]
    assert set(versions(lab).values()) == {"1.1"} and all_ready_and_up(lab)
    assert load[0].failed == 0, load[0].failures
    assert load[0].by_version.keys() >= {"1.1", "2.1"}  # app01 served 2.1 for a while
    assert_rows_exact(fleet)

    refused = rollout_cli("contract", "-f", str(path))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    for host in ("app01", "app02", "app03"):
        assert f"BLOCKS {host}: 1.1 (reported; in rotation): older than 2.0" in refused.stdout
    assert db.check(lab)["columns"] == ["id", "name", "full_name"]


def test_rolling_2_0_with_the_controller_killed_during_migrate_then_resumed(
        fleet: Fleet) -> None:
    """2.0 on app01 and app02 (app03 stays on 1.1 for the contract's gate); the backfill has
    OLD_ROWS and more old rows, throttled so the controller is killed after a few batches."""
    lab = fleet.lab
    nulls = db.check(lab)["full_name_null"]
    assert nulls >= OLD_ROWS  # and the rows schema 1 wrote before expand
    path = spec(fleet, "rollout-2.0.yml",
                phases=db.phases(lab, batch_size=BATCH_ROWS, sleep=BATCH_SLEEP))
    with writes(fleet, "t3-") as load:
        child = subprocess.Popen(
            [sys.executable, "-m", "rollout_py", "deploy", "-f", str(path), "--version", "2.0",
             "--json", "--limit", "app01,app02"], cwd=REPO,
            env=os.environ | {"PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stderr is not None
        seen = []
        try:
            for line in child.stdout:
                seen.append(line)
                event = json.loads(line)
                if event.get("event") == "phase_started" and event["phase"] == "migrate":
                    wait_for("3 batches of the backfill", lambda: backfill_batches(lab) >= 3)
                    child.send_signal(signal.SIGKILL)
                    break
        finally:
            child.kill()
            child.wait(30)
            child.stdout.close()
            err = child.stderr.read()
            child.stderr.close()
        assert child.returncode == -signal.SIGKILL, "".join(seen)[-3000:] + err[-3000:]
        deploy_id = json.loads(seen[0])["deploy_id"]
        # The orphaned local command ends with its controller: its /bin/sh gets the
        # parent-death signal; the backfill, a child of that shell, ends at its next progress
        # line (its output pipe is gone). A command that writes nothing would outlive it.
        wait_for("the backfill to end with its controller", lambda: not backfill_pids(lab))
        mid = db.check(lab)
        batches = backfill_batches(lab)
        assert 3 <= batches < -(-nulls // BATCH_ROWS)  # mid-way
        assert 0 < mid["full_name_null"] < nulls and mid["out_of_step"] == 0
        assert {versions(lab)[h] for h in ("app01", "app02")} == {"2.0"}

        resumed = rollout_cli("resume", "-f", str(path), "--json")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr
    assert json_result(resumed)["status"] == "succeeded"
    fleet.deploys["2.0"] = deploy_id
    events = journal(fleet, deploy_id)
    order = kinds(events)
    drains = [i for i, k in enumerate(order) if k[0] == "drain_started"]
    enabled = [i for i, k in enumerate(order) if k[0] == "servers_enabled"]
    assert drains and order.index(("phase_finished", "expand")) < drains[0]
    assert order.index(("phase_started", "migrate")) > enabled[-1]
    started = [(e["phase"], e["attempt"]) for e in events if e["event"] == "phase_started"]
    assert started == [("expand", 1), ("migrate", 1), ("migrate", 2)]
    [migrated] = [e for e in events if e["event"] == "phase_finished" and e["phase"] == "migrate"]
    assert migrated["ok"] and "without full_name: 0" in migrated["detail"]

    check = assert_rows_exact(fleet)
    assert check["full_name_null"] == 0 and check["out_of_step"] == 0
    # Each old row was filled exactly once over both runs (the checkpoint moved with them).
    # The phase's vars reached the command: batches of BATCH_ROWS ids up to the job's target.
    updated, batches, below_target = (int(v) for v in db.psql(
        lab, "-A", "-t", "-F", "|", "-c",
        "SELECT rows_updated, batches, (SELECT count(*) FROM users WHERE id <= target_id) "
        "FROM rollout_backfill").strip().split("|"))
    assert updated == nulls
    assert batches == -(-below_target // BATCH_ROWS)
    assert versions(lab) == {"app01": "2.0", "app02": "2.0", "app03": "1.1"}
    assert all_ready_and_up(lab)
    assert load[0].failed == 0, load[0].failures
    assert load[0].by_version.keys() >= {"1.1", "2.0"}


def test_contract_waits_for_the_last_old_host_then_3_0_rolls_out(fleet: Fleet) -> None:
    lab = fleet.lab
    path = fleet.specs / "rollout-2.0.yml"
    marks = fleet.specs / "contracted"
    forced_spec = spec(fleet, "rollout-marker.yml", phases={"contract": {
        "command": f"touch {marks}", "on": "local", "requires": "2.0"}})
    api = lab_mod.lb_api(lab, lab.lbs[0])
    lb = lab.lbs[0].socket_url
    with writes(fleet, "t4-") as load:
        try:
            api.set_state("app", "app03", "maint")
            # --force first, seconds after the last contract (test 2): `rollout status` takes
            # the contract whose id sorts last, and ids of one second sort at random.
            assert not marks.exists()
            forced = rollout_cli("contract", "-f", str(forced_spec), "--force", "--json")
            assert forced.returncode == 0, forced.stdout + forced.stderr
            assert f"rollout: WARNING: --force: app03: 1.1 (reported; MAINT on {lb})" \
                in forced.stderr
            result = json_result(forced)
            assert result["status"] == "forced" and result["blocking"] == ["app03"]
            assert marks.exists()
            checked = [e for e in contract_journal(fleet, result["contract_id"])
                       if e["event"] == "contract_checked"]
            assert [(e["forced"], e["blocking"]) for e in checked] == [(True, ["app03"])]
            status = rollout_cli("status", "-f", str(path), "--json")
            assert json.loads(status.stdout)["phases"]["contract"]["status"] == "forced"

            refused = rollout_cli("contract", "-f", str(path))
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert f"BLOCKS app03: 1.1 (reported; MAINT on {lb}): older than 2.0" \
                in refused.stdout
            for host in ("app01", "app02"):
                assert f"ok     {host}: 2.0 (reported; in rotation): ok" in refused.stdout
            assert "name" in db.check(lab)["columns"]

            # Not answering (its app stopped, still out of rotation): the journals count.
            lab_ssh(lab, "app03", "/srv/app/bin/appctl stop")
            try:
                assert versions(lab)["app03"] is None
                unreachable = rollout_cli("contract", "-f", str(path))
                assert unreachable.returncode == 2, unreachable.stdout + unreachable.stderr
                assert (f"BLOCKS app03: 1.1 (journaled by deploy {fleet.deploys['2.1']}; "
                        f"MAINT on {lb}): older than 2.0") in unreachable.stdout
            finally:
                lab_ssh(lab, "app03", "/srv/app/bin/appctl start")
            wait_for("app03 answering", lambda: versions(lab)["app03"] == "1.1")
        finally:
            api.set_state("app", "app03", "ready")
            api.close()
        wait_for("app03 back in rotation", lambda: all_ready_and_up(lab))
        assert "name" in db.check(lab)["columns"]

        last = deploy(path, "2.0", "--limit", "app03")
        assert last.returncode == 0, last.stdout[-3000:] + last.stderr
        assert set(versions(lab).values()) == {"2.0"}
        contracted = rollout_cli("contract", "-f", str(path), "--json")
        assert contracted.returncode == 0, contracted.stdout + contracted.stderr
        assert json_result(contracted)["status"] == "done"
        assert db.check(lab)["columns"] == ["id", "full_name"]
        status = rollout_cli("status", "-f", str(path), "--json")
        assert json.loads(status.stdout)["phases"]["contract"]["status"] == "done"

        # The schema change is over: the next release's spec no longer has its phases.
        final = deploy(spec(fleet, "rollout-3.0.yml", phases=None), "3.0")
        assert final.returncode == 0, final.stdout[-3000:] + final.stderr
    assert set(versions(lab).values()) == {"3.0"} and all_ready_and_up(lab)
    assert load[0].failed == 0, load[0].failures
    assert load[0].by_version.keys() >= {"1.1", "2.0", "3.0"}
    check = assert_rows_exact(fleet)
    assert check["columns"] == ["id", "full_name"]


def test_down_removes_the_database(fleet: Fleet) -> None:
    lab = fleet.lab
    postgres = lab.procs[db.PROC_KEY]["pid"]
    assert (lab.host_dir("db1") / "srv" / "postgresql" / "data" / "PG_VERSION").exists()
    lab_mod.down(lab.path)
    assert not Path(f"/proc/{postgres}").exists() or \
        Path(f"/proc/{postgres}/stat").read_text().split(") ")[1][0] in "ZX"
    assert not db.service_file(lab).exists()
    assert not lab.host_dir("db1").exists()
