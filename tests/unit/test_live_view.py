"""The live view of deploy/resume/rollback on a terminal: the fold over events (states per host
and per LB, batch, step, probes, analysis), its table, and that output off a terminal, with
``--json`` or with ``--no-live`` is the plain lines as before."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from rollout_py import cli_output
from rollout_py import events as ev
from rollout_py import live_view as lv
from rollout_py.engine import Engine, Settings
from rollout_py.live_sink import LiveSink
from rollout_py.planner import make_plan
from rollout_py.report import console_sink, result_lines
from rollout_py.result import DeployResult
from rollout_py.saga import Sink
from rollout_py.spec import HealthSpec, HttpProbe
from rollout_py.testing import FakeFleet

LB1, LB2 = "unix:///lb1.sock", "unix:///lb2.sock"
ID = "d1"


def recorded_batch() -> list[ev.Event]:
    """A 2-batch deploy of 1.0 -> 2.0 on web1, web2 (servers s1, s2) behind two LBs, as the
    engine emits it, up to batch 1 done and batch 2 being probed after its upgrade."""
    rec = {LB1: {"s1": ["READY", 1]}, LB2: {"s1": ["READY", 3]}}
    rec2 = {LB1: {"s2": ["READY", 1]}, LB2: {"s2": ["MAINT", 1]}}
    return [
        ev.DeployStarted(deploy_id=ID, seq=1, ts=100.0, name="web", version="2.0",
                         batches=(("web1",), ("web2",)), skipped={"web3": "already at 2.0"}),
        ev.BatchStarted(deploy_id=ID, seq=2, ts=101.0, batch=1, hosts=("web1",)),
        ev.CapacityChecked(deploy_id=ID, seq=3, ts=101.0, batch=1, out_of_rotation=0, taking_out=1,
                           max_unavailable=1),
        ev.StateRecorded(deploy_id=ID, seq=4, ts=101.1, batch=1, servers=("s1",), recorded=rec),
        ev.DrainStarted(deploy_id=ID, seq=5, ts=101.2, batch=1, servers=("s1",), recorded=rec),
        ev.ServersDrained(deploy_id=ID, seq=6, ts=102.0, batch=1, servers=("s1",)),
        ev.ServersDisabled(deploy_id=ID, seq=7, ts=102.1, batch=1, servers=("s1",)),
        ev.StepStarted(deploy_id=ID, seq=8, ts=102.2, batch=1, step="upgrade", hosts=("web1",)),
        ev.StepFinished(deploy_id=ID, seq=9, ts=110.0, batch=1, step="upgrade", ok=True,
                        hosts={"web1": "ok"}, versions={"web1": "1.0"}, duration=7.8),
        ev.ProbeFailed(deploy_id=ID, seq=10, ts=110.5, batch=1, host="web1", phase="verify",
                       probe="http", detail="http: 503"),
        ev.ProbePassed(deploy_id=ID, seq=11, ts=111.0, batch=1, host="web1", phase="verify"),
        ev.ProbePassed(deploy_id=ID, seq=12, ts=111.5, batch=1, host="web1", phase="verify"),
        ev.ServersEnabled(deploy_id=ID, seq=13, ts=112.0, batch=1, servers=("s1",)),
        ev.BatchSucceeded(deploy_id=ID, seq=14, ts=112.5, batch=1, durations={"total": 11.5}),
        ev.BatchStarted(deploy_id=ID, seq=15, ts=113.0, batch=2, hosts=("web2",)),
        ev.StateRecorded(deploy_id=ID, seq=16, ts=113.1, batch=2, servers=("s2",), recorded=rec2,
                         found_out={f"{LB2} s2": "MAINT"}),
        ev.DrainStarted(deploy_id=ID, seq=17, ts=113.2, batch=2, servers=("s2",), recorded=rec2,
                        found_out={f"{LB2} s2": "MAINT"}),
    ]


def by_host(state: lv.LiveState) -> dict[str, tuple[str, ...]]:
    return {row[0]: row[1:] for row in lv.rows(state)}


def test_a_recorded_deploy_folds_into_rows_per_host_and_lb() -> None:
    events = recorded_batch()
    state = lv.fold(events[:9], consecutive=2)  # batch 1 upgraded
    assert state.lbs == (LB1, LB2)
    assert by_host(state) == {
        "web1": ("1", lv.PROBING, "MAINT", "MAINT", "", ""),
        "web2": ("2", lv.WAITING, "", "", "", ""),
        "web3": ("-", lv.SKIPPED, "", "", "", "already at 2.0"),
    }
    assert lv.header(state, now=112.2) == ("deploy d1 web -> 2.0 | batch 1/2 | step: upgrade "
                                           "ok, verify probes | elapsed 12 s | running")
    state = lv.fold(events[:12], consecutive=2)
    assert by_host(state)["web1"][1:] == (
        lv.PROBING, "MAINT", "MAINT", "verify 2/2 in a row (3 probes)", "")
    assert by_host(lv.fold(events[:10]))["web1"][4:] == ("verify 0 in a row (1 probes)",
                                                         "probe http: http: 503")
    state = lv.fold(events, consecutive=2)
    rows = by_host(state)
    assert rows["web1"][:4] == ("1", lv.DONE, "READY 1", "READY 3")  # as recorded, per LB
    assert rows["web2"][:4] == ("2", lv.DRAINING, "DRAIN", "DRAIN")
    assert rows["web2"][5] == f"out before the deploy: MAINT on {LB2}"
    assert state.servers == {"s1": "web1", "s2": "web2"}


def test_each_event_moves_the_host_through_its_states() -> None:
    state = lv.LiveState()
    seen: list[str] = []
    for e in recorded_batch()[:14]:
        state = lv.apply(state, e)
        if not seen or seen[-1] != state.hosts["web1"].state:
            seen.append(state.hosts["web1"].state)
    assert seen == [lv.WAITING, lv.DRAINING, lv.OUT, lv.UPGRADING, lv.PROBING, lv.IN_ROTATION,
                    lv.DONE]


def test_apply_leaves_the_state_it_was_given_as_it_was() -> None:
    events = recorded_batch()
    before = lv.fold(events[:6])
    rows = lv.rows(before)
    after = lv.apply(before, events[6])
    assert lv.rows(before) == rows and lv.rows(after) != rows


def test_a_failed_batch_and_its_rollback() -> None:
    events = [
        *recorded_batch()[:9],
        ev.ProbeFailed(deploy_id=ID, seq=10, ts=120.0, batch=1, host="web1", phase="verify",
                       probe="http", detail="http: 500"),
        ev.BatchFailed(deploy_id=ID, seq=11, ts=121.0, batch=1, failure="probe_failed",
                       cause="verify probe failed on web1", hosts=("web1",)),
        ev.RollbackStarted(deploy_id=ID, seq=12, ts=121.1, batch=1, hosts=("web1",), cause="x"),
        ev.StepStarted(deploy_id=ID, seq=13, ts=121.2, batch=1, step="rollback", hosts=("web1",)),
    ]
    state = lv.fold(events)
    assert by_host(state)["web1"][1] == lv.ROLLING_BACK
    assert state.step == "rollback"
    state = lv.apply(state, ev.RollbackFinished(deploy_id=ID, seq=14, ts=125.0, batch=1, ok=True,
                                                stranded=()))
    assert by_host(state)["web1"][1:4] == (lv.ROLLED_BACK, "READY 1", "READY 3")
    assert by_host(state)["web2"][1] == lv.WAITING  # never touched
    state = lv.apply(state, ev.DeployFinished(deploy_id=ID, seq=15, ts=126.0, status="rolled_back",
                                              exit_code=1, cause="x", stranded=()))
    assert lv.header(state, now=999.0).endswith("elapsed 26 s | rolled_back")


@pytest.mark.parametrize(("stranded", "after"), [
    ((), (lv.ROLLED_BACK, "READY 1", "READY 3")),
    (("s1",), (lv.STRANDED, "MAINT", "MAINT")),
])
def test_the_rollback_of_a_batch_back_in_rotation_takes_it_out_first(
        stranded: tuple[str, ...], after: tuple[str, ...]) -> None:
    """Batch 1 was enabled (a canary judged in rotation): its rollback drains it first
    (rollout_py.undo), so its cells say DRAIN from RollbackStarted on; a host the rollback
    strands is left in MAINT."""
    events = [*recorded_batch()[:14],
              ev.RollbackStarted(deploy_id=ID, seq=15, ts=130.0, batch=1, hosts=("web1",),
                                 cause="analysis failed")]
    state = lv.fold(events)
    assert by_host(state)["web1"][1:4] == (lv.ROLLING_BACK, "DRAIN", "DRAIN")
    state = lv.apply(state, ev.RollbackFinished(deploy_id=ID, seq=16, ts=135.0, batch=1,
                                                ok=not stranded, stranded=stranded))
    assert by_host(state)["web1"][1:4] == after


def test_analysis_windows_and_weights_show() -> None:
    events = [
        *recorded_batch()[:14],
        ev.WeightsSet(deploy_id=ID, seq=20, ts=130.0, step=2, share=0.25, achieved={LB1: 0.25},
                      weights={LB1: {"s1": 1, "s2": 3}}),
        ev.AnalysisWindow(deploy_id=ID, seq=21, ts=131.0, batch=1, step=3, purpose="canary",
                          window=2, canary=("s1",), baseline=("s2",), verdict="pass",
                          reason="", gates=(), groups={}, deltas={}, raw={}),
    ]
    state = lv.fold(events)
    assert by_host(state)["web1"][2] == "READY 1"
    assert "analysis: step 3 (canary) window 2: PASS" in lv.header(state, now=132.0)
    assert state.step == "step 2: traffic 25%"


def test_render_draws_the_table() -> None:
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(lv.render(lv.fold(recorded_batch()), now=120.0))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "deploy d1 web -> 2.0 | batch 2/2" in text
    assert re.search(r"web1\s*│\s*1\s*│\s*done\s*│\s*READY 1\s*│\s*READY 3", text), text
    assert re.search(r"web2\s*│\s*2\s*│\s*draining\s*│\s*DRAIN", text), text


# ---- a real engine run (FakeFleet) through the sinks -------------------------------------

HOSTS = ["h1", "h2"]


def deploy(fleet: FakeFleet, sinks: Sequence[Sink]) -> DeployResult:
    plan = make_plan(
        name="t", version="2.0", fleet=HOSTS, targets=HOSTS, servers={h: h for h in HOSTS},
        batches=[1], max_unavailable=None, current_versions={}, force=False, backend="app",
        sockets=list(fleet.lbs), on_failure="rollback_batch", playbook="p.yml",
        rollback_playbook=None, drain_timeout=0.05, pause_between_batches=0)
    health = HealthSpec(deadline=0.05, interval=0.005, consecutive=1,
                        probes=[HttpProbe(http="http://x")])
    return Engine(plan, executor=fleet.executor(), balancer=fleet.balancer(),
                  prober=fleet.prober(), checks=fleet.checks,
                  settings=Settings(health=health, drain_timeout=0.05, up_timeout=0.05,
                                    poll=0.005, known_versions=dict.fromkeys(HOSTS, "1.0")),
                  sinks=sinks).run()


def test_the_fold_over_a_real_deploy_ends_with_every_host_done() -> None:
    seen: list[ev.Event] = []
    result = deploy(FakeFleet(HOSTS, lbs=(LB1, LB2)), [seen.append])
    assert result.status == "succeeded"
    state = lv.fold(seen, consecutive=1)
    assert {h: r[1:4] for h, r in by_host(state).items()} == {
        h: (lv.DONE, "READY 1", "READY 1") for h in HOSTS}
    assert state.status == "succeeded" and state.batch == 2


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


# What differs from run to run: stamps, deploy ids, durations
_STAMP = re.compile(r"^ *\d+\.\d+s  |\d{8}T\d{6}Z-[0-9a-f]+|\d+\.\d s", re.M)


def _plain(fleet: FakeFleet) -> str:
    """What the console printed before the live view: console_sink lines, the result."""
    out = io.StringIO()
    result = deploy(fleet, [console_sink(out)])
    return _STAMP.sub("", out.getvalue() + "\n".join(result_lines(result, {})) + "\n")


def _run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
         tmp_path: Path, *, live: bool, tty: bool, as_json: bool = False) -> str:
    if tty:
        monkeypatch.setattr("sys.stdout", _Tty())
    fleet = FakeFleet(HOSTS, lbs=(LB1, LB2))
    token = cli_output._LIVE.set((live, None))
    try:
        rc = cli_output.run_with_outputs(lambda sinks: deploy(fleet, sinks), as_json=as_json,
                                         log_file=None, metrics_file=None, verbose=0,
                                         state_root=tmp_path)
    finally:
        cli_output._LIVE.reset(token)
    assert rc == 0
    import sys

    return sys.stdout.getvalue() if isinstance(sys.stdout, _Tty) else capsys.readouterr().out


def test_off_a_terminal_the_output_is_the_plain_lines(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    out = _run(capsys, monkeypatch, tmp_path, live=True, tty=False)
    assert _STAMP.sub("", out) == _plain(FakeFleet(HOSTS, lbs=(LB1, LB2)))
    assert "│" not in out


def test_no_live_on_a_terminal_is_the_plain_lines(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    out = _run(capsys, monkeypatch, tmp_path, live=False, tty=True)
    assert _STAMP.sub("", out) == _plain(FakeFleet(HOSTS, lbs=(LB1, LB2)))


def test_json_on_a_terminal_is_json_lines(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    import json

    out = _run(capsys, monkeypatch, tmp_path, live=True, tty=True, as_json=True)
    parsed: list[dict[str, Any]] = [json.loads(line) for line in out.splitlines()]
    assert parsed[0]["event"] == "deploy_started" and "result" in parsed[-1]


def test_on_a_terminal_the_lines_go_above_the_live_table(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    out = _run(capsys, monkeypatch, tmp_path, live=True, tty=True)
    text = _STAMP.sub("", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out))
    for line in _plain(FakeFleet(HOSTS, lbs=(LB1, LB2))).splitlines():
        assert line in text  # nothing people saw before is lost
    assert re.search(r"h2\s*│\s*2\s*│\s*done\s*│\s*READY 1\s*│\s*READY 1", text), text
    assert text.rstrip().splitlines()[-1].startswith("  upgraded:")  # the result, below


def test_the_live_sink_prints_lines_with_the_console_stamps() -> None:
    console = Console(file=_Tty(), width=200, force_terminal=True, color_system=None)
    sink = LiveSink(console, consecutive=2)
    for e in recorded_batch()[:3]:
        sink(e)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert re.search(r"^ +0\.0s  \[batch 1\] web1$", text, re.M), text
    assert sink.state.batch == 1


def test_deploy_resume_and_rollback_take_no_live() -> None:
    from rollout_py.cli import cli

    for command in ("deploy", "resume", "rollback"):
        assert "--no-live" in CliRunner().invoke(cli, [command, "--help"]).output


def test_a_resume_starts_from_the_journal_of_the_deploy(tmp_path: Path) -> None:
    import json

    journal = tmp_path / "deploys" / ID / "journal.jsonl"
    journal.parent.mkdir(parents=True)
    earlier = [*recorded_batch()[:14],
               ev.DeployFinished(deploy_id=ID, seq=15, ts=114.0, status="stopped",
                                 exit_code=5, cause="stopped", stranded=(), resumable=True)]
    resumed = ev.DeployResumed(deploy_id=ID, seq=16, ts=200.0, batch=2, action="continue",
                               detail="")
    journal.write_text("".join(json.dumps(e.to_json()) + "\n" for e in [*earlier, resumed]))
    console = Console(file=_Tty(), width=200, force_terminal=True, color_system=None)
    sink = LiveSink(console, state_root=tmp_path)
    sink(resumed)
    assert by_host(sink.state)["web1"][1] == lv.DONE
    assert by_host(sink.state)["web2"][1] == lv.WAITING
    assert sink.state.status == "running" and sink.state.step == "resumed: continue"
    assert lv.header(sink.state, now=210.0).startswith("deploy d1 web -> 2.0 | batch 2/2 |")


def test_a_fleet_taller_than_the_terminal_shows_its_busy_hosts_first() -> None:
    names = [f"web{i}" for i in range(1, 11)]
    state = lv.fold([
        ev.DeployStarted(deploy_id=ID, seq=1, ts=1.0, name="web", version="2.0",
                         batches=tuple((n,) for n in names), skipped={}),
        ev.BatchStarted(deploy_id=ID, seq=2, ts=2.0, batch=7, hosts=("web7",)),
        ev.StepStarted(deploy_id=ID, seq=3, ts=3.0, batch=7, step="upgrade", hosts=("web7",)),
    ])
    drawn, hidden = lv.shown(state, max_rows=3)
    assert [r[0] for r in drawn] == ["web1", "web2", "web7"]
    assert hidden == "not shown: 7 waiting"
    assert lv.shown(state)[1] == "" and len(lv.shown(state)[0]) == 10
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(lv.render(state, now=5.0, max_rows=3))
    assert "not shown: 7 waiting" in console.file.getvalue()  # type: ignore[attr-defined]
