"""The README's main job: bring the local lab up and show it serving through HAProxy."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rollout_py.errors import RolloutError
from rollout_py.lab import lab
from rollout_py.lab.load import LoadGenerator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rollout_py.demo")
    parser.add_argument("--dir", type=Path, default=Path(".rollout-lab"))
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--rps", type=float, default=200)
    parser.add_argument("--duration", type=float, default=10)
    args = parser.parse_args(argv)
    try:
        layout = lab.up(args.dir, n_hosts=args.hosts, n_lbs=2, say=print)
        for lb in layout.lbs:
            url = f"http://127.0.0.1:{lb.port}/"
            print(f"\n== {args.rps:g} requests/s for {args.duration:g} s through {lb.name} ({url})")
            summary = LoadGenerator(url, rps=args.rps, duration=args.duration).run()
            print(f"{summary.sent} requests, {summary.failed} failed; "
                  f"p50 {summary.p50_ms:.1f} ms, p99 {summary.p99_ms:.1f} ms")
            print("served by: " + ", ".join(f"{h} {n}" for h, n in summary.by_host.items()))
        print("\n== lab state")
        for host in lab.status(args.dir)["hosts"]:
            print(f"{host['name']}  {host['address']}  version {host['version']}")
        print(f"\nThe lab stays up. Drive it by hand:\n"
              f"  .venv/bin/rollout lab status --dir {args.dir}\n"
              f"  .venv/bin/rollout lab load --dir {args.dir} --rps 300 --duration 20\n"
              f"  ssh -F {args.dir}/ssh/ssh_config app01\n"
              f"  .venv/bin/rollout lab down --dir {args.dir}")
        return 0
    except RolloutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
