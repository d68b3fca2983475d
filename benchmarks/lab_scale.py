"""Lab start-up cost by fleet size: wall time of `up` and `down`, memory of the lab's processes.

Run as root:  .venv/bin/python benchmarks/lab_scale.py [--sizes 4,20,100]
Memory is the summed PSS (proportional set size) of every process the lab runs: each host's
sshd and app, and HAProxy.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rollout_py.lab import lab, net
from rollout_py.lab.layout import Layout


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def lab_pids(layout: Layout) -> set[int]:
    pids = {int(p["pid"]) for p in layout.procs.values()}
    for host in layout.all_hosts:
        pids.update(net.netns_pids(host.netns))
    return pids


def measure(n_hosts: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="rollout-bench-") as tmp:
        lab_dir = Path(tmp) / "lab"
        start = time.monotonic()
        layout = lab.up(lab_dir, n_hosts=n_hosts)
        up_s = time.monotonic() - start
        try:
            pids = lab_pids(layout)
            pss = sum(pss_kib(pid) for pid in pids) / 1024
        finally:
            start = time.monotonic()
            lab.down(lab_dir)
            down_s = time.monotonic() - start
    return {"hosts": n_hosts, "up_s": up_s, "down_s": down_s, "procs": len(pids),
            "pss_mib": pss, "per_host_mib": pss / n_hosts, "up_s_per_host": up_s / n_hosts}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="4,20,100")
    args = parser.parse_args()
    rows = [measure(int(n)) for n in args.sizes.split(",")]
    print(f"{'hosts':>5} {'up s':>7} {'s/host':>7} {'down s':>7} {'procs':>6} "
          f"{'PSS MiB':>8} {'MiB/host':>8}")
    for r in rows:
        print(f"{r['hosts']:>5} {r['up_s']:>7.1f} {r['up_s_per_host']:>7.3f} {r['down_s']:>7.1f} "
              f"{r['procs']:>6} {r['pss_mib']:>8.0f} {r['per_host_mib']:>8.1f}")


if __name__ == "__main__":
    main()
