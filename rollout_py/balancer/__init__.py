"""The load balancer seam: HAProxy's runtime API, spoken in-process over unix, tcp or ssh."""

from __future__ import annotations

from rollout_py.balancer.runtime import (
    RuntimeAPI,
    ServerState,
    StatRow,
    parse_servers_state,
    parse_stat_csv,
    validate_name,
)
from rollout_py.balancer.transports import Transport, open_transport

__all__ = [
    "RuntimeAPI",
    "ServerState",
    "StatRow",
    "Transport",
    "open_transport",
    "parse_servers_state",
    "parse_stat_csv",
    "validate_name",
]
