"""Ground truth for tests: what an exporter should report, straight from the world model."""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from .paging import sort_key
from .sessions import RunOutcome
from .stamps import to_ns
from .world import STATUSES, TERMINAL

if TYPE_CHECKING:
    from .core import Simulator


def recent(sim: Simulator, deployment_id: str, lookback_s: float) -> dict[str, int]:
    """Count runs created in [now - lookback_s, now] by current status."""
    with sim._lock:
        now = sim._sync()
        dep = sim._dep(deployment_id)
        counts = dict.fromkeys(STATUSES, 0)
        lo = bisect.bisect_left(dep.runs, (now - to_ns(lookback_s), ""), key=sort_key)
        for run in dep.runs[lo:]:
            if run.created_ns <= now:
                counts[sim.run_shape.status(run, now)] += 1
        return counts


def finished(
    sim: Simulator, deployment_id: str, since: float, until: float | None = None
) -> list[tuple[str, float | None, str | None]]:
    """List (status, duration_s, error_type) of runs that finished in (since, until]."""
    with sim._lock:
        now = sim._sync()
        dep = sim._dep(deployment_id)
        since_ns = to_ns(since)
        until_ns = now if until is None else min(to_ns(until), now)
        found = []
        for run in dep.runs:
            done = sim.run_shape.finished(run, now)
            if done is not None and since_ns < done.finished_ns <= until_ns:
                found.append((done.finished_ns, run.id, done))
        found.sort(key=lambda item: (item[0], item[1]))
        return [(d.status, d.duration_s, d.error_type) for _, _, d in found]


def last_success(sim: Simulator, deployment_id: str) -> float | None:
    """Return completed_at of the newest completed run (g2: created_at of newest success)."""
    with sim._lock:
        now = sim._sync()
        return sim.run_shape.last_success(sim._dep(deployment_id), now)


def last_finished_status(sim: Simulator, deployment_id: str) -> str | None:
    """Return the status of the newest (by created_at) finished run."""
    with sim._lock:
        now = sim._sync()
        for run in reversed(sim._dep(deployment_id).runs):
            status = sim.run_shape.status(run, now)
            if status in TERMINAL and run.created_ns <= now:
                return status
        return None


def in_flight(sim: Simulator, deployment_id: str) -> list[str]:
    """Return ids of pending/running runs (always empty in the g2 shape)."""
    with sim._lock:
        now = sim._sync()
        return [r.id for r in sim.run_shape.in_flight(sim._dep(deployment_id), now)]


def run_outcomes(
    sim: Simulator, deployment_id: str, since: float | None, until: float | None
) -> list[RunOutcome]:
    """The session-based outcome of each run created in [since, until] (default: all)."""
    with sim._lock:
        now = sim._sync()
        dep = sim._dep(deployment_id)
        lo_ns = 0 if since is None else to_ns(since)
        hi_ns = now if until is None else min(now, to_ns(until))
        whole = sim.shape == "g2"
        return [
            sim.sessions.outcome(run, now, whole)
            for run in dep.runs
            if lo_ns <= run.created_ns <= hi_ns
        ]


def run_outcome(sim: Simulator, run_id: str) -> RunOutcome:
    """The session-based outcome of one run."""
    with sim._lock:
        now = sim._sync()
        run = sim._runs[run_id]
        return sim.sessions.outcome(run, now, sim.shape == "g2")
