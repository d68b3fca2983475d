"""The live view of a deploy on a terminal: a fold over its events (``apply``) and what it shows
(``rows``, ``header``, ``render``). Pure: no terminal, no clock of its own (``render`` takes
``now``); rollout_py.live_sink drives rich's Live with it.

A host's state comes from the events that name it (hosts) or its HAProxy server (servers:
mapped to hosts through each batch, in plan order). Drain, MAINT and enable act on every LB, so
a host's cell per LB is what the events say it was set to there: DRAIN, MAINT, or its recorded
admin state and weight (and the weights a traffic or warm-up step set).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from rollout_py import events as ev

# The states a host goes through, as shown.
WAITING, STAGING, DRAINING, OUT = "waiting", "staging", "draining", "out (MAINT)"
UPGRADING, PROBING, IN_ROTATION = "upgrading", "probing", "back in rotation"
DONE, FAILED, ROLLING_BACK, ROLLED_BACK = "done", "failed", "rolling back", "rolled back"
STRANDED, SKIPPED = "STRANDED (MAINT)", "skipped"


@dataclass(frozen=True, slots=True)
class HostView:
    host: str
    batch: int | None = None
    state: str = WAITING
    lbs: Mapping[str, str] = field(default_factory=dict)  # LB url -> admin state [weight]
    probes: str = ""  # e.g. "verify 2/3"
    note: str = ""  # why it failed, what was found


@dataclass(frozen=True, slots=True)
class LiveState:
    """What the view knows after the events so far. ``consecutive``: the probes a host must
    pass in a row (the spec's health.consecutive), when known."""

    consecutive: int | None = None
    deploy_id: str = ""
    title: str = ""
    started: float | None = None
    finished: float | None = None
    batch: int | None = None
    batches: int = 0
    step: str = ""
    analysis: str = ""
    status: str = "running"
    hosts: Mapping[str, HostView] = field(default_factory=dict)
    lbs: tuple[str, ...] = ()
    servers: Mapping[str, str] = field(default_factory=dict)  # HAProxy server -> host
    batch_hosts: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    recorded: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # host -> LB -> cell
    streak: Mapping[str, tuple[str, int, int]] = field(default_factory=dict)  # phase, row, all


def _cell(admin: Any, weight: Any = None) -> str:
    return f"{admin} {weight}" if weight is not None else str(admin)


def _hosts(current: LiveState, names: Any, /, **changes: Any) -> dict[str, HostView]:
    """The hosts with ``changes`` applied to those named (new ones added)."""
    hosts = dict(current.hosts)
    for name in names:
        hosts[name] = dataclasses.replace(hosts.get(name) or HostView(name), **changes)
    return hosts


def _server_hosts(state: LiveState, servers: Any) -> list[str]:
    return [state.servers.get(s, s) for s in servers
            if s in state.servers or s in state.hosts]


def _set_lbs(state: LiveState, names: Any, cell: Any) -> dict[str, HostView]:
    """Each named host's cell on every known LB: ``cell(host, lb)``."""
    hosts = dict(state.hosts)
    for name in names:
        view = hosts.get(name) or HostView(name)
        hosts[name] = dataclasses.replace(view, lbs={lb: cell(name, lb) for lb in state.lbs})
    return hosts


def _weights(state: LiveState, weights: Mapping[str, Mapping[str, int]]) -> LiveState:
    """Weights set on each LB (traffic steps, warm-up, restores): the cells' weights."""
    state = _add_lbs(state, weights)
    hosts = dict(state.hosts)
    for lb, per in weights.items():
        for server, weight in per.items():
            host = state.servers.get(server, server)
            if host not in hosts:
                continue
            view = hosts[host]
            admin = view.lbs.get(lb, "").split(" ")[0] or "READY"
            hosts[host] = dataclasses.replace(view, lbs={**view.lbs, lb: _cell(admin, weight)})
    return dataclasses.replace(state, hosts=hosts)


def _add_lbs(state: LiveState, lbs: Any) -> LiveState:
    new = tuple(lb for lb in lbs if lb not in state.lbs)
    return dataclasses.replace(state, lbs=state.lbs + new) if new else state


def _probe(state: LiveState, e: ev.ProbePassed | ev.ProbeFailed) -> LiveState:
    phase, row, total = state.streak.get(e.host, (e.phase, 0, 0))
    if phase != e.phase:
        row, total = 0, 0
    passed = not isinstance(e, ev.ProbeFailed)
    row, total = (row + 1 if passed else 0), total + 1
    of = f"/{state.consecutive}" if state.consecutive and e.phase == "verify" else ""
    probes = f"{e.phase} {row}{of} in a row ({total} probes)"
    changes: dict[str, Any] = {"probes": probes}
    if isinstance(e, ev.ProbeFailed):
        changes["note"] = f"probe {e.probe}: {e.detail}"
    elif state.hosts.get(e.host, HostView(e.host)).note.startswith("probe "):
        changes["note"] = ""  # passing again: the failure is in the lines above
    current = state.hosts.get(e.host)
    if e.phase in ("verify", "soak") and current is not None and current.state in (
            UPGRADING, PROBING, IN_ROTATION, WAITING):
        changes["state"] = PROBING if e.phase == "verify" else IN_ROTATION
    return dataclasses.replace(state, streak={**state.streak, e.host: (e.phase, row, total)},
                               hosts=_hosts(state, [e.host], **changes))


def apply(state: LiveState, e: ev.Event) -> LiveState:
    """The state after event ``e``; ``state`` is left as it was."""
    s = state
    match e:
        case ev.DeployStarted():
            hosts = dict(s.hosts)
            batch_hosts = dict(s.batch_hosts)
            for i, names in enumerate(e.batches, start=1):
                batch_hosts[i] = tuple(names)
                for name in names:
                    hosts.setdefault(name, HostView(name, batch=i))
            for name, why in e.skipped.items():
                hosts.setdefault(name, HostView(name, state=SKIPPED, note=why))
            return dataclasses.replace(
                s, deploy_id=e.deploy_id, title=f"{e.name} -> {e.version}",
                started=s.started or e.ts, batches=len(e.batches), hosts=hosts,
                batch_hosts=batch_hosts, step="started")
        case ev.StepStarted() if e.step == "stage":
            return dataclasses.replace(s, step="stage", hosts=_hosts(s, e.hosts, state=STAGING))
        case ev.StepFinished() if e.step == "stage":
            hosts = dict(s.hosts)
            for name, outcome in e.hosts.items():
                view = hosts.get(name) or HostView(name)
                hosts[name] = dataclasses.replace(
                    view, state=WAITING if outcome == "ok" else FAILED,
                    note="staged" if outcome == "ok" else f"stage: {outcome}")
            return dataclasses.replace(s, hosts=hosts, step=f"stage {'ok' if e.ok else 'FAILED'}")
        case ev.BatchStarted():
            return dataclasses.replace(
                s, batch=e.batch, step="capacity check",
                batch_hosts={**s.batch_hosts, e.batch: tuple(e.hosts)},
                hosts=_hosts(s, e.hosts, batch=e.batch))
        case ev.CapacityChecked():
            return dataclasses.replace(s, step=f"capacity: {e.taking_out} out (max "
                                                f"{e.max_unavailable})")
        case ev.StateRecorded() | ev.DrainStarted():
            in_batch = s.batch_hosts.get(e.batch, ())
            servers = dict(s.servers)
            if len(in_batch) == len(e.servers):
                servers.update(zip(e.servers, in_batch, strict=True))
            s = _add_lbs(dataclasses.replace(s, servers=servers), e.recorded)
            recorded = dict(s.recorded)
            for lb, per in e.recorded.items():
                for server, (admin, weight) in per.items():
                    host = servers.get(server, server)
                    recorded[host] = {**recorded.get(host, {}), lb: _cell(admin, weight)}
            s = dataclasses.replace(s, recorded=recorded)
            if isinstance(e, ev.StateRecorded):
                return dataclasses.replace(s, step="state recorded")
            found: dict[str, list[str]] = {}
            for key, admin in e.found_out.items():
                lb, _, server = key.rpartition(" ")
                found.setdefault(servers.get(server, server), []).append(f"{admin} on {lb}")
            hosts = _set_lbs(s, _server_hosts(s, e.servers), lambda h, lb: "DRAIN")
            for host, where in found.items():
                if host in hosts:
                    hosts[host] = dataclasses.replace(
                        hosts[host], note="out before the deploy: " + ", ".join(where))
            hosts = {k: dataclasses.replace(v, state=DRAINING) if k in
                     _server_hosts(s, e.servers) else v for k, v in hosts.items()}
            return dataclasses.replace(s, hosts=hosts, step="drain")
        case ev.ServersDrained():
            return dataclasses.replace(s, step="drained")
        case ev.ServersDisabled():
            out = _server_hosts(s, e.servers)
            hosts = _set_lbs(s, out, lambda h, lb: "MAINT")
            s = dataclasses.replace(s, hosts=hosts, step="MAINT")
            return dataclasses.replace(s, hosts=_hosts(s, out, state=OUT))
        case ev.StepStarted():
            what = UPGRADING if e.step == "upgrade" else ROLLING_BACK
            return dataclasses.replace(s, step=e.step, hosts=_hosts(s, e.hosts, state=what))
        case ev.StepFinished():
            hosts = dict(s.hosts)
            for name, outcome in e.hosts.items():
                view = hosts.get(name) or HostView(name)
                if outcome != "ok":
                    view = dataclasses.replace(view, state=FAILED, note=f"{e.step}: {outcome}")
                elif e.step == "upgrade":
                    view = dataclasses.replace(view, state=PROBING)
                hosts[name] = view
            return dataclasses.replace(
                s, hosts=hosts, step=f"{e.step} {'ok' if e.ok else 'FAILED'}"
                + (", verify probes" if e.ok and e.step == "upgrade" else ""))
        case ev.ProbePassed() | ev.ProbeFailed():
            return _probe(s, e)
        case ev.ServersEnabled():
            back = _server_hosts(s, e.servers)
            hosts = _set_lbs(s, back, lambda h, lb: s.recorded.get(h, {}).get(lb, "READY"))
            s = dataclasses.replace(s, hosts=hosts, step="enabled")
            return dataclasses.replace(s, hosts=_hosts(s, back, state=IN_ROTATION))
        case ev.WarmupStep():
            s = _weights(s, e.weights)
            return dataclasses.replace(s, step=f"warm-up {e.step}/{e.of}")
        case ev.WeightsRecorded() | ev.WeightsRestored():
            return dataclasses.replace(_weights(s, e.weights), step=e.kind.replace("_", " "))
        case ev.WeightsSet():
            return dataclasses.replace(_weights(s, e.weights),
                                       step=f"step {e.step}: traffic {e.share * 100:g}%")
        case ev.AnalysisWindow():
            what = f"step {e.step}" if e.step else "watch"
            return dataclasses.replace(s, analysis=f"{what} ({e.purpose}) window {e.window}: "
                                                   f"{e.verdict.upper()}")
        case ev.AnalysisFinished():
            return dataclasses.replace(s, analysis=f"step {e.step} ({e.purpose}): "
                                                   f"{e.verdict.upper()}")
        case ev.PauseStarted():
            return dataclasses.replace(s, step=f"step {e.step}: paused by {e.by}")
        case ev.PauseEnded():
            return dataclasses.replace(s, step=f"step {e.step}: pause ended ({e.how})")
        case ev.BatchSucceeded():
            names = s.batch_hosts.get(e.batch, ())
            return dataclasses.replace(s, step=f"batch {e.batch} done",
                                       hosts=_hosts(s, names, state=DONE))
        case ev.BatchFailed():
            hosts = _hosts(s, e.hosts, state=FAILED)
            for name in e.hosts:
                if not hosts[name].note:
                    hosts[name] = dataclasses.replace(hosts[name], note=e.cause)
            return dataclasses.replace(s, hosts=hosts,
                                       step=f"batch {e.batch} FAILED ({e.failure})")
        case ev.RollbackStarted():
            touched = [n for n in s.batch_hosts.get(e.batch, e.hosts)
                       if s.hosts.get(n, HostView(n)).state != WAITING]
            # A host back in rotation is drained first (rollout_py.undo), then MAINT.
            serving = [n for n in touched if (v := s.hosts.get(n)) is not None and v.lbs
                       and not any(c in ("DRAIN", "MAINT") for c in v.lbs.values())]
            s = dataclasses.replace(s, hosts=_set_lbs(s, serving, lambda h, lb: "DRAIN"))
            return dataclasses.replace(s, step=f"rollback of batch {e.batch}",
                                       hosts=_hosts(s, touched or e.hosts, state=ROLLING_BACK))
        case ev.RollbackFinished():
            back = [n for n, v in s.hosts.items() if v.state == ROLLING_BACK]
            stranded = [s.servers.get(x, x) for x in e.stranded]
            back = [n for n in back if n not in stranded]
            hosts = _set_lbs(s, back, lambda h, lb: s.recorded.get(h, {}).get(lb, "READY"))
            s = dataclasses.replace(s, hosts=hosts)
            hosts = _hosts(s, back, state=ROLLED_BACK)
            s = dataclasses.replace(s, hosts=hosts)
            s = dataclasses.replace(s, hosts=_set_lbs(s, [n for n in stranded if n in s.hosts],
                                                      lambda h, lb: "MAINT"))
            return dataclasses.replace(s, hosts=_hosts(s, stranded, state=STRANDED),
                                       step="rolled back" if e.ok else "ROLLBACK INCOMPLETE")
        case ev.ForeignChange() | ev.DriftCorrected():
            why = "changed by someone else" if isinstance(e, ev.ForeignChange) else "drift fixed"
            what = "; ".join(f"{k}: {v}" for k, v in sorted(e.found.items()))
            return dataclasses.replace(s, hosts=_hosts(s, _server_hosts(s, e.servers),
                                                       note=f"{why}: {what}"))
        case ev.Interrupted():
            return dataclasses.replace(s, step=f"{e.signal}: {e.action}")
        case ev.DeployResumed():
            return dataclasses.replace(s, deploy_id=e.deploy_id, started=s.started or e.ts,
                                       step=f"resumed: {e.action}", status="running",
                                       finished=None,
                                       batch=e.batch if e.batch is not None else s.batch)
        case ev.DeployFinished():
            stranded = [s.servers.get(x, x) for x in e.stranded]
            s = dataclasses.replace(s, status=e.status, finished=e.ts, step="finished")
            return dataclasses.replace(s, hosts=_hosts(s, [n for n in stranded
                                                          if n in s.hosts], state=STRANDED))
    return s


def fold(events: Any, consecutive: int | None = None) -> LiveState:
    """The state after every event of ``events``, in order."""
    state = LiveState(consecutive=consecutive)
    for e in events:
        state = apply(state, e)
    return state


def rows(state: LiveState) -> list[tuple[str, ...]]:
    """The table's rows: host, batch, state, one cell per LB, probes, note."""
    return [(v.host, str(v.batch) if v.batch is not None else "-", v.state,
             *(v.lbs.get(lb, "") for lb in state.lbs), v.probes, v.note)
            for v in state.hosts.values()]


def header(state: LiveState, now: float) -> str:
    """One line: the deploy, the current batch and step, analysis progress, elapsed time."""
    end = state.finished if state.finished is not None else now
    elapsed = f"{end - state.started:.0f} s" if state.started is not None else "-"
    of = f"/{state.batches}" if state.batches else ""
    batch = f"batch {state.batch}{of}" if state.batch else "no batch yet"
    parts = [f"deploy {state.deploy_id or '?'} {state.title}".rstrip(), batch,
             f"step: {state.step or '-'}"]
    if state.analysis:
        parts.append(f"analysis: {state.analysis}")
    parts += [f"elapsed {elapsed}", state.status]
    return " | ".join(parts)


_STYLES = {DONE: "green", IN_ROTATION: "green", FAILED: "bold red", STRANDED: "bold red",
           ROLLED_BACK: "yellow", ROLLING_BACK: "yellow", OUT: "magenta", DRAINING: "cyan",
           UPGRADING: "blue", PROBING: "blue", SKIPPED: "dim"}


def shown(state: LiveState, max_rows: int | None = None
          ) -> tuple[list[tuple[str, ...]], str]:
    """The rows to draw when at most ``max_rows`` fit: those of hosts waiting, done or
    skipped are left out first (counted in the returned line); the rest in fleet order."""
    all_rows = rows(state)
    if max_rows is None or len(all_rows) <= max_rows:
        return all_rows, ""
    quiet = (WAITING, DONE, SKIPPED)
    busy = [r for r in all_rows if r[2] not in quiet]
    room = max(0, max_rows - len(busy))
    kept = [r[0] for r in all_rows if r[2] in quiet][:room]
    drawn = [r for r in all_rows if r[2] not in quiet or r[0] in kept][:max(max_rows, 1)]
    hosts = {r[0] for r in drawn}
    left: dict[str, int] = {}
    for r in all_rows:
        if r[0] not in hosts:
            left[r[2]] = left.get(r[2], 0) + 1
    return drawn, "not shown: " + ", ".join(f"{n} {what}" for what, n in left.items())


def render(state: LiveState, now: float, max_rows: int | None = None) -> RenderableType:
    """The header and the table of hosts x LBs (at most ``max_rows`` rows, see ``shown``)."""
    table = Table(expand=False, show_edge=False, pad_edge=False)
    for name in ("host", "batch", "state", *state.lbs, "probes", "note"):
        table.add_column(name, overflow="fold", max_width=60 if name == "note" else None)
    drawn, hidden = shown(state, max_rows)
    for row in drawn:
        table.add_row(*row[:2], Text(row[2], style=_STYLES.get(row[2], "")),
                      *(Text(c) for c in row[3:]))
    parts: list[RenderableType] = [Text(header(state, now), style="bold"), table]
    if hidden:
        parts.append(Text(hidden, style="dim"))
    return Group(*parts)
