"""The exporter's own counters (requests, errors, polls), updated from poll threads."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .snapshot import HistogramData
from .sync import Histogram

REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
POLL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass(frozen=True)
class SelfMetricsCopy:
    """SelfMetrics at one moment, for a snapshot."""

    requests: dict[tuple[str, str], int]
    request_durations: dict[str, HistogramData]
    invalid: dict[str, int]
    errors: dict[tuple[str, str], int]
    rate_limited: int
    deferred: int
    deferred_sessions: int


class SelfMetrics:
    """Counters the client threads update; copied into each snapshot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = {}
        self.durations: dict[str, Histogram] = {}
        self.invalid: dict[str, int] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.rate_limited = 0
        self.deferred = 0
        self.deferred_sessions = 0

    def observe_request(self, endpoint: str, code: str, seconds: float) -> None:
        with self._lock:
            key = (endpoint, code)
            self.requests[key] = self.requests.get(key, 0) + 1
            hist = self.durations.get(endpoint)
            if hist is None:
                hist = self.durations[endpoint] = Histogram([0] * (len(REQUEST_BUCKETS) + 1))
            hist.observe(REQUEST_BUCKETS, seconds)

    def count_error(self, endpoint: str, kind: str) -> None:
        with self._lock:
            key = (endpoint, kind)
            self.errors[key] = self.errors.get(key, 0) + 1

    def count_invalid(self, kind: str) -> None:
        with self._lock:
            self.invalid[kind] = self.invalid.get(kind, 0) + 1

    def count_rate_limited(self) -> None:
        with self._lock:
            self.rate_limited += 1

    def count_deferred(self, runs: int) -> None:
        with self._lock:
            self.deferred += runs

    def count_deferred_sessions(self, runs: int) -> None:
        with self._lock:
            self.deferred_sessions += runs

    def copy(self) -> SelfMetricsCopy:
        with self._lock:
            return SelfMetricsCopy(
                requests=dict(self.requests),
                request_durations={k: frozen(h) for k, h in self.durations.items()},
                invalid=dict(self.invalid),
                errors=dict(self.errors),
                rate_limited=self.rate_limited,
                deferred=self.deferred,
                deferred_sessions=self.deferred_sessions,
            )


class PollStats:
    """Outcome of the poll cycles so far (qoder_up, qoder_polls_total, poll durations)."""

    def __init__(self) -> None:
        self.polls: dict[str, int] = {"success": 0, "failure": 0}
        self.hist = Histogram([0] * (len(POLL_BUCKETS) + 1))
        self.up = False
        self.last_success: float | None = None
        self.last_error: str | None = None

    def record(self, reached: bool, error: str | None, now: float, seconds: float) -> None:
        self.up = reached
        self.last_error = error
        self.polls["success" if reached else "failure"] += 1
        if reached:
            self.last_success = now
        self.hist.observe(POLL_BUCKETS, seconds)

    def done(self) -> int:
        return self.polls["success"] + self.polls["failure"]


def frozen(hist: Histogram) -> HistogramData:
    return HistogramData(tuple(hist.cumulative()), hist.total)
