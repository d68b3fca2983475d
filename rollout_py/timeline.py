"""Where each host's time out of rotation goes during a deploy.

From a deploy's journal (and, if kept, ansible-runner's job events of each batch's upgrade
run), every host of every batch gets its out-of-rotation interval split into contiguous
segments, each ending at the mark it is named after:

    drain          DrainStarted -> ServersDrained (waiting for sessions to end)
    disable        -> ServersDisabled (MAINT on every LB)
    ansible_start  -> the upgrade run's first task start (from StepStarted, journaled right
                      after ServersDisabled: ansible-playbook starting up)
    connect        -> the end of the host's first task that reached it (not a skipped one nor
                      one of controller-only actions such as assert or set_fact, which come
                      before it): the SSH connection is paid there
    tasks          -> the host's last task result (per task name in ``HostTimeline.tasks``)
    ansible_end    -> StepFinished (the run ending, and waiting for the batch's other hosts)
    upgrade        -> StepFinished, instead of the four above when there are no job events
    probes         -> the host's last verify probe
    enable         -> ServersEnabled (restore on every LB, then HAProxy's check says UP)
    rollback       -> RollbackFinished (from RollbackStarted if it was back in rotation)
    total          the sum: DrainStarted -> ServersEnabled for a batch that succeeded

The stage step runs before any drain and never counts. A batch that failed or was rolled back
reports what happened, flagged by its ``outcome``; a journal cut mid-batch (a killed
controller) counts up to its last event, the segment then in progress included; a batch run
again after a resume has one timeline per attempt.

Example:
    >>> from rollout_py import events as ev
    >>> def at(cls, ts, **kw):
    ...     return cls(deploy_id="d", seq=0, ts=ts, batch=1, **kw)
    >>> journal = [
    ...     at(ev.BatchStarted, 0.0, hosts=("app1",)),
    ...     at(ev.DrainStarted, 0.0, servers=("app1",)),
    ...     at(ev.ServersDrained, 2.0, servers=("app1",)),
    ...     at(ev.ServersDisabled, 2.5, servers=("app1",)),
    ...     at(ev.StepStarted, 2.5, step="upgrade", hosts=("app1",)),
    ...     at(ev.StepFinished, 6.5, step="upgrade", ok=True, hosts={"app1": "ok"},
    ...        versions={}, duration=4.0),
    ...     at(ev.ProbePassed, 7.0, host="app1", phase="verify"),
    ...     at(ev.ServersEnabled, 9.0, servers=("app1",)),
    ... ]
    >>> [t.segments for t in host_timelines(journal)]  # doctest: +NORMALIZE_WHITESPACE
    [{'drain': 2.0, 'disable': 0.5, 'upgrade': 4.0, 'probes': 0.5, 'enable': 2.0,
      'total': 9.0}]
    >>> print(render_table(summarize(host_timelines(journal))))
    segment              mean      max   share
    drain                2.00     2.00     22%
    disable              0.50     0.50      6%
    upgrade              4.00     4.00     44%
    probes               0.50     0.50      6%
    enable               2.00     2.00     22%
    total                9.00     9.00    100%
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from rollout_py import events as ev
from rollout_py.state import DeployRecord
from rollout_py.timeline_runs import load_runs

Segment = Literal["drain", "disable", "ansible_start", "connect", "tasks", "ansible_end",
                  "upgrade", "probes", "enable", "rollback", "total"]
SEGMENTS: tuple[Segment, ...] = get_args(Segment)
# ok: back in rotation; rolled_back: the batch was undone; failed: it stopped without an
# undo; incomplete: the journal ends mid-batch (a killed controller, or a deploy under way).
Outcome = Literal["ok", "rolled_back", "failed", "incomplete"]

JobEvent = Mapping[str, Any]
Run = Sequence[JobEvent]  # one ansible-runner run's job events, in their counter order
_RESULTS = frozenset({"runner_on_ok", "runner_on_failed", "runner_on_skipped",
                      "runner_on_unreachable"})
# Actions that run on the controller only: a task of theirs does not open the SSH connection.
_LOCAL = frozenset({"validate_argument_spec", "assert", "fail", "set_fact", "set_stats",
                    "debug", "meta", "include_tasks", "include_role", "import_tasks",
                    "import_role", "include_vars", "add_host", "group_by", "pause"})
_MARKS: dict[type[ev.Event], str] = {
    ev.ServersDrained: "drained", ev.ServersDisabled: "disabled", ev.ServersEnabled: "enabled",
    ev.BatchFailed: "failed", ev.RollbackStarted: "rollback_started",
    ev.RollbackFinished: "rollback_finished"}


@dataclass(frozen=True, slots=True)
class HostTimeline:
    """One host's time out of rotation in one batch, in seconds per segment (in order)."""

    host: str
    batch: int
    outcome: Outcome
    segments: dict[Segment, float]
    tasks: dict[str, float] = field(default_factory=dict)  # the ``tasks`` segment by name
    attempt: int = 1  # 2 and on: the batch run again after a resume


@dataclass(frozen=True, slots=True)
class SegmentStats:
    segment: Segment
    hosts: int  # how many hosts have this segment
    mean: float
    max: float
    share: float  # of the summed total of the hosts, 0..1


@dataclass(frozen=True, slots=True)
class TaskStats:
    task: str
    hosts: int
    mean: float
    max: float


@dataclass(frozen=True, slots=True)
class Summary:
    segments: list[SegmentStats]
    tasks: list[TaskStats]  # slowest (by mean) first
    flagged: dict[str, Outcome]  # "batch N host" -> outcome, for every host not "ok"


@dataclass
class _Attempt:
    """The journal's marks of one batch from a DrainStarted on, up to ``end``: the last
    event before the batch's next DrainStarted (a rerun after a resume), or the journal's."""

    batch: int
    number: int  # 1, then 2 for a rerun, ...
    start: float
    end: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)
    probes: dict[str, float] = field(default_factory=dict)  # host -> last verify probe
    passed: dict[str, bool] = field(default_factory=dict)  # host -> that probe passed


def parse_time(value: Any) -> float | None:
    """An ansible-runner ISO time (``created``, ``start``, ``end``) as a Unix time; naive
    times are UTC."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _attempts(events: Sequence[ev.Event]) -> list[_Attempt]:
    found: list[_Attempt] = []
    current: dict[int, _Attempt] = {}
    before = 0.0
    for e in events:
        batch = getattr(e, "batch", None)
        if isinstance(e, ev.DrainStarted):
            if e.batch in current:
                current[e.batch].end = before
            current[e.batch] = _Attempt(e.batch, sum(a.batch == e.batch for a in found) + 1, e.ts)
            found.append(current[e.batch])
        before = max(before, e.ts)
        if not isinstance(batch, int) or batch not in current:
            continue
        attempt = current[batch]
        key = _MARKS.get(type(e))
        if isinstance(e, ev.StepStarted | ev.StepFinished) and e.step == "upgrade":
            key = "step_started" if isinstance(e, ev.StepStarted) else "step_finished"
        elif isinstance(e, ev.ProbePassed | ev.ProbeFailed) and e.phase == "verify":
            attempt.probes[e.host] = e.ts
            attempt.passed[e.host] = isinstance(e, ev.ProbePassed)
        if key is not None and key not in attempt.marks:
            attempt.marks[key] = e.ts
    for attempt in current.values():
        attempt.end = before
    return found


def _batch_hosts(events: Sequence[ev.Event]) -> dict[int, tuple[str, ...]]:
    hosts: dict[int, tuple[str, ...]] = {}
    for e in events:
        if isinstance(e, ev.DeployStarted):
            hosts.update({n: tuple(b) for n, b in enumerate(e.batches, 1)})
        elif isinstance(e, ev.BatchStarted):
            hosts[e.batch] = tuple(e.hosts)
    return hosts


def _pick_run(runs: Sequence[Run], attempt: _Attempt) -> Run:
    """The batch's (last) run that started within this attempt."""
    end = attempt.marks.get("step_finished", attempt.end)
    chosen: Run = ()
    for run in runs:
        started = next((parse_time(j.get("created")) for j in run), None)
        if started is not None and attempt.start <= started <= end:
            chosen = run
    return chosen


def _host_tasks(run: Run, host: str) -> tuple[float | None, int, list[tuple[str, float]]]:
    """When the host's first task started, which of its results first reached it (the SSH
    connection is paid there), and each of its task results (name, end time)."""
    task_start: dict[str, float] = {}
    first_start: float | None = None
    reached = -1
    results: list[tuple[str, float]] = []
    for job in run:
        data = job.get("event_data") or {}
        kind = job.get("event")
        if kind == "playbook_on_task_start":
            created = parse_time(job.get("created"))
            if created is not None:
                task_start.setdefault(str(data.get("task_uuid", "")), created)
        elif kind in _RESULTS and data.get("host") == host:
            end = parse_time(data.get("end")) or parse_time(job.get("created"))
            if end is None:
                continue
            if first_start is None:
                first_start = (task_start.get(str(data.get("task_uuid", "")))
                               or parse_time(data.get("start")) or end)
            action = str(data.get("task_action") or "").rsplit(".", 1)[-1]
            if reached < 0 and kind != "runner_on_skipped" and action not in _LOCAL:
                reached = len(results)
            results.append((str(data.get("task") or "?"), end))
    return first_start, max(reached, 0), results


def _host_timeline(host: str, hosts: Sequence[str], attempt: _Attempt, run: Run
                   ) -> HostTimeline:
    m = attempt.marks
    marks: list[tuple[Segment, float]] = []
    tasks: dict[str, float] = {}
    if "drained" in m:
        marks.append(("drain", m["drained"]))
    if "disabled" in m:
        marks.append(("disable", m["disabled"]))
    first_start, reached, results = (_host_tasks(run, host) if "step_started" in m
                                     else (None, 0, []))
    if first_start is not None and results:
        previous = results[reached][1]
        marks += [("ansible_start", first_start), ("connect", previous)]
        for name, end in results[reached + 1:]:
            tasks[name] = round(tasks.get(name, 0.0) + end - previous, 6)
            previous = end
        marks.append(("tasks", previous))
        if "step_finished" in m:
            marks.append(("ansible_end", m["step_finished"]))
    elif "step_finished" in m:
        marks.append(("upgrade", m["step_finished"]))
    if host in attempt.probes:
        marks.append(("probes", attempt.probes[host]))
    if "enabled" in m:
        marks.append(("enable", m["enabled"]))

    outcome: Outcome
    if "rollback_started" in m:
        outcome = "rolled_back"
    elif "failed" in m:
        outcome = "failed"
    elif "enabled" in m:
        outcome = "ok"
    else:
        outcome = "incomplete"

    segments: dict[Segment, float] = {}
    previous = attempt.start
    for name, ts in marks:
        segments[name] = round(max(0.0, ts - previous), 6)
        previous = max(previous, ts)
    if outcome != "ok" and "enabled" not in m:
        # The segment in progress when the batch failed (or the journal ends).
        stop = min(m.get(k, attempt.end) for k in ("failed", "rollback_started"))
        if stop > previous:
            verified = all(attempt.passed.get(h, False) for h in hosts)
            now = _in_progress(m, ran=bool(results), verified=verified)
            segments[now] = round(segments.get(now, 0.0) + stop - previous, 6)
            previous = stop
    if outcome == "rolled_back":
        end = m.get("rollback_finished", attempt.end)
        begin = m["rollback_started"] if "enabled" in m else previous  # out again, if it was in
        segments["rollback"] = round(max(0.0, end - begin), 6)
    segments["total"] = round(sum(segments.values()), 6)
    return HostTimeline(host, attempt.batch, outcome, segments, tasks, attempt.number)


def _in_progress(marks: Mapping[str, float], *, ran: bool, verified: bool) -> Segment:
    """The segment a host was in when its batch stopped, from the marks reached."""
    if "drained" not in marks:
        return "drain"
    if "disabled" not in marks:
        return "disable"
    if "step_finished" not in marks:
        return "ansible_end" if ran else "upgrade"
    return "enable" if verified else "probes"  # the batch's probes passed: it was enabling


def host_timelines(events: Sequence[ev.Event],
                   runs: Mapping[int, Sequence[Run]] | None = None) -> list[HostTimeline]:
    """Every host's out-of-rotation time, by batch then host (pure: see :func:`load_runs`).

    ``runs`` maps a batch to the job events of its upgrade runs (an attempt uses the one that
    started within it); without them the Ansible part is one ``upgrade`` segment. A batch run
    again after a resume has a timeline per attempt.
    """
    hosts = _batch_hosts(events)
    out: list[HostTimeline] = []
    for attempt in sorted(_attempts(events), key=lambda a: (a.batch, a.number)):
        run = _pick_run((runs or {}).get(attempt.batch, ()), attempt)
        batch_hosts = hosts.get(attempt.batch, ())
        out += [_host_timeline(host, batch_hosts, attempt, run) for host in batch_hosts]
    return out


def record_timelines(record: DeployRecord) -> list[HostTimeline]:
    """:func:`host_timelines` of a deploy record in a state directory, artifacts included."""
    return host_timelines(record.events(), load_runs(record.runs))


def summarize(timelines: Sequence[HostTimeline]) -> Summary:
    """Mean and max per segment over the hosts that have it; share of the summed total."""
    grand = sum(t.segments.get("total", 0.0) for t in timelines)
    stats: list[SegmentStats] = []
    for segment in SEGMENTS:
        values = [t.segments[segment] for t in timelines if segment in t.segments]
        if values:
            stats.append(SegmentStats(segment, len(values), sum(values) / len(values),
                                      max(values), sum(values) / grand if grand else 0.0))
    per_task: dict[str, list[float]] = {}
    for t in timelines:
        for name, seconds in t.tasks.items():
            per_task.setdefault(name, []).append(seconds)
    tasks = [TaskStats(name, len(v), sum(v) / len(v), max(v)) for name, v in per_task.items()]
    tasks.sort(key=lambda s: (-s.mean, s.task))
    flagged: dict[str, Outcome] = {
        f"batch {t.batch}{f' (attempt {t.attempt})' if t.attempt > 1 else ''} {t.host}":
        t.outcome for t in timelines if t.outcome != "ok"}
    return Summary(stats, tasks, flagged)


def render_table(summary: Summary, *, tasks: int = 0) -> str:
    """Plain text: one row per segment (mean, max, share of total), then the ``tasks``
    slowest tasks indented under it, then the hosts whose batch did not end back in
    rotation."""
    shown = summary.tasks[:tasks]
    width = max([16] + [len(_task_label(t.task)) + 2 for t in shown])
    lines = [f"{'segment':<{width}}{'mean':>9}{'max':>9}{'share':>8}"]
    if not summary.segments:
        return lines[0] + "\n(no batch went out of rotation)"
    grand = next((s.mean * s.hosts for s in summary.segments if s.segment == "total"), 0.0)
    for s in summary.segments:
        lines.append(f"{s.segment:<{width}}{s.mean:>9.2f}{s.max:>9.2f}{s.share:>8.0%}")
        if s.segment == "tasks":
            for t in shown:
                share = t.mean * t.hosts / grand if grand else 0.0
                label = "  " + _task_label(t.task)
                lines.append(f"{label:<{width}}{t.mean:>9.2f}{t.max:>9.2f}{share:>8.0%}")
    if summary.flagged:
        lines.append("not back in rotation normally: " + ", ".join(
            f"{k} ({v})" for k, v in sorted(summary.flagged.items())))
    return "\n".join(lines)


def _task_label(name: str) -> str:
    return name if len(name) <= 40 else name[:37] + "..."
