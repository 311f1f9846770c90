"""Following runs into their sessions: the requests, batched per deployment (§6.2).

After a cycle's reads, for each deployment with runs awaiting their sessions:
  1 x GET /sessions?deployment_id=..&created_at[gte]=<oldest awaited>&limit=100 (status,
      stats and usage of all its recent sessions; pages on only past 100 sessions);
  1 x GET /sessions/{id}/events?types[]=..&order=desc&limit=10 per session whose turn looks
      over (idle having run, or terminated);
  GET /sessions/{id} for a session the list does not show, and for every awaited one where
      the API refuses the list (400, 404, 405: then for good).
Nothing is sent when no run awaits its session. A 404 session, or one unresolved past
`sessions_timeout`, resolves as failed with reason unknown. Errors skip a deployment for this
cycle (the client counts them); its runs stay awaited, nothing is lost.

The cycle's budget of reads by id (fetched.RefreshBudget, what the run refreshes left of it)
bounds these requests: after a first sync or a restart without state, every finished run of
the window needs its events call. Runs are granted newest first (the newest outcomes are the
ones alerts look at, and after a first sync the runs that end after the start, the counted
ones, are the newest); the rest stay awaited for later cycles, counted as deferred. A run
past the timeout gets one last read before it is called unknown, so the budget putting it
off does not make it unknown; only past twice the timeout is it given up unread.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, as_completed
from typing import Any, Protocol

from .backoff import Backoff, Paused
from .client import APIError, NotFoundError, Page, QoderError, RateLimitedError
from .fetched import RefreshBudget
from .outcomes import (
    DECIDING_EVENTS,
    EVENTS_LIMIT,
    IN_PROGRESS,
    SessionInfo,
    classify_session,
    not_started,
    parse_session,
)
from .sync import Resolution
from .tracker import Tracker

log = logging.getLogger(__name__)

# Sessions are created with their run; their created_at may differ from the run's (whole
# seconds in the record-only shape) by a little either way.
CREATED_SLACK_S = 60.0
LIST_PAGES = 5  # bound on list pages per deployment and cycle; the rest by id
LIST_REFUSED = frozenset({400, 404, 405})

# Unresolved at this many times sessions_timeout, a run is unknown without a last read
# (an API that keeps failing on its session, or a budget that never reaches it).
GIVE_UP = 2.0

Awaited = tuple[str, str, float]  # (run id, session id, run created_at)


class _OutOfBudget(Exception):
    """The deployment's share of this cycle's budget is spent."""


class _Allotment:
    """The requests one deployment's worker may send this cycle (one worker per deployment)."""

    def __init__(self, left: int | None) -> None:
        self.left = left  # None: unbounded

    def spend(self) -> None:
        if self.left is not None:
            if self.left <= 0:
                raise _OutOfBudget
            self.left -= 1


def _noop(_: int) -> None:
    pass


class SessionsClient(Protocol):
    def pages(self, fetch: Callable[[str | None], Page]) -> Iterator[Page]: ...

    def list_sessions(
        self, deployment_id: str, *, created_gte: str, limit: int = 100, after_id: str | None = None
    ) -> Page: ...

    def get_session(self, session_id: str) -> dict[str, Any]: ...

    def list_session_events(
        self, session_id: str, *, types: tuple[str, ...], order: str = "desc", limit: int = 10
    ) -> Page: ...


def unknown(at: float) -> Resolution:
    """Failed, reason unknown, as of `at`: now for a 404, the timeout for a session that
    never ended (so a run already past it at the first sync stays history)."""
    return Resolution("failed", "unknown", at)


class SessionFollower:
    def __init__(
        self,
        client: SessionsClient,
        backoff: Backoff,
        tracker: Tracker,
        timeout: float,
        max_retries: Callable[[str], int | None],
        on_deferred: Callable[[int], None] = _noop,
    ) -> None:
        self.client = client
        self.backoff = backoff
        self.tracker = tracker
        self.timeout = timeout
        self.max_retries = max_retries
        self.on_deferred = on_deferred
        self.list_refused = False

    def follow(self, now: float, executor: Executor, budget: RefreshBudget | None = None) -> int:
        """Resolve what can be resolved this cycle within budget; returns the runs resolved."""
        with self.tracker.lock:
            awaited = self.tracker.store.awaiting()
        if not awaited:
            return 0
        results: list[tuple[str, str, Resolution]] = []
        live: list[tuple[str, Awaited]] = []
        for dep_id, items in awaited.items():
            for item in items:
                if item[2] + GIVE_UP * self.timeout < now:
                    results.append((dep_id, item[0], unknown(item[2] + self.timeout)))
                else:
                    live.append((dep_id, item))
        plan, deferred = self._plan(live, budget)
        futures = [
            executor.submit(self._check, d, items, allot, now) for d, (items, allot) in plan.items()
        ]
        for future in as_completed(futures):
            found, skipped = future.result()
            results += found
            deferred += skipped
        if deferred:
            log.info("%d runs' session reads put off to later cycles (budget spent)", deferred)
            self.on_deferred(deferred)
        with self.tracker.lock:
            resolved = 0
            for dep_id, run_id, res in results:
                resolved += self.tracker.store.resolve(
                    dep_id,
                    run_id,
                    res,
                    counted_since=self.tracker.started_at,
                    max_retries=self.max_retries(dep_id),
                )
        return resolved

    def _plan(
        self, live: list[tuple[str, Awaited]], budget: RefreshBudget | None
    ) -> tuple[dict[str, tuple[list[Awaited], _Allotment]], int]:
        """The runs to read this cycle per deployment, newest first, each deployment with
        its share of the budget; and how many runs wait. A run costs its events call (and
        its GET where the list is refused), a deployment its list call: an upper bound, as
        a run still in progress needs no events call."""
        live.sort(key=lambda entry: (entry[1][2], entry[1][0]), reverse=True)
        per_run, per_deployment = (2, 0) if self.list_refused else (1, 1)
        plan: dict[str, tuple[list[Awaited], _Allotment]] = {}
        deferred = 0
        for dep_id, item in live:
            entry = plan.get(dep_id)
            cost = per_run + (per_deployment if entry is None else 0)
            if budget is not None and not budget.reserve(cost):
                deferred += 1
                continue
            if entry is None:
                entry = plan[dep_id] = ([], _Allotment(None if budget is None else 0))
            entry[0].append(item)
            if entry[1].left is not None:
                entry[1].left += cost
        return plan, deferred

    def _check(
        self, dep_id: str, items: list[Awaited], allot: _Allotment, now: float
    ) -> tuple[list[tuple[str, str, Resolution]], int]:
        """Worker: the resolutions of one deployment's runs found this cycle (items newest
        first), and how many runs its share of the budget left unread."""
        out: list[tuple[str, str, Resolution]] = []
        done = 0
        try:
            listed = self._list(dep_id, min(created for _, _, created in items), allot)
            for run_id, session_id, created in items:
                self.backoff.check()
                info = listed.get(session_id)
                if info is None:
                    try:
                        allot.spend()
                        info = parse_session(self.client.get_session(session_id))
                    except NotFoundError:
                        out.append((dep_id, run_id, unknown(now)))
                        done += 1
                        continue
                    if info is None:
                        done += 1
                        continue  # unusable answer: try again next cycle
                res = self._decide(info, session_id, created, allot)
                if res is None and created + self.timeout < now:
                    # Read past the timeout and still not over: unknown as of the timeout,
                    # so a run already past it at the first sync stays history, however
                    # long the budget put its read off.
                    res = unknown(created + self.timeout)
                if res is not None:
                    out.append((dep_id, run_id, res))
                done += 1
        except _OutOfBudget:
            return out, len(items) - done
        except RateLimitedError as exc:
            self.backoff.pause(exc.retry_after)
        except (QoderError, Paused) as exc:
            log.debug("deployment %s: sessions not read this cycle: %s", dep_id, exc)
        return out, 0

    def _list(self, dep_id: str, oldest: float, allot: _Allotment) -> dict[str, SessionInfo]:
        """The deployment's sessions since the oldest awaited run; {} where refused. Pages
        past the budget are not read: their sessions are read by id, within it, or wait."""
        if self.list_refused:
            return {}
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(oldest - CREATED_SLACK_S))
        found: dict[str, SessionInfo] = {}
        self.backoff.check()

        def fetch(cursor: str | None) -> Page:
            allot.spend()
            return self.client.list_sessions(dep_id, created_gte=since, limit=100, after_id=cursor)

        try:
            for page in itertools.islice(self.client.pages(fetch), LIST_PAGES):
                for item in page.data:
                    info = parse_session(item)
                    if info is not None:
                        found[info.id] = info
        except _OutOfBudget:
            pass
        except APIError as exc:
            if exc.status not in LIST_REFUSED or isinstance(exc, RateLimitedError):
                raise
            log.info("the API refuses GET /sessions (%s): reading sessions by id", exc.status)
            self.list_refused = True
        return found

    def _decide(
        self, info: SessionInfo, session_id: str, created: float, allot: _Allotment
    ) -> Resolution | None:
        if info.status in IN_PROGRESS or not_started(info):
            return None
        self.backoff.check()
        allot.spend()
        page = self.client.list_session_events(
            session_id, types=DECIDING_EVENTS, order="desc", limit=EVENTS_LIMIT
        )
        verdict = classify_session(info.status, page.data, created)
        if verdict is None:
            return None
        usage = info.usage
        return Resolution(
            verdict.status,
            verdict.reason,
            verdict.finished_at if verdict.finished_at is not None else created,
            verdict.duration_s,
            usage.tokens,
            usage.credits,
            usage.list_cost_usd,
        )
