"""The watch on blue/green pools, from synthetic samples: each LB's route changes, the LBs'
disagreement on the live backend with its bounds, capacity per backend where it is live, the
JSON and text output; the pools query and the Watcher on a fake runtime API."""

from __future__ import annotations

import json
import time

import pytest

from rollout_py.balancer import RuntimeAPI
from rollout_py.errors import BalancerError
from rollout_py.lab.watch import (
    Disagreement,
    RouteChange,
    Sample,
    ServerSample,
    Violation,
    Watcher,
    WatchSummary,
    query_pools,
    summary_lines,
)

BLUE, GREEN = ("app_blue/app01", "app_blue/app02"), ("app_green/app03", "app_green/app04")
SERVERS = BLUE + GREEN
READY = ServerSample("READY", "RUNNING", 1, True, 0)
DRAIN = ServerSample("DRAIN", "RUNNING", 1, False, 0)
RTT = 0.002


def sample(lb: str, ts: float, live: str = "app_blue", **out: ServerSample) -> Sample:
    """Every server READY except those named (``app03=DRAIN`` names app_green/app03)."""
    states = {srv: out.get(srv.split("/")[1], READY) for srv in SERVERS}
    preview = "app_green" if live == "app_blue" else "app_blue"
    return Sample(lb, ts, RTT, states, maps={"live": live, "preview": preview})


def build(samples: list[Sample], limit: int | None = 0, **kw: float) -> WatchSummary:
    return WatchSummary.build(samples, backend="app_blue,app_green", lbs=["lb1", "lb2"],
                              servers=SERVERS, max_unavailable=limit,
                              backends=["app_blue", "app_green"], live_key="live", **kw)


def switch(lb1_at: float, lb2_at: float, end: float = 4.0, step: float = 0.1) -> list[Sample]:
    """Both LBs sampled every ``step`` from 1.0 (lb2 0.05 later); each switches live to green
    from its first sample at or after its time."""
    samples = []
    ts = 1.0
    while ts < end:
        samples.append(sample("lb1", ts, "app_green" if ts >= lb1_at else "app_blue"))
        t2 = ts + 0.05
        samples.append(sample("lb2", t2, "app_green" if t2 >= lb2_at else "app_blue"))
        ts = round(ts + step, 6)
    return samples


def test_a_windows_routes_are_named_by_lb_whichever_lb_was_sampled_first() -> None:
    samples = []
    for i in range(30):  # lb2 sampled first, 0.05 s before lb1; lb2 switches at 2.0, lb1 2.5
        ts = round(1.0 + i * 0.1, 6)
        samples.append(sample("lb2", ts, "app_green" if ts >= 2.0 else "app_blue"))
        samples.append(sample("lb1", ts + 0.05, "app_green" if ts + 0.05 >= 2.5 else "app_blue"))
    [window] = build(samples).disagreements
    assert window.routes == ("lb1 app_blue", "lb2 app_green")


def test_route_changes_per_lb_and_the_disagreement_window_with_its_bounds() -> None:
    summary = build(switch(lb1_at=2.0, lb2_at=2.5))
    assert summary.route_changes["lb1"] == [
        RouteChange("lb1", "live", "app_blue", "app_green", 1.9, 2.0),
        RouteChange("lb1", "preview", "app_green", "app_blue", 1.9, 2.0)]
    [live2] = [c for c in summary.route_changes["lb2"] if c.key == "live"]
    assert (live2.before, live2.after, live2.last_before, live2.at) == pytest.approx(
        ("app_blue", "app_green", 2.45, 2.55))
    [window] = summary.disagreements
    assert (window.start, window.end) == pytest.approx((2.0, 2.55))
    assert window.seconds == pytest.approx(0.55)
    # lb1 changed after its sample at 1.9, lb2 after 2.45: the truth lies between the bounds,
    # each within one sampling period (plus a round trip) of what was seen.
    assert window.max_seconds == pytest.approx(2.55 + RTT / 2 - (1.9 - RTT / 2))
    assert window.min_seconds == pytest.approx(2.45 - RTT / 2 - (2.0 + RTT / 2))
    assert window.min_seconds <= window.seconds <= window.max_seconds
    assert window.max_seconds - window.min_seconds <= 2 * (0.1 + RTT) + 1e-9
    assert window.routes == ("lb1 app_green", "lb2 app_blue") and not window.open
    assert summary.disagreement_seconds() == pytest.approx(
        (window.seconds, window.min_seconds, window.max_seconds))
    assert summary.live_at("lb1", 2.2) == "app_green" and summary.live_at("lb2", 2.2) == "app_blue"


def test_switching_together_leaves_a_window_of_one_sample_offset_and_open_at_the_end() -> None:
    # lb2 is sampled 0.05 s after lb1: the watch sees lb1 switched and lb2 not yet, for that
    # long; the lower bound says they may have switched at once.
    together = build(switch(lb1_at=2.0, lb2_at=2.0))
    [window] = together.disagreements
    assert (window.start, window.end) == pytest.approx((2.0, 2.05))
    assert window.min_seconds == 0.0 and window.max_seconds == pytest.approx(0.15 + RTT)
    assert len(together.route_changes["lb1"]) == len(together.route_changes["lb2"]) == 2

    stuck = build(switch(lb1_at=2.0, lb2_at=99.0), stopped=4.5)
    [window] = stuck.disagreements
    assert window.open and window.end == 4.5 and window.start == pytest.approx(2.0)
    assert stuck.route_changes["lb2"] == []


def test_error_samples_keep_the_last_known_route() -> None:
    samples = [sample("lb1", 1.0), sample("lb2", 1.05),
               Sample("lb2", 1.15, RTT, {}, "BalancerError: gone"),
               sample("lb1", 1.2, "app_green"), sample("lb2", 1.35, "app_green")]
    summary = build(samples)
    [window] = summary.disagreements
    assert (window.start, window.end) == (1.2, 1.35)
    # lb2's last good sample before its change is 1.05: the error at 1.15 proves nothing.
    [live2] = [c for c in summary.route_changes["lb2"] if c.key == "live"]
    assert live2.last_before == 1.05
    # lb2 was last seen on blue at 1.05, before lb1 was seen on green: they may have switched
    # at once; lb1 was last seen on blue at 1.0.
    assert window.min_seconds == 0.0
    assert window.max_seconds == pytest.approx(1.35 + RTT / 2 - (1.0 - RTT / 2))


def test_capacity_counts_only_where_a_backend_is_live() -> None:
    samples = [
        # green is idle: both its servers out is fine, even with limit 0
        sample("lb1", 1.0, app03=DRAIN, app04=DRAIN), sample("lb2", 1.0, app03=DRAIN,
                                                             app04=DRAIN),
        sample("lb1", 2.0), sample("lb2", 2.0),
        # lb1 live on green, lb2 still blue: app03 out on lb2 only does not count (green is
        # not live there) ...
        sample("lb1", 3.0, "app_green"), sample("lb2", 3.0, app03=DRAIN),
        # ... app03 out on lb1, where green is live, does
        sample("lb1", 4.0, "app_green", app03=DRAIN), sample("lb2", 4.0),
        # both on green: blue idle, app01 out anywhere is fine
        sample("lb1", 5.0, "app_green", app01=DRAIN), sample("lb2", 5.0, "app_green"),
    ]
    summary = build(samples, stopped=6.0)
    # At lb1's 4.0; at lb2's 4.0 lb1's view (4.0) is followed by its 5.0 with app03 back: it
    # may have been back already, so only lb1's own moment is a proven breach.
    assert summary.violations == (Violation(4.0, ("app_green/app03",), 0),)
    [window] = summary.violation_windows()
    assert (window.start, window.end, window.out_of_rotation) == (
        4.0, 4.0, ("app_green/app03",))
    blue, green = summary.capacity["app_blue"], summary.capacity["app_green"]
    assert (blue.servers, blue.max_out_while_live, blue.violations) == (2, 0, 0)
    assert blue.live_seconds == pytest.approx(4.0)  # 1.0 to 5.0 (live on lb2 until then)
    assert (green.max_out_while_live, green.min_in_while_live, green.violations) == (1, 1, 1)
    assert green.live_seconds == pytest.approx(3.0)  # from lb1's switch at 3.0 to the end
    # Out of rotation is still recorded for every server, live or not.
    assert summary.max_out_of_rotation == 2
    assert summary.total_out_seconds("app_green/app04") == pytest.approx(1.0)
    # Without a limit: the figures, no violation.
    assert build(samples, limit=None).violations == ()


def test_a_limit_per_backend_not_over_the_fleet() -> None:
    # One out in each pool while both are live (LBs disagree): limit 1 holds for each.
    samples = [sample("lb1", 1.0, "app_green", app03=DRAIN), sample("lb2", 1.0, app01=DRAIN)]
    assert build(samples, limit=1).violations == ()
    assert build(samples, limit=0).violations == (
        Violation(1.0, ("app_green/app03",), 0),  # lb1 alone known: green live
        Violation(1.0, ("app_blue/app01", "app_green/app03"), 0))


def test_json_and_text_show_the_pools_and_the_single_backend_output_is_unchanged() -> None:
    summary = build(switch(lb1_at=2.0, lb2_at=2.5, end=3.0))
    data = json.loads(json.dumps(summary.to_json()))
    assert data["backends"] == ["app_blue", "app_green"] and data["live_key"] == "live"
    assert data["routes"]["lb2"] == {"first": {"live": "app_blue", "preview": "app_green"},
                                     "last": {"live": "app_green", "preview": "app_blue"}}
    assert [c["at"] for c in data["route_changes"]["lb1"] if c["key"] == "live"] == [2.0]
    dis = data["live_disagreement"]
    assert dis["seconds"] == pytest.approx(0.55) and len(dis["windows"]) == 1
    assert dis["min_seconds"] <= dis["seconds"] <= dis["max_seconds"]
    assert "upper bound" in dis["bounds"]
    assert data["capacity"]["app_green"]["servers"] == 2
    assert json.loads(json.dumps(summary.records[0].to_json()))["maps"]["live"] == "app_blue"
    text = "\n".join(summary_lines(summary))
    assert "live: app_blue -> app_green between" in text
    assert "LBs disagreed on live: 1 window(s), 0.550 s observed" in text
    assert "app_green: live" in text

    single = WatchSummary.build([Sample("lb1", 1.0, RTT, {"app01": READY})],
                                servers=["app01"], max_unavailable=0)
    keys = set(single.to_json())
    assert not keys & {"backends", "live_key", "routes", "route_changes",
                       "live_disagreement", "capacity"}
    assert "maps" not in single.records[0].to_json()
    assert not any("routes" in line or "disagreed" in line for line in summary_lines(single))
    assert summary_lines(single)[-1] == "    app01       0.00"


# --- the pools query and the Watcher on a fake runtime API ----------------------------------

def _backend(backend: str, be_id: int, servers: list[str], admin: int = 0) -> str:
    rows = "".join(f"{be_id} {backend} {i} {srv} 10.0.0.{10 + i} 2 {admin} 1 1 8080\n"
                   for i, srv in enumerate(servers, 1))
    stat = "".join(f"{backend},{srv},0,0,0,UP,1,L7OK\n" for srv in servers)
    return ("1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state "
            f"srv_uweight srv_iweight srv_port\n{rows}\n"
            f"# pxname,svname,qcur,qmax,scur,status,weight,check_status\n{stat}\n")


class PoolsTransport:
    def __init__(self, url: str) -> None:
        self.url = url
        self.live = "app_blue"
        self.sent: list[str] = []
        self.closed = False

    def send(self, command: str) -> str:
        self.sent.append(command)
        time.sleep(0.001)
        return (_backend("app_blue", 5, ["app01", "app02"])
                + _backend("app_green", 6, ["app03", "app04"], admin=8)
                + f"0x55c1 live {self.live}\n0x55c2 preview app_green\n\n")

    def close(self) -> None:
        self.closed = True


def test_query_pools_reads_every_backend_and_the_map_in_one_round_trip() -> None:
    transport = PoolsTransport("fake://lb1")
    servers, maps = query_pools(RuntimeAPI(transport), ["app_blue", "app_green"], "/m/pools.map")
    assert transport.sent == ["show servers state app_blue;show stat app_blue 4 -1;"
                              "show servers state app_green;show stat app_green 4 -1;"
                              "show map /m/pools.map"]
    assert set(servers) == set(SERVERS)
    assert servers["app_green/app03"].admin == "DRAIN" and servers["app_blue/app01"].in_rotation
    assert maps == {"live": "app_blue", "preview": "app_green"}


def test_query_pools_refuses_a_missing_backend_a_bad_map_answer_and_bad_names() -> None:
    class Refusing(PoolsTransport):
        def send(self, command: str) -> str:
            return ("Can't find backend.\n\nCan't find backend.\n\n"
                    + _backend("app_green", 6, ["app03"]) + "\n")

    with pytest.raises(BalancerError, match="app_blue"):
        query_pools(RuntimeAPI(Refusing("fake://")), ["app_blue", "app_green"], None)

    class NoMap(PoolsTransport):
        def send(self, command: str) -> str:
            return (_backend("app_blue", 5, ["app01"])
                    + "Unknown map identifier. Please use #<id> or <file>.\n\n")

    with pytest.raises(BalancerError, match="show map"):
        query_pools(RuntimeAPI(NoMap("fake://")), ["app_blue"], "/m/pools.map")
    with pytest.raises(Exception, match="not a valid HAProxy name"):
        query_pools(RuntimeAPI(PoolsTransport("fake://")), ["app;shutdown"], None)
    with pytest.raises(Exception, match="neither an absolute path"):
        query_pools(RuntimeAPI(PoolsTransport("fake://")), ["app_blue"], "pools.map;x")


def test_watcher_with_maps_records_routes_and_summarises_pools() -> None:
    t1, t2 = PoolsTransport("fake://lb1"), PoolsTransport("fake://lb2")
    watcher = Watcher([RuntimeAPI(t1), RuntimeAPI(t2)], ["app_blue", "app_green"],
                      names=["lb1", "lb2"], maps=["/m/lb1.map", "/m/lb2.map"],
                      max_unavailable=0, hz=50, owns_apis=True).start()

    def seen(lb: str, live: str) -> bool:
        return any(s.lb == lb and s.maps.get("live") == live for s in watcher.samples())

    def poll(lb: str, live: str) -> None:
        deadline = time.monotonic() + 5
        while not seen(lb, live):
            assert time.monotonic() < deadline, (lb, live)
            time.sleep(0.005)

    poll("lb1", "app_blue")
    poll("lb2", "app_blue")
    t1.live = "app_green"
    poll("lb1", "app_green")
    t2.live = "app_green"
    poll("lb2", "app_green")
    summary = watcher.stop()
    assert watcher.backend == "app_blue,app_green" and summary.backends == ("app_blue",
                                                                            "app_green")
    assert t1.sent[0].endswith("show map /m/lb1.map") and t2.sent[0].endswith("/m/lb2.map")
    assert [c.after for c in summary.route_changes["lb1"] if c.key == "live"] == ["app_green"]
    assert [c.after for c in summary.route_changes["lb2"] if c.key == "live"] == ["app_green"]
    [window] = summary.disagreements
    assert isinstance(window, Disagreement) and window.routes == ("lb1 app_green",
                                                                  "lb2 app_blue")
    # green (all drained) was idle, then live: a violation only from lb1's switch on.
    assert summary.violations and all(v.ts >= window.start for v in summary.violations)
    assert t1.closed and t2.closed
