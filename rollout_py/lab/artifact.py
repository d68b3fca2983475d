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


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How a release misbehaves; the defaults make a good release."""

    health_fail: bool = False
    health_flap: bool = False  # /health alternates between 200 and 500
    start_delay: float = 0.0
    error_rate: float = 0.0
    crash_on_start: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise InputError(f"error rate {self.error_rate} must be between 0 and 1")
        if not 0.0 <= self.start_delay <= 3600:
            raise InputError(f"start delay {self.start_delay} must be between 0 and 3600 seconds")


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
    meta = json.dumps({"version": version, **asdict(behaviour)}, indent=2).encode() + b"\n"
    tmp = target.with_name(target.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        _add(tar, "app.py", app)
        _add(tar, "release.json", meta)
    tmp.replace(target)
    return target


def unpack(artifact: Path, dest: Path) -> None:
    """Unpacks an artifact into a release directory (used to seed hosts at ``lab up``)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(artifact, "r:gz") as tar:
        tar.extractall(dest, filter="data")
