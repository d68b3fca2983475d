"""Rollouts at growing fleet sizes: rollout_py (staged, and not staged) against the plain-Ansible
rolling update, on the same lab and role, measured side by side in one run.

Run as root:  .venv/bin/python benchmarks/scale.py [--sizes 8,20,100]

Per size, a fresh lab (2 LBs); each rollout deploys a new version with batches [1, 50%, 100%].
Columns:
  wall        seconds for the whole rollout (rollout_py: from the API call, in its own process)
  ctl cpu     CPU seconds of the controller process itself (ansible runs excluded)
  ansible cpu CPU seconds of the ansible processes it started
  ctl rss     peak RSS of the controller process (MiB)
  ratio       wall / plain-Ansible wall
  eff         floor / wall, floor = the Ansible runs (stage + each batch's run) + drain waits +
              soak: the work any tool must wait for; the rest is rollout_py's own overhead
  overhead    wall - floor (seconds)
  out mean/max seconds each server spent out of rotation (sampled on every LB at 10 Hz)

After each rollout_py run it prints where that time went, per segment (rollout_py.timeline:
drain, disable, Ansible's start, the first task, the other tasks, probes, enable), from the
deploy's journal and ansible-runner's artifacts in the spec's state directory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rollout_py import load_spec
from rollout_py.lab import artifact, lab
from rollout_py.lab.watch import Watcher
from rollout_py.resources import playbook
from rollout_py.state import StateDir
from rollout_py.timeline import record_timelines, render_table, summarize

HERE = Path(__file__).resolve().parent


def out_of_rotation(summary: Any, servers: list[str]) -> tuple[float, float]:
    times = [summary.total_out_seconds(s) for s in servers]
    return sum(times) / len(times), max(times)


def plain(layout: lab.Layout, version: str) -> dict[str, Any]:
    sockets = [{"socket": lb.socket_path, "delegate": lb.host or "localhost"}
               for lb in layout.lbs]
    env = os.environ | {"ANSIBLE_CONFIG": str(layout.path / "ansible.cfg"),
                        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    start = time.monotonic()
    proc = subprocess.run(["ansible-playbook", "--forks", "50", str(playbook("rolling_plain.yml")),
                           "-e", f"rollout_version={version}",
                           "-e", json.dumps({"rolling_lb_sockets": sockets})],
                          env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"plain rolling update failed:\n{proc.stdout[-2000:]}")
    return {"wall": wall}


def breakdown(spec_path: Path) -> tuple[str, dict[str, dict[str, float]]]:
    """The last deploy's time out of rotation per segment: the table, and its numbers."""
    summary = summarize(record_timelines(StateDir(load_spec(spec_path).state_path()).get()))
    numbers = {s.segment: {"mean": s.mean, "max": s.max, "share": s.share}
               for s in summary.segments}
    return render_table(summary, tasks=5), numbers


def engine(layout: lab.Layout, version: str, staged: bool) -> dict[str, Any]:
    args = [sys.executable, str(HERE / "deploy_once.py"), str(layout.path / "rollout.yml"),
            version] + ([] if staged else ["--no-stage"])
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"deploy failed:\n{proc.stderr[-3000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    if data["status"] != "succeeded":
        raise SystemExit(f"deploy {version} did not succeed: {data['status']}")
    ansible = drains = soak = 0.0
    for e in data["events"]:
        if e["event"] == "step_finished" and e["step"] in ("stage", "upgrade"):
            ansible += e["duration"]
        if e["event"] == "batch_succeeded":
            drains += e["durations"].get("drain", 0.0)
            soak += e["durations"].get("soak", 0.0)
    data["floor"] = ansible + drains + soak
    table, data["out_segments"] = breakdown(layout.path / "rollout.yml")
    print(f"{len(layout.app_hosts)} hosts, rollout_py {'staged' if staged else 'no stage'}: "
          f"time out of rotation per host (s)\n{table}\n", flush=True)
    return data


def measure(size: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="rollout-scale-") as tmp:
        layout = lab.up(Path(tmp) / "lab", n_hosts=size, n_lbs=2)
        servers = [h.name for h in layout.app_hosts]
        try:
            for v in ("p1", "e1", "e2"):
                artifact.build_artifact(layout.artifacts, v)
            for name, version, run in (
                    ("plain Ansible", "p1", lambda v: plain(layout, v)),
                    ("rollout_py, no stage", "e1", lambda v: engine(layout, v, staged=False)),
                    ("rollout_py, staged", "e2", lambda v: engine(layout, v, staged=True))):
                with Watcher.for_lab(layout) as watcher:
                    data = run(version)
                summary = watcher.summary
                data["out_mean"], data["out_max"] = out_of_rotation(summary, servers)
                data["name"], data["size"] = name, size
                rows.append(data)
        finally:
            lab.down(layout.path)
    base = rows[0]["wall"]
    for r in rows:
        r["ratio"] = r["wall"] / base
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="8,20,100")
    parser.add_argument("--json", type=Path, default=None, help="Also write the rows here.")
    args = parser.parse_args()
    rows = [r for size in args.sizes.split(",") for r in measure(int(size))]
    head = (f"{'hosts':>5}  {'rollout':<22}{'wall':>7}{'ratio':>7}{'eff':>6}{'overhead':>9}"
            f"{'ctl cpu':>8}{'ansible cpu':>12}{'ctl rss':>8}{'out mean':>9}{'out max':>8}")
    print(head)
    for r in rows:
        eng = "floor" in r
        print(f"{r['size']:>5}  {r['name']:<22}{r['wall']:>7.1f}{r['ratio']:>7.2f}"
              + (f"{r['floor'] / r['wall']:>6.0%}{r['wall'] - r['floor']:>9.1f}"
                 f"{r['self_cpu']:>8.1f}{r['children_cpu']:>12.1f}{r['self_maxrss_mb']:>8.0f}"
                 if eng else f"{'':>6}{'':>9}{'':>8}{'':>12}{'':>8}")
              + f"{r['out_mean']:>9.1f}{r['out_max']:>8.1f}")
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in r.items() if k != "events"}
                                         for r in rows], indent=2))


if __name__ == "__main__":
    main()
