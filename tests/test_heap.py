"""heap.Heap: what a poll leaves alive is frozen, its own cyclic garbage is not."""

from __future__ import annotations

import gc
import weakref

from qoder_exporter.heap import FULL_EVERY_S, Heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


def test_settle_freezes_survivors_but_collects_the_cycles_garbage() -> None:
    now = [0.0]
    heap = Heap(lambda: now[0])
    try:
        survivor = _Node()
        garbage = _Node()
        gone = weakref.ref(garbage)
        del garbage
        heap.settle()
        assert gone() is None  # collected before the freeze, not frozen for hours
        assert gc.get_freeze_count() > 0
        # Frozen, then dropped: a cycle the young collections no longer see...
        late = weakref.ref(survivor)
        del survivor
        gc.collect()
        assert late() is not None
        # ...until the periodic full collection hands the frozen objects back.
        now[0] += FULL_EVERY_S
        heap.settle()
        assert late() is None
    finally:
        gc.unfreeze()
