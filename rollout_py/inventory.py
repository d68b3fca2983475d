"""Reads the user's Ansible inventory with Ansible's own code: patterns, --limit, host vars.

Templates in the spec (server names, probe URLs) are rendered per host with Ansible's templar,
so they behave exactly as in a playbook. The common shape, literal text around bare
``{{ name }}`` references to plain values (``http://{{ ansible_host }}:8080/health``), is
substituted directly with what the templar would give: the templar compiles each template anew,
~1 ms of CPU per host and template (see :func:`substitute`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollout_py.errors import InputError

_WILDCARD = re.compile(r"[*?\[\]~]")
_REFERENCE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_TEMPLATE_IN_VALUE = re.compile(r"\{[{%#]")  # a value that is itself a template
_NOT_LITERAL = re.compile(r"[{}\n]")  # around references: braces, or a newline Jinja may strip
_UNDEFINED = object()


def substitute(template: str, variables: Mapping[str, Any]) -> str | None:
    """``template`` rendered when it is literal text (no braces, no newline) around bare
    ``{{ name }}`` references to variables holding text that is not a template, or numbers:
    exactly what Ansible's templar gives (tested against it). None for anything else (filters,
    expressions, an undefined variable, a list, a value that is a template): the templar
    renders those.

    Example:
        >>> substitute("http://{{ ansible_host }}:8080/", {"ansible_host": "10.0.0.5"})
        'http://10.0.0.5:8080/'
        >>> substitute("{{ ansible_host | default('x') }}", {}) is None
        True
    """
    parts: list[str] = []
    end = 0
    for ref in _REFERENCE.finditer(template):
        literal = template[end:ref.start()]
        value = variables.get(ref.group(1), _UNDEFINED)
        if _NOT_LITERAL.search(literal):
            return None
        if isinstance(value, str) and not _TEMPLATE_IN_VALUE.search(value):
            parts += (literal, value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            parts += (literal, str(value))
        else:
            return None
        end = ref.end()
    if _NOT_LITERAL.search(template[end:]):
        return None
    parts.append(template[end:])
    return "".join(parts)


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
        variables = {**host.vars, **(extra or {})}
        fast = substitute(template, variables)
        if fast is not None:
            return fast
        return self.render_with_templar(template, host, variables)

    def render_with_templar(self, template: str, host: InventoryHost,
                            variables: Mapping[str, Any]) -> str:
        """:meth:`render` by Ansible's templar, whatever the template."""
        from ansible.errors import AnsibleError
        from ansible.template import Templar, trust_as_template

        try:
            value = Templar(loader=self._loader, variables=variables).template(
                trust_as_template(template))
        except AnsibleError as exc:
            raise InputError(f"template {template!r} for host {host.name}: {exc.message}") from exc
        return str(value)


def render_all(inv: Inventory, template: str, hosts: Sequence[InventoryHost],
               extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    return {h.name: inv.render(template, h, extra) for h in hosts}
