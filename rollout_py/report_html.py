"""A deploy's report as one self-contained HTML file: nothing is fetched when it is viewed.

Charts are plotly figures (plotly.js is embedded once, ~5 MB of the file): a timeline per host
(its live-view states), per LB (each host's cell there: DRAIN, MAINT, its admin state and
weight), the LBs' own sampled states when a lab watch ran, and the weights over time when a
traffic or warm-up step set them. Tables (a Jinja2 template, autoescaped) carry the numbers:
header, hosts, batches and steps, analysis windows, rollbacks and every event. Each number
cell has ``data-*`` attributes naming what it is, and the report's JSON (the same as
``rollout report --json``) is embedded as ``<script type="application/json" id="report-data">``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import jinja2
from markupsafe import Markup

from rollout_py import live_view as lv
from rollout_py.report import when
from rollout_py.report_data import DeployReport
from rollout_py.report_spans import Span

# Host states (the live view's), colour-blind-safe-ish: greys/greens in rotation, blues for
# the work, purple MAINT, orange rollback, red failures.
STATE_COLOURS = {
    lv.WAITING: "#cfcfcf", lv.STAGING: "#a6cee3", lv.DRAINING: "#6baed6",
    lv.OUT: "#8856a7", lv.UPGRADING: "#2171b5", lv.PROBING: "#41b6c4",
    lv.IN_ROTATION: "#a1d99b", lv.DONE: "#31a354", lv.FAILED: "#de2d26",
    lv.ROLLING_BACK: "#fd8d3c", lv.ROLLED_BACK: "#fdd0a2", lv.STRANDED: "#67000d",
    lv.SKIPPED: "#f0f0f0",
}
ADMIN_COLOURS = {"READY": "#31a354", "DRAIN": "#6baed6", "MAINT": "#8856a7",
                 "ABSENT": "#bdbdbd", "weight 0": "#969696"}
_CONFIG = {"displaylogo": False, "responsive": True}


def _admin(cell: str) -> str:
    """The colour key of an LB cell: "READY 1" -> READY; a weight of 0 stands alone."""
    head = cell.split("/")[0].split(" ")[0]
    return "weight 0" if cell.rstrip().endswith((" 0", "weight 0")) else head


def lb_names(report: DeployReport) -> dict[str, str]:
    """LB URL -> a short name (lb1, lb2, ... in the order the journal met them); a lab
    watch's names are kept as they are."""
    return {url: f"lb{i}" for i, url in enumerate(report.lbs, 1)}


def _timeline(rows: Sequence[tuple[str, Sequence[Span]]], colour_of: Any, key_of: Any,
              title: str, markers: Sequence[tuple[float, float, str]], div_id: str) -> str:
    """A Gantt-like figure: one row per ``rows`` entry (top to bottom), one bar per span,
    coloured by ``colour_of(key_of(span.state))``, one legend entry per key; ``markers``:
    (start, end, label) shaded behind the bars (rollbacks)."""
    import plotly.graph_objects as go

    by_key: dict[str, dict[str, list[Any]]] = {}
    for row, spans in rows:
        for s in spans:
            bucket = by_key.setdefault(key_of(s.state), {"y": [], "x": [], "base": [],
                                                         "text": []})
            bucket["y"].append(row)
            bucket["base"].append(s.start)
            bucket["x"].append(max(s.end - s.start, 0.001))
            bucket["text"].append(f"{row}: {s.state}<br>{s.start:.1f} to {s.end:.1f} s "
                                  f"({s.end - s.start:.1f} s)")
    fig = go.Figure()
    for key, b in by_key.items():
        fig.add_trace(go.Bar(
            name=key, y=b["y"], x=b["x"], base=b["base"], orientation="h",
            marker={"color": colour_of(key), "line": {"width": 0}}, hovertext=b["text"],
            hoverinfo="text"))
    for start, end, label in markers:
        fig.add_vrect(x0=start, x1=end, fillcolor="#fd8d3c", opacity=0.15, line_width=0,
                      annotation_text=label, annotation_position="top left")
    names = [row for row, _ in rows]
    fig.update_layout(
        title=title, barmode="overlay", bargap=0.25, height=max(260, 120 + 26 * len(names)),
        margin={"l": 10, "r": 10, "t": 50, "b": 40}, legend={"traceorder": "normal"},
        xaxis={"title": "seconds since the deploy started", "rangemode": "tozero"},
        yaxis={"categoryorder": "array", "categoryarray": names[::-1], "automargin": True},
        plot_bgcolor="#ffffff")
    return str(fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                           config=_CONFIG))


def _weights_figure(report: DeployReport, names: Mapping[str, str]) -> str:
    import plotly.graph_objects as go

    fig = go.Figure()
    end = report.duration
    for lb, per in report.weights.items():
        for server, series in per.items():
            xs = [t for t, _ in series] + [end]
            ys = [w for _, w in series] + [series[-1][1]]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line_shape="hv",
                                     name=f"{names.get(lb, lb)} {server}"))
    fig.update_layout(title="Weights per LB and server", height=320,
                      margin={"l": 10, "r": 10, "t": 50, "b": 40},
                      xaxis={"title": "seconds since the deploy started", "rangemode": "tozero"},
                      yaxis={"title": "weight", "rangemode": "tozero"})
    return str(fig.to_html(full_html=False, include_plotlyjs=False, div_id="weights",
                           config=_CONFIG))


def figures(report: DeployReport) -> dict[str, str]:
    """The report's charts as HTML fragments (plotly.js not included), by name."""
    names = lb_names(report)
    rollbacks = [(r.start, r.end if r.end is not None else report.duration,
                  f"rollback of batch {r.batch}") for r in report.rollbacks]
    out = {"hosts": _timeline([(h.host, h.states) for h in report.hosts],
                              lambda k: STATE_COLOURS.get(k, "#636363"), lambda s: s,
                              "Hosts", rollbacks, "timeline-hosts")}
    lb_rows = [(f"{names[lb]} {host}", spans) for lb, per in report.lbs.items()
               for host, spans in per.items()]
    if lb_rows:
        out["lbs"] = _timeline(lb_rows, lambda k: ADMIN_COLOURS.get(k, "#636363"), _admin,
                               "On each LB, as rollout_py set it", rollbacks, "timeline-lbs")
    if report.watch:
        rows = [(f"{lb} {server}", spans) for lb, per in report.watch.items()
                for server, spans in per.items()]
        out["watch"] = _timeline(rows, lambda k: ADMIN_COLOURS.get(k, "#636363"), _admin,
                                 "On each LB, as a lab watch sampled it", rollbacks,
                                 "timeline-watch")
    if report.weights_changed and report.weights:
        out["weights"] = _weights_figure(report, names)
    return out


def render(report: DeployReport) -> str:
    """The whole page."""
    from plotly.offline import get_plotlyjs

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: resources.files("rollout_py")
                                     .joinpath("templates").joinpath(name).read_text()),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
        lstrip_blocks=True)
    data = json.dumps(report.to_json()).replace("</", "<\\/")
    return env.get_template("report.html.j2").render(
        r=report, figures={k: Markup(v) for k, v in figures(report).items()},
        lbs=lb_names(report), clock=when, plotly_js=Markup(get_plotlyjs()),
        data=Markup(data), colours=STATE_COLOURS)
