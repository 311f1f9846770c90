"""Rate-limit pauses: after a 429 no request goes out until Retry-After has passed.

Poll workers meet 429s and check the pause concurrently, so the state has its own lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .client import MAX_RETRY_AFTER

log = logging.getLogger(__name__)


class Paused(Exception):
    """The API asked us to back off; remaining work in this cycle is skipped."""


class Backoff:
    def __init__(
        self, clock: Callable[[], float], on_pause: Callable[[], None] | None = None
    ) -> None:
        # On the clock Retry-After speaks of (the poller's, one tests can step).
        self._clock = clock
        self._on_pause = on_pause
        self._lock = threading.Lock()
        self._until = 0.0
        self._probing = False  # the next cycle's first request goes alone (see Poller)

    def pause(self, retry_after: float) -> None:
        """Note a 429: hold requests for retry_after seconds (the longest pause wins)."""
        with self._lock:
            self._probing = True
            self._until = max(self._until, self._clock() + retry_after)
        if self._on_pause is not None:
            self._on_pause()
        log.warning("API rate limit: backing off for %.1fs", retry_after)

    def check(self) -> None:
        """Raise Paused while a pause lasts."""
        with self._lock:
            left = self._until - self._clock()
            if left > MAX_RETRY_AFTER:
                self._until = 0.0  # the wall clock stepped back: do not wait for hours
            elif left > 0:
                raise Paused()

    def left(self) -> float:
        """Seconds the pause still lasts (0 or less: none)."""
        with self._lock:
            return self._until - self._clock()

    def take_probe(self) -> bool:
        """True once after a pause: the next cycle sends one request before the others."""
        with self._lock:
            probing, self._probing = self._probing, False
            return probing

    def clear(self) -> None:
        """Another API (reload): its pause does not apply."""
        with self._lock:
            self._until = 0.0
