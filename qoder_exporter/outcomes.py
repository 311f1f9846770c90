"""How a run ended, from its session: pure classification of session answers. No I/O.

A record-only run (`session_id` xor `error`) only says its session was created; how its turn
ended is in the session's events (qoder-sessions.md §4.5-4.6). Everything here takes parsed
JSON, bounds what it keeps, and never raises on a hostile value: what cannot be read is
`unknown`, never a crash.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .models import ParseError, Run, parse_timestamp

MODES = ("auto", "always", "never")
# The bounded `reason` label of a failure a session told (DESIGN.md §3.1).
REASONS = (
    "retries_exhausted",
    "budget_reached",
    "blocked",
    "terminated",
    "cancelled",
    "session_error",
    "unknown",
)
TOKEN_KINDS = ("input", "output", "cache_read", "cache_creation")
# The events that decide an outcome: one filtered call per finished run (order=desc).
DECIDING_EVENTS = ("session.status_idle", "session.error", "session.status_terminated")
EVENTS_LIMIT = 10
SUCCESS_STOPS = frozenset({"end_turn", "stop_sequence"})
FAILURE_STOPS = {
    "retries_exhausted": "retries_exhausted",
    "budget_reached": "budget_reached",
    "cancelled": "cancelled",
    # An unattended run waiting on a tool confirmation is stuck: it will not finish.
    "requires_action": "blocked",
}
FATAL_RETRY = frozenset({"exhausted", "terminal"})
IN_PROGRESS = frozenset({"running", "rescheduling"})
_MAX_COUNT = 2**53
_MAX_CREDITS = 1e12


@dataclass(frozen=True, slots=True)
class Verdict:
    """The end of a run's turn: (completed, None) or (failed, reason)."""

    status: str
    reason: str | None
    finished_at: float | None  # processed_at of the deciding event
    duration_s: float | None  # first status_idle after the run - run created_at


@dataclass(frozen=True, slots=True)
class Usage:
    tokens: tuple[tuple[str, int], ...] = ()
    credits: float | None = None
    list_cost_usd: float | None = None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What a session object tells (GET /sessions or /sessions/{id})."""

    id: str
    status: str
    active_seconds: float | None
    usage: Usage


def apply_mode(run: Run, mode: str) -> Run:
    """The run as the `sessions` mode wants it counted.

    Only a run left with a session_id is followed (it stays running until resolved):
    auto follows runs without a status of their own, always every run with a session,
    never none (a record-only run with a session counts as completed when it appears,
    the behaviour before sessions were followed).
    """
    if run.session_id is None:
        return run
    if mode == "always" or (mode == "auto" and not run.has_status):
        return run if run.status == "running" else dataclasses.replace(run, status="running")
    if not run.has_status:  # never
        return dataclasses.replace(
            run, status="completed", completed_at=run.created_at, session_id=None
        )
    return _without_session(run)


def _without_session(run: Run) -> Run:
    # dataclasses.replace, spelt out: every run of a first sync comes through here.
    return Run(
        id=run.id,
        deployment_id=run.deployment_id,
        created_at=run.created_at,
        status=run.status,
        completed_at=run.completed_at,
        duration_s=run.duration_s,
        started_at=run.started_at,
        error_type=run.error_type,
        trigger=run.trigger,
        attempt=run.attempt,
        triggered_at=run.triggered_at,
        session_id=None,
        has_status=run.has_status,
    )


def stop_reason_type(value: object) -> str | None:
    """`stop_reason` as a plain string or an object `{type}`; None when neither."""
    if isinstance(value, dict):
        value = value.get("type")
    if isinstance(value, str) and 0 < len(value) <= 64:
        return value
    return None


def classify_stop_reason(value: object) -> tuple[str, str | None]:
    """(completed, None) or (failed, reason) for a status_idle's stop_reason; total."""
    kind = stop_reason_type(value)
    if kind in SUCCESS_STOPS:
        return "completed", None
    if kind is not None and kind in FAILURE_STOPS:
        return "failed", FAILURE_STOPS[kind]
    return "failed", "unknown"


def _event_time(event: dict[str, Any]) -> float | None:
    try:
        return parse_timestamp(event.get("processed_at"), "event.processed_at")
    except ParseError:
        return None


def _fatal(event: dict[str, Any]) -> bool:
    error = event.get("error")
    retry = error.get("retry_status") if isinstance(error, dict) else None
    kind = retry.get("type") if isinstance(retry, dict) else retry
    return isinstance(kind, str) and kind in FATAL_RETRY


def classify_session(status: object, events: object, created_at: float) -> Verdict | None:
    """How the run created at created_at ended, or None while its turn is not over.

    status is the session's; events its deciding events (any order). Only events processed
    at or after the run's creation count: an idle session with no status_idle since has
    not started the run's turn yet. The newest status_idle's stop_reason decides; a fatal
    session.error (retry_status exhausted or terminal) turns a success into session_error;
    without a status_idle, a terminated session failed (session_error after a fatal error,
    else terminated).
    """
    if status in IN_PROGRESS:
        return None
    idles: list[tuple[float, dict[str, Any]]] = []
    ended: float | None = None
    fatal: float | None = None
    for event in events if isinstance(events, list) else []:
        if not isinstance(event, dict):
            continue
        at = _event_time(event)
        if at is None or at < created_at:
            continue
        kind = event.get("type")
        if kind == "session.status_idle":
            idles.append((at, event))
        elif kind == "session.status_terminated":
            ended = at if ended is None else min(ended, at)
        elif kind == "session.error" and _fatal(event):
            fatal = at if fatal is None else max(fatal, at)
    if idles:
        idles.sort(key=lambda item: item[0])
        last_at, last = idles[-1]
        outcome, reason = classify_stop_reason(last.get("stop_reason"))
        if outcome == "completed" and fatal is not None and fatal <= last_at:
            outcome, reason = "failed", "session_error"
        return Verdict(outcome, reason, last_at, idles[0][0] - created_at)
    if status == "terminated" or ended is not None:
        reason = "session_error" if fatal is not None else "terminated"
        return Verdict("failed", reason, ended if ended is not None else fatal, None)
    return None


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_COUNT:
        return value
    return None


def _number(value: object, top: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    # + 0.0: a JSON -0.0 is 0 (the exposition would write "-0.0", and the cached body takes
    # -0.0 and 0.0 for the same value).
    number = float(value) + 0.0
    return number if math.isfinite(number) and 0 <= number <= top else None


def parse_usage(value: object) -> Usage:
    """The session's cumulative usage: whichever documented fields are present and sane."""
    if not isinstance(value, dict):
        return Usage()
    tokens: list[tuple[str, int]] = []
    for kind, key in (
        ("input", "input_tokens"),
        ("output", "output_tokens"),
        ("cache_read", "cache_read_input_tokens"),
    ):
        n = _count(value.get(key))
        if n is not None:
            tokens.append((kind, n))
    creation = _cache_creation(value)
    if creation is not None:
        tokens.append(("cache_creation", creation))
    return Usage(
        tuple(tokens), _number(value.get("total_credits"), _MAX_CREDITS), _list_cost(value)
    )


def _cache_creation(usage: dict[str, Any]) -> int | None:
    # Either an object of ephemeral token counts (SDK) or a flat count (model_usage style).
    nested = usage.get("cache_creation")
    if isinstance(nested, dict):
        parts = [_count(v) for v in nested.values()]
        known = [p for p in parts if p is not None]
        return sum(known) if known else None
    return _count(usage.get("cache_creation_input_tokens"))


def _list_cost(usage: dict[str, Any]) -> float | None:
    # {amount: "2500", currency: "USD"}: minor units as a string; only USD is exported.
    cost = usage.get("list_cost")
    if not isinstance(cost, dict) or cost.get("currency") != "USD":
        return None
    amount = cost.get("amount")
    if isinstance(amount, str) and 0 < len(amount) <= 15 and amount.isdigit():
        return int(amount) / 100
    return None


def parse_session(value: object) -> SessionInfo | None:
    """A session object, or None when it has no usable id."""
    if not isinstance(value, dict):
        return None
    session_id = value.get("id")
    if not isinstance(session_id, str) or not 0 < len(session_id) <= 128:
        return None
    status = value.get("status")
    stats = value.get("stats")
    active = _number(stats.get("active_seconds"), 1e9) if isinstance(stats, dict) else None
    return SessionInfo(
        session_id,
        status if isinstance(status, str) and len(status) <= 32 else "unknown",
        active,
        parse_usage(value.get("usage")),
    )


def not_started(info: SessionInfo) -> bool:
    """An idle session that never ran: its first turn has not begun (no events call needed)."""
    return info.status == "idle" and info.active_seconds == 0
