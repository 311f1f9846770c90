"""G2, the record-only run shape: a run is `session_id` xor `error`, with no status of its own."""

from __future__ import annotations

from .shape import Finished
from .stamps import JSON, NS, fmt
from .world import Deployment, Run

SKIPPED_ERROR: JSON = {
    "type": "session_rate_limited_error",
    "message": "Session creation skipped: max_concurrent runs already active",
}


class G2Shape:
    """A G2 record is immutable: the run's outcome decides at creation whether its session was
    created (`session_id`) or not (`error`); what the session then does is in sessions.py."""

    name = "g2"
    filters_status = False  # G2 has no status filter; unknown parameters are ignored

    def run_json(self, run: Run, now: int) -> JSON:
        """Render the run record."""
        dep = run.dep
        trigger: JSON = {"type": run.trigger}
        if run.scheduled_ns is not None:
            trigger["scheduled_at"] = fmt(run.scheduled_ns, whole=True)
        error = self.error(run)
        return {
            "id": run.id,
            "type": "deployment_run",
            "deployment_id": dep.id,
            "agent": dep.agent_json(),
            "created_at": fmt(run.created_ns, whole=True),
            "session_id": run.session_id() if error is None else None,
            "error": error,
            "trigger_context": trigger,
        }

    @staticmethod
    def error(run: Run) -> JSON | None:
        """Return the record's error object, None when the run created a session."""
        if run.outcome == "failed" and run.error_type is not None:
            return run.dep.error_json(run.error_type)
        if run.outcome == "skipped":
            return dict(SKIPPED_ERROR)
        return None

    def status(self, run: Run, now: int) -> str:
        """Return completed (session created) or failed (error), as the record tells it."""
        return run.g2_status()

    def finished(self, run: Run, now: int) -> Finished | None:
        """A record is final at creation: no duration, the error type when it failed."""
        status = run.g2_status()
        error = None
        if status == "failed":
            error = run.error_type or "session_rate_limited_error"
        return Finished(run.created_ns, status, None, error)

    def last_success(self, dep: Deployment, now: int) -> float | None:
        """Return created_at (whole seconds, as rendered) of the newest run with a session."""
        for run in reversed(dep.runs):
            if run.outcome == "completed" and run.created_ns <= now:
                return float(run.created_ns // NS)
        return None

    def in_flight(self, dep: Deployment, now: int) -> list[Run]:
        """A record has no in-flight state."""
        return []
