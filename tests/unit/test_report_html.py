"""The HTML report and `rollout report`: one self-contained page (plotly.js inside, nothing
fetched), tables whose numbers are the report's, the JSON embedded as `--json` prints it, the
charts drawn by a real headless Chromium; the command's text, JSON and its input errors."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from rollout_py import events as ev
from rollout_py.cli import cli
from rollout_py.report_data import build, report_schema
from rollout_py.report_html import render
from rollout_py.state import Journal, StateDir
from tests.browser import Dom, dump_dom

LB1, LB2 = "unix:///lb1.sock", "ssh://root@10.0.0.9/run/haproxy.sock"
ID = "20261203T120000Z-abcdef"
REC = {LB1: {"web1": ["READY", 1], "web2": ["READY", 1]},
       LB2: {"web1": ["READY", 2], "web2": ["READY", 2]}}


def journal() -> list[ev.Event]:
    """1.0 -> 2.0 on web1 then web2 (two LBs); batch 2's verify probe fails, it is rolled
    back; the deploy ends rolled_back."""
    seq = iter(range(1, 100))

    def at(cls: type[ev.Event], ts: float, **kw: object) -> ev.Event:
        return cls(deploy_id=ID, seq=next(seq), ts=1000.0 + ts, **kw)

    def batch(n: int, host: str, t: float) -> list[ev.Event]:
        rec = {lb: {host: per[host]} for lb, per in REC.items()}
        return [
            at(ev.BatchStarted, t, batch=n, hosts=(host,)),
            at(ev.DrainStarted, t + 0.5, batch=n, servers=(host,), recorded=rec),
            at(ev.ServersDrained, t + 1.5, batch=n, servers=(host,)),
            at(ev.ServersDisabled, t + 1.75, batch=n, servers=(host,)),
            at(ev.StepStarted, t + 2.0, batch=n, step="upgrade", hosts=(host,)),
            at(ev.StepFinished, t + 6.0, batch=n, step="upgrade", ok=True,
               hosts={host: "ok"}, versions={host: "1.0"}, duration=4.0)]

    return [
        at(ev.DeployStarted, 0.0, name="web", version="2.0", batches=(("web1",), ("web2",)),
           skipped={}, versions={"web1": "1.0", "web2": "1.0"}),
        *batch(1, "web1", 1.0),
        at(ev.ProbePassed, 7.5, batch=1, host="web1", phase="verify"),
        at(ev.ServersEnabled, 8.0, batch=1, servers=("web1",)),
        at(ev.BatchSucceeded, 8.25, batch=1, durations={"total": 7.5}),
        *batch(2, "web2", 10.0),
        at(ev.ProbeFailed, 16.5, batch=2, host="web2", phase="verify", probe="http",
           detail="http://web2:8080/health: 503"),
        at(ev.BatchFailed, 17.0, batch=2, failure="probe_failed",
           cause="web2: http: 503", hosts=("web2",)),
        at(ev.RollbackStarted, 17.0, batch=2, hosts=("web2",), cause="web2: http: 503"),
        at(ev.StepStarted, 17.25, batch=2, step="rollback", hosts=("web2",)),
        at(ev.StepFinished, 20.0, batch=2, step="rollback", ok=True, hosts={"web2": "ok"},
           versions={"web2": "1.0"}, duration=2.75),
        at(ev.RollbackFinished, 21.0, batch=2, ok=True, stranded=()),
        at(ev.DeployFinished, 21.5, status="rolled_back", exit_code=1,
           cause="web2: http: 503", stranded=()),
    ]


SHIPPED = json.loads((Path(__file__).parents[2] / "rollout_py" / "schemas" /
                      "report.schema.json").read_text())


def test_the_shipped_schema_is_the_one_the_dataclasses_give() -> None:
    assert report_schema() == SHIPPED
    jsonschema.Draft202012Validator.check_schema(SHIPPED)
    with pytest.raises(jsonschema.ValidationError, match="Additional properties"):
        jsonschema.validate({**build(journal(), META).to_json(), "extra": 1}, SHIPPED)


META = {"deploy_id": ID, "user": "ops", "host": "bastion", "pid": 4242,
        "spec_file": "/srv/rollout.yml", "inventory": "/srv/hosts.ini", "strategy": "rolling"}


def test_the_page_is_self_contained_and_its_tables_are_the_reports_numbers() -> None:
    report = build(journal(), META)
    page = render(report)
    dom = Dom.parse(page)
    # plotly.js once, inline; no element loads anything from elsewhere.
    scripts = dom.find("script")
    assert not [s for s in scripts if "src" in s.attrs]
    assert sum("Plotly.newPlot" in s.text for s in scripts) >= 2  # hosts and LBs charts
    assert sum(len(s.text) > 1_000_000 for s in scripts) == 1  # plotly.js itself
    assert not [e for e in dom.elements for a in ("src", "href")
                if e.attrs.get(a, "").startswith(("http:", "https:", "//"))]
    data = dom.find("script", id="report-data")
    assert json.loads(data[0].text) == json.loads(json.dumps(report.to_json()))

    out = {h: next(e.text for e in dom.find("td", data_field="out_of_rotation")
                   if e.inside(data_host=h)) for h in ("web1", "web2")}
    # web1: drained at 1.5, enabled at 8.0; web2: drained at 10.5, rolled back at 21.0.
    assert out == {"web1": "6.50", "web2": "10.50"}
    rows = {e.attrs["data-batch"]: {c.attrs["data-field"]: c.text for c in dom.elements
                                    if c.parents and c.parents[-1] is e
                                    and "data-field" in c.attrs}
            for e in dom.find("tr") if "data-batch" in e.attrs}
    assert rows == {"1": {"outcome": "succeeded", "start": "1.00", "end": "8.25",
                          "duration": "7.25"},
                    "2": {"outcome": "rolled_back", "start": "10.00", "end": "21.00",
                          "duration": "11.00"}}
    rollback = {e.attrs["data-field"]: e.text for e in dom.elements
                if e.inside(data_rollback="2") and "data-field" in e.attrs}
    assert (rollback["cause"], rollback["failure"], rollback["hosts"]) == (
        "web2: http: 503", "probe_failed", "web2")
    assert (rollback["start"], rollback["end"]) == ("17.00 s", "21.00 s")
    summary = {e.attrs["data-field"]: e.text for e in dom.find(within="summary")
               if "data-field" in e.attrs}
    assert summary["who"] == "ops@bastion (pid 4242)" and summary["exit_code"] == "1"
    assert [e.text for e in dom.find(id="status")] == ["rolled_back"]


def test_the_timeline_is_drawn_with_every_host_lb_and_the_rollback(tmp_path: Path) -> None:
    """Opened in headless Chromium: plotly drew each host's row, each LB's row per host (LBs
    named lb1, lb2 in the order the journal met them) and the rollback's shaded span."""
    page = tmp_path / "report.html"
    page.write_text(render(build(journal(), META)))
    dom = Dom.parse(dump_dom(page, tmp_path / "chromium"))
    hosts = {e.text for e in dom.find("text", within="timeline-hosts")}
    assert {"web1", "web2", "rollback of batch 2", "rolling back", "done"} <= hosts, hosts
    lbs = {e.text for e in dom.find("text", within="timeline-lbs")}
    assert {"lb1 web1", "lb1 web2", "lb2 web1", "lb2 web2", "MAINT", "DRAIN"} <= lbs, lbs
    legend = [e.text for e in dom.find("p") if "lb1 = " in e.text]
    assert legend == [f"lb1 = {LB1}; lb2 = {LB2}"]


def _record(root: Path, events: list[ev.Event]) -> None:
    record = StateDir(root).create(ID, meta=META, spec={"health": {"consecutive": 2}},
                                   plan={})
    sink = Journal(record.journal)
    for e in events:
        sink(e)
    sink.close()


def test_rollout_report_prints_lines_json_and_writes_the_page(tmp_path: Path) -> None:
    _record(tmp_path / "state", journal())
    runner = CliRunner()
    text = runner.invoke(cli, ["report", "--state-dir", str(tmp_path / "state")])
    assert text.exit_code == 0, text.output
    assert text.output.splitlines()[0].startswith(
        f"deploy {ID}: web 1.0 -> 2.0: rolled_back (exit 1), 21.5 s, run by ops@bastion")
    assert "rollback of batch 2 at 17.0 s: web2: http: 503" in text.output
    as_json = runner.invoke(cli, ["report", ID, "--state-dir", str(tmp_path / "state"),
                                  "--json", "--html", str(tmp_path / "r.html")])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert data["schema"] == "rollout.report/1" and data["status"] == "rolled_back"
    jsonschema.validate(data, SHIPPED)
    assert [h["out_of_rotation"] for h in data["hosts"]] == [6.5, 10.5]
    page = Dom.parse((tmp_path / "r.html").read_text())
    assert json.loads(page.find("script", id="report-data")[0].text) == data


@pytest.mark.parametrize(("args", "expected"), [
    (["nope"], "no deploy 'nope' in"),
    (["--watch", "{dir}/watch.jsonl"], "watch.jsonl:2: not JSON"),
    (["--watch", "{dir}/missing.jsonl"], "missing.jsonl: cannot read the watch records"),
])
def test_bad_input_is_refused_with_what_and_where(tmp_path: Path, args: list[str],
                                                  expected: str) -> None:
    _record(tmp_path / "state", journal())
    (tmp_path / "watch.jsonl").write_text('{"lb": "lb1", "ts": 1.0, "servers": {}}\n{oops\n')
    result = CliRunner().invoke(cli, ["report", "--state-dir", str(tmp_path / "state"),
                                      *[a.format(dir=tmp_path) for a in args]])
    assert result.exit_code != 0
    assert expected in (result.output + str(result.exception)), result.output
