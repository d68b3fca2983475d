"""Lab layout (names, addresses, mount order) and artifacts (version rules, contents)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from rollout_py.errors import InputError
from rollout_py.lab import artifact, hosts
from rollout_py.lab.layout import Layout
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
                    "start_delay": 0.0, "error_rate": 0.5, "crash_on_start": False}


def test_behaviour_limits() -> None:
    with pytest.raises(InputError):
        artifact.Behaviour(error_rate=1.5)
