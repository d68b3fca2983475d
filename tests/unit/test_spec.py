"""The rollout spec: errors name the file, the field path and the rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout_py.errors import SpecError
from rollout_py.spec import load_spec

BASE: dict[str, Any] = {
    "name": "web", "inventory": "inv.ini", "playbook": "deploy.yml",
    "haproxy": {"sockets": ["unix:///run/haproxy.sock"]},
    "health": {"probes": [{"http": "http://{{ ansible_host }}/health"}]},
}


def write(tmp_path: Path, **changes: Any) -> Path:
    data = {**BASE, **changes}
    path = tmp_path / "rollout.yml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(("changes", "words"), [
    ({"colour": "blue"}, ["colour", "unknown key"]),
    ({"batches": [1, "0%"]}, ["batches.1", "between 1% and 100%"]),
    ({"batches": [True]}, ["batches.0", "boolean"]),
    ({"on_failure": "panic"}, ["on_failure"]),
    ({"haproxy": {"sockets": ["http://lb"]}}, ["haproxy.sockets", "unix:///path"]),
    ({"haproxy": {"sockets": ["unix:///a"], "backend": "app;x"}}, ["haproxy.backend"]),
    ({"health": {"probes": []}}, ["at least one probe"]),
    ({"health": {"probes": [{"http": "ftp://x"}]}}, ["probe 0 (http)", "http:// or https://"]),
    ({"health": {"probes": [{"http": "http://x", "tcp": "x:1"}]}}, ["exactly one of"]),
    ({"notify": {"webhooks": [{"url": "mailto:x"}]}}, ["notify.webhooks.0.url"]),
    ({"name": "bad name"}, ["name"]),
])
def test_invalid_specs_name_file_field_and_rule(tmp_path: Path, changes: dict[str, Any],
                                                words: list[str]) -> None:
    path = write(tmp_path, **changes)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert str(path) in message
    for word in words:
        assert word in message, message


def test_valid_spec_resolves_paths_and_defaults(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, batches=2, stage={}))
    assert spec.batches == [2]
    assert spec.path(spec.inventory) == tmp_path / "inv.ini"
    assert spec.state_path() == tmp_path / ".rollout"
    assert spec.stage is not None and spec.stage.switch_tags == "switch,untagged"


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "rollout.yml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yml")


def test_an_unquoted_on_key_under_webhooks_is_the_key_on(tmp_path: Path) -> None:
    """The README's own example writes `on:` unquoted; YAML 1.1 reads it as the boolean true."""
    path = write(tmp_path)
    path.write_text(path.read_text() + "notify:\n  webhooks:\n"
                    "    - {url: 'https://hooks.example.test/x', on: [start, failure]}\n")
    assert yaml.safe_load(path.read_text())["notify"]["webhooks"][0].get(True)
    spec = load_spec(path)
    assert spec.notify.webhooks[0].on == ("start", "failure")
