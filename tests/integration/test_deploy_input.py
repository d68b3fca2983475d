"""Bad input is refused with exit 2, naming the field or host, before anything is touched."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rollout_py.lab.layout import Layout
from tests.integration.conftest import LabFactory
from tests.integration.deploykit import lb_states, rollout_cli, versions, write_spec


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> Layout:
    return lab_factory(n_hosts=3, n_lbs=2)


def spec_with(lab: Layout, tmp_path: Path, mutate) -> Path:  # type: ignore[no-untyped-def]
    path = write_spec(lab, tmp_path / "rollout.yml")
    data = yaml.safe_load(path.read_text())
    mutate(data)
    path.write_text(yaml.safe_dump(data))
    return path


CASES = {
    "unknown spec key": (lambda d: d.update(batchez=[1]), [], ["batchez", "unknown key"]),
    "batch 0": (lambda d: d.update(batches=[1, 0]), [], ["batches.1", "at least 1"]),
    "batch 150%": (lambda d: d.update(batches=["150%"]), [], ["batches.0", "150%"]),
    "unknown host in --limit": (lambda d: None, ["-l", "app01,app99"], ["app99", "--limit"]),
    "server name with ;": (
        lambda d: d["haproxy"].update(server="{{ inventory_hostname }};disable"), [],
        ["app01;disable", "not a valid HAProxy name"]),
    "socket that does not answer": (
        lambda d: d["haproxy"].update(sockets=["unix:///run/rollout-lab/nobody-here.sock"]), [],
        ["nobody-here.sock", "preflight"]),
    "unknown probe kind": (lambda d: d["health"].update(probes=[{"ping": "x"}]), [],
                           ["health.probes", "probe 0"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_and_touches_nothing(lab: Layout, tmp_path: Path, case: str) -> None:
    mutate, args, words = CASES[case]
    spec = spec_with(lab, tmp_path, mutate)
    before_lb, before_versions = lb_states(lab), versions(lab)
    proc = rollout_cli("deploy", "-f", str(spec), "--version", "2.0", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr
    if case == "unknown spec key":
        assert str(spec) in proc.stderr  # the file is named too
    assert lb_states(lab) == before_lb and versions(lab) == before_versions


def test_shell_metacharacters_in_the_version_are_refused(lab: Layout, tmp_path: Path) -> None:
    marker = tmp_path / "x"
    spec = write_spec(lab, tmp_path / "rollout.yml")
    before_lb = lb_states(lab)
    proc = rollout_cli("deploy", "-f", str(spec), "--version", f"1.0;touch {marker}")
    assert proc.returncode == 2 and "version" in proc.stderr and "invalid" in proc.stderr
    assert not marker.exists() and lb_states(lab) == before_lb


def test_plan_prints_batches_lb_actions_capacity_and_rollback(lab: Layout, tmp_path: Path) -> None:
    spec = write_spec(lab, tmp_path / "rollout.yml", batches=[1, 2], max_unavailable=2)
    before = lb_states(lab)
    proc = rollout_cli("plan", "-f", str(spec), "--version", "2.0")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "batch 1: app01" in out and "batch 2: app02, app03" in out
    assert out.count("state drain") == 4  # per batch, per LB
    assert "in rotation meanwhile: 2 of 3" in out and "in rotation meanwhile: 1 of 3" in out
    assert "roll back" in out
    assert lb_states(lab) == before
    skip = rollout_cli("plan", "-f", str(spec), "--version", "1.0")
    assert "skip app01: already at 1.0" in skip.stdout and "nothing to do" in skip.stdout


def test_a_changed_host_key_fails_closed_in_preflight(lab: Layout, tmp_path: Path) -> None:
    import subprocess

    # A copy of the lab's SSH setup in which app02's known host key is another key.
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")],
                   check=True)
    other = " ".join((tmp_path / "k.pub").read_text().split()[:2])
    known = [line if not line.split()[0].endswith(",app02") else
             f"{line.split()[0]} {other}" for line in lab.known_hosts.read_text().splitlines()]
    (tmp_path / "known_hosts").write_text("\n".join(known) + "\n")
    (tmp_path / "ssh_config").write_text(lab.ssh_config.read_text().replace(
        str(lab.known_hosts), str(tmp_path / "known_hosts")))
    (tmp_path / "inventory.ini").write_text(lab.inventory.read_text().replace(
        str(lab.ssh_config), str(tmp_path / "ssh_config")))
    spec = write_spec(lab, tmp_path / "rollout.yml")
    before = lb_states(lab)
    proc = rollout_cli("deploy", "-f", str(spec), "--version", "2.0",
                       "-i", str(tmp_path / "inventory.ini"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "SSH to app02" in proc.stderr and "app01" not in proc.stderr.split("SSH to")[-1]
    assert lb_states(lab) == before
