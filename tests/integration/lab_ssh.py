"""Runs a command on a lab host over the lab's SSH config (as an operator would)."""

from __future__ import annotations

import subprocess

from rollout_py.lab.layout import Layout


def lab_ssh(lab: Layout, host: str, command: str) -> str:
    proc = subprocess.run(["ssh", "-F", str(lab.ssh_config), "-o", "ControlPath=none", host,
                           command], capture_output=True, text=True, timeout=60, check=True)
    return proc.stdout
