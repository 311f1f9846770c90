"""Keeps Python's cyclic garbage collector off the run store.

At 10,000 deployments the store holds ~2M runs (~10M objects). The collector's full
collections walk every one of them (seconds at that size), triggered by whatever allocation
comes next, so a poll cycle now and then took seconds more. Nothing in the store is cyclic
garbage: runs die by reference counting when they leave the window. So after each poll what
survived is moved out of the collector's sight (gc.freeze), after a young-generation
collection so the cycle's own garbage is not frozen with it; every FULL_EVERY_S the frozen
objects are handed back for one full collection, which bounds what a cycle that did become
garbage after being frozen can hold on to.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

FULL_EVERY_S = 6 * 3600.0


class Heap:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._full_at = clock()

    def settle(self) -> None:
        """Call after a poll (and its render), from the poll loop."""
        now = self.clock()
        if now - self._full_at >= FULL_EVERY_S:
            self._full_at = now
            gc.unfreeze()
            gc.collect()
        else:
            gc.collect(1)
        gc.freeze()
