"""AnsibleExecutor._run's event handler: what it collects, which job events ansible-runner
writes to the artifacts, and that the run's settings reach ansible-runner (no Ansible run)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ansible_runner
import pytest
from ansible_runner.config.runner import RunnerConfig

from rollout_py.executor import AnsibleExecutor
from rollout_py.runner_files import runner_settings as _runner_settings


def job(kind: str, host: str | None = None, **data: Any) -> dict[str, Any]:
    event_data: dict[str, Any] = {"task": "t", **data}
    if host:
        event_data["host"] = host
    return {"event": kind, "uuid": f"u-{kind}-{host}", "event_data": event_data}


STATS = job("playbook_on_stats", processed={"a": 1, "b": 1, "c": 1}, failures={"b": 1},
            dark={}, ok={"a": 3}, artifact_data={"rollout_previous_version": {"a": "1"}})
JOBS = [
    job("playbook_on_start"), job("playbook_on_play_start"),
    job("playbook_on_task_start", task_uuid="t1"),
    job("runner_on_start", "a"), job("runner_on_start", "b"),
    job("runner_on_ok", "a", res={"changed": False}),
    job("runner_on_ok", "b", res={"ansible_stats": {
        "data": {"rollout_previous_version": {"b": "1"}}}}),
    job("runner_on_skipped", "c"),
    job("runner_on_failed", "b", res={"msg": "boom"}),
    job("runner_on_failed", "c", res={"msg": "ignored"}, ignore_errors=True),
    job("verbose"),
]


class FakeRun:
    """ansible_runner.run: feeds the handler; ``written`` is what is in the run's job_events
    afterwards, ``runner_wrote`` what the handler left to ansible-runner to write."""

    def __init__(self, jobs: list[dict[str, Any]], status: str = "successful",
                 disk_stats: dict[str, Any] | None = None) -> None:
        self.jobs = jobs
        self.status = status
        self.disk_stats = disk_stats
        self.written: list[tuple[str, str | None]] = []
        self.runner_wrote: list[str] = []
        self.kwargs: dict[str, Any] = {}
        self.stats_read = False
        self.events_dir = Path()

    def __call__(self, **kwargs: Any) -> Any:
        self.kwargs = kwargs
        self.events_dir = Path(kwargs["private_data_dir"], "artifacts", kwargs["ident"],
                               "job_events")
        self.events_dir.mkdir(parents=True)  # as ansible-runner does before the run
        fed = [{**event, "counter": n} for n, event in enumerate(self.jobs, 1)]
        for event in fed:
            if kwargs["event_handler"](event):
                self.runner_wrote.append(event["event"])
        files = sorted(self.events_dir.iterdir(), key=lambda f: int(f.name.split("-")[0]))
        for file in files:
            event = json.loads(file.read_text())
            assert file.name == f"{event['counter']}-{event['uuid']}.json"
            assert file.stat().st_mode & 0o777 == 0o600
            assert event == next(e for e in fed if e["uuid"] == event["uuid"])
            self.written.append((event["event"], event["event_data"].get("host")))
        fake = self

        class Runner:
            status = fake.status
            rc = 0 if fake.status == "successful" else 2
            config = SimpleNamespace(artifact_dir=str(Path(kwargs["private_data_dir"], "x")))

            @property
            def stats(self) -> dict[str, Any] | None:
                fake.stats_read = True  # reads every job event file back
                return fake.disk_stats

        return Runner()


def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeRun,
        label: str) -> Any:
    monkeypatch.setattr(ansible_runner, "run", fake)
    executor = AnsibleExecutor("inv", work_dir=tmp_path / "runs",
                               control_dir=str(tmp_path / "cp"))
    return executor.run_playbook("p.yml", ["a", "b", "c", "d"], {}, label=label)


def test_an_upgrade_run_keeps_what_timeline_and_resume_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRun([*JOBS, STATS])
    result = run(tmp_path, monkeypatch, fake, "batch1-upgrade")
    assert result.hosts == {"a": "ok", "b": "failed: t: boom", "c": "ok", "d": "not run"}
    assert result.previous_versions == {"a": "1", "b": "1"}
    assert not fake.stats_read  # the outcome came from the streamed playbook_on_stats
    assert fake.runner_wrote == []  # every kept event is written by the handler itself
    assert not list(fake.events_dir.glob("*.tmp"))
    assert ("runner_on_start", "a") not in fake.written
    assert fake.written == [
        ("playbook_on_start", None), ("playbook_on_play_start", None),
        ("playbook_on_task_start", None), ("runner_on_ok", "a"), ("runner_on_ok", "b"),
        ("runner_on_skipped", "c"), ("runner_on_failed", "b"), ("runner_on_failed", "c"),
        ("verbose", None), ("playbook_on_stats", None)]


def test_other_runs_write_no_plain_ok_or_skipped_results(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRun([*JOBS, STATS])
    result = run(tmp_path, monkeypatch, fake, "stage")
    assert result.hosts["b"] == "failed: t: boom"
    assert result.previous_versions == {"a": "1", "b": "1"}
    assert fake.written == [
        ("playbook_on_start", None), ("playbook_on_play_start", None),
        ("playbook_on_task_start", None), ("runner_on_ok", "b"),  # the set_stats result
        ("runner_on_failed", "b"), ("runner_on_failed", "c"), ("verbose", None),
        ("playbook_on_stats", None)]


def test_a_run_without_stats_event_falls_back_to_the_runners(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRun(JOBS[:7], status="canceled", disk_stats=None)
    result = run(tmp_path, monkeypatch, fake, "batch2-upgrade")
    assert fake.stats_read
    assert result.hosts == {h: "not run: cancelled" for h in "abcd"}
    assert result.previous_versions == {"b": "1"}  # streamed before the cancel


def test_the_settings_reach_ansible_runner(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRun([STATS])
    run(tmp_path, monkeypatch, fake, "probe")
    private = Path(fake.kwargs["private_data_dir"])
    assert (private / "env" / "settings").is_file()
    # ansible-runner 2.4 drops a ``settings`` argument unless env/settings exists.
    config = RunnerConfig(str(private), settings=dict(fake.kwargs["settings"]))
    config.prepare_env()
    assert config.pexpect_timeout == 0.5
    bare = tmp_path / "bare"
    bare.mkdir()
    config = RunnerConfig(str(bare), settings={"pexpect_timeout": 0.5})
    config.prepare_env()
    assert config.pexpect_timeout == 5  # why _runner_settings writes the file
    assert _runner_settings(bare)["pexpect_timeout"] == 0.5
