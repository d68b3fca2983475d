"""Per-host time out of rotation from synthetic journals and job events: the segments with and
without ansible-runner's artifacts, a staged deploy, a rolled-back batch, a journal cut
mid-batch, the summary and its table. Times are binary fractions so every sum is exact."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from rollout_py import events as ev
from rollout_py.state import Journal, StateDir
from rollout_py.timeline import (
    HostTimeline,
    host_timelines,
    record_timelines,
    render_table,
    summarize,
)
from rollout_py.timeline_runs import load_runs

T0 = 1_780_000_000.0  # every time below is T0 + seconds
E = TypeVar("E", bound=ev.Event)
_seq = itertools.count(1)


def at(cls: type[E], t: float, **kw: Any) -> E:
    return cls(deploy_id="d1", seq=next(_seq), ts=T0 + t, **kw)


def iso(t: float) -> str:
    return datetime.fromtimestamp(T0 + t, UTC).isoformat()


def job(counter: int, event: str, t: float, **data: Any) -> dict[str, Any]:
    return {"counter": counter, "event": event, "created": iso(t), "event_data": data}


def result(counter: int, host: str, task: str, uuid: str, start: float, end: float,
           action: str = "ansible.builtin.file") -> dict[str, Any]:
    """A runner_on_ok whose ``created`` comes a little after its ``end``, as in real runs."""
    return job(counter, "runner_on_ok", end + 0.125, host=host, task=task, task_uuid=uuid,
               start=iso(start), end=iso(end), duration=end - start, task_action=action)


def upgrade_run(o: float = 0.0) -> list[dict[str, Any]]:
    """Batch 1's run: four tasks on a and b; b is slower (``o``: seconds later)."""
    return [
        job(1, "playbook_on_start", 4.0 + o),
        # runs on the controller: the connection is paid by the next task
        job(2, "playbook_on_task_start", 4.5 + o, task="Validate", task_uuid="t0"),
        result(3, "a", "Validate", "t0", 4.5 + o, 4.625 + o, "ansible.builtin.assert"),
        result(4, "b", "Validate", "t0", 4.5 + o, 4.625 + o, "ansible.builtin.assert"),
        job(5, "playbook_on_task_start", 4.75 + o, task="Check", task_uuid="t1"),
        result(6, "a", "Check", "t1", 4.75 + o, 5.25 + o),
        result(7, "b", "Check", "t1", 4.75 + o, 5.5 + o),
        job(8, "playbook_on_task_start", 5.5 + o, task="Unpack", task_uuid="t2"),
        result(9, "a", "Unpack", "t2", 5.5 + o, 6.5 + o),
        result(10, "b", "Unpack", "t2", 5.5 + o, 7.0 + o),
        job(11, "playbook_on_task_start", 7.0 + o, task="Restart", task_uuid="t3"),
        result(12, "a", "Restart", "t3", 7.0 + o, 7.5 + o),
        result(13, "b", "Restart", "t3", 7.0 + o, 8.0 + o),
        job(14, "playbook_on_stats", 8.25 + o),
    ]


def batch_start(hosts: tuple[str, ...] = ("a", "b"), o: float = 0.0) -> list[ev.Event]:
    """A deploy of one batch up to its upgrade step's start (drain 1.0 -> 3.0, MAINT 3.5)."""
    servers = hosts
    return [
        at(ev.DeployStarted, 0.0 + o, name="web", version="2.0", batches=(hosts,), skipped={}),
        at(ev.BatchStarted, 0.5 + o, batch=1, hosts=hosts),
        at(ev.StateRecorded, 0.75 + o, batch=1, servers=servers, recorded={}),
        at(ev.DrainStarted, 1.0 + o, batch=1, servers=servers),
        at(ev.ServersDrained, 3.0 + o, batch=1, servers=servers),
        at(ev.ServersDisabled, 3.5 + o, batch=1, servers=servers),
        at(ev.StepStarted, 3.5 + o, batch=1, step="upgrade", hosts=hosts),
    ]


def upgraded(ok: bool = True, o: float = 0.0) -> ev.StepFinished:
    return at(ev.StepFinished, 8.5 + o, batch=1, step="upgrade", ok=ok,
              hosts={"a": "ok", "b": "ok"}, versions={}, duration=5.0)


def good_batch(o: float = 0.0) -> list[ev.Event]:
    return [
        *batch_start(o=o),
        upgraded(o=o),
        at(ev.ProbeFailed, 8.75 + o, batch=1, host="a", phase="verify", probe="http", detail="503"),
        at(ev.ProbePassed, 9.0 + o, batch=1, host="a", phase="verify"),
        at(ev.ProbePassed, 9.5 + o, batch=1, host="b", phase="verify"),
        at(ev.ServersEnabled, 10.5 + o, batch=1, servers=("a", "b")),
        at(ev.BatchSucceeded, 10.5 + o, batch=1, durations={}),
        at(ev.DeployFinished, 11.0 + o, status="succeeded", exit_code=0, cause=None, stranded=()),
    ]


def write_run(runs: Path, name: str, jobs: list[dict[str, Any]], ident: str = "id-1") -> None:
    folder = runs / name / "artifacts" / ident / "job_events"
    folder.mkdir(parents=True)
    for n, data in enumerate(jobs, 1):
        (folder / f"{data['counter']}-uuid{n}.json").write_text(json.dumps(data))


def by_host(timelines: list[HostTimeline]) -> dict[str, HostTimeline]:
    return {t.host: t for t in timelines}


def test_segments_from_the_journal_and_the_job_events(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_run(runs, "001-preflight-ssh", [job(1, "playbook_on_start", 0.25)])
    write_run(runs, "002-batch1-upgrade", upgrade_run())
    (runs / "002-batch1-upgrade" / "artifacts" / "id-1" / "job_events" / "99-torn.json"
     ).write_text("{")  # unreadable: skipped
    loaded = load_runs(runs)
    assert list(loaded) == [1] and len(loaded[1][0]) == 14

    got = by_host(host_timelines(good_batch(), loaded))
    assert got["a"].outcome == got["b"].outcome == "ok"
    assert got["a"].segments == {
        "drain": 2.0, "disable": 0.5, "ansible_start": 1.0, "connect": 0.75, "tasks": 2.25,
        "ansible_end": 1.0, "probes": 0.5, "enable": 1.5, "total": 9.5}
    assert got["a"].tasks == {"Unpack": 1.25, "Restart": 1.0}
    assert got["b"].segments == {
        "drain": 2.0, "disable": 0.5, "ansible_start": 1.0, "connect": 1.0, "tasks": 2.5,
        "ansible_end": 0.5, "probes": 1.0, "enable": 1.0, "total": 9.5}
    assert got["b"].tasks == {"Unpack": 1.5, "Restart": 1.0}
    # The segments are contiguous: DrainStarted (1.0) -> ServersEnabled (10.5).
    for t in got.values():
        assert sum(v for k, v in t.segments.items() if k != "total") == t.segments["total"]


def test_summary_and_its_table(tmp_path: Path) -> None:
    timelines = host_timelines(good_batch(), {1: [upgrade_run()]})
    summary = summarize(timelines)
    stats = {s.segment: s for s in summary.segments}
    assert (stats["connect"].mean, stats["connect"].max) == (0.875, 1.0)
    assert stats["drain"].share == 4.0 / 19.0
    assert stats["total"].share == 1.0
    assert [(t.task, t.mean, t.max) for t in summary.tasks] == [
        ("Unpack", 1.375, 1.5), ("Restart", 1.0, 1.0)]
    assert summary.flagged == {}
    assert render_table(summary, tasks=1) == "\n".join([
        "segment              mean      max   share",
        "drain                2.00     2.00     21%",
        "disable              0.50     0.50      5%",
        "ansible_start        1.00     1.00     11%",
        "connect              0.88     1.00      9%",
        "tasks                2.38     2.50     25%",
        "  Unpack             1.38     1.50     14%",
        "ansible_end          0.75     1.00      8%",
        "probes               0.75     1.00      8%",
        "enable               1.25     1.50     13%",
        "total                9.50     9.50    100%",
    ])
    assert render_table(summarize([])).endswith("(no batch went out of rotation)")


def test_without_artifacts_the_ansible_part_is_one_upgrade_segment() -> None:
    got = by_host(host_timelines(good_batch()))
    assert got["a"].segments == {"drain": 2.0, "disable": 0.5, "upgrade": 5.0, "probes": 0.5,
                                 "enable": 1.5, "total": 9.5}
    assert got["b"].segments["upgrade"] == 5.0 and got["b"].tasks == {}
    # a host the run never reached (no result of its own) collapses the same way
    run = [j for j in upgrade_run() if j["event_data"].get("host") != "b"]
    assert by_host(host_timelines(good_batch(), {1: [run]}))["b"].segments["upgrade"] == 5.0


def test_a_staged_deploy_does_not_count_the_stage(tmp_path: Path) -> None:
    stage = [
        at(ev.StepStarted, -20.0, batch=0, step="stage", hosts=("a", "b")),
        at(ev.StepFinished, -12.0, batch=0, step="stage", ok=True, hosts={"a": "ok", "b": "ok"},
           versions={}, duration=8.0),
    ]
    journal = good_batch()
    journal[1:1] = stage  # after DeployStarted, before the first batch
    runs = tmp_path / "runs"
    write_run(runs, "002-stage", [job(1, "playbook_on_start", -19.5),
                                  job(2, "playbook_on_task_start", -19.0, task="Unpack",
                                      task_uuid="s1"),
                                  result(3, "a", "Unpack", "s1", -19.0, -13.0)])
    write_run(runs, "003-batch1-upgrade", upgrade_run())
    staged = host_timelines(journal, load_runs(runs))
    assert staged == host_timelines(good_batch(), {1: [upgrade_run()]})
    assert by_host(staged)["a"].segments["total"] == 9.5
    assert by_host(host_timelines(journal))["a"].segments["upgrade"] == 5.0


def test_a_batch_run_again_after_a_resume_has_a_timeline_per_attempt() -> None:
    """Killed during the upgrade, resumed, the batch drained and run again 100 s later: the
    first attempt lasts until the rerun starts, each attempt with its own run."""
    killed = [*batch_start(), at(ev.Interrupted, 6.0, signal="SIGKILL", count=1, action="x"),
              at(ev.DeployResumed, 50.0, batch=1, action="continue", detail="")]
    again = [e for e in good_batch(o=100.0) if not isinstance(e, ev.DeployStarted)]
    got = host_timelines([*killed, *again], {1: [upgrade_run()[:7], upgrade_run(o=100.0)]})
    first, rerun = got[:2], got[2:]
    assert [(t.host, t.attempt, t.outcome) for t in got] == [
        ("a", 1, "incomplete"), ("b", 1, "incomplete"), ("a", 2, "ok"), ("b", 2, "ok")]
    # until StateRecorded (100.75), the last event before the rerun's DrainStarted (101.0)
    assert first[0].segments == {"drain": 2.0, "disable": 0.5, "ansible_start": 1.0,
                                 "connect": 0.75, "tasks": 0.0, "ansible_end": 95.5,
                                 "total": 99.75}
    assert [t.segments for t in rerun] == [
        t.segments for t in host_timelines(good_batch(), {1: [upgrade_run()]})]
    assert summarize(got).flagged == {"batch 1 a": "incomplete", "batch 1 b": "incomplete"}


def test_a_rolled_back_batch_is_flagged_with_what_happened() -> None:
    journal = [
        *batch_start(),
        upgraded(),
        at(ev.ProbePassed, 9.0, batch=1, host="a", phase="verify"),
        at(ev.ProbeFailed, 9.5, batch=1, host="b", phase="verify", probe="http", detail="503"),
        at(ev.BatchFailed, 9.75, batch=1, failure="probe_failed", cause="verify failed on b",
           hosts=("b",)),
        at(ev.RollbackStarted, 9.75, batch=1, hosts=("a", "b"), cause="verify failed on b"),
        at(ev.StepStarted, 10.0, batch=1, step="rollback", hosts=("a", "b")),
        at(ev.StepFinished, 12.0, batch=1, step="rollback", ok=True,
           hosts={"a": "ok", "b": "ok"}, versions={}, duration=2.0),
        at(ev.ProbePassed, 13.0, batch=1, host="a", phase="rollback"),  # not a verify probe
        at(ev.RollbackFinished, 14.0, batch=1, ok=True, stranded=()),
        at(ev.DeployFinished, 14.5, status="rolled_back", exit_code=1, cause="x", stranded=()),
    ]
    got = by_host(host_timelines(journal, {1: [upgrade_run()]}))
    assert got["a"].outcome == got["b"].outcome == "rolled_back"
    assert got["a"].segments == {
        "drain": 2.0, "disable": 0.5, "ansible_start": 1.0, "connect": 0.75, "tasks": 2.25,
        "ansible_end": 1.0, "probes": 1.25, "rollback": 4.25, "total": 13.0}
    assert got["b"].segments["probes"] == 1.25 and got["b"].segments["total"] == 13.0
    summary = summarize(list(got.values()))
    assert summary.flagged == {"batch 1 a": "rolled_back", "batch 1 b": "rolled_back"}
    assert render_table(summary).splitlines()[-1] == (
        "not back in rotation normally: batch 1 a (rolled_back), batch 1 b (rolled_back)")


def test_a_batch_undone_by_a_resume_after_the_controller_died() -> None:
    """No BatchFailed: the controller died in the upgrade; `rollout resume` undid the batch."""
    journal = [
        *batch_start(),
        at(ev.DeployResumed, 40.0, batch=1, action="undo", detail="controller died"),
        at(ev.RollbackStarted, 40.5, batch=1, hosts=("a", "b"), cause="resume"),
        at(ev.RollbackFinished, 44.5, batch=1, ok=True, stranded=()),
        at(ev.DeployFinished, 45.0, status="rolled_back", exit_code=1, cause="x", stranded=()),
    ]
    assert [t.segments for t in host_timelines(journal)] == [
        {"drain": 2.0, "disable": 0.5, "upgrade": 37.0, "rollback": 4.0, "total": 43.5}] * 2


def test_a_rollback_after_the_enable_counts_only_the_time_out_again() -> None:
    journal = [
        *good_batch()[:-2],  # enabled at 10.5, then the soak fails
        at(ev.ProbeFailed, 12.0, batch=1, host="a", phase="soak", probe="http", detail="503"),
        at(ev.BatchFailed, 12.5, batch=1, failure="probe_failed", cause="soak", hosts=("a",)),
        at(ev.RollbackStarted, 12.5, batch=1, hosts=("a", "b"), cause="soak"),
        at(ev.RollbackFinished, 16.5, batch=1, ok=True, stranded=()),
    ]
    got = by_host(host_timelines(journal))
    assert got["a"].segments == {"drain": 2.0, "disable": 0.5, "upgrade": 5.0, "probes": 0.5,
                                 "enable": 1.5, "rollback": 4.0, "total": 13.5}


@pytest.mark.parametrize("with_run", [False, True])
def test_a_journal_cut_mid_batch_counts_up_to_its_last_event(with_run: bool) -> None:
    """The controller was killed during the upgrade: its journal ends with a signal."""
    journal = [*batch_start(), at(ev.Interrupted, 6.0, signal="SIGTERM", count=1, action="x")]
    run = upgrade_run()[:6] if with_run else []  # two tasks done on a, a local one on b
    got = by_host(host_timelines(journal, {1: [run]}))
    assert got["a"].outcome == got["b"].outcome == "incomplete"
    if with_run:
        assert got["a"].segments == {"drain": 2.0, "disable": 0.5, "ansible_start": 1.0,
                                     "connect": 0.75, "tasks": 0.0, "ansible_end": 0.75,
                                     "total": 5.0}
        # b had only a controller-side result: its connect ends there, for want of better
        assert got["b"].segments == {"drain": 2.0, "disable": 0.5, "ansible_start": 1.0,
                                     "connect": 0.125, "tasks": 0.0, "ansible_end": 1.375,
                                     "total": 5.0}
    else:
        for host in "ab":
            assert got[host].segments == {"drain": 2.0, "disable": 0.5, "upgrade": 2.5,
                                          "total": 5.0}
    # cut during the drain: the drain so far
    cut = at(ev.Interrupted, 2.5, signal="SIGINT", count=1, action="x")
    draining = host_timelines([*batch_start()[:4], cut])
    assert [t.segments for t in draining] == [{"drain": 1.5, "total": 1.5}] * 2


def test_a_record_with_a_torn_journal(tmp_path: Path) -> None:
    state = StateDir(tmp_path / ".rollout")
    record = state.create("d1", meta={}, spec={}, plan={})
    journal = Journal(record.journal)
    for e in good_batch()[:-3]:  # killed after the probes, before the enable
        journal(e)
    journal.close()
    with record.journal.open("a") as fh:
        fh.write('{"event": "servers_enab')  # torn mid-write
    write_run(record.runs, "002-batch1-upgrade", upgrade_run())
    got = by_host(record_timelines(state.get()))
    assert got["a"].outcome == "incomplete"
    # probes passed on both hosts at 9.5: it was enabling when the journal ends
    assert got["a"].segments["probes"] == 0.5 and got["a"].segments["enable"] == 0.5
    assert got["b"].segments["total"] == 8.5
