"""The spec's probes rendered per host and version (rollout_py.checks_for)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from rollout_py.api import Context
from rollout_py.checks_for import make_checks
from rollout_py.inventory import Inventory, InventoryHost
from rollout_py.spec import load_spec

SPEC = ("name: web\ninventory: inv.ini\nhosts: app\nplaybook: deploy.yml\n"
        "haproxy: {sockets: ['unix:///run/haproxy.sock']}\n"
        "health: {probes: [{http: 'http://{{ ansible_host }}:8080/version', "
        "body: '{{ rollout_version }}'}, {tcp: '{{ ansible_host }}:8080'}, {haproxy: UP}]}\n")


def test_each_host_and_version_is_rendered_once(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "inv.ini").write_text("[app]\nh1 ansible_host=10.0.0.1\nh2 ansible_host=10.0.0.2\n")
    (tmp_path / "rollout.yml").write_text(SPEC)
    ctx = Context.resolve(load_spec(tmp_path / "rollout.yml"))
    renders: list[str] = []
    real = Inventory.render
    def counting(self: Inventory, template: str, host: InventoryHost,
                 extra: Mapping[str, Any] | None = None) -> str:
        renders.append(template)
        return real(self, template, host, extra)

    monkeypatch.setattr(Inventory, "render", counting)
    checks = make_checks(ctx, {})
    first = checks("h1", "2.0")
    assert [(c.kind, c.target) for c in first[0]] == [
        ("http", "http://10.0.0.1:8080/version"), ("tcp", "10.0.0.1:8080")]
    assert first[0][0].spec.body == "2.0"  # type: ignore[union-attr]
    assert [(c.kind, c.target) for c in first[1]] == [("haproxy", "h1")]
    count = len(renders)
    for _ in range(5):  # the continuous watch asks every round
        assert checks("h1", "2.0") == first
    assert len(renders) == count
    first[0].clear()  # a caller's list is its own
    assert checks("h1", "2.0")[0]
    assert checks("h2", "1.0")[0][1].target == "10.0.0.2:8080"
    assert len(renders) == 2 * count
