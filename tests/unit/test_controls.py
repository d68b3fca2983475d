"""Operator controls through the state directory: sent only to the running deploy, read by it
alone, each exactly once and in order; malformed, partial and stale files never acted on."""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from rollout_py import cli
from rollout_py.atomic import temp_path
from rollout_py.controls import (
    Control,
    Inbox,
    new_control_id,
    running_deploys,
    send_control,
)
from rollout_py.errors import ControlRefusedError, InputError
from rollout_py.events import ControlAction
from rollout_py.lock import FleetLock, fleet_key

DEPLOY = "20250101T000000Z-abc123"


def take(state: Path, deploy_id: str, *, name: str = "web", inventory: str = "inv.ini"
         ) -> FleetLock:
    """Marks ``deploy_id`` running in ``state``, as a deploy does: it holds its fleet lock."""
    lock = FleetLock(state, fleet_key(name, inventory))
    lock.acquire(deploy_id=deploy_id, message="deploy for a test")
    return lock


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Path]:
    """A state directory with DEPLOY running on it."""
    lock = take(tmp_path, DEPLOY)
    try:
        yield tmp_path
    finally:
        lock.release()


def pending(state: Path) -> list[str]:
    folder = state / "controls"
    return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


# --- the record ---------------------------------------------------------------------------------

def test_a_control_round_trips_through_its_file(running: Path) -> None:
    sent = send_control(running, "abort", reason="error rate doubled")
    assert (sent.action, sent.deploy_id, sent.reason) == ("abort", DEPLOY, "error rate doubled")
    assert re.fullmatch(rf"\S+@\S+ \(pid {os.getpid()}\)", sent.by), sent.by
    assert abs(sent.sent_at - time.time()) < 5
    path = running / "controls" / f"{sent.id}.json"
    assert Control.from_json(json.loads(path.read_text())) == sent
    assert Control.from_json(sent.to_json()) == sent
    assert pending(running) == [path.name]  # nothing else: no temp file left behind
    with pytest.raises(ValueError, match="action"):
        Control.from_json(sent.to_json() | {"action": "explode"})
    with pytest.raises(ValueError, match="sent_at"):
        Control.from_json(sent.to_json() | {"sent_at": True})


def test_control_ids_are_unique_and_sort_in_the_order_sent() -> None:
    ids = [new_control_id()[0] for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert sorted(ids) == ids


# --- refusals: nothing running, not that one ----------------------------------------------------

def test_no_running_deploy_is_refused_naming_the_state_dir(tmp_path: Path) -> None:
    with pytest.raises(ControlRefusedError) as err:
        send_control(tmp_path, "promote")
    assert str(tmp_path) in str(err.value) and "no deploy is running" in str(err.value)
    assert isinstance(err.value, InputError) and err.value.running == ()
    # A deploy that ended (lock released), a manual hold, or holder.json left by a dead
    # deploy (the flock is free): none is a running deploy.
    take(tmp_path, DEPLOY).release()
    FleetLock(tmp_path, fleet_key("api", "inv.ini")).hold(message="db move")
    (tmp_path / "locks" / f"{fleet_key('web', 'inv.ini')}.holder.json").write_text(
        json.dumps({"pid": os.getpid(), "user": "u", "host": "h", "deploy_id": DEPLOY,
                    "started": 0.0, "message": "", "kind": "deploy"}))
    with pytest.raises(ControlRefusedError, match="no deploy is running"):
        send_control(tmp_path, "abort")
    assert pending(tmp_path) == []


def test_a_deploy_id_that_is_not_the_running_one_is_refused(running: Path) -> None:
    with pytest.raises(ControlRefusedError) as err:
        send_control(running, "abort", deploy_id="20240101T000000Z-000000")
    assert "20240101T000000Z-000000 is not running" in str(err.value)
    assert DEPLOY in str(err.value) and str(running) in str(err.value)
    assert err.value.deploy_id == "20240101T000000Z-000000" and err.value.running == (DEPLOY,)
    assert pending(running) == []
    assert send_control(running, "abort", deploy_id=DEPLOY).deploy_id == DEPLOY


def test_several_running_deploys_need_a_deploy_id_and_each_reads_only_its_own(
        running: Path) -> None:
    other = take(running, "20250101T000001Z-def456", name="api")
    try:
        with pytest.raises(ControlRefusedError, match="several deploys run"):
            send_control(running, "pause")
        mine = send_control(running, "pause", deploy_id=DEPLOY)
        theirs = send_control(running, "abort", deploy_id="20250101T000001Z-def456")
        # One fleet's spec only sees its fleet's deploy.
        assert send_control(running, "continue", fleet="api").deploy_id == theirs.deploy_id
        with pytest.raises(ControlRefusedError, match="fleet nope"):
            send_control(running, "continue", fleet="nope")
        inbox = Inbox(running, DEPLOY)
        assert inbox.poll() == [mine]
        assert inbox.stale == []  # the other deploy runs: its controls are left alone
        assert len(pending(running)) == 2
        assert [c.action for c in Inbox(running, theirs.deploy_id).poll()] == ["abort",
                                                                                 "continue"]
    finally:
        other.release()


# --- the reader: order, exactly once --------------------------------------------------------------

def test_poll_returns_new_controls_in_order_each_once(running: Path) -> None:
    inbox = Inbox(running, DEPLOY)
    assert inbox.poll() == []
    sent = [send_control(running, action) for action in ("pause", "continue", "promote",
                                                         "promote_all", "abort")]
    got = inbox.poll()
    assert got == sent
    assert [c.action for c in got] == ["pause", "continue", "promote", "promote_all", "abort"]
    assert inbox.poll() == [] and Inbox(running, DEPLOY).poll() == []
    assert pending(running) == []
    assert sorted(p.name for p in (running / "controls" / "done").iterdir()) == [
        f"{c.id}.json" for c in sent]


def test_two_senders_and_a_reader_every_control_exactly_once(running: Path) -> None:
    inbox = Inbox(running, DEPLOY, interval=0.001)
    sent: list[Control] = []
    batches: list[list[Control]] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def sender(action: ControlAction) -> None:
        try:
            for _ in range(40):
                sent.append(send_control(running, action))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        while not done.is_set():
            batches.append(inbox.wait(0.01))
        batches.append(inbox.poll())

    actions: tuple[ControlAction, ...] = ("pause", "continue")
    threads = [threading.Thread(target=sender, args=(a,)) for a in actions]
    read = threading.Thread(target=reader)
    read.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    done.set()
    read.join(60)
    assert not errors
    received = [c for batch in batches for c in batch]
    assert len(received) == len({c.id for c in received}) == 80  # none twice, none lost
    assert {c.id for c in received} == {c.id for c in sent}
    for batch in batches:
        assert [c.id for c in batch] == sorted(c.id for c in batch)
    assert pending(running) == []


def test_two_readers_never_take_the_same_control(running: Path) -> None:
    sent = [send_control(running, "pause") for _ in range(60)]
    readers = [Inbox(running, DEPLOY), Inbox(running, DEPLOY)]
    got: list[list[Control]] = [[], []]
    threads = [threading.Thread(target=lambda i=i: got[i].extend(readers[i].poll()))
               for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ids = [c.id for c in got[0] + got[1]]
    assert sorted(ids) == sorted(c.id for c in sent)  # each exactly once, between them


def test_a_reader_that_loses_the_race_for_a_control_does_not_return_it(
        running: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rollout_py import controls

    sent = send_control(running, "abort")
    first, second = Inbox(running, DEPLOY), Inbox(running, DEPLOY)
    real = controls._load
    taken: list[Control] = []

    def read_then_lose(path: Path) -> Control | str | None:
        item = real(path)  # the second reader has read the control...
        monkeypatch.setattr(controls, "_load", real)
        taken.extend(first.poll())  # ...and the first takes it before the second can
        return item

    monkeypatch.setattr(controls, "_load", read_then_lose)
    assert second.poll() == [] and taken == [sent]
    assert first.poll() == [] and second.poll() == []


def test_wait_returns_when_a_control_arrives_or_after_the_timeout(running: Path) -> None:
    inbox = Inbox(running, DEPLOY, interval=0.02)
    start = time.monotonic()
    assert inbox.wait(0.3) == []
    assert 0.3 <= time.monotonic() - start < 2
    timer = threading.Timer(0.2, lambda: send_control(running, "promote"))
    timer.start()
    start = time.monotonic()
    got = inbox.wait(10)
    timer.join()
    assert [c.action for c in got] == ["promote"] and time.monotonic() - start < 5


# --- what is never acted on: malformed, partial, stale -------------------------------------------

def test_malformed_files_are_set_aside_and_reported_once(running: Path) -> None:
    inbox = Inbox(running, DEPLOY)
    folder = running / "controls"
    good = send_control(running, "pause")
    garbage, wrong_action, wrong_name = (new_control_id()[0] for _ in range(3))
    (folder / f"{garbage}.json").write_bytes(b"\xff{not json")
    (folder / f"{wrong_action}.json").write_text(json.dumps(
        good.to_json() | {"id": wrong_action, "action": "rm -rf"}))
    (folder / f"{wrong_name}.json").write_text(json.dumps(good.to_json()))  # id != file name
    assert inbox.poll() == [good]  # the deploy goes on with what it can read
    bad = {b.id: b for b in inbox.take_bad()}
    assert set(bad) == {garbage, wrong_action, wrong_name}
    assert "action" in bad[wrong_action].error and "file name" in bad[wrong_name].error
    for ident, entry in bad.items():
        assert entry.path == folder / f"{ident}.bad" and entry.path.exists()
    assert inbox.take_bad() == [] and inbox.poll() == []
    assert Inbox(running, DEPLOY).poll() == []


def test_a_partial_write_is_never_read(running: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inbox = Inbox(running, DEPLOY)
    ident = new_control_id()[0]
    tmp = temp_path(running / "controls" / f"{ident}.json")
    tmp.parent.mkdir()
    tmp.write_text('{"id": "' + ident + '", "action": "abo')  # a sender still writing, or dead
    assert inbox.poll() == [] and inbox.take_bad() == []
    assert tmp.exists()
    # A sender that fails between its write and the rename leaves nothing to read.
    def fail(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        send_control(running, "abort")
    monkeypatch.undo()
    assert pending(running) == [tmp.name]
    assert inbox.poll() == [] and inbox.take_bad() == []


def test_controls_of_a_deploy_no_longer_running_are_discarded_by_the_next_inbox(
        tmp_path: Path) -> None:
    old = take(tmp_path, "20240101T000000Z-000000")
    stale = send_control(tmp_path, "promote")
    old.release()
    lock = take(tmp_path, DEPLOY)
    try:
        inbox = Inbox(tmp_path, DEPLOY)
        assert inbox.stale == [stale] and inbox.poll() == []
        assert (tmp_path / "controls" / "done" / f"{stale.id}.stale").exists()
        assert pending(tmp_path) == []
    finally:
        lock.release()


def test_controls_sent_to_an_earlier_run_of_the_deploy_are_stale_after_a_resume(
        tmp_path: Path) -> None:
    first = take(tmp_path, DEPLOY)
    before = send_control(tmp_path, "abort")  # never read: that run died
    first.release()
    time.sleep(0.01)
    resumed = take(tmp_path, DEPLOY)
    try:
        after = send_control(tmp_path, "pause")
        inbox = Inbox(tmp_path, DEPLOY)  # since: when this process took the lock
        assert inbox.since is not None and before.sent_at < inbox.since <= after.sent_at
        assert inbox.poll() == [after] and inbox.stale == [before]
    finally:
        resumed.release()


# --- the command line ----------------------------------------------------------------------------

SPEC = textwrap.dedent("""\
    name: web
    inventory: inv.ini
    playbook: deploy.yml
    batches: [1, "50%"]
    haproxy:
      sockets: [unix:///run/haproxy.sock]
      backend: app
    health:
      probes:
        - http: "http://{{ ansible_host }}/health"
          status: 200
    """)


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "rollout.yml"
    path.write_text(SPEC)
    return path


@pytest.fixture
def main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
         ) -> Callable[..., tuple[int, str, str]]:
    """``rollout ARGS`` through the console entry point: exit code (as mapped), stdout, stderr."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["rollout", *args])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        out, err = capsys.readouterr()
        return exit_.value.code if isinstance(exit_.value.code, int) else -1, out, err

    return run


@pytest.mark.parametrize(("args", "action"), [
    (["promote"], "promote"), (["promote", "--all"], "promote_all"), (["abort"], "abort"),
    (["pause"], "pause"), (["continue"], "continue")])
def test_each_command_sends_its_control_to_the_running_deploy(
        spec_file: Path, args: list[str], action: str) -> None:
    state = spec_file.parent / ".rollout"  # the default: beside the spec
    lock = take(state, DEPLOY)
    try:
        result = CliRunner().invoke(cli.cli, [*args, "-f", str(spec_file), "--reason", "ok"])
        assert result.exit_code == 0, result.output
        [control] = Inbox(state, DEPLOY).poll()
    finally:
        lock.release()
    assert (control.action, control.reason) == (action, "ok")
    assert result.output == (f"sent {' '.join(args)} to deploy {DEPLOY} (control {control.id}); "
                             "the running deploy journals it when it acts on it\n")


def test_json_prints_one_object_and_state_dir_and_deploy_id_are_honoured(
        spec_file: Path, tmp_path: Path, main: Callable[..., tuple[int, str, str]]) -> None:
    state = tmp_path / "elsewhere"
    lock = take(state, DEPLOY)
    try:
        result = CliRunner().invoke(cli.cli, [
            "abort", "-f", str(spec_file), "--state-dir", str(state), "--deploy-id", DEPLOY,
            "--json"])
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        assert data["status"] == "sent" and data["state_dir"] == str(state)
        assert [c.to_json() for c in Inbox(state, DEPLOY).poll()] == [data["control"]]
        assert data["control"]["action"] == "abort" and data["control"]["reason"] is None
        # Not the running deploy: exit 2, nothing sent.
        code, out, err = main("pause", "-f", str(spec_file), "--state-dir", str(state),
                                "--deploy-id", "20240101T000000Z-000000")
        assert code == cli.EXIT_INPUT and out == ""
        assert err.startswith("error: deploy 20240101T000000Z-000000 is not running in "
                              f"{state}"), err
        assert Inbox(state, DEPLOY).poll() == []
    finally:
        lock.release()


def test_no_running_deploy_exits_2_with_a_clear_error(
        spec_file: Path, main: Callable[..., tuple[int, str, str]]) -> None:
    state = spec_file.parent / ".rollout"
    result = CliRunner().invoke(cli.cli, ["promote", "-f", str(spec_file)])
    assert isinstance(result.exception, ControlRefusedError)
    code, out, err = main("promote", "--all", "-f", str(spec_file))
    assert code == cli.EXIT_INPUT and out == ""
    assert err == (f"error: no deploy is running in {state} for fleet web: nothing to "
                   "promote --all (nothing sent)\n")
    code, out, err = main("abort", "-f", str(spec_file), "--json")
    assert code == cli.EXIT_INPUT
    assert json.loads(out)["result"]["status"] == "refused" and "no deploy" in err
    assert running_deploys(state) == {} and not (state / "controls").exists()


def test_the_listing_says_what_each_command_says() -> None:
    from rollout_py import cli_controls

    for name, (module, attr, help_text) in cli.LAZY_COMMANDS.items():
        if module == "rollout_py.cli_controls":
            command = getattr(cli_controls, attr)
            assert (command.name, command.help) == (name, help_text)
