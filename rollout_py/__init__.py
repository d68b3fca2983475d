"""rollout_py: rolling deploys for VM fleets behind HAProxy, driven through ansible-runner.

Example:
    >>> import rollout_py
    >>> spec = rollout_py.load_spec("rollout.yml")  # doctest: +SKIP
    >>> result = rollout_py.deploy(spec, version="2.4.1", on_event=print)  # doctest: +SKIP
    >>> result.raise_for_status()  # doctest: +SKIP
"""

from __future__ import annotations

from rollout_py import events
from rollout_py.api import deploy, plan
from rollout_py.errors import (
    BalancerError,
    DeployFailedError,
    InputError,
    PreflightError,
    RolloutError,
    SpecError,
)
from rollout_py.planner import Plan
from rollout_py.result import BatchResult, DeployResult, HostResult
from rollout_py.spec import Spec, load_spec

__all__ = [
    "BalancerError", "BatchResult", "DeployFailedError", "DeployResult", "HostResult",
    "InputError", "Plan", "PreflightError", "RolloutError", "Spec", "SpecError", "__version__",
    "deploy", "events", "load_spec", "plan",
]
__version__ = "0.1.0"
