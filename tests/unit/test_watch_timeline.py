"""The watcher's capacity rule and interval logic on synthetic samples, and its sampling loop
on a fake runtime API (no sockets)."""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path

import pytest

from rollout_py.balancer import RuntimeAPI
from rollout_py.errors import BalancerError, InputError
from rollout_py.lab.watch import (
    ABSENT,
    OutInterval,
    Sample,
    ServerSample,
    Violation,
    Watcher,
    WatchSummary,
    merged_timeline,
    query,
)

SERVERS = ("app01", "app02", "app03", "app04")
READY = ServerSample("READY", "RUNNING", 1, True, 0)
DRAIN = ServerSample("DRAIN", "RUNNING", 1, False, 2)
MAINT = ServerSample("MAINT", "STOPPED", 1, False, 0)
DOWN = ServerSample("READY", "STOPPED", 1, False, 0)
WEIGHT0 = ServerSample("READY", "RUNNING", 0, False, 0)


def sample(lb: str, ts: float, **states: ServerSample) -> Sample:
    """A sample where every server is READY except those named."""
    return Sample(lb, ts, 0.001, {srv: states.get(srv, READY) for srv in SERVERS})


def error(lb: str, ts: float) -> Sample:
    return Sample(lb, ts, 0.001, {}, "BalancerError: no such file")


def build(samples: list[Sample], limit: int | None = 1, **kw: object) -> WatchSummary:
    return WatchSummary.build(samples, lbs=["lb1", "lb2"], servers=SERVERS,
                              max_unavailable=limit, **kw)  # type: ignore[arg-type]


# --- capacity rule ------------------------------------------------------------------------

def test_all_ready_no_violation() -> None:
    summary = build([sample("lb1", 1.0), sample("lb2", 1.05), sample("lb1", 1.1)])
    assert summary.violations == ()
    assert summary.max_out_of_rotation == 0 and summary.min_in_rotation == 4
    assert summary.out_intervals == {srv: [] for srv in SERVERS}
    assert summary.violation_windows() == []


def test_one_out_within_limit_two_out_is_a_violation() -> None:
    samples = [
        sample("lb1", 1.0), sample("lb2", 1.0),
        sample("lb1", 2.0, app01=DRAIN), sample("lb2", 2.0, app01=DRAIN),
        sample("lb1", 3.0, app01=DRAIN, app02=MAINT), sample("lb2", 3.0, app01=DRAIN, app02=MAINT),
        sample("lb1", 4.0, app02=MAINT), sample("lb2", 4.0, app02=MAINT),
        sample("lb1", 5.0), sample("lb2", 5.0),
    ]
    summary = build(samples)
    # lb1's sample at 4.0 meets lb2's latest (3.0), where app01 is still drained; lb2's next
    # sample (also 4.0) shows it back, so it may have been back already: not a proven breach.
    both = ("app01", "app02")
    assert summary.violations == (Violation(3.0, both, 1), Violation(3.0, both, 1))
    assert summary.max_out_of_rotation == 2 and summary.min_in_rotation == 2
    [window] = summary.violation_windows()
    assert (window.start, window.end, window.out_of_rotation, window.points) == (
        3.0, 4.0, both, 2)
    assert summary.out_of_rotation_at(4.0) == {"app02"}


def test_lbs_disagreeing_counts_the_server_out() -> None:
    # app01 is READY on lb1 but MAINT on lb2; app02 is DRAIN on lb1 only: both are out.
    summary = build([sample("lb1", 1.0, app02=DRAIN), sample("lb2", 1.1, app01=MAINT)])
    assert summary.out_of_rotation_at(1.0) == {"app02"}  # lb2 not seen yet
    assert summary.out_of_rotation_at(1.1) == {"app01", "app02"}
    assert summary.violations == (Violation(1.1, ("app01", "app02"), 1),)
    assert summary.out_intervals["app01"] == [OutInterval(1.1, 1.1, "lb1 READY/RUNNING, "
                                                                    "lb2 MAINT/STOPPED")]


def test_merged_timeline_uses_the_latest_sample_of_the_other_lb() -> None:
    # lb2 last saw app01 drained at 1.0; lb1 sees app02 out at 1.5: on the merged timeline
    # two are out until lb2's next sample (1.6) shows app01 back...
    samples = [sample("lb1", 1.0, app01=DRAIN), sample("lb2", 1.0, app01=DRAIN),
               sample("lb1", 1.2), sample("lb1", 1.5, app02=DRAIN),
               sample("lb2", 1.6, app02=DRAIN)]
    points = merged_timeline(samples, SERVERS)
    assert [(p.ts, p.lb, sorted(p.out)) for p in points] == [
        (1.0, "lb1", ["app01"]), (1.0, "lb2", ["app01"]),
        (1.2, "lb1", ["app01"]),  # still drained on lb2
        (1.5, "lb1", ["app01", "app02"]), (1.6, "lb2", ["app02"])]
    # ...but app01 may have been back on lb2 before 1.5 (lb1 shows it back at 1.2): nothing
    # proves the two were out together, so no violation.
    summary = build(samples)
    assert summary.violations == () and summary.violation_windows() == []
    assert summary.out_of_rotation_at(1.5) == {"app01", "app02"}  # the raw merged view


def test_a_violation_is_proven_by_the_other_lbs_next_sample() -> None:
    # As above, but lb2's next sample still shows app01 drained: it was out at 1.5 too.
    samples = [sample("lb1", 1.0, app01=DRAIN), sample("lb2", 1.0, app01=DRAIN),
               sample("lb1", 1.5, app01=DRAIN, app02=DRAIN),
               sample("lb2", 1.6, app01=DRAIN, app02=DRAIN), sample("lb1", 1.7),
               sample("lb2", 1.8)]
    summary = build(samples)
    assert [v.ts for v in summary.violations] == [1.5, 1.6]
    assert [(w.start, w.end) for w in summary.violation_windows()] == [(1.5, 1.7)]
    # Out on one LB, the other server out on the other, each LB's next sample agreeing.
    crossed = [sample("lb1", 1.0, app01=MAINT), sample("lb2", 1.05, app02=DRAIN),
               sample("lb1", 1.1, app01=MAINT), sample("lb2", 1.15)]
    # (at 1.1 lb2's view, 1.05, is followed by app02 back at 1.15: not proven then)
    assert [v.ts for v in build(crossed).violations] == [1.05]


def test_an_enable_then_the_next_batchs_drain_between_two_samples_is_no_violation() -> None:
    # What the engine does within a few ms: app01 back on both LBs, then app02 drained on
    # both. lb2 samples in between; lb1, 80 ms out of phase, before and after.
    samples = [sample("lb1", 1.90, app01=MAINT), sample("lb2", 1.98, app02=DRAIN),
               sample("lb1", 2.00, app02=MAINT), sample("lb2", 2.08, app02=MAINT)]
    summary = build(samples)
    assert summary.out_of_rotation_at(1.98) == {"app01", "app02"}  # lb1's view is 80 ms old
    assert summary.violations == ()


def test_other_reasons_out_of_rotation() -> None:
    summary = build([sample("lb1", 1.0, app01=DOWN, app02=WEIGHT0, app03=MAINT)], limit=3)
    assert summary.out_of_rotation_at(1.0) == {"app01", "app02", "app03"}
    assert summary.violations == ()
    assert summary.out_intervals["app02"][0].state == "READY/RUNNING weight 0"


def test_server_missing_from_an_lb_is_out() -> None:
    partial = Sample("lb2", 1.1, 0.001, {srv: READY for srv in SERVERS[1:]})
    summary = build([sample("lb1", 1.0), partial], limit=0)
    assert summary.out_of_rotation_at(1.1) == {"app01"}
    assert summary.out_intervals["app01"][0].state == "lb1 READY/RUNNING, lb2 ABSENT/-"
    assert ABSENT.in_rotation is False


def test_limit_zero_and_no_limit() -> None:
    samples = [sample("lb1", 1.0, app01=DRAIN), sample("lb1", 2.0)]
    assert len(build(samples, limit=0).violations) == 1
    no_limit = build(samples, limit=None)
    assert no_limit.violations == () and no_limit.violation_windows() == []
    assert no_limit.max_out_of_rotation == 1


def test_error_samples_count_but_keep_the_last_known_state() -> None:
    samples = [sample("lb1", 1.0, app01=DRAIN), sample("lb2", 1.0),
               error("lb1", 1.1), error("lb1", 1.2), sample("lb2", 1.25, app02=DRAIN),
               sample("lb1", 1.3, app01=DRAIN), sample("lb1", 1.4)]
    summary = build(samples, started=1.0, stopped=2.0)
    assert summary.samples == {"lb1": 5, "lb2": 2}
    assert summary.errors == {"lb1": 2, "lb2": 0}
    assert summary.rate_hz == {"lb1": pytest.approx(4 / 0.4), "lb2": pytest.approx(1 / 0.25)}
    # At 1.25 lb1's last good sample (1.0) still says app01 is drained, and its next good one
    # (1.3) too: the errors in between do not reset it.
    assert summary.out_of_rotation_at(1.25) == {"app01", "app02"}
    assert [v.ts for v in summary.violations] == [1.25, 1.3]
    assert summary.out_of_rotation_at(1.4) == {"app02"}  # app01 back


# --- intervals ----------------------------------------------------------------------------

def test_out_intervals_follow_state_changes_and_close_at_the_end() -> None:
    samples = [sample("lb1", 1.0), sample("lb1", 2.0, app01=DRAIN),
               sample("lb1", 3.0, app01=MAINT), sample("lb1", 4.0),
               sample("lb1", 5.0, app01=DRAIN)]
    summary = WatchSummary.build(samples, servers=SERVERS, max_unavailable=1, stopped=6.0)
    assert summary.out_intervals["app01"] == [
        OutInterval(2.0, 3.0, "DRAIN/RUNNING"), OutInterval(3.0, 4.0, "MAINT/STOPPED"),
        OutInterval(5.0, 6.0, "DRAIN/RUNNING")]
    assert summary.total_out_seconds("app01") == pytest.approx(3.0)
    assert summary.in_rotation_intervals("app01") == [(1.0, 2.0), (4.0, 5.0)]
    assert summary.in_rotation_intervals("app02") == [(1.0, 6.0)]
    assert summary.out_of_rotation_at(0.5) == set()  # before the first sample
    assert summary.out_of_rotation_at(3.5) == {"app01"}
    assert summary.out_of_rotation_at(4.0) == set()


def test_interval_splits_when_one_lb_changes_first() -> None:
    samples = [sample("lb1", 1.0), sample("lb2", 1.0),
               sample("lb1", 2.0, app01=DRAIN), sample("lb2", 2.1, app01=DRAIN),
               sample("lb1", 3.0), sample("lb2", 3.1)]
    summary = build(samples)
    assert summary.out_intervals["app01"] == [
        OutInterval(2.0, 2.1, "lb1 DRAIN/RUNNING, lb2 READY/RUNNING"),
        OutInterval(2.1, 3.0, "DRAIN/RUNNING"),
        OutInterval(3.0, 3.1, "lb1 READY/RUNNING, lb2 DRAIN/RUNNING")]
    assert summary.in_rotation_intervals("app01") == [(1.0, 2.0)]  # out until the end (3.1)


def test_violation_window_open_at_the_end() -> None:
    samples = [sample("lb1", 1.0, app01=DRAIN, app02=DRAIN),
               sample("lb1", 2.0, app01=DRAIN, app02=DRAIN)]
    summary = WatchSummary.build(samples, servers=SERVERS, max_unavailable=1, stopped=2.5)
    [window] = summary.violation_windows()
    assert (window.start, window.end, window.points) == (1.0, 2.5, 2)


def test_json_and_records(tmp_path: Path) -> None:
    samples = [sample("lb1", 1.0, app01=DRAIN, app02=DRAIN), error("lb2", 1.05),
               sample("lb1", 2.0)]
    summary = build(samples)
    data = json.loads(json.dumps(summary.to_json()))
    assert data["violation_count"] == 1 and data["samples"] == {"lb1": 2, "lb2": 1}
    assert data["violation_windows"][0]["out_of_rotation"] == ["app01", "app02"]
    assert data["out_seconds"]["app01"] == pytest.approx(1.0)
    path = tmp_path / "records.jsonl"
    summary.write_records(path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["lb"] for line in lines] == ["lb1", "lb2", "lb1"]
    assert lines[0]["servers"]["app01"]["admin"] == "DRAIN" and lines[1]["error"]


def test_empty_summary() -> None:
    summary = WatchSummary.build([], lbs=["lb1"], servers=SERVERS, max_unavailable=1)
    assert summary.samples == {"lb1": 0} and summary.violations == ()
    assert summary.out_of_rotation_at(1.0) == set()
    assert summary.in_rotation_intervals("app01") == []


# --- sampling on a fake runtime API -------------------------------------------------------

STATE = """1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight \
srv_port
3 app 1 app01 10.0.0.11 2 {admin} 1 1 8080
3 app 2 app02 10.0.0.12 2 0 1 1 8080

"""
STAT = """# pxname,svname,qcur,qmax,scur,status,weight,check_status
app,app01,0,0,3,UP,1,L7OK
app,app02,0,0,0,UP,1,L7OK

"""


class FakeTransport:
    def __init__(self, url: str, delay: float = 0.0) -> None:
        self.url, self.delay = url, delay
        self.admin = 0
        self.fail = False
        self.sent: list[str] = []
        self.closed = False

    def send(self, command: str) -> str:
        self.sent.append(command)
        time.sleep(self.delay)
        if self.fail:
            raise BalancerError(f"{self.url}: No such file or directory")
        return STATE.format(admin=self.admin) + STAT

    def close(self) -> None:
        self.closed = True


def test_query_sends_one_chained_command_and_parses_both_answers() -> None:
    transport = FakeTransport("fake://lb1")
    transport.admin = 8
    servers = query(RuntimeAPI(transport), "app")
    assert transport.sent == ["show servers state app;show stat app 4 -1"]
    assert servers["app01"] == ServerSample("DRAIN", "RUNNING", 1, False, 3)
    assert servers["app02"] == ServerSample("READY", "RUNNING", 1, True, 0)


def test_query_rejects_an_error_answer_and_a_bad_backend() -> None:
    class Refusing(FakeTransport):
        def send(self, command: str) -> str:
            return "Can't find backend.\n\nCan't find backend.\n\n"

    with pytest.raises(BalancerError):
        query(RuntimeAPI(Refusing("fake://")), "app")
    with pytest.raises(Exception, match="not a valid HAProxy name"):
        query(RuntimeAPI(FakeTransport("fake://")), "app;shutdown")


def test_watcher_samples_each_lb_in_its_own_thread_and_records_errors() -> None:
    fast, slow = FakeTransport("fake://lb1"), FakeTransport("fake://lb2", delay=0.12)
    watcher = Watcher([RuntimeAPI(fast), RuntimeAPI(slow)], "app", names=["lb1", "lb2"],
                      max_unavailable=0, hz=50, owns_apis=True).start()
    time.sleep(0.3)
    fast.fail = True
    time.sleep(0.1)
    fast.fail = False
    fast.admin = 1  # app01 to MAINT on lb1
    time.sleep(0.2)
    summary = watcher.stop()
    assert watcher.stop() is summary
    assert fast.closed and slow.closed
    assert summary.samples["lb1"] > 2 * summary.samples["lb2"] > 0  # the slow LB did not hold
    assert summary.errors["lb1"] > 0 and summary.errors["lb2"] == 0  # lb1 back after errors
    lb1 = [s for s in summary.records if s.lb == "lb1"]
    assert any(not s.ok for s in lb1) and lb1[-1].ok
    assert lb1[-1].servers["app01"].admin == "MAINT"
    assert all(a.ts < b.ts for a, b in itertools.pairwise(lb1))
    assert summary.violations and set(summary.violations[0].out_of_rotation) == {"app01"}
    assert summary.started <= summary.records[0].ts <= summary.records[-1].ts <= summary.stopped
    assert not [t for t in threading.enumerate() if t.name.startswith("watch-")]


def test_watcher_as_context_manager_and_input_checks() -> None:
    with Watcher([RuntimeAPI(FakeTransport("fake://lb1"))], "app", hz=20) as watcher:
        time.sleep(0.15)
    assert watcher.summary is not None and watcher.summary.lbs == ("fake://lb1",)
    assert watcher.summary.samples["fake://lb1"] >= 2
    with pytest.raises(InputError):
        Watcher([], "app")
    with pytest.raises(InputError):
        Watcher([RuntimeAPI(FakeTransport("fake://"))], "app", hz=0)
    with pytest.raises(InputError):
        Watcher([RuntimeAPI(FakeTransport("fake://"))] * 2, "app", names=["lb1", "lb1"])


class TwoServers:
    """An LB whose app01 and app02 admin states the test sets (0 READY, 1 MAINT, 8 DRAIN)."""

    def __init__(self, url: str, app01: int = 0, app02: int = 0) -> None:
        self.url, self.admin = url, {"app01": app01, "app02": app02}
        self.sent: list[float] = []

    def send(self, command: str) -> str:
        self.sent.append(time.time())
        rows = "".join(f"3 app {i} {srv} 10.0.0.1{i} 2 {self.admin[srv]} 1 1 8080\n"
                       for i, srv in enumerate(("app01", "app02"), 1))
        return STATE.split("3 app 1")[0] + rows + "\n" + STAT

    def close(self) -> None:
        pass


def wait_sampled(watcher: Watcher, n: int) -> None:
    deadline = time.monotonic() + 10
    while len({s.lb for s in watcher.samples()}) < n:
        assert time.monotonic() < deadline, "no sample"
        time.sleep(0.01)


@pytest.mark.parametrize("back_by_the_end", [True, False])
def test_each_lb_is_sampled_once_more_at_stop_so_a_stale_view_is_judged_on_it(
        back_by_the_end: bool) -> None:
    """One sample per LB (1 Hz) sees app02 drained on lb1 and app01 still out on lb2; the
    watch stops before either samples again (as when the watched run was killed). Each LB's
    closing sample, taken at stop, shows whether the other's view had moved on: both back, no
    breach (the overlap is not proven, as within any sampling period); both still out, a
    breach."""
    lb1, lb2 = TwoServers("fake://lb1", app02=8), TwoServers("fake://lb2", app01=1)
    watcher = Watcher([RuntimeAPI(lb1), RuntimeAPI(lb2)], "app", names=["lb1", "lb2"],
                      max_unavailable=1, hz=1).start()
    wait_sampled(watcher, 2)
    if back_by_the_end:
        lb1.admin["app02"] = lb2.admin["app01"] = 0
    asked = time.time()
    summary = watcher.stop()
    closing = [s for s in summary.records if s.ts >= asked]
    assert sorted(s.lb for s in closing) == ["lb1", "lb2"]
    assert summary.stopped >= max(s.ts for s in summary.records)
    if back_by_the_end:
        assert summary.violations == ()
    else:
        assert {v.out_of_rotation for v in summary.violations} == {("app01", "app02")}
