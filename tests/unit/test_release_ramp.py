"""A deploy's release ramp (``flag_api.release_ramp``) on a fake fleet: it runs under the
deploy's lock (takes none of its own), is journaled in ``flags/`` naming the deploy, reverts a
failing variant at its first gate, stops at the deploy's interrupt, finishes what a killed
ramp left first, and does nothing when the flag is at its target already."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from rollout_py import events as ev
from rollout_py.api import Context
from rollout_py.errors import InputError
from rollout_py.flag_api import release_ramp
from rollout_py.flag_change import FlagResult
from rollout_py.flags.edit import set_variant, to_json
from rollout_py.lock import FleetLock, fleet_key
from rollout_py.spec import Spec
from rollout_py.state import StateDir, read_journal
from rollout_py.testing import FakeFleet
from rollout_py.testing_flags import FakeFlagExecutor
from tests.unit.test_flag_commands import FLAG, FLAGS, Killed, fake, load_flags_data, spec

__all__ = ["spec"]  # the fixture


def ramp(spec: Spec, fleet: FakeFleet, hosts: FakeFlagExecutor, events: list[ev.Event], *,
         to: int = 100, cancel: bool = False,
         sink: Callable[[ev.Event], None] | None = None) -> FlagResult | None:
    return release_ramp(spec, Context.resolve(spec), StateDir(spec.state_path()), name=FLAG,
                        to=to, variant=None, deploy_id="d-7", executor=hosts,
                        balancer=fleet.balancer(), cancel=lambda: cancel,
                        sinks=[sink or events.append], fetch=hosts.effect,
                        sleep=lambda s: None)


def held(spec: Spec) -> None:
    """The fleet's lock held, as the deploy that runs the release holds it."""
    FleetLock(spec.state_path(), fleet_key("web", str(Path(spec.base_dir, "inventory.ini")))
              ).hold(message="deploy web 2.0")


def test_a_good_variant_is_ramped_under_the_deploys_lock_and_journaled_naming_it(
        spec: Spec) -> None:
    held(spec)  # `rollout flag ramp` would be refused (LockHeldError); the deploy's is not
    fleet, hosts = fake({"on": 0.0})
    events: list[ev.Event] = []
    result = ramp(spec, fleet, hosts, events)
    assert result is not None and (result.status, result.exit_code) == ("ok", 0), result
    assert [e.percent for e in events if isinstance(e, ev.FlagStepPassed)] == [10, 50, 100]
    final = to_json(set_variant(load_flags_data(FLAGS), FLAG, "on"))
    assert set(hosts.files.values()) == {final}
    record = spec.state_path() / "flags" / result.change_id
    meta = json.loads((record / "meta.json").read_text())
    assert (meta["command"], meta["target"], meta["deploy_id"]) == ("ramp", "on@100%", "d-7")
    assert isinstance(read_journal(record / "journal.jsonl")[-1], ev.FlagChangeFinished)


def test_a_failing_variant_is_reverted_at_its_first_gate(spec: Spec) -> None:
    fleet, hosts = fake({"on": 1.0})
    before = dict(hosts.files)
    controller = Path(spec.base_dir, "flags.json").read_text()
    events: list[ev.Event] = []
    result = ramp(spec, fleet, hosts, events)
    assert result is not None and (result.status, result.exit_code) == ("reverted", 1)
    assert result.cause.startswith("step 1 (10%): window 1 failed")
    assert hosts.files == before
    assert Path(spec.base_dir, "flags.json").read_text() == controller  # not committed


def test_the_deploys_interrupt_cancels_the_ramp_and_reverts(spec: Spec) -> None:
    fleet, hosts = fake({"on": 0.0})
    before = dict(hosts.files)
    events: list[ev.Event] = []
    result = ramp(spec, fleet, hosts, events, cancel=True)
    assert result is not None and (result.status, result.exit_code) == ("cancelled", 130)
    assert hosts.files == before and "flag_revert_started" in [e.kind for e in events]


def test_a_ramp_left_by_a_killed_deploy_is_reverted_before_the_next_one_starts(
        spec: Spec) -> None:
    fleet, hosts = fake({"on": 0.0})
    before = hosts.files["h1"]

    def die(e: ev.Event) -> None:
        if isinstance(e, ev.FlagWindow):
            raise Killed

    with pytest.raises(Killed):
        ramp(spec, fleet, hosts, [], sink=die)
    assert hosts.files["h1"] != before  # the 10 % split is out
    (dead,) = (spec.state_path() / "flags").iterdir()
    result = ramp(spec, fleet, hosts, [])  # the resumed deploy's attempt 2
    assert result is not None and result.status == "ok"
    old = read_journal(dead / "journal.jsonl")
    assert isinstance(old[-1], ev.FlagChangeFinished) and old[-1].status == "reverted"
    pushes = [line.split()[2] for line in fleet.log if line.startswith("flag push")]
    # the killed ramp's sync and 10 % push; its revert; then the new ramp from its sync push
    assert pushes[:5] == ["flag-ramp-0", "flag-ramp-1", "flag-revert", "flag-ramp-0",
                          "flag-ramp-1"], pushes


def test_a_flag_at_its_target_already_is_left_alone(spec: Spec) -> None:
    Path(spec.base_dir, "flags.json").write_text(
        to_json(set_variant(load_flags_data(FLAGS), FLAG, "on")))
    fleet, hosts = fake()
    before = dict(hosts.files)
    assert ramp(spec, fleet, hosts, [], to=50) is None  # not a ramp of `off`: the default
    assert fleet.log == [] and hosts.files == before
    assert not (spec.state_path() / "flags").exists()


def test_a_flag_without_an_on_variant_needs_the_variant_named(spec: Spec) -> None:
    data = json.loads(json.dumps(FLAGS))
    data["flags"][FLAG]["variants"] = {"new": True, "old": False}
    data["flags"][FLAG]["defaultVariant"] = "old"
    Path(spec.base_dir, "flags.json").write_text(json.dumps(data))
    fleet, hosts = fake()
    with pytest.raises(InputError, match=r"phases.release.variant \(default on\): flag "
                                         r"new-greeting has no variant 'on'; name the one to "
                                         r"release \(one of new, old\)"):
        ramp(spec, fleet, hosts, [])
    assert fleet.log == []
