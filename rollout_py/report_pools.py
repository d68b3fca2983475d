"""Console lines of blue/green events: the pools found, preview checks, each LB's switch and
how long the LBs disagreed, the baseline before a switch, the scale-down."""

from __future__ import annotations

from rollout_py import events as ev


def pool_line(e: ev.Event) -> str | None:
    match e:
        case ev.PoolsRead():
            return f"pools: live {e.live}, idle {e.idle} (every LB agrees)"
        case ev.PreviewChecked():
            up = ", ".join(f"{url} {n}" for url, n in sorted(e.up.items()))
            verdict = "ok" if e.ok else "REFUSED"
            return (f"step {e.step}: preview {verdict}: idle pool UP {up} (floor {e.floor}); "
                    f"{e.detail}")
        case ev.BaselineRecorded():
            return (f"step {e.step}: baseline of {e.backend} recorded over {e.seconds:g} s "
                    "before the switch")
        case ev.SwitchStarted():
            return (f"step {e.step}: switching every LB from {e.from_backend} to "
                    f"{e.to_backend} ({e.reason})")
        case ev.PoolSwitched():
            written = (f"map file {e.file} written" if e.file_error is None else
                       f"MAP FILE NOT WRITTEN ({e.file}): {e.file_error}")
            return f"step {e.step}: {e.lb}: live route now {e.entries}; {written}"
        case ev.SwitchFinished():
            if e.ok:
                return (f"step {e.step}: every LB on {e.to_backend}; the LBs disagreed for "
                        f"{e.disagreement * 1000:.1f} ms")
            return (f"step {e.step}: SWITCH TO {e.to_backend} FAILED: "
                    + "; ".join(f"{k}: {v}" for k, v in sorted(e.failed.items())))
        case ev.PoolScaledDown():
            return f"step {e.step}: {e.backend} ({', '.join(e.hosts)}): {e.detail}"
    return None
