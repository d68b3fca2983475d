"""Pure edits of a flag file: each takes a FlagFile and returns a new one, never changing it;
plus its one-line-per-flag description and the exact bytes written to hosts.

An edit that names a flag or a variant the file lacks raises FlagError (nothing is changed);
every result is validated again, so an edit cannot produce a file flagd would refuse.

Bucketing: ``ramp`` writes ``fractional`` without a bucketing expression, so flagd buckets by
its default, a hash of the flag key and the evaluation context's ``targetingKey`` (flagd's
fractional operation spec). Apps must set a stable ``targetingKey`` (a user or session id) for
a subject to keep its variant as the percentage grows; evaluations without one all hash the
same (empty) key and land in one bucket together.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rollout_py.errors import FlagError
from rollout_py.flags.model import FlagFile, parse_flags

OFF = "off"


def _checked(ff: FlagFile) -> FlagFile:
    """The edited file validated again (an invariant: edits keep files valid)."""
    return parse_flags(ff.to_data(), source=ff.source)


def _variant(ff: FlagFile, name: str, variant: str) -> None:
    variants = list(ff.flag(name).variants)
    if variant not in variants:
        raise FlagError(f"{ff.source}: flags.{name}: {variant!r} is not one of the variants "
                        f"{', '.join(variants)}")


def set_variant(ff: FlagFile, name: str, variant: str) -> FlagFile:
    """Everyone gets ``variant``: it becomes the default, targeting is cleared to ``{}`` and
    the flag is ENABLED."""
    _variant(ff, name, variant)
    flag = ff.flag(name).replace(state="ENABLED", default_variant=variant, targeting={})
    return _checked(ff.with_flag(name, flag))


def ramp(ff: FlagFile, name: str, variant: str, percent: int, *,
         other: str | None = None) -> FlagFile:
    """``percent``% of subjects get ``variant``, the rest ``other`` (by default the flag's
    current default variant), split by ``fractional`` on flagd's default bucketing key
    (flag key + ``targetingKey``, see the module note). The default variant becomes
    ``other``, so a subject the split cannot place gets the old behaviour. The flag is
    ENABLED; other targeting is replaced. At 100% this is :func:`set_variant`.
    """
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 < percent <= 100:
        raise FlagError(f"{ff.source}: flags.{name}: a ramp percentage is a whole number "
                        f"from 1 to 100, not {percent!r}")
    _variant(ff, name, variant)
    if percent == 100:
        return set_variant(ff, name, variant)
    flag = ff.flag(name)
    base = flag.default_variant if other is None else other
    _variant(ff, name, base)
    if base == variant:
        raise FlagError(f"{ff.source}: flags.{name}: cannot ramp {variant!r} against itself "
                        "(it is the default variant: name the other variant)")
    split = {"fractional": [[variant, percent], [base, 100 - percent]]}
    flag = flag.replace(state="ENABLED", default_variant=base, targeting=split)
    return _checked(ff.with_flag(name, flag))


def kill(ff: FlagFile, name: str, variant: str | None = None) -> FlagFile:
    """The flag's off switch: every subject gets the safe variant, whatever the app's code.

    The safe variant is ``variant`` when given, else the variant named ``off`` (FlagError when
    there is neither). It becomes the default, targeting is cleared and the flag is ENABLED.

    Why not ``state: DISABLED``: flagd documents a disabled flag as one that "doesn't exist":
    providers answer FLAG_NOT_FOUND / FLAG_DISABLED and the OpenFeature SDK returns the
    default value written at the call site in the app, which rollout_py cannot see (it may
    well be the new behaviour), and a flagd ADR proposes serving ``defaultVariant`` for
    disabled flags instead, so the result would also depend on the provider's version.
    An ENABLED flag with no targeting serves ``defaultVariant`` (reason STATIC) on every
    provider and version: that is the documented behaviour this kill relies on.
    """
    flag = ff.flag(name)
    if variant is None:
        if OFF not in flag.variants:
            raise FlagError(f"{ff.source}: flags.{name}: no variant named {OFF!r}: name the "
                            f"variant to serve (one of {', '.join(flag.variants)})")
        variant = OFF
    return set_variant(ff, name, variant)


def _percent(weight: float, total: float) -> str:
    return f"{100 * weight / total:.4g}%"


def _summary(targeting: Mapping[str, Any]) -> str:
    if not targeting:
        return "no targeting"
    frac = targeting.get("fractional") if len(targeting) == 1 else None
    if isinstance(frac, list):
        by = "" if frac and isinstance(frac[0], list) else f" by {json.dumps(frac[0])}"
        buckets = [b for b in frac if isinstance(b, list)]
        weights = [(b[0], b[1] if len(b) > 1 else 1) for b in buckets]
        total = sum(w for _, w in weights) or 1
        return "fractional " + " / ".join(f"{v} {_percent(w, total)}"
                                          for v, w in weights) + by
    return "rules: " + ", ".join(sorted(targeting))


def describe(ff: FlagFile) -> list[str]:
    """One line per flag, in the file's order: name, state, default variant, targeting.

    Example:
        >>> ff = parse_flags({"flags": {"g": {"state": "ENABLED", "variants": {"on": True,
        ...     "off": False}, "defaultVariant": "off",
        ...     "targeting": {"fractional": [["on", 10], ["off", 90]]}}}})
        >>> describe(ff)
        ['g: ENABLED, default off, fractional on 10% / off 90%']
    """
    return [f"{name}: {flag.state}, default {flag.default_variant}, "
            f"{_summary(flag.targeting)}" for name, flag in ff.flags.items()]


def to_json(ff: FlagFile) -> str:
    """The file's bytes as written to hosts: keys sorted, 2-space indent, a final newline;
    the same file always gives the same text."""
    return json.dumps(ff.to_data(), sort_keys=True, indent=2, ensure_ascii=False) + "\n"
