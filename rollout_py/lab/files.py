"""Files ``lab up`` writes for users and tools: inventory, SSH config, ansible.cfg, rollout.yml,
rollout-canary.yml and (with pools) rollout-bluegreen.yml."""

from __future__ import annotations

from rollout_py.lab import exec_nodes, flagfiles, pools, shaping
from rollout_py.lab.haproxy import BACKEND
from rollout_py.lab.layout import APP_PORT, Layout
from rollout_py.resources import playbook, roles_path
from rollout_py.schema_spec import modeline


def inventory(layout: Layout) -> str:
    """The deploy's hosts: app hosts (and pools), LB hosts, db1; never the exec nodes."""
    lines = ["# Written by `rollout lab up`; removed by `rollout lab down`.", "[app]"]
    lines += [f"{h.name} ansible_host={h.address}" for h in layout.app_hosts]
    address = {h.name: h.address for h in layout.app_hosts}
    for pool in layout.pools:  # `up --pools 2`: groups blue and green
        lines += ["", f"[{pool.name}]"] + [f"{h} ansible_host={address[h]}" for h in pool.hosts]
    if layout.lb_hosts:
        lines += ["", "[lb]"] + [f"{h.name} ansible_host={h.address}" for h in layout.lb_hosts]
    if layout.db:  # `up --db`: the database's host, for phases that run `on:` it
        lines += ["", "[db]", f"{layout.db_host.name} ansible_host={layout.db_host.address}"]
    lines += [
        "", "[all:vars]",
        *(f"{k}={v}" for k, v in layout.ansible_vars().items()),
        "",
    ]
    return "\n".join(lines)


def ssh_config(layout: Layout) -> str:
    """Host-key checking on, bound to the bridge address, only ever for lab addresses."""
    common = [
        "    User root",
        f"    IdentityFile {layout.key}",
        "    IdentitiesOnly yes",
        f"    UserKnownHostsFile {layout.known_hosts}",
        "    GlobalKnownHostsFile /dev/null",
        "    StrictHostKeyChecking yes",
        f"    BindAddress {layout.gateway}",
        "    ConnectTimeout 5",
        "    ServerAliveInterval 5",
        "    ControlMaster auto",
        f"    ControlPath {layout.run_dir / 'cm-%C'}",
        "    ControlPersist 60s",
        "    LogLevel ERROR",
    ]
    out = ["# Written by `rollout lab up`: ssh -F this-file app01"]
    for host in layout.all_hosts:
        out += [f"Host {host.name}", f"    HostName {host.address}", *common, ""]
    prefix = ".".join(layout.gateway.split(".")[:3])
    out += [f"Host {prefix}.*", *common, ""]
    return "\n".join(out)


def known_hosts(layout: Layout, keys: dict[str, str]) -> str:
    return "".join(
        f"{h.address},{h.name} {keys[h.name]}\n" for h in layout.all_hosts if h.name in keys
    )


def ansible_cfg(layout: Layout) -> str:
    return f"""# Written by `rollout lab up`: ANSIBLE_CONFIG={layout.path / 'ansible.cfg'}
[defaults]
inventory = {layout.inventory}
roles_path = {roles_path()}
host_key_checking = True
interpreter_python = {layout.host_python}
gathering = explicit
forks = 50
retry_files_enabled = False

[ssh_connection]
pipelining = True
ssh_args = -o ControlMaster=auto -o ControlPersist=60s
control_path_dir = {layout.run_dir / 'cp'}
control_path = %(directory)s/%%C
"""


def rollout_spec(layout: Layout) -> str:
    """A rolling deploy of the lab's hosts (with pools: of the live pool, blue); with exec
    nodes, run through them (``executors``)."""
    group, backend = ("app", BACKEND) if not layout.pools else \
        (layout.pools[0].name, layout.pools[0].backend)
    sockets = "\n".join(f"    - {lb.socket_url}" for lb in layout.lbs)
    return f"""{modeline()}
# A rollout spec for this lab, written by `rollout lab up`.
name: lab
inventory: inventory.ini
hosts: {group}
playbook: {playbook('deploy.yml')}
batches: [1, "50%", "100%"]
max_unavailable: "50%"
on_failure: rollback_batch
stage:
  tags: stage,prune
  switch_tags: switch,untagged
version_url: "http://{{{{ ansible_host }}}}:{APP_PORT}/version"
haproxy:
  sockets:
{sockets}
  ssh_config: ssh/ssh_config
  backend: {backend}
  server: "{{{{ inventory_hostname }}}}"
  drain_timeout: 30
{shaping.spec_section(layout)}health:
  deadline: 30
  interval: 0.3
  consecutive: 2
  probes:
    - http: "http://{{{{ ansible_host }}}}:{APP_PORT}/health"
      status: 200
    - http: "http://{{{{ ansible_host }}}}:{APP_PORT}/version"
      body: "{{{{ rollout_version }}}}"
    - haproxy: UP
{flagfiles.spec_yaml(layout)}{exec_nodes.spec_section(layout)}"""


def _body(spec: str) -> str:
    """A spec's text without its header comments (the schema line and what the file is)."""
    lines = spec.split("\n")
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "\n".join(lines)


def canary_5xx_query(backend: str) -> str:
    """HAProxy's exporter (2.6): per-server responses by class, proxy = the backend."""
    responses = f'haproxy_server_http_responses_total{{proxy="{backend}",server=~"$canary"'
    return (f'sum(rate({responses},code="5xx"}}[10s])) / '
            f'sum(rate({responses}}}[10s]))')


CANARY_5XX_QUERY = canary_5xx_query(BACKEND)


def canary_spec(layout: Layout) -> str:
    """rollout.yml's spec as a canary: one host, 10 % then 50 % of the traffic, each judged for
    20 s; with the lab's Prometheus, a PromQL gate on the canary's 5xx share too."""
    rolling = _body(rollout_spec(layout))
    backend = layout.pools[0].backend if layout.pools else BACKEND
    gate = "" if layout.prometheus_url is None else (
        f"    - prometheus:\n"
        f"        url: {layout.prometheus_url}\n"
        f"        query: '{canary_5xx_query(backend)}'\n"
        f"        max: 0.01\n")
    return f"""{modeline()}
# A canary rollout spec for this lab, written by `rollout lab up`.
{rolling}strategy: canary
canary:
  hosts: 1
  steps:
    - traffic: 10%
    - analysis: {{duration: 20}}
    - traffic: 50%
    - analysis: {{duration: 20}}
{ANALYSIS}{gate}"""


# The lab's analysis section (canary and blue/green specs): windows of 5 s, 50 requests at
# least, absolute and baseline-relative gates on errors and latency.
ANALYSIS = """analysis:
  interval: 5
  min_requests: 50
  on_inconclusive: hold
  inconclusive_limit: 6
  failure_limit: 1
  gates:
    - error_rate: {max: 1%}
    - error_rate: {max_over_baseline: 0.5%}
    - latency: {field: rtime, max_ms: 250, max_ratio_to_baseline: 1.5}
"""


def bluegreen_spec(layout: Layout, rolling: str) -> str:
    """``rollout-bluegreen.yml``: the lab's rolling spec (``rolling``, its text) as blue/green
    over both pools: preview checks through every LB's preview frontend, a post-switch
    analysis of 20 s against the old pool's windows before the switch."""
    keep = []
    skip = False
    for line in _body(rolling).split("\n"):
        top = line.split(":", 1)[0]
        if line and not line.startswith((" ", "#")):
            skip = top in ("hosts", "batches", "max_unavailable", "stage", "name")
        if not skip:
            keep.append(line)
    pools_yaml = "".join(f"    {p.name}: {{backend: {p.backend}, hosts: {p.name}}}\n"
                         for p in layout.pools)
    previews = "".join(f"    - http: \"http://127.0.0.1:{lb.preview_port}/version\"\n"
                       f"      body: \"{{{{ rollout_version }}}}\"\n"
                       f"      requests: 20\n" for lb in layout.lbs)
    body = "\n".join(keep).rstrip("\n")
    return f"""{modeline()}
# A blue/green rollout spec for this lab, written by `rollout lab up --pools 2`.
name: lab
hosts: app
{body}
strategy: blue_green
blue_green:
  pools:
{pools_yaml}  map: {pools.MAP_NAME}
  live_key: {pools.LIVE_KEY}
  preview_key: {pools.PREVIEW_KEY}
  preview:
{previews}  min_up: "100%"
  analysis_duration: 20
{ANALYSIS}"""
