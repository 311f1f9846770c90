"""Waiting for something that happens in another thread or process: one helper, `eventually`.

Tests never sleep a fixed time to synchronise; they poll a condition up to a deadline, and a
deadline that passes fails the test with what was awaited and what was last seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    check: Callable[[], T],
    timeout: float,
    describe: str | Callable[[], str],
    *,
    interval: float = 0.2,
) -> T:
    """Call check() until it returns something truthy, and return that.

    check() runs at least once (also with a timeout already used up), then every `interval`
    seconds until `timeout` seconds have passed. An Exception it raises (an assert too) counts
    as "not yet"; pytest.fail() inside it stops the wait at once (it is no Exception). Past
    the deadline the test fails with `describe` (a callable is called only then, e.g. to read
    a process's log) and with what check() last returned or raised.
    """
    deadline = time.monotonic() + timeout
    while True:
        error: Exception | None = None
        try:
            last = check()
        except Exception as exc:
            error = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    what = describe() if callable(describe) else describe
    if error is not None:
        seen = f"last raised {type(error).__name__}: {error}"
    else:
        seen = f"last value {last!r}"
    raise AssertionError(f"not within {timeout:.3g}s: {what}\n({seen})") from error
