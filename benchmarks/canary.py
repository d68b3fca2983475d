"""A bad release under constant load: how fast the canary's analysis catches it and how many
requests users see fail, against the traffic share and the window interval; beside the same
release under a plain rolling deploy without gates (what users see when nothing catches it).

Run as root:  .venv/bin/python benchmarks/canary.py [--rounds 5] [--budget 660]

One lab (6 hosts, one LB) of its own, in a temporary directory, on the next free lab index
(bridge rlabN) of the default block, so a lab the tests run at the same time is left alone;
brought down at the end, also on a failure or SIGTERM. The release answers 500 on a share
(--error-rate) of `/`; its /health stays 200, so only the analysis of requests can catch it.
Load: open-loop, --rps through the LB on 127.0.0.1, from 1 s before the deploy until it exits.

Canary specs are the lab's rollout-canary.yml without `stage`, with one traffic step (the
share), one analysis step of --analysis seconds, the interval, and min_requests = half the
canary's expected requests per window (at least 10; --min-requests fixes it); gates as the
lab writes them. Rolling: the lab's rollout.yml without `stage` (batches 1, 50%, 100%, no
gates); after each of its runs the fleet is deployed back to 1.0, without load. Rounds
alternate the configurations; a round past --min-rounds starts only if it is expected to
end within --budget seconds.
Columns:
  detect s   from the canary's first traffic step (WeightsSet) to AnalysisFinished (fail)
  windows    the windows the canary step judged (it stops at the failure); inconclusive: its
             held windows, summed over rounds
  by watch   runs where the continuous watch's failure came first (0 since the watch takes a
             canary over only after its steps)
  failed     failed requests in the load summary (min/median/max over rounds)
  bound      share x error_rate x interval x rps: the failures expected in one window
  gates      the gates that failed the deciding window (in how many runs)
  after      failed requests sent after the verdict (during the rollback), summed over rounds
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rollout_py.lab import artifact, lab
from rollout_py.lab.artifact import Behaviour
from rollout_py.lab.layout import Layout
from rollout_py.lab.load import LoadGenerator

BIN = Path(sys.executable).parent
GOOD = "1.0"  # the version `lab up` installs


@dataclass(frozen=True)
class Config:
    share: float  # 0..1; 1.0 with interval 0: the rolling reference
    interval: float

    @property
    def rolling(self) -> bool:
        return self.interval == 0

    def min_requests(self, args: argparse.Namespace) -> int:
        fixed: int | None = args.min_requests
        return fixed or max(10, round(0.5 * self.share * args.rps * self.interval))

    def name(self) -> str:
        return "rolling, no gates" if self.rolling else \
            f"canary {self.share:.0%}, {self.interval:g} s"


@dataclass
class Run:
    status: str
    wall: float
    sent: int
    failed: int
    detect: float | None = None
    windows: int = 0
    inconclusive: int = 0
    after: int = 0  # failures sent after the verdict
    before: int = 0  # failures sent before the first traffic step
    gates: list[str] = field(default_factory=list)
    judge: str = ""  # whose AnalysisFinished (fail) came first: "canary" (the step) or "watch"


def spec_variant(layout: Layout, cfg: Config, root: Path, args: argparse.Namespace) -> Path:
    """The lab's spec (canary or rolling) without `stage`, paths made absolute, in a dir of
    its own (its own state dir)."""
    source = "rollout.yml" if cfg.rolling else "rollout-canary.yml"
    spec: dict[str, Any] = yaml.safe_load((layout.path / source).read_text())
    spec.pop("stage", None)
    spec["inventory"] = str(layout.path / "inventory.ini")
    spec["haproxy"]["ssh_config"] = str(layout.path / "ssh" / "ssh_config")
    if not cfg.rolling:
        spec["canary"]["steps"] = [{"traffic": f"{cfg.share * 100:g}%"},
                                   {"analysis": {"duration": args.analysis}}]
        spec["analysis"]["interval"] = cfg.interval
        spec["analysis"]["min_requests"] = cfg.min_requests(args)
    where = root / f"spec-{'rolling' if cfg.rolling else f'{cfg.share:g}-{cfg.interval:g}'}"
    where.mkdir(parents=True, exist_ok=True)
    (where / "rollout.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return where / "rollout.yml"


def deploy(spec: Path, version: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`rollout deploy --json` in a process of its own: its events and its result."""
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.Popen([str(BIN / "rollout"), "deploy", "-f", str(spec), "--version",
                             version, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=spec.parent)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:  # interrupted or timed out: stop our deploy, by its PID
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    events = [e for e in lines if "event" in e]
    result = next((e["result"] for e in lines if "result" in e), None)
    if result is None:
        raise SystemExit(f"deploy {version}: no result (exit {proc.returncode}):\n{err[-3000:]}")
    return events, result


def measure(layout: Layout, spec: Path, cfg: Config, version: str, rps: float) -> Run:
    url = f"http://127.0.0.1:{layout.lbs[0].port}/"
    gen = LoadGenerator(url, rps=rps, duration=3600).start()
    try:
        time.sleep(1.0)
        start = time.monotonic()
        events, result = deploy(spec, version)
        wall = time.monotonic() - start
    finally:
        summary = gen.stop()
    run = Run(result["status"], wall, summary.sent, summary.failed)
    first = next((e["ts"] for e in events if e["event"] == "weights_set"), None)
    # The first failed analysis: the canary step's, or the continuous watch's (purpose
    # "watch"), which judges the canary batch too once it is back in rotation.
    end = next((e for e in events if e["event"] == "analysis_finished"
                and e["verdict"] == "fail"), None)
    if end is not None and first is not None:
        run.detect, run.judge = end["ts"] - first, end["purpose"]
        windows = [e for e in events if e["event"] == "analysis_window"
                   and e["purpose"] == "canary"]  # the step stops at the failure
        run.windows = len(windows)
        run.inconclusive = sum(w["verdict"] == "inconclusive" for w in windows)
        deciding = [e for e in events if e["event"] == "analysis_window"
                    and e["purpose"] == end["purpose"] and e["verdict"] == "fail"]
        run.gates = sorted({g["gate"] for g in deciding[0]["gates"] if g["verdict"] == "fail"})
        sent = [r.sent_at for r in summary.records if not r.ok]
        run.after = sum(t > end["ts"] for t in sent)
        run.before = sum(t < first for t in sent)
    return run


def restore(spec: Path) -> None:
    """The whole fleet back on the good version (after a release that was not caught)."""
    _, result = deploy(spec, GOOD)
    if result["status"] != "succeeded":
        raise SystemExit(f"could not restore the fleet to {GOOD}: {result.get('cause')}")


def stats(values: list[float], fmt: str) -> str:
    if not values:
        return "—"
    lo, mid, hi = min(values), statistics.median(values), max(values)
    return f"{lo:{fmt}} / {mid:{fmt}} / {hi:{fmt}}"


def gates(rs: list[Run]) -> str:
    """Which gates failed the deciding window, in how many runs."""
    seen = Counter(g.removeprefix("error_rate.") for r in rs for g in r.gates)
    return ", ".join(f"{g} ({n})" for g, n in sorted(seen.items())) or "—"


def table(runs: dict[Config, list[Run]], args: argparse.Namespace) -> str:
    head = ("| deploy | share | interval s | min_requests | rounds | detect s (min / med / max) "
            "| windows (min / med / max) | inconclusive | failed (min / med / max) "
            "| bound | failed ÷ bound (med) | after verdict | by watch | gates that failed "
            "| deploy s (med) |")
    rows = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for cfg, rs in runs.items():
        failed = [float(r.failed) for r in rs]
        wall = statistics.median(r.wall for r in rs) if rs else 0.0
        if cfg.rolling:
            rows.append(f"| {cfg.name()} | 100% | — | — | {len(rs)} | — | — | — | "
                        f"{stats(failed, '.0f')} | — | — | — | — | — | {wall:.1f} |")
            continue
        bound = cfg.share * args.error_rate * cfg.interval * args.rps
        caught = [r for r in rs if r.detect is not None]
        rows.append(
            f"| canary | {cfg.share:.0%} | {cfg.interval:g} | {cfg.min_requests(args)} | "
            f"{len(rs)} | {stats([r.detect for r in caught if r.detect is not None], '.1f')} | "
            f"{stats([float(r.windows) for r in caught], '.0f')} | "
            f"{sum(r.inconclusive for r in rs)} | {stats(failed, '.0f')} | {bound:.1f} | "
            f"{statistics.median(failed) / bound if failed else 0:.1f} | "
            f"{sum(r.after for r in rs)} | {sum(r.judge == 'watch' for r in rs)} | {gates(rs)} | "
            f"{wall:.1f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-rounds", type=int, default=2)
    parser.add_argument("--budget", type=float, default=660,
                        help="Seconds: a round past --min-rounds starts only if it fits.")
    parser.add_argument("--rps", type=float, default=200)
    parser.add_argument("--error-rate", type=float, default=0.05)
    parser.add_argument("--shares", default="5,10,25", help="Canary traffic shares, in %%.")
    parser.add_argument("--intervals", default="2,5", help="Analysis window intervals, s.")
    parser.add_argument("--analysis", type=float, default=30,
                        help="Seconds of passing windows the analysis step needs.")
    parser.add_argument("--min-requests", type=int, default=None,
                        help="A fixed min_requests (default: half the expected, at least 10).")
    parser.add_argument("--hosts", type=int, default=6)
    parser.add_argument("--json", type=Path, default=None, help="Also write every run here.")
    args = parser.parse_args()
    configs = [Config(float(s) / 100, float(i)) for s in args.shares.split(",")
               for i in args.intervals.split(",")] + [Config(1.0, 0)]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the lab comes down
    started = time.monotonic()
    load_before = os.getloadavg()
    runs: dict[Config, list[Run]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory(prefix="rollout-canary-bench-") as tmp:
        layout = lab.up(Path(tmp) / "lab", n_hosts=args.hosts, n_lbs=1)
        print(f"lab rlab{layout.index} on {layout.subnet} in {tmp}", file=sys.stderr)
        try:
            specs = {c: spec_variant(layout, c, Path(tmp), args) for c in configs}
            n = 0
            for rnd in range(args.rounds):
                spent = time.monotonic() - started
                if rnd >= args.min_rounds and spent / rnd * (rnd + 1) > args.budget:
                    print(f"round {rnd + 1} skipped: would pass the {args.budget:g} s budget",
                          file=sys.stderr)
                    break
                for cfg in configs[rnd % len(configs):] + configs[:rnd % len(configs)]:
                    n += 1
                    version = f"bad{n}"
                    artifact.build_artifact(layout.artifacts, version,
                                            Behaviour(error_rate=args.error_rate))
                    run = measure(layout, specs[cfg], cfg, version, args.rps)
                    runs[cfg].append(run)
                    print(f"round {rnd + 1} {cfg.name():<22} {run.status:<12} "
                          f"detect {run.detect if run.detect is None else round(run.detect, 2)} "
                          f"windows {run.windows} (held {run.inconclusive}) failed {run.failed}/"
                          f"{run.sent} (before {run.before}, after {run.after}) "
                          f"{','.join(run.gates)} {run.judge} {run.wall:.1f} s", file=sys.stderr)
                    if run.status == "succeeded":  # the bad release is on the whole fleet
                        restore(specs[Config(1.0, 0)])
        finally:
            lab.down(layout.path)
    rounds = min(len(r) for r in runs.values())
    print(f"\n{args.hosts} hosts, 1 LB, {args.rps:g} rps open-loop on loopback, release "
          f"error rate {args.error_rate:.0%}, {rounds} rounds alternating, "
          f"{time.monotonic() - started:.0f} s in all; load average "
          f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    print(table(runs, args))
    missed = [c.name() for c, rs in runs.items() if not c.rolling
              and any(r.detect is None for r in rs)]
    before = sum(r.before for c, rs in runs.items() for r in rs)
    print(f"\nfailed before the canary's first traffic step (at its full weight): {before}; "
          f"an uncaught release fails {args.error_rate * args.rps:g} requests/s after the "
          "rolling deploy ends, until someone acts")
    if missed:
        print(f"\nnot caught in some round: {', '.join(missed)}")
    if args.json:
        args.json.write_text(json.dumps([{"config": c.name(), **r.__dict__}
                                         for c, rs in runs.items() for r in rs], indent=2))


if __name__ == "__main__":
    main()
