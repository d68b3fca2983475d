"""Lab hosts: a network namespace with its own sshd, hostname and private /srv /root /run /tmp."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import time
from importlib import resources
from pathlib import Path

from rollout_py.errors import LabError
from rollout_py.lab import flagfiles
from rollout_py.lab.layout import APP_PORT, HOST_FLAGS_PATH, HostSpec, Layout
from rollout_py.lab.procs import Proc, run, spawn

PRIVATE_DIRS = ("srv", "root", "run", "tmp")


def sshd_config(host: HostSpec, *, host_key: str = "/run/lab/ssh_host_ed25519_key",
                authorized_keys: str = "/root/.ssh/authorized_keys") -> str:
    """A lab host's sshd_config. The default paths are as seen inside an app, LB or database
    host (/run/lab is the host's private /run); an execution node passes absolute ones."""
    return "\n".join([
        f"ListenAddress {host.address}:22",
        f"HostKey {host_key}",
        "PidFile none",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        f"AuthorizedKeysFile {authorized_keys}",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "UseDNS no",
        "MaxStartups 200:30:400",
        "MaxSessions 64",
        "Subsystem sftp internal-sftp",
        "LogLevel INFO",
        "",
    ])


def prepare(layout: Layout, host: HostSpec, pubkey: str) -> str:
    """Writes the host's private directories, host key and sshd config; returns its host key."""
    base = layout.host_dir(host.name)
    for sub in PRIVATE_DIRS:
        (base / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(base / "tmp", 0o1777)
    ssh = base / "root" / ".ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    (ssh / "authorized_keys").write_text(pubkey)
    (base / "run" / "sshd").mkdir(mode=0o755, exist_ok=True)
    lab = base / "run" / "lab"
    lab.mkdir(exist_ok=True)
    key = lab / "ssh_host_ed25519_key"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{host.name}",
             "-f", str(key)])
    (lab / "sshd_config").write_text(sshd_config(host))
    return " ".join((lab / "ssh_host_ed25519_key.pub").read_text().split()[:2])


def install_app_runtime(layout: Layout, host: HostSpec) -> None:
    """The host's 'init system' for the sample app: appctl, its environment and the flag file
    of flag-enabled releases."""
    app = layout.host_dir(host.name) / "srv" / "app"
    for sub in ("bin", "releases", "shared"):
        (app / sub).mkdir(parents=True, exist_ok=True)
    appctl = resources.files("rollout_py.lab.app").joinpath("appctl").read_bytes()
    (app / "bin" / "appctl").write_bytes(appctl)
    os.chmod(app / "bin" / "appctl", 0o755)
    # Flag-enabled releases re-exec themselves with APP_FLAGS_PYTHON (rollout_py.lab.appenv).
    (app / "app.env").write_text(
        f"APP_BIND={host.address}\nAPP_PORT={APP_PORT}\nAPP_PYTHON={layout.host_python}\n"
        f"APP_FLAGS_FILE={HOST_FLAGS_PATH}\nAPP_FLAGS_PYTHON={layout.app_flags_python or ''}\n"
        f"APP_DATABASE_URL={layout.db_url or ''}\n")  # `up --db`: releases with a schema
    flagfiles.write_hosts(layout, flagfiles.initial_flags(), [host.name])


def _bind_order(lab_dir: Path) -> list[str]:
    """Mount order for the private dirs: the one holding the lab dir (if any) goes last,
    so every bind source is resolved before anything hides it."""
    resolved = lab_dir.resolve()
    def holds_lab(sub: str) -> bool:
        return resolved == Path("/" + sub) or Path("/" + sub) in resolved.parents
    return sorted(PRIVATE_DIRS, key=holds_lab)


def start_sshd(layout: Layout, host: HostSpec) -> Proc:
    """Starts the host's sshd in its namespace under its own UTS and mount namespaces."""
    base = layout.host_dir(host.name)
    mounts = "; ".join(
        f"mount --bind {shlex.quote(str(base / sub))} /{sub}" for sub in _bind_order(layout.path)
    )
    script = (f"set -e; hostname {shlex.quote(host.name)}; {mounts}; "
              "exec /usr/sbin/sshd -D -e -f /run/lab/sshd_config")
    return spawn_sshd(layout, host, script)


def spawn_sshd(layout: Layout, host: HostSpec, script: str) -> Proc:
    """Runs ``script`` (which ends by exec'ing sshd) in the host's network namespace under new
    UTS and mount namespaces; returns sshd once the pid is sshd's."""
    child = spawn(["ip", "netns", "exec", host.netns, "unshare", "--uts", "--mount",
                   "--propagation", "private", "/bin/sh", "-c", script],
                  str(layout.logs / f"sshd-{host.name}.log"))
    # ip netns exec, unshare and sh each exec the next: the pid becomes sshd's. Only then
    # are the namespaces final, so wait for that before recording it.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise LabError(f"sshd on {host.name} exited ({child.returncode}); see "
                           f"{layout.logs / f'sshd-{host.name}.log'}")
        proc = Proc.of(child.pid)
        if proc.comm() == "sshd":
            return proc
        time.sleep(0.01)
    raise LabError(f"sshd on {host.name} did not start within 10 s")


def nsenter(sshd: Proc, argv: list[str], *, net: bool = True, timeout: float = 60,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    """Runs a command inside a host (its network, mount and UTS namespaces)."""
    flags = ["-m", "-u"] + (["-n"] if net else [])
    return run(["nsenter", "-t", str(sshd.pid), *flags, "--", *argv], timeout=timeout, check=check)


def wait_tcp(address: str, port: int, *, source: str, deadline: float) -> None:
    """Waits until ``address:port`` accepts a connection made from the lab bridge address."""
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.bind((source, 0))
                sock.connect((address, port))
                return
        except OSError as exc:
            last = exc
            time.sleep(0.05)
    raise LabError(f"{address}:{port} did not accept connections: {last}")
