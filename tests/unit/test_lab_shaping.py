"""The lab's ``--shaping`` HAProxy config and spec, and the load tool's client classes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from rollout_py.errors import InputError
from rollout_py.lab import files, haproxy, shaping
from rollout_py.lab.classload import ClassLoad, parse_classes
from rollout_py.lab.layout import Layout, LbSpec
from rollout_py.spec import parse_spec


def _layout(tmp_path: Path, with_shaping: bool) -> Layout:
    layout = Layout(dir=str(tmp_path), index=3, block="10.213.0.0/16", n_hosts=4, n_lbs=1,
                    shaping=with_shaping)
    layout.lbs = [LbSpec("lb1", 4001, "/run/rollout-lab/rlab3/lb1.sock",
                         "unix:///run/rollout-lab/rlab3/lb1.sock", None, 4002)]
    return layout


def test_without_shaping_the_config_and_spec_have_none_of_it(tmp_path: Path) -> None:
    layout = _layout(tmp_path, False)
    cfg = haproxy.render(layout, layout.lbs[0])
    assert "    bind 127.0.0.1:4001\n    default_backend app\n" in cfg
    assert "maxconn 4\n" not in cfg and "priority" not in cfg and "shaping" not in cfg
    assert "shaping" not in files.rollout_spec(layout)


def test_with_shaping_the_lb_queues_prioritises_and_sheds(tmp_path: Path) -> None:
    layout = _layout(tmp_path, True)
    cfg = haproxy.render(layout, layout.lbs[0])
    mapped = "req.hdr(x-client-class),map(/run/rollout-lab/rlab3/shaping.map) -m str shed"
    assert f"acl shed_class {mapped}\n" in cfg
    assert "acl capacity_dropped nbsrv(app) lt 4\n" in cfg
    assert "if shed_class capacity_dropped\n" in cfg
    assert ("http-request set-priority-class int(-10) if { req.hdr(x-client-class) -m str "
            "production }") in cfg
    backend = cfg.split("\nbackend app\n", 1)[1]
    assert "    timeout queue 3s\n    default-server maxconn 4\n" in backend
    spec = yaml.safe_load(files.rollout_spec(layout))
    assert spec["haproxy"]["shaping"] == {"map": "/run/rollout-lab/rlab3/shaping.map",
                                          "entries": {"heavy": "shed"}}
    parsed = parse_spec(spec)
    assert parsed.haproxy.shaping is not None


def test_haproxy_accepts_the_shaping_config(tmp_path: Path) -> None:
    layout = _layout(tmp_path, True)
    lb = layout.lbs[0]
    map_file = tmp_path / "shaping.map"
    map_file.write_text("# empty\n")
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy.render(layout, lb).replace(lb.socket_path, str(tmp_path / "s.sock"))
                   .replace(shaping.map_path(layout), str(map_file)))
    proc = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_client_classes_are_parsed_with_their_rates() -> None:
    assert parse_classes(["production=200", "heavy=12.5"]) == {"production": 200.0,
                                                                "heavy": 12.5}
    for bad in (["production"], ["a b=1"], ["x=fast"], ["x=1", "x=2"]):
        with pytest.raises(InputError, match="--class"):
            parse_classes(bad)
    with pytest.raises(InputError, match="no client class"):
        ClassLoad("http://127.0.0.1:9/", {}, duration=1)
    with pytest.raises(InputError, match="loopback"):
        ClassLoad("http://10.0.0.1:9/", {"heavy": 1}, duration=1)
