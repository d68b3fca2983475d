"""The app_release role's stage step: the ``app_release_stage`` module on its own (safe
unpacking, pruning, check mode) and the role through its action plugin with real
ansible-playbook runs on hosts of a local connection (no network, no lab): tags, check mode,
idempotence, the reported previous release."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import ansible_runner
import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "roles" / "app_release" / "library" / "app_release_stage.py"
MARKER = ".app_release_complete"
STAGE_TASK = "Stage the release and prune old releases"
SWITCH_TASK = "Switch current to the release and restart the app"

Member = tuple[tarfile.TarInfo, bytes | None]


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "",
           mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, link, mode, int(time.time())
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


def tarball(path: Path, members: list[Member]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def release_tar(path: Path, version: str) -> Path:
    return tarball(path, [member("app.py", b"print('app')\n"),
                          member("release.json", json.dumps({"version": version}).encode())])


def run_module(tmp_path: Path, check: bool = False, **args: Any) -> dict[str, Any]:
    """The module run as Ansible runs it (its arguments from a file), on this machine."""
    root = args.setdefault("root", str(tmp_path / "srv"))
    version = args.setdefault("version", "2.0")
    args.setdefault("release", f"{root}/releases/{version}")
    args.setdefault("marker", f"{root}/releases/{version}/{MARKER}")
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {
        **args, "_ansible_check_mode": check, "_ansible_diff": True}}))
    proc = subprocess.run([sys.executable, str(MODULE), str(args_file)], capture_output=True,
                          text=True, timeout=60, check=False)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def make_releases(root: Path, names: list[str], current: str | None = None) -> None:
    """Staged releases, the first the oldest (mtimes a minute apart, in the past)."""
    now = time.time()
    for age, name in enumerate(reversed(names), start=1):
        release = root / "releases" / name
        release.mkdir(parents=True)
        (release / MARKER).touch()
        os.utime(release, (now - 60 * age, now - 60 * age))
    if current is not None:
        (root / "current").symlink_to(root / "releases" / current)


def releases(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "releases").iterdir())


# --- the module ---------------------------------------------------------------------------


def test_unpacks_into_a_fresh_release_dir_and_writes_the_marker_last(tmp_path: Path) -> None:
    src = tarball(tmp_path / "a.tar.gz", [
        member("app.py", b"app"), member("bin", kind=tarfile.DIRTYPE, mode=0o755),
        member("bin/run", b"#!/bin/sh\n", mode=0o4755), member("bin/app", kind=tarfile.SYMTYPE,
                                                               link="../app.py")])
    stale = tmp_path / "srv" / "releases" / "2.0"
    stale.mkdir(parents=True)
    (stale / "leftover").write_text("from an interrupted run")
    result = run_module(tmp_path, src=str(src))
    assert result["changed"] and result["unpacked"] and result["staged"]
    assert (result["previous"], result["removed"]) == (None, [])
    assert not src.exists()
    release = tmp_path / "srv" / "releases" / "2.0"
    assert sorted(p.name for p in release.iterdir()) == [MARKER, "app.py", "bin"]
    assert (release / "app.py").read_text() == "app"
    assert os.readlink(release / "bin" / "app") == "../app.py"
    assert release.stat().st_mode & 0o7777 == 0o755
    assert (release / MARKER).stat().st_mode & 0o7777 == 0o644
    assert (release / "bin" / "run").stat().st_mode & 0o7777 == 0o755  # no setuid from it
    assert release.stat().st_mtime >= (release / "app.py").stat().st_mtime


@pytest.mark.parametrize(("members", "why"), [
    ([member("/etc/evil")], "absolute path"),
    ([member("../evil")], "'..' component"),
    ([member("a/../../evil")], "'..' component"),
    ([member("l", kind=tarfile.SYMTYPE, link="/etc")], "points to an absolute path"),
    ([member("l", kind=tarfile.SYMTYPE, link="../outside")], "points outside the release"),
    ([member("h", kind=tarfile.LNKTYPE, link="../outside")], "points outside the release"),
    ([member("dev", kind=tarfile.CHRTYPE)], "not a file, directory or link"),
    # l -> d/.. is inside while d does not exist; d -> . then makes it the parent
    ([member("l", kind=tarfile.SYMTYPE, link="d/.."), member("d", kind=tarfile.SYMTYPE,
                                                             link="."),
      member("l/evil", b"x")], "would be extracted outside the release"),
    ([member("l", kind=tarfile.SYMTYPE, link="d/.."), member("d", kind=tarfile.SYMTYPE,
                                                             link=".")],
     "symlink 'l' points outside the release"),
], ids=["absolute", "dotdot", "dotdot-inside", "symlink-absolute", "symlink-outside",
        "hardlink-outside", "device", "symlink-chain-write", "symlink-chain"])
def test_unsafe_archives_are_refused(tmp_path: Path, members: list[Member], why: str) -> None:
    src = tarball(tmp_path / "a.tar.gz", members)
    (tmp_path / "outside").write_text("keep")
    result = run_module(tmp_path, src=str(src))
    assert result.get("failed"), result
    assert "cannot unpack" in result["msg"] and why in result["msg"], result["msg"]
    assert not (tmp_path / "srv" / "releases" / "2.0").exists()  # no half release left
    assert not (tmp_path / "srv" / "evil").exists() and not (tmp_path / "evil").exists()
    assert (tmp_path / "outside").read_text() == "keep"


def test_without_src_a_release_to_stage_is_only_reported(tmp_path: Path) -> None:
    make_releases(tmp_path / "srv", ["0.1", "0.2", "1.0"], current="1.0")
    result = run_module(tmp_path, keep=1)
    assert result["needs_artifact"] and not result["changed"] and not result["staged"]
    assert result["previous"] == "1.0"
    assert releases(tmp_path / "srv") == ["0.1", "0.2", "1.0"]  # pruned after staging


def test_prune_keeps_the_newest_the_release_and_the_previous(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    make_releases(root, ["0.1", "0.2", "1.0", "0.3", "2.0", "0.4"], current="1.0")
    (root / "releases" / "link").symlink_to(root / "releases" / "0.1")  # not a release dir
    (root / "releases" / ".hidden").mkdir()
    os.utime(root / "releases" / ".hidden", (0, 0))
    # 2.0 is staged but older than 0.4: it is kept all the same, as 1.0 (current)
    result = run_module(tmp_path, keep=1)
    assert result["changed"] and not result["unpacked"] and result["staged"]
    assert result["removed"] == ["0.3", "0.2", "0.1"]
    assert sorted(p.name for p in (root / "releases").iterdir()) == [
        ".hidden", "0.4", "1.0", "2.0", "link"]
    again = run_module(tmp_path, keep=1)
    assert not again["changed"] and again["removed"] == []


def test_check_mode_counts_the_release_to_stage_as_the_newest(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    make_releases(root, ["0.1", "0.2", "0.3", "1.0"], current="1.0")
    (root / "releases" / "2.0").mkdir()  # incomplete (no marker), and the oldest
    os.utime(root / "releases" / "2.0", (0, 0))
    result = run_module(tmp_path, check=True, keep=3)
    assert result["changed"] and result["needs_artifact"] and result["staged"]
    assert result["removed"] == ["0.2", "0.1"]
    assert result["diff"]["before"] == "0.1\n0.2\n0.3\n1.0\n2.0\n"
    assert result["diff"]["after"] == "0.3\n1.0\n2.0\n"
    assert releases(root) == ["0.1", "0.2", "0.3", "1.0", "2.0"]
    assert not (root / "releases" / "2.0" / MARKER).exists()


def test_a_current_release_without_marker_is_not_restaged(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    (root / "releases" / "2.0").mkdir(parents=True)
    (root / "releases" / "2.0" / "app.py").write_text("live")
    (root / "current").symlink_to("releases/2.0/")  # relative, trailing slash
    result = run_module(tmp_path)
    assert not result["changed"] and not result["needs_artifact"] and result["staged"]
    assert result["previous"] == "2.0"
    assert (root / "releases" / "2.0" / "app.py").read_text() == "live"


# --- the role, through the action plugin ---------------------------------------------------

PLAYBOOK = """\
- name: Deploy a release
  hosts: app
  gather_facts: false
  roles:
    - role: app_release
      vars:
        app_release_version: "{{ version }}"
        app_release_artifact: "{{ artifact_dir }}/app-{{ version }}.tar.gz"
        app_release_restart_method: none
        app_release_keep: 2
"""


class Run:
    """One ansible-playbook run of the role: its outcome per task and host, and its stats."""

    def __init__(self, tmp_path: Path, version: str, tags: str | None = None,
                 check: bool = False, extra: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> None:
        (tmp_path / "playbook.yml").write_text(PLAYBOOK)
        runs = tmp_path / "runs"
        runs.mkdir(exist_ok=True)
        result = ansible_runner.run(
            private_data_dir=str(runs), playbook=str(tmp_path / "playbook.yml"),
            inventory=str(tmp_path / "inventory.ini"), tags=tags,
            cmdline="--check --diff" if check else None, quiet=True,
            suppress_env_files=True,
            # Given a cancel callback, ansible-runner installs no SIGINT/SIGTERM handlers of
            # its own in this process (they would outlive the test).
            cancel_callback=lambda: False,
            extravars={"version": version, "artifact_dir": str(tmp_path / "artifacts"),
                       **(extra or {})},
            envvars={"ANSIBLE_ROLES_PATH": str(REPO / "roles"), **(env or {})})
        self.rc = result.rc
        self.results: dict[tuple[str, str], dict[str, Any]] = {}
        self.status: dict[tuple[str, str], str] = {}
        self.stats: dict[str, Any] = {}
        for event in result.events:
            data = event.get("event_data", {})
            if event["event"] in ("runner_on_ok", "runner_on_failed", "runner_on_skipped"):
                key = (data["task"], data["host"])
                self.results[key] = data.get("res", {})
                self.status[key] = event["event"].removeprefix("runner_on_")
            elif event["event"] == "playbook_on_stats":
                self.stats = data.get("artifact_data") or {}

    @property
    def previous(self) -> Any:
        return self.stats.get("rollout_previous_version")

    def stage(self, host: str) -> dict[str, Any]:
        return self.results[(STAGE_TASK, host)]


@pytest.fixture
def hosts(tmp_path: Path) -> dict[str, Path]:
    """Two local hosts, h1 on 1.0 with older releases, h2 fresh; artifacts 2.0 and 3.0."""
    roots = {"h1": tmp_path / "h1", "h2": tmp_path / "h2"}
    (tmp_path / "inventory.ini").write_text("[app]\n" + "".join(
        f"{h} app_release_root={root}\n" for h, root in roots.items())
        + f"\n[app:vars]\nansible_connection=local\nansible_python_interpreter={sys.executable}\n")
    (tmp_path / "artifacts").mkdir()
    for version in ("2.0", "3.0"):
        release_tar(tmp_path / "artifacts" / f"app-{version}.tar.gz", version)
    make_releases(roots["h1"], ["0.1", "0.2", "1.0"], current="1.0")
    return roots


def test_stage_run_stages_prunes_and_reports_then_switch_run_switches(
        tmp_path: Path, hosts: dict[str, Path]) -> None:
    staged = Run(tmp_path, "2.0", tags="stage,prune")
    assert staged.rc == 0
    assert staged.previous == {"h1": "1.0", "h2": None}
    assert (SWITCH_TASK, "h1") not in staged.status
    assert staged.stage("h1")["removed"] == ["0.2", "0.1"]  # keep 2; 1.0 is current
    assert releases(hosts["h1"]) == ["1.0", "2.0"] and releases(hosts["h2"]) == ["2.0"]
    assert (hosts["h1"] / "releases" / "2.0" / MARKER).exists()
    assert os.readlink(hosts["h1"] / "current") == str(hosts["h1"] / "releases" / "1.0")
    # the artifact's remote copy went with the tmp dir
    assert not list((Path.home() / ".ansible" / "tmp").glob("*/artifact"))

    again = Run(tmp_path, "2.0", tags="stage,prune")
    assert again.rc == 0 and again.status[(STAGE_TASK, "h1")] == "ok"
    assert not again.stage("h1")["changed"] and not again.stage("h2")["changed"]

    switched = Run(tmp_path, "2.0", tags="switch,untagged")
    assert switched.rc == 0
    assert (STAGE_TASK, "h1") not in switched.status
    assert switched.previous == {"h1": "1.0", "h2": None}
    for root in hosts.values():
        assert os.readlink(root / "current") == str(root / "releases" / "2.0")


def stage_module_runs(tmp_path: Path, version: str, **extra: Any) -> int:
    """How many times a stage run (--tags stage,prune) started the hosts' Python, i.e. ran the
    stage module, on the two hosts (the interpreter is a wrapper that counts its starts)."""
    count = tmp_path / f"starts-{time.monotonic_ns()}"
    wrapper = tmp_path / "python-counting"
    wrapper.write_text(f'#!/bin/sh\necho >> "$COUNT"\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    run = Run(tmp_path, version, tags="stage,prune",
              extra={"ansible_python_interpreter": str(wrapper), **extra},
              env={"COUNT": str(count)})
    assert run.rc == 0, run.results
    return len(count.read_text().splitlines()) if count.exists() else 0


def test_a_small_archive_goes_with_the_one_module_run_a_big_one_after_asking(
        tmp_path: Path, hosts: dict[str, Path]) -> None:
    """Up to app_release_transfer_first_max bytes the archive is sent with the module's one
    run per host (a staged host gets it too and unpacks nothing); above, a first run asks and
    only a host that needs the release gets the archive and a second run."""
    assert stage_module_runs(tmp_path, "2.0") == 2  # both hosts staged 2.0 in one run each
    assert releases(hosts["h1"]) == ["1.0", "2.0"] and releases(hosts["h2"]) == ["2.0"]
    assert stage_module_runs(tmp_path, "2.0") == 2  # staged already: one run each, no change
    assert releases(hosts["h2"]) == ["2.0"]
    size = (tmp_path / "artifacts" / "app-3.0.tar.gz").stat().st_size
    assert stage_module_runs(tmp_path, "3.0", app_release_transfer_first_max=size - 1) == 4
    assert releases(hosts["h2"]) == ["2.0", "3.0"]
    assert stage_module_runs(tmp_path, "3.0", app_release_transfer_first_max=0) == 2


def test_plain_run_does_it_all_and_a_second_run_changes_nothing(
        tmp_path: Path, hosts: dict[str, Path]) -> None:
    first = Run(tmp_path, "2.0")
    assert first.rc == 0 and first.previous == {"h1": "1.0", "h2": None}
    assert first.stage("h1")["changed"] and first.results[(SWITCH_TASK, "h1")]["changed"]
    assert releases(hosts["h1"]) == ["1.0", "2.0"]
    second = Run(tmp_path, "2.0")
    assert second.rc == 0 and second.previous == {"h1": "2.0", "h2": "2.0"}
    assert not any(r.get("changed") for r in second.results.values())


def test_prune_tag_alone_prunes_without_staging(tmp_path: Path,
                                                hosts: dict[str, Path]) -> None:
    run = Run(tmp_path, "2.0", tags="prune")
    assert run.rc == 0 and run.previous == {"h1": "1.0", "h2": None}
    assert run.stage("h1")["removed"] == ["0.1"] and not run.stage("h1")["unpacked"]
    assert releases(hosts["h1"]) == ["0.2", "1.0"]
    assert not (hosts["h2"] / "releases").exists()


def test_check_mode_changes_nothing_and_says_what_it_would_do(
        tmp_path: Path, hosts: dict[str, Path]) -> None:
    def snapshot() -> list[tuple[str, str]]:
        return sorted((str(p.relative_to(tmp_path)), os.readlink(p) if p.is_symlink() else "")
                      for root in hosts.values() for p in root.rglob("*"))

    before = snapshot()
    run = Run(tmp_path, "2.0", check=True)
    assert run.rc == 0, run.results
    assert snapshot() == before
    stage = run.stage("h1")
    assert stage["changed"] and stage["msg"].startswith("would unpack ")
    assert stage["removed"] == ["0.2", "0.1"]  # 2.0 counted as the newest, 1.0 is current
    assert run.results[(SWITCH_TASK, "h1")]["changed"]  # accepted: staged in this run
    assert run.previous == {"h1": "1.0", "h2": None}


def test_a_missing_artifact_fails_the_stage_naming_it(tmp_path: Path,
                                                      hosts: dict[str, Path]) -> None:
    run = Run(tmp_path, "9.9", tags="stage,prune")
    assert run.rc != 0 and run.status[(STAGE_TASK, "h1")] == "failed"
    missing = tmp_path / "artifacts" / "app-9.9.tar.gz"
    assert run.stage("h1")["msg"] == f'artifact "{missing}" not found on the controller'
    assert run.previous == {"h1": "1.0", "h2": None}  # reported all the same
    assert releases(hosts["h1"]) == ["0.1", "0.2", "1.0"]  # nor pruned


def test_each_step_is_one_result_per_host_and_reports_the_previous_release(
        tmp_path: Path, hosts: dict[str, Path]) -> None:
    """Each task costs every host a worker and a job event: a good run is the argument spec's
    check, the stage and the switch per host, nothing else; the modules report the previous
    release themselves (set_stats' ansible_stats in their results)."""
    run = Run(tmp_path, "2.0")
    assert run.rc == 0
    for host in hosts:
        tasks = {task for task, h in run.status if h == host}
        assert {t for t in tasks if not t.startswith("Validating arguments")} == {
            STAGE_TASK, SWITCH_TASK}, tasks
    stats = run.stage("h1")["ansible_stats"]
    assert stats == {"data": {"rollout_previous_version": {"h1": "1.0"}},
                     "per_host": False, "aggregate": True}
    assert run.previous == {"h1": "1.0", "h2": None}


def test_a_failed_switch_fails_the_host_with_its_message_and_reports_the_previous_release(
        tmp_path: Path, hosts: dict[str, Path]) -> None:
    """What a rollback needs after a restart that failed once current was switched."""
    run = Run(tmp_path, "2.0", extra={"app_release_restart_method": "command",
                                      "app_release_restart_command": "/bin/false"})
    assert run.rc != 0
    assert run.status[(SWITCH_TASK, "h1")] == "failed"
    message = run.results[(SWITCH_TASK, "h1")]["msg"]
    assert message.startswith("rc 1")
    assert run.status[("Fail as the switch failed", "h1")] == "failed"
    assert run.results[("Fail as the switch failed", "h1")]["msg"] == message
    assert run.previous == {"h1": "1.0", "h2": None}
    assert os.readlink(hosts["h1"] / "current") == str(hosts["h1"] / "releases" / "2.0")


@pytest.mark.parametrize(("version", "extra", "message"), [
    ("bad..v", {}, 'invalid app_release_version "bad..v": must be a string of letters'),
    ("-x", {}, 'invalid app_release_version "-x"'),
    ("2.0", {"app_release_root": "srv/app"},
     'invalid app_release_root "srv/app": must be absolute and not /'),
    ("2.0", {"app_release_root": "/"}, 'invalid app_release_root "/"'),
    ("2.0", {"app_release_keep": 0}, "invalid app_release_keep 0: must be >= 1"),
], ids=["dots", "dash", "relative-root", "slash-root", "keep"])
def test_bad_settings_fail_the_stage_before_anything_naming_them(
        tmp_path: Path, hosts: dict[str, Path], version: str, extra: dict[str, Any],
        message: str) -> None:
    before = {h: sorted(str(p) for p in root.rglob("*")) for h, root in hosts.items()}
    run = Run(tmp_path, version, extra=extra)
    assert run.rc != 0
    assert run.status[(STAGE_TASK, "h1")] == "failed"
    assert run.results[(STAGE_TASK, "h1")]["msg"].startswith(message)
    assert (SWITCH_TASK, "h1") not in run.status
    assert {h: sorted(str(p) for p in root.rglob("*")) for h, root in hosts.items()} == before


@pytest.mark.parametrize(("version", "extra", "message"), [
    ("bad..v", {}, 'invalid release "'),
    ("../../etc", {}, 'invalid release "'),
    ("2.0", {"app_release_root": "srv/app"}, 'invalid app_release_root "srv/app"'),
], ids=["dots", "escape", "relative-root"])
def test_a_switch_alone_refuses_bad_settings_before_anything(
        tmp_path: Path, hosts: dict[str, Path], version: str, extra: dict[str, Any],
        message: str) -> None:
    """``--tags switch`` runs no stage: the switch module checks what it is given itself."""
    run = Run(tmp_path, version, tags="switch,untagged", extra=extra)
    assert run.rc != 0
    assert run.results[(SWITCH_TASK, "h1")]["msg"].startswith(message)
    assert os.readlink(hosts["h1"] / "current") == str(hosts["h1"] / "releases" / "1.0")
