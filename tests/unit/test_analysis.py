"""Canary analysis counters: HAProxy's per-server counters parsed, differenced per window
(resets on reloads), summed over LBs, latency weighted by requests; the two-proportion test."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from rollout_py.analysis.counters import (
    Counters,
    Reset,
    Sample,
    WindowDeltas,
    sample,
    window_deltas,
)
from rollout_py.analysis.stats import worse_than_baseline
from rollout_py.balancer import RuntimeAPI, StatRow, parse_stat_csv
from rollout_py.balancer.fleet import HAProxyFleet
from rollout_py.balancer.runtime import STAT_AVERAGES, STAT_COUNTERS
from rollout_py.errors import BalancerError

# HAProxy 2.6 ``show stat`` columns, in order, up to ttime (the real answer has more).
COLUMNS = ("pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,"
           "wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,"
           "sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,"
           "check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,"
           "req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,"
           "lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime")
HEADER = COLUMNS.split(",")


def csv_row(**values: Any) -> str:
    """One server row: the given cells, every other cell empty (as HAProxy leaves them)."""
    return ",".join(str(values.get(col, "")) for col in HEADER) + ","


SERVER = dict(pxname="app", svname="app01", scur=2, stot=1500, econ=1, eresp=2,
              status="UP", weight=1, check_status="L7OK", hrsp_1xx=0, hrsp_2xx=1400,
              hrsp_3xx=40, hrsp_4xx=30, hrsp_5xx=7, hrsp_other=3, cli_abrt=4, srv_abrt=5,
              qtime=0, ctime=1, rtime=12, ttime=15)
STAT = "# " + ",".join(HEADER) + ",\n" + csv_row(**SERVER) + "\n" + \
    csv_row(pxname="app", svname="app02", status="MAINT", weight=0) + "\n"


@pytest.mark.parametrize("name", [*STAT_COUNTERS, *STAT_AVERAGES])
def test_parse_stat_csv_reads_each_counter(name: str) -> None:
    row, empty = parse_stat_csv(STAT)
    assert getattr(row, name) == SERVER[name]
    assert getattr(empty, name) == 0  # an empty cell reads 0
    assert (row.scur, row.status, row.weight, row.check_status) == (2, "UP", 1, "L7OK")


def test_parse_stat_csv_refuses_a_counter_that_is_not_a_number() -> None:
    with pytest.raises(BalancerError, match="unexpected 'show stat' row"):
        parse_stat_csv("# pxname,svname,hrsp_5xx\napp,app01,lots\n")


def test_counters_have_the_stat_rows_fields() -> None:
    names = [f.name for f in dataclasses.fields(Counters)]
    assert names == [*STAT_COUNTERS, *STAT_AVERAGES]
    assert set(names) <= {f.name for f in dataclasses.fields(StatRow)}


class Transport:
    def __init__(self, url: str, answer: str) -> None:
        self.url, self.answer, self.sent = url, answer, list[str]()

    def send(self, command: str) -> str:
        self.sent.append(command)
        return self.answer

    def close(self) -> None:
        pass


def test_fleet_stats_reads_each_lb_once_and_keeps_the_servers_asked_for() -> None:
    lb2_row = csv_row(pxname="app", svname="app01", hrsp_2xx=9)
    t1 = Transport("unix:///lb1", STAT)
    t2 = Transport("unix:///lb2", "# " + ",".join(HEADER) + ",\n" + lb2_row + "\n")
    fleet = HAProxyFleet([RuntimeAPI(t1), RuntimeAPI(t2)], "app")
    stats = fleet.stats(["app01", "app02"])
    assert t1.sent == t2.sent == ["show stat app 4 -1"]
    assert sorted(stats["unix:///lb1"]) == ["app01", "app02"]
    assert list(stats["unix:///lb2"]) == ["app01"]  # lb2 has no app02: absent, not zero
    assert stats["unix:///lb2"]["app01"].hrsp_2xx == 9
    assert list(fleet.stats(["app02"])["unix:///lb1"]) == ["app02"]


def test_sample_turns_rows_into_counters() -> None:
    rows = {"lb1": {r.name: r for r in parse_stat_csv(STAT)}}
    smp = sample(rows)
    c = smp["lb1"]["app01"]
    assert (c.requests, c.errors, c.rtime) == (1400 + 40 + 30 + 7 + 3, 7 + 2 + 1, 12)


@pytest.mark.parametrize(("counters", "requests", "errors"), [
    (Counters(hrsp_2xx=90, hrsp_4xx=10), 100, 0),  # a 4xx is the client's error
    (Counters(hrsp_1xx=1, hrsp_3xx=2, hrsp_5xx=3, hrsp_other=4), 10, 3),
    (Counters(hrsp_2xx=10, eresp=2, econ=3, srv_abrt=7, cli_abrt=9), 10, 5),
    (Counters(stot=50, rtime=100), 0, 0),
])
def test_requests_and_errors(counters: Counters, requests: int, errors: int) -> None:
    assert (counters.requests, counters.errors) == (requests, errors)


def C(**kw: int) -> Counters:
    return Counters(**kw)


PREV: Sample = {"lb1": {"app01": C(hrsp_2xx=100, stot=100, rtime=10),
                        "app02": C(hrsp_2xx=50, stot=50)},
                "lb2": {"app01": C(hrsp_2xx=200, stot=200),
                        "app02": C(hrsp_2xx=70, stot=70)}}


def changed(lb: str, server: str, **kw: int) -> Sample:
    out = {u: dict(per) for u, per in PREV.items()}
    out[lb][server] = dataclasses.replace(PREV[lb][server], **kw)
    return out


@pytest.mark.parametrize(("cur", "words"), [
    # lb1 grows, lb2 went down (only lb2 reloaded): the whole window is void
    ({"lb1": {"app01": C(hrsp_2xx=150, stot=150), "app02": C(hrsp_2xx=60, stot=60)},
      "lb2": {"app01": C(hrsp_2xx=3, stot=3), "app02": C(hrsp_2xx=80, stot=80)}},
     ["went down", "lb2 app01", "hrsp_2xx 200 -> 3", "stot 200 -> 3"]),
    (changed("lb1", "app02", stot=49), ["lb1 app02: stot 50 -> 49"]),
    (changed("lb2", "app02", hrsp_5xx=0, econ=0, cli_abrt=0), []),  # equal: no reset
    ({"lb1": PREV["lb1"], "lb2": {"app01": PREV["lb2"]["app01"]}}, ["lb2 app02 vanished"]),
    ({"lb1": PREV["lb1"], "lb2": PREV["lb2"], "lb3": {"app01": C(hrsp_2xx=1)}},
     ["lb3 app01 appeared"]),
])
def test_window_deltas_resets(cur: Sample, words: list[str]) -> None:
    result = window_deltas(PREV, cur, ["app01", "app02"])
    if not words:
        assert isinstance(result, WindowDeltas)
        return
    assert isinstance(result, Reset), result
    for word in words:
        assert word in result.detail
    assert result.raw == cur  # the next window starts from the new values


def test_averages_going_down_are_no_reset() -> None:
    cur = changed("lb1", "app01", hrsp_2xx=110, rtime=2)
    assert isinstance(window_deltas(PREV, cur, ["app01"]), WindowDeltas)


def test_a_reset_on_a_server_not_judged_does_not_void_the_window() -> None:
    cur = changed("lb1", "app02", hrsp_2xx=0, stot=0)
    assert isinstance(window_deltas(PREV, cur, ["app01"]), WindowDeltas)


def test_deltas_are_summed_over_lbs() -> None:
    cur = {"lb1": {"app01": C(hrsp_2xx=160, hrsp_5xx=2, stot=162, rtime=10),
                   "app02": C(hrsp_2xx=50, stot=50)},
           "lb2": {"app01": C(hrsp_2xx=230, econ=1, stot=231, rtime=40),
                   "app02": C(hrsp_2xx=75, stot=75)}}
    w = window_deltas(PREV, cur, ["app01", "app02"])
    assert isinstance(w, WindowDeltas)
    totals = w.totals()
    assert totals["app01"]["hrsp_2xx"] == 60 + 30 and totals["app01"]["hrsp_5xx"] == 2
    assert totals["app01"]["stot"] == 62 + 31
    assert (totals["app01"]["requests"], totals["app01"]["errors"]) == (92, 3)
    assert totals["app02"]["requests"] == 5
    g = w.group(["app01", "app02"])
    assert (g.requests, g.errors) == (97, 3) and g.error_rate == pytest.approx(3 / 97)
    # rtime: lb1 app01 10 ms x 62, lb2 app01 40 ms x 30, app02 0 ms x 5 requests
    assert g.latency["rtime"] == pytest.approx((10 * 62 + 40 * 30 + 0) / 97)


@pytest.mark.parametrize(("lb1", "lb2", "expected"), [
    ((100, 10), (300, 30), 25.0),  # (requests in the window, current rtime)
    ((0, 1000), (300, 30), 30.0),  # an average without requests in the window weighs 0
    ((1, 100), (99, 0), 1.0),
    ((0, 10), (0, 30), None),  # no requests: no latency, not 0
])
def test_latency_is_weighted_by_the_windows_requests(
        lb1: tuple[int, int], lb2: tuple[int, int], expected: float | None) -> None:
    zero: Sample = {"lb1": {"app01": C()}, "lb2": {"app01": C()}}
    cur: Sample = {"lb1": {"app01": C(hrsp_2xx=lb1[0], rtime=lb1[1])},
                   "lb2": {"app01": C(hrsp_2xx=lb2[0], rtime=lb2[1])}}
    w = window_deltas(zero, cur, ["app01"])
    assert isinstance(w, WindowDeltas)
    got = w.group(["app01"]).latency["rtime"]
    assert got == (pytest.approx(expected) if expected is not None else None)
    assert w.group(["app01"]).error_rate == (None if expected is None else 0.0)


def test_a_server_an_lb_lacks_in_both_samples_contributes_nothing() -> None:
    prev: Sample = {"lb1": {"app01": C(hrsp_2xx=10)}, "lb2": {}}
    cur: Sample = {"lb1": {"app01": C(hrsp_2xx=30, rtime=5)}, "lb2": {}}
    w = window_deltas(prev, cur, ["app01", "ghost"])
    assert isinstance(w, WindowDeltas)
    assert w.missing == (("lb1", "ghost"), ("lb2", "app01"), ("lb2", "ghost"))
    assert w.group(["app01"]).requests == 20 and w.group(["app01"]).latency["rtime"] == 5
    assert w.totals()["ghost"]["requests"] == 0


# --- the two-proportion test ------------------------------------------------------------

def hand_z(x_c: int, n_c: int, x_b: int, n_b: int, margin: float) -> float:
    p_c, p_b = x_c / n_c, x_b / n_b
    return (p_c - p_b - margin) / math.sqrt(p_c * (1 - p_c) / n_c + p_b * (1 - p_b) / n_b)


@pytest.mark.parametrize(("counts", "margin", "confidence", "z", "p", "worse"), [
    # 5% vs 0%: z = (0.05 - 0 - 0.005) / sqrt(0.05 * 0.95 / 200) = 0.045 / 0.015411 = 2.920
    ((10, 200, 0, 1800), 0.005, 0.95, 2.91999, 0.00175, True),
    # 0.5% vs 0.28%: below baseline + margin, z < 0
    ((1, 200, 5, 1800), 0.005, 0.95, -0.54048, 0.70557, False),
    # 2.5% vs 0.5%, no margin: z = 0.02 / 0.011164 = 1.791, p = 0.0366: worse at 95% ...
    ((5, 200, 9, 1800), 0.0, 0.95, 1.79144, 0.03661, True),
    # ... but not at 99%
    ((5, 200, 9, 1800), 0.0, 0.99, 1.79144, 0.03661, False),
    # no errors anywhere: zero variance, difference exactly at the margin
    ((0, 200, 0, 1800), 0.0, 0.95, 0.0, 0.5, False),
    ((0, 200, 0, 1800), 0.01, 0.95, -math.inf, 1.0, False),
    # every canary request failed, none of the baseline's: zero variance, certainly worse
    ((200, 200, 0, 1800), 0.01, 0.95, math.inf, 0.0, True),
    # more errors than responses (econ without a response) are clipped to n
    ((250, 200, 0, 1800), 0.01, 0.95, math.inf, 0.0, True),
])
def test_two_proportion_test(counts: tuple[int, int, int, int], margin: float,
                             confidence: float, z: float, p: float, worse: bool) -> None:
    r = worse_than_baseline(*counts, margin=margin, confidence=confidence)
    assert r.z == pytest.approx(z, abs=1e-4)
    if 0 < counts[0] < counts[1]:  # the formula, where the variance is not zero
        assert r.z == pytest.approx(hand_z(*counts, margin))
    assert r.p_value == pytest.approx(p, abs=1e-5)
    assert r.worse is worse


@pytest.mark.parametrize("counts", [(0, 0, 0, 100), (0, 100, 0, 0)])
def test_two_proportion_test_needs_requests_on_both_sides(
        counts: tuple[int, int, int, int]) -> None:
    with pytest.raises(ValueError, match="no requests"):
        worse_than_baseline(*counts, margin=0.0, confidence=0.95)
