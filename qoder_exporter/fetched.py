"""What a read of the API brings back for one deployment, and the steps both readers share."""

from __future__ import annotations

import functools
import logging
import random
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from .backoff import Backoff
from .client import NotFoundError, QoderError
from .models import ParseError, Run, parse_run

log = logging.getLogger(__name__)
T = TypeVar("T")


class RunGetter(Protocol):
    def get_run(self, run_id: str) -> dict[str, Any]: ...


@dataclass
class Fetched:
    deployment_id: str
    runs: list[Run] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    error: QoderError | None = None
    deleted: bool = False


def parse_records(
    items: list[Any], parse: Callable[[Any], T], kind: str, count_invalid: Callable[[str], None]
) -> list[T]:
    """Parse API records, skipping (counting and logging) the unusable ones."""
    out = []
    for item in items:
        try:
            out.append(parse(item))
        except ParseError as exc:
            count_invalid(kind)
            log.warning("skipping unusable %s record: %s", kind, exc)
    return out


class RefreshBudget:
    """How many in-flight runs one cycle may fetch by id, shared by the poll workers.

    A hostile or broken API can keep creating runs that stay running: each would cost a GET
    per cycle, and every cycle would be slower than the last. Past the budget the rest wait
    for later cycles (counted in `deferred`).
    """

    def __init__(self, limit: int) -> None:
        self._lock = threading.Lock()
        self.left = limit
        self.deferred = 0

    def take(self, wanted: int) -> int:
        """Grant up to `wanted` fetches; the rest are deferred."""
        with self._lock:
            granted = min(wanted, self.left)
            self.left -= granted
            self.deferred += wanted - granted
            return granted

    def reserve(self, wanted: int) -> bool:
        """All of `wanted` requests or none, not counted here: the session follower draws
        its reads from what the run refreshes left, and counts its own deferrals."""
        with self._lock:
            if wanted > self.left:
                return False
            self.left -= wanted
            return True


Bound = Callable[[], "float | None"]


def no_bound() -> float | None:
    return None


def run_parser(not_after: Bound) -> Callable[[Any], Run]:
    """parse_run refusing times past not_after(): the API's clock plus skew, read when the
    records arrive (the Date header of the answer that brought them moves it on)."""
    return functools.partial(parse_run, not_after=not_after())


def refresh_in_flight(
    client: RunGetter,
    backoff: Backoff,
    count_invalid: Callable[[str], None],
    out: Fetched,
    in_flight: Iterable[str],
    *,
    not_after: Bound = no_bound,
    budget: RefreshBudget | None = None,
) -> None:
    """GET by id each in-flight run the pages read did not show, within the budget."""
    seen = {r.id for r in out.runs}
    missing = sorted(set(in_flight) - seen)
    if budget is not None:
        granted = budget.take(len(missing))
        if granted < len(missing):
            # Which runs wait is drawn anew each cycle, so that none waits for ever.
            missing = sorted(random.sample(missing, granted))
    for run_id in missing:
        backoff.check()
        try:
            record = client.get_run(run_id)
            out.runs += parse_records([record], run_parser(not_after), "run", count_invalid)
        except NotFoundError:
            out.vanished.append(run_id)
