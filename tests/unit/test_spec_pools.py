"""The blue_green section: what is refused, with the field named, before anything runs."""

from __future__ import annotations

from typing import Any

import pytest

from rollout_py import api
from rollout_py.errors import InputError, SpecError
from rollout_py.spec import Spec, parse_spec

POOLS = {"blue": {"backend": "app_blue", "hosts": "blue"},
         "green": {"backend": "app_green", "hosts": "green"}}


def spec(**blue_green: Any) -> dict[str, Any]:
    return {"name": "web", "inventory": "inv.ini", "playbook": "p.yml", "hosts": "app",
            "haproxy": {"sockets": ["unix:///run/haproxy.sock"]},
            "health": {"probes": [{"tcp": "{{ ansible_host }}:80"}]},
            "strategy": "blue_green",
            "blue_green": {"pools": POOLS, "map": "pools.map", "analysis_duration": 0,
                           **blue_green}}


def test_a_valid_section_parses() -> None:
    s = parse_spec(spec(preview=[{"http": "http://127.0.0.1:8081/version"}], min_up="50%"))
    assert s.blue_green is not None and s.blue_green.min_up == "50%"
    assert s.blue_green.preview[0].requests == 20


@pytest.mark.parametrize(("change", "said"), [
    ({"pools": {"blue": POOLS["blue"]}}, "exactly two pools"),
    ({"pools": {"a": POOLS["blue"], "b": POOLS["blue"]}}, "both pools use backend"),
    ({"pools": {**POOLS, "blue": {"backend": "app blue", "hosts": "x"}}},
     "not a valid HAProxy backend name"),
    ({"map": "../pools.map"}, "blue_green.map: '../pools.map': an absolute path, or a file"),
    ({"map": "/etc/../pools.map"}, "an absolute path"),
    ({"live_key": "li ve"}, "map key"),
    ({"preview_key": "live"}, "preview_key: must differ from live_key"),
    ({"preview_key": None, "preview": [{"http": "http://x/"}]}, "need a preview_key"),
    ({"min_up": "0%"}, "min_up"),
    ({"min_up": 0}, "blue_green.min_up: must be at least 1"),
    ({"analysis_duration": 30}, "analysis: blue_green.analysis_duration needs an analysis"),
    ({"surprise": 1}, "blue_green.surprise: unknown key"),
])
def test_refused_with_the_field_named(change: dict[str, Any], said: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(spec(**change))
    assert said in str(err.value)


def test_the_strategy_and_the_section_go_together() -> None:
    data = spec()
    data.pop("strategy")
    with pytest.raises(SpecError, match="strategy: the blue_green section needs strategy"):
        parse_spec(data)
    data = spec()
    data.pop("blue_green")
    with pytest.raises(SpecError, match="blue_green: required by strategy: blue_green"):
        parse_spec(data)


def test_rollout_rollback_of_a_blue_green_fleet_points_at_switch_back() -> None:
    s: Spec = parse_spec(spec())
    with pytest.raises(InputError, match="rollout switch-back"):
        api.deploy(s, version="1.0", strategy="rolling")


def test_the_status_and_history_schemas_know_every_analysis_purpose() -> None:
    """A window's purpose in `status --json`/`history --json` is one of events.Purpose."""
    import typing

    from rollout_py import events as ev
    from rollout_py.operations import schema

    def enums(node: Any) -> list[list[str]]:
        found = []
        if isinstance(node, dict):
            if "purpose" in node.get("properties", {}):
                found.append(node["properties"]["purpose"]["enum"])
            for value in node.values():
                found += enums(value)
        elif isinstance(node, list):
            for value in node:
                found += enums(value)
        return found

    for name in ("status", "history"):
        found = enums(schema(name))
        assert found and all(set(e) == set(typing.get_args(ev.Purpose)) for e in found), name
