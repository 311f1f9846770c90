"""Sessions: the session each run with a `session_id` created, its status machine and events.

A session's whole life is planned once from the seed and the run, like a run's timeline: created
with the run, idle (turn not started) until the run's start, running until the run's end (with an
optional transient rescheduling), then the outcome's final events. The world's random streams are
not touched, so adding sessions changes no run.

Outcomes (SESSION_OUTCOMES), each a way a turn ends (qoder-sessions.md §4.5):
  end_turn, stop_sequence           status_idle, success
  retries_exhausted                 session.error(exhausted), status_idle(retries_exhausted)
  budget_reached, cancelled         status_idle with that stop reason
  requires_action                   agent.custom_tool_use, status_idle(requires_action): blocked
  error_terminal                    session.error(terminal), status_terminated
  terminated                        status_terminated
  never                             stays running forever
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .stamps import JSON, MS, NS, fmt, new_id
from .world import Run

SESSION_OUTCOMES = (
    "end_turn",
    "stop_sequence",
    "retries_exhausted",
    "budget_reached",
    "cancelled",
    "requires_action",
    "error_terminal",
    "terminated",
    "never",
)
SESSION_STATUSES = ("rescheduling", "running", "idle", "terminated")
SESSION_ERROR_TYPES = (
    "unknown_error",
    "model_overloaded_error",
    "model_rate_limited_error",
    "model_request_failed_error",
    "mcp_connection_failed_error",
    "mcp_authentication_failed_error",
    "billing_error",
    "credential_host_unreachable_error",
)
IDLE_OUTCOMES = frozenset(SESSION_OUTCOMES) - {"error_terminal", "terminated", "never"}
# the truth's (outcome, reason) of each session outcome (reason None: a success)
VERDICTS: dict[str, tuple[str, str | None]] = {
    "end_turn": ("completed", None),
    "stop_sequence": ("completed", None),
    "retries_exhausted": ("failed", "retries_exhausted"),
    "budget_reached": ("failed", "budget_reached"),
    "cancelled": ("failed", "cancelled"),
    "requires_action": ("failed", "blocked"),
    "error_terminal": ("failed", "session_error"),
    "terminated": ("failed", "terminated"),
    "never": ("unknown", None),
}
DEFAULT_WEIGHTS: dict[str, float] = {
    "end_turn": 70,
    "stop_sequence": 4,
    "retries_exhausted": 5,
    "budget_reached": 4,
    "cancelled": 3,
    "requires_action": 4,
    "error_terminal": 4,
    "terminated": 3,
    "never": 3,
}


@dataclass
class SessionOptions:
    """How sessions look in one world (the parts the docs leave open)."""

    stop_reason: str = "object"  # "object": {"type": ...}; "string": the bare value
    usage: str = "tokens"  # "tokens": token fields; "credits": {"total_credits"} only
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    reschedule_rate: float = 0.1  # share of sessions with a transient rescheduling

    def __post_init__(self) -> None:
        if self.stop_reason not in ("object", "string"):
            raise ValueError("stop_reason must be 'object' or 'string'")
        if self.usage not in ("tokens", "credits"):
            raise ValueError("usage must be 'tokens' or 'credits'")
        check_weights(self.weights)


def check_weights(weights: dict[str, float]) -> None:
    """Reject unknown outcomes and weights that cannot be drawn from."""
    unknown = set(weights) - set(SESSION_OUTCOMES)
    if unknown:
        raise ValueError(f"unknown session outcomes {sorted(unknown)}; use {SESSION_OUTCOMES}")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError("session outcome weights must be >= 0 with a positive sum")


@dataclass(frozen=True)
class Event:
    """One persisted session event."""

    id: str
    type: str
    processed_ns: int
    extra: JSON

    def json(self) -> JSON:
        """Render the event."""
        return {
            "id": self.id,
            "type": self.type,
            "processed_at": fmt(self.processed_ns),
            **self.extra,
        }


@dataclass(frozen=True)
class Tokens:
    """Final token usage of a session's turn."""

    input: int
    output: int
    cache_read: int
    cache_5m: int
    cache_1h: int

    def cents(self) -> int:
        """Credits in hundredths: the API floors credits to 2 decimals."""
        raw = 10 * (self.input + 5 * self.output + self.cache_5m + self.cache_1h) + self.cache_read
        return raw // 1000

    def credits(self) -> float:
        """Credits as the API would show them."""
        return self.cents() / 100

    def by_kind(self) -> dict[str, int]:
        """Tokens by the exporter's kind label."""
        return {
            "input": self.input,
            "output": self.output,
            "cache_read": self.cache_read,
            "cache_creation": self.cache_5m + self.cache_1h,
        }


class Session:
    """The planned life of one run's session."""

    def __init__(self, run: Run, seed: int, options: SessionOptions) -> None:
        assert run.started_ns is not None
        rng = random.Random(f"{seed}:session:{run.id}")
        weights = run.dep.spec.session_outcomes or options.weights
        names = list(weights)
        self.run = run
        self.id = run.session_id()
        self.created_ns = run.created_ns
        self.started_ns = run.started_ns
        self.outcome = rng.choices(names, [weights[n] for n in names])[0]
        self.end_ns: int | None = None if self.outcome == "never" else run.completed_ns
        self.error_type: str | None = None
        if self.outcome in ("retries_exhausted", "error_terminal"):
            self.error_type = rng.choice(SESSION_ERROR_TYPES)
        self.tokens = Tokens(
            rng.randint(2_000, 200_000),
            rng.randint(200, 20_000),
            rng.randint(0, 300_000),
            rng.randint(0, 5_000),
            rng.randint(0, 2_000),
        )
        self.options = options
        busy_until = self.end_ns if self.end_ns is not None else run.completed_ns
        span = busy_until - self.started_ns
        # rescheduling only where it fits well inside the turn
        self.resched: tuple[int, int] | None = None
        if rng.random() < options.reschedule_rate and span > 100 * MS:
            self.resched = (self.started_ns + span * 3 // 10, self.started_ns + span * 4 // 10)
        self.active_total_ns = span - (self.resched[1] - self.resched[0] if self.resched else 0)
        self.events = self._plan(rng)

    def _plan(self, rng: random.Random) -> list[Event]:
        """Lay out every event this session will ever have."""
        events: list[Event] = []

        def add(ns: int, kind: str, **extra: object) -> str:
            event_id = new_id("evt_", ns // MS, rng.getrandbits(74))
            events.append(Event(event_id, kind, ns, dict(extra)))
            return event_id

        start = self.started_ns
        add(start, "session.status_running")
        add(start + MS, "user.message", content=[{"type": "text", "text": "scheduled run"}])
        if self.resched is not None:
            lo, hi = self.resched
            kind = rng.choice(("model_overloaded_error", "model_rate_limited_error"))
            add(lo, "session.error", error=_error(kind, "retrying"))
            add(lo + MS, "session.status_rescheduled")
            add(hi, "session.status_running")
        end = self.end_ns
        if end is None:
            return events
        outcome = self.outcome
        if outcome in ("end_turn", "stop_sequence", "budget_reached", "cancelled"):
            add(end - 2 * MS, "agent.message", content=[{"type": "text", "text": "done"}])
        if outcome == "requires_action":
            tool = add(end - MS, "agent.custom_tool_use", name="confirm_deploy", input={})
            add(end, "session.status_idle", stop_reason=self._stop_reason(outcome, [tool]))
        elif outcome in IDLE_OUTCOMES:
            if outcome == "retries_exhausted":
                add(end - MS, "session.error", error=_error(self.error_type, "exhausted"))
            add(end, "session.status_idle", stop_reason=self._stop_reason(outcome, None))
        else:
            if outcome == "error_terminal":
                add(end - MS, "session.error", error=_error(self.error_type, "terminal"))
            add(end, "session.status_terminated")
        return events

    def _stop_reason(self, kind: str, event_ids: list[str] | None) -> object:
        """A stop reason in the world's style."""
        if self.options.stop_reason == "string":
            return kind
        reason: JSON = {"type": kind}
        if event_ids is not None:
            reason["event_ids"] = event_ids
        return reason

    # -- state at a time

    def status(self, now: int) -> str:
        """Return the session status at now."""
        if now < self.started_ns:
            return "idle"  # created, first turn not started yet
        if self.end_ns is not None and now >= self.end_ns:
            return "terminated" if self.outcome in ("error_terminal", "terminated") else "idle"
        if self.resched is not None and self.resched[0] <= now < self.resched[1]:
            return "rescheduling"
        return "running"

    def events_at(self, now: int) -> list[Event]:
        """Return the events processed by now, in order."""
        return [e for e in self.events if e.processed_ns <= now]

    def active_ns(self, now: int) -> int:
        """Time spent running up to now (rescheduling excluded)."""
        until = now if self.end_ns is None else min(now, self.end_ns)
        busy = max(0, until - self.started_ns)
        if self.resched is not None:
            lo, hi = self.resched
            busy -= max(0, min(until, hi) - lo)
        return busy

    def usage_json(self, now: int) -> JSON:
        """Cumulative usage so far, in the world's documented form."""
        total = self.active_total_ns
        share = min(1.0, self.active_ns(now) / total) if total else 1.0
        t = self.tokens
        if self.options.usage == "credits":
            cents = t.cents() if share >= 1 else int(t.cents() * share)
            if cents <= 0:
                return {}  # omitted when there is no data
            # trailing zeros dropped: 6 and 5.9, not 6.0 and 5.90
            return {"total_credits": cents // 100 if cents % 100 == 0 else cents / 100}
        return {
            "input_tokens": int(t.input * share),
            "output_tokens": int(t.output * share),
            "cache_read_input_tokens": int(t.cache_read * share),
            "cache_creation": {
                "ephemeral_5m_input_tokens": int(t.cache_5m * share),
                "ephemeral_1h_input_tokens": int(t.cache_1h * share),
            },
        }

    def json(self, now: int) -> JSON:
        """Render the session as of now."""
        run, dep = self.run, self.run.dep
        seen = self.events_at(now)
        updated = seen[-1].processed_ns if seen else self.created_ns
        frozen = now if self.status(now) != "terminated" else updated
        return {
            "id": self.id,
            "type": "session",
            "status": self.status(now),
            "deployment_id": dep.id,
            "agent": dep.agent_json(),
            "agent_id": dep.agent_id,
            "environment_id": dep.environment_id,
            "title": f"{dep.spec.name} run {run.id}",
            "archived_at": None,
            "metadata": {},
            "resources": [],
            "vault_ids": [],
            "stats": {
                "active_seconds": self.active_ns(now) / NS,
                "duration_seconds": max(0, frozen - self.created_ns) / NS,
            },
            "usage": self.usage_json(now),
            "created_at": fmt(self.created_ns),
            "updated_at": fmt(updated),
        }


def _error(kind: str | None, retry: str) -> JSON:
    """A session.error's error object."""
    kind = kind or "unknown_error"
    return {
        "type": kind,
        "message": f"{kind.replace('_', ' ')} during the turn",
        "retry_status": {"type": retry},
    }


@dataclass(frozen=True)
class RunOutcome:
    """The truth of one run as an exporter following sessions should report it."""

    run_id: str
    deployment_id: str
    created_at: float  # as rendered (G2: whole seconds)
    session_id: str | None
    outcome: str  # completed, failed, unknown (still in flight, or never finishes)
    reason: str | None  # retries_exhausted, budget_reached, blocked, terminated, cancelled,
    # session_error; None for successes and for runs that failed to create a session
    error_type: str | None  # the run's error.type, or the deciding session.error's type
    finished_at: float | None  # processed_at of the deciding event
    duration_s: float | None  # first status_idle.processed_at - created_at (None: no idle)
    active_s: float | None  # stats.active_seconds at the end
    tokens: dict[str, int]  # by kind, present in the token usage form
    credits: float | None  # present in the credits usage form


def has_session(run: Run) -> bool:
    """Whether the run's record carries a session_id (G2: session_id xor error)."""
    return run.started_ns is not None and run.outcome == "completed"


class SessionStore:
    """Sessions by id; each planned on first use and kept, so answers never change."""

    def __init__(
        self, seed: int, options: SessionOptions, all_runs: Callable[[], Iterable[Run]]
    ) -> None:
        self.seed = seed
        self.options = options
        # The id index is built on the first lookup by session id: a world whose sessions are
        # never asked for (the bench's thousands of deployments) pays nothing for them.
        self._all_runs = all_runs
        self._runs: dict[str, Run] | None = None  # session id -> run
        self._plans: dict[str, Session] = {}  # run id -> plan
        self.lost: set[str] = set()  # session ids that answer 404 (the "404 session" fault)

    def add(self, run: Run) -> None:
        """Register a new run's session, if it has one."""
        if self._runs is not None and has_session(run):
            self._runs[run.session_id()] = run

    def remove(self, run: Run) -> None:
        """Forget a deleted run's session."""
        self._plans.pop(run.id, None)
        if self._runs is not None and has_session(run):
            self._runs.pop(run.session_id(), None)

    def listed(self, run: Run) -> bool:
        """Whether the run has a session that the API shows."""
        return has_session(run) and run.session_id() not in self.lost

    def run_of(self, session_id: str) -> Run | None:
        """Return the run whose session this is, unless unknown or lost."""
        if session_id in self.lost:
            return None
        if self._runs is None:
            self._runs = {r.session_id(): r for r in self._all_runs() if has_session(r)}
        return self._runs.get(session_id)

    def plan(self, run: Run) -> Session:
        """Return the run's session (the run must have one)."""
        plan = self._plans.get(run.id)
        if plan is None:
            plan = self._plans[run.id] = Session(run, self.seed, self.options)
        return plan

    def get(self, session_id: str) -> Session | None:
        """Return a live session by id."""
        run = self.run_of(session_id)
        return None if run is None else self.plan(run)

    def outcome(self, run: Run, now: int, whole_created: bool) -> RunOutcome:
        """The truth of one run as of now."""
        created = run.created_ns - run.created_ns % NS if whole_created else run.created_ns
        base = RunOutcome(
            run.id,
            run.dep.id,
            created / NS,
            None,
            "failed",
            None,
            run.error_type,
            run.created_ns / NS,
            None,
            None,
            {},
            None,
        )
        if not has_session(run):
            error = run.error_type or "session_rate_limited_error"
            return dataclasses.replace(base, error_type=error)
        session_id = run.session_id()
        unknown = dataclasses.replace(
            base, session_id=session_id, outcome="unknown", error_type=None, finished_at=None
        )
        if session_id in self.lost:
            return unknown
        s = self.plan(run)
        if s.end_ns is None or now < s.end_ns:
            return unknown
        outcome, reason = VERDICTS[s.outcome]
        duration = (s.end_ns - created) / NS if s.outcome in IDLE_OUTCOMES else None
        usage_tokens = self.options.usage == "tokens"
        return dataclasses.replace(
            unknown,
            outcome=outcome,
            reason=reason,
            error_type=s.error_type,
            finished_at=s.end_ns / NS,
            duration_s=duration,
            active_s=s.active_ns(s.end_ns) / NS,
            tokens=s.tokens.by_kind() if usage_tokens else {},
            credits=None if usage_tokens else s.tokens.credits(),
        )
