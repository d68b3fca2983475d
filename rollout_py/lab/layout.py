"""Where everything of one lab lives: names, addresses and paths, from its index and size."""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rollout_py.errors import LabError

MAX_HOSTS = 244  # .11 to .254 of the lab's /24
RUN_ROOT = Path("/run/rollout-lab")
APP_PORT = 8080
DB_OCTET = 10  # `up --db`: host db1 (app hosts start at .11, LB hosts at .3)
MAX_EXEC_NODES = 6  # `up --exec-nodes N`: exec1..execN on .4 to .9 (rollout_py.lab.exec_nodes)
EXEC_OCTET = 4
# The flag file every app host's flag-enabled release reads (flagd's format), on the host.
HOST_FLAGS_PATH = "/srv/app/shared/flags.json"


@dataclass(frozen=True, slots=True)
class HostSpec:
    """One namespace host (an app host or a remote LB host)."""

    name: str
    address: str
    netns: str
    veth: str
    role: str  # "app", "lb", "db" or "exec"


@dataclass(frozen=True, slots=True)
class LbSpec:
    """One HAProxy load balancer; ``host`` names its namespace host when it is remote."""

    name: str
    port: int
    socket_path: str  # as seen on the LB's own host
    socket_url: str  # how a controller reaches it
    host: str | None
    metrics_port: int | None = None  # HAProxy's Prometheus exporter: 127.0.0.1:PORT/metrics
    map_path: str | None = None  # `up --pools 2`: the pools map, as HAProxy on its host sees it
    preview_port: int | None = None  # `up --pools 2`: frontend "preview" on 127.0.0.1:PORT

    @property
    def metrics_url(self) -> str | None:
        return None if self.metrics_port is None else \
            f"http://127.0.0.1:{self.metrics_port}/metrics"


POOL_NAMES = ("blue", "green")


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """One pool of app hosts (``up --pools 2``), served by its own backend ``app_<name>``."""

    name: str
    backend: str
    hosts: tuple[str, ...]


@dataclass
class Layout:
    """A lab's identity and topology; serialised as lab.json with the PIDs it started."""

    dir: str
    index: int
    block: str
    n_hosts: int
    n_lbs: int
    state: str = "starting"
    lbs: list[LbSpec] = field(default_factory=list)
    procs: dict[str, dict[str, int]] = field(default_factory=dict)
    host_python: str = "/usr/bin/python3"
    prometheus_port: int | None = None  # `up --prometheus`: 127.0.0.1:PORT
    n_pools: int = 1  # `up --pools 2`: blue (first half of the hosts) and green
    shaping: bool = False  # `up --shaping`: priority classes and a shed map (lab.shaping)
    app_flags_python: str | None = None  # the shared venv of flag-enabled releases (appenv)
    db: bool = False  # `up --db`: PostgreSQL on host db1 (rollout_py.lab.db)
    db_port: int = 5432
    db_password: str | None = None  # role app's, made for this lab
    n_exec: int = 0  # `up --exec-nodes N`: execution nodes exec1..execN (lab.exec_nodes)

    # --- derived names -----------------------------------------------------------------
    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return list(ipaddress.IPv4Network(self.block).subnets(new_prefix=24))[self.index]

    @property
    def gateway(self) -> str:
        return str(self.subnet[1])

    @property
    def bridge(self) -> str:
        return f"rlab{self.index}"

    @property
    def path(self) -> Path:
        return Path(self.dir)

    @property
    def run_dir(self) -> Path:
        """Short paths (unix sockets are limited to 107 bytes): admin sockets, SSH control."""
        return RUN_ROOT / self.bridge

    def _host(self, name: str, octet: int, role: str) -> HostSpec:
        return HostSpec(name=name, address=str(self.subnet[octet]),
                        netns=f"{self.bridge}-{name}", veth=f"{self.bridge}v{octet}", role=role)

    @property
    def app_hosts(self) -> list[HostSpec]:
        width = max(2, len(str(self.n_hosts)))
        return [self._host(f"app{i:0{width}d}", 10 + i, "app") for i in range(1, self.n_hosts + 1)]

    @property
    def lb_hosts(self) -> list[HostSpec]:
        """LBs after the first run on namespace hosts of their own (reached over SSH)."""
        return [self._host(f"lb{i}", 1 + i, "lb") for i in range(2, self.n_lbs + 1)]

    @property
    def pools(self) -> list[PoolSpec]:
        """With ``--pools 2``: blue (the first half of the hosts, rounded up), then green."""
        if self.n_pools < 2:
            return []
        names = [h.name for h in self.app_hosts]
        half = (len(names) + 1) // 2
        return [PoolSpec(pool, f"app_{pool}", tuple(part))
                for pool, part in zip(POOL_NAMES, (names[:half], names[half:]), strict=True)]

    @property
    def db_host(self) -> HostSpec:
        """The database's host (``up --db``); it is one of ``all_hosts`` only then."""
        return self._host("db1", DB_OCTET, "db")

    @property
    def db_url(self) -> str | None:
        """How app hosts reach the database as role app, password included (``up --db``)."""
        return None if not self.db else \
            f"postgresql://app:{self.db_password}@{self.db_host.address}:{self.db_port}/app"

    @property
    def db_url_public(self) -> str | None:
        """``db_url`` without the password: what status and lab.json's top level show."""
        return None if not self.db else \
            f"postgresql://app@{self.db_host.address}:{self.db_port}/app"

    @property
    def exec_hosts(self) -> list[HostSpec]:
        """Execution nodes (``up --exec-nodes N``): ansible-runner workers for the controller,
        never in the inventory (``rollout_py.lab.exec_nodes``)."""
        return [self._host(f"exec{i}", EXEC_OCTET - 1 + i, "exec")
                for i in range(1, self.n_exec + 1)]

    @property
    def all_hosts(self) -> list[HostSpec]:
        """Every namespace host: what ``up`` starts, ``down`` removes and SSH knows."""
        return self.app_hosts + self.lb_hosts + ([self.db_host] if self.db else []) + \
            self.exec_hosts

    def host_dir(self, name: str) -> Path:
        return self.path / "hosts" / name

    @property
    def ssh_dir(self) -> Path:
        return self.path / "ssh"

    @property
    def key(self) -> Path:
        return self.ssh_dir / "id_ed25519"

    @property
    def ssh_config(self) -> Path:
        return self.ssh_dir / "ssh_config"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def inventory(self) -> Path:
        return self.path / "inventory.ini"

    @property
    def artifacts(self) -> Path:
        return self.path / "artifacts"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def prometheus_url(self) -> str | None:
        """The lab's Prometheus (``up --prometheus``), or None."""
        return None if self.prometheus_port is None else f"http://127.0.0.1:{self.prometheus_port}"

    # --- persistence ---------------------------------------------------------------------
    def save(self) -> None:
        # Public description at the top level, the exact layout (with PIDs) under "layout".
        data = self.describe() | {"layout": asdict(self)}
        tmp = self.path / "lab.json.tmp"
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.path / "lab.json")

    @classmethod
    def load(cls, lab_dir: Path) -> Layout | None:
        try:
            data = json.loads((lab_dir / "lab.json").read_text())["layout"]
        except FileNotFoundError:
            return None
        except (ValueError, KeyError) as exc:
            raise LabError(f"{lab_dir / 'lab.json'} is unreadable ({exc}); remove the lab by hand "
                           "(ip netns list; ip link show) or restore the file") from exc
        data["lbs"] = [LbSpec(**lb) for lb in data.get("lbs", [])]
        return cls(**data)

    def ansible_vars(self) -> dict[str, str]:
        """Connection variables every lab host shares (inventory.ini's [all:vars], and the
        dynamic inventory/lab reads them from lab.json)."""
        return {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.key),
            "ansible_ssh_common_args": f"-F {self.ssh_config}",
            "ansible_python_interpreter": self.host_python,
            "ansible_control_path_dir": str(self.run_dir / "cp"),
            "rollout_artifact_dir": str(self.artifacts),
        }

    def describe(self) -> dict[str, object]:
        """lab.json's public part: what users and tests read."""
        return {
            "dir": self.dir, "state": self.state, "subnet": str(self.subnet),
            "bridge": self.bridge, "gateway": self.gateway,
            "hosts": [asdict(h) for h in self.app_hosts],
            "lb_hosts": [asdict(h) for h in self.lb_hosts],
            "db_hosts": [asdict(self.db_host)] if self.db else [],
            "exec_hosts": [asdict(h) for h in self.exec_hosts],
            "lbs": [asdict(lb) | {"frontend": f"127.0.0.1:{lb.port}", "metrics": lb.metrics_url,
                                  "preview": None if lb.preview_port is None
                                  else f"127.0.0.1:{lb.preview_port}"}
                    for lb in self.lbs],
            "pools": [asdict(p) for p in self.pools],
            "inventory": str(self.inventory),
            "spec": str(self.path / "rollout.yml"),
            "canary_spec": str(self.path / "rollout-canary.yml"),
            "prometheus": None if self.prometheus_url is None else {
                "url": self.prometheus_url,
                "pid": self.procs.get("prometheus", {}).get("pid"),
                "dir": str(self.path / "prometheus"),
            },
            "ssh": {"key": str(self.key), "config": str(self.ssh_config),
                    "known_hosts": str(self.known_hosts), "bind_address": self.gateway},
            "artifacts": str(self.artifacts),
            "flags": {"file": str(self.path / "flags.json"), "path": HOST_FLAGS_PATH,
                      "python": self.app_flags_python},
            "db": None if not self.db else {
                "host": self.db_host.name, "address": self.db_host.address,
                "port": self.db_port, "url": self.db_url_public,
                "service_file": str(self.path / "migrations" / "pg_service.conf"),
                "migrations": str(self.path / "migrations"),
                "spec": str(self.path / "rollout-db.yml"),
                "release_spec": str(self.path / "rollout-release.yml"),
            },
            "ansible_vars": self.ansible_vars(),
        }
