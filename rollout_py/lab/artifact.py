"""Builds releases of the sample app into the lab's artifact store, good or bad on purpose."""

from __future__ import annotations

import io
import json
import tarfile
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from rollout_py.errors import InputError
from rollout_py.validate import validate_version

MAX_LATENCY_MS = 60_000
MAX_FAIL_AFTER = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How a release misbehaves; the defaults make a good release.

    ``latency_ms`` is added to every ``/`` response. ``fail_after`` makes a release that turns
    bad: good for that many seconds after it starts listening, then ``/`` answers 500 with
    probability ``error_rate`` if that is above 0, else always; ``/health`` stays 200, so only
    an analysis of requests catches it. Without ``fail_after``, ``error_rate`` holds from the
    start.

    ``flags`` makes a flag-enabled release: ``/`` evaluates flag ``new-greeting`` through
    OpenFeature's flagd provider from the host's flag file (``APP_FLAGS_FILE``), answers with
    header ``X-Flag-new-greeting: <variant>`` and a greeting that depends on it; with
    ``flag_error_rate``, that share of the requests that get variant ``on`` answer 500.

    ``db_schema`` (1, 2 or 3) makes a release that serves ``POST /users`` and
    ``GET /users/<id>`` from the lab's PostgreSQL (``lab up --db``), reading and writing the
    columns of that schema version (``rollout_py/lab/app/appdb.py``).
    """

    health_fail: bool = False
    health_flap: bool = False  # /health alternates between 200 and 500
    start_delay: float = 0.0
    error_rate: float = 0.0
    crash_on_start: bool = False
    latency_ms: int = 0
    fail_after: float | None = None
    flags: bool = False
    flag_error_rate: float = 0.0  # share of `on` requests that answer 500 (needs flags)
    db_schema: int | None = None  # 1: users.name; 2: name and full_name; 3: full_name

    def __post_init__(self) -> None:
        _number(self.error_rate, "--error-rate", 0.0, 1.0, "(a share of requests)")
        _number(self.start_delay, "--start-delay", 0.0, 3600, "seconds")
        if isinstance(self.latency_ms, bool) or not isinstance(self.latency_ms, int):
            raise InputError(f"--latency-ms must be a whole number of milliseconds, "
                             f"not {self.latency_ms!r}")
        _number(self.latency_ms, "--latency-ms", 0, MAX_LATENCY_MS, "ms")
        if self.fail_after is not None:
            _number(self.fail_after, "--fail-after", 0.0, MAX_FAIL_AFTER, "seconds")
        _number(self.flag_error_rate, "--flag-error-rate", 0.0, 1.0, "(a share of requests)")
        if self.flag_error_rate and not self.flags:
            raise InputError("--flag-error-rate needs --flags (a flag-enabled release)")
        if self.db_schema is not None and (isinstance(self.db_schema, bool)
                                           or self.db_schema not in (1, 2, 3)):
            raise InputError(f"--db-schema must be 1, 2 or 3, not {self.db_schema!r}")


def _number(value: object, option: str, low: float, high: float, unit: str) -> None:
    """Refuses a value outside [low, high] (NaN and non-numbers too), naming the option."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InputError(f"{option} must be between {low:g} and {high:g} {unit}, not {value!r}")


def artifact_path(store: Path, version: str) -> Path:
    return store / f"app-{validate_version(version)}.tar.gz"


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def build_artifact(store: Path, version: str, behaviour: Behaviour = Behaviour()) -> Path:
    """Writes ``app-VERSION.tar.gz`` (members at top level: app.py, release.json).

    Example:
        >>> build_artifact(Path("/tmp/store"), "2.0", Behaviour(health_fail=True))  # doctest: +SKIP
        PosixPath('/tmp/store/app-2.0.tar.gz')
    """
    target = artifact_path(store, version)
    store.mkdir(parents=True, exist_ok=True)
    app = resources.files("rollout_py.lab.app").joinpath("app.py").read_bytes()
    fields = asdict(behaviour)
    if not behaviour.flags:  # releases without flags: release.json as before flags existed
        del fields["flags"], fields["flag_error_rate"]
    if behaviour.db_schema is None:  # and without a database schema, as before it existed
        del fields["db_schema"]
    meta = json.dumps({"version": version, **fields}, indent=2).encode() + b"\n"
    tmp = target.with_name(target.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        _add(tar, "app.py", app)
        _add(tar, "release.json", meta)
        if behaviour.db_schema is not None:
            _add(tar, "appdb.py", resources.files("rollout_py.lab.app").joinpath(
                "appdb.py").read_bytes())
    tmp.replace(target)
    return target


def unpack(artifact: Path, dest: Path) -> None:
    """Unpacks an artifact into a release directory (used to seed hosts at ``lab up``)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(artifact, "r:gz") as tar:
        tar.extractall(dest, filter="data")
