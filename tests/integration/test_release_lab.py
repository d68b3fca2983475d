"""The safest release of a feature that changes the schema, end to end on a lab with the
database, under load that reads `/` (the feature's flag evaluated there) and writes and reads
users through the app: one deploy of the lab's ``rollout-release.yml`` runs expand, the canary
and the rest of the fleet with the flag off, the flag ramped with the analysis gates, then
migrate; ``rollout contract`` follows.

The tests share the lab and run in file order: a feature whose ``on`` variant fails half its
requests is reverted at the ramp's first gate (the fleet keeps serving the release dark on the
expanded schema, contract is refused); then a good feature, its controller killed with -9
during the ramp and resumed, goes all the way to contract."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from rollout_py.lab import artifact, db
from rollout_py.lab.dbload import DbWriteLoad
from rollout_py.lab.layout import HOST_FLAGS_PATH, Layout
from rollout_py.lab.load import Summary
from rollout_py.state import StateDir, read_journal, records_in_order
from tests.integration.conftest import LabFactory
from tests.integration.deploykit import (
    REPO,
    all_ready_and_up,
    json_result,
    load,
    rollout_cli,
    served_variants,
    versions,
    write_spec,
)

FLAG = "new-greeting"


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> Layout:
    layout = lab_factory(n_hosts=3, name="release", with_db=True)
    # (the lab comes up on 1.0, a release without a database: schema 1 is 1.1)
    for version, rate in (("1.1", None), ("2.0", 0.5), ("2.1", 0.0)):
        artifact.build_artifact(layout.artifacts, version, artifact.Behaviour(
            flags=True, flag_error_rate=rate or 0.0, db_schema=1 if rate is None else 2))
    proc = rollout_cli("deploy", "-f", str(write_spec(layout, layout.path / "plain.yml")),
                       "--version", "1.1")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert set(versions(layout).values()) == {"1.1"}
    # Rows older than any release that knows full_name: the backfill's work.
    db.psql(layout, "-c", "INSERT INTO users (name) SELECT 'old ' || g "
                          "FROM generate_series(1, 600) AS g")
    return layout


def release_spec(lab: Layout) -> Path:
    """The lab's rollout-release.yml with test-sized windows: a canary judged for 4 s, a ramp
    of 10/50/100 % judged for 4 s per step against 4 s of baseline, 2 s windows."""
    return write_spec(
        lab, lab.path / "release-test.yml", base=db.RELEASE_SPEC,
        canary={"hosts": 1, "steps": [{"traffic": "10%"}, {"analysis": {"duration": 4}}]},
        analysis={"interval": 2, "min_requests": 20, "on_inconclusive": "hold",
                  "inconclusive_limit": 6, "failure_limit": 1, "gates": [
                      {"error_rate": {"max": "5%"}},
                      {"error_rate": {"max_over_baseline": "2%"}}]},
        flags={"step_duration": 4, "baseline_duration": 4,
               "effect": {"url": "http://{{ ansible_host }}:8080/", "timeout": 15,
                          "settle": 1}},
        phases={**db.phases(lab, batch_size=100, sleep=0.2),
                "release": {"flag": FLAG, "to": "100%"}})


class Traffic:
    """What the load saw: ``pages`` (`/`) and ``users`` (writes), each once stopped."""

    def __init__(self, users: DbWriteLoad) -> None:
        self.writer = users
        self.pages: list[Summary] = []
        self.users: list[Summary] = []


@contextmanager
def traffic(lab: Layout) -> Iterator[Traffic]:
    """`/` at 100 rps and a write-then-read of a user at 20 rps, through the LB."""
    out = Traffic(DbWriteLoad(f"http://127.0.0.1:{lab.lbs[0].port}/users", rps=20,
                              duration=3600))
    out.writer.start()
    try:
        with load(lab, rps=100) as pages:
            yield out
        out.pages = pages
    finally:
        out.users.append(out.writer.stop())


def rows_ok(lab: Layout, before: dict[str, Any], written: list[tuple[int, str]]) -> None:
    """Every row from before and every acknowledged write, once each, with its name."""
    after = db.check(lab)
    assert after["rows"] == after["distinct_ids"] == before["rows"] + len(written)
    got = db.psql(lab, "-A", "-t", "-F", "|", "-c",
                  "SELECT id, coalesce(to_jsonb(u)->>'full_name', to_jsonb(u)->>'name') "
                  "FROM users u WHERE id > " + str(before["max_id"]) + " ORDER BY id")
    new = [(int(i), n) for i, n in (line.split("|", 1) for line in got.splitlines() if line)]
    assert new == sorted(written)


def snapshot(lab: Layout) -> dict[str, Any]:
    row = db.check(lab)
    row["max_id"] = int(db.psql(lab, "-A", "-t", "-c", "SELECT coalesce(max(id), 0) FROM users"))
    row["old_md5"] = _md5_upto(lab, row["max_id"])
    return row


def _md5_upto(lab: Layout, max_id: int) -> str:
    text = db.psql(lab, "-A", "-t", "-F", ":", "-c",
                   "SELECT id, coalesce(to_jsonb(u)->>'full_name', to_jsonb(u)->>'name') "
                   f"FROM users u WHERE id <= {max_id} ORDER BY id")
    return hashlib.md5(text.encode()).hexdigest()


def events_of(spec: Path) -> list[dict[str, Any]]:
    record = StateDir(spec.parent / ".rollout").get()
    return [json.loads(line) for line in record.journal.read_text().splitlines()]


def flag_changes(spec: Path) -> list[tuple[dict[str, Any], list[Any]]]:
    """(meta, events) of every flag change journaled beside the spec, oldest first."""
    # Records being created (no meta.json yet) are left out, as rollout_py's readers do.
    return [(json.loads((p / "meta.json").read_text()), read_journal(p / "journal.jsonl"))
            for p in records_in_order(spec.parent / ".rollout" / "flags")]


def host_files(lab: Layout) -> set[bytes]:
    return {(lab.host_dir(h.name) / HOST_FLAGS_PATH.lstrip("/")).read_bytes()
            for h in lab.app_hosts}


def index(events: list[dict[str, Any]], kind: str, **match: Any) -> list[int]:
    return [i for i, e in enumerate(events)
            if e["event"] == kind and all(e.get(k) == v for k, v in match.items())]


def test_a_failing_feature_is_reverted_at_its_first_gate_and_contract_never_runs(
        lab: Layout) -> None:
    spec = release_spec(lab)
    before, files = snapshot(lab), host_files(lab)
    with traffic(lab) as seen:
        proc = rollout_cli("deploy", "-f", str(spec), "--version", "2.0", "--json")
    result = json_result(proc)
    assert proc.returncode == 1 and result["status"] == "rolled_back", \
        proc.stdout[-3000:] + proc.stderr
    assert result["cause"].startswith("release reverted: ")
    events = events_of(spec)
    # expand before any drain; the canary judged with the flag off and passed; every batch
    # back in rotation before the ramp; no migrate
    assert index(events, "phase_finished", phase="expand", ok=True)[0] < \
        index(events, "drain_started")[0]
    assert [e["verdict"] for e in events if e["event"] == "analysis_finished"
            and e["purpose"] == "canary"] == ["pass"]
    assert index(events, "phase_started", phase="release")[0] > \
        index(events, "servers_enabled")[-1]
    [ended] = [events[i] for i in index(events, "phase_finished", phase="release")]
    assert (ended["ok"], ended["rc"]) == (False, 1)
    assert not index(events, "phase_started", phase="migrate")
    # the ramp: its first window failed, the file from before is back on every host
    [(meta, ramp)] = flag_changes(spec)
    assert meta["deploy_id"] == result["deploy_id"]
    windows = [(e.step, e.verdict) for e in ramp if e.kind == "flag_window"]
    assert windows == [(1, "fail")], windows
    assert ramp[-1].status == "reverted"
    assert host_files(lab) == files and set(served_variants(lab, FLAG).values()) == {"off"}
    # the fleet keeps serving the release, dark, on the expanded schema
    assert set(versions(lab).values()) == {"2.0"} and all_ready_and_up(lab)
    assert db.check(lab)["columns"] == ["id", "name", "full_name"]
    bound = next(e for e in ramp if e.kind == "flag_baseline").bound
    (summary,) = seen.pages
    assert 0 < summary.failed <= bound["requests"], (summary.failed, bound)
    assert summary.failed_by_variant == {"on": summary.failed}
    assert seen.users[0].failed == 0, seen.users[0].failures
    rows_ok(lab, before, seen.writer.written)
    assert _md5_upto(lab, before["max_id"]) == before["old_md5"]

    print(f"bad feature: {result['status']} after {events[-1]['ts'] - events[0]['ts']:.1f} s; "
          f"`/` {summary.sent} sent, {summary.failed} failed (bound {bound['requests']}); "
          f"users {seen.users[0].sent} sent, 0 failed")
    refused = rollout_cli("contract", "-f", str(spec))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "BLOCKS release has not finished in a deploy of 2.0 or newer (last: deploy " \
           f"{result['deploy_id']} of 2.0: release failed)" in refused.stdout
    assert "BLOCKS migrate has not finished" in refused.stdout
    assert db.check(lab)["columns"] == ["id", "name", "full_name"]


def test_a_good_feature_goes_to_contract_through_a_kill_9_during_its_ramp(
        lab: Layout) -> None:
    spec = release_spec(lab)
    before = snapshot(lab)
    assert before["full_name_null"] >= 600  # the old rows: the backfill's work
    with traffic(lab) as seen:
        child = subprocess.Popen(
            [sys.executable, "-m", "rollout_py", "deploy", "-f", str(spec), "--version", "2.1",
             "--json"], cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stderr is not None
        try:
            for line in child.stdout:
                event = json.loads(line)
                if event["event"] == "phase_started" and event["phase"] == "release":
                    break
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # the ramp's first step is out and judged
                changes = flag_changes(spec)
                if len(changes) == 2 and any(e.kind == "flag_window" for e in changes[1][1]):
                    break
                time.sleep(0.1)
        finally:  # also when the test fails before: no deploy of this test outlives it
            child.send_signal(signal.SIGKILL)
            child.wait(30)
            child.stdout.close()
            child.stderr.close()
        assert child.returncode == -signal.SIGKILL
        resumed = rollout_cli("resume", "-f", str(spec), "--json")
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr
        contracted = rollout_cli("contract", "-f", str(spec), "--json")
        assert contracted.returncode == 0, contracted.stdout + contracted.stderr
    assert json_result(contracted)["status"] == "done"
    events = events_of(spec)
    assert [e["attempt"] for e in events if e["event"] == "phase_started"
            and e["phase"] == "release"] == [1, 2]
    release_done = index(events, "phase_finished", phase="release", ok=True)[0]
    assert index(events, "phase_started", phase="migrate")[0] > release_done
    assert index(events, "phase_finished", phase="migrate", ok=True)
    # the killed ramp was reverted (recovered) before the resumed one ramped from the start
    _, (_, killed), (_, again) = flag_changes(spec)
    assert killed[-1].status == "reverted" and "recovered" in killed[-1].cause
    assert again[-1].status == "ok"
    assert [e.percent for e in again if e.kind == "flag_step_passed"] == [10, 50, 100]
    assert set(served_variants(lab, FLAG).values()) == {"on"}
    assert set(versions(lab).values()) == {"2.1"} and all_ready_and_up(lab)
    (summary,) = seen.pages
    assert summary.failed == 0, summary.failures
    assert seen.users[0].failed == 0, seen.users[0].failures
    after = db.check(lab)
    assert after["columns"] == ["id", "full_name"] and after["full_name_null"] == 0
    rows_ok(lab, before, seen.writer.written)
    took = {e["phase"]: e["duration"] for e in events if e["event"] == "phase_finished"}
    print(f"good feature: deploy + resume {events[-1]['ts'] - events[0]['ts']:.1f} s, phases "
          f"{took}; `/` {summary.sent} sent, users {seen.users[0].sent} sent, 0 failed")
    assert _md5_upto(lab, before["max_id"]) == before["old_md5"]
