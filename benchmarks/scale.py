"""Rollouts at growing fleet sizes: rollout_py (staged, and not staged; and staged through two
execution nodes) against the plain-Ansible rolling update, on the same lab and role, measured
side by side in one run.

Run as root:  .venv/bin/python benchmarks/scale.py [--sizes 8,20,100] [--rounds 3]
                  [--configs plain,nostage,staged,nodes] [--load RPS] [--json out.json]

Per size, a fresh lab (2 LBs); each rollout deploys a new version with batches [1, 50%, 100%].
This machine is noisy, so every configuration runs ``--rounds`` times (default 3) on that lab,
alternating: plain, no stage, staged, plain, no stage, staged, ... (``--configs`` picks a subset,
e.g. only ``staged``). The table gives, per size and configuration, the median over the rounds
of each column, and for wall, ratio and out mean also the min-max; quote the median.
Columns:
  wall        seconds for the whole rollout (rollout_py: from the API call, in its own process)
  ratio       wall / plain-Ansible wall of the same round (blank without plain)
  eff         floor / wall, floor = the Ansible runs (stage + each batch's run) + drain waits +
              soak: the work any tool must wait for; the rest is rollout_py's own overhead
  overhead    wall - floor (seconds)
  ctl cpu     CPU seconds of the controller process itself (ansible runs excluded)
  ansible cpu CPU seconds of the ansible processes it started (with ``nodes`` the Ansible
              work runs on the lab's execution nodes, exec1 and exec2, and is not counted)
  node cpu    with ``nodes``: CPU seconds of the execution nodes' workers and their Ansible
  ctl rss     peak RSS of the controller process (MiB)
  out mean/max seconds each server spent out of rotation (sampled on every LB at 10 Hz)
  sent/failed with --load RPS: requests sent through the first LB during the rollout, and how
              many failed (e.g. 200 hosts under load: --sizes 200 --configs staged --load 100)

Per size, for the median-wall round of each rollout_py configuration (the lower median for an
even number of rounds), it prints where the time out of rotation went, per segment
(rollout_py.timeline: drain, disable, Ansible's start, the first task, the other tasks, probes,
enable), from the deploy's journal and ansible-runner's artifacts in the spec's state directory.
``--json`` writes every round's row and the summary.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from rollout_py import load_spec
from rollout_py.lab import artifact, lab
from rollout_py.lab.layout import Layout
from rollout_py.lab.load import LoadGenerator
from rollout_py.lab.watch import Watcher
from rollout_py.lab.watch_summary import WatchSummary
from rollout_py.resources import playbook
from rollout_py.state import StateDir
from rollout_py.timeline import record_timelines, render_table, summarize

HERE = Path(__file__).resolve().parent
DASH = "\N{EN DASH}"  # between min and max in the table

Row = dict[str, Any]


def out_of_rotation(summary: WatchSummary, servers: list[str]) -> tuple[float, float]:
    times = [summary.total_out_seconds(s) for s in servers]
    return sum(times) / len(times), max(times)


def plain(layout: Layout, version: str) -> Row:
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
    numbers: dict[str, dict[str, float]] = {
        s.segment: {"mean": s.mean, "max": s.max, "share": s.share} for s in summary.segments}
    return render_table(summary, tasks=5), numbers


def node_cpu(layout: Layout) -> float:
    """CPU seconds used so far under the execution nodes' sshd (each process's own and its
    reaped children's: the workers and their Ansible), summed over the nodes."""
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            stats[int(entry)] = text.rsplit(")", 1)[1].split()
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)
    ticks = 0
    todo = [layout.procs[f"sshd:{h.name}"]["pid"] for h in layout.exec_hosts]
    while todo:
        pid = todo.pop()
        fields = stats.get(pid)
        if fields:  # utime, stime, cutime, cstime
            ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))
        todo.extend(children.get(pid, []))
    return ticks / os.sysconf("SC_CLK_TCK")


LOCAL_SPEC = "rollout-controller.yml"  # the lab's rollout.yml without its executors section


def engine(layout: Layout, version: str, *, staged: bool, nodes: bool = False) -> Row:
    spec = layout.path / ("rollout.yml" if nodes else LOCAL_SPEC)
    args = [sys.executable, str(HERE / "deploy_once.py"), str(spec),
            version] + ([] if staged else ["--no-stage"])
    before = node_cpu(layout)
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"deploy failed:\n{proc.stderr[-3000:]}")
    data: Row = json.loads(proc.stdout.strip().splitlines()[-1])
    if nodes:
        data["node_cpu"] = node_cpu(layout) - before
    if data["status"] != "succeeded":
        cause = next((e.get("cause") for e in reversed(data["events"])
                      if e["event"] == "deploy_finished"), None)
        raise SystemExit(f"deploy {version} did not succeed: {data['status']}: {cause}")
    ansible = drains = soak = 0.0
    for e in data["events"]:
        if e["event"] == "step_finished" and e["step"] in ("stage", "upgrade"):
            ansible += e["duration"]
        if e["event"] == "batch_succeeded":
            drains += e["durations"].get("drain", 0.0)
            soak += e["durations"].get("soak", 0.0)
    data["floor"] = ansible + drains + soak
    data["eff"] = data["floor"] / data["wall"]
    data["overhead"] = data["wall"] - data["floor"]
    data["out_table"], data["out_segments"] = breakdown(spec)
    return data


@dataclass(frozen=True)
class Config:
    key: str  # as given to --configs
    name: str  # as printed
    prefix: str  # of the versions it deploys: prefix + round number
    run: Callable[[Layout, str], Row]


CONFIGS = (
    Config("plain", "plain Ansible", "p", plain),
    Config("nostage", "rollout_py, no stage", "e", partial(engine, staged=False)),
    Config("staged", "rollout_py, staged", "s", partial(engine, staged=True)),
    Config("nodes", "rollout_py, staged, 2 exec nodes", "x",
           partial(engine, staged=True, nodes=True)),
)


def one_round(layout: Layout, config: Config, rnd: int, rps: float = 0.0) -> Row:
    """One rollout of ``config`` (version prefix + round), watched on every LB; with ``rps``,
    under that open-loop load through the first LB (requests sent and failed are counted)."""
    servers = [h.name for h in layout.app_hosts]
    gen = (LoadGenerator(f"http://127.0.0.1:{layout.lbs[0].port}/", rps=rps, duration=86400)
           if rps > 0 else None)
    with Watcher.for_lab(layout) as watcher:
        if gen is not None:
            gen.start()
        try:
            data = config.run(layout, f"{config.prefix}{rnd}")
        finally:
            load = gen.stop() if gen is not None else None
    if load is not None:
        data["load_sent"], data["load_failed"] = load.sent, load.failed
    data["out_mean"], data["out_max"] = out_of_rotation(watcher.stop(), servers)
    data.update(name=config.name, config=config.key, size=len(servers), round=rnd)
    print(f"{len(servers)} hosts, round {rnd}, {config.name}: wall {data['wall']:.1f} s",
          file=sys.stderr, flush=True)
    return data


def add_ratios(rows: list[Row]) -> None:
    """Each row's wall against the plain-Ansible wall of its round (None without plain)."""
    plain_wall = {r["round"]: r["wall"] for r in rows if r["config"] == "plain"}
    for r in rows:
        r["ratio"] = r["wall"] / plain_wall[r["round"]] if r["round"] in plain_wall else None


def measure(size: int, configs: Sequence[Config], rounds: int, rps: float = 0.0) -> list[Row]:
    """Every round of every configuration on one fresh lab, alternating configurations."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="rollout-scale-") as tmp:
        with_nodes = any(c.key == "nodes" for c in configs)
        layout = lab.up(Path(tmp) / "lab", n_hosts=size, n_lbs=2, n_exec=2 if with_nodes else 0)
        try:
            spec = yaml.safe_load((layout.path / "rollout.yml").read_text())
            spec.pop("executors", None)
            (layout.path / LOCAL_SPEC).write_text(yaml.safe_dump(spec, sort_keys=False))
            for config in configs:
                for rnd in range(1, rounds + 1):
                    artifact.build_artifact(layout.artifacts, f"{config.prefix}{rnd}")
            for rnd in range(1, rounds + 1):
                rows.extend(one_round(layout, config, rnd, rps) for config in configs)
        finally:
            lab.down(layout.path)
    add_ratios(rows)
    return rows


def median_round(rows: Sequence[Row]) -> Row:
    """The round with the median wall (the lower one for an even number of rounds)."""
    return sorted(rows, key=lambda r: r["wall"])[(len(rows) - 1) // 2]


def print_breakdowns(rows: Sequence[Row], configs: Sequence[Config]) -> None:
    for config in configs:
        mine = [r for r in rows if r["config"] == config.key]
        if mine and "out_table" in mine[0]:
            r = median_round(mine)
            print(f"{r['size']} hosts, {config.name}, round {r['round']} (median wall): "
                  f"time out of rotation per host (s)\n{r['out_table']}\n", flush=True)


@dataclass(frozen=True)
class Column:
    key: str  # in a row
    head: str
    fmt: str
    spread: bool = False  # also print min-max


COLUMNS = (
    Column("wall", "wall s", ".1f", spread=True),
    Column("ratio", "ratio", ".2f", spread=True),
    Column("eff", "eff", ".0%"),
    Column("overhead", "overhead", ".1f"),
    Column("self_cpu", "ctl cpu", ".1f"),
    Column("children_cpu", "ansible cpu", ".1f"),
    Column("node_cpu", "node cpu", ".1f"),
    Column("self_maxrss_mb", "ctl rss", ".0f"),
    Column("out_mean", "out mean", ".1f", spread=True),
    Column("out_max", "out max", ".1f"),
    Column("load_sent", "sent", ".0f"),
    Column("load_failed", "failed", ".0f"),
)


def stats(values: Sequence[float | None]) -> dict[str, float] | None:
    known = [v for v in values if v is not None]
    if not known:
        return None
    return {"median": statistics.median(known), "min": min(known), "max": max(known)}


def summarize_rounds(rows: Sequence[Row], configs: Sequence[Config]) -> list[Row]:
    """Per size and configuration: the rounds, and each column's median, min and max."""
    out: list[Row] = []
    for size in dict.fromkeys(r["size"] for r in rows):
        for config in configs:
            mine = [r for r in rows if r["size"] == size and r["config"] == config.key]
            out.append({"size": size, "config": config.key, "name": config.name,
                        "rounds": len(mine)}
                       | {c.key: stats([r.get(c.key) for r in mine]) for c in COLUMNS})
    return out


def cell(column: Column, values: dict[str, float] | None) -> str:
    if values is None:
        return ""
    text = format(values["median"], column.fmt)
    if column.spread:
        text += f" ({values['min']:{column.fmt}}{DASH}{values['max']:{column.fmt}})"
    return text


def render(summary: Sequence[Row]) -> str:
    heads = ["hosts", "rollout", "rounds"] + [
        c.head + (f" (min{DASH}max)" if c.spread else "") for c in COLUMNS]
    lines = [[str(s["size"]), s["name"], str(s["rounds"])] + [cell(c, s[c.key]) for c in COLUMNS]
             for s in summary]
    widths = [max(len(line[i]) for line in [heads, *lines]) for i in range(len(heads))]

    def join(line: list[str]) -> str:
        return "  ".join(text.ljust(w) if i == 1 else text.rjust(w)
                         for i, (text, w) in enumerate(zip(line, widths, strict=True)))

    return "\n".join(join(line) for line in [heads, *lines])


def parse_configs(text: str) -> list[Config]:
    wanted = {k.strip() for k in text.split(",") if k.strip()}
    unknown = wanted - {c.key for c in CONFIGS}
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(
            f"choose among {','.join(c.key for c in CONFIGS)} (got {text!r})")
    return [c for c in CONFIGS if c.key in wanted]  # always in the alternating order


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="8,20,100")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds per configuration.")
    parser.add_argument("--configs", type=parse_configs, default=list(CONFIGS),
                        help="Comma list among plain,nostage,staged,nodes (default: all).")
    parser.add_argument("--load", type=float, default=0.0, metavar="RPS",
                        help="Requests per second through the first LB during every rollout "
                             "(sent and failed are counted; default: none).")
    parser.add_argument("--json", type=Path, default=None,
                        help="Also write every round's row and the summary here.")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    rows: list[Row] = []
    for size in args.sizes.split(","):
        measured = measure(int(size), args.configs, args.rounds, args.load)
        print_breakdowns(measured, args.configs)
        rows.extend(measured)
    summary = summarize_rounds(rows, args.configs)
    print(render(summary))
    if args.json:
        args.json.write_text(json.dumps(
            {"rows": [{k: v for k, v in r.items() if k not in ("events", "out_table")}
                      for r in rows],
             "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
