"""rollout_py against a plain-Ansible rolling update, side by side on the same lab and role.

Run as root:  .venv/bin/python benchmarks/rolling.py [--hosts 4] [--rounds 2]

Both do the same work per batch (serial 1, 50%, 100%): drain on every LB and wait for sessions,
MAINT, the app_release role, a health probe, back in rotation. Rounds alternate the two so that
machine noise hits both; each round deploys a new version. The table prints the mean wall time
of each, their ratio, and rollout_py's time per batch beyond its Ansible run (drain, probes, LB
calls).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rollout_py
from rollout_py import events as ev
from rollout_py.lab import artifact, lab
from rollout_py.resources import playbook

ROOT = Path(__file__).resolve().parents[1]


def plain(layout: lab.Layout, version: str) -> float:
    sockets = [{"socket": lb.socket_path, "delegate": lb.host or "localhost"}
               for lb in layout.lbs]
    env = os.environ | {"ANSIBLE_CONFIG": str(layout.path / "ansible.cfg"),
                        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    start = time.monotonic()
    subprocess.run(["ansible-playbook", str(playbook("rolling_plain.yml")),
                    "-e", f"rollout_version={version}",
                    "-e", json.dumps({"rolling_lb_sockets": sockets})],
                   env=env, check=True, capture_output=True, text=True)
    return time.monotonic() - start


def engine(layout: lab.Layout, version: str) -> tuple[float, list[float]]:
    spec = rollout_py.load_spec(layout.path / "rollout.yml")
    seen: list[ev.Event] = []
    start = time.monotonic()
    result = rollout_py.deploy(spec, version=version, on_event=seen.append,
                               install_signal_handlers=False)
    wall = time.monotonic() - start
    if result.status != "succeeded":
        raise SystemExit(f"rollout_py deploy {version} failed: {result.cause}")
    overhead = []
    for e in seen:
        if isinstance(e, ev.BatchSucceeded):
            overhead.append(e.durations["total"] - e.durations["upgrade"])
    return wall, overhead


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rollout-bench-") as tmp:
        layout = lab.up(Path(tmp) / "lab", n_hosts=args.hosts, n_lbs=2)
        try:
            plain_s, engine_s, overhead = [], [], []
            for i in range(args.rounds):
                for v in (f"{i}.1", f"{i}.2"):
                    artifact.build_artifact(layout.artifacts, v)
                plain_s.append(plain(layout, f"{i}.1"))
                wall, per_batch = engine(layout, f"{i}.2")
                engine_s.append(wall)
                overhead += per_batch
        finally:
            lab.down(layout.path)
    p, e = statistics.mean(plain_s), statistics.mean(engine_s)
    print(f"hosts {args.hosts}, 2 LBs, batches [1, 50%, 100%], {args.rounds} rounds")
    print(f"{'':<28}{'wall s':>8}")
    print(f"{'plain Ansible (serial)':<28}{p:>8.1f}")
    print(f"{'rollout_py':<28}{e:>8.1f}")
    print(f"{'ratio rollout_py / plain':<28}{e / p:>8.2f}")
    print(f"{'rollout_py per batch beyond Ansible':<28} {statistics.mean(overhead):.2f} s "
          f"(min {min(overhead):.2f}, max {max(overhead):.2f})")


if __name__ == "__main__":
    main()
