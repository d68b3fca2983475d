"""`rollout contract`'s version gate on a fake fleet: a host reporting an old version, one in
MAINT or unreachable with an old journaled version, one with no known version, all new
(allowed), --force (loud and journaled); the record `rollout status` reads; the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rollout_py import events as ev
from rollout_py.cli import cli
from rollout_py.contract import ContractResult, contract, gate, judge
from rollout_py.errors import InputError
from rollout_py.phase_status import (
    contract_records,
    create_contract_record,
    journaled_versions,
    phase_summary,
)
from rollout_py.report_phases import phase_status_lines
from rollout_py.spec import Spec, load_spec
from rollout_py.state import Journal, StateDir, read_journal
from rollout_py.testing import FakeFleet
from rollout_py.testing_phases import FakePhaseRunner

HOSTS = ["h1", "h2", "h3", "h4"]
LB = "unix:///lb1.sock"


@pytest.fixture
def spec(tmp_path: Path) -> Spec:
    (tmp_path / "inventory.ini").write_text("[app]\n" + "\n".join(HOSTS) + "\n[db]\ndb1\n")
    (tmp_path / "rollout.yml").write_text(json.dumps({
        "name": "web", "inventory": "inventory.ini", "hosts": "app", "playbook": "deploy.yml",
        "version_url": "http://{{ inventory_hostname }}/version",
        "haproxy": {"sockets": [LB], "backend": "app"},
        "health": {"probes": [{"tcp": "{{ inventory_hostname }}:80"}]},
        "phases": {"contract": {"command": "drop-old-column", "on": "db",
                                "requires": "2.0"}}}))
    return load_spec(tmp_path / "rollout.yml")


def journal_deploy(state: StateDir, deploy_id: str, version: str,
                   upgraded: dict[str, str], before: dict[str, str | None],
                   rolled_back: tuple[str, ...] = ()) -> None:
    """A deploy record as the engine writes it: its start, one upgrade, maybe a rollback."""
    record = state.create(deploy_id, meta={"name": "web", "version": version}, spec={},
                          plan={})
    journal = Journal(record.journal)
    journal(ev.DeployStarted(deploy_id=deploy_id, seq=1, name="web", version=version,
                             batches=(tuple(upgraded),), skipped={}, versions=before))
    journal(ev.StepFinished(deploy_id=deploy_id, seq=2, batch=1, step="upgrade", ok=True,
                            hosts=upgraded, versions=before, duration=1.0))
    if rolled_back:
        journal(ev.StepFinished(deploy_id=deploy_id, seq=3, batch=1, step="rollback", ok=True,
                                hosts=dict.fromkeys(rolled_back, "ok"),
                                versions=dict.fromkeys(rolled_back, version), duration=1.0))
    journal.close()


def run(spec: Spec, fleet: FakeFleet, reported: dict[str, str | None], **kw: Any
        ) -> tuple[ContractResult, FakePhaseRunner, list[ev.Event]]:
    runner = FakePhaseRunner(fleet, hosts={"contract": "db1"})
    events: list[ev.Event] = []
    result = contract(spec, executor=fleet.executor(), balancer=fleet.balancer(),
                      runner=runner, versions=lambda ctx: reported, sinks=[events.append],
                      install_signal_handlers=False, **kw)
    return result, runner, events


NEW: dict[str, str | None] = dict.fromkeys(HOSTS, "2.0")
NEW_FROM: dict[str, str | None] = dict.fromkeys(HOSTS, "1.5")


def test_all_hosts_new_runs_the_contract(spec: Spec) -> None:
    fleet = FakeFleet(HOSTS)
    result, runner, events = run(spec, fleet, {**NEW, "h4": "2.1"})
    assert result.status == "done" and result.exit_code == 0
    assert runner.calls == [("contract", "2.0", result.contract_id)]
    assert [e.kind for e in events] == ["contract_checked", "phase_started", "phase_finished",
                                        "contract_finished"]
    # journaled in its own record, read back by `rollout status`
    state = StateDir(spec.state_path())
    (path,) = contract_records(state)
    assert read_journal(path / "journal.jsonl") == events
    summary = phase_summary(state, None)
    assert summary["contract"]["status"] == "done"
    assert "contract: done at" in "\n".join(phase_status_lines(summary))


@pytest.mark.parametrize(("case", "reported", "journal", "maint", "verdict"), [
    ("reports an old version", {"h3": "1.0"}, False, False,
     "h3: 1.0 (reported; in rotation): older than 2.0"),
    ("MAINT, journaled old", {"h3": "2.0"}, True, True,
     "h3: 1.0 (journaled by deploy d2; MAINT on unix:///lb1.sock): older than 2.0"),
    ("unreachable, journaled old", {"h3": None}, True, False,
     "h3: 1.0 (journaled by deploy d2; in rotation): older than 2.0"),
    ("unknown", {"h3": None}, False, False,
     "h3: ? (unknown; in rotation): no version known: not reported (version_url)"),
    ("unparseable", {"h3": "banana"}, False, False,
     "h3: banana (reported; in rotation): the version does not parse"),
])
def test_the_gate_refuses_naming_the_host_its_version_and_source(
        spec: Spec, case: str, reported: dict[str, str | None], journal: bool, maint: bool,
        verdict: str) -> None:
    fleet = FakeFleet(HOSTS)
    state = StateDir(spec.state_path())
    if journal:  # d1 took everyone to 2.0, d2 failed h3's upgrade back to 1.0
        journal_deploy(state, "d1", "2.0", dict.fromkeys(HOSTS, "ok"),
                       dict.fromkeys(HOSTS, "1.0"))
        journal_deploy(state, "d2", "2.1", {"h3": "ok"}, {"h3": "1.0"}, rolled_back=("h3",))
    if maint:
        fleet.servers[LB]["h3"].admin = "MAINT"
    result, runner, events = run(spec, fleet, {**NEW, **reported})
    assert result.status == "refused" and result.exit_code == 2, case
    assert runner.calls == [] and fleet.log == [], case
    assert [h.line() for h in result.blocking] == [verdict], case
    assert verdict in result.cause
    checked = events[0]
    assert isinstance(checked, ev.ContractChecked) and checked.blocking == ("h3",)
    assert isinstance(events[-1], ev.ContractFinished) and events[-1].status == "refused"
    assert phase_summary(state, None)["contract"]["status"] == "refused"


def test_force_runs_it_anyway_loud_and_journaled(spec: Spec) -> None:
    fleet = FakeFleet(HOSTS)
    result, runner, events = run(spec, fleet, {**NEW, "h2": "1.0"}, force=True)
    assert result.status == "forced" and result.exit_code == 0
    assert runner.calls and [h.host for h in result.blocking] == ["h2"]
    checked = events[0]
    assert isinstance(checked, ev.ContractChecked) and checked.forced
    assert checked.hosts["h2"]["verdict"] == "older than 2.0"
    summary = phase_summary(StateDir(spec.state_path()), None)["contract"]
    assert summary["status"] == "forced" and summary["blocking"] == ["h2"]


def test_a_failing_contract_command_is_exit_1(spec: Spec) -> None:
    fleet = FakeFleet(HOSTS)
    runner = FakePhaseRunner(fleet, hosts={"contract": "db1"}, fail={"contract": 1})
    result = contract(spec, executor=fleet.executor(), balancer=fleet.balancer(),
                      runner=runner, versions=lambda ctx: NEW, install_signal_handlers=False)
    assert result.status == "failed" and result.exit_code == 1


def test_an_lb_that_cannot_be_read_makes_the_journal_count() -> None:
    hosts = gate(HOSTS, {h: h for h in HOSTS}, "2.0", reported=NEW,
                 journaled={"h1": ("1.0", "d1")}, states=None, lb_error="lb1: refused")
    assert [h.line() for h in hosts if h.blocking] == [
        "h1: 1.0 (journaled by deploy d1; LB state unknown (lb1: refused)): older than 2.0"]


def test_the_oldest_of_reported_and_journaled_counts_for_a_host_out_of_rotation() -> None:
    out = judge("h1", "2.0", reported="2.0", journaled=("1.0", "d1"), lb="DRAIN on lb1")
    assert out.verdict == "older than 2.0" and out.source == "journaled"
    live = judge("h1", "2.0", reported="2.0", journaled=("1.0", "d1"), lb="in rotation")
    assert live.verdict == "ok" and live.source == "reported"  # the live answer wins
    assert judge("h1", "2.0", reported="2.0.post1", journaled=None, lb="in rotation").verdict \
        == "ok"
    assert judge("h1", "2.10", reported="2.9", journaled=None, lb="in rotation").verdict \
        == "older than 2.10"


def test_journaled_versions_follow_upgrades_and_rollbacks(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    journal_deploy(state, "d1", "2.0", {"h1": "ok", "h2": "failed: x"},
                   {"h1": "1.0", "h2": "1.0"})
    journal_deploy(state, "d2", "2.1", {"h1": "ok"}, {"h1": "2.0"}, rolled_back=("h1",))
    assert journaled_versions(state, "web") == {"h1": ("2.0", "d2"), "h2": ("1.0", "d1")}
    assert journaled_versions(state, "other") == {}


def test_without_a_contract_phase_it_is_bad_input(spec: Spec) -> None:
    bare = spec.model_copy(update={"phases": None})
    with pytest.raises(InputError, match=r"phases\.contract"):
        contract(bare, install_signal_handlers=False)


def test_the_cli_prints_each_host_and_exits_with_the_result(
        spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = FakeFleet(HOSTS)
    import rollout_py.contract as module

    real = module.contract

    def fake(spec: Spec, **kw: Any) -> ContractResult:
        return real(spec, force=kw["force"], executor=fleet.executor(),
                    balancer=fleet.balancer(),
                    runner=FakePhaseRunner(fleet, hosts={"contract": "db1"}),
                    versions=lambda ctx: {**NEW, "h1": "1.0"}, install_signal_handlers=False)

    monkeypatch.setattr(module, "contract", fake)
    path = str(Path(spec.source))
    out = CliRunner().invoke(cli, ["contract", "-f", path], standalone_mode=False)
    assert out.return_value == 2
    assert "BLOCKS h1: 1.0 (reported; in rotation): older than 2.0" in out.output
    assert "refused (exit 2)" in out.output
    forced = CliRunner().invoke(cli, ["contract", "-f", path, "--force", "--json"],
                                standalone_mode=False)
    assert forced.return_value == 0
    assert "WARNING: --force: h1: 1.0" in forced.stderr
    data = json.loads(forced.stdout.strip().splitlines()[-1])["result"]
    assert data["status"] == "forced" and data["blocking"] == ["h1"]


def test_status_shows_each_phase_of_the_last_deploy_and_the_schema_holds(tmp_path: Path
                                                                         ) -> None:
    import jsonschema

    from rollout_py.operations import schema

    state = StateDir(tmp_path)
    record = state.create("d1", meta={"name": "web"}, spec={}, plan={})
    journal = Journal(record.journal)
    journal(ev.PhaseStarted(deploy_id="d1", seq=1, phase="expand", on="db1", what="command: x"))
    journal(ev.PhaseFinished(deploy_id="d1", seq=2, phase="expand", ok=True, rc=0, detail="",
                             duration=1.0))
    journal(ev.PhaseStarted(deploy_id="d1", seq=3, phase="migrate", on="db1", what="command: y"))
    journal.close()
    summary = phase_summary(state, record)
    assert (summary["expand"], summary["migrate"], summary["contract"]) == (
        "done", "interrupted", None)
    assert phase_summary(state, record, running=True)["migrate"] == "running"
    assert phase_status_lines(summary) == [
        "phases (deploy d1): expand done, migrate interrupted", "  contract: not run"]
    phases_schema = schema("status")["properties"]["phases"]
    jsonschema.validate(summary, phases_schema)
    assert phase_summary(state, None)["expand"] == "not run"


def _with_migrate(spec: Spec) -> Spec:
    data = json.loads(Path(spec.source).read_text())
    data["phases"]["migrate"] = {"command": "backfill", "on": "db"}
    Path(spec.source).write_text(json.dumps(data))
    return load_spec(spec.source)


def _journal_migrate(state: StateDir, deploy_id: str, ok: bool | None) -> None:
    """Appends migrate's start (and end, unless ``ok`` is None) to a journaled deploy."""
    record = next(r for r in state.deploys() if r.deploy_id == deploy_id)
    journal = Journal(record.journal)
    journal(ev.PhaseStarted(deploy_id=deploy_id, seq=10, phase="migrate", on="db1",
                            what="command: backfill"))
    if ok is not None:
        journal(ev.PhaseFinished(deploy_id=deploy_id, seq=11, phase="migrate", ok=ok, rc=0,
                                 detail="", duration=1.0))
    journal.close()


@pytest.mark.parametrize(("migrated", "unmet"), [
    ("none", "migrate has not finished in a deploy of 2.0 or newer "
             "(last: deploy d2 of 2.0: migrate not run)"),
    ("older release", "migrate has not finished in a deploy of 2.0 or newer "
                      "(last: deploy d2 of 2.0: migrate not run)"),
    ("interrupted", "migrate has not finished in a deploy of 2.0 or newer "
                    "(last: deploy d2 of 2.0: migrate running)"),
    ("failed", "migrate has not finished in a deploy of 2.0 or newer "
               "(last: deploy d2 of 2.0: migrate failed)"),
    ("done", None),
])
def test_contract_waits_for_a_deploy_of_the_required_version_to_finish_migrate(
        spec: Spec, migrated: str, unmet: str | None) -> None:
    spec = _with_migrate(spec)
    state = StateDir(spec.state_path())
    old: dict[str, str | None] = dict.fromkeys(HOSTS, "1.0")
    journal_deploy(state, "d1", "1.5", dict.fromkeys(HOSTS, "ok"), old)
    if migrated == "older release":  # a backfill of an older release does not count
        _journal_migrate(state, "d1", True)
    journal_deploy(state, "d2", "2.0", dict.fromkeys(HOSTS, "ok"), {**old, **NEW_FROM})
    if migrated in ("interrupted", "failed", "done"):
        _journal_migrate(state, "d2", {"interrupted": None, "failed": False,
                                       "done": True}[migrated])
    fleet = FakeFleet(HOSTS)
    result, runner, events = run(spec, fleet, NEW)
    checked = events[0]
    assert isinstance(checked, ev.ContractChecked)
    if unmet is None:
        assert result.status == "done" and runner.calls and checked.unmet == ()
        return
    assert result.status == "refused" and result.exit_code == 2 and runner.calls == []
    assert result.unmet == (unmet,) and checked.unmet == (unmet,) and result.cause == unmet
    forced, runner, _ = run(spec, fleet, NEW, force=True)
    assert forced.status == "forced" and runner.calls and unmet in forced.cause


def test_no_deploy_at_all_leaves_migrate_unmet(spec: Spec) -> None:
    spec = _with_migrate(spec)
    result, runner, _ = run(spec, FakeFleet(HOSTS), NEW)
    assert result.unmet == ("migrate has not finished in a deploy of 2.0 or newer "
                            "(none journaled)",) and runner.calls == []


def test_two_contracts_of_one_second_are_read_in_the_order_they_ran(spec: Spec) -> None:
    """Ids carry the UTC second and random hex: the later of two in one second may sort
    first by id; `rollout status` must still show the later one."""
    state = StateDir(spec.state_path())
    first = create_contract_record(state, "20261203T050000Z-ffffff", {"requires": "2.0"})
    second = create_contract_record(state, "20261203T050000Z-000000", {"requires": "2.0"})
    statuses: tuple[tuple[Path, ev.ContractStatus], ...] = ((first, "refused"),
                                                            (second, "forced"))
    for path, status in statuses:
        journal = Journal(path / "journal.jsonl")
        journal(ev.ContractFinished(deploy_id=path.name, seq=1, status=status, exit_code=0,
                                    cause=status))
        journal.close()
    assert contract_records(state) == [first, second]
    assert phase_summary(state, None)["contract"]["status"] == "forced"
