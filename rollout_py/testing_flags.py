"""A test double for the flag playbook (playbooks/flags_push.yml) on a FakeFleet's hosts."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rollout_py.executor import Cancel, RunResult
from rollout_py.testing import FakeFleet


class FakeFlagExecutor:
    """playbooks/flags_push.yml on a FakeFleet's hosts: each host's flag file (``files``),
    hosts whose writes fail (``fail``: host -> "failed" | "unreachable"), and an ``effect``
    answer per host (the variant its responses name). A host's traffic fails at the rate of
    the variants it serves (``variant_errors``), weighted by the file's split of ``flag``.

    Example:
        >>> fleet = FakeFleet(["web1"], requests_per_read=100)
        >>> hosts = FakeFlagExecutor(fleet, "new-greeting", variant_errors={"on": 1.0})
    """

    def __init__(self, fleet: FakeFleet, flag: str,
                 variant_errors: Mapping[str, float] | None = None) -> None:
        self.fleet, self.flag = fleet, flag
        self.variant_errors = dict(variant_errors or {})
        self.files: dict[str, str] = {}
        self.fail: dict[str, str] = {}
        self.closed = False

    def split(self, host: str) -> dict[str, float]:
        """The variants host ``host`` serves and their shares, from its file."""
        flag = json.loads(self.files.get(host, '{"flags": {}}'))["flags"].get(self.flag)
        if flag is None:
            return {}
        frac = (flag.get("targeting") or {}).get("fractional")
        if not frac:
            return {flag["defaultVariant"]: 1.0}
        total = sum(b[1] for b in frac)
        return {b[0]: b[1] / total for b in frac}

    def run_playbook(self, playbook: str, hosts: Sequence[str], extravars: Mapping[str, Any],
                     *, label: str, tags: str | None = None,
                     cancel: Cancel | None = None) -> RunResult:
        if extravars.get("rollout_flag_compare"):
            self.fleet.record(f"flag compare {','.join(hosts)}")
            want = extravars["rollout_flag_sha1"]
            outcomes = {h: "ok" if hashlib.sha1(self.files.get(h, "").encode()).hexdigest()
                        == want and h in self.files else "failed: differs" for h in hosts}
        else:
            content = Path(extravars["rollout_flag_src"]).read_text(encoding="utf-8")
            digest = hashlib.sha1(content.encode()).hexdigest()[:8]
            self.fleet.record(f"flag push {label} {digest}")
            outcomes = {}
            for h in hosts:
                if h in self.fail:
                    outcomes[h] = f"{self.fail[h]}: injected"
                    continue
                self.files[h] = content
                outcomes[h] = "ok"
                label_ = f"flags-{digest}"
                self.fleet.versions[h] = label_
                self.fleet.error_rates[label_] = sum(
                    share * self.variant_errors.get(v, 0.0) for v, share in self.split(h).items())
        status = "successful" if all(v == "ok" for v in outcomes.values()) else "failed"
        return RunResult(status, 0 if status == "successful" else 2, outcomes)

    def effect(self, url: str, header: str) -> str | None:
        """The ``fetch`` of the effect check: ``url`` names the host (``http://HOST/``); a
        host with a static flag names its variant."""
        host = url.split("/")[2]
        split = self.split(host)
        return next(iter(split)) if len(split) == 1 else None

    def run_command(self, host: str, command: str, timeout: float) -> tuple[bool, str]:
        return True, ""

    def reachable(self, hosts: Sequence[str]) -> dict[str, str | None]:
        return {h: None for h in hosts}

    def syntax_check(self, playbook: str) -> str | None:
        return None

    def close(self) -> None:
        self.closed = True
