"""`lab up --pools 2` without a lab: pools in the layout, HAProxy config, files, old lab.json."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from rollout_py.lab import files, haproxy, pools
from rollout_py.lab.layout import Layout, LbSpec


def _layout(tmp_path: Path, n_pools: int, n_hosts: int = 4) -> Layout:
    layout = Layout(dir=str(tmp_path), index=3, block="10.213.0.0/16", n_hosts=n_hosts, n_lbs=2,
                    n_pools=n_pools)
    extra: list[dict[str, Any]] = [{}, {}] if n_pools == 1 else [
        {"map_path": pools.map_path_for(layout, "lb1", False), "preview_port": 4005},
        {"map_path": pools.map_path_for(layout, "lb2", True), "preview_port": 4006}]
    layout.lbs = [LbSpec("lb1", 4001, "/run/rollout-lab/rlab3/lb1.sock",
                         "unix:///run/rollout-lab/rlab3/lb1.sock", None, 4002, **extra[0]),
                  LbSpec("lb2", 4003, "/run/haproxy/admin.sock",
                         "ssh://root@10.213.3.3/run/haproxy/admin.sock", "lb2", 4004, **extra[1])]
    return layout


def test_pools_split_the_hosts_in_half(tmp_path: Path) -> None:
    assert _layout(tmp_path, 1).pools == []
    odd = _layout(tmp_path, 2, n_hosts=5).pools
    assert [(p.name, p.backend, p.hosts) for p in odd] == [
        ("blue", "app_blue", ("app01", "app02", "app03")), ("green", "app_green",
                                                            ("app04", "app05"))]


def test_config_without_pools_is_unchanged(tmp_path: Path) -> None:
    cfg = haproxy.render(_layout(tmp_path, 1), _layout(tmp_path, 1).lbs[0])
    assert "    bind 127.0.0.1:4001\n    default_backend app\n" in cfg
    assert "backend app\n" in cfg and "map(" not in cfg and "frontend preview" not in cfg


def test_config_with_pools_routes_through_the_map(tmp_path: Path) -> None:
    layout = _layout(tmp_path, 2)
    cfg = haproxy.render(layout, layout.lbs[1])
    assert ("frontend web\n    bind 127.0.0.1:4003\n"
            "    use_backend %[str(live),map(/run/haproxy/pools.map,app_blue)]\n") in cfg
    assert ("frontend preview\n    bind 127.0.0.1:4006\n"
            "    use_backend %[str(preview),map(/run/haproxy/pools.map,app_green)]\n") in cfg
    blue = cfg.split("backend app_blue\n", 1)[1].split("\n\n", 1)[0]
    green = cfg.split("backend app_green\n", 1)[1]
    assert "server app01 " in blue and "server app02 " in blue and "app03" not in blue
    assert "server app03 " in green and "server app04 " in green and "app01" not in green
    assert "\nbackend app\n" not in cfg


def test_haproxy_accepts_the_pools_config(tmp_path: Path) -> None:
    layout = _layout(tmp_path, 2)
    lb = layout.lbs[0]
    pools.write_map_file(layout, lb, pools.initial_entries(layout))
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy.render(layout, lb).replace(lb.socket_path, str(tmp_path / "s.sock")))
    proc = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_inventory_groups_and_spec_target_the_live_pool(tmp_path: Path) -> None:
    layout = _layout(tmp_path, 2)
    inventory = files.inventory(layout)
    assert "[app]\napp01 ansible_host=10.213.3.11\n" in inventory
    assert "[blue]\napp01 ansible_host=10.213.3.11\napp02 ansible_host=10.213.3.12\n" in inventory
    assert "[green]\napp03 ansible_host=10.213.3.13\napp04 ansible_host=10.213.3.14\n" in inventory
    spec = files.rollout_spec(layout)
    assert "\nhosts: blue\n" in spec and "  backend: app_blue\n" in spec
    plain = files.rollout_spec(_layout(tmp_path, 1))
    assert "\nhosts: app\n" in plain and "  backend: app\n" in plain
    assert "[blue]" not in files.inventory(_layout(tmp_path, 1))


def test_lab_json_round_trips_and_an_old_one_loads(tmp_path: Path) -> None:
    layout = _layout(tmp_path, 2)
    layout.save()
    assert Layout.load(tmp_path) == layout
    data = json.loads((tmp_path / "lab.json").read_text())
    assert [p["backend"] for p in data["pools"]] == ["app_blue", "app_green"]
    assert data["lbs"][1]["map_path"] == "/run/haproxy/pools.map"
    assert data["lbs"][0]["preview"] == "127.0.0.1:4005"
    # A lab.json written before pools existed: no n_pools, no map_path/preview_port.
    for lb in data["layout"]["lbs"]:
        del lb["map_path"], lb["preview_port"]
    del data["layout"]["n_pools"]
    (tmp_path / "lab.json").write_text(json.dumps(data))
    old = Layout.load(tmp_path)
    assert old is not None and old.n_pools == 1 and old.pools == []
    assert old.lbs[0].map_path is None and old.describe()["pools"] == []


def test_the_blue_green_spec_is_valid_and_previews_through_every_lb(tmp_path: Path) -> None:
    import yaml

    from rollout_py.spec import parse_spec

    layout = _layout(tmp_path, 2)
    text = files.bluegreen_spec(layout, files.rollout_spec(layout))
    spec = parse_spec(yaml.safe_load(text))
    assert spec.strategy == "blue_green" and spec.hosts == "app" and spec.blue_green
    assert {n: (p.backend, p.hosts) for n, p in spec.blue_green.pools.items()} == {
        "blue": ("app_blue", "blue"), "green": ("app_green", "green")}
    assert spec.blue_green.map == "pools.map"
    assert [c.http for c in spec.blue_green.preview] == [
        "http://127.0.0.1:4005/version", "http://127.0.0.1:4006/version"]
    assert spec.analysis is not None and spec.blue_green.analysis_duration == 20
