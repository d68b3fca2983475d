"""`rollout lab up --prometheus`: each LB's HAProxy exporter, scraped each second by a Prometheus
the lab runs (by PID) on 127.0.0.1, and stopped with its data by `down`."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollout_py.errors import LabError
from rollout_py.lab import lab as lab_mod
from rollout_py.lab import prometheus
from rollout_py.lab.layout import Layout
from rollout_py.lab.load import LoadGenerator
from rollout_py.lab.procs import Proc
from rollout_py.spec import load_spec
from tests.integration.conftest import assert_lab_gone

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def lab(root_required: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Layout]:
    """One small lab with Prometheus; always brought down (the last test brings it down too)."""
    lab_dir = tmp_path_factory.mktemp("promlab")
    try:
        yield lab_mod.up(lab_dir, n_hosts=2, with_prometheus=True)
    finally:
        record = Layout.load(lab_dir)
        lab_mod.down(lab_dir)
        if record is not None:
            assert_lab_gone(record)


def fetch(url: str) -> tuple[int, str]:
    assert url.startswith("http://127.0.0.1:")  # loopback only
    try:
        with _OPENER.open(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_every_lb_serves_its_exporter_on_loopback(lab: Layout) -> None:
    for lb in lab.lbs:
        assert lb.metrics_port is not None and lb.metrics_url is not None
        status, text = fetch(lb.metrics_url)
        assert status == 200
        for host in lab.app_hosts:
            assert (f'haproxy_server_http_responses_total{{proxy="app",server="{host.name}",'
                    f'code="5xx"}}') in text
        assert fetch(f"http://127.0.0.1:{lb.metrics_port}/")[0] == 404


def test_lab_json_records_prometheus_which_has_scraped_every_lb(lab: Layout) -> None:
    record = Layout.load(lab.path)
    assert record is not None and record.prometheus_url == lab.prometheus_url
    public = record.describe()["prometheus"]
    assert isinstance(public, dict)
    assert public["pid"] == lab.procs[prometheus.PROC_KEY]["pid"]
    assert Proc.from_json(lab.procs[prometheus.PROC_KEY]).alive()
    url = lab.prometheus_url
    assert url is not None and url.startswith("http://127.0.0.1:")
    assert fetch(f"{url}/-/ready")[0] == 200
    # up returned only once every LB had been scraped.
    assert prometheus.targets_up(url) == {lb.name: 1.0 for lb in lab.lbs}
    info = lab_mod.status(lab.path)["prometheus"]
    assert info["running"] and info["url"] == url and info["targets_up"] == {"lb1": 1.0}


def test_prometheus_counts_each_servers_responses(lab: Layout) -> None:
    url = lab.prometheus_url
    assert url is not None
    summary = LoadGenerator(f"http://127.0.0.1:{lab.lbs[0].port}/", rps=100, duration=0.6).run()
    assert summary.failed == 0 and summary.sent == 60
    names = {h.name for h in lab.app_hosts}
    assert set(summary.by_host) == names
    promql = 'sum by (server) (haproxy_server_http_responses_total{proxy="app",code="2xx"})'
    deadline = time.monotonic() + 20
    counts: dict[str, float] = {}
    # The counters also include earlier tests' requests: wait until this load shows in full.
    while time.monotonic() < deadline:
        counts = {s["metric"]["server"]: float(s["value"][1])
                  for s in prometheus.query(url, promql)}
        if set(counts) == names and all(counts[n] >= summary.by_host[n] for n in names):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"prometheus never saw the load {summary.by_host}: {counts}")
    # The canary spec's gate, with its $canary regex filled in: no 5xx from app01.
    spec = load_spec(lab.path / "rollout-canary.yml")
    assert spec.analysis is not None
    gate = spec.analysis.gates[-1].model_dump()["prometheus"]
    assert gate["url"] == url
    [sample] = prometheus.query(url, gate["query"].replace("$canary", "app01"))
    assert float(sample["value"][1]) == 0.0


def test_up_again_keeps_prometheus_and_refuses_to_drop_it(lab: Layout) -> None:
    again = lab_mod.up(lab.path, n_hosts=2, with_prometheus=True)
    assert again.procs == lab.procs and again.prometheus_url == lab.prometheus_url
    with pytest.raises(LabError, match="already up with Prometheus"):
        lab_mod.up(lab.path, n_hosts=2)


def test_down_stops_prometheus_and_removes_its_data(lab: Layout) -> None:
    """Last in this module: it brings the lab down."""
    proc = Proc.from_json(lab.procs[prometheus.PROC_KEY])
    assert lab.prometheus_port is not None and port_open(lab.prometheus_port)
    assert (Path(lab.dir) / "prometheus" / "data").is_dir()
    assert lab_mod.down(lab.path)
    assert not proc.alive()  # gone (a zombie until PID 1 reaps it counts as gone)
    assert not port_open(lab.prometheus_port)
    assert not (lab.path / "prometheus").exists()
    assert not (lab.path / "rollout-canary.yml").exists()
    assert prometheus.orphans(lab.bridge) == []
    assert_lab_gone(lab)
