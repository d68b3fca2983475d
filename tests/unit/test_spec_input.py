"""Bad rollout.yml input: exit 2 with ``file:line:col: field: what was expected``, no traceback.

One test per case of the issue "bad input gets a clear error": duplicate keys, values of the
wrong type (and binary files), positions in schema errors, and versions under ``vars:``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout_py import cli
from rollout_py.errors import SpecError
from rollout_py.spec import load_spec
from rollout_py.specload import load_yaml

REPO = Path(__file__).resolve().parents[2]

# Line numbers below are those of this text (line 1: "name: web").
SPEC = textwrap.dedent("""\
    name: web
    inventory: inv.ini
    playbook: deploy.yml
    batches: [1, "50%"]
    max_unavailable: 1
    haproxy:
      sockets: [unix:///run/haproxy.sock]
      backend: app
      drain_timeout: 30
      up_timeout: 30
    health:
      probes:
        - http: "http://{{ ansible_host }}/health"
          status: 200
    vars:
      region: eu
    """)


def write(tmp_path: Path, text: str, name: str = "rollout.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def replace(old: str, new: str) -> str:
    assert SPEC.count(old) == 1, old
    return SPEC.replace(old, new)


def spec_error(path: Path) -> str:
    with pytest.raises(SpecError) as err:
        load_spec(path)
    return str(err.value)


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
             *args: str) -> tuple[int, str]:
    """``rollout ARGS`` through the console entry point: its exit code and stderr."""
    monkeypatch.setattr(sys, "argv", ["rollout", *args])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    code = exit_.value.code
    return code if isinstance(code, int) else -1, capsys.readouterr().err


def test_the_base_spec_is_valid(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, SPEC))
    assert spec.haproxy.drain_timeout == 30 and spec.batches == [1, "50%"]


# 1. Duplicate keys -------------------------------------------------------------------------

def test_a_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    # A second drain_timeout at line 14 used to replace the first one (line 9) silently.
    text = SPEC.replace("  up_timeout: 30\n",
                        "  up_timeout: 30\n  # later\n\n\n  drain_timeout: 0\n")
    path = write(tmp_path, text)
    assert text.splitlines()[13] == "  drain_timeout: 0"
    message = spec_error(path)
    assert f"{path}:14:3: haproxy.drain_timeout: duplicate key (first at line 9)" in message
    assert message.count("duplicate key") == 1


def test_every_duplicate_is_named_however_the_key_is_written(tmp_path: Path) -> None:
    text = SPEC.replace("vars:\n  region: eu\n", "vars:\n  region: eu\n  'region': us\n"
                        "name: web2\n")
    path = write(tmp_path, text)
    lines = spec_error(path).splitlines()[1:]
    assert lines == [f"  {path}:17:3: vars.region: duplicate key (first at line 16)",
                     f"  {path}:18:1: name: duplicate key (first at line 1)"]


def test_keys_a_merge_brings_in_may_be_overridden(tmp_path: Path) -> None:
    # `<<:` exists to be overridden: that is not a duplicate.
    text = SPEC.replace("vars:\n  region: eu\n",
                        "vars:\n  defaults: &d {region: eu, zone: a}\n"
                        "  site: {<<: *d, region: us}\n")
    assert load_spec(write(tmp_path, text)).vars["site"] == {"region": "us", "zone": "a"}


# 2. Wrong types and binary files: exit 2, not a traceback ------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("1.5", "must be a whole number or a percentage like '25%', not 1.5"),
    ("[1]", "must be a whole number or a percentage like '25%', not a list"),
    ("{a: 1}", "must be a whole number or a percentage like '25%', not a mapping"),
])
def test_max_unavailable_of_a_wrong_type_exits_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        value: str, expected: str) -> None:
    path = write(tmp_path, replace("max_unavailable: 1\n", f"max_unavailable: {value}\n"))
    code, err = run_main(monkeypatch, capsys, "deploy", "-f", str(path), "--version", "2")
    assert code == 2, err
    assert f"  {path}:5:18: max_unavailable: {expected}\n" in err
    assert "Traceback" not in err


def test_a_batch_size_of_a_wrong_type_is_refused_and_a_whole_float_is_a_count(
        tmp_path: Path) -> None:
    path = write(tmp_path, replace('batches: [1, "50%"]', "batches: [1, 1.5, null]"))
    lines = spec_error(path).splitlines()[1:]
    assert lines == [
        f"  {path}:4:14: batches.1: batch size must be a whole number or a percentage like "
        "'25%', not 1.5",
        f"  {path}:4:19: batches.2: batch size must be a whole number or a percentage like "
        "'25%', not null"]
    assert load_spec(write(tmp_path, replace('batches: [1, "50%"]', "batches: [2.0]"))
                     ).batches == [2]


def test_a_binary_file_exits_2_naming_the_first_bad_byte(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rollout.yml"
    path.write_bytes(b"name: web\n\x7fELF\x02\x01\x01\x00\xff\xfe")
    code, err = run_main(monkeypatch, capsys, "plan", "-f", str(path), "--version", "2")
    assert code == 2, err
    assert err == (f"error: {path}:2:9: not a text file (byte 0xff is not UTF-8): a rollout "
                   "spec is a YAML text file\n")


def test_a_binary_file_as_a_user_runs_it(tmp_path: Path) -> None:
    # The whole way: the console entry point in its own interpreter, as `rollout` runs.
    path = tmp_path / "app.bin"
    path.write_bytes(bytes(range(256)) * 4)
    proc = subprocess.run([sys.executable, "-m", "rollout_py", "deploy", "-f", str(path),
                           "--version", "2"], capture_output=True, text=True, timeout=60,
                          cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"error: {path}:2:118: not a text file (byte 0x80 is not UTF-8): "
                           "a rollout spec is a YAML text file\n")


# 3. Schema errors say file:line:col -------------------------------------------------------

@pytest.mark.parametrize(("old", "new", "line"), [
    # a bad value: where the value is
    ('batches: [1, "50%"]', 'batches: [1, "0%"]',
     "4:14: batches.1: batch size percentage must be between 1% and 100%, not '0%'"),
    ("  drain_timeout: 30", "  drain_timeout: -1",
     "9:18: haproxy.drain_timeout: Input should be greater than or equal to 0"),
    # an unknown key: where the key is
    ("  up_timeout: 30", "  up_timeout: 30\n  drain_timout: 5",
     "11:3: haproxy.drain_timout: unknown key (not part of the spec; check its spelling)"),
    # a missing key: where its parent is
    ("  sockets: [unix:///run/haproxy.sock]\n", "",
     "6:1: haproxy.sockets: required key is missing"),
    # a probe: the probe's own key
    ("      status: 200", "      status: 999",
     "14:15: health.probes: probe 0 (http): status: Input should be less than or equal to 599"),
    # a check across fields: the field it names
    ('    - http: "http://{{ ansible_host }}/health"\n      status: 200\n', "    []\n",
     "13:5: health.probes: at least one probe is needed: without one a broken release would be "
     "put back in rotation"),
])
def test_schema_errors_name_file_line_column_and_field(tmp_path: Path, old: str, new: str,
                                                       line: str) -> None:
    path = write(tmp_path, replace(old, new))
    assert spec_error(path) == f"{path}: invalid rollout spec:\n  {path}:{line}"


def test_a_missing_top_level_key_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, replace("inventory: inv.ini\n", ""))
    assert spec_error(path) == (f"{path}: invalid rollout spec:\n"
                                f"  {path}: inventory: required key is missing")


def test_yaml_syntax_errors_say_file_line_column(tmp_path: Path) -> None:
    path = write(tmp_path, replace("batches: [1, \"50%\"]", "batches: [1, \"50%\""))
    message = spec_error(path)
    assert re.match(rf"{re.escape(str(path))}:5:1: not valid YAML: expected ',' or ']', "
                    r"but got '<scalar>' \(while parsing a flow sequence at line 4\)",
                    message), message


# 4. Versions under vars: keep their text -------------------------------------------------

def test_versions_under_vars_keep_the_text_as_written(tmp_path: Path) -> None:
    text = replace("vars:\n  region: eu\n", textwrap.dedent("""\
        vars:
          app_version: 1.10
          java: 11.0
          patch: 2.50
          nested: {list: [1.20, 3.0]}
          ratio: 0.5
          quoted: "1.10"
          tagged: !!float 1.10
          count: 3
          huge: .inf
        """))
    spec = load_spec(write(tmp_path, text.replace("drain_timeout: 30", "drain_timeout: 1.50")))
    assert spec.vars == {"app_version": "1.10", "java": "11.0", "patch": "2.50",
                         "nested": {"list": ["1.20", "3.0"]}, "ratio": 0.5, "quoted": "1.10",
                         "tagged": 1.1, "count": 3, "huge": float("inf")}
    assert spec.haproxy.drain_timeout == 1.5  # outside vars: numbers are numbers


def test_yaml_without_those_cases_loads_as_safe_load_does() -> None:
    # The README's example spec (and anything without duplicates or vars floats) is unchanged.
    readme = (REPO / "README.md").read_text()
    block = readme.split("### The spec (`rollout.yml`)", 1)[1].split("```yaml\n", 1)[1]
    text = block.split("```", 1)[0]
    expected: Any = yaml.safe_load(text)
    assert expected["name"] == "web"
    assert load_yaml(text, source="README.md").data == expected


CANARY = textwrap.dedent("""\
    strategy: canary
    canary:
      hosts: 1
      steps:
        - traffic: 5%
        - analysis: {duration: 60, window: 3}
    analysis:
      gates:
        - error_rate: {max: 1%}
        - latency: {max_ratio_to_baseline: 0.5}
    """)


def test_canary_steps_and_gates_errors_point_at_the_item_and_its_key(tmp_path: Path) -> None:
    path = write(tmp_path, SPEC + CANARY)
    base = SPEC.count("\n")
    assert spec_error(path).splitlines()[1:] == [
        f"  {path}:{base + 6}:40: canary.steps: step 1 (analysis): analysis.window: "
        "Extra inputs are not permitted",
        f"  {path}:{base + 10}:40: analysis.gates: gate 1 (latency): "
        "latency.max_ratio_to_baseline: Input should be greater than 1",
    ]


@pytest.mark.parametrize("canary, expected", [
    ("strategy: canary\n", "canary: required by strategy: canary"),
    ("canary: {steps: [{traffic: 5%}]}\n", "strategy: the canary section needs strategy: canary"),
    ("strategy: canary\ncanary: {steps: [{traffic: 5%}, {analysis: {duration: 5}}]}\n",
     "analysis: the canary's analysis steps need an analysis section"),
    ("strategy: canary\ncanary: {steps: [{traffic: 100%}]}\n",
     "traffic must be between 0.1% and 99%, not 100%"),
])
def test_a_canary_spec_missing_a_part_says_which(tmp_path: Path, canary: str,
                                                 expected: str) -> None:
    assert expected in spec_error(write(tmp_path, SPEC + canary))
