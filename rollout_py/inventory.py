"""Reads the user's Ansible inventory with Ansible's own code: patterns, --limit, host vars.

Templates in the spec (server names, probe URLs) are rendered per host with Ansible's templar,
so they behave exactly as in a playbook.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollout_py.errors import InputError

_WILDCARD = re.compile(r"[*?\[\]~]")


@dataclass(frozen=True, slots=True)
class InventoryHost:
    """One host as the engine needs it: its name and its variables (for templates)."""

    name: str
    vars: Mapping[str, Any]


class Inventory:
    """An Ansible inventory source, parsed once.

    Example:
        >>> inv = Inventory("inventory.ini")  # doctest: +SKIP
        >>> [h.name for h in inv.select("app", limit="app01,app02")]  # doctest: +SKIP
        ['app01', 'app02']
    """

    def __init__(self, source: str | Path) -> None:
        from ansible.inventory.manager import InventoryManager
        from ansible.parsing.dataloader import DataLoader
        from ansible.vars.manager import VariableManager

        self.source = str(source)
        if "," not in self.source and not Path(self.source).exists():
            raise InputError(f"inventory {self.source}: no such file or directory")
        self._loader = DataLoader()
        self._inv = InventoryManager(loader=self._loader, sources=[self.source])
        self._vm = VariableManager(loader=self._loader, inventory=self._inv)
        if not self._inv.hosts and not self._inv.get_hosts("all"):
            raise InputError(f"inventory {self.source}: no hosts (or it could not be parsed)")

    def _check_limit(self, limit: str) -> None:
        known = set(self._inv.hosts) | set(self._inv.groups)
        for term in re.split(r"[,:]", limit):
            term = term.strip().lstrip("&!")
            if not term or term == "all" or _WILDCARD.search(term) or term.startswith("@"):
                continue
            if term not in known:
                raise InputError(f"--limit: unknown host or group {term!r} "
                                 f"(not in inventory {self.source})")

    def select(self, pattern: str, *, limit: str | None = None) -> list[InventoryHost]:
        """Hosts matching ``pattern`` (and ``limit``), in inventory order, as Ansible sees them."""
        if limit:
            self._check_limit(limit)
        self._inv.subset(limit or None)
        try:
            hosts = self._inv.get_hosts(pattern)
        finally:
            self._inv.subset(None)
        return [InventoryHost(h.name, self._vm.get_vars(host=h)) for h in hosts]

    def render(self, template: str, host: InventoryHost,
               extra: Mapping[str, Any] | None = None) -> str:
        """Renders a spec template (e.g. ``{{ ansible_host }}``) with one host's variables."""
        from ansible.errors import AnsibleError
        from ansible.template import Templar, trust_as_template

        variables = {**host.vars, **(extra or {})}
        try:
            value = Templar(loader=self._loader, variables=variables).template(
                trust_as_template(template))
        except AnsibleError as exc:
            raise InputError(f"template {template!r} for host {host.name}: {exc.message}") from exc
        return str(value)


def render_all(inv: Inventory, template: str, hosts: Sequence[InventoryHost],
               extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    return {h.name: inv.render(template, h, extra) for h in hosts}
