"""The README's main job: a live rolling deploy 1.0 -> 2.0 on the local lab, under load."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import rollout_py
from rollout_py.atomic import write_atomic
from rollout_py.errors import RolloutError
from rollout_py.lab import artifact, lab
from rollout_py.lab.load import LoadGenerator
from rollout_py.lab.watch import Watcher
from rollout_py.report import console_sink, result_lines
from rollout_py.report_data import record_report
from rollout_py.report_html import render
from rollout_py.state import StateDir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rollout_py.demo")
    parser.add_argument("--dir", type=Path, default=Path(".rollout-lab"))
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--rps", type=float, default=200)
    args = parser.parse_args(argv)
    try:
        # A fresh lab every time, so the demo always starts from 1.0.
        lab.down(args.dir)
        layout = lab.up(args.dir, n_hosts=args.hosts, n_lbs=2, say=print)
        artifact.build_artifact(layout.artifacts, "2.0")
        spec = rollout_py.load_spec(layout.path / "rollout.yml")
        front = f"http://127.0.0.1:{layout.lbs[0].port}/"
        print(f"\n== rolling 1.0 -> 2.0 across {args.hosts} hosts, two HAProxy LBs, "
              f"while {args.rps:g} requests/s go through {front}")
        load = LoadGenerator(front, rps=args.rps, duration=3600).start()
        watcher = Watcher.for_lab(layout).start()
        try:
            result = rollout_py.deploy(spec, version="2.0",
                                       sinks=[console_sink(sys.stdout, verbose=True)])
        finally:
            watched = watcher.stop()
            summary = load.stop()
        print("\n".join(result_lines(result)))
        print(f"\n{summary.sent} requests, {summary.failed} failed "
              f"(p50 {summary.p50_ms:.1f} ms, p99 {summary.p99_ms:.1f} ms); served by version: "
              + ", ".join(f"{v} {n}" for v, n in summary.by_version.items()))
        records, page = args.dir / "watch.jsonl", args.dir / "report.html"
        watched.write_records(records)
        record = StateDir(spec.state_path()).get(result.deploy_id)
        write_atomic(page, render(record_report(record, watch=records)))
        print(f"\nthe deploy's report (open it in a browser): {page.absolute()}")
        print("\n== lab state")
        for host in lab.status(args.dir)["hosts"]:
            print(f"{host['name']}  {host['address']}  version {host['version']}")
        print(f"\nThe lab stays up. Drive it by hand:\n"
              f"  .venv/bin/rollout lab status --dir {args.dir}\n"
              f"  .venv/bin/rollout lab artifact 3.0 --dir {args.dir}\n"
              f"  .venv/bin/rollout deploy -f {args.dir}/rollout.yml --version 3.0\n"
              f"  .venv/bin/rollout report -f {args.dir}/rollout.yml --html report.html\n"
              f"  .venv/bin/rollout lab down --dir {args.dir}")
        return 0 if result.status == "succeeded" and summary.failed == 0 else 1
    except RolloutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
