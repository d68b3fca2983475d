"""The digest that guards resume hashes the plan's structure, not its prose."""

from __future__ import annotations

import pytest

from rollout_py.planner import Plan, make_plan
from rollout_py.state import digest


def plan(**changes: object) -> Plan:
    args: dict[str, object] = dict(
        name="web", version="2", fleet=["a", "b"], targets=["a", "b"],
        servers={"a": "a", "b": "b"}, batches=[1], max_unavailable=None,
        current_versions={"b": "2"}, force=False, backend="app", sockets=["unix:///s"],
        on_failure="rollback_batch", playbook="p.yml", rollback_playbook=None,
        drain_timeout=30, pause_between_batches=0)
    return make_plan(**{**args, **changes})  # type: ignore[arg-type]


def test_rewording_the_plan_text_keeps_the_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    before = digest(plan().identity())
    monkeypatch.setattr(Plan, "rollback_description", lambda self: "said differently")
    monkeypatch.setattr(Plan, "batch_steps", lambda self, batch: ["said differently"])
    assert digest(plan().identity()) == before
    assert plan().to_json()["rollback"] == "said differently"  # the prose did change


@pytest.mark.parametrize("change", [
    {"drain_timeout": 10}, {"targets": ["a"]}, {"version": "3"}, {"backend": "web"},
    {"current_versions": {}},  # b is no longer skipped
])
def test_a_different_plan_has_a_different_digest(change: dict[str, object]) -> None:
    assert digest(plan(**change).identity()) != digest(plan().identity())
