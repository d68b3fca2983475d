"""`rollout lab up --pools 2`: blue/green pools routed by a map on every LB, switched at runtime
with ``set map``; a reload keeps the switch only if the map file was written too."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request

import pytest

from rollout_py.balancer.maps import parse_map_file, set_map, show_map
from rollout_py.lab import lab as lab_mod
from rollout_py.lab import pools
from rollout_py.lab.layout import Layout, LbSpec
from rollout_py.lab.procs import Proc
from tests.integration.conftest import LabFactory

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> Layout:
    return lab_factory(n_hosts=4, n_lbs=2, n_pools=2, name="pools")


def served_by(port: int, requests: int = 8) -> set[str]:
    """The hosts (X-Served-By) that answered ``requests`` requests through 127.0.0.1:port."""
    seen = set()
    for _ in range(requests):
        with _OPENER.open(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            assert resp.status == 200
            seen.add(str(resp.headers["X-Served-By"]))
    return seen


def pool_hosts(lab: Layout, name: str) -> set[str]:
    return next(set(p.hosts) for p in lab.pools if p.name == name)


def set_live(lab: Layout, lb: LbSpec, backend: str) -> None:
    api = lab_mod.lb_api(lab, lb)
    try:
        assert lb.map_path is not None
        set_map(api, lb.map_path, pools.LIVE_KEY, backend)
    finally:
        api.close()


def _children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return {int(p) for p in fh.read().split()}


def reload(lab: Layout, lb: LbSpec, deadline_s: float = 10) -> None:
    """SIGUSR2 to the LB's master; returns once a new worker serves and the old ones are gone."""
    master = Proc.from_json(lab.procs[f"haproxy:{lb.name}"])
    assert master.alive()
    old = _children(master.pid)
    os.kill(master.pid, signal.SIGUSR2)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        now = _children(master.pid)  # a zombie is listed until the master reaps it
        if now and not now & old:
            return
        time.sleep(0.02)
    raise AssertionError(f"{lb.name}: reload did not finish in {deadline_s} s")


def test_layout_and_lab_json_record_pools(lab: Layout) -> None:
    assert [(p.name, p.backend, p.hosts) for p in lab.pools] == [
        ("blue", "app_blue", ("app01", "app02")), ("green", "app_green", ("app03", "app04"))]
    data = json.loads((lab.path / "lab.json").read_text())
    assert [p["name"] for p in data["pools"]] == ["blue", "green"]
    lb1, lb2 = data["lbs"]
    assert lb1["map_path"] == str(lab.path / "lb1" / "pools.map")
    assert lb2["map_path"] == "/run/haproxy/pools.map"  # as HAProxy on the LB host sees it
    assert lb1["preview"] == f"127.0.0.1:{lb1['preview_port']}"
    assert Layout.load(lab.path) == lab
    inventory = (lab.path / "inventory.ini").read_text()
    assert "[blue]\napp01 " in inventory and "[green]\napp03 " in inventory
    for lb in lab.lbs:
        assert parse_map_file(pools.local_map_file(lab, lb).read_text()) == {
            "live": "app_blue", "preview": "app_green"}


def test_live_reaches_blue_and_preview_reaches_green(lab: Layout) -> None:
    for lb in lab.lbs:
        assert lb.preview_port is not None
        assert served_by(lb.port) == pool_hosts(lab, "blue")
        assert served_by(lb.preview_port) == pool_hosts(lab, "green")
    status = lab_mod.status(lab.path)
    assert [(row["live"], row["preview"]) for row in status["lbs"]] == [("blue", "green")] * 2
    assert set(status["lbs"][1]["servers"]) == {h.name for h in lab.app_hosts}


def test_set_map_switches_and_only_the_written_file_survives_a_reload(lab: Layout) -> None:
    blue, green = pool_hosts(lab, "blue"), pool_hosts(lab, "green")
    for lb in lab.lbs:
        set_live(lab, lb, "app_green")
    for lb in lab.lbs:
        assert served_by(lb.port) == green
    assert [row["live"] for row in lab_mod.status(lab.path)["lbs"]] == ["green", "green"]

    # The trap: runtime map changes live in memory only; a reload reads the file (blue).
    lb1, lb2 = lab.lbs
    reload(lab, lb1)
    assert served_by(lb1.port) == blue
    assert served_by(lb2.port) == green  # not reloaded: still switched

    # Written to the file as well, the switch survives a reload, on both LB hosts.
    set_live(lab, lb1, "app_green")
    for lb in lab.lbs:
        pools.write_map_file(lab, lb, {"live": "app_green", "preview": "app_blue"})
        reload(lab, lb)
    for lb in lab.lbs:
        assert lb.preview_port is not None
        assert served_by(lb.port) == green
        assert served_by(lb.preview_port) == blue
        api = lab_mod.lb_api(lab, lb)
        try:
            assert lb.map_path is not None
            assert show_map(api, lb.map_path) == {"live": "app_green", "preview": "app_blue"}
        finally:
            api.close()
