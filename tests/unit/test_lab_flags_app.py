"""Flag-enabled sample app releases (OpenFeature + flagd provider, file mode) and the load
tool's count by variant, on loopback with a temp flag file."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from rollout_py.atomic import write_atomic
from rollout_py.errors import InputError, LabError
from rollout_py.flags import edit
from rollout_py.flags.model import FlagFile, load_flags
from rollout_py.lab import appenv, artifact, flagfiles
from rollout_py.lab.haproxy import free_port
from rollout_py.lab.layout import HOST_FLAGS_PATH, Layout
from rollout_py.lab.load import LoadGenerator, Record, Summary

HOST_PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
HEADER = "X-Flag-new-greeting"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="session")
def flags_python() -> Path:
    """The lab's shared venv (built once, then cached: the same one `lab up` uses)."""
    return appenv.ensure(HOST_PYTHON)


@dataclass
class FlagApp:
    proc: subprocess.Popen[bytes]
    port: int
    flag_file: Path
    log: Path

    def get(self, path: str = "/", user: str | None = None) -> tuple[int, dict[str, str], str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                     headers={"X-User": user} if user else {})
        try:
            with _OPENER.open(req, timeout=5) as resp:
                return resp.status, dict(resp.headers), resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read().decode()

    def variant(self, user: str = "u1") -> str:
        return self.get(user=user)[1][HEADER]

    def write(self, flags: FlagFile | str) -> None:
        text = flags if isinstance(flags, str) else edit.to_json(flags)
        write_atomic(self.flag_file, text)


def poll(what: str, check: Callable[[], bool], timeout: float = 15) -> None:
    """Waits for a state (the provider polls the file's mtime), failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextmanager
def flag_app(tmp_path: Path, flags_python: Path | None,
             behaviour: artifact.Behaviour | None = None) -> Iterator[FlagApp]:
    """Runs a release with the hosts' system Python (no OpenFeature): a flag-enabled one
    re-execs itself with APP_FLAGS_PYTHON, as on a lab host."""
    behaviour = behaviour or artifact.Behaviour(flags=True)
    release = tmp_path / "release"
    artifact.unpack(artifact.build_artifact(tmp_path, "3.0", behaviour), release)
    flag_file, log = tmp_path / "flags.json", tmp_path / "app.log"
    write_atomic(flag_file, edit.to_json(flagfiles.initial_flags()))
    port = free_port()
    env = os.environ | {"APP_BIND": "127.0.0.1", "APP_PORT": str(port),
                        "APP_FLAGS_FILE": str(flag_file)}
    env.pop("APP_FLAGS_PYTHON", None)
    if flags_python is not None:
        env["APP_FLAGS_PYTHON"] = str(flags_python)
    with log.open("wb") as out:
        proc = subprocess.Popen([HOST_PYTHON, str(release / "app.py")], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    running = FlagApp(proc, port, flag_file, log)
    try:
        def listening() -> bool:
            assert proc.poll() is None, f"exit {proc.returncode}: {log.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return False
        poll("the app to listen", listening)
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_flag_release_serves_the_variant_and_follows_the_file(
        tmp_path: Path, flags_python: Path) -> None:
    with flag_app(tmp_path, flags_python) as app:
        status, headers, body = app.get()
        assert status == 200 and headers[HEADER] == "off"
        assert body.startswith("hello: host ") and "version 3.0" in body
        pid = app.proc.pid
        app.write(edit.set_variant(flagfiles.initial_flags(), "new-greeting", "on"))
        poll("variant on", lambda: app.variant() == "on")
        status, headers, body = app.get()
        assert status == 200 and body.startswith("hello from the new greeting: host ")
        assert app.proc.poll() is None and app.proc.pid == pid  # no restart
        assert app.get("/health")[0] == 200 and HEADER not in app.get("/health")[1]


def test_fractional_split_roughly_matches_and_sticks_per_user(
        tmp_path: Path, flags_python: Path) -> None:
    with flag_app(tmp_path, flags_python) as app:
        app.write(edit.ramp(flagfiles.initial_flags(), "new-greeting", "on", 30))
        users = [f"u{i}" for i in range(400)]
        poll("the split", lambda: {app.variant(u) for u in users[:40]} == {"on", "off"})
        variants = [app.variant(u) for u in users]
        assert 0.2 < variants.count("on") / len(users) < 0.4
        assert [app.variant(u) for u in users[:50]] == variants[:50]  # sticky per key
        # Without X-User each request gets a random key: both variants show up.
        poll("both variants without X-User",
             lambda: {app.get()[1][HEADER] for _ in range(40)} == {"on", "off"})


def test_on_variant_fails_the_flag_error_rate(tmp_path: Path, flags_python: Path) -> None:
    behaviour = artifact.Behaviour(flags=True, flag_error_rate=0.5)
    with flag_app(tmp_path, flags_python, behaviour) as app:
        assert {app.get(user=f"u{i}")[0] for i in range(50)} == {200}  # off: never fails
        app.write(edit.set_variant(flagfiles.initial_flags(), "new-greeting", "on"))
        poll("variant on", lambda: app.get()[1][HEADER] == "on")
        replies = [app.get(user=f"u{i}") for i in range(200)]
        failed = [r for r in replies if r[0] == 500]
        assert 50 < len(failed) < 150 and len(failed) + sum(r[0] == 200 for r in replies) == 200
        assert {r[1][HEADER] for r in failed} == {"on"} and "new-greeting" in failed[0][2]


def test_a_malformed_file_keeps_the_previous_flags(tmp_path: Path, flags_python: Path) -> None:
    with flag_app(tmp_path, flags_python) as app:
        app.write(edit.set_variant(flagfiles.initial_flags(), "new-greeting", "on"))
        poll("variant on", lambda: app.variant() == "on")
        app.write('{"flags": {"new-greeting": ')  # not JSON
        poll("the provider to read the bad file",
             lambda: "Could not parse JSON flag data" in app.log.read_text())
        assert {app.variant(f"u{i}") for i in range(20)} == {"on"}
        bad = {"flags": {"new-greeting": {"state": "ON", "variants": {"on": True},
                                          "defaultVariant": "on"}}}  # JSON, not flagd's
        app.write(json.dumps(bad))
        poll("the provider to refuse the flag",
             lambda: "Could not parse flag data using flagd syntax" in app.log.read_text())
        assert {app.variant(f"u{i}") for i in range(20)} == {"on"}
        app.write(flagfiles.initial_flags())
        poll("variant off", lambda: app.variant() == "off")
        assert app.proc.poll() is None


def test_a_missing_flag_file_serves_the_default_until_it_appears(
        tmp_path: Path, flags_python: Path) -> None:
    with flag_app(tmp_path, flags_python) as app:
        app.flag_file.unlink()
        poll("the provider to miss the file",
             lambda: "Provided file path not valid" in app.log.read_text())
        assert app.variant() == "off"  # the previous flags still
        app.write(edit.set_variant(flagfiles.initial_flags(), "new-greeting", "on"))
        poll("variant on", lambda: app.variant() == "on")


def test_flag_release_without_an_openfeature_python_exits(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=r"exit 4: .*APP_FLAGS_PYTHON"), \
            flag_app(tmp_path, None):
        pass


def test_older_releases_have_no_flags(tmp_path: Path) -> None:
    with flag_app(tmp_path, None, artifact.Behaviour()) as app:  # system Python, no venv
        status, headers, body = app.get(user="u1")
        assert status == 200 and HEADER not in headers and body.startswith("host ")
    meta = json.loads((tmp_path / "release" / "release.json").read_text())
    assert "flags" not in meta and "flag_error_rate" not in meta  # as before flags existed
    flagged = artifact.build_artifact(tmp_path, "3.1", artifact.Behaviour(flags=True,
                                                                        flag_error_rate=0.3))
    artifact.unpack(flagged, tmp_path / "flagged")
    meta = json.loads((tmp_path / "flagged" / "release.json").read_text())
    assert meta["flags"] is True and meta["flag_error_rate"] == 0.3


def test_flag_error_rate_needs_a_flag_release() -> None:
    with pytest.raises(InputError, match="--flags"):
        artifact.Behaviour(flag_error_rate=0.3)
    with pytest.raises(InputError, match="--flag-error-rate"):
        artifact.Behaviour(flags=True, flag_error_rate=1.5)


def test_lab_artifact_command_takes_the_flag_options(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from rollout_py.lab.cli import lab

    ok = CliRunner().invoke(lab, ["artifact", "2.0", "--flags", "--flag-error-rate", "0.3",
                                  "--dir", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    artifact.unpack(Path(ok.output.strip()), tmp_path / "release")
    meta = json.loads((tmp_path / "release" / "release.json").read_text())
    assert (meta["flags"], meta["flag_error_rate"]) == (True, 0.3)
    bad = CliRunner().invoke(lab, ["artifact", "2.1", "--flag-error-rate", "0.3",
                                   "--dir", str(tmp_path)])
    assert isinstance(bad.exception, InputError) and "--flags" in str(bad.exception)
    assert not (tmp_path / "artifacts" / "app-2.1.tar.gz").exists()


def test_load_counts_requests_and_failures_by_variant(tmp_path: Path, flags_python: Path) -> None:
    behaviour = artifact.Behaviour(flags=True, flag_error_rate=1.0)
    with flag_app(tmp_path, flags_python, behaviour) as app:
        app.write(edit.ramp(flagfiles.initial_flags(), "new-greeting", "on", 50))
        poll("the split", lambda: {app.variant(f"u{i}") for i in range(40)} == {"on", "off"})
        summary = LoadGenerator(f"http://127.0.0.1:{app.port}/", rps=200, duration=1.0).run()
        # The load sends X-User: u<seq>: request seq got what that user gets.
        assert all(app.variant(f"u{r.seq}") == r.variant for r in summary.records[:40])
    assert summary.sent == 200 and sum(summary.by_variant.values()) == 200
    assert set(summary.by_variant) == {"on", "off"} and 50 < summary.by_variant["on"] < 150
    # Every `on` request fails (flag_error_rate 1.0), no `off` request does.
    assert summary.failed_by_variant == {"on": summary.by_variant["on"]}
    assert summary.failed == summary.by_variant["on"]
    data = summary.to_json()
    assert data["by_variant"] == summary.by_variant
    assert data["failed_by_variant"] == summary.failed_by_variant


def test_summary_by_variant_from_records() -> None:
    def rec(seq: int, status: int, variant: str | None) -> Record:
        return Record(seq, 0.0, 0.0, 0.001, status, None, "app01", "app01", "2.0", variant)

    records = [rec(0, 200, "on"), rec(1, 500, "on"), rec(2, 200, "off"), rec(3, 200, None)]
    summary = Summary.of("http://127.0.0.1:1/", 10, 1, records)
    assert summary.by_variant == {"off": 1, "on": 2}
    assert summary.failed_by_variant == {"on": 1}
    assert summary.failed == 1 and summary.by_version == {"2.0": 4}


def test_flag_files_on_hosts_and_beside_the_specs(tmp_path: Path) -> None:
    layout = Layout(dir=str(tmp_path), index=1, block="10.213.0.0/16", n_hosts=2, n_lbs=1)
    flagfiles.write_hosts(layout, flagfiles.initial_flags())
    controller = flagfiles.write_controller(layout, flagfiles.initial_flags())
    for host in ("app01", "app02"):
        path = tmp_path / "hosts" / host / HOST_FLAGS_PATH.lstrip("/")
        assert load_flags(path).flag("new-greeting").default_variant == "off"
        assert path.read_text() == controller.read_text()
    assert controller == tmp_path / "flags.json"
    assert flagfiles.flags_section(layout) == {
        "file": "flags.json", "path": HOST_FLAGS_PATH, "step_duration": 20,
        "baseline_duration": 10, "effect": {"url": "http://{{ ansible_host }}:8080/"}}
    assert layout.describe()["flags"] == {"file": str(controller), "path": HOST_FLAGS_PATH,
                                          "python": None}
    assert not list(tmp_path.rglob("*.tmp"))


def test_the_venv_cache_must_be_visible_to_hosts(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="ROLLOUT_LAB_CACHE"):
        appenv.check_visible_to_hosts(Path("/tmp/rollout-lab-cache"))
    appenv.check_visible_to_hosts(Path("/var/cache/rollout-lab"))
    assert appenv.venv_dir("/usr/bin/python3") != appenv.venv_dir(sys.executable) or \
        os.path.realpath("/usr/bin/python3") == os.path.realpath(sys.executable)


def test_the_cached_venv_has_the_pinned_packages(flags_python: Path) -> None:
    out = subprocess.run([str(flags_python), "-c",
                          "import importlib.metadata as m; print(m.version('openfeature-sdk'), "
                          "m.version('openfeature-provider-flagd'))"],
                         capture_output=True, text=True, check=True, timeout=60)
    pins = dict(line.split("==") for line in appenv.requirements().splitlines()
                if "==" in line and not line.startswith("#"))
    assert out.stdout.split() == [pins["openfeature-sdk"], pins["openfeature-provider-flagd"]]
    assert (flags_python.parent.parent / appenv.COMPLETE).exists()
