"""A deploy's report as data: what ``rollout report --json`` prints (schema rollout.report/1)
and rollout_py.report_html draws. Built from the deploy's record alone (journal, meta.json,
spec.json, the upgrade runs' job events), plus a lab watch's samples when one ran.

- header: who ran it (user, host, pid), what (spec, inventory, limit, strategy), the version
  and the versions it replaced, status and exit code, cause, start, duration;
- hosts: versions before and after, outcome, time out of rotation, states over time (the live
  view's, rollout_py.report_spans), each batch attempt's out-of-rotation segments
  (rollout_py.timeline);
- lbs: each host's cell on each LB over time; weights per LB and server over time;
- batches: hosts, outcome, start, end, and their steps (drain, MAINT, each Ansible run, probes,
  enable, analysis, rollback) with durations;
- windows and analyses: every analysis window's numbers, gates and verdict; how each ended;
- rollbacks: cause, failure class, hosts, start, end, what was left stranded, and the events
  of the rollback's path;
- events: every journal event as the console's line.

Times are seconds since the deploy's first event; ``started``/``finished`` are Unix times.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rollout_py import events as ev
from rollout_py.errors import InputError
from rollout_py.report import console_line
from rollout_py.report_spans import Span, out_of_rotation, replay, watch_spans
from rollout_py.result import FLEET_STATE, fold
from rollout_py.state import DeployRecord
from rollout_py.timeline import HostTimeline, record_timelines

REPORT_SCHEMA = "rollout.report/1"


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    start: float
    end: float
    duration: float
    ok: bool = True


@dataclass(frozen=True, slots=True)
class HostRow:
    host: str
    batch: int | None
    outcome: str  # upgraded | rolled_back | untouched | skipped | stranded | failed
    before: str | None
    after: str | None
    out_of_rotation: float  # seconds out of rotation on at least one LB
    states: list[Span]
    segments: list[dict[str, Any]] = field(default_factory=list)  # per batch attempt


@dataclass(frozen=True, slots=True)
class BatchRow:
    batch: int
    hosts: list[str]
    outcome: str  # succeeded | rolled_back | rollback_failed | not_started | refused
    start: float | None
    end: float | None
    duration: float | None
    steps: list[Step]


@dataclass(frozen=True, slots=True)
class EventLine:
    at: float
    kind: str
    batch: int | None
    line: str


@dataclass(frozen=True, slots=True)
class Rollback:
    batch: int
    cause: str
    failure: str | None  # the failure class of the batch (BatchFailed), if one was journaled
    hosts: list[str]
    start: float
    end: float | None  # None: the journal ends before it finished
    ok: bool | None
    stranded: list[str]
    detail: str
    path: list[EventLine]


@dataclass(frozen=True, slots=True)
class DeployReport:
    schema: str
    deploy_id: str
    name: str
    version: str
    status: str  # a DeployFinished status, or interrupted (none journaled: died or running)
    exit_code: int | None
    cause: str | None
    fleet_state: str
    who: dict[str, Any]  # user, host, pid
    what: dict[str, Any]  # spec_file, inventory, limit, strategy
    started: float
    finished: float | None
    duration: float
    versions_before: list[str]
    hosts: list[HostRow]
    lbs: dict[str, dict[str, list[Span]]]
    weights: dict[str, dict[str, list[tuple[float, int]]]]
    weights_changed: bool
    batches: list[BatchRow]
    windows: list[dict[str, Any]]
    analyses: list[dict[str, Any]]
    rollbacks: list[Rollback]
    events: list[EventLine]
    watch: dict[str, dict[str, list[Span]]] | None = None
    watch_errors: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _rel(ts: float, t0: float) -> float:
    return round(ts - t0, 3)


def _step(name: str, start: float, end: float, ok: bool = True) -> Step:
    return Step(name, start, end, round(end - start, 3), ok)


def batch_steps(events: Sequence[ev.Event], batch: int, t0: float) -> list[Step]:
    """The steps of one batch (every attempt), in the order they started: each a pair of its
    events (drain: DrainStarted -> ServersDrained, ...); the verify probes run from the
    upgrade's end to the last verify probe, enable from there to ServersEnabled."""
    steps: list[Step] = []
    open_: dict[str, float] = {}
    last_probe: float | None = None
    before = t0  # the batch's previous event: where an analysis step starts
    for e in events:
        t = e.ts
        if getattr(e, "batch", None) != batch:
            before = t  # a traffic step or a pause before the batch's analysis
            continue
        match e:
            case ev.BatchStarted():
                open_["capacity check"] = t
            case ev.CapacityChecked() if "capacity check" in open_:
                steps.append(_step("capacity check", _rel(open_.pop("capacity check"), t0),
                                   _rel(t, t0)))
            case ev.DrainStarted():
                open_["drain"] = t
            case ev.ServersDrained() if "drain" in open_:
                steps.append(_step("drain", _rel(open_.pop("drain"), t0), _rel(t, t0)))
                open_["MAINT"] = t
            case ev.ServersDisabled() if "MAINT" in open_:
                steps.append(_step("MAINT", _rel(open_.pop("MAINT"), t0), _rel(t, t0)))
            case ev.StepStarted():
                open_[f"ansible {e.step}"] = t
            case ev.StepFinished() if f"ansible {e.step}" in open_:
                start = open_.pop(f"ansible {e.step}")
                steps.append(_step(f"ansible {e.step}", _rel(start, t0), _rel(t, t0), e.ok))
                if e.step == "upgrade" and e.ok:
                    open_["verify probes"], last_probe = t, None
            case ev.ProbePassed() | ev.ProbeFailed() if e.phase == "verify":
                last_probe = t
            case ev.ServersEnabled() if "verify probes" in open_:
                start = open_.pop("verify probes")
                probed = last_probe if last_probe is not None else start
                steps.append(_step("verify probes", _rel(start, t0), _rel(probed, t0)))
                steps.append(_step("enable", _rel(probed, t0), _rel(t, t0)))
            case ev.AnalysisWindow():
                open_.setdefault(f"analysis step {e.step} ({e.purpose})", before)
            case ev.AnalysisFinished() if f"analysis step {e.step} ({e.purpose})" in open_:
                name = f"analysis step {e.step} ({e.purpose})"
                steps.append(_step(name, _rel(open_.pop(name), t0), _rel(t, t0),
                                   e.verdict in ("pass", "promoted")))
            case ev.BatchFailed() if "verify probes" in open_:
                start = open_.pop("verify probes")
                steps.append(_step("verify probes", _rel(start, t0),
                                   _rel(last_probe or t, t0), False))
            case ev.RollbackStarted():
                open_["rollback"] = t
            case ev.RollbackFinished() if "rollback" in open_:
                steps.append(_step("rollback", _rel(open_.pop("rollback"), t0), _rel(t, t0),
                                   e.ok))
        before = t
    return sorted(steps, key=lambda s: s.start)


def _lines(events: Iterable[ev.Event], t0: float) -> list[EventLine]:
    out = []
    for e in events:
        line = console_line(e)
        if line is not None:
            out.append(EventLine(_rel(e.ts, t0), e.kind, getattr(e, "batch", None), line))
    return out


def _rollbacks(events: Sequence[ev.Event], t0: float) -> list[Rollback]:
    out = []
    for i, e in enumerate(events):
        if not isinstance(e, ev.RollbackStarted):
            continue
        failed = None  # the batch's failure, in this attempt (since its last BatchStarted)
        for f in reversed(events[:i]):
            if isinstance(f, ev.BatchStarted) and f.batch == e.batch:
                break
            if isinstance(f, ev.BatchFailed) and f.batch == e.batch:
                failed = f
                break
        # Its end: the batch's next RollbackFinished, unless another RollbackStarted of the
        # batch comes first (the controller died in this one; a resume ran it again).
        j = next((k for k in range(i + 1, len(events))
                  if isinstance(events[k], ev.RollbackFinished | ev.RollbackStarted)
                  and getattr(events[k], "batch", None) == e.batch), None)
        end = len(events) if j is None else j
        finished = events[end] if end < len(events) else None
        if isinstance(finished, ev.RollbackFinished):
            end += 1
        else:
            finished = None
        path = events[i:end]
        out.append(Rollback(
            batch=e.batch, cause=e.cause, failure=failed.failure if failed else None,
            hosts=list(e.hosts), start=_rel(e.ts, t0),
            end=_rel(finished.ts, t0) if finished else None,
            ok=finished.ok if finished else None,
            stranded=list(finished.stranded) if finished else [],
            detail=finished.detail if finished else "", path=_lines(path, t0)))
    return out


def _window(e: ev.AnalysisWindow, t0: float) -> dict[str, Any]:
    return {"at": _rel(e.ts, t0), "batch": e.batch, "step": e.step, "purpose": e.purpose,
            "window": e.window, "verdict": e.verdict, "reason": e.reason,
            "canary": list(e.canary), "baseline": list(e.baseline),
            "groups": e.groups, "gates": list(e.gates)}


def _segments(timelines: Iterable[HostTimeline]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for t in timelines:
        out.setdefault(t.host, []).append({
            "batch": t.batch, "attempt": t.attempt, "outcome": t.outcome,
            "segments": {k: round(v, 3) for k, v in t.segments.items()}})
    return out


def build(events: Sequence[ev.Event], meta: Mapping[str, Any], *,
          timelines: Iterable[HostTimeline] = (), consecutive: int | None = None,
          watch: Iterable[Mapping[str, Any]] | None = None) -> DeployReport:
    """The report of a deploy from its events and meta (pure; see :func:`record_report`)."""
    if not events:
        raise InputError(f"deploy {meta.get('deploy_id', '?')} has no events yet: "
                         "nothing to report")
    t0, last = events[0].ts, events[-1].ts
    finished = events[-1] if isinstance(events[-1], ev.DeployFinished) else None
    result = fold(events)
    spans = replay(events, t0=t0, end=last, consecutive=consecutive)
    segments = _segments(timelines)
    batch_of = {h: b.index for b in result.batches for h in b.hosts}
    # Versions before: the playbook's word for the hosts it ran on, else what the deploy
    # found running at its start; a host left alone still runs that after.
    known = {k: v for e in events if isinstance(e, ev.DeployStarted)
             for k, v in e.versions.items()}
    hosts = []
    for name, h in result.hosts.items():
        before = h.before if h.before is not None else known.get(name)
        after = h.after if h.after is not None or h.outcome not in ("untouched", "skipped") \
            else before
        hosts.append(HostRow(host=name, batch=batch_of.get(name), outcome=h.outcome,
                             before=before, after=after,
                             out_of_rotation=out_of_rotation(spans.lbs, name),
                             states=spans.hosts.get(name, []), segments=segments.get(name, [])))
    batches = [BatchRow(
        batch=b.index, hosts=list(b.hosts), outcome=b.outcome,
        start=_rel(b.started, t0) if b.started is not None else None,
        end=_rel(b.finished, t0) if b.finished is not None else None,
        duration=(round(b.finished - b.started, 3)
                  if b.started is not None and b.finished is not None else None),
        steps=batch_steps(events, b.index, t0)) for b in result.batches]
    watched, errors = (watch_spans(watch, t0=t0, end=last) if watch is not None else (None, 0))
    status = result.status if finished else "interrupted"
    return DeployReport(
        schema=REPORT_SCHEMA, deploy_id=result.deploy_id or str(meta.get("deploy_id", "")),
        name=result.name, version=result.version, status=status,
        exit_code=result.exit_code if finished else None,
        cause=result.cause if finished else None,
        fleet_state=FLEET_STATE[result.status] if finished else
        "the journal ends before the deploy finished (died or still running): "
        "`rollout status` shows the fleet, `rollout resume` takes it up",
        who={k: meta.get(k) for k in ("user", "host", "pid")},
        what={k: meta.get(k) for k in ("spec_file", "inventory", "limit", "strategy")},
        started=t0, finished=finished.ts if finished else None, duration=_rel(last, t0),
        versions_before=sorted({h.before for h in hosts if h.before is not None}),
        hosts=hosts, lbs=spans.lbs, weights=spans.weights,
        weights_changed=spans.weights_changed, batches=batches,
        windows=[_window(e, t0) for e in events if isinstance(e, ev.AnalysisWindow)],
        analyses=[{"at": _rel(e.ts, t0), "batch": e.batch, "step": e.step,
                   "purpose": e.purpose, "verdict": e.verdict, "cause": e.cause,
                   "hosts": list(e.hosts)}
                  for e in events if isinstance(e, ev.AnalysisFinished)],
        rollbacks=_rollbacks(events, t0), events=_lines(events, t0),
        watch=watched, watch_errors=errors)


def report_schema() -> dict[str, Any]:
    """The JSON Schema of ``rollout report --json`` (rollout_py/schemas/report.schema.json is
    this, kept equal by a test), from the dataclasses above; no object takes other keys."""
    import pydantic

    schema = pydantic.TypeAdapter(DeployReport).json_schema(mode="serialization")

    def closed(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node["additionalProperties"] = False
            if isinstance(node.get("title"), str):  # pydantic's names add nothing here
                del node["title"]
            for value in node.values():
                closed(value)
        elif isinstance(node, list):
            for value in node:
                closed(value)

    closed(schema)
    schema["properties"]["schema"] = {"const": REPORT_SCHEMA}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": REPORT_SCHEMA,
            "title": "rollout report --json", **schema}


def read_watch(path: Path) -> list[dict[str, Any]]:
    """A lab watch's records (JSON lines); a bad line is an error naming the file and line."""
    samples = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the watch records: {exc.strerror}") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            sample = json.loads(line)
        except ValueError as exc:
            raise InputError(f"{path}:{number}: not JSON: {exc}") from exc
        if not isinstance(sample, dict) or not {"lb", "ts"} <= sample.keys():
            raise InputError(f"{path}:{number}: a watch record needs 'lb' and 'ts' "
                             "(written by `rollout lab watch --records`)")
        samples.append(sample)
    return samples


def record_report(record: DeployRecord, watch: Path | None = None) -> DeployReport:
    """The report of a deploy record in a state directory (artifacts included)."""
    spec: Any = {}
    with contextlib.suppress(OSError, ValueError):
        spec = record.snapshot("spec")
    health = spec.get("health") if isinstance(spec, dict) else None
    consecutive = health.get("consecutive") if isinstance(health, dict) else None
    return build(record.events(), record.meta(), timelines=record_timelines(record),
                 consecutive=consecutive if isinstance(consecutive, int) else None,
                 watch=read_watch(watch) if watch is not None else None)
