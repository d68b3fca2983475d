"""The engine's step and undo order at every failure point, with the test doubles."""

from __future__ import annotations

from collections.abc import Callable

from rollout_py import events as ev
from rollout_py.engine import Engine, Settings
from rollout_py.planner import make_plan
from rollout_py.result import DeployResult
from rollout_py.spec import HealthSpec, HttpProbe
from rollout_py.testing import FakeFleet

HOSTS = ["h1", "h2", "h3", "h4"]


def run(fleet: FakeFleet, *, batches: list[int | str] | None = None, version: str = "2.0",
        on_failure: str = "rollback_batch", soak: float = 0, force_drain: bool = False,
        max_unavailable: int | str | None = None,
        sinks: tuple[Callable[[ev.Event], None], ...] = (),
        engine_hook: Callable[[Engine], None] | None = None) -> tuple[Engine, DeployResult]:
    plan = make_plan(
        name="t", version=version, fleet=list(fleet.hosts), targets=list(fleet.hosts),
        servers={h: h for h in fleet.hosts}, batches=batches or [1, "50%"],
        max_unavailable=max_unavailable, current_versions={}, force=False, backend="app",
        sockets=list(fleet.lbs), on_failure=on_failure, playbook="deploy.yml",
        rollback_playbook=None, drain_timeout=0.2, pause_between_batches=0)
    health = HealthSpec(deadline=0.3, interval=0.01, consecutive=2, soak=soak,
                        probes=[HttpProbe(http="http://x")])
    engine = Engine(plan, executor=fleet.executor(), balancer=fleet.balancer(),
                    prober=fleet.prober(), checks=fleet.checks,
                    settings=Settings(health=health, drain_timeout=0.2, up_timeout=0.3,
                                      force_drain=force_drain, poll=0.01),
                    sinks=sinks)
    if engine_hook:
        engine_hook(engine)
    return engine, engine.run()


def forward(hosts: str, version: str = "2.0") -> list[str]:
    return [f"drain {hosts}", f"maint {hosts}", f"upgrade {hosts} -> {version}",
            f"restore {hosts}"]


def undo_after_upgrade(hosts: str, previous: str = "1.0") -> list[str]:
    return [f"rollback {hosts} -> {previous}", f"restore {hosts}"]


def test_success_runs_every_batch_in_order() -> None:
    fleet = FakeFleet(HOSTS)
    _, result = run(fleet)
    assert fleet.log == forward("h1") + forward("h2,h3") + forward("h4")
    assert result.status == "succeeded" and result.exit_code == 0
    assert all(h.after == "2.0" and h.before == "1.0" for h in result.hosts.values())
    assert [b.outcome for b in result.batches] == ["succeeded"] * 3
    assert all(s.admin == "READY" for lb in fleet.servers.values() for s in lb.values())


def test_failed_upgrade_on_one_host_rolls_back_the_whole_batch() -> None:
    fleet = FakeFleet(HOSTS, fail_upgrade={"h3": "failed"})
    _, result = run(fleet)
    assert fleet.log == forward("h1") + forward("h2,h3")[:-1] + undo_after_upgrade("h2,h3")
    assert result.status == "rolled_back" and result.exit_code == 1
    assert result.failure == "task_failed" and "h3" in (result.cause or "")
    assert fleet.versions == {"h1": "2.0", "h2": "1.0", "h3": "1.0", "h4": "1.0"}
    assert result.hosts["h2"].outcome == "rolled_back" and result.hosts["h4"].outcome == "untouched"


def test_unreachable_host_is_its_own_failure_class() -> None:
    fleet = FakeFleet(HOSTS, fail_upgrade={"h1": "unreachable"})
    _, result = run(fleet)
    assert result.failure == "unreachable" and result.status == "rolled_back"
    assert fleet.log == forward("h1")[:-1] + undo_after_upgrade("h1")


def test_failed_health_probe_rolls_back_before_enable() -> None:
    fleet = FakeFleet(HOSTS, unhealthy_versions={"2.0"})
    engine, result = run(fleet)
    assert fleet.log == forward("h1")[:-1] + undo_after_upgrade("h1")
    assert result.failure == "probe_failed" and result.status == "rolled_back"
    assert fleet.versions["h1"] == "1.0"
    # The server was never enabled while its release was unhealthy.
    kinds = [e.kind for e in engine.events]
    assert "servers_enabled" not in kinds


def test_server_not_up_after_enable_is_drained_again_then_rolled_back() -> None:
    fleet = FakeFleet(HOSTS)
    # The host dies right after it is enabled: HAProxy never reports it UP.
    fleet.hooks["restore h1"] = lambda: fleet.down_hosts.add("h1")
    fleet.hooks["rollback h1 -> 1.0"] = lambda: fleet.down_hosts.discard("h1")
    _, result = run(fleet)
    assert fleet.log == [*forward("h1"), "drain h1", "maint h1", *undo_after_upgrade("h1")]
    assert result.status == "rolled_back"


def test_soak_failure_rolls_back_after_enable() -> None:
    fleet = FakeFleet(HOSTS)
    fleet.hooks["restore h1"] = lambda: fleet.unhealthy_versions.add("2.0")
    fleet.hooks["rollback h1 -> 1.0"] = lambda: None
    _, result = run(fleet, soak=0.05)
    assert fleet.log == [*forward("h1"), "drain h1", "maint h1", *undo_after_upgrade("h1")]
    assert result.status == "rolled_back" and result.hosts["h1"].after == "1.0"


def test_drain_timeout_fails_the_batch_without_touching_the_host() -> None:
    fleet = FakeFleet(HOSTS, sticky_sessions={"h1": 3})
    _, result = run(fleet)
    assert fleet.log == ["drain h1", "restore h1"]
    assert result.failure == "drain_timeout" and result.status == "rolled_back"
    assert fleet.versions["h1"] == "1.0"


def test_force_drain_shuts_only_the_remaining_sessions() -> None:
    fleet = FakeFleet(HOSTS, sticky_sessions={"h1": 3})
    _, result = run(fleet, force_drain=True)
    assert fleet.log[:3] == ["drain h1", "shutdown sessions h1", "maint h1"]
    assert result.status == "succeeded"


def test_failed_rollback_leaves_hosts_in_maint_and_exits_3() -> None:
    fleet = FakeFleet(HOSTS, unhealthy_versions={"2.0"}, fail_rollback={"h1"})
    _, result = run(fleet)
    assert fleet.log == [*forward("h1")[:-1], "rollback h1 -> 1.0", "maint h1"]
    assert result.status == "failed" and result.exit_code == 3
    assert result.stranded == ("h1",) and result.hosts["h1"].outcome == "stranded"
    assert all(lb["h1"].admin == "MAINT" for lb in fleet.servers.values())


def test_rollback_batch_keeps_earlier_batches() -> None:
    fleet = FakeFleet(HOSTS, fail_upgrade={"h2": "failed"})
    _, result = run(fleet, batches=[1, 1, 2])
    assert fleet.versions == {"h1": "2.0", "h2": "1.0", "h3": "1.0", "h4": "1.0"}
    assert [b.outcome for b in result.batches] == ["succeeded", "rolled_back", "not_started"]


def test_rollback_all_undoes_earlier_batches_newest_first() -> None:
    fleet = FakeFleet(HOSTS, fail_upgrade={"h3": "failed"})
    _, result = run(fleet, batches=[1, 1, 2], on_failure="rollback_all")
    assert fleet.log == (forward("h1") + forward("h2") + forward("h3,h4")[:-1]
                         + undo_after_upgrade("h3,h4")
                         + ["drain h2", "maint h2"] + undo_after_upgrade("h2")
                         + ["drain h1", "maint h1"] + undo_after_upgrade("h1"))
    assert set(fleet.versions.values()) == {"1.0"} and result.status == "rolled_back"


def test_capacity_counts_servers_already_down() -> None:
    fleet = FakeFleet(HOSTS, down_hosts={"h4"})
    _, result = run(fleet, batches=[1], max_unavailable=1)
    assert fleet.log == []  # refused before any drain
    assert result.failure == "capacity" and result.batches[0].outcome == "refused"


def test_first_interrupt_finishes_the_batch_then_stops() -> None:
    fleet = FakeFleet(HOSTS)
    holder: dict[str, Engine] = {}
    fleet.hooks["upgrade h1 -> 2.0"] = lambda: holder["e"].interrupt("SIGTERM")
    _, result = run(fleet, engine_hook=lambda e: holder.__setitem__("e", e))
    assert fleet.log == forward("h1")
    assert result.status == "cancelled" and result.exit_code == 130
    assert [b.outcome for b in result.batches] == ["succeeded", "not_started", "not_started"]


def test_second_interrupt_rolls_the_batch_back_now() -> None:
    fleet = FakeFleet(HOSTS)
    holder: dict[str, Engine] = {}

    def twice() -> None:
        holder["e"].interrupt("SIGINT")
        holder["e"].interrupt("SIGINT")

    fleet.hooks["maint h1"] = twice
    engine, result = run(fleet, engine_hook=lambda e: holder.__setitem__("e", e))
    # The upgrade is cancelled before it changes anything; the batch is still rolled back.
    assert fleet.log == ["drain h1", "maint h1", "upgrade h1 -> 2.0", "rollback h1 -> 1.0",
                         "restore h1"]
    assert result.status == "cancelled" and result.exit_code == 130
    interrupts = [e for e in engine.events if isinstance(e, ev.Interrupted)]
    assert [i.count for i in interrupts] == [1, 2]


def test_balancer_error_mid_batch_undoes_the_drain() -> None:
    fleet = FakeFleet(HOSTS, balancer_fails_on="maint")
    _, result = run(fleet)
    assert fleet.log == ["drain h1", "restore h1"]
    assert result.failure == "balancer" and result.status == "rolled_back"


def test_a_raising_event_callback_does_not_strand_the_batch() -> None:
    fleet = FakeFleet(HOSTS)

    def bad(event: ev.Event) -> None:
        if isinstance(event, ev.StepStarted):
            raise RuntimeError("callback bug")

    _, result = run(fleet, sinks=(bad,))
    assert fleet.log == forward("h1")  # finished the batch, then stopped
    assert result.status == "cancelled" and "callback bug" in (result.cause or "")


def test_two_lbs_change_together() -> None:
    """Both LBs hold each batch in MAINT while its host changes, and both get it back."""
    lbs = ("unix:///a.sock", "ssh://lb2/b.sock")
    fleet = FakeFleet(HOSTS, lbs=lbs, unhealthy_versions={"2.0"})
    during: list[dict[str, str]] = []

    def record_lbs() -> None:
        during.append({lb: fleet.servers[lb]["h1"].admin for lb in lbs})

    fleet.hooks["upgrade h1 -> 2.0"] = record_lbs
    fleet.hooks["rollback h1 -> 1.0"] = record_lbs
    _, result = run(fleet)
    assert result.status == "rolled_back"
    assert during == [dict.fromkeys(lbs, "MAINT")] * 2  # on both LBs, for both host actions
    assert not fleet.violations
    for lb in fleet.servers.values():
        assert {h: s.admin for h, s in lb.items()} == dict.fromkeys(HOSTS, "READY")
