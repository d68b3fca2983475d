"""The JSON Schema of rollout.yml (rollout_py.schema_spec) against the loader: the README's
specs and the lab's pass both, typos and wrong types fail both, the shipped file is current."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from rollout_py.cli import cli
from rollout_py.errors import SpecError
from rollout_py.lab import files, pools
from rollout_py.lab.layout import Layout, LbSpec
from rollout_py.schema_spec import SCHEMA_ID, modeline, render, rollout_schema, shipped_path
from rollout_py.spec import parse_spec
from rollout_py.specload import load_yaml

REPO = Path(__file__).resolve().parents[2]
VALIDATOR = Draft202012Validator(rollout_schema())


class _Yaml12(yaml.SafeLoader):
    """YAML as an editor (yaml-language-server, YAML 1.2) reads it: only true/false are
    booleans, so ``on:`` is the key "on"."""


_Yaml12.yaml_implicit_resolvers = {
    first: [r for r in resolvers if r[0] != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Yaml12.add_implicit_resolver("tag:yaml.org,2002:bool",
                              re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _editor(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12)  # a SafeLoader


def _loader(text: str) -> Any:
    return load_yaml(text, source="test.yml").data


def _schema_errors(data: Any) -> list[str]:
    return [f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
            for e in VALIDATOR.iter_errors(data)]


def _both_accept(text: str) -> None:
    assert _schema_errors(_editor(text)) == []
    parse_spec(_loader(text))


MINIMAL = """\
name: web
inventory: inventory.ini
playbook: deploy.yml
haproxy:
  sockets: [unix:///run/haproxy/admin.sock]
health:
  probes:
    - http: "http://{{ ansible_host }}:8080/health"
"""

# The README's fragments are checked inside a valid spec that has what they may lean on.
BASE = MINIMAL + """\
flags: {file: flags.json, path: /srv/app/shared/flags.json}
analysis:
  gates: [{error_rate: {max: 1%}}]
"""

# The README's placeholders, made real.
PLACEHOLDERS = {"gates: [...]": "gates: [{error_rate: {max: 1%}}]"}


def _readme_specs() -> list[tuple[int, str]]:
    """The README's ```yaml blocks that are rollout specs or parts of one (every top-level
    key a spec key), with the line they start on."""
    keys = set(rollout_schema()["properties"])
    text = (REPO / "README.md").read_text()
    blocks = []
    for m in re.finditer(r"^```yaml\n(.*?)^```", text, re.S | re.M):
        body = m.group(1)
        for old, new in PLACEHOLDERS.items():
            body = body.replace(old, new)
        data = _editor(body)
        if isinstance(data, dict) and set(data) <= keys:
            blocks.append((text.count("\n", 0, m.start()) + 1, body))
    return blocks


def _merged(base: dict[Any, Any], part: dict[Any, Any]) -> dict[Any, Any]:
    out = copy.deepcopy(base)
    for key, value in part.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def test_the_readme_has_a_full_spec_and_its_fragments() -> None:
    blocks = _readme_specs()
    full = [body for _, body in blocks if {"name", "haproxy"} <= set(_editor(body))]
    assert len(full) >= 1 and len(blocks) >= 7, [line for line, _ in blocks]


@pytest.mark.parametrize(("line", "body"), _readme_specs(), ids=lambda v: str(v)[:12])
def test_every_readme_spec_passes_the_schema_and_the_loader(line: int, body: str) -> None:
    part = _editor(body)
    if {"name", "haproxy"} <= set(part):  # a whole spec: as written
        _both_accept(body)
        return
    data = _merged(_editor(BASE), part)
    assert _schema_errors(data) == [], f"README.md:{line}"
    parse_spec(_merged(_loader(BASE), _loader(body)))


def _lab(tmp_path: Path, **kw: Any) -> Layout:
    layout = Layout(dir=str(tmp_path), index=3, block="10.213.0.0/16", n_hosts=4, n_lbs=2,
                    **kw)
    two = layout.n_pools == 2
    layout.lbs = [
        LbSpec("lb1", 4001, "/run/rollout-lab/rlab3/lb1.sock",
               "unix:///run/rollout-lab/rlab3/lb1.sock", None, 4002,
               map_path=pools.map_path_for(layout, "lb1", False) if two else None,
               preview_port=4005 if two else None),
        LbSpec("lb2", 4003, "/run/haproxy/admin.sock",
               "ssh://root@10.213.3.3/run/haproxy/admin.sock", "lb2", 4004,
               map_path=pools.map_path_for(layout, "lb2", True) if two else None,
               preview_port=4006 if two else None)]
    return layout


LABS: dict[str, dict[str, Any]] = {
    "plain": {},
    "exec-nodes": {"n_exec": 2},
    "prometheus": {"prometheus_port": 9411},
    "pools": {"n_pools": 2},
    "shaping": {"shaping": True},
    "db": {"db": True, "db_password": "s3cret"},
    "all": {"n_exec": 2, "prometheus_port": 9411, "n_pools": 2, "shaping": True, "db": True},
}


@pytest.mark.parametrize("kind", list(LABS))
def test_the_lab_specs_pass_the_schema_and_the_loader(tmp_path: Path, kind: str) -> None:
    layout = _lab(tmp_path, **LABS[kind])
    texts = [files.rollout_spec(layout), files.canary_spec(layout)]
    if layout.pools:
        texts.append(files.bluegreen_spec(layout, files.rollout_spec(layout)))
    if layout.db:
        from rollout_py.lab import db

        texts += [db.spec(layout), db.release_spec(layout)]
    for text in texts:
        assert text.split("\n", 1)[0] == modeline()
        _both_accept(text)


def test_the_lab_specs_name_the_installed_schema(tmp_path: Path) -> None:
    line = files.rollout_spec(_lab(tmp_path)).split("\n", 1)[0]
    url = line.removeprefix("# yaml-language-server: $schema=")
    assert url.startswith("file:///") and url.endswith("/rollout_py/schemas/rollout.schema.json")
    assert Path(url.removeprefix("file://")) == shipped_path() and shipped_path().is_file()


TYPOS = {
    "helth": ("health:", "helth:"),
    "haproxy.drain_timout": ("haproxy:\n", "haproxy:\n  drain_timout: 30\n"),
    "probe htpp": ("- http:", "- htpp:"),
}


@pytest.mark.parametrize("typo", list(TYPOS))
def test_a_typo_is_refused_by_both(typo: str) -> None:
    old, new = TYPOS[typo]
    text = MINIMAL.replace(old, new, 1)
    assert text != MINIMAL
    assert _schema_errors(_editor(text))
    with pytest.raises(SpecError):
        parse_spec(_loader(text))


WRONG = [
    {"batches": [0]},
    {"batches": 0},
    {"batches": ["0%"]},
    {"batches": ["101%"]},
    {"batches": [True]},
    {"batches": []},
    {"max_unavailable": "half"},
    {"haproxy": {"sockets": "x"}},
    {"haproxy": {"sockets": []}},
    {"haproxy": {"sockets": ["unix:///s"], "warmup_from": "100%"}},
    {"haproxy": {"sockets": ["unix:///s"], "warmup_from": 1.5}},
    {"health": {"probes": []}},
    {"health": {"probes": [{"http": "http://x/", "tcp": "x:1"}]}},
    {"strategy": "canary", "canary": {"hosts": 0, "steps": [{"traffic": "5%"}]}},
    {"strategy": "canary", "canary": {"steps": [{"traffic": "0.05%"}]}},
    {"strategy": "canary", "canary": {"steps": [{"traffic": "5%", "pause": None}]}},
    {"strategy": "canary", "canary": {"steps": [{"traffic": "5%"}, {"analysis": None}]}},
    {"executors": {"nodes": [7]}},
    {"flags": {"file": "f.json", "path": "/f.json", "ramp": ["0%"]}},
    {"source": "x.yml"},
    {"base_dir": "/"},
]


@pytest.mark.parametrize("change", WRONG, ids=lambda c: json.dumps(c)[:40])
def test_wrong_types_and_values_are_refused_by_both(change: dict[str, Any]) -> None:
    data = _merged(_editor(MINIMAL), change)
    assert _schema_errors(data)
    with pytest.raises(SpecError):
        parse_spec(data)


RIGHT = [
    {"batches": 2},
    {"batches": "25%"},
    {"batches": [1, " 50% ", "100%", 2.0]},
    {"max_unavailable": None},
    {"max_unavailable": "010%"},
    {"haproxy": {"sockets": ["unix:///s"], "warmup_from": "2.5 %"}},
    {"haproxy": {"sockets": ["unix:///s"], "warmup_from": 0.99}},
    {"executors": {"nodes": ["ssh://root@exec1", {"url": "ssh://exec2:2222", "name": "b"}]}},
    {"strategy": "canary", "canary": {"hosts": "10%", "steps": [
        {"traffic": "0.1%"}, {"traffic": 0.5}, {"traffic": "99%"}, {"pause": None},
        {"pause": {"duration": 60}}]}},
    {"analysis": {"gates": [{"error_rate": {"max": 0.01, "max_over_baseline": "0.5%"}},
                            {"latency": {"max_ms": 250}}]}},
    {"flags": {"file": "f.json", "path": "/f.json", "ramp": [10, "50 %", "100%"]},
     "analysis": {"gates": [{"error_rate": {"max": "1%"}}]},
     "phases": {"release": {"flag": "x", "to": "50%", "variant": True},
                "contract": {"command": "c", "on": "db1", "requires": 2}}},
    {"strategy": "blue_green", "blue_green": {
        "pools": {"blue": {"backend": "b", "hosts": "b"}, "green": {"backend": "g", "hosts": "g"}},
        "map": "pools.map", "min_up": 1, "analysis_duration": 0}},
]


@pytest.mark.parametrize("change", RIGHT, ids=lambda c: json.dumps(c)[:40])
def test_the_other_shapes_the_loader_takes_pass_the_schema(change: dict[str, Any]) -> None:
    data = _merged(_editor(MINIMAL), change)
    assert _schema_errors(data) == []
    parse_spec(data)


def test_every_object_forbids_unknown_keys() -> None:
    schema = rollout_schema()
    objects = [schema, *schema["$defs"].values()]
    assert all(o.get("additionalProperties") is False for o in objects if "properties" in o)
    assert not {"source", "base_dir"} & set(schema["properties"])
    assert (schema["$schema"], schema["$id"]) == (
        "https://json-schema.org/draft/2020-12/schema", SCHEMA_ID)
    Draft202012Validator.check_schema(schema)


def test_the_shipped_schema_is_the_generated_one() -> None:
    # After a spec change: rollout schema -o rollout_py/schemas/rollout.schema.json
    assert shipped_path().read_text() == render(rollout_schema())


def test_rollout_schema_prints_and_writes_it(tmp_path: Path) -> None:
    printed = CliRunner().invoke(cli, ["schema"])
    assert printed.exit_code == 0 and json.loads(printed.output) == rollout_schema()
    out = tmp_path / "rollout.schema.json"
    written = CliRunner().invoke(cli, ["schema", "--output", str(out)])
    assert written.exit_code == 0 and out.read_text() == render(rollout_schema())


def _values() -> list[Any]:
    """Numbers and percentages around every bound the spec's before-validators check."""
    out: list[Any] = [True, False, None, "", "%", "5", "abc%", "-5%", "5%%", "1e2%", [5], {}]
    out += [*range(-1, 103), 0.0, 0.0005, 0.001, 0.005, 0.01, 0.5, 0.99, 0.991, 1.0, 1.5]
    for n in [0, 1, 5, 9, 10, 50, 89, 90, 98, 99, 100, 101, 999, 1000]:
        out += [f"{n}%", f"0{n}%", f"00{n}%", f" {n}% ", f"{n} %", f"{n}.5%", f"{n}.05%",
                f"{n}.000%", f"{n}.0001%"]
    return [*out, "0.1%", "0.09%", "0.099%", "0.100%", "99.001%", ".5%", "5.%"]


# By the field it tests: the spec change that puts a value in it.
FIELDS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "batches item": lambda v: {"batches": [v]},
    "max_unavailable": lambda v: {"max_unavailable": v},
    "warmup_from": lambda v: {"haproxy": {"sockets": ["unix:///s"], "warmup_from": v}},
    "traffic": lambda v: {"strategy": "canary", "canary": {"steps": [{"traffic": v}]}},
    "canary.hosts": lambda v: {"strategy": "canary", "canary": {
        "hosts": v, "steps": [{"traffic": "5%"}]}},
    "error_rate.max": lambda v: {"analysis": {"gates": [{"error_rate": {
        "max": v, "max_over_baseline": 0.01}}]}},
    "min_up": lambda v: {"strategy": "blue_green", "blue_green": {
        "pools": {"b": {"backend": "b", "hosts": "b"}, "g": {"backend": "g", "hosts": "g"}},
        "map": "m", "min_up": v, "analysis_duration": 0}},
    "ramp step": lambda v: {"flags": {"file": "f", "path": "/f", "ramp": [v]}},
}


@pytest.mark.parametrize("field", list(FIELDS))
def test_schema_and_loader_agree_on_counts_and_percentages(field: str) -> None:
    disagree = []
    for value in _values():
        data = _merged(_editor(MINIMAL), FIELDS[field](value))
        try:
            parse_spec(data)
            loader = True
        except SpecError:
            loader = False
        if loader != (not _schema_errors(data)):
            disagree.append(value)
    # JSON Schema's integers include 2.0: where the loader wants an int itself, it differs.
    whole_floats = [v for v in disagree if isinstance(v, float) and v.is_integer()]
    assert disagree == whole_floats and (not whole_floats or field in ("min_up", "ramp step"))
