"""Keeps Python's cyclic garbage collector off the run store.

At 10,000 deployments the store holds ~2M runs (~10M objects). The collector's full
collections walk every one of them (seconds at that size), triggered by whatever allocation
comes next, so a poll cycle now and then took seconds more. Nothing in the store is cyclic
garbage: runs die by reference counting when they leave the window. So after each poll what
is alive is moved out of the collector's sight (gc.freeze), after a collection of the young
generations so most of the cycle's own cyclic garbage is not frozen with it. Garbage that is
frozen anyway (a cycle that reached the old generation before it died, or that died after
being frozen) is bounded by time: every FULL_EVERY_S the frozen objects are handed back for
one full collection (seconds at 10,000 deployments, once in 6 h).

One per process (gc is): several accounts' poll loops share it.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable

FULL_EVERY_S = 6 * 3600.0


class Heap:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._full_at = clock()
        self._lock = threading.Lock()

    def settle(self) -> None:
        """Call after a poll (and its render), from the poll loop."""
        with self._lock:
            now = self.clock()
            if now - self._full_at >= FULL_EVERY_S:
                self._full_at = now
                gc.unfreeze()
                gc.collect()
            else:
                gc.collect(1)
            gc.freeze()


HEAP = Heap()
