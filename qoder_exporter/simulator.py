"""A deterministic local Qoder Cloud Agents API (deployments and their runs) for demos and tests."""

from __future__ import annotations

import argparse
import bisect
import calendar
import contextlib
import dataclasses
import datetime
import email.utils
import fractions
import json
import random
import re
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

JSON = dict[str, Any]

BASE_PATH = "/api/v1/cloud"
DEFAULT_START = 1781395200.0  # 2026-06-14T00:00:00Z, the day the doc examples were captured
STATUSES = ("pending", "running", "completed", "failed", "skipped")
TERMINAL = frozenset({"completed", "failed", "skipped"})
ENDPOINTS = (
    "list_deployments",
    "get_deployment",
    "list_runs",
    "list_all_runs",
    "get_run",
    "get_run_global",
    "create_run",
    "unknown",
)
FAULT_KINDS = ("500", "502", "503", "429", "reset", "malformed", "truncated", "slow")
DEFAULT_ERROR_TYPES = ("unknown_error", "session_rate_limited_error", "environment_not_found_error")

_NS = 1_000_000_000
_MS = 1_000_000
_INF = 1 << 62  # "never" as an int, so event times stay integer nanoseconds
_POW10: tuple[int, ...] = tuple(int(10**i) for i in range(10))
_STUCK_NS = 10 * 86400 * _NS
_AUTH_MESSAGE = "Invalid API key or token."

_ERROR_MESSAGES = {
    "unknown_error": "An unexpected error occurred while creating the session",
    "session_rate_limited_error": "Session creation was rate limited; try again later",
    "environment_not_found_error": "environment {env} not found",
    "environment_archived_error": "environment {env} is archived",
    "agent_archived_error": "agent {agent} is archived",
}

_NAMES = (
    "daily-status-report",
    "pr-triage",
    "issue-labeler",
    "flaky-test-hunter",
    "docs-sync",
    "security-scan",
    "changelog-writer",
    "backlog-grooming",
    "ci-failure-digest",
    "license-check",
)

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:[Zz]|([+\- ])(\d{2}):(\d{2}))\Z"
)


# ---------------------------------------------------------------- clocks


class ManualClock:
    """A clock that only moves when told to, so tests control time without sleeping."""

    def __init__(self, start: float) -> None:
        # Kept as an exact fraction: summing many small float steps (0.1 s, 1/3 s) would drift by
        # milliseconds from one jump of the same total and so break step-size independence.
        self._t = fractions.Fraction(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        """Return the current simulated unix time in seconds."""
        return float(self._t)

    def advance(self, seconds: float) -> None:
        """Move the clock forward by `seconds`."""
        with self._lock:
            self._t += fractions.Fraction(seconds)

    def set(self, t: float) -> None:
        """Jump the clock to `t`, backwards too."""
        with self._lock:
            self._t = fractions.Fraction(t)


class RealClock:
    """The wall clock, for the demo and standalone modes."""

    def now(self) -> float:
        """Return time.time()."""
        return time.time()


# ---------------------------------------------------------------- helpers


def _to_ns(t: float) -> int:
    """Convert unix seconds to integer nanoseconds."""
    return round(t * _NS)


def _fmt(ns: int, whole: bool = False) -> str:
    """Format ns as RFC 3339 UTC, Go RFC3339Nano style (trailing zeros trimmed) unless whole."""
    sec, frac = divmod(ns, _NS)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    if frac and not whole:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def _parse_rfc3339(text: str) -> int | None:
    """Parse an RFC 3339 timestamp (0-9 fractional digits) to unix ns, or None if malformed."""
    m = _RFC3339.match(text.strip())
    if not m:
        return None
    year, month, day, hour, minute, sec = (int(m.group(i)) for i in range(1, 7))
    try:
        datetime.datetime(year, month, day, hour, minute, sec)
    except ValueError:
        return None
    ns = calendar.timegm((year, month, day, hour, minute, sec, 0, 0, 0)) * _NS
    if m.group(7):
        ns += int(m.group(7).ljust(9, "0"))
    if m.group(8):
        # a raw "+" in a query string arrives decoded as a space
        sign = -1 if m.group(8) == "-" else 1
        ns -= sign * (int(m.group(9)) * 3600 + int(m.group(10)) * 60) * _NS
    return ns


def _new_id(prefix: str, ms: int, rand: int) -> str:
    """Build a UUIDv7-style id: 48-bit unix ms, version 7, variant 8-b, 74 random bits."""
    rand_a = (rand >> 62) & 0xFFF
    rand_b = rand & ((1 << 62) - 1)
    tail = rand_b & ((1 << 60) - 1)
    return f"{prefix}{ms & 0xFFFFFFFFFFFF:012x}7{rand_a:03x}{0x8 | (rand_b >> 60):x}{tail:015x}"


def _quantize(ns: int, digits: int) -> int:
    """Drop sub-second precision below `digits` fractional digits (0, 3, 6 or 9)."""
    q = _POW10[9 - digits]
    return ns - ns % q


def _cron_for(interval_s: float) -> str:
    """Return a plausible 5-field cron expression for a fixed interval."""
    # 5-field cron has minute resolution; sub-minute demo intervals are shown as "every minute"
    # and intervals that cron cannot express exactly get the nearest minute step.
    minutes = max(1, round(interval_s / 60))
    if minutes == 1:
        return "* * * * *"
    if minutes < 60:
        return f"*/{minutes} * * * *"
    if minutes % 1440 == 0:
        days = minutes // 1440
        return "0 0 * * *" if days == 1 else f"0 0 */{days} * *"
    if minutes % 60 == 0:
        hours = minutes // 60
        return "0 * * * *" if hours == 1 else f"0 */{hours} * * *"
    return f"{minutes % 60} * * * *"


class _Keyed(Protocol):
    id: str
    created_ns: int


_K = TypeVar("_K", bound=_Keyed)


def _key(item: _Keyed) -> tuple[int, str]:
    """Sort key of list items: creation time, ties broken by id."""
    return (item.created_ns, item.id)


def _page(
    items: list[_K],
    lo: int,
    hi: int,
    match: Callable[[_K], bool],
    limit: int,
    cursor: tuple[str, tuple[int, str]] | None,
) -> tuple[list[_K], bool]:
    """Select one newest-first page from items[lo:hi] (sorted ascending) honouring a cursor."""
    backward = cursor is not None and cursor[0] == "before"
    if cursor is not None:
        if backward:
            lo = max(lo, bisect.bisect_right(items, cursor[1], key=_key))
        else:
            hi = min(hi, bisect.bisect_left(items, cursor[1], key=_key))
    out: list[_K] = []
    indices = range(lo, hi) if backward else range(hi - 1, lo - 1, -1)
    for i in indices:
        if match(items[i]):
            out.append(items[i])
            if len(out) > limit:
                break
    has_more = len(out) > limit
    out = out[:limit]
    if backward:
        out.reverse()
    return out, has_more


# ---------------------------------------------------------------- world model


@dataclass
class DeploymentSpec:
    """How one simulated deployment behaves."""

    name: str
    interval_s: float | None = 600.0
    manual_rate_per_hour: float = 0.0
    failure_rate: float = 0.1
    pending_s: tuple[float, float] = (1.0, 10.0)
    duration_s: tuple[float, float] = (30.0, 300.0)
    max_concurrent: int = 1
    paused: bool = False
    paused_reason: dict[str, Any] | None = None
    stuck: bool = False
    succeeds_until: float | None = None
    error_types: tuple[str, ...] = DEFAULT_ERROR_TYPES
    # Extension: when paused, the unix time it was paused at (runs happen before it); None means
    # paused since creation.
    paused_at: float | None = None


class _Run:
    """One run whose whole timeline is fixed at creation; its status is derived from the time."""

    __slots__ = (
        "aux",
        "completed_ns",
        "created_ns",
        "dep",
        "error_type",
        "id",
        "outcome",
        "scheduled_ns",
        "started_ns",
        "trigger",
    )

    def __init__(
        self,
        run_id: str,
        dep: _Deployment,
        created_ns: int,
        trigger: str,
        scheduled_ns: int | None,
    ) -> None:
        self.id = run_id
        self.dep = dep
        self.created_ns = created_ns
        self.trigger = trigger
        self.scheduled_ns = scheduled_ns
        self.started_ns: int | None = None
        self.completed_ns = created_ns
        self.outcome = "skipped"
        self.error_type: str | None = None
        self.aux = 0  # random bits for the session and turn ids, formatted only when rendered

    def status_at(self, now_ns: int) -> str:
        """Return the G1 status at now_ns."""
        if self.started_ns is None:
            return "skipped"
        if now_ns < self.started_ns:
            return "pending"
        if now_ns < self.completed_ns:
            return "running"
        return self.outcome

    def g2_status(self) -> str:
        """Return the G2 record outcome: completed (session created) or failed (error)."""
        return "completed" if self.outcome == "completed" else "failed"

    def duration_ms(self) -> int | None:
        """Return completed_at - started_at in whole ms (None for skipped runs)."""
        if self.started_ns is None:
            return None
        return (self.completed_ns - self.started_ns) // _MS

    def session_id(self) -> str:
        """Return the id of the session this run created."""
        ms = (self.started_ns or self.created_ns) // _MS
        return _new_id("sess_", ms, self.aux & ((1 << 74) - 1))

    def turn_id(self) -> str:
        """Return the id of the first turn of the run's session."""
        ms = (self.started_ns or self.created_ns) // _MS
        return _new_id("turn_", ms + 5, self.aux >> 74)


class _Deployment:
    """A deployment, its run history and the state of its trigger streams."""

    def __init__(
        self, index: int, spec: DeploymentSpec, created_ns: int, start_ns: int, seed: int
    ) -> None:
        self.index = index
        self.spec = spec
        self.rng = random.Random(f"{seed}:{index}")
        self.created_ns = created_ns
        self.start_ns = start_ns
        rng = self.rng
        self.id = _new_id("dep_", created_ns // _MS, rng.getrandbits(74))
        agent_ms = created_ns // _MS - rng.randrange(86400_000, 30 * 86400_000)
        self.agent_id = _new_id("agent_", agent_ms, rng.getrandbits(74))
        self.agent_version = rng.randint(1, 4)
        env_ms = agent_ms - rng.randrange(3600_000, 86400_000)
        self.environment_id = _new_id("env_", env_ms, rng.getrandbits(74))
        self.runs: list[_Run] = []
        self.in_flight: list[_Run] = []  # not yet settled: pending or running at the settle time
        self.total_failures = 0
        self.consecutive_failures = 0
        self.last_success_ns: int | None = None
        self.last_scheduled_ns: int | None = None
        self.stuck_used = False
        self.last_event_ns = created_ns
        if spec.paused:
            self.end_ns = created_ns if spec.paused_at is None else _to_ns(spec.paused_at)
        else:
            self.end_ns = _INF
        until = spec.succeeds_until
        self.succeeds_until_ns = _INF if until is None else _to_ns(until)
        self.interval_ns = None if spec.interval_s is None else _to_ns(spec.interval_s)
        # jitter stays far below the interval so scheduled runs keep their order
        self.jitter_ns = 0 if self.interval_ns is None else min(3 * _NS, self.interval_ns // 10)
        self.next_grid_ns = _INF
        self.next_sched_ns = _INF
        if self.interval_ns is not None:
            self.next_grid_ns = (created_ns // self.interval_ns + 1) * self.interval_ns
            self.next_sched_ns = self._draw_sched()
        self.next_manual_ns = self._draw_manual(created_ns)

    def _stamp(self, ns: int) -> int:
        """Quantize a timestamp to a randomly chosen precision (0, 3, 6 or 9 digits)."""
        return _quantize(ns, 3 * self.rng.getrandbits(2))

    def _draw_sched(self) -> int:
        """Return the actual time of the next scheduled fire (grid + jitter), or _INF."""
        if self.next_grid_ns >= self.end_ns:
            self.next_grid_ns = _INF
            return _INF
        jitter = self.rng.randrange(self.jitter_ns + 1)
        return max(self._stamp(self.next_grid_ns + jitter), self.last_event_ns)

    def _draw_manual(self, after_ns: int) -> int:
        """Return the time of the next Poisson manual trigger after after_ns, or _INF."""
        rate = self.spec.manual_rate_per_hour
        if rate <= 0:
            return _INF
        t = after_ns + int(self.rng.expovariate(rate / 3600.0) * _NS)
        t = max(self._stamp(t), after_ns)
        return t if t < self.end_ns else _INF

    @property
    def next_due_ns(self) -> int:
        """Return when this deployment's next trigger event happens."""
        return min(self.next_sched_ns, self.next_manual_ns)

    def is_paused(self, now_ns: int) -> bool:
        """Return whether the deployment is paused at now_ns."""
        return self.spec.paused and now_ns >= self.end_ns

    def generate(self, until_ns: int) -> list[_Run]:
        """Create, in time order, every triggered run up to until_ns; return the new runs."""
        new: list[_Run] = []
        while True:
            t = self.next_due_ns
            if t > until_ns:
                return new
            scheduled_ns: int | None = None
            self.last_event_ns = t
            if self.next_sched_ns <= self.next_manual_ns:
                scheduled_ns = self.next_grid_ns
                assert self.interval_ns is not None
                self.next_grid_ns += self.interval_ns
                self.next_sched_ns = self._draw_sched()
                trigger = "schedule"
            else:
                self.next_manual_ns = self._draw_manual(t)
                trigger = "manual"
            # the stuck run is the last one triggered at or before the simulator's start (the
            # next trigger is already drawn, so we know); later deployments get their first one
            stuck = (
                self.spec.stuck
                and not self.stuck_used
                and (self.created_ns >= self.start_ns or t <= self.start_ns < self.next_due_ns)
            )
            new.append(self.create_run(t, trigger, scheduled_ns, stuck))

    def create_run(self, t: int, trigger: str, scheduled_ns: int | None, stuck: bool) -> _Run:
        """Create one run triggered at t, deciding its whole timeline now."""
        self.settle(t)
        rng = self.rng
        spec = self.spec
        run = _Run(_new_id("drun_", t // _MS, rng.getrandbits(74)), self, t, trigger, scheduled_ns)
        if trigger == "schedule":
            self.last_scheduled_ns = t
        if len(self.in_flight) >= spec.max_concurrent:
            # skipped runs are terminal at creation: no session, no start, no duration
            self._append(run)
            return run
        pending_ns = int(rng.uniform(*spec.pending_s) * _NS)
        started = self._stamp(t + pending_ns)
        if started < t:
            started = t + pending_ns
        if stuck:
            self.stuck_used = True
            duration_ns = _STUCK_NS
        else:
            duration_ns = int(rng.uniform(*spec.duration_s) * _NS)
        completed = self._stamp(started + duration_ns)
        if completed <= started:
            completed = started + max(duration_ns, _MS)
        failed = rng.random() < spec.failure_rate
        if t > self.succeeds_until_ns:
            failed = True
        run.started_ns = started
        run.completed_ns = completed
        run.outcome = "failed" if failed else "completed"
        if failed:
            run.error_type = rng.choice(spec.error_types) if spec.error_types else "unknown_error"
        run.aux = rng.getrandbits(148)
        self._append(run)
        self.in_flight.append(run)
        return run

    def _append(self, run: _Run) -> None:
        """Add a run to the sorted history (almost always at the end)."""
        if not self.runs or _key(run) > _key(self.runs[-1]):
            self.runs.append(run)
        else:
            bisect.insort(self.runs, run, key=_key)

    def settle(self, now_ns: int) -> None:
        """Fold runs that finished by now_ns into the deployment's counters, in finish order."""
        if not self.in_flight or min(r.completed_ns for r in self.in_flight) > now_ns:
            return
        done = sorted(
            (r for r in self.in_flight if r.completed_ns <= now_ns),
            key=lambda r: (r.completed_ns, r.id),
        )
        self.in_flight = [r for r in self.in_flight if r.completed_ns > now_ns]
        for run in done:
            if run.outcome == "failed":
                self.total_failures += 1
                self.consecutive_failures += 1
            else:
                self.consecutive_failures = 0
                if self.last_success_ns is None or run.completed_ns > self.last_success_ns:
                    self.last_success_ns = run.completed_ns

    def error_json(self, error_type: str) -> JSON:
        """Return the {type, message} error object for a run error type."""
        fallback = error_type + ": the session could not be created"
        template = _ERROR_MESSAGES.get(error_type, fallback)
        return {
            "type": error_type,
            "message": template.format(env=self.environment_id, agent=self.agent_id),
        }

    def agent_json(self) -> JSON:
        """Return the agent reference object."""
        return {"id": self.agent_id, "type": "agent", "version": self.agent_version}


def _default_specs(
    n: int, seed: int, start: float, demo: bool, history_s: float
) -> list[DeploymentSpec]:
    """Build n varied specs; with n >= 4 the first four cover the interesting cases."""
    rng = random.Random(f"{seed}:specs")
    if demo:
        intervals = (15.0, 20.0, 30.0, 45.0, 60.0)
        pending, duration = (0.5, 3.0), (3.0, 40.0)
    else:
        intervals = (300.0, 360.0, 600.0, 720.0, 900.0)
        pending, duration = (1.0, 10.0), (30.0, 300.0)
    specs: list[DeploymentSpec] = []
    if n >= 4:
        common: dict[str, Any] = {"pending_s": pending, "duration_s": duration}
        specs += [
            DeploymentSpec(
                "repo-indexer", rng.choice(intervals), failure_rate=0.05, stuck=True, **common
            ),
            # all-failing for days: the demo interval is slower so the history stays small
            DeploymentSpec(
                "dependency-audit",
                300.0 if demo else 600.0,
                failure_rate=0.1,
                succeeds_until=start - 3 * 86400,
                error_types=("environment_not_found_error",),
                **common,
            ),
            DeploymentSpec(
                "weekly-digest",
                rng.choice(intervals),
                paused=True,
                paused_at=start - history_s / 3,
                **common,
            ),
            DeploymentSpec(
                "release-notes",
                None,
                manual_rate_per_hour=30.0 if demo else 2.0,
                failure_rate=0.15,
                **common,
            ),
        ]
    for i in range(len(specs), n):
        k = i - (4 if n >= 4 else 0)
        name = _NAMES[k % len(_NAMES)]
        if k >= len(_NAMES):
            name += f"-{k // len(_NAMES) + 1}"
        interval = rng.choice(intervals)
        dur = duration
        if k % 4 == 3:
            # runs that sometimes outlast the interval, so max_concurrent produces skipped runs
            dur = (interval * 0.3, interval * 1.4)
        specs.append(
            DeploymentSpec(
                name,
                interval,
                manual_rate_per_hour=rng.choice((0.0, 0.0, 0.5, 1.0)) * (20 if demo else 1),
                failure_rate=rng.choice((0.02, 0.05, 0.1, 0.2, 0.35)),
                pending_s=pending,
                duration_s=dur,
                max_concurrent=rng.choice((1, 1, 1, 2)),
                error_types=DEFAULT_ERROR_TYPES
                + rng.choice(((), ("agent_archived_error",), ("environment_archived_error",))),
            )
        )
    return specs


# ---------------------------------------------------------------- faults


@dataclass
class _Queued:
    kind: str
    remaining: int
    endpoint: str | None
    retry_after: str | None


class Faults:
    """Fault injection switches shared by the simulator's request threads and the test."""

    def __init__(self, seed: int = 0, on_rotate: Callable[[str], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._queue: list[_Queued] = []
        self._rng = random.Random(f"{seed}:faults")
        self._on_rotate = on_rotate
        self._revoked = False
        # Constant latency: seconds every request waits before its reply (the handler thread
        # sleeps, so concurrent requests wait concurrently); bench/poll.py sets it.
        self.latency_s = 0.0
        self.down = False
        self.revoke_after: int | None = None
        self.random_rates: dict[str, float] = {}
        # Faults actually served, by kind (queued or random), so tests can match error counts.
        self.delivered: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)

    def inject(
        self,
        kind: str,
        count: int = 1,
        endpoint: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        """Queue `count` faults of `kind` for the next requests to `endpoint` (None: any)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        if endpoint is not None and endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {ENDPOINTS}")
        if count < 1:
            raise ValueError("count must be >= 1")
        if kind == "slow" and retry_after is not None:
            float(retry_after)  # fail at injection, not inside a request thread
        with self._lock:
            self._queue.append(_Queued(kind, count, endpoint, retry_after))

    def rotate_token(self, new_token: str) -> None:
        """Accept only new_token from now on and lift any revocation."""
        with self._lock:
            self._revoked = False
            self.revoke_after = None
        if self._on_rotate is not None:
            self._on_rotate(new_token)

    @property
    def revoked(self) -> bool:
        """Return whether the token has been revoked by revoke_after."""
        return self._revoked

    def clear(self) -> None:
        """Remove every fault: queue, latency, down, revocation and random rates."""
        with self._lock:
            self._queue.clear()
            self._revoked = False
            self.latency_s = 0.0
            self.down = False
            self.revoke_after = None
            self.random_rates = {}

    def take(self, endpoint: str) -> tuple[str, str | None] | None:
        """Return the fault (kind, retry_after) that applies to this request, if any."""
        with self._lock:
            for i, queued in enumerate(self._queue):
                if queued.endpoint is None or queued.endpoint == endpoint:
                    queued.remaining -= 1
                    if queued.remaining <= 0:
                        del self._queue[i]
                    self.delivered[queued.kind] += 1
                    return queued.kind, queued.retry_after
            for kind in sorted(self.random_rates):
                rate = self.random_rates[kind]
                if rate > 0 and self._rng.random() < rate:
                    self.delivered[kind] += 1
                    return kind, {"429": "1", "slow": "0.5"}.get(kind)
        return None

    def consume_auth(self) -> bool:
        """Count one authenticated request; return False once the token is revoked."""
        with self._lock:
            if self._revoked:
                return False
            if self.revoke_after is not None:
                if self.revoke_after <= 0:
                    self._revoked = True
                    self.revoke_after = None
                    return False
                self.revoke_after -= 1
            return True


# ---------------------------------------------------------------- HTTP plumbing


class _ApiError(Exception):
    """An API error response: HTTP status, error type, message and optional param."""

    def __init__(self, status: int, kind: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.param = param


@dataclass
class _Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    delay_s: float = 0.0
    reset: bool = False


_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("GET", re.compile(r"/deployments"), "list_deployments"),
    ("GET", re.compile(r"/deployments/([^/]+)"), "get_deployment"),
    ("GET", re.compile(r"/deployments/([^/]+)/runs"), "list_runs"),
    ("GET", re.compile(r"/deployments/([^/]+)/runs/([^/]+)"), "get_run"),
    ("POST", re.compile(r"/deployments/([^/]+)/run"), "create_run"),
    ("GET", re.compile(r"/deployment_runs"), "list_all_runs"),
    ("GET", re.compile(r"/deployment_runs/([^/]+)"), "get_run_global"),
)


def _route(method: str, path: str) -> tuple[str, tuple[str, ...]]:
    """Map a request to an endpoint name and its path arguments."""
    if not path.startswith(BASE_PATH + "/"):
        return "unknown", ()
    rest = path[len(BASE_PATH) :].rstrip("/")
    for route_method, pattern, name in _ROUTES:
        m = pattern.fullmatch(rest)
        if m and method == route_method:
            return name, m.groups()
    return "unknown", ()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # keep-alive handler threads must not block close()
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sim: Simulator) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.sim = sim
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "qoder-simulator"
    timeout = 60  # idle keep-alive connections are dropped eventually
    # headers and body go out in two writes; with Nagle on, every keep-alive reply waits ~40 ms
    # for the client's delayed ACK (Go's net/http, like most servers, sets TCP_NODELAY too)
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests and demos do not want an access log on stderr."""

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The Date header, on the simulated clock: a server's Date is its own time."""
        when = self.server.sim.clock.now() if timestamp is None else timestamp
        return email.utils.formatdate(when, usegmt=True)

    def setup(self) -> None:
        """Track the connection so close() can drop kept-alive clients."""
        super().setup()
        with self.server.conn_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        """Untrack the connection."""
        try:
            super().finish()
        finally:
            with self.server.conn_lock:
                self.server.connections.discard(self.connection)

    def do_GET(self) -> None:
        """Serve a GET."""
        self._serve("GET")

    def do_POST(self) -> None:
        """Serve a POST."""
        self._serve("POST")

    def do_PUT(self) -> None:
        """Serve a PUT (always unknown)."""
        self._serve("PUT")

    def do_PATCH(self) -> None:
        """Serve a PATCH (always unknown)."""
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        """Serve a DELETE (always unknown)."""
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        """Read the body, let the simulator decide the reply, then send or reset it."""
        length = int(self.headers.get("Content-Length") or 0)
        if length > 0:
            self.rfile.read(length)
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = self.server.sim.handle_request(method, self.path, headers)
        if reply.reset:
            self._reset()
            return
        if reply.delay_s > 0:
            time.sleep(reply.delay_s)
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)

    def _reset(self) -> None:
        """Abort the connection with a TCP RST and no response at all."""
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        # the buffered reader holds a reference to the socket; both must go for close() to
        # release the descriptor (and, with SO_LINGER 0, send the RST) right now
        self.rfile.close()
        self.connection.close()


# ---------------------------------------------------------------- simulator


class Simulator:
    """A deterministic Qoder deployments API: world model, HTTP server, truth and faults."""

    def __init__(
        self,
        seed: int = 0,
        *,
        clock: ManualClock | RealClock | None = None,
        deployments: int | list[DeploymentSpec] = 5,
        token: str = "pt-simulator-token",
        shape: str = "g1",
        page_cap: int = 100,
        history_s: float = 3 * 86400,
        demo: bool = False,
    ) -> None:
        self._lock = threading.RLock()
        self.seed = seed
        self.clock: ManualClock | RealClock = clock or ManualClock(start=DEFAULT_START)
        self.token = token
        self.shape = shape
        self.page_cap = page_cap
        self.demo = demo
        if demo:
            history_s = min(history_s, 2 * 3600.0)
        self.history_s = history_s
        self.start = self.clock.now()
        self._start_ns = _to_ns(self.start)
        self._world_ns = self._start_ns
        self._deps: dict[str, _Deployment] = {}
        self._dep_order: list[_Deployment] = []
        self._created_count = 0
        self._runs: dict[str, _Run] = {}
        self._all_runs: list[_Run] = []
        self._unsorted: list[_Run] = []
        self._next_due = _INF
        self.request_counts: dict[str, int] = dict.fromkeys(ENDPOINTS, 0)
        self.faults = Faults(seed, on_rotate=self._set_token)
        self._server: _Server | None = None
        self.base_url = ""  # set by serve()
        self._thread: threading.Thread | None = None
        if isinstance(deployments, int):
            specs = _default_specs(deployments, seed, self.start, demo, history_s)
        else:
            specs = list(deployments)
        history_begin = self._start_ns - _to_ns(history_s)
        for i, spec in enumerate(specs):
            base = history_begin
            if spec.succeeds_until is not None:
                # reach back far enough that the last success is in the history
                base = min(base, _to_ns(spec.succeeds_until) - 12 * 3600 * _NS)
            created = base - (len(specs) - i) * 61 * _NS - (i * 7919 % 1000) * _MS
            self._add(spec, created)
        with self._lock:
            self._sync()

    # -- settings

    @property
    def shape(self) -> str:
        """Return the run shape: "g1" (status-bearing) or "g2" (record-only)."""
        return self._shape

    @shape.setter
    def shape(self, value: str) -> None:
        if value not in ("g1", "g2"):
            raise ValueError("shape must be 'g1' or 'g2'")
        self._shape = value

    @property
    def page_cap(self) -> int:
        """Return the page-size cap: 100 (larger limit -> 400) or 1000 (silently capped)."""
        return self._page_cap

    @page_cap.setter
    def page_cap(self, value: int) -> None:
        if value not in (100, 1000):
            raise ValueError("page_cap must be 100 or 1000")
        self._page_cap = value

    def _set_token(self, token: str) -> None:
        """Replace the accepted token."""
        self.token = token

    # -- server

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start the HTTP server in a daemon thread and return the API base URL."""
        if self._server is not None:
            raise RuntimeError("simulator is already serving")
        server = _Server((host, port), self)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="qoder-simulator", daemon=True
        )
        self._thread.start()
        bound_port = server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{shown}:{bound_port}{BASE_PATH}"
        return self.base_url

    def close(self) -> None:
        """Stop the HTTP server and drop open connections."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with server.conn_lock:
            conns = list(server.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def advance(self, seconds: float) -> None:
        """Advance a ManualClock by `seconds`."""
        if not isinstance(self.clock, ManualClock):
            raise TypeError("advance() needs a ManualClock")
        self.clock.advance(seconds)

    # -- world

    def _sync(self) -> int:
        """Bring the world up to the clock (never backwards) and return the world time in ns."""
        now = max(_to_ns(self.clock.now()), self._world_ns)
        self._world_ns = now
        if now >= self._next_due:
            for dep in self._dep_order:
                if dep.next_due_ns <= now:
                    self._index(dep.generate(now))
            self._next_due = min((d.next_due_ns for d in self._dep_order), default=_INF)
        return now

    def _index(self, runs: list[_Run]) -> None:
        """Register new runs in the id index and the global list."""
        for run in runs:
            self._runs[run.id] = run
        self._unsorted.extend(runs)

    def _all_sorted(self) -> list[_Run]:
        """Return every live run sorted by (created_at, id), merging recently created runs."""
        if self._unsorted:
            batch = self._unsorted
            self._unsorted = []
            # new runs are nearly always newer than all but the last few: re-sort only the tail
            pos = bisect.bisect_left(self._all_runs, min(map(_key, batch)), key=_key)
            batch.extend(self._all_runs[pos:])
            del self._all_runs[pos:]
            batch.sort(key=_key)
            self._all_runs.extend(batch)
        return self._all_runs

    def _add(self, spec: DeploymentSpec, created_ns: int) -> _Deployment:
        """Create a deployment from a private copy of spec."""
        if spec.max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1")
        if spec.interval_s is not None and spec.interval_s <= 0:
            raise ValueError("interval_s must be positive")
        for low, high in (spec.pending_s, spec.duration_s):
            if not 0 <= low <= high:
                raise ValueError("pending_s and duration_s need 0 <= low <= high")
        spec = dataclasses.replace(spec, paused_reason=dict(spec.paused_reason or {}) or None)
        dep = _Deployment(self._created_count, spec, created_ns, self._start_ns, self.seed)
        self._created_count += 1
        self._deps[dep.id] = dep
        self._dep_order.append(dep)
        self._next_due = min(self._next_due, dep.next_due_ns)
        return dep

    def _dep(self, deployment_id: str) -> _Deployment:
        """Return a live deployment or raise KeyError."""
        dep = self._deps.get(deployment_id)
        if dep is None:
            raise KeyError(f"no such deployment: {deployment_id}")
        return dep

    def deployment_ids(self) -> list[str]:
        """Return the ids of live deployments in creation order."""
        with self._lock:
            return [d.id for d in self._dep_order]

    def spec(self, deployment_id: str) -> DeploymentSpec:
        """Return a copy of a deployment's current spec."""
        with self._lock:
            return dataclasses.replace(self._dep(deployment_id).spec)

    def add_deployment(self, spec: DeploymentSpec) -> str:
        """Create a deployment now and return its id."""
        with self._lock:
            now = self._sync()
            return self._add(spec, now).id

    def delete_deployment(self, deployment_id: str) -> None:
        """Remove a deployment and its runs from every endpoint."""
        with self._lock:
            self._sync()
            dep = self._deps.pop(deployment_id)
            self._dep_order.remove(dep)
            for run in dep.runs:
                self._runs.pop(run.id, None)
            self._all_runs = [r for r in self._all_sorted() if r.dep is not dep]
            self._next_due = min((d.next_due_ns for d in self._dep_order), default=_INF)

    def trigger(self, deployment_id: str) -> JSON:
        """Trigger a manual run now and return its JSON (KeyError: missing, ValueError: paused)."""
        with self._lock:
            now = self._sync()
            dep = self._dep(deployment_id)
            if dep.is_paused(now):
                raise ValueError(f"deployment {deployment_id} is paused")
            return self._run_json(self._trigger(dep, now), now)

    def _trigger(self, dep: _Deployment, now: int) -> _Run:
        """Create a manual run at now."""
        t = max(dep._stamp(now), dep.last_event_ns)
        dep.last_event_ns = t
        # t may be stamped a little before now; fold runs finished by now first, so whether the
        # new run is skipped does not depend on whether a read already settled the deployment
        dep.settle(now)
        run = dep.create_run(t, "manual", None, dep.spec.stuck and not dep.stuck_used)
        self._index([run])
        return run

    def set_failure_rate(self, deployment_id: str, rate: float) -> None:
        """Change the failure probability of runs created from now on."""
        with self._lock:
            self._sync()
            self._dep(deployment_id).spec.failure_rate = rate

    # -- ground truth

    def _truth_status(self, run: _Run, now: int) -> str:
        """Return a run's status as the current shape presents it."""
        return run.g2_status() if self._shape == "g2" else run.status_at(now)

    def truth_recent(self, deployment_id: str, lookback_s: float) -> dict[str, int]:
        """Count runs created in [now - lookback_s, now] by current status."""
        with self._lock:
            now = self._sync()
            dep = self._dep(deployment_id)
            counts = dict.fromkeys(STATUSES, 0)
            lo = bisect.bisect_left(dep.runs, (now - _to_ns(lookback_s), ""), key=_key)
            for run in dep.runs[lo:]:
                if run.created_ns <= now:
                    counts[self._truth_status(run, now)] += 1
            return counts

    def truth_finished(
        self, deployment_id: str, since: float, until: float | None = None
    ) -> list[tuple[str, float | None, str | None]]:
        """List (status, duration_s, error_type) of runs that finished in (since, until]."""
        with self._lock:
            now = self._sync()
            dep = self._dep(deployment_id)
            since_ns = _to_ns(since)
            until_ns = now if until is None else min(_to_ns(until), now)
            found: list[tuple[int, str, tuple[str, float | None, str | None]]] = []
            for run in dep.runs:
                if self._shape == "g2":
                    status, finished, duration = run.g2_status(), run.created_ns, None
                    error = None
                    if status == "failed":
                        error = run.error_type or "session_rate_limited_error"
                else:
                    status, finished = run.status_at(now), run.completed_ns
                    if status not in TERMINAL:
                        continue
                    ms = run.duration_ms()
                    duration = None if ms is None else ms / 1000.0
                    error = run.error_type if status == "failed" else None
                if since_ns < finished <= until_ns:
                    found.append((finished, run.id, (status, duration, error)))
            found.sort(key=lambda item: (item[0], item[1]))
            return [item[2] for item in found]

    def truth_last_success(self, deployment_id: str) -> float | None:
        """Return completed_at of the newest completed run (g2: created_at of newest success)."""
        with self._lock:
            now = self._sync()
            dep = self._dep(deployment_id)
            if self._shape == "g2":
                for run in reversed(dep.runs):
                    if run.outcome == "completed" and run.created_ns <= now:
                        return float(run.created_ns // _NS)
                return None
            dep.settle(now)
            return None if dep.last_success_ns is None else dep.last_success_ns / _NS

    def truth_last_finished_status(self, deployment_id: str) -> str | None:
        """Return the status of the newest (by created_at) finished run."""
        with self._lock:
            now = self._sync()
            for run in reversed(self._dep(deployment_id).runs):
                status = self._truth_status(run, now)
                if status in TERMINAL and run.created_ns <= now:
                    return status
            return None

    def truth_in_flight(self, deployment_id: str) -> list[str]:
        """Return ids of pending/running runs (always empty in the g2 shape)."""
        with self._lock:
            now = self._sync()
            dep = self._dep(deployment_id)
            if self._shape == "g2":
                return []
            dep.settle(now)
            return [r.id for r in sorted(dep.in_flight, key=_key)]

    # -- request accounting

    def reset_counts(self) -> None:
        """Zero every per-endpoint request counter."""
        with self._lock:
            for name in self.request_counts:
                self.request_counts[name] = 0

    def total_requests(self) -> int:
        """Return the number of requests received on all endpoints."""
        with self._lock:
            return sum(self.request_counts.values())

    # -- JSON rendering

    def _run_json(self, run: _Run, now: int) -> JSON:
        """Render a run in the current shape as of now."""
        dep = run.dep
        if self._shape == "g2":
            # a G2 record is immutable: the run's outcome decides at creation whether the
            # session was created or failed (see truth_* for the same mapping)
            trigger: JSON = {"type": run.trigger}
            if run.scheduled_ns is not None:
                trigger["scheduled_at"] = _fmt(run.scheduled_ns, whole=True)
            error: JSON | None = None
            if run.outcome == "failed" and run.error_type is not None:
                error = dep.error_json(run.error_type)
            elif run.outcome == "skipped":
                error = {
                    "type": "session_rate_limited_error",
                    "message": "Session creation skipped: max_concurrent runs already active",
                }
            return {
                "id": run.id,
                "type": "deployment_run",
                "deployment_id": dep.id,
                "agent": dep.agent_json(),
                "created_at": _fmt(run.created_ns, whole=True),
                "session_id": run.session_id() if error is None else None,
                "error": error,
                "trigger_context": trigger,
            }
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
                "started_at": _fmt(run.started_ns),
            }
        out["triggered_at"] = _fmt(run.created_ns)
        out["created_at"] = _fmt(run.created_ns)
        if status in TERMINAL:
            out["completed_at"] = _fmt(run.completed_ns)
        # The docs say duration_ms is "present when completed"; failed runs also have a start
        # and an end, so we include it for them too (the exporter must cope with either).
        duration = run.duration_ms()
        if status in ("completed", "failed") and duration is not None:
            out["duration_ms"] = duration
        return out

    def _deployment_json(self, dep: _Deployment, now: int) -> JSON:
        """Render a deployment as of now."""
        dep.settle(now)
        paused = dep.is_paused(now)
        schedule: JSON | None = None
        upcoming: list[str] = []
        if dep.interval_ns is not None:
            first = (now // dep.interval_ns + 1) * dep.interval_ns
            upcoming = [_fmt(first + i * dep.interval_ns, whole=True) for i in range(5)]
            schedule = {
                "type": "cron",
                "expression": _cron_for(dep.interval_ns / _NS),
                "timezone": "UTC",
                "upcoming_runs_at": upcoming,
            }
            if dep.last_scheduled_ns is not None:
                schedule["last_run_at"] = _fmt(dep.last_scheduled_ns, whole=True)
        stats: JSON = {
            "total_runs": len(dep.runs),
            "total_failures": dep.total_failures,
            "consecutive_failures": dep.consecutive_failures,
        }
        if dep.runs:
            stats["last_triggered_at"] = _fmt(dep.runs[-1].created_ns, whole=True)
        if upcoming:
            stats["next_trigger_at"] = upcoming[0]
        reason = None
        if paused:
            reason = dep.spec.paused_reason or {"type": "manual"}
        updated = max(dep.created_ns, dep.end_ns) if paused else dep.created_ns
        return {
            "id": dep.id,
            "type": "deployment",
            "name": dep.spec.name,
            "description": f"Simulated deployment {dep.spec.name}",
            "agent": dep.agent_json(),
            "environment_id": dep.environment_id,
            "status": "paused" if paused else "active",
            "paused_reason": reason,
            "archived_at": None,
            "schedule": schedule,
            "initial_events": [{"type": "user.message", "content": f"Run {dep.spec.name}"}],
            "resources": [],
            "vault_ids": [],
            "metadata": {
                "cas_config": {
                    "session_strategy": "new_session",
                    "config": {
                        "max_concurrent": dep.spec.max_concurrent,
                        "max_retries": 0,
                        "timeout_ms": 300000,
                    },
                    "stats": stats,
                }
            },
            "created_at": _fmt(dep.created_ns, whole=True),
            "updated_at": _fmt(updated, whole=True),
        }

    # -- request handling

    def handle_request(self, method: str, raw_path: str, headers: Mapping[str, str]) -> _Reply:
        """Decide the full reply to one HTTP request (header names lowercased), faults included."""
        split = urlsplit(raw_path)
        endpoint, args = _route(method, split.path)
        request_id = headers.get("x-request-id") or str(uuid.uuid4())
        with self._lock:
            self.request_counts[endpoint] += 1
        if self.faults.down:
            return _Reply(reset=True)
        fault = self.faults.take(endpoint)
        kind, retry_after = fault if fault else (None, None)
        delay = self.faults.latency_s
        if kind == "reset":
            return _Reply(reset=True)
        if kind == "slow":
            delay += float(retry_after or "0.5")
        if kind in ("500", "502", "503", "429", "malformed"):
            reply = self._fault_reply(kind, retry_after, request_id)
        else:
            try:
                reply = _Reply(
                    body=self._dump(self._api(method, endpoint, args, split.query, headers))
                )
            except _ApiError as err:
                reply = self._error_reply(err, request_id)
            if kind == "truncated":
                reply.body = reply.body[: len(reply.body) // 2]
        reply.headers.append(("request-id", request_id))
        reply.delay_s = delay
        return reply

    @staticmethod
    def _dump(obj: JSON) -> bytes:
        """Serialize a JSON body."""
        return json.dumps(obj, separators=(",", ":")).encode()

    def _error_reply(self, err: _ApiError, request_id: str) -> _Reply:
        """Render an API error envelope."""
        error: JSON = {"type": err.kind, "message": err.message}
        if err.param is not None:
            error["param"] = err.param
        body = {"type": "error", "request_id": request_id, "error": error}
        return _Reply(status=err.status, body=self._dump(body))

    def _fault_reply(self, kind: str, retry_after: str | None, request_id: str) -> _Reply:
        """Render an injected gateway or server fault."""
        if kind == "500":
            return self._error_reply(
                _ApiError(500, "api_error", "Internal server error"), request_id
            )
        if kind == "malformed":
            return _Reply(body=b'<html><body>upstream returned garbage {"data": [</body></html>')
        # 502/503/429 come from the gateway in front of the API, which answers in HTML/text
        # (the docs leave their bodies unspecified)
        titles = {
            "502": "502 Bad Gateway",
            "503": "503 Service Unavailable",
            "429": "429 Too Many Requests",
        }
        html = f"<html><head><title>{titles[kind]}</title></head><body><h1>{titles[kind]}</h1>"
        reply = _Reply(
            status=int(kind), body=(html + "</body></html>").encode(), content_type="text/html"
        )
        if kind == "429":
            reply.headers.append(("Retry-After", retry_after or "1"))
        elif kind == "503" and retry_after is not None:
            reply.headers.append(("Retry-After", retry_after))
        return reply

    def _api(
        self,
        method: str,
        endpoint: str,
        args: tuple[str, ...],
        query_string: str,
        headers: Mapping[str, str],
    ) -> JSON:
        """Authenticate and serve one API call, raising _ApiError for error responses."""
        scheme, _, credential = (headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or credential.strip() != self.token:
            raise _ApiError(401, "authentication_error", _AUTH_MESSAGE)
        if not self.faults.consume_auth():
            raise _ApiError(401, "authentication_error", _AUTH_MESSAGE)
        query = {k: v[0] for k, v in parse_qs(query_string).items()}
        with self._lock:
            now = self._sync()
            if endpoint == "list_deployments":
                return self._list_deployments(query, now)
            if endpoint == "list_all_runs":
                return self._list_all_runs(query, now)
            if endpoint == "get_run_global":
                run = self._runs.get(args[0])
                if run is None:
                    raise _ApiError(404, "not_found_error", "Deployment run not found")
                return self._run_json(run, now)
            if endpoint == "unknown":
                raise _ApiError(404, "not_found_error", "Not found")
            dep = self._deps.get(args[0])
            if dep is None:
                raise _ApiError(404, "not_found_error", "Deployment not found")
            if endpoint == "get_deployment":
                return self._deployment_json(dep, now)
            if endpoint == "list_runs":
                return self._list_runs(dep, query, now)
            if endpoint == "get_run":
                run = self._runs.get(args[1])
                if run is None or run.dep is not dep:
                    raise _ApiError(404, "not_found_error", "Deployment run not found")
                return self._run_json(run, now)
            # create_run
            if dep.is_paused(now):
                raise _ApiError(409, "conflict_error", "Deployment is not active (paused)")
            return self._run_json(self._trigger(dep, now), now)

    # -- list endpoints

    def _limit(self, query: dict[str, str]) -> int:
        """Parse and check `limit` against the page cap."""
        raw = query.get("limit")
        if raw is None:
            return 20
        try:
            limit = int(raw)
        except ValueError:
            raise _ApiError(
                400, "invalid_request_error", "limit must be an integer", "limit"
            ) from None
        if limit <= 0:
            raise _ApiError(400, "invalid_request_error", "limit must be at least 1", "limit")
        if limit > self._page_cap:
            if self._page_cap == 100:
                raise _ApiError(
                    400, "invalid_request_error", "limit must be between 1 and 100", "limit"
                )
            limit = self._page_cap
        return limit

    @staticmethod
    def _cursor_param(query: dict[str, str]) -> tuple[str, str, str] | None:
        """Return (direction, param name, id) of the single cursor given, if any."""
        given = [name for name in ("after_id", "before_id", "page") if name in query]
        if len(given) > 1:
            raise _ApiError(
                400,
                "invalid_request_error",
                "Only one of after_id, before_id and page may be given",
                given[1],
            )
        if not given:
            return None
        name = given[0]
        return ("before" if name == "before_id" else "after"), name, query[name]

    @staticmethod
    def _time_param(query: dict[str, str], name: str) -> int | None:
        """Parse an RFC 3339 query parameter to ns."""
        raw = query.get(name)
        if raw is None:
            return None
        ns = _parse_rfc3339(raw)
        if ns is None:
            raise _ApiError(
                400, "invalid_request_error", f"{name} must be an RFC 3339 timestamp", name
            )
        return ns

    @staticmethod
    def _choice(query: dict[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
        """Return an enum query parameter, rejecting values outside `allowed`."""
        raw = query.get(name)
        if raw is not None and raw not in allowed:
            raise _ApiError(
                400, "invalid_request_error", f"{name} must be one of {', '.join(allowed)}", name
            )
        return raw

    @staticmethod
    def _created_bounds(
        items: list[_K], query: dict[str, str], lo: int, hi: int
    ) -> tuple[int, int]:
        """Narrow [lo, hi) by created_at[gt|gte|lt|lte] bounds."""
        for op, after, inclusive in (
            ("gte", True, True),
            ("gt", True, False),
            ("lte", False, True),
            ("lt", False, False),
        ):
            ns = Simulator._time_param(query, f"created_at[{op}]")
            if ns is None:
                continue
            # (ns, "") sorts before every item created at ns, (ns + 1, "") after all of them
            edge = ns if after == inclusive else ns + 1
            pos = bisect.bisect_left(items, (edge, ""), key=_key)
            if after:
                lo = max(lo, pos)
            else:
                hi = min(hi, pos)
        return lo, hi

    @staticmethod
    def _envelope(data: list[JSON], has_more: bool) -> JSON:
        """Wrap a page in the list envelope."""
        last_id = data[-1]["id"] if data else None
        return {
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": last_id,
            "has_more": has_more,
            "next_page": last_id if has_more else None,
        }

    def _run_cursor(
        self, query: dict[str, str], dep: _Deployment | None
    ) -> tuple[str, tuple[int, str]] | None:
        """Resolve a run cursor; it must name a run of this list (else 400)."""
        given = self._cursor_param(query)
        if given is None:
            return None
        direction, name, run_id = given
        run = self._runs.get(run_id)
        if run is None or (dep is not None and run.dep is not dep):
            raise _ApiError(
                400, "invalid_request_error", f"{name} {run_id} is not in this list", name
            )
        return direction, _key(run)

    def _run_filter(self, query: dict[str, str], now: int) -> Callable[[_Run], bool]:
        """Build the predicate for status, trigger_type and has_error."""
        status = self._choice(query, "status", STATUSES)
        if self._shape == "g2":
            status = None  # G2 has no status filter; unknown parameters are ignored
        trigger = self._choice(query, "trigger_type", ("manual", "schedule", "retry"))
        has_error_raw = query.get("has_error")
        has_error: bool | None = None
        if has_error_raw is not None:
            lowered = has_error_raw.lower()
            if lowered not in ("true", "false", "1", "0"):
                raise _ApiError(
                    400, "invalid_request_error", "has_error must be a boolean", "has_error"
                )
            has_error = lowered in ("true", "1")
        g2 = self._shape == "g2"

        def match(run: _Run) -> bool:
            if trigger is not None and run.trigger != trigger:
                return False
            if status is None and has_error is None:
                return True
            current = run.g2_status() if g2 else run.status_at(now)
            if status is not None and current != status:
                return False
            return has_error is None or has_error == (current == "failed")

        return match

    def _list_runs(self, dep: _Deployment, query: dict[str, str], now: int) -> JSON:
        """Serve GET /deployments/{id}/runs."""
        limit = self._limit(query)
        cursor = self._run_cursor(query, dep)
        match = self._run_filter(query, now)
        lo, hi = 0, len(dep.runs)
        after = self._time_param(query, "triggered_after")
        before = self._time_param(query, "triggered_before")
        if after is not None:
            lo = bisect.bisect_left(dep.runs, (after, ""), key=_key)
        if before is not None:
            hi = bisect.bisect_left(dep.runs, (before, ""), key=_key)
        page, more = _page(dep.runs, lo, hi, match, limit, cursor)
        return self._envelope([self._run_json(r, now) for r in page], more)

    def _list_all_runs(self, query: dict[str, str], now: int) -> JSON:
        """Serve GET /deployment_runs."""
        limit = self._limit(query)
        cursor = self._run_cursor(query, None)
        match = self._run_filter(query, now)
        items = self._all_sorted()
        if "deployment_id" in query:
            dep = self._deps.get(query["deployment_id"])
            items = dep.runs if dep is not None else []
        lo, hi = self._created_bounds(items, query, 0, len(items))
        page, more = _page(items, lo, hi, match, limit, cursor)
        return self._envelope([self._run_json(r, now) for r in page], more)

    def _list_deployments(self, query: dict[str, str], now: int) -> JSON:
        """Serve GET /deployments."""
        limit = self._limit(query)
        cursor: tuple[str, tuple[int, str]] | None = None
        given = self._cursor_param(query)
        if given is not None:
            direction, name, dep_id = given
            dep = self._deps.get(dep_id)
            if dep is None:
                raise _ApiError(
                    400, "invalid_request_error", f"{name} {dep_id} is not in this list", name
                )
            cursor = direction, _key(dep)
        status = self._choice(query, "status", ("active", "paused"))
        agent_id = query.get("agent_id")

        def match(dep: _Deployment) -> bool:
            if agent_id is not None and dep.agent_id != agent_id:
                return False
            return status is None or dep.is_paused(now) == (status == "paused")

        # creation order is not created_at order: a deployment may be backdated (succeeds_until)
        items = sorted(self._dep_order, key=_key)
        lo, hi = self._created_bounds(items, query, 0, len(items))
        page, more = _page(items, lo, hi, match, limit, cursor)
        return self._envelope([self._deployment_json(d, now) for d in page], more)


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """Run the simulator on the wall clock until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m qoder_exporter.simulator",
        description="Serve a simulated Qoder Cloud Agents deployments API.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", choices=("g1", "g2"), default="g1")
    parser.add_argument("--page-cap", type=int, choices=(100, 1000), default=100)
    parser.add_argument("--deployments", type=int, default=5)
    parser.add_argument("--token", default="pt-simulator-token")
    parser.add_argument(
        "--demo", action="store_true", help="fast profile: runs every 15-60 s, 2 h of history"
    )
    args = parser.parse_args(argv)
    sim = Simulator(
        args.seed,
        clock=RealClock(),
        deployments=args.deployments,
        token=args.token,
        shape=args.shape,
        page_cap=args.page_cap,
        demo=args.demo,
    )
    url = sim.serve(args.host, args.port)
    print(f"QODER_API_URL={url}", flush=True)
    print(f"QODER_PAT={sim.token}", flush=True)
    print("serving the simulated Qoder API; Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sim.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
