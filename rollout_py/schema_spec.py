"""The JSON Schema (draft 2020-12) of rollout.yml, generated from the spec's pydantic models.

pydantic describes the values a model holds once validated; the spec's ``mode="before"``
validators take more shapes than that (a single batch size, ``"25%"``, a node's bare URL,
``- pause:`` with nothing after it, ...). The generated schema is patched where they do, so
that an editor accepts what ``load_spec`` accepts and refuses what it refuses wherever a JSON
Schema can tell. What it cannot tell stays the loader's alone: ramp steps that increase, a
``match:`` regex that compiles, which section a strategy needs, a version that orders, names
used twice.

The schema reads the YAML as a YAML 1.2 reader (an editor) does: ``on:`` is the key ``"on"``
(PyYAML's YAML 1.1 reads it as ``true``; the loader maps it back for the phases).

Example:
    >>> rollout_schema()["additionalProperties"], "source" in rollout_schema()["properties"]
    (False, False)
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from rollout_py.spec import Spec

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "https://rollout-py.invalid/rollout.schema.json"
SCHEMA_FILE = "rollout.schema.json"

# A whole percentage from 1% to 100% (up to three digits, as the loader reads them).
_PCT_1_100 = r"(?:0{0,2}[1-9]|0?[1-9][0-9]|100)"
# Percentages with up to three decimals (spec_canary.share), by the range a field takes.
_PCT_DEC = r"(?:\.[0-9]{1,3})?"
_PCT_1_99 = rf"(?:(?:0{{0,2}}[1-9]|0?[1-8][0-9]|0?9[0-8]){_PCT_DEC}|0?99(?:\.0{{1,3}})?)"
_PCT_SHARE = {
    (0.1, 99.0): rf"(?:0{{1,3}}\.[1-9][0-9]{{0,2}}|{_PCT_1_99})",
    (1.0, 99.0): _PCT_1_99,
    (0.0, 100.0): rf"(?:0?[0-9]{{1,2}}{_PCT_DEC}|100(?:\.0{{1,3}})?)",
}


def _count_or_percent(*, inner_space: bool = False) -> dict[str, Any]:
    """A whole number from 1, or ``"N%"`` from 1% to 100% (spec._count_or_percent,
    BlueGreenSpec.min_up; ``inner_space``: ``"50 %"`` too, as spec_flags.percent reads it)."""
    gap = r"\s*" if inner_space else ""
    return {"anyOf": [
        {"type": "integer", "minimum": 1},
        {"type": "string", "pattern": rf"^\s*{_PCT_1_100}{gap}%\s*$"},
    ]}


def _percent() -> dict[str, Any]:
    """spec_flags.percent: a whole percentage, ``50%`` or 50, from 1 to 100."""
    whole = _count_or_percent(inner_space=True)
    whole["anyOf"][0]["maximum"] = 100
    return whole


def _share(low: float, high: float) -> dict[str, Any]:
    """spec_canary.share: ``"5%"`` (up to three decimals), or a fraction from 0 to 1 as a
    number, between ``low``% and ``high``%."""
    return {"anyOf": [
        {"type": "string", "pattern": rf"^\s*{_PCT_SHARE[(low, high)]}\s*%\s*$"},
        {"type": "number", "minimum": low / 100, "maximum": high / 100},
    ]}


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [*schema["anyOf"], {"type": "null"}]}


def _patch(schema: dict[str, Any], model: str | None, field: str,
           new: dict[str, Any]) -> None:
    """Replaces a field's schema, keeping its title, description and default; a field that is
    no longer there is an error (the patch would silently stop applying)."""
    target = schema if model is None else schema["$defs"][model]
    old = target["properties"][field]  # KeyError: a model changed, update the patch
    kept = {k: old[k] for k in ("title", "description", "default") if k in old}
    target["properties"][field] = {**kept, **new}


def rollout_schema() -> dict[str, Any]:
    """The JSON Schema of rollout.yml, as ``rollout schema`` prints it and
    ``rollout_py/schemas/rollout.schema.json`` ships it."""
    generated = Spec.model_json_schema()
    # Set by load_spec, never YAML keys (parse_spec refuses them).
    for internal in ("source", "base_dir"):
        del generated["properties"][internal]
        if internal in generated.get("required", []):
            generated["required"].remove(internal)

    # Shapes the before-validators take besides the validated type.
    batch = _count_or_percent()
    _patch(generated, None, "batches", {"anyOf": [  # a single size repeats, like serial
        *batch["anyOf"], {"type": "array", "items": batch, "minItems": 1}]})
    _patch(generated, None, "max_unavailable", _or_null(_count_or_percent()))
    _patch(generated, "HAProxySpec", "warmup_from", _share(1.0, 99.0))
    _patch(generated, "TrafficStep", "traffic", _share(0.1, 99.0))
    for bound in ("max", "max_over_baseline"):
        _patch(generated, "ErrorRateGate", bound, _or_null(_share(0.0, 100.0)))
    _patch(generated, "PauseStep", "pause", {"anyOf": [  # `- pause:` is `- pause: {}`
        {"$ref": "#/$defs/PauseFor"}, {"type": "null"}]})
    _patch(generated, "CanarySpec", "hosts", _count_or_percent())
    _patch(generated, "BlueGreenSpec", "min_up", _count_or_percent())
    _patch(generated, "FlagsSpec", "ramp", {"type": "array", "items": _percent(),
                                            "minItems": 1})
    _patch(generated, "ReleaseSpec", "to", _percent())
    _patch(generated, "ReleaseSpec", "variant", {"anyOf": [  # YAML 1.1 reads on/off as bools
        {"type": "string"}, {"type": "boolean"}, {"type": "null"}]})
    _patch(generated, "ContractSpec", "requires", {"anyOf": [  # a whole number is its text
        {"type": "string"}, {"type": "integer"}]})
    _patch(generated, "ExecutorsSpec", "nodes", {  # an item may be just the node's URL
        **generated["$defs"]["ExecutorsSpec"]["properties"]["nodes"],
        "items": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/NodeSpec"}]}})

    # Spec._needs_probes: health.probes must name at least one probe, so health is needed.
    generated["required"].append("health")
    del generated["properties"]["health"]["default"]
    generated["$defs"]["HealthSpec"]["properties"]["probes"]["minItems"] = 1
    generated["$defs"]["HealthSpec"]["required"] = ["probes"]

    generated.pop("title", None)
    generated.pop("description", None)
    return {
        "$schema": DIALECT,
        "$id": SCHEMA_ID,
        "title": "rollout.yml",
        "description": "A rollout_py rollout spec (rollout.yml); paths in it are relative to "
                       "the file. Generated from rollout_py.spec by `rollout schema`.",
        **generated,
    }


def render(schema: dict[str, Any]) -> str:
    """The schema as ``rollout schema`` prints it and the shipped file holds it."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def shipped_path() -> Path:
    """The installed ``rollout_py/schemas/rollout.schema.json``."""
    return Path(str(resources.files("rollout_py.schemas").joinpath(SCHEMA_FILE)))


def modeline() -> str:
    """The first line that makes yaml-language-server (VS Code, Neovim, ...) check a spec
    file against the installed schema."""
    return f"# yaml-language-server: $schema={shipped_path().as_uri()}"
