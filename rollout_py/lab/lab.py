"""Brings a lab fleet up, tears it down and reports its state.

A lab is N namespace hosts (sshd + sample app) behind one or two HAProxy load balancers, all
recorded in DIR/lab.json so that ``down`` stops exactly what ``up`` started, by PID. A lab
whose lab.json is gone is found by its index (``down(None, index=N)``).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import shutil
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import rollout_py.lab.exec_nodes as exec_nodes
from rollout_py.balancer import RuntimeAPI, open_transport
from rollout_py.balancer.ssh import SshOptions
from rollout_py.errors import InputError, LabError, LabPrerequisiteError
from rollout_py.lab import artifact, db, files, flagfiles, haproxy, hosts, net, pools, prometheus
from rollout_py.lab.layout import APP_PORT, MAX_HOSTS, RUN_ROOT, HostSpec, Layout, LbSpec
from rollout_py.lab.procs import Proc, run
from rollout_py.lab.teardown import teardown, teardown_index

INSTALL_HINT = "apt-get install -y haproxy openssh-server openssh-client iproute2 socat util-linux"
_TOOLS = {
    "ip": "iproute2", "haproxy": "haproxy", "sshd": "openssh-server", "ssh": "openssh-client",
    "ssh-keygen": "openssh-client", "unshare": "util-linux", "nsenter": "util-linux",
    "socat": "socat",
}

Say = Callable[[str], None]
# Lab traffic goes straight to lab addresses, never through a proxy from the environment.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _which(cmd: str) -> str | None:
    return shutil.which(cmd) or next(
        (p for p in (f"/usr/sbin/{cmd}", f"/sbin/{cmd}") if os.access(p, os.X_OK)), None)


def check_prerequisites(*, with_prometheus: bool = False) -> None:
    """Raises LabPrerequisiteError naming everything missing; creates nothing."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the lab needs root (it creates network namespaces, a bridge and routes): "
                        "run it as root, e.g. `sudo rollout lab up`")
    missing = sorted({pkg for cmd, pkg in _TOOLS.items() if _which(cmd) is None})
    if missing:
        cmds = ", ".join(c for c, p in _TOOLS.items() if p in missing)
        problems.append(f"missing commands ({cmds}): install them with `{INSTALL_HINT}`")
    if with_prometheus and prometheus.binary() is None:
        problems.append("--prometheus needs Debian's prometheus: install it with "
                        f"`{prometheus.INSTALL_HINT}` (its system service is not needed)")
    if not os.path.exists("/proc/self/ns/net"):
        problems.append("this kernel has no network namespaces")
    if problems:
        raise LabPrerequisiteError("cannot build the lab:\n  - " + "\n  - ".join(problems))


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    """Serialises lab creation and removal on this machine (index and bridge allocation)."""
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    with open(RUN_ROOT / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _host_python() -> str:
    return "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


REMOTE_SOCKET = "/run/haproxy/admin.sock"  # a namespace LB's admin socket, as on a packaged host
UNIX_PATH_MAX = 107  # bytes in a unix socket's path (sun_path, its NUL excluded)


def _validate(lab_dir: Path, n_hosts: int, n_lbs: int, n_pools: int = 1, n_exec: int = 0) -> None:
    if not 1 <= n_hosts <= MAX_HOSTS:
        raise InputError(f"--hosts must be between 1 and {MAX_HOSTS} (one /24), not {n_hosts}")
    if not 1 <= n_lbs <= 2:
        raise InputError(f"--lbs must be 1 or 2, not {n_lbs}")
    if n_pools not in (1, 2) or (n_pools == 2 and n_hosts < 2):
        raise InputError(f"--pools must be 1 or 2 (2 needs at least 2 hosts), not {n_pools}")
    exec_nodes.validate(n_exec)
    if any(ch.isspace() for ch in str(lab_dir)) or "," in str(lab_dir):
        raise InputError(f"lab dir {str(lab_dir)!r} must not contain spaces or commas "
                         "(it is written into an Ansible inventory)")
    # `up` reaches LB2's admin socket through the lab dir (before SSH to it works).
    deepest = _socket_in_lab_dir(lab_dir / "hosts" / f"lb{n_lbs}", REMOTE_SOCKET)
    if n_lbs > 1 and len(os.fsencode(deepest)) > UNIX_PATH_MAX:
        raise InputError(f"lab dir {str(lab_dir)!r} is too long: the path of LB{n_lbs}'s admin "
                         f"socket in it, {deepest}, has {len(os.fsencode(deepest))} bytes and a "
                         f"unix socket's path at most {UNIX_PATH_MAX}; choose a shorter --dir")


def running(layout: Layout) -> bool:
    return layout.state == "up" and all(Proc.from_json(p).alive() for p in layout.procs.values())


def up(lab_dir: Path, *, n_hosts: int = 4, n_lbs: int = 1, block: str | None = None,
       with_prometheus: bool = False, n_pools: int = 1, with_shaping: bool = False,
       with_db: bool = False, n_exec: int = 0, say: Say = lambda _msg: None) -> Layout:
    """Builds the lab in ``lab_dir``; on a lab that is already up, changes nothing.

    ``n_pools=2`` splits the hosts into pools blue and green, routed through a map on every
    LB (``rollout_py.lab.pools``).

    ``with_shaping`` gives every LB priority classes, queueing and a shed map
    (``rollout_py.lab.shaping``) and the spec a ``haproxy.shaping`` section.

    ``with_prometheus`` also runs a Prometheus scraping every LB's exporter each second
    (``layout.prometheus_url``); ``up`` returns once it has scraped every LB.

    ``with_db`` runs PostgreSQL on host db1 for releases built with a schema
    (``rollout_py.lab.db``; ``layout.db_url``) and writes its migrations to ``DIR/migrations``.

    ``n_exec`` execution nodes run Ansible for the controller (``rollout_py.lab.exec_nodes``).

    Example:
        >>> layout = up(Path(".rollout-lab"), n_hosts=4)  # doctest: +SKIP
    """
    lab_dir = lab_dir.absolute()
    _validate(lab_dir, n_hosts, n_lbs, n_pools, n_exec)
    if with_shaping and n_pools != 1:
        raise InputError("--shaping works with one pool (the backend 'app'), not --pools 2")
    check_prerequisites(with_prometheus=with_prometheus)
    block = block or os.environ.get("ROLLOUT_LAB_BLOCK") or net.DEFAULT_BLOCK
    with _machine_lock():
        existing = Layout.load(lab_dir)
        if existing is not None:
            if not running(existing):
                raise LabError(f"the lab in {lab_dir} is not fully up (state {existing.state}, "
                               f"or a process died): run `rollout lab down --dir {lab_dir}` first")
            if (existing.n_hosts, existing.n_lbs, existing.n_pools, existing.n_exec) != \
                    (n_hosts, n_lbs, n_pools, n_exec):
                raise LabError(f"the lab in {lab_dir} is already up with {existing.n_hosts} hosts, "
                               f"{existing.n_lbs} LB(s), {existing.n_pools} pool(s), "
                               f"{existing.n_exec} exec node(s); run `rollout lab down` first")
            if (existing.prometheus_url is not None) != with_prometheus:
                has = "with" if existing.prometheus_url else "without"
                raise LabError(f"the lab in {lab_dir} is already up {has} Prometheus; run "
                               "`rollout lab down` first to change that")
            if existing.shaping != with_shaping:
                raise LabError(f"the lab in {lab_dir} is already up "
                               f"{'with' if existing.shaping else 'without'} --shaping; run "
                               "`rollout lab down` first to change that")
            if existing.db != with_db:
                raise LabError(f"the lab in {lab_dir} is already up "
                               f"{'with' if existing.db else 'without'} --db; run "
                               "`rollout lab down` first to change that")
            say(f"lab already up in {lab_dir}: nothing changed")
            return existing
        network = net.check_block(block)
        net.install_guard(network)  # before anything targets a lab address
        layout = Layout(dir=str(lab_dir), index=_free_index(network), block=str(network),
                        n_hosts=n_hosts, n_lbs=n_lbs, host_python=_host_python(),
                        n_pools=n_pools, shaping=with_shaping, db=with_db, n_exec=n_exec)
        lab_dir.mkdir(parents=True, exist_ok=True)
        layout.save()
        started = time.monotonic()
        try:
            _build(layout, say, with_prometheus)
        except BaseException:
            say("lab up failed: removing what was created")
            teardown(layout)
            raise
        layout.state = "up"
        layout.save()
        say(f"lab up in {time.monotonic() - started:.1f} s: {n_hosts} hosts on {layout.subnet}"
            + (f"; prometheus {layout.prometheus_url}" if with_prometheus else ""))
        return layout


def _free_index(network: ipaddress.IPv4Network) -> int:
    used = net.used_indexes()
    count = min(255, 2 ** (24 - network.prefixlen))
    for index in range(1, count):
        if index not in used:
            return index
    raise LabError(f"no free /24 left in {network} for another lab")


def _build(layout: Layout, say: Say, with_prometheus: bool) -> None:
    for path in (layout.logs, layout.ssh_dir, layout.artifacts, layout.run_dir / "cp"):
        path.mkdir(parents=True, exist_ok=True)
    if not layout.key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rollout-lab", "-f",
             str(layout.key)])
    pubkey = layout.key.with_suffix(".pub").read_text()
    first = artifact.build_artifact(layout.artifacts, "1.0")
    flagfiles.prepare(layout)  # the flag-enabled releases' venv (cached) and flags.json
    if layout.db:  # before the app hosts write their app.env: its password and URL
        db.prepare(layout)
    _plan_lbs(layout, with_prometheus)
    # Prometheus first scrapes ~5 s after it starts (its target discovery ticks every 5 s):
    # started now, it comes up while the hosts do. The canary spec's gate needs its URL.
    prom = prometheus.start(layout) if with_prometheus else None
    net.create_bridge(layout.bridge, f"{layout.gateway}/24")
    layout.ssh_config.write_text(files.ssh_config(layout))  # exec nodes bind over it at start
    say(f"bridge {layout.bridge} {layout.gateway}/24; starting {len(layout.all_hosts)} hosts")

    host_keys: dict[str, str] = {}

    def start_host(host: HostSpec) -> tuple[str, Proc]:
        net.create_netns(host.netns, host.veth, layout.bridge, f"{host.address}/24")
        if host.role == "exec":  # the machine's filesystem, not private dirs (lab.exec_nodes)
            return host.name, exec_nodes.start(layout, host, pubkey, host_keys)
        host_keys[host.name] = hosts.prepare(layout, host, pubkey)
        if host.role == "app":
            hosts.install_app_runtime(layout, host)
            app = layout.host_dir(host.name) / "srv" / "app"
            artifact.unpack(first, app / "releases" / "1.0")
            # Staged as the app_release role stages: complete, so it is never unpacked again.
            (app / "releases" / "1.0" / ".app_release_complete").touch()
            os.symlink("/srv/app/releases/1.0", app / "current")
        sshd = hosts.start_sshd(layout, host)
        if host.role == "app":
            hosts.nsenter(sshd, ["/srv/app/bin/appctl", "start"])
        return host.name, sshd

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(start_host, h) for h in layout.all_hosts]
        errors = []
        for fut in futures:
            try:
                name, proc = fut.result()
                layout.procs[f"sshd:{name}"] = proc.to_json()
            except Exception as exc:  # collect all, then fail once
                errors.append(exc)
        layout.save()
        if errors:
            raise errors[0]

    if layout.db:
        db.start(layout, Proc.from_json(layout.procs[f"sshd:{layout.db_host.name}"]))
    for lb in layout.lbs:
        sshd = Proc.from_json(layout.procs[f"sshd:{lb.host}"]) if lb.host else None
        layout.procs[f"haproxy:{lb.name}"] = haproxy.start(layout, lb, host_sshd=sshd).to_json()
        layout.save()

    (layout.path / "inventory.ini").write_text(files.inventory(layout))
    layout.known_hosts.write_text(files.known_hosts(layout, host_keys))
    (layout.path / "ansible.cfg").write_text(files.ansible_cfg(layout))
    (layout.path / "rollout.yml").write_text(files.rollout_spec(layout))
    (layout.path / "rollout-canary.yml").write_text(files.canary_spec(layout))
    if pools.enabled(layout):
        (layout.path / "rollout-bluegreen.yml").write_text(
            files.bluegreen_spec(layout, files.rollout_spec(layout)))
    _wait_ready(layout, say)
    if prom is not None:
        prometheus.wait_ready(layout, prom, deadline=time.monotonic() + 30)
        say(f"prometheus {layout.prometheus_url} has scraped every LB's exporter")


def _plan_lbs(layout: Layout, with_prometheus: bool) -> None:
    """The LBs and their loopback ports (a frontend and an exporter each, and Prometheus's),
    chosen at once so that no two are the same."""
    per_lb = 3 if pools.enabled(layout) else 2  # frontend, exporter (, preview)
    ports = iter(haproxy.free_ports(per_lb * layout.n_lbs + int(with_prometheus)))

    def pool_fields(name: str, remote: bool) -> dict[str, Any]:
        if not pools.enabled(layout):
            return {}
        return {"map_path": pools.map_path_for(layout, name, remote),
                "preview_port": next(ports)}

    layout.lbs = [LbSpec("lb1", next(ports), str(layout.run_dir / "lb1.sock"),
                         f"unix://{layout.run_dir / 'lb1.sock'}", None, next(ports),
                         **pool_fields("lb1", False))]
    for lb_host in layout.lb_hosts:
        layout.lbs.append(LbSpec(lb_host.name, next(ports), REMOTE_SOCKET,
                                 f"ssh://root@{lb_host.address}{REMOTE_SOCKET}", lb_host.name,
                                 next(ports), **pool_fields(lb_host.name, True)))
    layout.prometheus_port = next(ports, None)
    layout.save()


def lb_api(layout: Layout, lb: LbSpec) -> RuntimeAPI:
    """The runtime API of one lab LB, through the transport its socket URL names."""
    ssh = SshOptions(key_filename=str(layout.key), known_hosts=str(layout.known_hosts),
                     bind_address=layout.gateway)
    return RuntimeAPI(open_transport(lb.socket_url, ssh=ssh))


def _socket_in_lab_dir(host_dir: Path, socket_path: str) -> Path:
    """Where a namespace host's ``/run/...`` socket is in the root namespace (its host dir)."""
    return host_dir / "run" / Path(socket_path).relative_to("/run")


def _local_lb_api(layout: Layout, lb: LbSpec) -> RuntimeAPI:
    """A root-namespace path to an LB's socket, for waiting during ``up`` without SSH."""
    if lb.host is None:
        return RuntimeAPI(open_transport(lb.socket_url))
    path = _socket_in_lab_dir(layout.host_dir(lb.host), lb.socket_path)
    return RuntimeAPI(open_transport(f"unix://{path}"))


def _wait_ready(layout: Layout, say: Say) -> None:
    deadline = time.monotonic() + 30 + 0.3 * len(layout.all_hosts)
    for host in layout.all_hosts:
        hosts.wait_tcp(host.address, 22, source=layout.gateway, deadline=deadline)
    for host in layout.app_hosts:
        hosts.wait_tcp(host.address, APP_PORT, source=layout.gateway, deadline=deadline)
    for lb in layout.lbs:
        api = _local_lb_api(layout, lb)
        while True:
            states = [s for be in pools.backends(layout, haproxy.BACKEND)
                      for s in api.servers_state(be)]
            down = [s.name for s in states if not s.running]
            if not down:
                break
            if time.monotonic() > deadline:
                raise LabError(f"{lb.name}: servers not UP in time: {', '.join(down)}")
            time.sleep(0.1)
    say("all hosts answer and every server is UP on every LB")


def down(lab_dir: Path | None, *, index: int | None = None,
         say: Say = lambda _msg: None) -> bool:
    """Stops everything the lab started and removes its network; safe to run twice.

    ``index`` also removes lab ``rlab<index>`` when its lab.json is gone (its directory was
    deleted while it ran): it is found by its bridge, its namespaces ``rlab<index>-*``, their
    veths and the processes in them (see ``rollout_py.lab.teardown``). The unreachable route
    that guards the lab block stays in any case.

    Returns False if there was no lab in ``lab_dir`` (and nothing of lab ``index``).

    Example:
        >>> down(Path(".rollout-lab"))  # doctest: +SKIP
        >>> down(None, index=3)  # the lab whose directory was deleted  # doctest: +SKIP
    """
    if lab_dir is None and index is None:
        raise InputError("name the lab to remove: its directory, or its index (rlabN)")
    if os.geteuid() != 0:
        raise LabPrerequisiteError("removing the lab needs root: run it as root")
    lab_dir = lab_dir.absolute() if lab_dir is not None else None
    with _machine_lock():
        layout = Layout.load(lab_dir) if lab_dir is not None else None
        if layout is not None:
            if index is not None and index != layout.index:
                raise InputError(f"the lab in {lab_dir} is rlab{layout.index}, not rlab{index}")
            teardown(layout)
            say(f"lab in {lab_dir} is down; the unreachable route for {layout.block} stays")
            return True
        if index is None:
            found = sorted(net.used_indexes())
            hint = (f"; if its directory was deleted while it ran, `rollout lab down --index N` "
                    f"removes lab rlabN (here now: {', '.join(f'rlab{i}' for i in found)})"
                    if found else "")
            say(f"no lab in {lab_dir}{hint}")
            return False
        removed = teardown_index(index, lab_dir)
        if not removed:
            say(f"nothing of lab rlab{index} found")
            return False
        say(f"lab rlab{index} is down ({', '.join(removed)}); the unreachable route stays")
        return True


def status(lab_dir: Path) -> dict[str, Any]:
    """The lab's hosts (alive, version served) and each server's state on each LB."""
    layout = Layout.load(lab_dir.absolute())
    if layout is None:
        raise LabError(f"no lab in {lab_dir.absolute()}: run `rollout lab up --dir {lab_dir}`")
    info = layout.describe()
    host_rows = []
    for host in layout.app_hosts:
        proc = layout.procs.get(f"sshd:{host.name}")
        host_rows.append({
            "name": host.name, "address": host.address,
            "sshd": bool(proc and Proc.from_json(proc).alive()),
            "version": _served_version(layout, host),
        })
    lb_rows = []
    for lb in layout.lbs:
        row: dict[str, Any] = {"name": lb.name, "frontend": f"127.0.0.1:{lb.port}",
                               "socket": lb.socket_url, "metrics": lb.metrics_url}
        api = lb_api(layout, lb)
        try:
            row["servers"] = {
                s.name: {"admin": s.admin, "op": s.op, "weight": s.weight,
                         "in_rotation": s.in_rotation}
                for be in pools.backends(layout, haproxy.BACKEND)
                for s in api.servers_state(be)
            }
            row.update(pools.lb_status(layout, lb, api))
        except Exception as exc:  # report, do not hide, an LB that does not answer
            row["error"] = str(exc)
        finally:
            api.close()
        lb_rows.append(row)
    return {"dir": info["dir"], "state": info["state"], "subnet": info["subnet"],
            "pools": info["pools"], "hosts": host_rows, "lbs": lb_rows,
            "exec_nodes": exec_nodes.status(layout),
            "prometheus": prometheus.status(layout), "db": db.status(layout)}


def _served_version(layout: Layout, host: HostSpec) -> str | None:
    net.assert_routed_via(host.address, layout.bridge)
    try:
        with _NO_PROXY.open(f"http://{host.address}:{APP_PORT}/version", timeout=2) as resp:
            return str(resp.read().decode().strip())
    except OSError:
        return None
