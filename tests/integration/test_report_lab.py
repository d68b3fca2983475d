"""`rollout report --html` of a real lab deploy that rolled back: a canary release failing 30 %
of its requests on a 3-host, 2-LB lab under load, watched at 10 Hz. The page is opened in
headless Chromium (no network), screenshot taken; the test reads the rendered DOM and checks
that the timeline shows every host and the rollback, and the page's numbers against the
journal, computed here independently of the report's code."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import jsonschema
import pytest

from rollout_py import events as ev
from rollout_py.lab import artifact
from rollout_py.lab.layout import Layout
from rollout_py.state import StateDir
from tests.browser import Dom, Element, dump_dom, screenshot
from tests.chaos.harness import Run, deploy_under_fault
from tests.integration.conftest import LabFactory
from tests.integration.deploykit import REPO, write_spec


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> Layout:
    layout = lab_factory(n_hosts=3, n_lbs=2, name="report")
    artifact.build_artifact(layout.artifacts, "bad", artifact.Behaviour(error_rate=0.3))
    return layout


@pytest.fixture(scope="module")
def rolled_back(lab: Layout, tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Path]:
    """The canary (1 host at 30 % of the traffic) judged in 2-s windows, failed, rolled back."""
    work = tmp_path_factory.mktemp("report")
    spec = write_spec(lab, work / "rollout.yml", base="rollout-canary.yml", batches=[1],
                      canary={"hosts": 1, "steps": [{"traffic": "30%"},
                                                    {"analysis": {"duration": 10}}]},
                      analysis={"interval": 2, "min_requests": 10, "inconclusive_limit": 3})
    run = deploy_under_fault(lab, spec, "bad", rps=100, max_unavailable=2, timeout=240)
    assert run.returncode == 1, (run.stderr[-3000:], run.result)
    return run, work


def _num(cells: Sequence[Element]) -> float:
    assert len(cells) == 1, cells
    return float(cells[0].text.split()[0])


def _out_of_rotation(journal: Sequence[ev.Event], server: str) -> float:
    """Seconds from each drain of ``server`` (a batch's, or its rollback's when it was back
    in rotation) to its return (enabled, or the rollback finished): from the events alone."""
    total, since = 0.0, None
    for e in journal:
        if ((isinstance(e, ev.DrainStarted) and server in e.servers)
                or (isinstance(e, ev.RollbackStarted) and server in e.hosts)) and since is None:
            since = e.ts
        elif since is not None and (
                (isinstance(e, ev.ServersEnabled) and server in e.servers)
                or isinstance(e, ev.RollbackFinished)):
            total, since = total + e.ts - since, None
    if since is not None:
        total += journal[-1].ts - since
    zero = [e for e in journal if isinstance(e, ev.WeightsSet | ev.WeightsRestored)
            and any(per.get(server) == 0 for per in e.weights.values())]
    assert not zero, "the canary's steps here never set a weight of 0"
    return total


def test_the_html_report_of_a_rolled_back_canary_shows_every_host_and_the_rollback(
        lab: Layout, rolled_back: tuple[Run, Path]) -> None:
    run, work = rolled_back
    records = work / "watch.jsonl"
    run.watch.write_records(records)
    page = work / "report.html"
    proc = subprocess.run([sys.executable, "-m", "rollout_py", "report", "-f", str(run.spec),
                           "--html", str(page), "--watch", str(records), "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    jsonschema.validate(printed, json.loads(
        (REPO / "rollout_py" / "schemas" / "report.schema.json").read_text()))

    record = StateDir(work / ".rollout").get()
    journal = record.events()
    t0 = journal[0].ts
    png = work / "report.png"
    assert screenshot(page, png, work / "chromium") == (1400, 2400)
    assert png.stat().st_size > 50_000, "the screenshot looks blank"
    print(f"\nreport screenshot: {png}")
    dom = Dom.parse(dump_dom(page, work / "chromium"))

    # Self-contained: nothing on the page points outside it.
    outside = [e.attrs for e in dom.elements for a in ("src", "href")
               if e.attrs.get(a, "").startswith(("http:", "https:", "//"))]
    assert not outside
    # The JSON on the page is what `rollout report --json` printed.
    embedded = dom.find("script", id="report-data")
    assert len(embedded) == 1 and json.loads(embedded[0].text) == printed

    # The header against the journal and the record's meta.
    finished = journal[-1]
    assert isinstance(finished, ev.DeployFinished)
    assert (finished.status, finished.exit_code) == ("rolled_back", 1)
    assert [e.text for e in dom.find(id="status")] == ["rolled_back"]
    assert _num(dom.find(data_field="exit_code", within="summary")) == 1
    duration = _num(dom.find(data_field="duration", within="summary"))
    assert duration == pytest.approx(finished.ts - t0, abs=0.051)
    meta = record.meta()
    who = dom.find(data_field="who", within="summary")[0].text
    assert who.startswith(f"{meta['user']}@{meta['host']}")

    # Every host is on the rendered timeline (plotly drew its row label in the SVG), and in
    # the hosts table with its versions and time out of rotation.
    hosts = [h.name for h in lab.app_hosts]
    drawn = {e.text for e in dom.find("text", within="timeline-hosts")}
    assert set(hosts) <= drawn, drawn
    started = next(e for e in journal if isinstance(e, ev.DeployStarted))
    for host in hosts:
        row = [e for e in dom.find("td") if e.inside(data_host=host)
               and e.attrs.get("data-field")]
        fields = {e.attrs["data-field"]: e.text for e in row}
        assert fields["before"] == started.versions.get(host), (host, fields)
        assert fields["after"] == started.versions.get(host), (host, fields)  # rolled back
        out = float(fields["out_of_rotation"])
        assert out == pytest.approx(_out_of_rotation(journal, host), abs=0.011), host
        # And what the LBs said: the watch saw it out of rotation (not READY and UP on some
        # LB) as long, give or take its 10 Hz samples and HAProxy's check after the enable.
        assert out == pytest.approx(run.watch.total_out_seconds(host), abs=0.6), host
    # Every LB's row of every host on the LB timeline (LBs named lb1, lb2 in journal order).
    lb_drawn = {e.text for e in dom.find("text", within="timeline-lbs")}
    assert {f"lb{i} {h}" for i in (1, 2) for h in hosts} <= lb_drawn, lb_drawn
    # The lab watch's own samples, per LB and server.
    watch_drawn = {e.text for e in dom.find("text", within="timeline-watch")}
    assert {f"{lb.name} {h}" for lb in lab.lbs for h in hosts} <= watch_drawn, watch_drawn

    # The rollback: shaded and named on the timeline; its section against the journal.
    rollback = next(e for e in journal if isinstance(e, ev.RollbackStarted))
    rolled = next(e for e in journal if isinstance(e, ev.RollbackFinished))
    assert f"rollback of batch {rollback.batch}" in drawn
    assert "rolling back" in drawn  # the hosts' state, in the legend
    section = [e for e in dom.find(data_field="cause")
               if e.inside(data_rollback=str(rollback.batch))]
    assert [e.text for e in section] == [rollback.cause]
    where = {e.attrs["data-field"]: e.text for e in dom.elements
             if e.inside(data_rollback=str(rollback.batch)) and "data-field" in e.attrs}
    assert where["hosts"] == ", ".join(rollback.hosts)
    assert float(where["start"].split()[0]) == pytest.approx(rollback.ts - t0, abs=0.006)
    assert float(where["end"].split()[0]) == pytest.approx(rolled.ts - t0, abs=0.006)
    assert rolled.ok and "every host back in rotation" in where["ok"]

    # The batches' rows: start, end and duration from their events.
    for batch_row in dom.find("tr", data_batch=str(rollback.batch)):
        began = next(e for e in journal if isinstance(e, ev.BatchStarted)
                     and e.batch == rollback.batch)
        cells = {e.attrs["data-field"]: e.text for e in dom.elements
                 if e.parents and e.parents[-1] is batch_row and "data-field" in e.attrs}
        assert float(cells["start"]) == pytest.approx(began.ts - t0, abs=0.006)
        assert float(cells["end"]) == pytest.approx(rolled.ts - t0, abs=0.006)
        assert cells["outcome"] == "rolled_back"

    # Every analysis window's verdict and numbers, as journaled.
    windows = [e for e in journal if isinstance(e, ev.AnalysisWindow)]
    assert windows and windows[-1].verdict == "fail"
    for i, w in enumerate(windows):
        mine = [e for e in dom.elements if e.inside(data_window=str(i))]
        assert [e.text for e in mine if e.attrs.get("data-field") == "verdict"] == [w.verdict]
        for group, numbers in w.groups.items():
            shown = {e.attrs["data-field"]: int(e.text) for e in mine
                     if e.inside(data_group=group) and "data-field" in e.attrs}
            assert shown == {"requests": numbers["requests"], "errors": numbers["errors"]}
