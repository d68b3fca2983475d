"""One ansible-playbook for every batch of a deploy, each batch started by the controller.

Per batch, the generated playbook waits at a gate (a task on the controller blocked on a FIFO,
see ``rollout_py/_gate``) until the controller writes ``go N``; then the user's playbook runs on
exactly that batch (an ``import_playbook`` whose ``rollout_hosts`` is the spec's pattern
``:&rollout_batch_N``, a group of a generated inventory), and a task on the controller reports
which of the batch's hosts came through (``ansible_play_hosts``: failed and unreachable hosts
drop out, rescued ones stay). No batch pays ansible-playbook's start, its parsing of inventory
and playbook, or its end; the process is started while the deploy is still in preflight or
staging. Python still decides: drain, probes, enable and every rollback stay in the
controller, and a rollback is a run of its own.

Safety: before the session starts, ``ansible-playbook --list-hosts`` of the generated playbook
must show every play of batch N targeting only batch N's hosts (a playbook that does not use
``rollout_hosts`` would otherwise run on the whole fleet at batch 1); if not, nothing is started
and each batch is one run of its own, as without a session. A batch whose gate the session
never passed (it ended before: a cancel, a batch with every host failed) is also run on its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rollout_py.errors import ControllerError
from rollout_py.executor import Cancel, RunResult
from rollout_py.job_events import failure_message, keep_event, merge_stats

# ansible-runner, as the executor calls it: (private dir, event handler, cancel, run kwargs).
Runner = Callable[[Path, Callable[[dict[str, Any]], bool], Cancel, dict[str, Any]], Any]

_BEFORE = "rollout: before batch {}"
_AFTER = "rollout: after batch {}"
DONE_TASK = "rollout: batch {} done"
GATE_TASK = "rollout: gate of batch {}"
JOIN_TASK = "rollout: batch {} joins its group"
_PLAY = re.compile(r"^\s+play #\d+ \((?P<pattern>.*)\): (?P<name>.*?)\tTAGS:")
_HOSTS = re.compile(r"^\s+hosts \((?P<count>\d+)\):$")


@dataclass
class _Segment:
    """What the session saw of one batch."""

    hosts: tuple[str, ...]
    released: bool = False  # the controller wrote "go"
    started: bool = False  # the gate let it through
    survivors: frozenset[str] | None = None  # set when the batch's plays are over
    messages: dict[str, str] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)


def session_playbook(playbook: str, batches: Sequence[tuple[int, Sequence[str]]],
                     hosts_pattern: str | None, fifos: Mapping[int, str]) -> list[dict[str, Any]]:
    """The generated playbook: per batch, its gate, the user's playbook on the batch, the
    report of the hosts that came through."""
    plays: list[dict[str, Any]] = []
    previous: int | None = None
    for index, hosts in batches:
        # Fail-safe: batch N's group is empty until the controller's "go N" (the gate) adds
        # its hosts; after a "stop", or a gate never reached, every later play matches nothing.
        gate: list[dict[str, Any]] = [
            {"name": GATE_TASK.format(index), "rollout_gate": {"fifo": fifos[index],
             "batch": index}, "register": "rollout__gate", "tags": ["always"]},
            {"name": JOIN_TASK.format(index), "ansible.builtin.add_host": {
                "name": "{{ item }}", "groups": f"rollout_batch_{index}"},
             "loop": list(hosts), "when": "rollout__gate.go | default(false)",
             "tags": ["always"]}]
        if previous is None:
            plays.append({"name": _BEFORE.format(index), "hosts": "localhost",
                          "gather_facts": False, "tasks": gate})
        else:
            plays.append(_after(previous, gate))
        group = f"rollout_batch_{index}"
        plays.append({"ansible.builtin.import_playbook": playbook, "vars": {
            "rollout_hosts": f"{hosts_pattern}:&{group}" if hosts_pattern else group,
            "rollout_batch": index}})
        previous = index
    if previous is not None:
        plays.append(_after(previous, []))
    return plays


def _after(index: int, then: list[dict[str, Any]]) -> dict[str, Any]:
    once = {"run_once": True, "delegate_to": "localhost"}
    return {"name": _AFTER.format(index), "hosts": f"rollout_batch_{index}",
            "gather_facts": False,
            "tasks": [{"name": DONE_TASK.format(index),
                       "ansible.builtin.debug": {"msg": "{{ ansible_play_hosts }}"},
                       "tags": ["always"], **once},
                      *({**task, **once} for task in then)]}


def check_hosts(listing: str, batches: Sequence[tuple[int, Sequence[str]]]) -> str | None:
    """None if, in ``ansible-playbook --list-hosts`` output of the session playbook, every play
    between batch N's gate and its report targets only batch N's hosts; else what does not."""
    plays: list[tuple[str, list[str]]] = []
    lines = listing.splitlines()
    i = 0
    while i < len(lines):
        play = _PLAY.match(lines[i])
        if play is None:
            i += 1
            continue
        name, hosts = play.group("name"), []
        j = i + 1
        while j < len(lines) and not _PLAY.match(lines[j]):
            count = _HOSTS.match(lines[j])
            if count is not None:
                hosts = [h.strip() for h in lines[j + 1:j + 1 + int(count.group("count"))]]
                break
            j += 1
        plays.append((name, hosts))
        i = j + 1
    current: tuple[int, set[str]] | None = None
    marks = {_BEFORE.format(n): n for n, _ in batches} | {_AFTER.format(n): n for n, _ in batches}
    members = {n: set(h) for n, h in batches}
    seen_gates = 0
    for name, hosts in plays:
        if name in marks:
            seen_gates += 1
            after = name.startswith("rollout: after")
            n = marks[name]
            nxt = next((b for b, _ in batches if b > n), None) if after else n
            current = (nxt, members[nxt]) if nxt is not None else None
            continue
        if current is None:
            return f"play {name!r} is outside every batch"
        outside = sorted(set(hosts) - current[1])
        if outside:
            return (f"play {name!r} of batch {current[0]} targets hosts outside the batch: "
                    f"{', '.join(outside[:5])}{' ...' if len(outside) > 5 else ''} (its hosts "
                    f"pattern does not use rollout_hosts)")
    if seen_gates != len(batches) + 1:
        return f"unexpected --list-hosts output ({len(plays)} plays)"
    return None


class PlaybookSession:
    """The running session of one deploy's batches (see the module's docstring)."""

    def __init__(self, *, playbook: str, batches: Sequence[tuple[int, Sequence[str]]],
                 extravars: Mapping[str, Any], base_vars: Mapping[str, Any],
                 tags: str | None,
                 private: Path, inventory: str, env: Mapping[str, str],
                 secrets: Callable[[], AbstractContextManager[str | None]], runner: Runner,
                 redact: Callable[[str], str], forks: int) -> None:
        self.playbook, self.tags, self.private = playbook, tags, private
        self.batches = [(n, tuple(h)) for n, h in batches]
        # A call is a batch of this session when it passes exactly these variables.
        self.call_vars = {k: v for k, v in extravars.items()
                          if k not in ("rollout_batch", "rollout_hosts")}
        run_vars = {**base_vars, **extravars}
        pattern = run_vars.pop("rollout_hosts", None)
        self.hosts_pattern = str(pattern) if pattern else None
        run_vars.pop("rollout_batch", None)  # both become each batch's import vars
        self.extravars = run_vars
        self._inventory, self._env, self._secrets = inventory, dict(env), secrets
        self._runner, self._redact = runner, redact
        self._forks = max(1, min(forks, max(len(h) for _, h in self.batches)))
        # Every host of the plan, and the controller for the gates (implicit localhost).
        self._limit = ",".join([*sorted({h for _, hs in self.batches for h in hs}), "localhost"])
        self._segments = {n: _Segment(h) for n, h in self.batches}
        self._cond = threading.Condition()
        self._current: int | None = None
        self._cancel: Cancel | None = None
        self._cancelled = False
        self._closing = False
        self.refused: str | None = None  # why the session did not start
        self.crashed: str | None = None  # the controller's side of the session failed
        self.ended = False
        self._ready = threading.Event()  # at the first gate (or ended): a batch starts at once
        self.status = ""
        self.artifact_dir = ""
        self._fds: dict[int, int] = {}
        self._thread = threading.Thread(target=self._main, name="playbook-session", daemon=True)

    # --- the controller's side ---------------------------------------------------------------
    def start(self) -> None:
        """Writes the files, opens the gates and starts the session in the background."""
        self.private.mkdir(parents=True, exist_ok=True)
        fifos: dict[int, str] = {}
        for n, _ in self.batches:
            path = self.private / f"gate-{n}.fifo"
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            os.mkfifo(path, 0o600)
            self._fds[n] = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            fifos[n] = str(path)
        groups = {f"rollout_batch_{n}": None for n, _ in self.batches}  # filled by the gates
        (self.private / "batches.yml").write_text(yaml.safe_dump(groups, sort_keys=False))
        book = session_playbook(str(Path(self.playbook).resolve()), self.batches,
                                self.hosts_pattern, fifos)
        (self.private / "session.yml").write_text(
            "# rollout_py: one ansible-playbook for every batch (rollout_py.playbook_session)\n"
            + yaml.safe_dump(book, sort_keys=False))
        self._thread.start()

    def serves(self, playbook: str, hosts: Sequence[str], extravars: Mapping[str, Any],
               tags: str | None) -> int | None:
        """The batch this call is (same playbook, tags, hosts and variables), if any."""
        if playbook != self.playbook or tags != self.tags:
            return None
        vars_ = dict(extravars)
        index = vars_.pop("rollout_batch", None)
        vars_.pop("rollout_hosts", None)
        if not isinstance(index, int) or vars_ != self.call_vars:
            return None
        segment = self._segments.get(index)
        return index if segment is not None and segment.hosts == tuple(hosts) else None

    def run_batch(self, index: int, cancel: Cancel | None) -> RunResult | None:
        """Lets batch ``index`` through and waits for its result; None when the session cannot
        run it (refused, ended before its gate, or the batch was already let through)."""
        segment = self._segments[index]
        with self._cond:
            if segment.released or self.refused or self.ended or self._closing:
                return None
            segment.released = True
            self._current, self._cancel = index, cancel
            os.write(self._fds[index], f"go {index}\n".encode())
            while segment.survivors is None and not self.ended:
                self._cond.wait()
            self._current, self._cancel = None, None
            if not segment.started:
                return None  # never passed its gate: nothing of the batch ran
            if segment.survivors is None and self.crashed:
                raise ControllerError(f"the playbook session failed on the controller during "
                                      f"batch {index}: {self.crashed}")
            return self._result(segment)

    def wait_ready(self, timeout: float) -> bool:
        """Waits (at most ``timeout`` s) until the session waits at its first gate, or ended:
        then a batch let through starts at once. True if so."""
        return self._ready.wait(timeout)

    def stop(self) -> None:
        """Stops the session at its next gate (it ends on its own, see :meth:`close`)."""
        with self._cond:
            self._closing = True
            for fd in self._fds.values():
                with contextlib.suppress(OSError):
                    os.write(fd, b"stop\n")

    def close(self, timeout: float = 30.0) -> None:
        """Stops the session and waits for it to end."""
        self.stop()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._cancelled = True
                self._thread.join(timeout)
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    def _result(self, segment: _Segment) -> RunResult:
        survivors = segment.survivors
        done = survivors is not None
        outcomes: dict[str, str] = {}
        for host in segment.hosts:
            if host in segment.messages and not (done and host in (survivors or ())):
                outcomes[host] = self._redact(segment.messages[host])
            elif done and host in (survivors or ()) and host in segment.seen:
                outcomes[host] = "ok"
            elif done and host not in (survivors or ()):
                outcomes[host] = "failed: no message"
            else:
                outcomes[host] = "not run: cancelled" if self._cancelled else "not run"
        if self._cancelled and not done:
            status = "canceled"
        elif all(o == "ok" for o in outcomes.values()):
            status = "successful"
        else:
            status = "failed"
        previous = segment.stats.get("rollout_previous_version") or {}
        return RunResult(status=status, rc=0 if status == "successful" else 2, hosts=outcomes,
                         previous_versions={h: previous.get(h) for h in segment.hosts
                                            if h in previous},
                         artifact_dir=self.artifact_dir)

    # --- the session's thread ----------------------------------------------------------------
    def _main(self) -> None:
        try:
            with self._secrets() as cmdline:  # one private file for the session's life
                self.refused = self._check(cmdline or "")
                if self.refused is not None:
                    (self.private / "session-refused.txt").write_text(self.refused + "\n")
                else:
                    self._run(cmdline or "")
        except Exception as exc:  # the batches not started then run on their own
            self.crashed = f"{type(exc).__name__}: {exc}"
            self.refused = self.refused or f"the session failed: {self.crashed}"
        finally:
            with self._cond:
                self.ended = True
                self._cond.notify_all()
            self._ready.set()

    def _argv_tail(self) -> list[str]:
        return ["-i", self._inventory, "-i", str(self.private / "batches.yml"),
                "--limit", self._limit]

    def _check(self, cmdline: str) -> str | None:
        extra = self.private / "check-vars.json"
        extra.write_text(json.dumps(self.extravars))
        argv = ["ansible-playbook", "--list-hosts", *self._argv_tail(), "-e", f"@{extra}",
                *shlex.split(cmdline), str(self.private / "session.yml")]
        proc = subprocess.run(argv, capture_output=True, text=True, env=self._env,
                              timeout=300, check=False)
        extra.unlink()
        if proc.returncode != 0:
            return f"--list-hosts failed: {(proc.stderr or proc.stdout).strip()[-300:]}"
        return check_hosts(proc.stdout, self.batches)

    def _run(self, cmdline: str) -> None:
        kwargs: dict[str, Any] = {
            "playbook": str(self.private / "session.yml"), "inventory": self._inventory,
            "limit": self._limit, "extravars": self.extravars,
            "forks": self._forks,
            "cmdline": " ".join([f"-i {shlex.quote(str(self.private / 'batches.yml'))}",
                                 cmdline]).strip()}
        if self.tags:
            kwargs["tags"] = self.tags
        runner = self._runner(self.private, self._event, self._should_cancel, kwargs)
        self.status = str(runner.status)
        self.artifact_dir = str(runner.config.artifact_dir)

    def _should_cancel(self) -> bool:
        cancel = self._cancel
        if cancel is not None and cancel():
            self._cancelled = True
        return self._cancelled

    def _event(self, event: dict[str, Any]) -> bool:
        data = event.get("event_data") or {}
        kind = str(event.get("event", ""))
        task = str(data.get("task") or "")
        if kind == "runner_on_start" and task == GATE_TASK.format(self.batches[0][0]):
            self._ready.set()
        with self._cond:
            index = self._current
            segment = self._segments.get(index) if index is not None else None
            if segment is not None and kind == "runner_on_ok" and task.startswith("rollout: "):
                res = data.get("res") or {}
                if task == GATE_TASK.format(index) and res.get("go"):
                    segment.started = True
                elif task == DONE_TASK.format(index):
                    segment.survivors = frozenset(str(h) for h in res.get("msg") or ())
                    self._cond.notify_all()
            elif segment is not None and segment.started and segment.survivors is None:
                host = data.get("host")
                if host in segment.hosts:
                    _record(segment, kind, data)
        return keep_event(kind, data, keep_results=True)


def _record(segment: _Segment, kind: str, data: Mapping[str, Any]) -> None:
    host = str(data.get("host"))
    if kind in ("runner_on_ok", "runner_on_skipped", "runner_on_failed",
                "runner_on_unreachable"):
        segment.seen.add(host)
    message = failure_message(kind, data)
    if message is not None:  # the first failure is the cause (a rescued host survives it)
        segment.messages.setdefault(host, message)
    if kind == "runner_on_ok":
        merge_stats(segment.stats, (data.get("res") or {}).get("ansible_stats"))
