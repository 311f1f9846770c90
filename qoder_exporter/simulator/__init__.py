"""A deterministic local Qoder Cloud Agents API (deployments and their runs) for demos and tests.

Modules, by responsibility:
  core.py        Simulator: world state, clock sync, deployment admin, serving, accounting
  world.py       deployments, trigger streams and runs with fixed timelines (DeploymentSpec)
  clock.py       ManualClock (tests) and RealClock (demo)
  stamps.py      RFC 3339 timestamps, UUIDv7-style ids, cron text
  faults.py      fault injection (Faults)
  routing.py     handle_request: route, faults, auth, endpoint -- no sockets
  replies.py     Request/Reply, error envelopes, injected fault bodies
  paging.py      list pages, cursors, limits, created_at bounds
  endpoints.py   deployments, runs and their lists
  shape*.py      run shapes: G1 status-bearing (shape_g1), G2 record-only (shape_g2)
  sessions.py    sessions: plan, status machine, events, usage, run outcomes (SessionStore)
  sessions_api.py  GET /sessions, /sessions/{id}, /sessions/{id}/events
  truth.py       ground truth for tests
  httpserver.py  the HTTP server over handle_request
  adapter.py     a requests transport adapter over handle_request (no sockets)
  cli.py         `python -m qoder_exporter.simulator`
"""

from .adapter import SimulatorAdapter, mount
from .clock import ManualClock, RealClock
from .core import DEFAULT_START, SHAPES, Simulator
from .faults import FAULT_KINDS, Faults
from .routing import BASE_PATH, ENDPOINTS, handle_request
from .sessions import (
    SESSION_ERROR_TYPES,
    SESSION_OUTCOMES,
    SESSION_STATUSES,
    RunOutcome,
    SessionOptions,
)
from .world import DEFAULT_ERROR_TYPES, STATUSES, TERMINAL, DeploymentSpec

__all__ = [
    "BASE_PATH",
    "DEFAULT_ERROR_TYPES",
    "DEFAULT_START",
    "ENDPOINTS",
    "FAULT_KINDS",
    "SESSION_ERROR_TYPES",
    "SESSION_OUTCOMES",
    "SESSION_STATUSES",
    "SHAPES",
    "STATUSES",
    "TERMINAL",
    "DeploymentSpec",
    "Faults",
    "ManualClock",
    "RealClock",
    "RunOutcome",
    "SessionOptions",
    "Simulator",
    "SimulatorAdapter",
    "handle_request",
    "main",
    "mount",
]


def main(argv: list[str] | None = None) -> int:
    """Run the simulator on the wall clock until interrupted (see cli.py)."""
    from .cli import main as run

    return run(argv)
