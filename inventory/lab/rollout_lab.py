#!/usr/bin/env python3
"""Ansible dynamic inventory of the running lab (`rollout lab up`), read from its lab.json.

    ansible -i inventory/lab app -m ping
    rollout deploy -f .rollout-lab/rollout.yml -i inventory/lab --version 2.0

The lab is found in $ROLLOUT_LAB_DIR, else in .rollout-lab/ at the top of this repository.
With no lab up the inventory is empty, so nothing can target a lab address that no longer
belongs to this machine. Standard library only: Ansible runs it with any Python 3.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def lab_dir() -> Path:
    default = Path(__file__).resolve().parents[2] / ".rollout-lab"
    return Path(os.environ.get("ROLLOUT_LAB_DIR") or default)


def inventory(record: dict[str, object] | None) -> dict[str, object]:
    """The lab's hosts in Ansible's dynamic-inventory JSON (groups app and lb, and db with
    ``lab up --db``)."""
    empty: dict[str, object] = {"_meta": {"hostvars": {}}, "all": {"children": ["app", "lb"]},
                                "app": {"hosts": []}, "lb": {"hosts": []}}
    if not record or record.get("state") != "up":
        return empty
    shared = dict(record.get("ansible_vars") or {})  # type: ignore[call-overload]
    hostvars: dict[str, dict[str, object]] = {}
    groups: dict[str, list[str]] = {"app": [], "lb": []}
    if record.get("db_hosts"):
        groups["db"] = []
    for key, group in (("hosts", "app"), ("lb_hosts", "lb"), ("db_hosts", "db")):
        if group not in groups:
            continue
        for host in record.get(key) or []:  # type: ignore[attr-defined]
            groups[group].append(host["name"])
            hostvars[host["name"]] = {"ansible_host": host["address"], **shared}
    return {"_meta": {"hostvars": hostvars}, "all": {"children": list(groups)},
            **{name: {"hosts": names} for name, names in groups.items()}}


def main(argv: list[str]) -> int:
    try:
        record = json.loads((lab_dir() / "lab.json").read_text())
    except FileNotFoundError:
        record = None
    except (OSError, ValueError) as exc:
        print(f"rollout_lab.py: {lab_dir() / 'lab.json'}: {exc}", file=sys.stderr)
        return 1
    data = inventory(record)
    if len(argv) > 2 and argv[1] == "--host":
        hostvars = data["_meta"]["hostvars"]  # type: ignore[index]
        print(json.dumps(hostvars.get(argv[2], {})))
    else:
        print(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
