"""rollout flag set | ramp | kill | list on a real lab under constant load: a malformed file is
refused before any host is touched; set and kill write the same bytes on every host through
Ansible; a flag-enabled release ramps a good variant through 10 %, 50 %, 100 % with gates, is
killed on every host within the measured time, and a failing variant is reverted at its first
gate with no more failed requests than the printed bound."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout_py.flags.edit import set_variant, to_json
from rollout_py.flags.model import load_flags
from rollout_py.lab import artifact
from rollout_py.lab.layout import HOST_FLAGS_PATH, Layout
from tests.integration.conftest import LabFactory
from tests.integration.deploykit import (
    json_result,
    load,
    rollout_cli,
    served_variants,
    write_spec,
)

FLAG = "new-greeting"


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> Layout:
    return lab_factory(n_hosts=4, name="flagcmds")


def flag_spec(lab: Layout) -> Path:
    """The lab's spec with a ramp judged in 2 s windows and the app's effect header."""
    return write_spec(lab, lab.path / "rollout-flags.yml", analysis={
        "interval": 2, "min_requests": 40, "gates": [
            {"error_rate": {"max": "5%"}}, {"error_rate": {"max_over_baseline": "2%"}}]},
        flags={"file": "flags.json", "path": HOST_FLAGS_PATH, "step_duration": 4,
               "baseline_duration": 4,
               "effect": {"url": "http://{{ ansible_host }}:8080/", "timeout": 15,
                          "settle": 1}})


def no_effect_spec(lab: Layout) -> Path:
    """The lab's spec without its effect check (release 1.0 knows no flags: nothing to see)."""
    path = write_spec(lab, lab.path / "rollout-noeffect.yml")
    data = yaml.safe_load(path.read_text())
    data["flags"].pop("effect")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def host_files(lab: Layout) -> dict[str, bytes]:
    return {h.name: (lab.host_dir(h.name) / HOST_FLAGS_PATH.lstrip("/")).read_bytes()
            for h in lab.app_hosts}


def events_of(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith('{"event"')]


def flag(*args: str, spec: Path) -> tuple[int, dict[str, Any], list[dict[str, Any]], str]:
    proc = rollout_cli("flag", *args, "-f", str(spec), "--json")
    result = json_result(proc) if proc.stdout.strip() else {}
    return proc.returncode, result, events_of(proc.stdout), proc.stderr


def test_files_on_the_hosts_malformed_set_kill_and_list(lab: Layout) -> None:
    spec = flag_spec(lab)
    controller = lab.path / "flags.json"
    good = controller.read_text()
    before = host_files(lab)
    mtimes = {h.name: (lab.host_dir(h.name) / HOST_FLAGS_PATH.lstrip("/")).stat().st_mtime_ns
              for h in lab.app_hosts}
    with load(lab, rps=100) as summaries:
        controller.write_text(good.replace('"defaultVariant": "off"', '"defaultVariant": "onn"'))
        code, result, events, err = flag("set", FLAG, "on", spec=spec)
        assert code == 2 and result["status"] == "refused" and events == []
        assert "flags.json:" in err and "defaultVariant: 'onn' is not one of" in err
        assert host_files(lab) == before  # refused before any host was touched
        assert {h.name: (lab.host_dir(h.name) / HOST_FLAGS_PATH.lstrip("/")).stat()
                .st_mtime_ns for h in lab.app_hosts} == mtimes
        controller.write_text(good)
        want = to_json(set_variant(load_flags(controller), FLAG, "on"))

        code, result, events, err = flag("set", FLAG, "on", spec=no_effect_spec(lab))
        assert code == 0, err
        assert set(host_files(lab).values()) == {want.encode()}
        assert controller.read_text() == want

        proc = rollout_cli("flag", "list", "-f", str(spec), "--hosts")
        assert proc.returncode == 0 and "4/4 hold the controller's copy" in proc.stdout

        code, result, events, err = flag("kill", FLAG, spec=no_effect_spec(lab))
        assert code == 0, err
        pushed = [e for e in events if e["event"] == "flag_pushed"]
        assert len(pushed) == 1 and set(pushed[0]["hosts"].values()) == {"ok"}
        assert result["written_s"] == pushed[0]["seconds"] > 0
        assert {json.loads(b)["flags"][FLAG]["defaultVariant"] for b in
                host_files(lab).values()} == {"off"}

        drifted = lab.host_dir("app03") / HOST_FLAGS_PATH.lstrip("/")
        drifted.write_text(good.replace('"off"', '"on"', 1))
        proc = rollout_cli("flag", "list", "-f", str(spec), "--hosts")
        assert proc.returncode == 1 and "app03: failed" in proc.stdout
        drifted.write_bytes(host_files(lab)["app01"])
    (summary,) = summaries
    assert summary.failed == 0


def deploy(lab: Layout, version: str) -> None:
    proc = rollout_cli("deploy", "-f", str(lab.path / "rollout.yml"), "--version", version)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr


def test_ramp_kill_and_a_failing_variant_with_a_flag_enabled_release(lab: Layout) -> None:
    spec = flag_spec(lab)
    artifact.build_artifact(lab.artifacts, "2.0", artifact.Behaviour(flags=True))
    artifact.build_artifact(lab.artifacts, "3.0", artifact.Behaviour(flags=True,
                                                                      flag_error_rate=1.0))
    deploy(lab, "2.0")

    with load(lab, rps=100) as summaries:
        code, result, events, err = flag("ramp", FLAG, "--to", "100%", spec=spec)
    assert code == 0, err + json.dumps(result)
    passed = [e["percent"] for e in events if e["event"] == "flag_step_passed"]
    assert passed == [10, 50, 100]
    assert {e["verdict"] for e in events if e["event"] == "flag_window"} == {"pass"}
    assert summaries[0].failed == 0 and set(summaries[0].by_variant) == {"on", "off"}
    assert set(served_variants(lab, FLAG).values()) == {"on"}

    with load(lab, rps=100) as summaries:
        code, result, events, err = flag("kill", FLAG, spec=spec)
    assert code == 0, err
    effect = next(e for e in events if e["event"] == "flag_in_effect")
    assert effect["variant"] == "off" and None not in effect["hosts"].values()
    assert result["fleet_s"] == max(effect["hosts"].values())
    assert set(served_variants(lab, FLAG).values()) == {"off"}
    assert summaries[0].failed == 0

    deploy(lab, "3.0")  # variant `on` fails every request it serves
    before = host_files(lab)
    with load(lab, rps=100) as summaries:
        code, result, events, err = flag("ramp", FLAG, "--to", "50%", spec=spec)
    assert code == 1 and result["status"] == "reverted", err + json.dumps(result)
    windows = [(e["step"], e["verdict"]) for e in events if e["event"] == "flag_window"]
    assert windows == [(1, "fail")], windows
    bound = next(e for e in events if e["event"] == "flag_baseline")["bound"]
    (summary,) = summaries
    assert 0 < summary.failed <= bound["requests"], (summary.failed, bound)
    assert summary.failed_by_variant == {"on": summary.failed}
    assert host_files(lab) == before and set(served_variants(lab, FLAG).values()) == {"off"}
