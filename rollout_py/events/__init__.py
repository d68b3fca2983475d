"""The engine's typed events: frozen records of everything a deploy did, in order.

Every consumer (journal, console, JSON lines, user callbacks) sees the same events; the final
DeployResult is a fold over them. Each module here declares a family of events and lists them
in its ``EVENTS``; ``ALL_EVENTS`` is every family (the journal reads events back by kind).
"""

from rollout_py.events import deploy as _deploy
from rollout_py.events import flags as _flags
from rollout_py.events import phases as _phases
from rollout_py.events import pools as _pools
from rollout_py.events import shaping as _shaping
from rollout_py.events import traffic as _traffic
from rollout_py.events.base import *  # noqa: F403
from rollout_py.events.deploy import *  # noqa: F403
from rollout_py.events.flags import *  # noqa: F403
from rollout_py.events.phases import *  # noqa: F403
from rollout_py.events.pools import *  # noqa: F403
from rollout_py.events.shaping import *  # noqa: F403
from rollout_py.events.traffic import *  # noqa: F403

ALL_EVENTS: tuple[type[Event], ...] = (  # noqa: F405
    *_deploy.EVENTS, *_traffic.EVENTS,
    *_flags.EVENTS,
    *_pools.EVENTS,
    *_shaping.EVENTS,
    *_phases.EVENTS,
)
