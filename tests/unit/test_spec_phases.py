"""The spec's phases section: errors name the field; where each phase runs; what `rollout
plan` and the local runner do with it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from rollout_py.api import Context, plan
from rollout_py.errors import InputError, SpecError
from rollout_py.executor import RunResult
from rollout_py.phase_run import AnsiblePhaseRunner, phase_hosts, run_local
from rollout_py.redact import Redactor
from rollout_py.report import plan_lines
from rollout_py.report_phases import phase_plan
from rollout_py.spec import load_spec
from rollout_py.spec_phases import PhaseSpec
from tests.childkit import running

BASE = ("name: web\ninventory: inv.ini\nhosts: app\nplaybook: deploy.yml\n"
        "haproxy: {sockets: ['unix:///run/haproxy.sock']}\n"
        "health: {probes: [{tcp: '{{ inventory_hostname }}:80'}]}\n")


def write(tmp_path: Path, phases: str) -> Path:
    (tmp_path / "inv.ini").write_text("[app]\nh1\nh2\nh3\n[db]\ndb1\n")
    path = tmp_path / "rollout.yml"
    path.write_text(BASE + "phases:\n" + phases)
    return path


@pytest.mark.parametrize(("phases", "words"), [
    ("  expand: {on: db1}\n", ["phases.expand", "exactly one of command or playbook"]),
    ("  expand: {command: x, playbook: y.yml, on: db1}\n", ["exactly one of"]),
    ("  expand: {command: x}\n", ["phases.expand.on", "required key is missing"]),
    ("  migrate: {command: x, on: 'a b'}\n", ["phases.migrate.on", "no spaces"]),
    ("  migrate: {command: x, on: db1, timeout: 0}\n", ["phases.migrate.timeout"]),
    ("  migrate: {command: x, on: db1, vars: {rollout_version: 1}}\n",
     ["phases.migrate.vars", "set by rollout_py"]),
    ("  migrate: {command: x, on: db1, vars: {'a-b': 1}}\n", ["phases.migrate.vars", "'a-b'"]),
    ("  migrate: {command: x, on: db1, retries: 3}\n", ["phases.migrate.retries",
                                                        "unknown key"]),
    ("  contract: {command: x, on: db1}\n", ["phases.contract.requires", "missing"]),
    ("  contract: {command: x, on: db1, requires: two}\n",
     ["phases.contract.requires", "'two' is not a version"]),
    ("  contract: {command: x, on: db1, requires: 2.10}\n",
     ["phases.contract.requires", "write the version quoted", "2.10 would be 2.1"]),
    ("  backfill: {command: x, on: db1}\n", ["phases.backfill", "unknown key"]),
])
def test_invalid_phases_name_the_field(tmp_path: Path, phases: str, words: list[str]) -> None:
    path = write(tmp_path, phases)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert f"{path}:" in message
    for word in words:
        assert word in message, message


def test_a_valid_phases_section(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "  expand: {command: 'alembic upgrade +1', on: db}\n"
                                     "  migrate: {playbook: b.yml, on: local, vars: {rows: 5}}\n"
                                     "  contract: {command: x, on: 'db[0]', requires: '2.0'}\n"))
    assert spec.phases is not None and spec.phases.contract is not None
    assert spec.phases.contract.requires == "2.0"
    (tmp_path / "b.yml").write_text("- hosts: localhost\n  tasks: []\n")
    ctx = Context.resolve(spec)
    assert phase_hosts(ctx, ("expand", "migrate", "contract")) == {
        "expand": "db1", "migrate": "local", "contract": "db1"}


@pytest.mark.parametrize(("on", "found"), [("app", "found h1, h2, h3"), ("nope", "found none")])
def test_on_must_match_exactly_one_host(tmp_path: Path, on: str, found: str) -> None:
    spec = load_spec(write(tmp_path, f"  expand: {{command: x, on: '{on}'}}\n"))
    with pytest.raises(InputError, match=f"phases.expand.on: '{on}' must match exactly one "
                                         f"host of .*\\({found}\\)"):
        phase_hosts(Context.resolve(spec))


def test_plan_shows_expand_before_batch_1_and_migrate_after_the_last(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "  expand: {command: 'expand.sh', on: db1}\n"
                                     "  migrate: {command: 'backfill.sh', on: local}\n"
                                     "  contract: {command: 'drop.sh', on: db1, requires: '2'}\n"))
    ctx = Context.resolve(spec)
    lines = plan_lines(plan(spec, version="2.0", context=ctx), None, phase_plan(ctx))
    text = "\n".join(lines)
    expand = next(i for i, line in enumerate(lines) if line.startswith("before batch 1"))
    batches = [i for i, line in enumerate(lines) if line.startswith("batch ")]
    migrate = next(i for i, line in enumerate(lines) if line.startswith("after the last"))
    assert expand < batches[0] and migrate > batches[-1], text
    assert "expand on db1: command: expand.sh" in lines[expand]
    assert "migrate on local: command: backfill.sh" in lines[migrate]
    assert "`rollout contract` runs command: drop.sh on db1 once every host runs 2 or newer" \
        in text


def test_a_local_command_gets_the_rollout_variables_and_its_output_tail(tmp_path: Path
                                                                        ) -> None:
    env = {"ROLLOUT_PHASE": "migrate", "ROLLOUT_VERSION": "2.0", "rows": "5"}
    out = run_local('echo "$ROLLOUT_PHASE $ROLLOUT_VERSION $rows"; pwd; exit 3', env=env,
                    cwd=tmp_path, timeout=10)
    assert not out.ok and out.rc == 3
    assert out.detail.splitlines() == ["migrate 2.0 5", str(tmp_path)]
    assert run_local("true", env={}, cwd=tmp_path, timeout=10).ok


def test_a_local_command_is_killed_on_timeout_and_on_cancel(tmp_path: Path) -> None:
    t = time.monotonic()
    out = run_local("sleep 30", env={}, cwd=tmp_path, timeout=0.3, poll=0.05)
    assert not out.ok and "timed out after 0.3 s" in out.detail
    assert time.monotonic() - t < 10
    cancelled = run_local("sleep 30", env={}, cwd=tmp_path, timeout=60, poll=0.05,
                          cancel=lambda: True)
    assert cancelled.cancelled and not cancelled.ok


def test_a_quiet_local_command_dies_with_its_killed_controller(tmp_path: Path) -> None:
    """kill -9 of the controller ends the command itself (not only its /bin/sh), even one that
    writes nothing (so no closed pipe would end it) and runs in a child of the shell."""
    import signal
    import subprocess
    import sys

    marker = tmp_path / "pid"
    command = (f"{sys.executable} -c 'import os, time; open(\"{marker}\", \"w\")"
               ".write(str(os.getpid())); time.sleep(120)'; echo after")
    controller = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from rollout_py.phase_run import run_local; "
         "run_local(sys.argv[1], env={}, cwd=Path('.'), timeout=300)", command],
        cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 30
        while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int(marker.read_text())
        assert running(pid)
        controller.send_signal(signal.SIGKILL)
        controller.wait(10)
        deadline = time.monotonic() + 10
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(pid), "the command outlived its controller"
    finally:
        controller.kill()
        controller.wait()
        if marker.exists() and marker.read_text() and running(int(marker.read_text())):
            os.kill(int(marker.read_text()), signal.SIGKILL)  # ours, by PID: a failed run


class _Recorder:
    """An executor that records what a phase on a host asks of Ansible."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, str, float]] = []
        self.playbooks: list[tuple[str, list[str], dict[str, Any], str]] = []

    def run_command(self, host: str, command: str, timeout: float) -> tuple[bool, str]:
        self.commands.append((host, command, timeout))
        return False, "failed: shell: secret-value leaked"

    def run_playbook(self, playbook: str, hosts: Any, extravars: Any, *, label: str,
                     tags: str | None = None, cancel: Any = None) -> RunResult:
        self.playbooks.append((playbook, list(hosts), dict(extravars), label))
        return RunResult("successful", 0, dict.fromkeys(hosts, "ok"))


def test_a_phase_on_a_host_goes_through_ansible_with_its_variables(tmp_path: Path) -> None:
    rec = _Recorder()
    runner = AnsiblePhaseRunner(rec, base_dir=tmp_path,  # type: ignore[arg-type]
                                hosts={"expand": "db1", "migrate": "local"},
                                redactor=Redactor.for_vars({"pw": "secret-value"}, ["pw"]))
    out = runner.run("expand", PhaseSpec(command="psql -f x.sql", on="db1",
                                         vars={"rows": {"a": 1}}),
                     version="2.0", deploy_id="d-1")
    assert not out.ok and "secret-value" not in out.detail
    (host, command, timeout), = rec.commands
    assert host == "db1" and timeout == 3600 and command.endswith("; psql -f x.sql")
    assert "ROLLOUT_PHASE=expand ROLLOUT_VERSION=2.0 ROLLOUT_DEPLOY_ID=d-1" in command
    assert "rows='{\"a\": 1}'" in command
    ok = runner.run("migrate", PhaseSpec(playbook="b.yml", on="local", vars={"n": 1}),
                    version="2.0", deploy_id="d-1")
    assert ok.ok
    assert rec.playbooks == [(str(tmp_path / "b.yml"), ["localhost"],
                              {"n": 1, "rollout_phase": "migrate", "rollout_version": "2.0",
                               "rollout_deploy_id": "d-1"}, "phase-migrate")]
    json.dumps(rec.playbooks)  # plain data for the journal


def test_rollout_plan_prints_the_phases_and_json_has_them(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from rollout_py.cli import cli

    path = write(tmp_path, "  expand: {command: 'expand.sh', on: db1}\n"
                           "  migrate: {command: 'backfill.sh', on: db1, timeout: 60}\n")
    out = CliRunner().invoke(cli, ["plan", "-f", str(path), "--version", "2.0"],
                             standalone_mode=False)
    assert out.exception is None, out.output
    lines = out.output.splitlines()
    assert lines[1].startswith("before batch 1: expand on db1"), out.output
    assert lines[-2].startswith("after the last batch: migrate on db1"), out.output
    data = json.loads(CliRunner().invoke(cli, ["plan", "-f", str(path), "--version", "2.0",
                                               "--json"], standalone_mode=False).output)
    assert data["phases"] == {
        "expand": {"on": "db1", "what": "command: expand.sh", "timeout": 3600},
        "migrate": {"on": "db1", "what": "command: backfill.sh", "timeout": 60}}


def test_a_missing_phase_playbook_is_refused_before_anything(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "  migrate: {playbook: nope.yml, on: local}\n"))
    with pytest.raises(InputError, match=r"phases\.migrate\.playbook: .*nope\.yml does not"):
        phase_hosts(Context.resolve(spec))


def test_deploy_refuses_a_phase_on_several_hosts_before_anything(tmp_path: Path) -> None:
    from rollout_py.api import deploy
    from rollout_py.testing import FakeFleet

    spec = load_spec(write(tmp_path, "  expand: {command: x, on: app}\n"))
    fleet = FakeFleet(["h1", "h2", "h3"])
    with pytest.raises(InputError, match="must match exactly one host"):
        deploy(spec, version="2.0", executor=fleet.executor(), balancer=fleet.balancer(),
               install_signal_handlers=False)
    assert fleet.log == [] and not (tmp_path / ".rollout").exists()


@pytest.mark.parametrize(("flags", "release", "words"), [
    ('{"flags": {"other": {"state": "ENABLED", "variants": {"on": true, "off": false}, '
     '"defaultVariant": "off"}}}', "{flag: new-greeting}", "no flag 'new-greeting'"),
    ('{"flags": {"new-greeting": {"state": "ENABLED", "variants": {"a": 1, "b": 2}, '
     '"defaultVariant": "a"}}}', "{flag: new-greeting}",
     "phases.release.variant (default on): flag new-greeting has no variant 'on'"),
    ('{"flags": {"new-greeting": {"state": "ENABLED", "variants": {"on": true, "off": false}, '
     '"defaultVariant": "off"}}}', "{flag: new-greeting, variant: maybe}",
     "phases.release.variant: flag new-greeting has no variant 'maybe'"),
    ('{"flags": {', "{flag: new-greeting}", "flags.json:1:"),
])
def test_deploy_refuses_a_release_its_flag_file_cannot_do_before_anything(
        tmp_path: Path, flags: str, release: str, words: str) -> None:
    from rollout_py.api import deploy
    from rollout_py.errors import RolloutError
    from rollout_py.testing import FakeFleet

    (tmp_path / "flags.json").write_text(flags)
    path = write(tmp_path, f"  release: {release}\n")
    path.write_text(path.read_text() + "flags: {file: flags.json, path: /srv/flags.json}\n"
                    "analysis: {interval: 1, min_requests: 10, "
                    "gates: [{error_rate: {max: 1%}}]}\n")
    spec = load_spec(path)
    fleet = FakeFleet(["h1", "h2", "h3"])
    with pytest.raises(RolloutError) as caught:
        deploy(spec, version="2.0", executor=fleet.executor(), balancer=fleet.balancer(),
               install_signal_handlers=False)
    assert words in str(caught.value)
    assert fleet.log == [] and not (tmp_path / ".rollout").exists()
