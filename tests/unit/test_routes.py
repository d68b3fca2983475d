"""The blue/green router over fake admin sockets: the exact commands of a switch (prepare on
every LB, then commit LB after LB, then the map files), a refused commit undone on the LBs
before it, the map found by its file name, and the file writes per transport."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout_py.balancer.routes import MapRouter, resolve_map, write_lb_file
from rollout_py.balancer.runtime import RuntimeAPI
from rollout_py.balancer.transports import TcpTransport, UnixTransport
from rollout_py.errors import BalancerError
from rollout_py.testing import FakeTransport

MAP = "/etc/haproxy/pools.map"
SHOW = "0x1 live app_blue\n0x2 preview app_green\n"


def lb(url: str, **answers: str) -> tuple[RuntimeAPI, FakeTransport]:
    t = FakeTransport({f"show map {MAP}": SHOW, f"prepare map {MAP}": "New version created: 7",
                       **answers})
    t.url = url
    return RuntimeAPI(t), t


def router(*apis: RuntimeAPI) -> tuple[MapRouter, list[tuple[str, str, str]]]:
    written: list[tuple[str, str, str]] = []

    def write(api: RuntimeAPI, path: str, text: str) -> None:
        written.append((api.url, path, text))

    return MapRouter(list(apis), MAP, write=write), written


def test_a_switch_prepares_everywhere_then_commits_then_writes_the_files() -> None:
    (a1, t1), (a2, t2) = lb("lb1"), lb("lb2")
    r, written = router(a1, a2)
    out = r.switch({"live": "app_green", "preview": "app_blue"})
    assert not out.failed and [s.url for s in out.switched] == ["lb1", "lb2"]
    expect = [f"show map {MAP}", f"prepare map {MAP}",
              f"add map @7 {MAP} live app_green", f"add map @7 {MAP} preview app_blue"]
    assert t1.sent == [*expect, f"commit map @7 {MAP}"]
    assert t2.sent == [*expect, f"commit map @7 {MAP}"]
    assert [(u, p) for u, p, _ in written] == [("lb1", MAP), ("lb2", MAP)]
    assert written[0][2] == "# Written by rollout_py.\nlive app_green\npreview app_blue\n"
    assert out.switched[0].at <= out.switched[1].at and out.disagreement >= 0


def test_other_entries_of_the_map_are_kept() -> None:
    (a1, t1) = lb("lb1", **{f"show map {MAP}": SHOW + "0x3 canary app_blue\n"})
    r, written = router(a1)
    r.switch({"live": "app_green"})
    assert f"add map @7 {MAP} canary app_blue" in t1.sent
    assert "canary app_blue\n" in written[0][2]


def test_a_commit_refused_on_the_second_lb_undoes_the_first() -> None:
    (a1, t1) = lb("lb1")
    (a2, _) = lb("lb2", **{f"commit map @7 {MAP}": "Unknown map identifier."})
    r, written = router(a1, a2)
    out = r.switch({"live": "app_green", "preview": "app_blue"})
    assert out.switched == () and "lb2" in out.failed and written == []
    # lb1: committed, then the entries from before prepared and committed again
    assert t1.sent[-4:] == [f"prepare map {MAP}", f"add map @7 {MAP} live app_blue",
                            f"add map @7 {MAP} preview app_green", f"commit map @7 {MAP}"]


def test_nothing_is_committed_when_a_prepare_fails_or_a_key_is_missing() -> None:
    (a1, t1) = lb("lb1")
    (a2, t2) = lb("lb2", **{f"show map {MAP}": "0x1 live app_blue\n"})  # no preview key
    r, _ = router(a1, a2)
    out = r.switch({"live": "app_green", "preview": "app_blue"})
    assert "has no key preview" in out.failed["lb2"]
    assert not [c for c in [*t1.sent, *t2.sent] if c.startswith("commit")]


def test_the_map_is_found_by_its_file_name_and_must_be_unique() -> None:
    listing = ("# id (file) description\n"
               f"-1 ({MAP}) pattern loaded from file '{MAP}' used by map at file "
               "'/etc/haproxy/haproxy.cfg' line 30. curr_ver=0 next_ver=0 entry_cnt=2\n")
    api, _ = lb("lb1", **{"show map": listing})
    assert resolve_map(api, "pools.map") == MAP
    assert resolve_map(api, "/abs/other.map") == "/abs/other.map"
    with pytest.raises(BalancerError, match="no map of that file name"):
        resolve_map(api, "shaping.map")


def test_map_files_are_written_atomically_locally_and_refused_over_tcp(tmp_path: Path) -> None:
    target = tmp_path / "pools.map"
    target.write_text("live app_blue\n")
    local = RuntimeAPI(UnixTransport("unix:///x.sock", "/x.sock"))
    write_lb_file(local, str(target), "live app_green\n")
    assert target.read_text() == "live app_green\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pools.map"]  # no temp file left
    with pytest.raises(BalancerError, match="cannot write"):
        write_lb_file(local, str(tmp_path / "missing" / "pools.map"), "x\n")
    tcp = RuntimeAPI(TcpTransport("tcp://127.0.0.1:1", "127.0.0.1", 1))
    with pytest.raises(BalancerError, match="TCP socket"):
        write_lb_file(tcp, str(target), "x\n")
