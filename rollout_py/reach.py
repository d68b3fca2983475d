"""Checks SSH login to hosts with OpenSSH directly, with the settings Ansible would use.

Preflight asks every host for an SSH login before a deploy. One Ansible ``raw`` round costs
about 0.13 CPU-s per host on the controller (a forked worker per host, measured on the lab);
``ssh host true`` about 0.01 (mostly the key exchange, see ``PREFER_KEX``). The connection
settings are resolved once for all hosts, from one
``ansible-inventory --list`` and one ``ansible-config dump`` of the ssh connection plugin (and of
the transport), so the check asks the hosts what Ansible would ask them. A host whose settings
this cannot represent faithfully (another connection plugin, a password, a var still holding
a Jinja template, ...) is left to the caller's Ansible round.

Example:
    >>> plan = plan_logins(["app01"], {"_meta": {"hostvars": {"app01": {
    ...     "ansible_host": "10.0.0.5"}}}}, {}, "ssh", {}, ssh="/usr/bin/ssh")
    >>> plan.targets["app01"].argv[-2:]
    ('10.0.0.5', 'true')
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rollout_py.errors import ControllerError
from rollout_py.job_events import one_line

# The ssh connection plugin's options that decide how a login goes, with the host variables
# that set them; as in Ansible, the last one defined wins (ansible/config/manager.py).
HOST_VARS = ("ansible_host", "ansible_ssh_host")
PORT_VARS = ("ansible_port", "ansible_ssh_port")
USER_VARS = ("ansible_user", "ansible_ssh_user")
KEY_FILE_VARS = ("ansible_private_key_file", "ansible_ssh_private_key_file")
SSH_ARGS_VARS = ("ansible_ssh_args",)
COMMON_ARGS_VARS = ("ansible_ssh_common_args",)
EXTRA_ARGS_VARS = ("ansible_ssh_extra_args",)
HOST_KEY_CHECKING_VARS = ("ansible_host_key_checking", "ansible_ssh_host_key_checking")
TIMEOUT_VARS = ("ansible_ssh_timeout",)
EXECUTABLE_VARS = ("ansible_ssh_executable",)
# Any of these means Ansible does something ssh -o BatchMode=yes cannot (sshpass/askpass, an
# agent it fills itself, a PKCS#11 token): the Ansible round decides for such a host.
UNSUPPORTED_VARS = {
    "ansible_password": "a password", "ansible_ssh_pass": "a password",
    "ansible_ssh_password": "a password",
    "ansible_private_key": "a private key given as a value",
    "ansible_ssh_private_key": "a private key given as a value",
    "ansible_private_key_passphrase": "a key passphrase",
    "ansible_ssh_private_key_passphrase": "a key passphrase",
    "ansible_ssh_pkcs11_provider": "a PKCS#11 provider",
}
RELEVANT_VARS = ("ansible_connection", *HOST_VARS, *PORT_VARS, *USER_VARS, *KEY_FILE_VARS,
                 *SSH_ARGS_VARS, *COMMON_ARGS_VARS, *EXTRA_ARGS_VARS, *HOST_KEY_CHECKING_VARS,
                 *TIMEOUT_VARS, *EXECUTABLE_VARS)
SSH_TRANSPORTS = ("ssh", "smart", "ansible.builtin.ssh")
# Plugin-level options (ansible.cfg, ANSIBLE_* variables) that send Ansible down a path
# this check does not take.
UNSUPPORTED_OPTIONS = {"password": "a password", "private_key": "a private key given as a value",
                       "private_key_passphrase": "a key passphrase",
                       "pkcs11_provider": "a PKCS#11 provider"}
# Seconds a login may take beyond ConnectTimeout (key exchange, authentication, `true`).
LOGIN_GRACE = 15.0
# OpenSSH 9.x prefers sntrup761x25519 key exchange, ~65 ms of client CPU per login; curve25519
# costs ~1 ms. "^" moves these to the front of ssh's default list (OpenSSH >= 8.2): every
# default algorithm stays on offer, so a server that logs Ansible in logs this check in too.
PREFER_KEX = "^curve25519-sha256,curve25519-sha256@libssh.org"

Fallback = Callable[[Sequence[str]], dict[str, str | None]]


@dataclass(frozen=True, slots=True)
class Target:
    """One host's login: the ssh command line and how long it may take."""

    host: str
    argv: tuple[str, ...]
    timeout: float


@dataclass(frozen=True, slots=True)
class LoginPlan:
    """Hosts checked with ssh directly, and hosts left to Ansible with the reason why."""

    targets: dict[str, Target] = field(default_factory=dict)
    fallback: dict[str, str] = field(default_factory=dict)


def _truthy(value: Any) -> bool:
    """Ansible's boolean conversion for the values a config or an inventory can hold."""
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on", "y", "t")


def _last(values: Mapping[str, Any], names: Sequence[str], default: Any = None) -> Any:
    found = default
    for name in names:
        if values.get(name) is not None:
            found = values[name]
    return found


def _has_template(value: Any) -> bool:
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, Mapping):
        return any(_has_template(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_template(v) for v in value)
    return False


def _inventory_hosts(inventory: Mapping[str, Any]) -> set[str]:
    names = set((inventory.get("_meta") or {}).get("hostvars") or {})
    for group in inventory.values():
        if isinstance(group, Mapping):
            names.update(str(h) for h in group.get("hosts") or ())
    return names


def plan_logins(hosts: Sequence[str], inventory: Mapping[str, Any], options: Mapping[str, Any],
                transport: str, overrides: Mapping[str, Any], *, ssh: str,
                prefer_kex: str | None = None) -> LoginPlan:
    """The ssh command line per host, as Ansible's ssh connection plugin would build it.

    Args:
        hosts: inventory host names.
        inventory: ``ansible-inventory --list`` output (host vars under ``_meta``).
        options: the ssh plugin's options as configured (``ansible-config dump -t connection
            ssh``: ansible.cfg, ANSIBLE_* environment, defaults), name -> value.
        transport: the configured default connection (DEFAULT_TRANSPORT).
        overrides: extra vars of the run (``-e``), above every host var.
        ssh: the ssh binary.
        prefer_kex: a ``KexAlgorithms`` value put first unless the host's ssh arguments
            choose key exchange themselves (see PREFER_KEX).

    Example:
        >>> plan_logins(["db1"], {"_meta": {"hostvars": {"db1": {"ansible_connection": "local"}}}},
        ...             {}, "ssh", {}, ssh="ssh").fallback
        {'db1': 'connection local'}
    """
    hostvars = (inventory.get("_meta") or {}).get("hostvars") or {}
    known = _inventory_hosts(inventory)
    plan = LoginPlan()
    plugin_problem = next((why for name, why in UNSUPPORTED_OPTIONS.items()
                           if options.get(name)), None)
    for host in hosts:
        if host not in known:
            plan.fallback[host] = "not in ansible-inventory's list"
            continue
        hv = {**(hostvars.get(host) or {}), **overrides}
        why = _why_not(hv, options, transport, plugin_problem)
        if why:
            plan.fallback[host] = why
            continue
        plan.targets[host] = _target(host, hv, options, ssh, prefer_kex)
    return plan


def _why_not(hv: Mapping[str, Any], options: Mapping[str, Any], transport: str,
             plugin_problem: str | None) -> str | None:
    connection = str(hv.get("ansible_connection") or transport or "ssh")
    if connection not in SSH_TRANSPORTS:
        return f"connection {connection}"
    for name, why in UNSUPPORTED_VARS.items():
        if hv.get(name):
            return f"{why} ({name})"
    if plugin_problem:
        return f"{plugin_problem} in the ssh connection's settings"
    # A vaulted or structured value: ansible-inventory shows it as an object, not the text.
    odd = [n for n in RELEVANT_VARS
           if hv.get(n) is not None and not isinstance(hv[n], str | int | float | bool)]
    if odd:
        return f"a value that is not plain text in {', '.join(odd)}"
    templated = [n for n in RELEVANT_VARS if _has_template(hv.get(n))]
    templated += [n for n in ("ssh_args", "ssh_common_args", "ssh_extra_args", "remote_user",
                              "private_key_file", "port") if _has_template(options.get(n))]
    if templated:
        return f"a template in {', '.join(templated)}"
    executable = str(_last(hv, EXECUTABLE_VARS, options.get("ssh_executable") or "ssh"))
    if executable != "ssh" and shutil.which(executable) != shutil.which("ssh"):
        return f"ssh executable {executable}"
    return None


def _target(host: str, hv: Mapping[str, Any], options: Mapping[str, Any], ssh: str,
            prefer_kex: str | None) -> Target:
    def opt(names: Sequence[str], option: str) -> Any:
        return _last(hv, names, options.get(option))

    # First value wins in ssh, so what comes first is what we insist on: no prompt, and no
    # multiplexing (a master left behind, or an old one answering for a host that is gone).
    argv = [ssh, "-o", "BatchMode=yes", "-o", "ControlMaster=no", "-o", "ControlPath=none"]
    # From here on, in the order of ssh.py's _build_command (ansible-core 2.19).
    argv += shlex.split(str(opt(SSH_ARGS_VARS, "ssh_args") or ""))
    if not _truthy(opt(HOST_KEY_CHECKING_VARS, "host_key_checking")):
        # Ansible adds only the first; the second keeps the check from writing known_hosts.
        argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    # Checking on: Ansible adds nothing, and ssh's own setting ("ask" unless the user's ssh
    # config says otherwise) applies; BatchMode turns "ask" into a refusal, so an unknown or
    # changed host key fails here as it fails under Ansible.
    port = opt(PORT_VARS, "port")
    if port is not None:
        argv += ["-o", f"Port={port}"]
    key = opt(KEY_FILE_VARS, "private_key_file")
    if key:
        argv += ["-o", f'IdentityFile="{os.path.expanduser(str(key))}"']
    argv += ["-o", "KbdInteractiveAuthentication=no",
             "-o", "PreferredAuthentications=gssapi-with-mic,gssapi-keyex,hostbased,publickey",
             "-o", "PasswordAuthentication=no"]
    user = opt(USER_VARS, "remote_user")
    if user:
        argv += ["-o", f'User="{user}"']
    timeout = float(opt(TIMEOUT_VARS, "timeout") or 10)
    argv += ["-o", f"ConnectTimeout={int(timeout)}"]
    for names, option in ((COMMON_ARGS_VARS, "ssh_common_args"),
                          (EXTRA_ARGS_VARS, "ssh_extra_args")):
        argv += shlex.split(str(opt(names, option) or ""))
    if prefer_kex and not any("kexalgorithms" in a.lower() for a in argv):
        argv[1:1] = ["-o", f"KexAlgorithms={prefer_kex}"]
    address = str(_last(hv, HOST_VARS, host))
    return Target(host=host, argv=(*argv, address, "true"), timeout=timeout + LOGIN_GRACE)


def _json(proc: subprocess.Popen[str], what: str, timeout: float) -> Any:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise ControllerError(f"{what} did not answer within {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise ControllerError(f"{what} failed (rc {proc.returncode}): {one_line(err or out)}")
    try:
        return json.loads(out)
    except ValueError as exc:
        raise ControllerError(f"{what} printed no JSON: {exc}") from exc


def resolve(hosts: Sequence[str], *, inventory: str, env: Mapping[str, str],
            overrides: Mapping[str, Any], cwd: str, timeout: float = 120) -> LoginPlan:
    """Asks Ansible once for every host's settings (three processes, run side by side).

    ``cwd`` should be where Ansible itself runs (ansible-runner: its private data dir), so the
    same ansible.cfg applies. Raises ControllerError when a query fails.
    """
    ssh = shutil.which("ssh", path=env.get("PATH"))
    if not ssh:
        raise ControllerError("no ssh executable on PATH")

    def start(*args: str) -> subprocess.Popen[str]:
        exe = shutil.which(args[0], path=env.get("PATH")) or args[0]
        try:
            return subprocess.Popen([exe, *args[1:]], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    text=True, env=dict(env), cwd=cwd)
        except OSError as exc:
            raise ControllerError(f"cannot run {args[0]}: {exc.strerror or exc}") from exc

    # Whether this ssh takes the "^" form: `ssh -G` only parses options (no network).
    try:
        probe = subprocess.run([ssh, "-G", "-F", "/dev/null", "-o",
                                f"KexAlgorithms={PREFER_KEX}", "reach-probe"],
                               capture_output=True, stdin=subprocess.DEVNULL, timeout=10,
                               check=False)
        prefer_kex = PREFER_KEX if probe.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        prefer_kex = None

    if os.path.exists(inventory):  # not a "host1,host2," list; cwd is not the caller's
        inventory = os.path.abspath(inventory)
    with contextlib.ExitStack() as stack:  # each Popen's exit closes its pipes and reaps it
        procs: list[subprocess.Popen[str]] = []
        try:
            for args in (("ansible-inventory", "-i", inventory, "--list"),
                         ("ansible-config", "dump", "--format", "json", "-t", "connection",
                          "ssh"),
                         ("ansible-config", "dump", "--format", "json", "-t", "base",
                          "--only-changed")):
                procs.append(stack.enter_context(start(*args)))
            listed = _json(procs[0], "ansible-inventory --list", timeout)
            plugin = _json(procs[1], "ansible-config dump (ssh)", timeout)
            base = _json(procs[2], "ansible-config dump (base)", timeout)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
    options = {str(o["name"]): o.get("value")
               for block in plugin if isinstance(block, Mapping)
               for o in block.get("ssh") or () if isinstance(o, Mapping) and "name" in o}
    settings = {str(o["name"]): o.get("value") for o in base
                if isinstance(o, Mapping) and "name" in o}
    transport = str(settings.get("DEFAULT_TRANSPORT") or "ssh")
    return plan_logins(hosts, listed, options, transport, overrides, ssh=ssh,
                       prefer_kex=prefer_kex)


def login(target: Target, env: Mapping[str, str] | None = None) -> str | None:
    """None if ``ssh host true`` succeeded, else what went wrong, as the Ansible round says it
    (``unreachable: ...`` when ssh could not log in, ``failed: ...`` when ``true`` failed)."""
    try:
        proc = subprocess.run(list(target.argv), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=target.timeout,
                              env=None if env is None else dict(env), check=False)
    except subprocess.TimeoutExpired:
        return f"unreachable: ssh did not finish within {target.timeout:.0f} s"
    except OSError as exc:
        return f"unreachable: cannot run ssh: {exc.strerror or exc}"
    if proc.returncode == 0:
        return None
    # Without the banners of @ around a changed host key's warning.
    said = "\n".join(line for line in (proc.stderr or proc.stdout).splitlines()
                     if line.strip("@ ")) or "no message"
    if proc.returncode == 255:  # ssh's own failure: connect, host key, authentication
        return f"unreachable: {one_line(said)}"
    return f"failed: rc {proc.returncode}: {one_line(said)}"


def reachable(hosts: Sequence[str], *, inventory: str, env: Mapping[str, str],
              overrides: Mapping[str, Any], fallback: Fallback,
              workers: int = 50) -> dict[str, str | None]:
    """SSH login to every host; None means reachable.

    Hosts this module cannot represent, or all hosts when Ansible cannot be asked for their
    settings, go to ``fallback`` (the Ansible round), concurrently with the ssh logins.
    """
    if not hosts:
        return {}
    with tempfile.TemporaryDirectory(prefix="rollout-reach-") as cwd:
        try:
            plan = resolve(hosts, inventory=inventory, env=env, overrides=overrides, cwd=cwd)
        except ControllerError as exc:
            plan = LoginPlan(fallback={h: str(exc) for h in hosts})
        targets = list(plan.targets.values())
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(targets) + 1))) as pool:
            late = pool.submit(fallback, list(plan.fallback)) if plan.fallback else None
            results = dict(zip([t.host for t in targets],
                               pool.map(lambda t: login(t, env), targets), strict=True))
            if late is not None:
                results.update(late.result())
    return {h: results.get(h, "unreachable: not checked") for h in hosts}
