"""What flag-enabled releases need in a lab: the shared venv's place (``appenv``) in every
host's app.env, and flag ``new-greeting`` (flagd's format) on every app host and beside the
lab's specs, each file written atomically (temp file + rename)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rollout_py.atomic import write_atomic
from rollout_py.flags.edit import to_json
from rollout_py.flags.model import FlagFile, parse_flags
from rollout_py.lab import appenv
from rollout_py.lab.layout import APP_PORT, HOST_FLAGS_PATH, Layout

FLAG = "new-greeting"
CONTROLLER_FILE = "flags.json"  # beside rollout.yml


def initial_flags() -> FlagFile:
    """``new-greeting`` with variants on/off, everyone off: what ``lab up`` writes."""
    return parse_flags({"flags": {FLAG: {
        "state": "ENABLED", "variants": {"on": True, "off": False},
        "defaultVariant": "off", "targeting": {},
    }}}, source="lab")


def prepare(layout: Layout) -> None:
    """Before hosts start (``lab up``): builds the shared venv unless it is cached (seconds
    the first time, then a stat), records its interpreter for every host's app.env and writes
    the controller's flag file."""
    appenv.check_visible_to_hosts(appenv.cache_dir())
    layout.app_flags_python = str(appenv.ensure(layout.host_python))
    write_controller(layout, initial_flags())


def host_path(layout: Layout, host: str) -> Path:
    """The flag file of app host ``host`` as seen from the controller (the root namespace)."""
    return layout.host_dir(host) / HOST_FLAGS_PATH.lstrip("/")


def write_hosts(layout: Layout, flags: FlagFile, hosts: list[str] | None = None) -> None:
    """Writes the flag file on every app host (or on ``hosts``), as the fleet would get it."""
    text = to_json(flags)
    for name in hosts if hosts is not None else [h.name for h in layout.app_hosts]:
        path = host_path(layout, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text)


def write_controller(layout: Layout, flags: FlagFile) -> Path:
    """The controller's copy, beside the lab's specs (the ``flags.file`` they name)."""
    path = layout.path / CONTROLLER_FILE
    write_atomic(path, to_json(flags))
    return path


def flags_section(layout: Layout) -> dict[str, Any]:
    """The lab specs' ``flags:`` section: the controller copy (relative to the spec), where
    every host's app reads it, lab-sized ramp windows, and how to see a host serve a change
    (the app's variant header on /)."""
    return {"file": CONTROLLER_FILE, "path": HOST_FLAGS_PATH,
            "step_duration": 20, "baseline_duration": 10,
            "effect": {"url": f"http://{{{{ ansible_host }}}}:{APP_PORT}/"}}


def spec_yaml(layout: Layout) -> str:
    """:func:`flags_section` as the lab specs write it."""
    return yaml.safe_dump({"flags": flags_section(layout)}, sort_keys=False)
