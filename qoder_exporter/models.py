"""Tolerant parsing of the Qoder API's Deployment and Run JSON (both doc generations)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

STATUSES = ("pending", "running", "completed", "failed", "skipped")
TERMINAL = frozenset({"completed", "failed", "skipped"})
IN_FLIGHT = frozenset({"pending", "running"})
# The one string object per status: the store keeps a status per tracked run, and a string
# fresh from each JSON record would cost ~60 bytes more per run (11 MiB at 190k runs).
_CANONICAL = {s: s for s in STATUSES}
# The bounded values of the `trigger` label: trigger_context.type, anything else is "other".
TRIGGERS = ("schedule", "manual", "retry", "other")
_TRIGGER = {t: t for t in TRIGGERS if t != "other"}
# Run error.type values the API documents (qoder-api.md §5.2); any other value is "other",
# so a server inventing types cannot grow the label set.
RUN_ERROR_TYPES = (
    "environment_archived_error",
    "environment_not_found_error",
    "agent_archived_error",
    "vault_not_found_error",
    "vault_archived_error",
    "file_not_found_error",
    "memory_store_archived_error",
    "skill_not_found_error",
    "session_resource_not_found_error",
    "workspace_archived_error",
    "organization_disabled_error",
    "session_rate_limited_error",
    "session_creation_rejected_error",
    "self_hosted_resources_unsupported_error",
    "mcp_egress_blocked_error",
    "unknown_error",
    "other",
)

# Records may be this far ahead of the API's clock (its Date header) before they are refused.
MAX_CLOCK_SKEW = 300.0
# Ids go into request paths and the state file: nothing but these characters.
_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
# Every other string from the API that becomes a label value is cut to this length.
MAX_LABEL_LENGTH = 256

# RFC 3339 with 0-9 fractional digits; datetime.fromisoformat only takes up to 6 before 3.11.
_TS = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(Z|z|[+-]\d{2}:\d{2})$"
)


class ParseError(ValueError):
    """A record from the API that cannot be used; names the field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


# A run longer than a year is a bad record, not a run.
MAX_DURATION_MS = 366 * 86400 * 1000


def valid_id(value: object) -> bool:
    """True for an id that is safe in a URL path segment and as a label value."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def clean_text(value: str, limit: int = MAX_LABEL_LENGTH) -> str:
    """`value` cut to `limit` characters and made encodable as UTF-8.

    JSON may carry lone UTF-16 surrogates ("\\ud800"); one such character in a label value
    makes every render of /metrics raise UnicodeEncodeError. They become U+FFFD.
    """
    value = value[:limit]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return value


_RUN_ERROR_SET = frozenset(RUN_ERROR_TYPES)


def run_error_type(value: object) -> str:
    """A run's error.type as a bounded label: a documented type, else "other"."""
    if not isinstance(value, str) or not value:
        return "unknown_error"
    return value if value in _RUN_ERROR_SET else "other"


def parse_timestamp(value: object, field: str = "timestamp") -> float:
    """Parse an RFC 3339 timestamp into unix seconds."""
    if not isinstance(value, str):
        raise ParseError(field, f"expected an RFC 3339 string, got {type(value).__name__}")
    m = _TS.match(value)
    if not m:
        raise ParseError(field, f"not an RFC 3339 timestamp: {value[:40]!r}")
    date, hour, minute, second, frac, zone = m.groups()
    h, mi, sec = int(hour), int(minute), int(second)
    day = _day_start(date)
    if day is None or h > 23 or mi > 59:
        raise ParseError(field, f"not a valid date: {value[:40]!r}")
    offset = 0
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    fraction = int(frac) / 10 ** len(frac) if frac else 0.0
    # a leap second (":60") reads as :59, as datetime cannot hold it
    return day + (h * 3600 + mi * 60 + min(sec, 59)) - offset + fraction


# The feed brings hundreds of thousands of timestamps from a few days: each day's start is
# worked out (and the date checked) once. Bounded: a hostile server sending every date of
# history would otherwise grow it for good.
_DAYS: dict[str, float | None] = {}
_MAX_DAYS = 4096


def _day_start(date: str) -> float | None:
    """Unix time of 00:00 UTC on an "YYYY-MM-DD" date, or None if no such date."""
    known = _DAYS.get(date, _MISSING)
    if known is not _MISSING:
        return known  # type: ignore[return-value]
    try:
        start: float | None = datetime(
            int(date[0:4]), int(date[5:7]), int(date[8:10]), tzinfo=timezone.utc
        ).timestamp()
    except ValueError:
        start = None
    if len(_DAYS) >= _MAX_DAYS:
        _DAYS.clear()
    _DAYS[date] = start
    return start


_MISSING = object()


@dataclass(frozen=True, slots=True)
class Run:
    """One deployment run, normalised to the status-bearing (G1) view."""

    id: str
    deployment_id: str
    created_at: float
    status: str
    completed_at: float | None = None
    duration_s: float | None = None
    started_at: float | None = None
    error_type: str | None = None
    trigger: str | None = None
    attempt: int | None = None  # cas_run_extras.attempt, from 1
    triggered_at: float | None = None
    session_id: str | None = None  # the session the run created (bounded, printable)
    has_status: bool = True  # False: the record-only shape, status derived from the record

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True, slots=True)
class Deployment:
    """The fields of a deployment that the exporter publishes."""

    id: str
    name: str
    status: str
    agent_id: str
    schedule: str
    paused_reason: str | None = None
    consecutive_failures: int | None = None
    next_trigger_at: float | None = None
    created_at: float | None = None
    archived: bool = False
    agent_version: str = ""
    max_retries: int | None = None  # metadata.cas_config.config.max_retries
    upcoming_runs_at: tuple[float, ...] = ()  # schedule.upcoming_runs_at, sorted

    @property
    def manual(self) -> bool:
        """No schedule: the deployment only runs when someone triggers it."""
        return self.schedule == "manual"

    @property
    def next_trigger(self) -> float | None:
        """The earliest announced fire time: upcoming_runs_at, else stats.next_trigger_at."""
        return self.upcoming_runs_at[0] if self.upcoming_runs_at else self.next_trigger_at


def _str(data: dict[str, Any], key: str, kind: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ParseError(f"{kind}.{key}", "missing or not a non-empty string")
    return value


def _id(data: dict[str, Any], key: str, kind: str) -> str:
    value = _str(data, key, kind)
    if not valid_id(value):
        # It would go into a request path: "dep_x/../../admin" must not reach one.
        raise ParseError(f"{kind}.{key}", f"not an id: {clean_text(value, 40)!r}")
    return value


def _label(value: object, default: str) -> str:
    return clean_text(value) if isinstance(value, str) and value else default


def _opt_time(data: dict[str, Any], key: str, kind: str) -> float | None:
    value = data.get(key)
    return None if value is None else parse_timestamp(value, f"{kind}.{key}")


def parse_run(data: object, not_after: float | None = None) -> Run:
    """Parse one run record; raises ParseError naming the field at fault.

    The record-only (G2) shape has no status: a record with an error is failed at once; one
    with a session_id is running until its session says how it ended (sessions.py).

    A run with a time later than `not_after` (the API's clock plus a skew) is refused: one
    completed "in 2099" would hold the last success there and silence its alert for good.
    """
    if not isinstance(data, dict):
        raise ParseError("run", f"expected an object, got {type(data).__name__}")
    run_id = _id(data, "id", "run")
    deployment_id = _id(data, "deployment_id", "run")
    created_at = parse_timestamp(data.get("created_at"), "run.created_at")
    error = data.get("error")
    error_type: str | None = None
    if isinstance(error, dict):
        error_type = run_error_type(error.get("type"))
    elif error is not None:
        raise ParseError("run.error", "expected an object or null")
    trigger_ctx = data.get("trigger_context")
    trigger = trigger_ctx.get("type") if isinstance(trigger_ctx, dict) else None

    status = data.get("status")
    if status is None:
        status = _record_status(data, error_type)
    elif not isinstance(status, str) or status not in _CANONICAL:
        raise ParseError("run.status", f"unknown status {str(status)[:40]!r}")
    else:
        status = _CANONICAL[status]

    extras = data.get("cas_run_extras")
    started_at = (
        _opt_time(extras, "started_at", "run.cas_run_extras") if isinstance(extras, dict) else None
    )
    completed_at = _opt_time(data, "completed_at", "run")
    duration_ms = data.get("duration_ms")
    duration_s: float | None = None
    if duration_ms is not None:
        if isinstance(duration_ms, bool) or not isinstance(duration_ms, (int, float)):
            raise ParseError("run.duration_ms", "expected a number")
        # JSON allows integers of any size, and Python's parser reads NaN and Infinity: one
        # such value would poison the histogram's _sum for good.
        if not 0 <= duration_ms <= MAX_DURATION_MS:
            raise ParseError("run.duration_ms", "not a duration from 0 to a year")
        duration_s = duration_ms / 1000.0
    if not_after is not None:
        for name, when in (
            ("created_at", created_at),
            ("completed_at", completed_at),
            ("cas_run_extras.started_at", started_at),
        ):
            if when is not None and when > not_after:
                raise ParseError(f"run.{name}", "lies in the future of the API's clock")
    session_id = data.get("session_id")
    return Run(
        id=run_id,
        deployment_id=deployment_id,
        created_at=created_at,
        status=str(status),
        completed_at=completed_at,
        duration_s=duration_s,
        started_at=started_at,
        error_type=error_type if status == "failed" else None,
        trigger=trigger_label(trigger) if isinstance(trigger, str) else None,
        attempt=_opt_count(extras.get("attempt")) if isinstance(extras, dict) else None,
        triggered_at=_lenient_time(data.get("triggered_at")),
        session_id=session_id if _is_session_id(session_id) else None,
        has_status="status" in data,
    )


def _is_session_id(value: object) -> bool:
    # It goes into URL paths and the state file: an id like any other, or not followed.
    return valid_id(value)


def trigger_label(trigger: str | None) -> str:
    """The bounded `trigger` label of a run's trigger_context.type."""
    return _TRIGGER.get(trigger or "", "other")


def _opt_count(value: object) -> int | None:
    # A non-negative JSON integer below 2**53, else unknown (a bool is not a count).
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53:
        return value
    return None


def _record_status(data: dict[str, Any], error_type: str | None) -> str:
    if error_type is not None:
        return "failed"
    if _is_session_id(data.get("session_id")):
        return "running"  # until its session's turn is over
    raise ParseError("run.status", "no status, session_id or error: cannot tell the outcome")


def _schedule_text(schedule: object) -> str:
    if not isinstance(schedule, dict):
        return "manual"
    expression = schedule.get("expression")
    tz = schedule.get("timezone")
    if not isinstance(expression, str):
        return "unknown"
    text = f"{expression} ({tz})" if isinstance(tz, str) and tz else expression
    return clean_text(text)


def parse_deployment(data: object, not_after: float | None = None) -> Deployment:
    """Parse one deployment; unknown fields are ignored, optional ones may be missing.

    Every string that becomes a label value is made valid UTF-8 and cut to
    MAX_LABEL_LENGTH; a created_at later than `not_after` is dropped (it would make the
    deployment look new, and its history be counted as news).
    """
    if not isinstance(data, dict):
        raise ParseError("deployment", f"expected an object, got {type(data).__name__}")
    dep_id = _id(data, "id", "deployment")
    name = data.get("name")
    status = data.get("status")
    agent = data.get("agent")
    agent_id = agent.get("id") if isinstance(agent, dict) else None
    reason = data.get("paused_reason")
    paused_reason: str | None = None
    if isinstance(reason, dict):
        paused_reason = _label(reason.get("type"), "unknown")
    stats: Any = {}
    metadata = data.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("cas_config"), dict):
        stats = metadata["cas_config"].get("stats")
    stats = stats if isinstance(stats, dict) else {}
    failures = stats.get("consecutive_failures")
    next_trigger = stats.get("next_trigger_at")
    created = _lenient_time(data.get("created_at"))
    if created is not None and not_after is not None and created > not_after:
        created = None
    version = agent.get("version") if isinstance(agent, dict) else None
    return Deployment(
        id=dep_id,
        name=_label(name, dep_id),
        status=_label(status, "unknown"),
        agent_id=_label(agent_id, ""),
        schedule=_schedule_text(data.get("schedule")),
        paused_reason=paused_reason,
        consecutive_failures=failures
        if isinstance(failures, int) and not isinstance(failures, bool) and 0 <= failures < 2**53
        else None,
        next_trigger_at=_lenient_time(next_trigger),
        created_at=created,
        archived=data.get("archived_at") is not None,
        agent_version=_version_text(version),
        max_retries=_opt_count(_config(metadata).get("max_retries")),
        upcoming_runs_at=_upcoming(data.get("schedule")),
    )


# Bounds on what a deployment record may announce: the API sends at most 5 fire times.
MAX_UPCOMING = 10


def _config(metadata: object) -> dict[str, Any]:
    cas = metadata.get("cas_config") if isinstance(metadata, dict) else None
    config = cas.get("config") if isinstance(cas, dict) else None
    return config if isinstance(config, dict) else {}


def _upcoming(schedule: object) -> tuple[float, ...]:
    times = schedule.get("upcoming_runs_at") if isinstance(schedule, dict) else None
    if not isinstance(times, list):
        return ()
    parsed = (_lenient_time(t) for t in times[:MAX_UPCOMING])
    return tuple(sorted(t for t in parsed if t is not None))


def _version_text(version: object) -> str:
    # agent.version is an integer; anything else is shown only if short and plain.
    if isinstance(version, int) and not isinstance(version, bool):
        return str(version)[:20]
    if isinstance(version, str) and len(version) <= 20 and version.isprintable():
        return version
    return ""


def _lenient_time(value: object) -> float | None:
    # Optional extras must never make a deployment unusable.
    try:
        return parse_timestamp(value) if value is not None else None
    except ParseError:
        return None
