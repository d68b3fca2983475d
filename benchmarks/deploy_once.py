"""One rollout_py deploy in a process of its own, reporting what it cost the controller.

Used by benchmarks/scale.py:  python benchmarks/deploy_once.py SPEC VERSION [--no-stage]
Prints one JSON object: wall time, CPU of the controller process and of its children (the
ansible runs), their peak RSS, and the deploy's events.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import rollout_py
from rollout_py import events as ev


def peak_rss_mb() -> float:
    """This process's peak RSS since its exec (VmHWM). ``ru_maxrss`` is not: Linux keeps the
    parent's peak from before the fork, so a benchmark holding much memory would be counted."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    spec_path, version = sys.argv[1], sys.argv[2]
    spec = rollout_py.load_spec(spec_path)
    if "--no-stage" in sys.argv:
        spec = spec.model_copy(update={"stage": None})
    seen: list[ev.Event] = []
    start = time.monotonic()
    result = rollout_py.deploy(spec, version=version, on_event=seen.append,
                               install_signal_handlers=False)
    wall = time.monotonic() - start
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({
        "status": result.status, "wall": wall,
        "self_cpu": me.ru_utime + me.ru_stime, "children_cpu": kids.ru_utime + kids.ru_stime,
        "self_maxrss_mb": peak_rss_mb(), "children_maxrss_mb": kids.ru_maxrss / 1024,
        "events": [e.to_json() for e in seen],
    }))


if __name__ == "__main__":
    main()
