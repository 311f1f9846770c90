"""Fault injection: queued and random faults, latency, outage and token revocation."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .routing import ENDPOINTS

FAULT_KINDS = ("500", "502", "503", "429", "reset", "malformed", "truncated", "slow")


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
        # Endpoints that are down: every request to them answers 500 until clear() (after any
        # queued fault for them), e.g. {"list_sessions", "get_session", "list_session_events"}.
        self.broken: set[str] = set()
        # Endpoints this server does not have (404 as for an unknown path), e.g. an API
        # generation without GET /sessions: {"list_sessions"}.
        self.absent: set[str] = set()
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
        """Remove every fault: queue, latency, down, broken endpoints, revocation, random rates."""
        with self._lock:
            self._queue.clear()
            self._revoked = False
            self.latency_s = 0.0
            self.down = False
            self.revoke_after = None
            self.random_rates = {}
            self.broken = set()
            self.absent = set()

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
            if endpoint in self.broken:
                self.delivered["500"] += 1
                return "500", None
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
