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

Awaited = tuple[str, str, float]  # (run id, session id, run created_at)


class SessionsClient(Protocol):
    def pages(self, fetch: Callable[[str | None], Page]) -> Iterator[Page]: ...

    def list_sessions(
        self, deployment_id: str, *, created_gte: str, limit: int = 100, after_id: str | None = None
    ) -> Page: ...

    def get_session(self, session_id: str) -> dict[str, Any]: ...

    def list_session_events(
        self, session_id: str, *, types: tuple[str, ...], order: str = "desc", limit: int = 10
    ) -> Page: ...


def unknown(now: float) -> Resolution:
    return Resolution("failed", "unknown", now)


class SessionFollower:
    def __init__(
        self,
        client: SessionsClient,
        backoff: Backoff,
        tracker: Tracker,
        timeout: float,
        max_retries: Callable[[str], int | None],
    ) -> None:
        self.client = client
        self.backoff = backoff
        self.tracker = tracker
        self.timeout = timeout
        self.max_retries = max_retries
        self.list_refused = False

    def follow(self, now: float, executor: Executor) -> int:
        """Resolve what can be resolved this cycle; returns the runs resolved."""
        with self.tracker.lock:
            awaited = self.tracker.store.awaiting()
        if not awaited:
            return 0
        results: list[tuple[str, str, Resolution]] = []
        live: dict[str, list[Awaited]] = {}
        for dep_id, items in awaited.items():
            for item in items:
                if item[2] + self.timeout < now:
                    results.append((dep_id, item[0], unknown(now)))
                else:
                    live.setdefault(dep_id, []).append(item)
        futures = [executor.submit(self._check, d, items, now) for d, items in live.items()]
        for future in as_completed(futures):
            results += future.result()
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

    def _check(
        self, dep_id: str, items: list[Awaited], now: float
    ) -> list[tuple[str, str, Resolution]]:
        """Worker: the resolutions of one deployment's awaited runs found this cycle."""
        out: list[tuple[str, str, Resolution]] = []
        try:
            listed = self._list(dep_id, min(created for _, _, created in items))
            for run_id, session_id, created in items:
                self.backoff.check()
                info = listed.get(session_id)
                if info is None:
                    try:
                        info = parse_session(self.client.get_session(session_id))
                    except NotFoundError:
                        out.append((dep_id, run_id, unknown(now)))
                        continue
                    if info is None:
                        continue  # unusable answer: try again next cycle
                res = self._decide(info, session_id, created)
                if res is not None:
                    out.append((dep_id, run_id, res))
        except RateLimitedError as exc:
            self.backoff.pause(exc.retry_after)
        except (QoderError, Paused) as exc:
            log.debug("deployment %s: sessions not read this cycle: %s", dep_id, exc)
        return out

    def _list(self, dep_id: str, oldest: float) -> dict[str, SessionInfo]:
        """The deployment's sessions since the oldest awaited run; {} where refused."""
        if self.list_refused:
            return {}
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(oldest - CREATED_SLACK_S))
        found: dict[str, SessionInfo] = {}
        self.backoff.check()
        try:
            pages = self.client.pages(
                lambda c: self.client.list_sessions(
                    dep_id, created_gte=since, limit=100, after_id=c
                )
            )
            for page in itertools.islice(pages, LIST_PAGES):
                for item in page.data:
                    info = parse_session(item)
                    if info is not None:
                        found[info.id] = info
        except APIError as exc:
            if exc.status not in LIST_REFUSED or isinstance(exc, RateLimitedError):
                raise
            log.info("the API refuses GET /sessions (%s): reading sessions by id", exc.status)
            self.list_refused = True
        return found

    def _decide(self, info: SessionInfo, session_id: str, created: float) -> Resolution | None:
        if info.status in IN_PROGRESS or not_started(info):
            return None
        self.backoff.check()
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
