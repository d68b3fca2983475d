"""rollout_py: rolling deploys for VM fleets behind HAProxy, driven through ansible-runner."""

from __future__ import annotations

from rollout_py.errors import RolloutError

__all__ = ["RolloutError", "__version__"]
__version__ = "0.1.0"
