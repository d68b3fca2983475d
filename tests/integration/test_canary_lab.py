"""The canary strategy on a real 6-host lab with Prometheus, under constant open-loop load.

One lab for the module (6 hosts, lb1, the lab's Prometheus scraping lb1's exporter each
second). Each test writes its own spec from the lab's rollout-canary.yml (no stage section,
windows of 2 s, the rest of the fleet in batches of 3) into its tmp_path, so each has its own
state directory (``.rollout`` beside the spec). The ``fleet`` fixture checks, before each test,
that every server is READY, UP and at weight 1 on the LB and every host serves one version,
and puts the fleet back so first if a test left it otherwise.

Every deploy runs through the real CLI with ``--json`` (tests/chaos/harness.py): 200 requests/s
through lb1 while it runs, lb1 sampled at 10 Hz for the capacity rule, hooks acting on the
deploy's events as they are printed (after they are journaled) - never on a sleep.

``analysis.continuous: false`` where a test asserts which analysis step judged the release:
the continuous watch judges batch 1 too from the moment it is back in rotation, on the same
counters, and after a window without errors it races the step for the verdict.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout_py.analysis import prometheus
from rollout_py.lab import artifact
from rollout_py.lab import lab as lab_mod
from rollout_py.lab.layout import Layout
from rollout_py.lab.load import Record
from rollout_py.procs import Proc
from rollout_py.state import StateDir
from tests.chaos.harness import CURRENT, Run, deploy_under_fault
from tests.integration.conftest import LabFactory
from tests.integration.deploykit import (
    REPO,
    all_ready_and_up,
    lb_states,
    rollout_cli,
    versions,
    write_spec,
)

RPS = 200
INTERVAL = 2.0
HOSTS = 6
BASE = "1.0"  # what `lab up` installs everywhere
SLOW_PLAYBOOK = REPO / "tests/integration/playbooks/deploy_slow_batch.yml"
# Releases, each deployed by one test (a version's artifact is never rebuilt: a host that has
# staged it would keep the old build).
RELEASES = {
    "e5": artifact.Behaviour(error_rate=0.05),
    "lat200": artifact.Behaviour(latency_ms=200),
    "good-promoted": artifact.Behaviour(),
    "quiet": artifact.Behaviour(),
    "good-reloaded": artifact.Behaviour(),
    "prom-bad": artifact.Behaviour(error_rate=0.3),
    "prom-good": artifact.Behaviour(),
    "turns-bad": artifact.Behaviour(fail_after=20),
    "resumed": artifact.Behaviour(),
}
KNOWN: dict[str, str] = {"version": BASE}  # the fleet's version at the last test's start


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> Layout:
    layout = lab_factory(n_hosts=HOSTS, name="canarylab", with_prometheus=True)
    for version, behaviour in RELEASES.items():
        artifact.build_artifact(layout.artifacts, version, behaviour)
    return layout


# --- the fleet between tests ------------------------------------------------------------------

def live_weights(lab: Layout) -> dict[str, dict[str, int]]:
    """LB socket URL -> server -> weight now (the shape of the weights_* events)."""
    url = {lb.name: lb.socket_url for lb in lab.lbs}
    return {url[name]: {s: st[2] for s, st in per.items()}
            for name, per in lb_states(lab).items()}


def problems(lab: Layout) -> list[str]:
    """What keeps the fleet from being whole: a server not READY, UP and at weight 1 (the
    lab's configured weight) on some LB, or hosts on different (or no) versions."""
    out = [f"{lb} {server}: {state}" for lb, per in lb_states(lab).items()
           for server, state in per.items() if state != ("READY", "RUNNING", 1)]
    served = versions(lab)
    if None in served.values() or len(set(served.values())) != 1:
        out.append(f"versions: {served}")
    return out


def reset(lab: Layout, work: Path) -> None:
    """Every server READY at weight 1 on every LB, then the last known version deployed to the
    hosts that do not serve it (a rolling deploy skips those that do)."""
    for lb in lab.lbs:
        api = lab_mod.lb_api(lab, lb)
        try:
            for server in api.servers_state("app"):
                api.set_weight("app", server.name, 1)
                api.set_state("app", server.name, "ready")
        finally:
            api.close()
    if len(set(versions(lab).values())) != 1:
        spec = write_spec(lab, work / "rollout.yml", batches=[3])
        proc = rollout_cli("deploy", "-f", str(spec), "--version", KNOWN["version"])
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    wait_for(lambda: all_ready_and_up(lab), 15, "every server UP after the reset")


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def clear_counters(lab: Layout) -> None:
    """HAProxy's counters and time averages back to 0 on every LB, as on a fresh LB.

    A server's qtime/ctime/rtime/ttime are averages over its last 1024 requests, across
    deploys: right after the +200 ms release was rolled back, app01's
    rtime still said 35 ms, and the next test's good canary (app01 again) failed the ratio
    gate against a 1 ms baseline. No deploy runs between tests, so nothing is judged across
    this clear (and Prometheus' rate() takes counter resets in its stride)."""
    for lb in lab.lbs:
        api = lab_mod.lb_api(lab, lb)
        try:
            api.raw("clear counters all")
        finally:
            api.close()


def no_recent_5xx(lab: Layout) -> bool:
    """Whether Prometheus saw no 5xx on any server in the 10 s its canary gate's rate() looks
    back over: the last test's bad release (on app01, every test's canary) must not be
    judged again in this test's first windows."""
    assert lab.prometheus_url is not None
    got = prometheus.query(lab.prometheus_url, 'sum(increase(haproxy_server_http_responses_'
                           'total{code="5xx"}[10s]))', 5.0)
    return got == 0.0 or (isinstance(got, str) and got.startswith("no series"))


@pytest.fixture
def fleet(lab: Layout, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The one version every host serves at the start of the test, every server READY, UP
    and at weight 1 on every LB (reset first if the last test left the fleet otherwise), the
    LB's counters fresh, and no 5xx of the last test in Prometheus' window."""
    if problems(lab):
        reset(lab, tmp_path_factory.mktemp("reset"))
    left = problems(lab)
    assert not left, left
    clear_counters(lab)
    wait_for(lambda: no_recent_5xx(lab), 40, "no 5xx in Prometheus' last 10 s")
    KNOWN["version"] = versions(lab)["app01"] or BASE
    return KNOWN["version"]


def assert_whole(lab: Layout, version: str, **others: str) -> None:
    """Every server READY, UP, weight 1 on every LB; every host on ``version`` (or as named)."""
    assert [p for p in problems(lab) if not p.startswith("versions")] == []
    expected = {h.name: version for h in lab.app_hosts} | others
    assert versions(lab) == expected


# --- specs and events --------------------------------------------------------------------

def lab_gates(lab: Layout) -> list[dict[str, Any]]:
    """The gates of the lab's canary spec: error rate, latency and the Prometheus query."""
    gates = yaml.safe_load((lab.path / "rollout-canary.yml").read_text())["analysis"]["gates"]
    return list(gates)


def canary_spec(lab: Layout, path: Path, steps: Sequence[dict[str, Any]], *,
                analysis: dict[str, Any] | None = None, **overrides: Any) -> Path:
    """The lab's rollout-canary.yml, test-sized: canary 1 host with ``steps``, windows of 2 s
    (min_requests 20: the canary sees ~40 per window at 10 % of 200 rps), 3 inconclusive
    windows in a row fail, then the other 5 hosts in batches of 3 and 2."""
    path.parent.mkdir(parents=True, exist_ok=True)
    section = {"interval": INTERVAL, "min_requests": 20, "inconclusive_limit": 3,
               **(analysis or {})}
    return write_spec(lab, path, base="rollout-canary.yml",
                      **{"batches": [3], "canary": {"hosts": 1, "steps": list(steps)},
                         "analysis": section, **overrides})


def run_deploy(lab: Layout, spec: Path, version: str, *args: str, rps: float = RPS,
               hooks: dict[str, Any] | None = None, command: str = "deploy",
               timeout: float = 150) -> Run:
    run = deploy_under_fault(lab, spec, version, *args, hooks=hooks, rps=rps,
                             max_unavailable=3, command=command, timeout=timeout)
    # The capacity rule held in every 10 Hz sample of the LB (max_unavailable 50 %: 3).
    assert not run.watch.violations, run.watch.violations[:5]
    return run


def of(run: Run, kind: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in run.events
            if e["event"] == kind and all(e.get(k) == v for k, v in match.items())]


def failed_gates(window: dict[str, Any]) -> set[str]:
    return {g["gate"] for g in window["gates"] if g["verdict"] == "fail"}


def binomial_upper(n: int, p: float, alpha: float = 1e-6) -> int:
    """The smallest k with P(X > k) <= alpha for X ~ Binomial(n, p)."""
    cdf = 0.0
    for k in range(n + 1):
        cdf += math.comb(n, k) * p ** k * (1 - p) ** (n - k)
        if 1 - cdf <= alpha:
            return k
    return n


def story(run: Run) -> str:
    """The deploy's key events, one line each: the message of a failed assertion on it."""
    lines = []
    for e in run.events:
        kind = e["event"]
        if kind == "analysis_window":
            lines.append(f"{kind} {e['purpose']} step {e['step']} #{e['window']} "
                         f"{e['canary']}: {e['verdict']} {e['reason'][:300]}")
            # HAProxy's averages cover a server's last 1024 requests, not the window: say
            # what each LB held (rtime ms / requests ever) to tell history from the window.
            lines.append("  raw " + "; ".join(
                f"{lb.rsplit('/', 1)[-1]} " + " ".join(
                    f"{s}={c['rtime']}/{c['stot']}" for s, c in sorted(per.items()))
                for lb, per in e["raw"].items()))
        elif kind in ("batch_started", "batch_failed", "rollback_started", "analysis_finished",
                      "pause_started", "control_received", "weights_set", "weights_restored",
                      "deploy_finished", "deploy_resumed", "metrics_unavailable"):
            lines.append(" ".join(f"{k}={v}" for k, v in e.items()
                                  if k not in ("deploy_id", "ts", "achieved")))
    return "\n".join([*lines, *slowest(run), f"exit {run.returncode}", run.stderr[-2000:]])


def slowest(run: Run, per_server: int = 3) -> list[str]:
    """Each server's slowest requests of the run (client-side), in seconds since the first
    journaled event: where a latency verdict's history came from."""
    t0 = run.events[0]["ts"] if run.events else 0.0
    by: dict[str, list[Record]] = {}
    for r in run.load.records:
        by.setdefault(r.lb_server or "?", []).append(r)
    return [f"slowest on {server}: " + ", ".join(
                f"{r.latency * 1000:.0f} ms at {r.sent_at - t0:+.2f} s"
                for r in sorted(records, key=lambda r: -r.latency)[:per_server])
            for server, records in sorted(by.items())]


def failures(run: Run) -> list[Record]:
    return [r for r in run.load.records if not r.ok]


# --- the tests ---------------------------------------------------------------------------

def test_a_release_with_5_percent_errors_is_stopped_by_its_first_analysis(
        lab: Layout, fleet: str, tmp_path: Path) -> None:
    """Canary 1 of 6 at 10 % under 200 rps: failed in the first analysis step, rolled back
    (exit 1), every host on the old version at its original weight; the requests it failed
    are bounded by its share of the traffic. Then the same release rolling, with a soak
    judged by an error-rate gate: stopped at its first batch."""
    error_rate = RELEASES["e5"].error_rate
    spec = canary_spec(lab, tmp_path / "canary" / "rollout.yml",
                       [{"traffic": "10%"}, {"analysis": {"duration": 12}}],
                       analysis={"continuous": False})
    run = run_deploy(lab, spec, "e5")
    assert run.returncode == 1, story(run)
    assert run.result is not None
    assert (run.result["status"], run.result["failure"]) == ("rolled_back", "analysis")
    # Judged by step 3 (analysis after the 10 % set weight); every window before the failing
    # one passed (failure_limit 1: the first failed window ends it).
    finished = of(run, "analysis_finished")
    assert [(f["step"], f["purpose"], f["verdict"]) for f in finished] == [(3, "canary", "fail")]
    windows = of(run, "analysis_window")
    assert {(w["step"], w["purpose"], tuple(w["canary"])) for w in windows} == \
        {(3, "canary", ("app01",))}
    assert windows[-1]["verdict"] == "fail"
    assert [w["verdict"] for w in windows[:-1]] == ["pass"] * (len(windows) - 1)
    # An error gate failed it (the window's own count, or Prometheus' 10 s rate of 5xx).
    assert failed_gates(windows[-1]) and failed_gates(windows[-1]) <= {
        "error_rate.max", "error_rate.max_over_baseline", "prometheus.max"}
    assert windows[-1]["groups"]["baseline"]["errors"] == 0
    assert [(b["batch"], b["failure"]) for b in of(run, "batch_failed")] == [(1, "analysis")]
    assert [r["batch"] for r in of(run, "rollback_started")] == [1]
    assert not of(run, "batch_started", batch=2)  # the rest never started
    # Every weight back: the recorded ones, live on the LB.
    [recorded] = of(run, "weights_recorded")
    assert [r["weights"] for r in of(run, "weights_restored")] == [recorded["weights"]]
    assert live_weights(lab) == recorded["weights"]
    assert_whole(lab, fleet)

    # The blast radius. HAProxy's smooth weighted round robin gives the canary its share of
    # an open-loop 200 rps exactly (to a request), so the requests the new release served are
    # bounded by the timeline the journal gives:
    #   from its last verify probe (it is enabled right after) to the set weight: weight 1 of
    #   6, 1/6 of the requests; from the set weight to the rollback's start: the achieved
    #   share (10 %) - the analysis windows (interval 2 s each, plus the time each verdict
    #   takes) and nothing else, since the rollback's first action is the drain.
    # Slack, derived: the drain command reaches HAProxy after RollbackStarted is journaled
    # (an fsync) and printed: allow 0.1 s of that at the canary's weight (2 requests at
    # 20 rps), plus one request of round-robin rounding for each of the two phases.
    url = lab.lbs[0].socket_url
    [weights_set] = of(run, "weights_set")
    share = weights_set["achieved"][url]
    assert abs(share - 0.10) < 0.005
    t_in = max(p["ts"] for p in of(run, "probe_passed", batch=1, phase="verify"))
    t_set = weights_set["ts"]
    [t_out] = [r["ts"] for r in of(run, "rollback_started", batch=1)]
    drain_delay = 0.1
    exposure = RPS * ((t_set - t_in) / HOSTS + (t_out + drain_delay - t_set) * share) + 2
    new = [r for r in run.load.records if r.version == "e5"]
    assert all(t_in <= r.sent_at <= t_out + drain_delay for r in new), \
        [(r.seq, r.sent_at) for r in new if not t_in <= r.sent_at <= t_out + drain_delay]
    assert len(new) <= exposure, (len(new), exposure)
    # Every failed request is a 500 of the new release on the canary: none elsewhere.
    failed = failures(run)
    assert all((r.version, r.status, r.served_by) == ("e5", 500, "app01") for r in failed)
    # ... and every error the analysis counted reached a client (nothing hidden).
    assert len(failed) >= sum(w["groups"]["canary"]["errors"] for w in windows)
    # The bound on failures: one window at 10 % is share x error_rate x interval x rps =
    # 0.1 x 0.05 x 2 x 200 = 2 failed requests expected (the analysis stops at the first
    # window with an error: windows before it had none), plus error_rate x the slack above.
    # The count is binomial, not a constant: the assertion takes its 1e-6 upper tail over
    # the exposure, so only a larger blast radius (a weight not applied, a failure not
    # acted on, a rollback that keeps serving) fails it, not chance.
    expected = share * error_rate * (t_out - t_set) * RPS
    bound = binomial_upper(math.ceil(exposure), error_rate)
    late = max(r.sent_at for r in new) - t_out
    print(f"\ncanary e5: {len(new)} requests on the new release (<= {exposure:.1f}; the last "
          f"sent {late * 1000:+.0f} ms after RollbackStarted), {len(failed)} failed of "
          f"{run.load.sent} (expected {expected:.2f}: {len(windows)} window(s) of "
          f"{INTERVAL:g} s at {share:.0%}; bound {bound})")
    assert len(failed) <= bound

    # The same release, rolling, batch 1 soaked under an error-rate gate (no canary).
    (tmp_path / "rolling").mkdir()
    rolling = write_spec(lab, tmp_path / "rolling" / "rollout.yml", health={"soak": 6},
                         analysis={"interval": INTERVAL, "min_requests": 20,
                                   "continuous": False,
                                   "gates": [{"error_rate": {"max": "1%"}}]})
    run = run_deploy(lab, rolling, "e5")
    assert run.returncode == 1, story(run)
    assert run.result is not None and run.result["status"] == "rolled_back"
    assert of(run, "deploy_started")[0]["batches"][0] == ["app01"]
    finished = of(run, "analysis_finished")
    assert [(f["step"], f["purpose"], f["verdict"]) for f in finished] == [(2, "soak", "fail")]
    assert [(b["batch"], b["failure"]) for b in of(run, "batch_failed")] == [(1, "analysis")]
    assert not of(run, "batch_started", batch=2)
    assert [b["outcome"] for b in run.result["batches"]] == \
        ["rolled_back", "not_started", "not_started"]
    assert not of(run, "weights_set")  # rolling: no weight is touched
    assert_whole(lab, fleet)


def test_a_200_ms_slower_release_fails_the_latency_ratio_to_the_baseline(
        lab: Layout, fleet: str, tmp_path: Path) -> None:
    """+200 ms on every response: caught by latency.rtime.max_ratio_to_baseline (the spec's
    absolute max_ms is removed, so only the comparison with the old servers can catch it)."""
    gates = [{"latency": {"field": "rtime", "max_ratio_to_baseline": 1.5}} if "latency" in g
             else g for g in lab_gates(lab)]
    assert gates != lab_gates(lab)
    spec = canary_spec(lab, tmp_path / "rollout.yml",
                       [{"traffic": "10%"}, {"analysis": {"duration": 8}}],
                       analysis={"continuous": False, "gates": gates})
    run = run_deploy(lab, spec, "lat200")
    assert run.returncode == 1, story(run)
    assert run.result is not None and run.result["status"] == "rolled_back"
    windows = of(run, "analysis_window")
    failing = [w for w in windows if w["verdict"] == "fail"]
    assert [(w["step"], w["purpose"]) for w in failing] == [(3, "canary")]
    assert failing[0] is windows[-1]
    assert failed_gates(failing[0]) == {"latency.rtime.max_ratio_to_baseline"}
    [gate] = [g for g in failing[0]["gates"] if g["gate"] == "latency.rtime.max_ratio_to_baseline"]
    baseline = failing[0]["groups"]["baseline"]["latency"]["rtime"]
    assert gate["value"] > gate["threshold"] >= 1.5 * baseline, gate
    assert not [g for w in windows for g in w["gates"] if g["gate"].endswith(".max_ms")]
    assert [f["verdict"] for f in of(run, "analysis_finished")] == ["fail"]
    assert not of(run, "batch_started", batch=2)
    assert run.load.failed == 0, run.load.failures  # slow, not failed
    [recorded] = of(run, "weights_recorded")
    assert live_weights(lab) == recorded["weights"]
    assert_whole(lab, fleet)


def test_a_good_release_waits_in_its_pause_until_promoted_from_another_process(
        lab: Layout, fleet: str, tmp_path: Path) -> None:
    """10 %, judged, a pause until `rollout promote` (sent by another process once the deploy
    says it is paused), 50 %, judged, then the rest rolls: no request fails and every weight
    ends exactly as recorded before the first set weight."""
    steps: list[dict[str, Any]] = [{"traffic": "10%"}, {"analysis": {"duration": 4}},
                                   {"pause": {}}, {"traffic": "50%"},
                                   {"analysis": {"duration": 2}}]
    spec = canary_spec(lab, tmp_path / "rollout.yml", steps)
    sent: list[dict[str, Any]] = []

    def promote(event: dict[str, Any]) -> None:
        assert event["duration"] is None and event["by"] == "plan"
        proc = rollout_cli("promote", "-f", str(spec), "--json", "--reason", "looks good")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        sent.append(json.loads(proc.stdout)["control"])

    run = run_deploy(lab, spec, "good-promoted", hooks={"pause_started": promote})
    assert run.returncode == 0, story(run)
    assert run.load.failed == 0, run.load.failures
    [control] = sent
    [received] = of(run, "control_received")
    assert (received["action"], received["control_id"], received["by"]) == \
        ("promote", control["id"], control["by"])
    [paused] = of(run, "pause_started")
    [ended] = of(run, "pause_ended")
    assert (paused["step"], ended["step"], ended["how"]) == (4, 4, "promoted")
    assert paused["seq"] < received["seq"] < ended["seq"]
    # Nothing went on while paused: the next step (50 %) only after the promotion.
    assert [(w["step"], w["share"]) for w in of(run, "weights_set")] == [(2, 0.1), (5, 0.5)]
    assert of(run, "weights_set", step=5)[0]["seq"] > ended["seq"]
    finished = [(f["step"], f["purpose"], f["verdict"]) for f in of(run, "analysis_finished")]
    assert finished == [(3, "canary", "pass"), (6, "canary", "pass")]
    assert [w["step"] for w in of(run, "analysis_window", purpose="canary")] == [3, 3, 6]
    # The rest rolled after the canary's last step.
    [restored] = of(run, "weights_restored")
    assert restored["step"] == 7 and not restored["failed"]
    assert [b["batch"] for b in of(run, "batch_started")] == [1, 2, 3]
    assert of(run, "batch_started", batch=2)[0]["seq"] > restored["seq"]
    # Every weight exactly as recorded: in the journal, and live on the LB.
    [recorded] = of(run, "weights_recorded")
    assert restored["weights"] == recorded["weights"]
    assert recorded["weights"] == {lab.lbs[0].socket_url: {h.name: 1 for h in lab.app_hosts}}
    assert live_weights(lab) == recorded["weights"]
    assert_whole(lab, "good-promoted")


def test_without_traffic_the_canary_is_held_inconclusive_then_failed_never_promoted(
        lab: Layout, fleet: str, tmp_path: Path) -> None:
    """No load at all: every window is inconclusive (too few requests), the step holds, and
    the third in a row (inconclusive_limit 3) fails it: rolled back, batch 2 never started."""
    spec = canary_spec(lab, tmp_path / "rollout.yml",
                       [{"traffic": "10%"}, {"analysis": {"duration": 8}}])
    run = run_deploy(lab, spec, "quiet", rps=0)
    assert run.returncode == 1, story(run)
    assert run.result is not None and run.result["status"] == "rolled_back"
    canary = of(run, "analysis_window", purpose="canary")
    assert [w["verdict"] for w in canary] == ["inconclusive"] * 3
    assert all(w["reason"] == "too few requests: 0 < 20" for w in canary)
    # Held: the step went on after each of the first two (4 windows would have passed it).
    [finished] = of(run, "analysis_finished")
    assert (finished["step"], finished["purpose"], finished["verdict"]) == (3, "canary", "fail")
    assert "inconclusive for 3 windows in a row" in finished["cause"]
    assert finished["seq"] > canary[-1]["seq"]
    # The continuous watch (on by default) saw no traffic either: it never fails on that.
    assert all(w["verdict"] == "inconclusive" for w in of(run, "analysis_window",
                                                            purpose="watch"))
    assert [(b["batch"], b["failure"]) for b in of(run, "batch_failed")] == [(1, "analysis")]
    assert not of(run, "batch_started", batch=2)
    assert "inconclusive" in (run.result["cause"] or "")
    assert_whole(lab, fleet)


def test_an_haproxy_reload_during_the_analysis_is_a_reset_window_then_abort_in_the_pause(
        lab: Layout, fleet: str, tmp_path: Path) -> None:
    """A reload (SIGUSR2 to the lab's HAProxy master, as `systemctl reload` does) after the
    first window: HAProxy's counters restart, that window's verdict is "reset", and the
    analysis passes on the next ones - no false failure. Then, in the pause that follows,
    `rollout abort` from another process rolls the canary back (exit 1).

    A reload also puts back the configured weights (1 each), forgetting the 10 % set at
    runtime: the reset window makes the deploy look, and it sets the step's weights again (a
    second weights_set for the same step), so the pause holds the canary at 10 % again; the
    weights restored at the end are the recorded ones.
    """
    master = Proc.from_json(lab.procs["haproxy:lb1"])
    spec = canary_spec(lab, tmp_path / "rollout.yml",
                       [{"traffic": "10%"}, {"analysis": {"duration": 6}}, {"pause": {}}])
    seen: dict[str, Any] = {}

    def reload_after_first_window(event: dict[str, Any]) -> bool:
        if event["purpose"] != "canary":
            return False
        seen["before_reload"] = live_weights(lab)
        os.kill(master.pid, signal.SIGUSR2)
        return True

    def abort(event: dict[str, Any]) -> None:
        seen["in_pause"] = live_weights(lab)
        proc = rollout_cli("abort", "-f", str(spec), "--json", "--reason", "test abort")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        seen["control"] = json.loads(proc.stdout)["control"]

    run = run_deploy(lab, spec, "good-reloaded",
                     hooks={"analysis_window": reload_after_first_window,
                            "pause_started": abort})
    assert run.returncode == 1, story(run)
    assert run.result is not None
    assert (run.result["status"], run.result["failure"]) == ("rolled_back", "aborted"), story(run)
    canary = of(run, "analysis_window", purpose="canary")
    verdicts = [w["verdict"] for w in canary]
    assert verdicts[0] == "pass" and verdicts.count("reset") == 1 and "fail" not in verdicts
    [reset_window] = [w for w in canary if w["verdict"] == "reset"]
    assert "counters went down (HAProxy reloaded?)" in reset_window["reason"]
    assert verdicts.count("pass") == 3  # duration 6 s: three passed windows, the reset apart
    assert [(f["step"], f["verdict"]) for f in of(run, "analysis_finished")] == [(3, "pass")]
    # The abort: received, the pause ended by it, the canary rolled back, nothing else ran.
    [received] = of(run, "control_received")
    assert (received["action"], received["control_id"]) == ("abort", seen["control"]["id"])
    [failed] = of(run, "batch_failed")
    assert (failed["batch"], failed["failure"]) == (1, "aborted")
    assert "aborted by" in failed["cause"]
    assert [r["batch"] for r in of(run, "rollback_started")] == [1]
    assert not of(run, "batch_started", batch=2)
    assert run.load.failed == 0, run.load.failures  # the reload lost no request either
    assert Proc.from_json(lab.procs["haproxy:lb1"]).alive()  # same master, new worker
    # Weights: shaped before the reload, shaped again after it (the reload had put back the
    # configured ones), the recorded ones at the end.
    [recorded] = of(run, "weights_recorded")
    shaped, again = of(run, "weights_set")
    assert seen["before_reload"] == shaped["weights"] != recorded["weights"]
    assert (again["step"], again["weights"]) == (shaped["step"], shaped["weights"])
    assert seen["in_pause"] == shaped["weights"]
    print(f"\nreload: weights before {seen['before_reload']}, in the pause after it "
          f"{seen['in_pause']}; recorded {recorded['weights']}")
    assert [r["weights"] for r in of(run, "weights_restored")] == [recorded["weights"]]
    assert live_weights(lab) == recorded["weights"]
    assert_whole(lab, fleet)


def test_the_prometheus_gate_fails_a_bad_release_fails_closed_and_passes_a_good_one(
        lab: Layout, fleet: str, tmp_path: Path) -> None:
    """The lab's PromQL gate (the canary's 5xx share of its responses over 10 s, from the
    lab's Prometheus scraping lb1's exporter each second):

    1. alone, it fails a release answering 30 % errors;
    2. pointed at a closed loopback port (bound, never listening: refused) beside the other
       gates, which all pass a good release: every window inconclusive, held, failed at the
       limit (3), never promoted - an unreadable metric never passes;
    3. both, the lab's and the unreachable one, with --ignore-metrics-unavailable: the lab's
       gate passes the good release on its number (0), the other is let pass with a
       MetricsUnavailable warning journaled for each window, and the release rolls out.
    """
    [prom] = [g for g in lab_gates(lab) if "prometheus" in g]
    assert prom["prometheus"]["url"] == lab.prometheus_url
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # held for the test: nothing else can listen there
        down = f"http://127.0.0.1:{closed.getsockname()[1]}"
        unreachable = {"prometheus": {**prom["prometheus"], "url": down}}
        steps: list[dict[str, Any]] = [{"traffic": "10%"}, {"analysis": {"duration": 6}}]

        def spec(name: str, gates: list[dict[str, Any]]) -> Path:
            return canary_spec(lab, tmp_path / name / "rollout.yml", steps,
                               analysis={"continuous": False, "gates": gates})

        bad = run_deploy(lab, spec("bad", [prom]), "prom-bad")
        assert bad.returncode == 1, story(bad)
        windows = of(bad, "analysis_window")
        assert windows[-1]["verdict"] == "fail", story(bad)
        assert failed_gates(windows[-1]) == {"prometheus.max"}
        [gate] = windows[-1]["gates"]
        assert gate["value"] > gate["threshold"] == 0.01
        assert 'server=~"app01"' in gate["detail"]  # $canary, rendered
        assert [(f["step"], f["verdict"]) for f in of(bad, "analysis_finished")] == [(3, "fail")]
        assert not of(bad, "batch_started", batch=2)
        assert all(r.version == "prom-bad" and r.served_by == "app01" for r in failures(bad))
        assert_whole(lab, fleet)

        gates = [unreachable if "prometheus" in g else g for g in lab_gates(lab)]
        held = run_deploy(lab, spec("held", gates), "prom-good")
        assert held.returncode == 1, story(held)
        windows = of(held, "analysis_window")
        assert [w["verdict"] for w in windows] == ["inconclusive"] * 3, story(held)
        for w in windows:  # only the metric is missing: every other gate passed
            verdicts = {g["gate"]: g["verdict"] for g in w["gates"]}
            assert verdicts.pop("prometheus") == "inconclusive"
            assert set(verdicts.values()) == {"pass"}, verdicts
            assert f"Prometheus unreachable at {down}" in w["reason"]
        [finished] = of(held, "analysis_finished")
        assert finished["verdict"] == "fail"
        assert "inconclusive for 3 windows in a row" in finished["cause"]
        assert not of(held, "batch_started", batch=2)
        assert not of(held, "metrics_unavailable")
        assert held.load.failed == 0, held.load.failures
        assert_whole(lab, fleet)

        go_spec = spec("go", [prom, unreachable])
        go = run_deploy(lab, go_spec, "prom-good", "--ignore-metrics-unavailable")
    assert go.returncode == 0, story(go)
    windows = of(go, "analysis_window")
    assert [w["verdict"] for w in windows] == ["pass"] * 3, story(go)
    for w in windows:
        assert w["reason"].startswith("every gate passed (unavailable metrics ignored: ")
        judged, ignored = w["gates"]
        assert (judged["gate"], judged["verdict"], judged["value"]) == \
            ("prometheus.max", "pass", 0.0)
        assert "ignored" not in judged and 'server=~"app01"' in judged["detail"]
        assert (ignored["gate"], ignored["verdict"], ignored.get("ignored")) == \
            ("prometheus", "inconclusive", True)
    warned = of(go, "metrics_unavailable")
    assert len(warned) == len(windows)
    assert all(w["gate"] == "prometheus" and down in w["detail"] for w in warned)
    # Journaled (what `rollout status` and an audit read), not only printed.
    journal = StateDir(go_spec.parent / ".rollout").get(go.events[0]["deploy_id"]).events()
    assert len([e for e in journal if e.kind == "metrics_unavailable"]) == len(warned)
    assert go.load.failed == 0, go.load.failures
    assert_whole(lab, "prom-good")


def test_kill_9_during_a_weighted_step_then_resume_restores_every_weight(
        lab: Layout, fleet: str, tmp_path: Path) -> None:
    """The controller is killed (SIGKILL) once the 10 % weights are journaled and set: the LB
    keeps them. `rollout resume` restores exactly the recorded weights first, replays the
    canary steps and rolls the rest: succeeded, no request failed."""
    spec = canary_spec(lab, tmp_path / "rollout.yml",
                       [{"traffic": "10%"}, {"analysis": {"duration": 2}}])

    def kill(event: dict[str, Any]) -> None:
        os.kill(CURRENT["pid"], signal.SIGKILL)  # the controller this test started

    run = run_deploy(lab, spec, "resumed", hooks={"weights_set": kill})
    assert run.returncode == -signal.SIGKILL and run.result is None
    [recorded] = of(run, "weights_recorded")
    [shaped] = of(run, "weights_set")
    record = StateDir(spec.parent / ".rollout").get()
    assert not record.closed()
    kinds = [e.kind for e in record.events()]  # journaled: the set weight, no restore
    assert "weights_set" in kinds and "weights_restored" not in kinds
    # The dead controller left the canary's weights on the LB.
    assert live_weights(lab) == shaped["weights"] != recorded["weights"]

    resumed = run_deploy(lab, spec, "", command="resume")
    assert resumed.returncode == 0, story(resumed)
    assert resumed.load.failed == 0 and run.load.failed == 0, resumed.load.failures
    assert of(resumed, "deploy_resumed")
    restores = of(resumed, "weights_restored")
    assert [(r["step"], r["weights"], r["failed"]) for r in restores] == \
        [(0, recorded["weights"], {}), (4, recorded["weights"], {})]
    assert not of(resumed, "weights_recorded")  # the journaled record, not today's weights
    [again] = of(resumed, "weights_set")  # the canary step replayed from its start
    assert again["weights"] == shaped["weights"] and restores[0]["seq"] < again["seq"]
    assert [(f["step"], f["verdict"]) for f in of(resumed, "analysis_finished",
                                                   purpose="canary")] == [(3, "pass")]
    assert [b["batch"] for b in of(resumed, "batch_started")] == [2, 3]
    assert live_weights(lab) == recorded["weights"]
    assert record.closed()
    assert_whole(lab, "resumed")


def test_a_host_of_batch_1_turning_bad_while_batch_3_runs_fails_the_deploy_naming_it(
        lab: Layout, fleet: str, tmp_path: Path) -> None:
    """A release good for 20 s after it starts, then 500 on every request (/health stays
    200): the canary (app01) passes its analysis, batch 2 (app02) rolls, batch 3 (app03,
    app04) starts and its upgrade is held (the test playbook pauses batch 3 for up to 120 s,
    until the deploy cancels it). app01 turns bad ~20 s after its start, while batch 3 is
    held for certain (it started ~8 s after app01's start and holds for 120 s); app02 turns
    bad only ~8 s later than app01. The continuous watch judges each done host against the old
    ones, names app01, and the deploy rolls back the running batch and app01's batch
    (on_failure rollback_batch: batch 2 keeps the release)."""
    spec = canary_spec(lab, tmp_path / "rollout.yml",
                       [{"traffic": "10%"}, {"analysis": {"duration": 4}}],
                       batches=[1, "50%", "100%"], playbook=str(SLOW_PLAYBOOK),
                       vars={"slow_batch": 3, "slow_seconds": 120},
                       on_failure="rollback_batch")
    run = run_deploy(lab, spec, "turns-bad", timeout=200)
    assert run.returncode == 1, story(run)
    assert run.result is not None and run.result["status"] == "rolled_back"
    assert of(run, "deploy_started")[0]["batches"] == [["app01"], ["app02"],
                                                       ["app03", "app04"], ["app05", "app06"]]
    assert [(f["step"], f["verdict"]) for f in of(run, "analysis_finished", purpose="canary")] \
        == [(3, "pass")]
    [caught] = of(run, "analysis_finished", purpose="watch")
    assert (caught["verdict"], caught["hosts"]) == ("fail", ["app01"])
    assert "app01 (batch 1)" in caught["cause"]
    # While batch 3 ran: started (its upgrade running), not finished, batch 4 never began.
    [started3] = of(run, "step_started", batch=3, step="upgrade")
    assert started3["seq"] < caught["seq"]
    assert not of(run, "batch_succeeded", batch=3) and not of(run, "batch_started", batch=4)
    [upgrade3] = of(run, "step_finished", batch=3, step="upgrade")
    assert not upgrade3["ok"] and upgrade3["seq"] > caught["seq"]  # cancelled by the watch
    [window] = [w for w in of(run, "analysis_window", purpose="watch")
                if w["verdict"] == "fail"]
    assert window["canary"] == ["app01"] and "error_rate.max" in failed_gates(window)
    # Rolled back per on_failure: the running batch, and the batch of the host named.
    assert [(b["batch"], b["failure"]) for b in of(run, "batch_failed")] == \
        [(3, "analysis"), (1, "analysis")]
    assert all("app01 (batch 1)" in b["cause"] for b in of(run, "batch_failed"))
    assert [r["batch"] for r in of(run, "rollback_started")] == [3, 1]
    assert "app01" in (run.result["cause"] or "")
    assert [b["outcome"] for b in run.result["batches"]] == \
        ["rolled_back", "succeeded", "rolled_back", "not_started"]
    # The clients' failures: 500s of the release; app01's from its turn until its rollback
    # drained it; none from app02 before the watch named app01 (app02 turns bad later, and,
    # kept by rollback_batch, serves 500s from then on until the load stops).
    failed = failures(run)
    assert {(r.status, r.version) for r in failed} == {(500, "turns-bad")}
    [drained] = [r["ts"] for r in of(run, "rollback_started", batch=1)]
    app01 = [r for r in failed if r.served_by == "app01"]
    assert app01 and all(r.sent_at <= drained + 0.1 for r in app01)
    assert {r.served_by for r in failed} <= {"app01", "app02"}
    assert all(r.sent_at > caught["ts"] for r in failed if r.served_by == "app02")
    assert_whole(lab, fleet, app02="turns-bad")
