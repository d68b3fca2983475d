"""Releases with a database schema, the write/read load, and what ``lab up --db`` writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import psycopg
import pytest

from rollout_py import load_spec
from rollout_py.errors import InputError, LabError
from rollout_py.lab import artifact, db, files, pgserver
from rollout_py.lab.dbload import DbWriteLoad
from rollout_py.lab.haproxy import free_port
from rollout_py.lab.layout import Layout, LbSpec
from tests.pgkit import LocalPostgres, local_postgres

SQL = Path(str(resources.files("rollout_py.lab.migrations")))
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def pg() -> Iterator[LocalPostgres]:
    with local_postgres() as server:
        yield server


@contextmanager
def release(tmp_path: Path, schema: int, url: str) -> Iterator[int]:
    """A release of ``schema`` on 127.0.0.1 against ``url``, listening; stopped by its handle."""
    built = artifact.build_artifact(tmp_path, f"{schema}.0", artifact.Behaviour(db_schema=schema))
    where = tmp_path / f"release-{schema}"
    artifact.unpack(built, where)
    port = free_port()
    env = os.environ | {"APP_BIND": "127.0.0.1", "APP_PORT": str(port),
                        "APP_DATABASE_URL": url}
    proc = subprocess.Popen([sys.executable, str(where / "app.py")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while call(port, "GET", "/version")[0] != 200:
            assert proc.poll() is None and time.monotonic() < deadline, "the app did not start"
            time.sleep(0.02)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def call(port: int, method: str, path: str, body: object = None) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with _OPENER.open(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:
        return 0, ""


def health_becomes(port: int, status: int) -> str:
    """Polls /health (the app re-reads the table's columns at most once a second)."""
    deadline = time.monotonic() + 10
    while True:
        got, body = call(port, "GET", "/health")
        if got == status or time.monotonic() > deadline:
            assert got == status, body
            return body
        time.sleep(0.1)


def test_schema_1_writes_and_reads_name(pg: LocalPostgres, tmp_path: Path) -> None:
    pg.fresh_database("app_s1")
    with release(tmp_path, 1, pg.url("app_s1")) as port:
        assert call(port, "GET", "/health")[0] == 200
        status, body = call(port, "POST", "/users", {"name": "Ada"})
        assert status == 201
        user = json.loads(body)["id"]
        assert json.loads(call(port, "GET", f"/users/{user}")[1]) == {"id": user, "name": "Ada"}
        assert call(port, "GET", "/users/999")[0] == 404
        assert call(port, "POST", "/users", {"nom": "x"})[0] == 400
        assert call(port, "GET", "/")[0] == 200  # the rest of the app as before


def test_schema_2_waits_for_expand_and_reads_full_name_falling_back_to_name(
        pg: LocalPostgres, tmp_path: Path) -> None:
    dsn = pg.fresh_database("app_s2")
    with psycopg.connect(dsn, autocommit=True) as conn:
        old = conn.execute("INSERT INTO users (name) VALUES ('before') RETURNING id").fetchone()
    assert old is not None
    with release(tmp_path, 2, pg.url("app_s2")) as port:
        assert "lacks full_name" in health_becomes(port, 500)
        assert pg.psql_file(dsn, SQL / "001_expand.sql").returncode == 0
        health_becomes(port, 200)
        assert json.loads(call(port, "GET", f"/users/{old[0]}")[1])["name"] == "before"
        user = json.loads(call(port, "POST", "/users", {"name": "Grace"})[1])["id"]
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT name, full_name FROM users WHERE id = %s",
                                (user,)).fetchone() == ("Grace", "Grace")
            conn.execute("UPDATE users SET full_name = 'Grace Hopper' WHERE id = %s", (user,))
        assert json.loads(call(port, "GET", f"/users/{user}")[1])["name"] == "Grace Hopper"
        # contract runs while the fleet is on schema 2: its statements follow without a failure
        with psycopg.connect(dsn) as conn:
            conn.execute("UPDATE users SET full_name = name WHERE full_name IS NULL")
        assert pg.psql_file(dsn, SQL / "003_contract.sql").returncode == 0
        assert json.loads(call(port, "GET", f"/users/{old[0]}")[1])["name"] == "before"
        status, body = call(port, "POST", "/users", {"name": "Barbara"})
        assert status == 201, body
        newest = json.loads(body)["id"]
        assert json.loads(call(port, "GET", f"/users/{newest}")[1])["name"] == "Barbara"
        assert call(port, "GET", "/health")[0] == 200


def test_schema_3_waits_for_contract(pg: LocalPostgres, tmp_path: Path) -> None:
    dsn = pg.fresh_database("app_s3")
    assert pg.psql_file(dsn, SQL / "001_expand.sql").returncode == 0
    with release(tmp_path, 3, pg.url("app_s3")) as port:
        assert "contract" in health_becomes(port, 500)
        assert pg.psql_file(dsn, SQL / "003_contract.sql").returncode == 0
        health_becomes(port, 200)
        user = json.loads(call(port, "POST", "/users", {"name": "Edsger"})[1])["id"]
        assert json.loads(call(port, "GET", f"/users/{user}")[1])["name"] == "Edsger"


def test_db_write_load_counts_every_acknowledged_row(pg: LocalPostgres, tmp_path: Path) -> None:
    dsn = pg.fresh_database("app_load")
    with release(tmp_path, 1, pg.url("app_load")) as port:
        gen = DbWriteLoad(f"http://127.0.0.1:{port}/users", rps=40, duration=1.0)
        summary = gen.run()
    assert summary.sent == 40 and summary.failed == 0 and summary.ok == 40
    assert summary.by_version == {"1.0": 40}
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, name FROM users ORDER BY id").fetchall()
    assert rows == sorted(gen.written) and len({n for _, n in rows}) == 40


def test_db_write_load_counts_a_refused_write_as_failed(tmp_path: Path) -> None:
    with release(tmp_path, 1, f"postgresql://app@127.0.0.1:{free_port()}/app") as port:
        summary = DbWriteLoad(f"http://127.0.0.1:{port}/users", rps=10, duration=0.3).run()
    assert summary.ok == 0 and summary.failed == summary.sent == 3
    assert summary.failures == {"POST http 503": 3}


def test_releases_without_a_schema_are_unchanged(tmp_path: Path) -> None:
    plain = artifact.build_artifact(tmp_path, "1.0")
    with tarfile.open(plain) as tar:
        assert sorted(tar.getnames()) == ["app.py", "release.json"]
        meta = json.load(tar.extractfile("release.json"))  # type: ignore[arg-type]
    assert "db_schema" not in meta
    with pytest.raises(InputError, match="--db-schema"):
        artifact.Behaviour(db_schema=4)


def lab_layout(tmp_path: Path) -> Layout:
    lbs = [LbSpec("lb1", 4001, "/run/lb1.sock", "unix:///run/lb1.sock", None)]
    return Layout(dir=str(tmp_path), index=3, block="10.213.0.0/16", n_hosts=2, n_lbs=2,
                  db=True, db_password="s3cret", app_flags_python="/venv/bin/python", lbs=lbs)


def test_layout_with_db(tmp_path: Path) -> None:
    layout = lab_layout(tmp_path)
    assert layout.db_host.address == "10.213.3.10" and layout.db_host.role == "db"
    assert [h.name for h in layout.all_hosts] == ["app01", "app02", "lb2", "db1"]
    assert layout.db_url == "postgresql://app:s3cret@10.213.3.10:5432/app"
    described = json.dumps(layout.describe())
    assert "s3cret" not in described and "postgresql://app@10.213.3.10:5432/app" in described
    assert "[db]\ndb1 ansible_host=10.213.3.10" in files.inventory(layout)
    assert "Host db1" in files.ssh_config(layout)
    plain = Layout(dir=str(tmp_path), index=3, block="10.213.0.0/16", n_hosts=2, n_lbs=1)
    assert plain.db_url is None and "db1" not in [h.name for h in plain.all_hosts]


def test_migrations_dir_and_phases(tmp_path: Path) -> None:
    layout = lab_layout(tmp_path)
    db.write_migrations(layout)
    here = tmp_path / "migrations"
    assert sorted(p.name for p in here.iterdir()) == sorted(
        [*db.SHIPPED, "pg_service.conf", "run-phase"])
    assert (here / "pg_service.conf").stat().st_mode & 0o077 == 0
    assert "password=s3cret" in (here / "pg_service.conf").read_text()
    script = (here / "run-phase").read_text()
    assert "s3cret" not in script and "--single-transaction" in script
    assert "/venv/bin/python" in script
    assert subprocess.run(["sh", "-n", str(here / "run-phase")], check=False).returncode == 0
    assert subprocess.run([str(here / "run-phase"), "nope"], capture_output=True,
                          check=False).returncode == 2
    assert db.phases(layout) == {
        "expand": {"command": f"{here}/run-phase expand", "on": "local"},
        "migrate": {"command": f"{here}/run-phase migrate", "on": "local"},
        "contract": {"command": f"{here}/run-phase contract", "on": "local", "requires": "2.0"}}
    assert db.phases(layout, batch_size=100, sleep=0.3)["migrate"] == {
        "command": f'{here}/run-phase migrate --batch-size "$batch_size" --sleep "$sleep"',
        "on": "local", "vars": {"batch_size": 100, "sleep": 0.3}}
    (tmp_path / "inventory.ini").write_text(files.inventory(layout))
    (tmp_path / db.SPEC).write_text(db.spec(layout))
    loaded = load_spec(tmp_path / db.SPEC)  # the engine's own reading of the section
    assert loaded.phases is not None and loaded.phases.contract is not None
    assert loaded.phases.contract.requires == "2.0" and loaded.phases.migrate is not None
    assert loaded.phases.migrate.local and loaded.phases.migrate.command == \
        f"{here}/run-phase migrate"
    (tmp_path / "flags.json").write_text("{}")
    (tmp_path / db.RELEASE_SPEC).write_text(db.release_spec(layout))
    release = load_spec(tmp_path / db.RELEASE_SPEC)
    assert release.strategy == "canary" and release.analysis is not None
    assert release.phases is not None and release.phases.release is not None
    assert (release.phases.release.flag, release.phases.release.to) == ("new-greeting", 100)
    assert list(release.phases.model_dump(exclude_none=True)) == [
        "expand", "release", "migrate", "contract"]
    db.remove_files(tmp_path)
    assert not (here / "pg_service.conf").exists() and (here / "run-phase").exists()
    assert not (tmp_path / db.SPEC).exists() and not (tmp_path / db.RELEASE_SPEC).exists()


def test_pg_hba_and_password_rules() -> None:
    hba = pgserver.hba("10.213.3.0/24")
    assert "host app app 10.213.3.0/24 scram-sha-256" in hba
    assert [ln.split()[0] for ln in hba.splitlines() if not ln.startswith("#")] == \
        ["local", "host"]
    with pytest.raises(LabError):
        pgserver.password_sql("x'; DROP ROLE app; --")


def test_the_lab_inventory_lists_the_database_host(tmp_path: Path) -> None:
    from tests.unit.test_inventories import REPO, ansible_inventory

    layout = lab_layout(tmp_path)
    layout.state = "up"
    layout.save()
    data = ansible_inventory(REPO / "inventory" / "lab", {"ROLLOUT_LAB_DIR": str(tmp_path)})
    assert data["db"]["hosts"] == ["db1"] and data["app"]["hosts"] == ["app01", "app02"]
    assert data["_meta"]["hostvars"]["db1"]["ansible_host"] == "10.213.3.10"
