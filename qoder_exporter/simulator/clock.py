"""Simulated time: a manual clock for tests and the wall clock for demos."""

from __future__ import annotations

import fractions
import threading
import time


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
