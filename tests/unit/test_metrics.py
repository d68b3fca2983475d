"""The Prometheus textfile, read back with prometheus_client's own parser."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from rollout_py import events as ev
from rollout_py.metrics import OUTCOMES, STATUSES, write_metrics
from rollout_py.result import DeployResult, fold

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def deploy(*, fail_batch2: bool, name: str = "web") -> DeployResult:
    d = "20250101T000000Z-abc123"
    events: list[ev.Event] = [
        ev.DeployStarted(deploy_id=d, seq=1, name=name, version="2.0",
                         batches=(("h1",), ("h2", "h3")), skipped={"h4": "already 2.0"}),
        ev.BatchStarted(deploy_id=d, seq=2, batch=1, hosts=("h1",)),
        ev.StepFinished(deploy_id=d, seq=3, batch=1, step="upgrade", ok=True,
                        hosts={"h1": "ok"}, versions={"h1": "1.0"}, duration=1.0),
        ev.BatchSucceeded(deploy_id=d, seq=4, batch=1, durations={"total": 1.0}),
        ev.BatchStarted(deploy_id=d, seq=5, batch=2, hosts=("h2", "h3")),
        ev.StepFinished(deploy_id=d, seq=6, batch=2, step="upgrade", ok=not fail_batch2,
                        hosts={"h2": "ok", "h3": "failed: boom" if fail_batch2 else "ok"},
                        versions={"h2": "1.0", "h3": "1.0"}, duration=1.0),
    ]
    if fail_batch2:
        events += [
            ev.BatchFailed(deploy_id=d, seq=7, batch=2, failure="task_failed",
                           cause="upgrade failed on h3", hosts=("h3",)),
            ev.RollbackStarted(deploy_id=d, seq=8, batch=2, hosts=("h2", "h3"),
                               cause="upgrade failed on h3"),
            ev.RollbackFinished(deploy_id=d, seq=9, batch=2, ok=True, stranded=()),
            ev.DeployFinished(deploy_id=d, seq=10, status="rolled_back", exit_code=1,
                              cause="upgrade failed on h3", stranded=()),
        ]
    else:
        events += [
            ev.BatchSucceeded(deploy_id=d, seq=7, batch=2, durations={"total": 1.0}),
            ev.DeployFinished(deploy_id=d, seq=8, status="succeeded", exit_code=0, cause=None,
                              stranded=()),
        ]
    return fold(events)


def read(path: Path) -> tuple[Samples, dict[str, str]]:
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(path.read_text()):
        types[family.name] = family.type
        assert family.documentation
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


def value(samples: Samples, metric: str, name: str = "web", **labels: str) -> float:
    return samples[(metric, tuple(sorted({"name": name, **labels}.items())))]


def test_succeeded_deploy(tmp_path: Path) -> None:
    path = tmp_path / "rollout_web.prom"
    write_metrics(path, deploy(fail_batch2=False), started=1_700_000_000.0,
                  finished=1_700_000_042.5)
    samples, types = read(path)
    assert set(types.values()) == {"gauge"}
    assert set(types) == {
        "rollout_last_deploy_timestamp_seconds", "rollout_last_deploy_status",
        "rollout_last_deploy_exit_code", "rollout_last_deploy_duration_seconds",
        "rollout_last_deploy_hosts", "rollout_last_deploy_rollbacks"}
    assert value(samples, "rollout_last_deploy_timestamp_seconds") == 1_700_000_042.5
    assert value(samples, "rollout_last_deploy_duration_seconds") == 42.5
    assert value(samples, "rollout_last_deploy_exit_code") == 0
    assert {s: value(samples, "rollout_last_deploy_status", status=s) for s in STATUSES} == {
        "succeeded": 1, "rolled_back": 0, "failed": 0, "stopped": 0, "cancelled": 0}
    assert {o: value(samples, "rollout_last_deploy_hosts", outcome=o) for o in OUTCOMES} == {
        "upgraded": 3, "rolled_back": 0, "untouched": 0, "skipped": 1, "stranded": 0,
        "failed": 0}
    assert value(samples, "rollout_last_deploy_rollbacks") == 0
    assert len(samples) == 1 + len(STATUSES) + 1 + 1 + 6 + 1


def test_rolled_back_deploy(tmp_path: Path) -> None:
    path = tmp_path / "rollout_web.prom"
    write_metrics(path, deploy(fail_batch2=True), started=100.0, finished=160.0)
    samples, _ = read(path)
    assert value(samples, "rollout_last_deploy_exit_code") == 1
    assert value(samples, "rollout_last_deploy_duration_seconds") == 60
    assert {s: value(samples, "rollout_last_deploy_status", status=s) for s in STATUSES} == {
        "succeeded": 0, "rolled_back": 1, "failed": 0, "stopped": 0, "cancelled": 0}
    assert {o: value(samples, "rollout_last_deploy_hosts", outcome=o) for o in OUTCOMES} == {
        "upgraded": 1, "rolled_back": 2, "untouched": 0, "skipped": 1, "stranded": 0,
        "failed": 0}
    assert value(samples, "rollout_last_deploy_rollbacks") == 1


def test_label_values_are_escaped(tmp_path: Path) -> None:
    name = 'we"b\\app\nv2'
    path = tmp_path / "odd.prom"
    write_metrics(path, deploy(fail_batch2=False, name=name), started=0, finished=1)
    samples, _ = read(path)
    assert value(samples, "rollout_last_deploy_exit_code", name=name) == 0
    assert value(samples, "rollout_last_deploy_hosts", name=name, outcome="upgraded") == 3


def test_written_atomically_with_mode_0644(tmp_path: Path) -> None:
    path = tmp_path / "rollout_web.prom"
    path.write_text("stale\n")
    os.chmod(path, 0o600)
    old_umask = os.umask(0o077)
    try:
        write_metrics(path, deploy(fail_batch2=True), started=0, finished=1)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["rollout_web.prom"]  # no temp file left
    text = path.read_text()
    assert text.endswith("\n") and "stale" not in text
    assert text.startswith("# HELP rollout_last_deploy_timestamp_seconds ")
