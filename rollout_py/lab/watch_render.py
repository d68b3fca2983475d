"""The text report of a watch summary, as ``rollout lab watch`` prints it.

Example:
    >>> print("\\n".join(summary_lines(summary)))  # doctest: +SKIP
    watched app on lb1, lb2 for 1.0 s (12:00:00.000 to 12:00:01.000)
"""

from __future__ import annotations

from datetime import datetime

from rollout_py.lab.watch_summary import WatchSummary


def clock(ts: float) -> str:
    """A wall-clock timestamp as HH:MM:SS.mmm (local time)."""
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:-3]


def summary_lines(summary: WatchSummary) -> list[str]:
    """Every line of the text report (blue/green routes and capacity added with pools)."""
    lines = [f"watched {summary.backend} on {', '.join(summary.lbs)} for "
             f"{summary.stopped - summary.started:.1f} s ({clock(summary.started)} to "
             f"{clock(summary.stopped)})"]
    for lb in summary.lbs:
        lines.append(f"  {lb}: {summary.samples[lb]} samples, {summary.rate_hz[lb]:g} Hz, "
                     f"{summary.errors[lb]} errors")
    limit = "no limit" if summary.max_unavailable is None else \
        f"limit {summary.max_unavailable}"
    lines.append(f"  max out of rotation: {summary.max_out_of_rotation} of "
                 f"{len(summary.servers)} ({limit}); min in rotation: {summary.min_in_rotation}")
    windows = summary.violation_windows()
    lines.append(f"  violations: {len(windows)} window(s), {len(summary.violations)} moment(s)")
    for w in windows:
        lines.append(f"    {clock(w.start)} to {clock(w.end)} ({w.end - w.start:.2f} s): "
                     f"{w.max_out} out > {w.limit}: {', '.join(w.out_of_rotation)}")
    lines.append("  out of rotation (seconds):")
    width = max([8, *(len(srv) for srv in summary.servers)])
    for srv in summary.servers:
        spans = summary.out_intervals[srv]
        states = ", ".join(dict.fromkeys(i.state for i in spans))
        lines.append(f"    {srv:<{width}} {summary.total_out_seconds(srv):7.2f}"
                     + (f"  in {len(spans)} span(s): {states}" if spans else ""))
    if summary.live_key is not None:
        lines.extend(pools_lines(summary))
    return lines


def pools_lines(summary: WatchSummary) -> list[str]:
    """Blue/green: each LB's route changes, the LBs' disagreement on live, capacity per
    backend."""
    lines = ["  routes (map keys; a change happened between the two sample times):"]
    for lb in summary.lbs:
        changes = summary.route_changes.get(lb, [])
        first = next((s.maps for s in summary.records if s.lb == lb and s.ok), {})
        start = ", ".join(f"{k} {v}" for k, v in first.items()) or "unknown"
        lines.append(f"    {lb}: {start} at the start, {len(changes)} change(s)")
        for c in changes:
            lines.append(f"      {c.key}: {c.before} -> {c.after} between "
                         f"{clock(c.last_before)} and {clock(c.at)}")
    observed, low, high = summary.disagreement_seconds()
    lines.append(f"  LBs disagreed on {summary.live_key}: {len(summary.disagreements)} "
                 f"window(s), {observed:.3f} s observed (bounds from the samples, one sampling "
                 f"period at each edge: at least {low:.3f} s, at most {high:.3f} s)")
    for d in summary.disagreements:
        lines.append(f"    {clock(d.start)} to {clock(d.end)} ({d.seconds:.3f} s, "
                     f"{d.min_seconds:.3f}..{d.max_seconds:.3f} s"
                     + (", still at the end" if d.open else "") + f"): {', '.join(d.routes)}")
    limit = "no limit" if summary.max_unavailable is None else \
        f"limit {summary.max_unavailable}"
    lines.append(f"  capacity per backend, while it served live traffic ({limit}):")
    for backend, cap in summary.capacity.items():
        lines.append(f"    {backend}: live {cap.live_seconds:.1f} s, max out "
                     f"{cap.max_out_while_live} of {cap.servers}, min in "
                     f"{cap.min_in_while_live}, {cap.violations} violating moment(s)")
    return lines
