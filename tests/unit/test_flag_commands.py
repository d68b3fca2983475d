"""rollout flag set | ramp | kill | list on a fake fleet: the order of side effects (validate,
lock, journal, push, analyse, revert), a bad variant reverted at its first gate, kill timing,
interrupts and a controller death mid-ramp, and the gates restated for a variant's share."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rollout_py import events as ev
from rollout_py.analysis.counters import Group
from rollout_py.errors import FlagError, InputError, LockHeldError
from rollout_py.flag_analysis import judge, scaled_gates
from rollout_py.flag_api import flag_kill, flag_list, flag_ramp, flag_set
from rollout_py.flags.edit import ramp, set_variant, to_json
from rollout_py.flags.model import load_flags
from rollout_py.lock import FleetLock, fleet_key
from rollout_py.spec import Spec, load_spec
from rollout_py.spec_canary import AnalysisSpec
from rollout_py.state import read_journal
from rollout_py.testing import FakeFleet
from rollout_py.testing_flags import FakeFlagExecutor

HOSTS = ["h1", "h2", "h3", "h4"]
FLAG = "new-greeting"
FLAGS = {"flags": {FLAG: {"state": "ENABLED", "variants": {"on": True, "off": False},
                          "defaultVariant": "off", "targeting": {}}}}


class Killed(BaseException):
    """Stands for kill -9 of the controller: nothing after it runs."""


@pytest.fixture
def spec(tmp_path: Path) -> Spec:
    (tmp_path / "inventory.ini").write_text("[app]\n" + "\n".join(HOSTS) + "\n")
    (tmp_path / "flags.json").write_text(json.dumps(FLAGS, indent=2) + "\n")
    (tmp_path / "rollout.yml").write_text(json.dumps({
        "name": "web", "inventory": "inventory.ini", "hosts": "app", "playbook": "deploy.yml",
        "haproxy": {"sockets": ["unix:///lb1.sock"], "backend": "app"},
        "health": {"probes": [{"tcp": "{{ inventory_hostname }}:80"}]},
        "analysis": {"interval": 0.5, "min_requests": 100, "gates": [
            {"error_rate": {"max_over_baseline": "1%"}}]},
        "flags": {"file": "flags.json", "path": "/srv/app/flags.json",
                  "step_duration": 1, "baseline_duration": 1,
                  "effect": {"url": "http://{{ inventory_hostname }}/", "timeout": 0.3,
                             "settle": 0}}}))
    return load_spec(tmp_path / "rollout.yml")


def fake(errors: dict[str, float] | None = None) -> tuple[FakeFleet, FakeFlagExecutor]:
    fleet = FakeFleet(HOSTS, requests_per_read=2000)
    hosts = FakeFlagExecutor(fleet, FLAG, variant_errors=errors or {})
    before = to_json(load_flags_data(FLAGS))
    for h in HOSTS:
        hosts.files[h] = before
    return fleet, hosts


def load_flags_data(data: dict[str, Any]) -> Any:
    from rollout_py.flags.model import parse_flags

    return parse_flags(data)


def opts(fleet: FakeFleet, hosts: FakeFlagExecutor, events: list[ev.Event],
         **extra: Any) -> dict[str, Any]:
    return {"executor": hosts, "balancer": fleet.balancer(), "fetch": hosts.effect,
            "sinks": [events.append, *extra.pop("sinks", [])], "sleep": lambda s: None,
            "install_signal_handlers": False, **extra}


def kinds(events: list[ev.Event]) -> list[str]:
    return [e.kind for e in events]


def journal_of(spec: Spec, change_id: str) -> list[ev.Event]:
    return read_journal(spec.state_path() / "flags" / change_id / "journal.jsonl")


def test_a_malformed_flag_file_is_refused_before_any_lock_or_push(spec: Spec) -> None:
    Path(spec.base_dir, "flags.json").write_text(
        '{"flags": {"new-greeting": {"state": "ENABLED",\n'
        '  "variants": {"on": true, "off": false}, "defaultVariant": "onn"}}}\n')
    fleet, hosts = fake()
    before = dict(hosts.files)
    commands: list[Callable[[dict[str, Any]], object]] = [
        lambda o: flag_set(spec, FLAG, "on", **o), lambda o: flag_kill(spec, FLAG, **o),
        lambda o: flag_ramp(spec, FLAG, to=50, **o)]
    for command in commands:
        with pytest.raises(FlagError, match=r"flags\.json:2:61: flags\.new-greeting\."
                                             r"defaultVariant: 'onn' is not one of"):
            command(opts(fleet, hosts, []))
    assert fleet.log == [] and hosts.files == before
    assert not (spec.state_path() / "flags").exists()  # no record, no lock
    assert not (spec.state_path() / "locks").exists() or not any(
        (spec.state_path() / "locks").iterdir())


def test_an_unknown_variant_or_a_ramp_below_the_current_share_is_refused(spec: Spec) -> None:
    fleet, hosts = fake()
    with pytest.raises(FlagError, match="'onn' is not one of the variants"):
        flag_set(spec, FLAG, "onn", **opts(fleet, hosts, []))
    with pytest.raises(InputError, match="at 100% already"):
        flag_ramp(spec, FLAG, to=50, variant="off", **opts(fleet, hosts, []))
    assert fleet.log == []


def test_set_journals_first_then_pushes_then_writes_the_controller_copy(spec: Spec) -> None:
    fleet, hosts = fake()
    seen: list[tuple[str, int]] = []
    events: list[ev.Event] = []
    result = flag_set(spec, FLAG, "on", **opts(
        fleet, hosts, events, sinks=[lambda e: seen.append((e.kind, len(fleet.log)))]))
    assert (result.status, result.exit_code) == ("ok", 0)
    assert seen[0] == ("flag_started", 0)  # journaled before any host was touched
    assert kinds(events) == ["flag_started", "flag_push_started", "flag_pushed",
                             "flag_in_effect", "flag_finished"]
    want = to_json(set_variant(load_flags_data(FLAGS), FLAG, "on"))
    assert set(hosts.files.values()) == {want}
    assert Path(spec.base_dir, "flags.json").read_text() == want
    assert journal_of(spec, result.change_id) == events
    started = events[0]
    assert isinstance(started, ev.FlagChangeStarted) and json.loads(started.before) == FLAGS


def test_a_set_that_misses_a_host_is_reverted_and_a_revert_that_misses_one_lists_it(
        spec: Spec) -> None:
    fleet, hosts = fake()
    before = dict(hosts.files)
    hosts.fail["h2"] = "unreachable"
    events: list[ev.Event] = []
    result = flag_set(spec, FLAG, "on", **opts(fleet, hosts, events))
    assert (result.status, result.exit_code) == ("failed", 3)
    assert list(result.left) == ["h2"] and "unreachable" in result.left["h2"]
    assert "flag_revert_started" in kinds(events)
    assert {h: hosts.files[h] for h in HOSTS} == before  # every reachable host reverted
    assert json.loads(Path(spec.base_dir, "flags.json").read_text()) == FLAGS


def test_ramp_of_a_good_variant_passes_every_step_and_commits(spec: Spec) -> None:
    fleet, hosts = fake({"on": 0.0})
    events: list[ev.Event] = []
    result = flag_ramp(spec, FLAG, to=100, **opts(fleet, hosts, events))
    assert (result.status, result.exit_code) == ("ok", 0), result.cause
    passed = [e for e in events if isinstance(e, ev.FlagStepPassed)]
    assert [e.percent for e in passed] == [10, 50, 100]
    pushes = [e.step for e in events if isinstance(e, ev.FlagPushStarted)]
    assert pushes == [0, 1, 2, 3]  # the sync push of the controller copy, then each step
    assert kinds(events).index("flag_baseline") < kinds(events).index("flag_window")
    final = to_json(set_variant(load_flags_data(FLAGS), FLAG, "on"))
    assert set(hosts.files.values()) == {final}
    assert Path(spec.base_dir, "flags.json").read_text() == final
    assert result.bound is not None and result.bound["share"] == 0.1


def test_a_failing_variant_is_reverted_at_its_first_gate(spec: Spec) -> None:
    fleet, hosts = fake({"on": 1.0})
    before = dict(hosts.files)
    events: list[ev.Event] = []
    result = flag_ramp(spec, FLAG, to=50, **opts(fleet, hosts, events))
    assert (result.status, result.exit_code) == ("reverted", 1)
    assert result.cause.startswith("step 1 (10%): window 1 failed")
    windows = [e for e in events if isinstance(e, ev.FlagWindow)]
    assert [(w.step, w.verdict) for w in windows] == [(1, "fail")]
    tail = kinds(events)[kinds(events).index("flag_window"):]
    assert tail == ["flag_window", "flag_revert_started", "flag_push_started", "flag_pushed",
                    "flag_in_effect", "flag_finished"]
    assert hosts.files == before
    assert json.loads(Path(spec.base_dir, "flags.json").read_text()) == FLAGS


def test_kill_flips_every_host_in_one_push_and_records_how_long_it_took(spec: Spec) -> None:
    on = to_json(set_variant(load_flags_data(FLAGS), FLAG, "on"))
    Path(spec.base_dir, "flags.json").write_text(on)
    fleet, hosts = fake()
    for h in HOSTS:
        hosts.files[h] = on
    events: list[ev.Event] = []
    result = flag_kill(spec, FLAG, **opts(fleet, hosts, events))
    assert (result.status, result.exit_code) == ("ok", 0)
    assert [line for line in fleet.log if line.startswith("flag push")] == [
        f"flag push flag-kill-0 {result_sha(hosts)}"]
    effect = next(e for e in events if isinstance(e, ev.FlagInEffect))
    assert effect.variant == "off" and set(effect.hosts) == set(HOSTS)
    assert all(s is not None for s in effect.hosts.values())
    assert result.written_s is not None and result.fleet_s is not None
    assert effect.fleet_s == result.fleet_s == max(s for s in effect.hosts.values() if s)
    assert "served by every host after" in result.cause


def result_sha(hosts: FakeFlagExecutor) -> str:
    import hashlib

    return hashlib.sha1(hosts.files["h1"].encode()).hexdigest()[:8]


def test_kill_not_served_in_time_is_not_reverted_and_names_the_hosts(spec: Spec) -> None:
    fleet, hosts = fake()
    events: list[ev.Event] = []
    fetch = lambda url, header: None if "h3" in url else hosts.effect(url, header)  # noqa: E731
    result = flag_kill(spec, FLAG, **{**opts(fleet, hosts, events), "fetch": fetch})
    assert (result.status, result.exit_code) == ("failed", 3)
    assert list(result.left) == ["h3"] and "flag_revert_started" not in kinds(events)


def test_an_interrupt_mid_ramp_reverts_every_host(spec: Spec) -> None:
    fleet, hosts = fake({"on": 0.0})
    before = dict(hosts.files)

    def sigint_at_first_window(e: ev.Event) -> None:
        if isinstance(e, ev.FlagWindow) and e.window == 1:
            os.kill(os.getpid(), signal.SIGINT)

    events: list[ev.Event] = []
    result = flag_ramp(spec, FLAG, to=100, **{**opts(
        fleet, hosts, events, sinks=[sigint_at_first_window]), "install_signal_handlers": True})
    assert (result.status, result.exit_code) == ("cancelled", 130)
    assert "interrupted" in result.cause and hosts.files == before
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_controller_death_mid_ramp_is_reverted_by_the_next_command(spec: Spec) -> None:
    fleet, hosts = fake({"on": 0.0})
    before = hosts.files["h1"]

    def die(e: ev.Event) -> None:
        if isinstance(e, ev.FlagWindow):
            raise Killed

    with pytest.raises(Killed):
        flag_ramp(spec, FLAG, to=50, **opts(fleet, hosts, [], sinks=[die]))
    assert hosts.files["h1"] != before  # the hosts serve the 10 % split
    (dead,) = (spec.state_path() / "flags").iterdir()
    assert not isinstance(read_journal(dead / "journal.jsonl")[-1], ev.FlagChangeFinished)

    events: list[ev.Event] = []
    result = flag_set(spec, FLAG, "off", **opts(fleet, hosts, events))
    assert result.status == "ok"
    old = read_journal(dead / "journal.jsonl")
    assert isinstance(old[-1], ev.FlagChangeFinished) and old[-1].status == "reverted"
    assert "recovered" in old[-1].cause
    assert [e.seq for e in old] == list(range(1, len(old) + 1))
    revert_push = [line for line in fleet.log if line.startswith("flag push")][-2]
    assert revert_push.startswith("flag push flag-revert")  # reverted before the set ran


def test_a_kill_after_a_controller_death_mid_ramp_needs_no_revert_push_first(
        spec: Spec) -> None:
    fleet, hosts = fake({"on": 0.0})

    def die(e: ev.Event) -> None:
        if isinstance(e, ev.FlagWindow):
            raise Killed

    with pytest.raises(Killed):
        flag_ramp(spec, FLAG, to=50, **opts(fleet, hosts, [], sinks=[die]))
    pushes = len([line for line in fleet.log if line.startswith("flag push")])
    result = flag_kill(spec, FLAG, **opts(fleet, hosts, []))
    assert result.status == "ok"
    after = [line for line in fleet.log if line.startswith("flag push")][pushes:]
    assert len(after) == 1 and after[0].startswith("flag push flag-kill")
    (dead,) = [p for p in (spec.state_path() / "flags").iterdir()
               if p.name != result.change_id]
    old = read_journal(dead / "journal.jsonl")
    assert isinstance(old[-1], ev.FlagChangeFinished) and "superseded by kill" in old[-1].cause
    killed = json.loads(hosts.files["h1"])["flags"][FLAG]
    assert (killed["defaultVariant"], killed["targeting"]) == ("off", {})


def test_a_locked_fleet_is_refused_before_any_push(spec: Spec) -> None:
    fleet, hosts = fake()
    FleetLock(spec.state_path(), fleet_key("web", str(Path(spec.base_dir, "inventory.ini")))
              ).hold(message="maintenance")
    with pytest.raises(LockHeldError):
        flag_kill(spec, FLAG, **opts(fleet, hosts, []))
    assert fleet.log == []


def test_list_reads_the_controller_copy_and_compares_every_host(spec: Spec) -> None:
    _fleet, hosts = fake()
    hosts.files["h4"] = "{}\n"
    info = flag_list(spec, hosts=True, executor=hosts)
    assert [f["line"] for f in info["flags"]] == [
        "new-greeting: ENABLED, default off, no targeting"]
    assert info["hosts"] == {"h1": "ok", "h2": "ok", "h3": "ok", "h4": "failed: differs"}


def test_a_ramp_needs_an_analysis_section(spec: Spec) -> None:
    fleet, hosts = fake()
    bare = spec.model_copy(update={"analysis": None})
    with pytest.raises(InputError, match="analysis"):
        flag_ramp(bare, FLAG, to=10, **opts(fleet, hosts, []))


def group(requests: int, errors: int, rtime: float = 10.0) -> Group:
    return Group(("a",), requests, errors, errors / requests,
                 {"qtime": 0.0, "ctime": 0.0, "rtime": rtime, "ttime": rtime})


def test_gates_are_restated_for_the_share_of_the_variant() -> None:
    spec = AnalysisSpec(min_requests=100, gates=[
        {"error_rate": {"max": "2%", "max_over_baseline": "1%"}},
        {"latency": {"max_ratio_to_baseline": 2, "min_difference_ms": 10}}])
    scaled = scaled_gates(spec, 0.1, group(10000, 100))  # baseline 1 %, 10 ms
    er, lat = scaled.gates[0].error_rate, scaled.gates[1].latency  # type: ignore[union-attr]
    assert er.max == pytest.approx(0.9 * 0.01 + 0.1 * 0.02)
    assert er.max_over_baseline == pytest.approx(0.001)
    assert lat.max_ratio_to_baseline == pytest.approx(1.1)
    assert lat.min_difference_ms == pytest.approx(10.0)  # the noise floor, not scaled
    # HAProxy's whole-millisecond averages: 1 ms against 0.5 ms at 10 % is noise, not a fail.
    ms = AnalysisSpec(min_requests=100, gates=[
        {"latency": {"max_ratio_to_baseline": 1.5, "min_difference_ms": 5}}])
    assert judge(group(1000, 0, rtime=1.0), group(1000, 0, rtime=0.49), ms,
                 share=0.1).verdict == "pass"
    # A variant failing 20 % of its requests at 10 %: the fleet goes from 1 % to 2.9 %.
    bad = judge(group(10000, 290), group(10000, 100), spec, share=0.1)
    assert bad.verdict == "fail" and "fleet" in bad.reason
    fine = judge(group(10000, 105), group(10000, 100), spec, share=0.1)
    assert fine.verdict == "pass"
    few = judge(group(50, 50), group(10000, 100), spec, share=0.1)
    assert few.verdict == "inconclusive"


def test_ramp_steps_and_percentages_in_the_spec(spec: Spec) -> None:
    from rollout_py.errors import SpecError
    from rollout_py.spec import parse_spec

    data = json.loads(Path(spec.base_dir, "rollout.yml").read_text())
    data["flags"]["ramp"] = ["50%", "10%"]
    with pytest.raises(SpecError, match=r"flags\.ramp: .*must increase"):
        parse_spec(data)
    data["flags"]["ramp"] = ["10%"]
    data["flags"]["colour"] = 1
    with pytest.raises(SpecError, match=r"flags\.colour: unknown key"):
        parse_spec(data)
    assert spec.flags is not None and spec.flags.ramp == [10, 50, 100]
    assert to_json(ramp(load_flags(Path(spec.base_dir, "flags.json")), FLAG, "on", 10))


def test_the_cli_refuses_a_bad_percentage_and_says_a_refusal_in_json(spec: Spec) -> None:
    from click.testing import CliRunner

    from rollout_py.cli import cli

    args = ["-f", str(Path(spec.base_dir, "rollout.yml"))]
    bad = CliRunner().invoke(cli, ["flag", "ramp", FLAG, "--to", "150%", *args])
    assert bad.exit_code == 2 and "--to: between 1% and 100%, not 150%" in bad.output
    Path(spec.base_dir, "flags.json").write_text('{"flags": {"x": 1}}\n')
    refused = CliRunner().invoke(cli, ["flag", "kill", FLAG, "--json", *args])
    assert isinstance(refused.exception, FlagError)
    result = json.loads(refused.output.strip().splitlines()[-1])["result"]
    assert (result["status"], result["exit_code"]) == ("refused", 2)
    assert "flags.json:1:17: flags.x: a flag is an object" in result["cause"]


def test_a_ramp_without_traffic_to_judge_is_refused_after_the_baseline(spec: Spec) -> None:
    fleet, hosts = fake({"on": 1.0})
    fleet.requests_per_read = 0
    before = dict(hosts.files)
    events: list[ev.Event] = []
    result = flag_ramp(spec, FLAG, to=50, **opts(fleet, hosts, events))
    assert (result.status, result.exit_code) == ("refused", 2)
    assert "too few requests before the ramp" in result.cause
    assert [e.step for e in events if isinstance(e, ev.FlagPushStarted)] == [0]
    assert hosts.files == before
