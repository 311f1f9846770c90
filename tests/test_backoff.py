"""The rate-limit pause under concurrent use by poll workers (no sockets)."""

from __future__ import annotations

import contextlib
import threading
import time

from qoder_exporter.backoff import Backoff, Paused
from qoder_exporter.client import MAX_RETRY_AFTER
from qoder_exporter.selfmetrics import SelfMetrics

THREADS = 8
PAUSES_EACH = 200


def hammer(backoff: Backoff, worker: int, errors: list[BaseException]) -> None:
    try:
        for i in range(PAUSES_EACH):
            backoff.pause(float(worker * PAUSES_EACH + i) / 100.0)
            with contextlib.suppress(Paused):
                backoff.check()
    except BaseException as exc:  # reported to the test thread
        errors.append(exc)


def test_pauses_from_many_threads_keep_the_longest_and_count_each() -> None:
    now = [0.0]

    def clock() -> float:
        # Give up the GIL inside pause(): without the lock another thread's longer pause,
        # written between our read of the old end and our write, would be lost.
        time.sleep(0)
        return now[0]

    metrics = SelfMetrics()
    backoff = Backoff(clock, metrics.count_rate_limited)
    errors: list[BaseException] = []
    threads = [threading.Thread(target=hammer, args=(backoff, w, errors)) for w in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert metrics.copy().rate_limited == THREADS * PAUSES_EACH
    longest = (THREADS * PAUSES_EACH - 1) / 100.0
    assert backoff.left() == longest
    assert backoff.take_probe() is True
    assert backoff.take_probe() is False, "one probe per pause"


def test_check_raises_while_paused_and_not_after() -> None:
    now = [0.0]
    backoff = Backoff(lambda: now[0])
    backoff.check()  # never paused
    backoff.pause(30.0)
    try:
        backoff.check()
        raise AssertionError("expected Paused")
    except Paused:
        pass
    now[0] = 30.5
    backoff.check()


def test_a_clock_stepped_back_ends_the_pause() -> None:
    now = [10_000.0]
    backoff = Backoff(lambda: now[0])
    backoff.pause(10.0)
    now[0] -= 2 * MAX_RETRY_AFTER
    backoff.check()  # no wait for hours
    assert backoff.left() <= 0


def test_clear_forgets_the_pause_but_not_the_probe() -> None:
    backoff = Backoff(lambda: 0.0)
    backoff.pause(60.0)
    backoff.clear()
    backoff.check()
    assert backoff.take_probe() is True
