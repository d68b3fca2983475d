"""Lab layout (names, addresses, mount order, lab.json), artifacts (version rules, contents),
the configs and specs the lab writes (HAProxy exporter, Prometheus, the canary spec)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from rollout_py.errors import InputError
from rollout_py.lab import artifact, files, haproxy, hosts, prometheus
from rollout_py.lab.layout import HOST_FLAGS_PATH, Layout, LbSpec
from rollout_py.spec import load_spec
from rollout_py.validate import validate_version


def test_layout_names_and_addresses() -> None:
    layout = Layout(dir="/x", index=7, block="10.213.0.0/16", n_hosts=100, n_lbs=2)
    apps = layout.app_hosts
    assert [h.name for h in apps[:2]] == ["app001", "app002"] and apps[-1].name == "app100"
    assert apps[0].address == "10.213.7.11" and apps[-1].address == "10.213.7.110"
    assert layout.gateway == "10.213.7.1" and layout.bridge == "rlab7"
    assert [h.name for h in layout.lb_hosts] == ["lb2"]
    assert all(len(h.veth) <= 15 for h in layout.all_hosts)  # Linux interface name limit
    assert len({h.address for h in layout.all_hosts}) == len(layout.all_hosts)


def test_layout_round_trips_through_lab_json(tmp_path: Path) -> None:
    layout = Layout(dir=str(tmp_path), index=3, block="10.213.0.0/16", n_hosts=4, n_lbs=1,
                    procs={"sshd:app01": {"pid": 1, "start": 2}})
    layout.save()
    public = json.loads((tmp_path / "lab.json").read_text())
    assert public["hosts"][0]["name"] == "app01" and public["subnet"] == "10.213.3.0/24"
    loaded = Layout.load(tmp_path)
    assert loaded is not None and loaded.procs == layout.procs and loaded.index == 3


@pytest.mark.parametrize(("lab_dir", "last"), [
    ("/tmp/x/lab", "tmp"), ("/root/repo/.rollout-lab", "root"), ("/srv/lab", "srv"),
    ("/run/lab", "run"),
])
def test_the_private_dir_holding_the_lab_dir_is_mounted_last(lab_dir: str, last: str) -> None:
    order = hosts._bind_order(Path(lab_dir))
    assert order[-1] == last and sorted(order) == sorted(hosts.PRIVATE_DIRS)


@pytest.mark.parametrize("bad", ["1.0;touch /tmp/x", "../etc", "a/b", "", "-rf", "1..2",
                                 "x" * 65, "1.0 ", "$(id)"])
def test_bad_versions_are_refused(bad: str) -> None:
    with pytest.raises(InputError):
        validate_version(bad)


def test_artifact_holds_app_and_behaviour(tmp_path: Path) -> None:
    path = artifact.build_artifact(tmp_path, "2.1", artifact.Behaviour(error_rate=0.5))
    assert path.name == "app-2.1.tar.gz"
    with tarfile.open(path) as tar:
        assert sorted(tar.getnames()) == ["app.py", "release.json"]
        meta = json.load(tar.extractfile("release.json"))  # type: ignore[arg-type]
    assert meta == {"version": "2.1", "health_fail": False, "health_flap": False,
                    "start_delay": 0.0, "error_rate": 0.5, "crash_on_start": False,
                    "latency_ms": 0, "fail_after": None}


def test_artifact_records_latency_and_fail_after(tmp_path: Path) -> None:
    behaviour = artifact.Behaviour(latency_ms=300, fail_after=20, error_rate=0.2)
    with tarfile.open(artifact.build_artifact(tmp_path, "2.2", behaviour)) as tar:
        meta = json.load(tar.extractfile("release.json"))  # type: ignore[arg-type]
    assert (meta["latency_ms"], meta["fail_after"], meta["error_rate"]) == (300, 20, 0.2)


@pytest.mark.parametrize(("kwargs", "option"), [
    ({"error_rate": 1.5}, "--error-rate"),
    ({"error_rate": float("nan")}, "--error-rate"),
    ({"start_delay": -1.0}, "--start-delay"),
    ({"latency_ms": -1}, "--latency-ms"),
    ({"latency_ms": 60_001}, "--latency-ms"),
    ({"latency_ms": 1.5}, "--latency-ms"),
    ({"latency_ms": True}, "--latency-ms"),
    ({"fail_after": -0.1}, "--fail-after"),
    ({"fail_after": float("inf")}, "--fail-after"),
    ({"fail_after": float("nan")}, "--fail-after"),
    ({"fail_after": "10"}, "--fail-after"),
])
def test_behaviour_limits_name_the_option(kwargs: dict[str, object], option: str) -> None:
    with pytest.raises(InputError, match=f"^{option} must be"):
        artifact.Behaviour(**kwargs)  # type: ignore[arg-type]


def test_behaviour_edges_are_accepted() -> None:
    artifact.Behaviour(latency_ms=0, fail_after=0)
    artifact.Behaviour(latency_ms=60_000, fail_after=0.5, error_rate=1.0)


def test_lab_artifact_command_takes_latency_and_fail_after(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from rollout_py.lab.cli import lab

    ok = CliRunner().invoke(lab, ["artifact", "4.0", "--latency-ms", "120", "--fail-after", "15",
                                  "--error-rate", "0.3", "--dir", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    with tarfile.open(ok.output.strip()) as tar:
        meta = json.load(tar.extractfile("release.json"))  # type: ignore[arg-type]
    assert (meta["latency_ms"], meta["fail_after"], meta["error_rate"]) == (120, 15.0, 0.3)
    for args, option in ((["--latency-ms", "60001"], "--latency-ms"),
                         (["--latency-ms", "-5"], "--latency-ms"),
                         (["--fail-after", "-1"], "--fail-after")):
        bad = CliRunner().invoke(lab, ["artifact", "4.1", *args, "--dir", str(tmp_path)])
        assert bad.exit_code == 2 and option in bad.output, bad.output
    nan = CliRunner().invoke(lab, ["artifact", "4.2", "--fail-after", "nan",
                                   "--dir", str(tmp_path)])
    assert isinstance(nan.exception, InputError) and "--fail-after" in str(nan.exception)
    assert not (tmp_path / "artifacts" / "app-4.1.tar.gz").exists()


def _lab_with_lbs(tmp_path: Path, prometheus_port: int | None = None) -> Layout:
    return Layout(dir=str(tmp_path), index=3, block="10.213.0.0/16", n_hosts=2, n_lbs=2,
                  prometheus_port=prometheus_port,
                  lbs=[LbSpec("lb1", 4001, "/run/rollout-lab/rlab3/lb1.sock",
                              "unix:///run/rollout-lab/rlab3/lb1.sock", None, 4002),
                       LbSpec("lb2", 4003, "/run/haproxy/admin.sock",
                              "ssh://root@10.213.3.3/run/haproxy/admin.sock", "lb2", 4004)])


def test_haproxy_config_serves_the_prometheus_exporter_on_loopback(tmp_path: Path) -> None:
    layout = _lab_with_lbs(tmp_path)
    cfg = haproxy.render(layout, layout.lbs[1])
    exporter = cfg.split(f"frontend {haproxy.METRICS_FRONTEND}\n", 1)[1].split("\n\n", 1)[0]
    assert "    bind 127.0.0.1:4004\n" in exporter
    assert "use-service prometheus-exporter if { path /metrics }" in exporter
    assert "bind 127.0.0.1:4003\n" in cfg  # the traffic frontend is unchanged
    old = dataclasses.replace(layout.lbs[0], metrics_port=None)  # a lab.json from before
    assert "prometheus-exporter" not in haproxy.render(layout, old)


def test_free_ports_are_distinct() -> None:
    ports = haproxy.free_ports(6)
    assert len(set(ports)) == 6 and all(1024 < p < 65536 for p in ports)


def test_lab_json_records_exporters_and_prometheus(tmp_path: Path) -> None:
    layout = _lab_with_lbs(tmp_path, prometheus_port=9411)
    layout.procs["prometheus"] = {"pid": 123, "start": 456}
    layout.save()
    public = json.loads((tmp_path / "lab.json").read_text())
    assert [lb["metrics"] for lb in public["lbs"]] == [
        "http://127.0.0.1:4002/metrics", "http://127.0.0.1:4004/metrics"]
    assert [lb["metrics_port"] for lb in public["lbs"]] == [4002, 4004]
    assert public["prometheus"] == {"url": "http://127.0.0.1:9411", "pid": 123,
                                    "dir": str(tmp_path / "prometheus")}
    assert public["canary_spec"] == str(tmp_path / "rollout-canary.yml")
    loaded = Layout.load(tmp_path)
    assert loaded is not None and loaded.prometheus_url == "http://127.0.0.1:9411"
    assert loaded.lbs[1].metrics_url == "http://127.0.0.1:4004/metrics"


def test_lab_json_without_prometheus_or_exporters_still_loads(tmp_path: Path) -> None:
    record = json.loads(json.dumps({"layout": {
        "dir": str(tmp_path), "index": 2, "block": "10.213.0.0/16", "n_hosts": 1, "n_lbs": 1,
        "state": "up", "procs": {}, "host_python": "/usr/bin/python3",
        "lbs": [{"name": "lb1", "port": 5000, "socket_path": "/s", "socket_url": "unix:///s",
                 "host": None}]}}))
    (tmp_path / "lab.json").write_text(json.dumps(record))
    loaded = Layout.load(tmp_path)
    assert loaded is not None and loaded.prometheus_url is None
    assert loaded.lbs[0].metrics_url is None and loaded.describe()["prometheus"] is None


def test_prometheus_config_scrapes_every_lb_each_second(tmp_path: Path) -> None:
    config = yaml.safe_load(prometheus.render(_lab_with_lbs(tmp_path)))
    assert config["global"]["scrape_interval"] == "1s"
    assert config["global"]["scrape_timeout"] == "1s"
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [
        {"targets": ["127.0.0.1:4002"], "labels": {"lb": "lb1"}},
        {"targets": ["127.0.0.1:4004"], "labels": {"lb": "lb2"}}]


def test_prometheus_of_a_lab_is_found_by_its_exact_marker() -> None:
    argv = [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()",
            prometheus.marker("rlab97")]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        # Its command line is the marker's only once it runs (before exec, /proc shows ours).
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        assert [p.pid for p in prometheus.orphans("rlab97")] == [child.pid]
        assert prometheus.orphans("rlab9") == [] and prometheus.orphans("rlab970") == []
    finally:
        assert child.stdin is not None
        child.stdin.close()  # it exits at EOF
        child.wait(10)
        assert child.stdout is not None
        child.stdout.close()
    assert prometheus.orphans("rlab97") == []


@pytest.mark.parametrize("prometheus_port", [None, 9411])
def test_the_canary_spec_the_lab_writes_is_valid(tmp_path: Path,
                                                 prometheus_port: int | None) -> None:
    layout = _lab_with_lbs(tmp_path, prometheus_port=prometheus_port)
    (tmp_path / "rollout.yml").write_text(files.rollout_spec(layout))
    (tmp_path / "rollout-canary.yml").write_text(files.canary_spec(layout))
    rolling = load_spec(tmp_path / "rollout.yml")
    canary = load_spec(tmp_path / "rollout-canary.yml")
    assert rolling.strategy == "rolling" and canary.strategy == "canary"
    assert canary.haproxy == rolling.haproxy and canary.health == rolling.health
    assert canary.batches == rolling.batches and canary.playbook == rolling.playbook
    assert rolling.flags is not None and canary.flags == rolling.flags  # rollout_py.lab.flagfiles
    assert (rolling.flags.file, rolling.flags.path) == ("flags.json", HOST_FLAGS_PATH)
    assert canary.canary is not None and canary.canary.hosts == 1
    assert [s.model_dump() for s in canary.canary.steps] == [
        {"traffic": 0.1}, {"analysis": {"duration": 20.0}},
        {"traffic": 0.5}, {"analysis": {"duration": 20.0}}]
    analysis = canary.analysis
    assert analysis is not None
    assert (analysis.interval, analysis.min_requests, analysis.on_inconclusive,
            analysis.inconclusive_limit, analysis.failure_limit) == (5, 50, "hold", 6, 1)
    kinds = [next(iter(g.model_dump())) for g in analysis.gates]
    if prometheus_port is None:
        assert kinds == ["error_rate", "error_rate", "latency"]
        return
    assert kinds == ["error_rate", "error_rate", "latency", "prometheus"]
    gate = analysis.gates[3].model_dump()["prometheus"]
    assert gate["url"] == "http://127.0.0.1:9411" and gate["max"] == 0.01
    assert gate["query"] == (
        'sum(rate(haproxy_server_http_responses_total{proxy="app",server=~"$canary",'
        'code="5xx"}[10s])) / sum(rate(haproxy_server_http_responses_total{proxy="app",'
        'server=~"$canary"}[10s]))')
