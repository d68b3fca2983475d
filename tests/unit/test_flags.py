"""Flag files in flagd's format: valid files load, each kind of invalid file is refused with
its message and file:line:col, edits give the expected JSON and leave their input unchanged,
and load -> to_json -> load round-trips."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rollout_py.errors import FlagError, InputError
from rollout_py.flags.edit import describe, kill, ramp, set_variant, to_json
from rollout_py.flags.model import FlagFile, load_flags, parse_flags

BASE = """{
  "$schema": "https://flagd.dev/schema/v0/flags.json",
  "flags": {
    "new-greeting": {
      "state": "ENABLED",
      "variants": {"on": true, "off": false},
      "defaultVariant": "off",
      "targeting": {}
    },
    "color": {
      "state": "ENABLED",
      "variants": {"red": "#f00", "blue": "#00f"},
      "defaultVariant": "red"
    }
  },
  "$evaluators": {"staff": {"ends_with": [{"var": "email"}, "@example.com"]}}
}
"""

RICH = """{
  "flags": {
    "algo": {
      "state": "DISABLED",
      "variants": {"a": {"k": 1}, "b": {"k": [2]}},
      "defaultVariant": "a",
      "targeting": {"if": [{"$ref": "staff"},
                           {"fractional": [{"cat": [{"var": "$flagd.flagKey"},
                                                    {"var": "email"}]},
                                           ["a", 1], ["b"]]},
                           null]},
      "metadata": {"owner": "web", "version": 3, "temp": true}
    },
    "limit": {"state": "ENABLED", "variants": {"low": 10, "high": 2.5},
              "defaultVariant": "low", "targeting": {"my_custom_op": [1, {"var": "x"}]}}
  },
  "$evaluators": {"staff": {"in": ["@example.com", {"var": "email"}]}},
  "metadata": {"flagSetId": "web", "version": "7"}
}
"""


def write(tmp_path: Path, text: str, name: str = "flags.json") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(FlagError) as info:
        load_flags(write(tmp_path, text))
    assert isinstance(info.value, InputError)
    return str(info.value).replace(str(tmp_path) + "/", "")


@pytest.mark.parametrize("text", [BASE, RICH], ids=["base", "rich"])
def test_valid_files_load_and_round_trip(tmp_path: Path, text: str) -> None:
    ff = load_flags(write(tmp_path, text))
    assert ff.to_data()["flags"].keys() == json.loads(text)["flags"].keys()
    out = to_json(ff)
    assert out.endswith("}\n") and json.loads(out) == {
        **json.loads(text), "flags": {n: {"targeting": {}, **f}
                                      for n, f in json.loads(text)["flags"].items()}}
    again = load_flags(write(tmp_path, out, "again.json"))
    assert to_json(again) == out and again.flags == ff.flags


def test_yaml_flag_file_loads(tmp_path: Path) -> None:
    text = "flags:\n  f:\n    state: ENABLED\n    variants: {'on': y, 'off': n}\n" \
           "    defaultVariant: 'off'\n"
    ff = load_flags(write(tmp_path, text, "flags.yml"))
    assert ff.flags["f"].variants == {"on": "y", "off": "n"}
    # Unquoted on/off are booleans in YAML 1.1: refused with a hint, not a traceback.
    path = write(tmp_path, text.replace("'on'", "on"), "bool.yml")
    with pytest.raises(FlagError, match=r"bool.yml:4:15: flags.f.variants: variant name True "
                                        r"is not a string \(quote it in YAML"):
        load_flags(path)
    path = write(tmp_path, "flags:\n  f:\n    state: ENABLED\n    state: DISABLED\n", "d.yaml")
    with pytest.raises(FlagError, match=r"d.yaml:4:5: flags.f.state: duplicate key \(first "
                                        r"at line 3\)"):
        load_flags(path)


INVALID: list[tuple[str, str, str, str]] = [
    ("default-not-a-variant", '"defaultVariant": "off"', '"defaultVariant": "onn"',
     "flags.json:7:25: flags.new-greeting.defaultVariant: 'onn' is not one of the variants "
     "on, off"),
    ("default-missing", '"defaultVariant": "off",', "",
     "flags.json:4:5: flags.new-greeting.defaultVariant: required key is missing"),
    ("bad-state", '"state": "ENABLED",\n      "variants": {"on"',
     '"state": "ON",\n      "variants": {"on"',
     "flags.json:5:16: flags.new-greeting.state: 'ON' is not ENABLED or DISABLED"),
    ("mixed-types", '"off": false', '"off": "false"',
     "flags.json:6:39: flags.new-greeting.variants.off: all variants of a flag must have the "
     "same type: 'on' is a boolean, 'off' is a string"),
    ("no-variants", '{"on": true, "off": false}', "{}",
     "flags.json:6:19: flags.new-greeting.variants: must be an object of variant name -> "
     "value, not an empty object"),
    ("null-variant", '"off": false', '"off": null',
     "flags.json:6:39: flags.new-greeting.variants.off: a variant value is a boolean, string, "
     "number or object, not null"),
    ("unknown-flag-key", '"targeting": {}', '"targetting": {}',
     "flags.json:8:7: flags.new-greeting.targetting: unknown key (expected one of state, "
     "variants, defaultVariant, targeting, metadata)"),
    ("unknown-top-key", '"$evaluators"', '"evaluators"',
     "flags.json:16:3: evaluators: unknown key (expected one of $schema, flags, $evaluators, "
     "metadata)"),
    ("bad-flag-name", '"new-greeting"', '"new greeting"',
     "flags.json:4:5: flags.new greeting: flag name 'new greeting' must be non-empty"),
    ("targeting-not-object", '"targeting": {}', '"targeting": "on"',
     "flags.json:8:20: flags.new-greeting.targeting: must be an object (JSONLogic, or {}), "
     "not a string"),
    ("fractional-unknown-variant", '"targeting": {}',
     '"targeting": {"fractional": [["on", 10], ["of", 90]]}',
     "flags.json:8:49: flags.new-greeting.targeting.fractional.1.0: 'of' is not one of the "
     "variants on, off"),
    ("fractional-negative", '"targeting": {}',
     '"targeting": {"fractional": [["on", -1], ["off", 90]]}',
     "flags.json:8:43: flags.new-greeting.targeting.fractional.0.1: a weight is a whole number "
     "0 or more, not -1"),
    ("fractional-float", '"targeting": {}',
     '"targeting": {"fractional": [["on", 10.5], ["off", 90]]}',
     "fractional.0.1: a weight is a whole number 0 or more, not 10.5"),
    ("fractional-zero-sum", '"targeting": {}',
     '"targeting": {"fractional": [["on", 0], ["off", 0]]}',
     "flags.json:8:35: flags.new-greeting.targeting.fractional: the weights add up to 0"),
    ("fractional-one-item", '"targeting": {}', '"targeting": {"fractional": [["on", 1]]}',
     "flags.json:8:35: flags.new-greeting.targeting.fractional: needs at least two items"),
    ("fractional-not-array", '"targeting": {}', '"targeting": {"fractional": "on"}',
     "flags.json:8:35: flags.new-greeting.targeting.fractional: must be an array of "
     "[variant, weight] buckets, not a string"),
    ("fractional-nested", '"targeting": {}',
     '"targeting": {"if": [true, {"fractional": [{"var": "id"}, ["on", 5], ["no", 95]]}]}',
     "flags.json:8:77: flags.new-greeting.targeting.if.1.fractional.2.0: 'no' is not one of "
     "the variants on, off"),
    ("fractional-in-evaluator", '"ends_with": [{"var": "email"}, "@example.com"]',
     '"fractional": [["x", true], ["y", 1]]',
     "flags.json:16:50: $evaluators.staff.fractional.0.1: a weight is a whole number 0 or "
     "more, not True"),
    ("missing-ref", '"targeting": {}', '"targeting": {"if": [{"$ref": "stafff"}, "on", null]}',
     "flags.json:8:37: flags.new-greeting.targeting.if.0.$ref: 'stafff' is not one of the "
     "shared evaluators ($evaluators): staff"),
    ("duplicate-key", '"defaultVariant": "red"', '"defaultVariant": "red", "state": "DISABLED"',
     "flags.json:13:32: flags.color.state: duplicate key (first at line 11)"),
    ("not-json", '"targeting": {}\n', '"targeting": {},\n',
     "flags.json:9:5: not valid JSON: a key in double quotes was expected"),
    ("flags-missing", '"flags": {', '"flagz": {',
     "flags.json:3:3: flagz: unknown key (expected one of $schema, flags, "
     "$evaluators, metadata)\n  flags.json: flags: required key is missing"),
]


@pytest.mark.parametrize(("old", "new", "expected"), [c[1:] for c in INVALID],
                         ids=[c[0] for c in INVALID])
def test_invalid_files_are_refused_with_position(tmp_path: Path, old: str, new: str,
                                                 expected: str) -> None:
    assert BASE.count(old) == 1
    msg = refused(tmp_path, BASE.replace(old, new))
    assert expected in msg, msg


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = BASE.replace('"defaultVariant": "off"', '"defaultVariant": "onn"').replace(
        '"blue": "#00f"', '"blue": 0')
    msg = refused(tmp_path, text)
    assert msg.startswith("flags.json: invalid flag file:\n")
    assert "flags.new-greeting.defaultVariant" in msg and "flags.color.variants.blue" in msg


@pytest.mark.parametrize("data", [[], None, {"flags": []}])
def test_in_memory_data_without_positions(data: Any) -> None:
    with pytest.raises(FlagError, match=r"<memory>: invalid flag file:\n  \S"):
        parse_flags(data)


def base() -> FlagFile:
    return parse_flags(json.loads(BASE), source="flags.json")


def flag_json(ff: FlagFile, name: str) -> Any:
    return json.loads(to_json(ff))["flags"][name]


EDITS: list[tuple[str, Any, str, dict[str, Any]]] = [
    ("set_variant", lambda ff: set_variant(ff, "new-greeting", "on"), "new-greeting",
     {"state": "ENABLED", "defaultVariant": "on", "targeting": {}}),
    ("ramp-10", lambda ff: ramp(ff, "new-greeting", "on", 10), "new-greeting",
     {"state": "ENABLED", "defaultVariant": "off",
      "targeting": {"fractional": [["on", 10], ["off", 90]]}}),
    ("ramp-other", lambda ff: ramp(ff, "color", "blue", 25, other="red"), "color",
     {"state": "ENABLED", "defaultVariant": "red",
      "targeting": {"fractional": [["blue", 25], ["red", 75]]}}),
    ("ramp-100", lambda ff: ramp(ramp(ff, "new-greeting", "on", 50), "new-greeting", "on", 100),
     "new-greeting",
     {"state": "ENABLED", "defaultVariant": "on", "targeting": {}}),
    ("kill-off", lambda ff: kill(ramp(ff, "new-greeting", "on", 50), "new-greeting"),
     "new-greeting",
     {"state": "ENABLED", "defaultVariant": "off", "targeting": {}}),
    ("kill-given", lambda ff: kill(ramp(ff, "color", "blue", 50), "color", "red"), "color",
     {"state": "ENABLED", "defaultVariant": "red", "targeting": {}}),
]


@pytest.mark.parametrize(("edit", "name", "expected"), [e[1:] for e in EDITS],
                         ids=[e[0] for e in EDITS])
def test_edits(edit: Any, name: str, expected: dict[str, Any]) -> None:
    ff = base()
    before = to_json(ff)
    out = edit(ff)
    got = flag_json(out, name)
    assert {k: got[k] for k in expected} == expected
    assert got["variants"] == flag_json(ff, name)["variants"]
    assert to_json(ff) == before  # the input is unchanged
    other = "color" if name == "new-greeting" else "new-greeting"
    assert flag_json(out, other) == flag_json(ff, other)
    assert parse_flags(json.loads(to_json(out))).flags == out.flags


def test_ramp_100_is_set_variant() -> None:
    assert to_json(ramp(base(), "color", "blue", 100)) == to_json(set_variant(base(), "color",
                                                                              "blue"))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda ff: set_variant(ff, "nope", "on"), r"no flag 'nope' \(flags: new-greeting, color\)"),
    (lambda ff: set_variant(ff, "color", "green"), "'green' is not one of the variants red, blue"),
    (lambda ff: ramp(ff, "new-greeting", "on", 0), "from 1 to 100, not 0"),
    (lambda ff: ramp(ff, "new-greeting", "on", 101), "from 1 to 100, not 101"),
    (lambda ff: ramp(ff, "new-greeting", "on", True), "from 1 to 100, not True"),
    (lambda ff: ramp(ff, "new-greeting", "off", 10), "cannot ramp 'off' against itself"),
    (lambda ff: ramp(ff, "color", "blue", 10, other="green"), "'green' is not one of"),
    (lambda ff: kill(ff, "color"), "no variant named 'off': name the variant to serve"),
], ids=["flag", "variant", "ramp-0", "ramp-101", "ramp-bool", "ramp-self", "ramp-other",
        "kill-no-off"])
def test_edits_refused(edit: Any, message: str) -> None:
    ff = base()
    before = to_json(ff)
    with pytest.raises(FlagError, match=message):
        edit(ff)
    assert to_json(ff) == before


def test_describe() -> None:
    ff = ramp(kill(base(), "color", "blue"), "new-greeting", "on", 10)
    rich = parse_flags(json.loads(RICH))
    assert describe(ff) == ["new-greeting: ENABLED, default off, fractional on 10% / off 90%",
                            "color: ENABLED, default blue, no targeting"]
    assert describe(rich) == ["algo: DISABLED, default a, rules: if",
                              "limit: ENABLED, default low, rules: my_custom_op"]
    split = parse_flags({"flags": {"f": {
        "state": "ENABLED", "variants": {"a": 1, "b": 2, "c": 3}, "defaultVariant": "a",
        "targeting": {"fractional": [{"var": "email"}, ["a", 1], ["b", 1], ["c"]]}}}})
    assert describe(split) == ['f: ENABLED, default a, fractional a 33.33% / b 33.33% / '
                               'c 33.33% by {"var": "email"}']


def test_to_json_is_stable_sorted_and_pretty() -> None:
    ff = base()
    out = to_json(ff)
    assert out == to_json(parse_flags(json.loads(out)))
    assert out.startswith('{\n  "$evaluators": {\n') and out.endswith("}\n")
    assert out.index('"color"') < out.index('"new-greeting"')
    assert '"fractional": [\n' in to_json(ramp(ff, "new-greeting", "on", 5))


def test_rollout_flag_check_refuses_a_malformed_file_with_its_position_and_exit_2(
        tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "flags.json"
    bad.write_text('{"flags": {"new-greeting": {"state": "ENABLED", "variants": '
                   '{"on": true, "off": false}, "defaultVariant": "onn"}}}\n')
    proc = subprocess.run([sys.executable, "-m", "rollout_py", "flag", "check", str(bad)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"{bad}:1:" in proc.stderr and "'onn' is not one of the variants on, off" \
        in proc.stderr
    good = tmp_path / "good.json"
    good.write_text(bad.read_text().replace('"onn"', '"off"'))
    proc = subprocess.run([sys.executable, "-m", "rollout_py", "flag", "check", str(good)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "new-greeting: ENABLED, default off, no targeting" in proc.stdout
