"""A flag-enabled release on a real lab: deployed with `rollout deploy`, it serves the variant
of each host's flag file through HAProxy, and follows a new file without a restart."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from rollout_py.flags import edit
from rollout_py.flags.model import load_flags
from rollout_py.lab import artifact, flagfiles
from rollout_py.lab.layout import HOST_FLAGS_PATH, Layout
from rollout_py.lab.load import LoadGenerator
from tests.integration.conftest import LabFactory
from tests.integration.deploykit import rollout_cli, versions

HEADER = "X-Flag-new-greeting"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> Layout:
    layout = lab_factory(n_hosts=2, name="flags")
    artifact.build_artifact(layout.artifacts, "2.0", artifact.Behaviour(flags=True))
    return layout


def through_lb(lab: Layout) -> tuple[str, str | None]:
    """One GET / through lb1's frontend (loopback): (served by, flag variant)."""
    with _OPENER.open(f"http://127.0.0.1:{lab.lbs[0].port}/", timeout=5) as resp:
        resp.read()
        return resp.headers["X-Served-By"], resp.headers.get(HEADER)


def poll(what: str, check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def app_pid(lab: Layout, host: str) -> int:
    return int((lab.host_dir(host) / "run" / "app.pid").read_text())


def test_a_deployed_flag_release_serves_the_hosts_flag_file(lab: Layout) -> None:
    # `lab up` wrote flag new-greeting (everyone off) on every host and beside the specs.
    controller = load_flags(lab.path / "flags.json")
    assert controller.flag("new-greeting").default_variant == "off"
    for host in lab.app_hosts:
        on_host = lab.host_dir(host.name) / HOST_FLAGS_PATH.lstrip("/")
        assert on_host.read_text() == (lab.path / "flags.json").read_text()
    assert through_lb(lab)[1] is None  # release 1.0 knows no flags

    proc = rollout_cli("deploy", "-f", str(lab.path / "rollout.yml"), "--version", "2.0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert versions(lab) == {"app01": "2.0", "app02": "2.0"}
    assert {through_lb(lab)[1] for _ in range(10)} == {"off"}
    pids = {h.name: app_pid(lab, h.name) for h in lab.app_hosts}
    for pid in pids.values():  # the app re-exec'ed itself with the lab's shared venv
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[0].decode() == lab.app_flags_python

    flagfiles.write_hosts(lab, edit.set_variant(controller, "new-greeting", "on"))
    seen: dict[str, str | None] = {}

    def every_host_serves_on() -> bool:
        served_by, variant = through_lb(lab)
        seen[served_by] = variant
        return set(seen) == {"app01", "app02"} and set(seen.values()) == {"on"}

    poll("both hosts to serve variant on", every_host_serves_on)
    summary = LoadGenerator(f"http://127.0.0.1:{lab.lbs[0].port}/", rps=100, duration=1).run()
    assert summary.failed == 0 and summary.by_variant == {"on": 100}
    assert {h.name: app_pid(lab, h.name) for h in lab.app_hosts} == pids  # no restart
