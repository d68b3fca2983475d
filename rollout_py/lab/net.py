"""The lab's network: an address block guarded by an unreachable route, bridges, namespaces, veths.

Traffic safety: before any lab address is used, an ``unreachable`` route covers the whole block,
and it stays after ``down``. While a lab is up its bridge's connected /24 is more specific;
once the bridge is gone a connection to a lab address fails locally instead of following the
default route off the machine.
"""

from __future__ import annotations

import ipaddress
import json
import re

from rollout_py.errors import LabError
from rollout_py.lab.procs import run

DEFAULT_BLOCK = "10.213.0.0/16"
_LAB_DEV = re.compile(r"^rlab\d+$")


def _routes() -> list[dict[str, object]]:
    out = run(["ip", "-j", "route", "show", "table", "all"]).stdout
    return list(json.loads(out or "[]"))


def _network(dst: str) -> ipaddress.IPv4Network | None:
    if dst in ("default", "") or ":" in dst:
        return None
    try:
        return ipaddress.IPv4Network(dst, strict=False)
    except ValueError:
        return None


def check_block(block: str) -> ipaddress.IPv4Network:
    """Refuses a block that overlaps any route or address on this machine that is not a lab's."""
    try:
        net = ipaddress.IPv4Network(block)
    except ValueError as exc:
        raise LabError(f"lab address block {block!r} is not an IPv4 network: {exc}") from exc
    if net.prefixlen > 22:
        raise LabError(f"lab address block {block} is too small: use a /22 or larger")
    for route in _routes():
        dst = _network(str(route.get("dst", "")))
        dev = str(route.get("dev", ""))
        if dst is None or dst.prefixlen == 0 or not dst.overlaps(net):
            continue
        if route.get("type") == "unreachable" and dst == net:
            continue  # our own guard
        if _LAB_DEV.match(dev):
            continue  # another lab's bridge
        raise LabError(
            f"lab address block {net} overlaps the route {dst} (dev {dev or '-'}, "
            f"type {route.get('type', 'unicast')}) on this machine; choose another block "
            "with --block or ROLLOUT_LAB_BLOCK"
        )
    return net


def install_guard(net: ipaddress.IPv4Network) -> None:
    """Installs (idempotently) the unreachable route covering the whole lab block."""
    run(["ip", "route", "replace", "unreachable", str(net)])


def has_guard(net: ipaddress.IPv4Network) -> bool:
    for route in _routes():
        if route.get("type") == "unreachable" and _network(str(route.get("dst", ""))) == net:
            return True
    return False


def used_indexes() -> set[int]:
    """Lab indexes taken by existing bridges or namespaces."""
    used: set[int] = set()
    out = run(["ip", "-j", "link", "show"]).stdout
    for link in json.loads(out or "[]"):
        m = re.match(r"^rlab(\d+)", str(link.get("ifname", "")))
        if m:
            used.add(int(m.group(1)))
    for ns in list_netns():
        m = re.match(r"^rlab(\d+)-", ns)
        if m:
            used.add(int(m.group(1)))
    return used


def lab_links(index: int) -> list[str]:
    """The links of lab ``index`` in the root namespace: its bridge ``rlabN`` and its veths
    ``rlabNv<octet>`` (``rlab1`` never matches lab 12's ``rlab12v3``)."""
    pattern = re.compile(rf"^rlab{index}(v\d+)?$")
    out = run(["ip", "-j", "link", "show"]).stdout
    return [str(link["ifname"]) for link in json.loads(out or "[]")
            if pattern.match(str(link.get("ifname", "")))]


def list_netns() -> list[str]:
    out = run(["ip", "-j", "netns", "list"], check=False).stdout.strip()
    if not out:
        return []
    return [str(entry["name"]) for entry in json.loads(out)]


def link_exists(name: str) -> bool:
    return run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def create_bridge(name: str, gateway_cidr: str) -> None:
    run(["ip", "link", "add", name, "type", "bridge"])
    run(["ip", "addr", "add", gateway_cidr, "dev", name])
    run(["ip", "link", "set", name, "up"])


def delete_link(name: str) -> None:
    """Deletes a link if it exists. A veth whose namespace was just deleted vanishes on its own,
    asynchronously, so "cannot find device" here is success."""
    proc = run(["ip", "link", "del", name], check=False)
    if proc.returncode != 0 and not any(m in proc.stderr for m in ("Cannot find device",
                                                                    "No such device")):
        raise LabError(f"ip link del {name} failed: {proc.stderr.strip()}")


def create_netns(ns: str, veth: str, bridge: str, address_cidr: str) -> None:
    """One host's network: a namespace, a veth into the bridge, the address; no default route."""
    run(["ip", "netns", "add", ns])
    run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
    run(["ip", "link", "set", veth, "master", bridge, "up"])
    run(["ip", "-n", ns, "addr", "add", address_cidr, "dev", "eth0"])
    run(["ip", "-n", ns, "link", "set", "eth0", "up"])
    run(["ip", "-n", ns, "link", "set", "lo", "up"])


def netns_pids(ns: str) -> list[int]:
    out = run(["ip", "netns", "pids", ns], check=False).stdout
    return [int(tok) for tok in out.split() if tok.isdigit()]


def delete_netns(ns: str) -> None:
    if ns in list_netns():
        run(["ip", "netns", "del", ns])


def route_dev(address: str) -> str | None:
    """The device the kernel would send to ``address`` through, or None if unreachable."""
    proc = run(["ip", "-j", "route", "get", address], check=False)
    if proc.returncode != 0:
        return None
    entries = json.loads(proc.stdout or "[]")
    if not entries or entries[0].get("type") == "unreachable":
        return None
    return str(entries[0].get("dev")) if entries[0].get("dev") else None


def assert_routed_via(address: str, bridge: str) -> None:
    """Refuses to talk to a lab address unless the kernel routes it through the lab's bridge."""
    dev = route_dev(address)
    if dev != bridge:
        raise LabError(f"{address} is not routed through the lab bridge {bridge} (route: {dev}); "
                       "is the lab up?")
