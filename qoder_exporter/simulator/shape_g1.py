"""G1, the status-bearing run shape: status, triggered_at, completed_at, duration_ms."""

from __future__ import annotations

from .paging import sort_key
from .shape import Finished
from .stamps import JSON, NS, fmt
from .world import TERMINAL, Deployment, Run


class G1Shape:
    """Runs mutate: pending -> running -> completed/failed (or skipped at creation)."""

    name = "g1"
    filters_status = True

    def run_json(self, run: Run, now: int) -> JSON:
        """Render a run as of now."""
        dep = run.dep
        status = run.status_at(now)
        out: JSON = {
            "id": run.id,
            "type": "deployment_run",
            "deployment_id": dep.id,
            "agent": dep.agent_json(),
            "status": status,
            "error": dep.error_json(run.error_type)
            if status == "failed" and run.error_type
            else None,
            "trigger_context": {"type": run.trigger},
        }
        if status not in ("pending", "skipped") and run.started_ns is not None:
            out["session_id"] = run.session_id()
            out["cas_run_extras"] = {
                "attempt": 1,
                "turn_id": run.turn_id(),
                "started_at": fmt(run.started_ns),
            }
        out["triggered_at"] = fmt(run.created_ns)
        out["created_at"] = fmt(run.created_ns)
        if status in TERMINAL:
            out["completed_at"] = fmt(run.completed_ns)
        # The docs say duration_ms is "present when completed"; failed runs also have a start
        # and an end, so we include it for them too (the exporter must cope with either).
        duration = run.duration_ms()
        if status in ("completed", "failed") and duration is not None:
            out["duration_ms"] = duration
        return out

    def status(self, run: Run, now: int) -> str:
        """Return the status at now."""
        return run.status_at(now)

    def finished(self, run: Run, now: int) -> Finished | None:
        """Return the run's final status, duration and error once it is terminal."""
        status = run.status_at(now)
        if status not in TERMINAL:
            return None
        ms = run.duration_ms()
        duration = None if ms is None else ms / 1000.0
        error = run.error_type if status == "failed" else None
        return Finished(run.completed_ns, status, duration, error)

    def last_success(self, dep: Deployment, now: int) -> float | None:
        """Return completed_at of the newest completed run."""
        dep.settle(now)
        return None if dep.last_success_ns is None else dep.last_success_ns / NS

    def in_flight(self, dep: Deployment, now: int) -> list[Run]:
        """Return pending and running runs."""
        dep.settle(now)
        return sorted(dep.in_flight, key=sort_key)
