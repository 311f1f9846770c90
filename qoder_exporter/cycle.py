"""One poll cycle: metadata, per-deployment reads in the workers, the feed, into the store."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from .backoff import Backoff
from .client import (
    AuthenticationError,
    PaginationError,
    PermissionDeniedError,
    QoderClient,
    QoderError,
)
from .feed import FeedReader, FeedResult
from .fetched import Fetched, RefreshBudget
from .reader import DeploymentReader
from .sessions import SessionFollower
from .sync import SyncPlan
from .tracker import Tracker
from .watchlist import WatchList

log = logging.getLogger(__name__)


class CycleFailed(QoderError):
    def __init__(self, message: str, *, reached: bool) -> None:
        super().__init__(message)
        self.reached = reached


@dataclass
class Cycle:
    """The parts one cycle uses; the poller builds a new one from each config."""

    discover: bool
    client: QoderClient
    backoff: Backoff
    tracker: Tracker
    watch: WatchList
    reader: DeploymentReader
    feed: FeedReader
    executor: ThreadPoolExecutor
    refresh_limit: int  # in-flight runs fetched by id per cycle, at most
    on_deferred: Callable[[int], None]
    follower: SessionFollower | None = None

    def run(self, now: float, *, first: bool) -> None:
        """Raises CycleFailed when no deployment synced, or the auth error of any."""

        def bound() -> float:
            # A record dated past the API's clock (plus skew) would hold last_success or
            # the floor in the future for good: refused, counted as invalid.
            return self.client.not_after(now)

        self.watch.not_after = self.reader.not_after = self.feed.not_after = bound
        budget = self.reader.budget = self.feed.budget = RefreshBudget(self.refresh_limit)
        try:
            self._run(now, budget, first=first)
        finally:
            if budget.deferred:
                log.warning(
                    "%d in-flight runs not refreshed this cycle (at most %d a cycle): "
                    "they are read in the next ones",
                    budget.deferred,
                    self.refresh_limit,
                )
                self.on_deferred(budget.deferred)

    def _run(self, now: float, budget: RefreshBudget, *, first: bool) -> None:
        self.watch.refresh_if_due(now, self.backoff)
        store, lookback = self.tracker.store, self.watch.lookback
        watched = self.watch.watched()
        fresh = [d for d in watched if d not in store.deployments]
        use_feed = self.discover and not first
        per_deployment = fresh if use_feed else watched
        # Plans are taken here, before any worker runs: workers never read the store.
        plans = {d: store.plan(d, now, lookback(d)) for d in per_deployment}
        ok, total = 0, len(per_deployment)
        failures: list[QoderError] = []
        if self.backoff.take_probe() and per_deployment:
            # After a rate limit, one request tells whether it is over. The others start
            # only once it has answered, so another 429 pauses them before they send.
            probe, per_deployment = per_deployment[0], per_deployment[1:]
            ok += self._apply(self.reader.read(probe, plans[probe]), now, failures)
        ok += self._read_each(plans, per_deployment, now, failures)
        if use_feed:
            rest = {d: store.plan(d, now, lookback(d)) for d in watched if d not in fresh}
            result = self.feed.read(rest, store, now, self.watch.ignored())
            total += len(result.fetched) + len(result.quiet)
            if _too_long(result):
                # More runs are new than api.max_pages pages of the feed hold (after a long
                # outage or back-off, or at 10,000s of deployments). Reading the feed again
                # would fail the same way every cycle, for good: read each deployment's own
                # list instead, as a first sync does, each bounded by its own window. The
                # next cycle is back on the feed, from what this one learnt.
                log.warning(
                    "the feed holds more new runs than api.max_pages pages: "
                    "reading %d deployments one by one this cycle",
                    len(rest),
                )
                ok += self._read_each(rest, list(rest), now, failures)
            else:
                if result.unknown_deployment:
                    self.watch.relist()
                for fetched in result.fetched:
                    ok += self._apply(fetched, now, failures)
                with self.tracker.lock:
                    self.tracker.quiet(
                        result.quiet, self._sync_now(now), self.watch.lookback, self.watch.info
                    )
                ok += len(result.quiet)
        if self.follower is not None:
            # Runs awaiting their sessions: nothing is sent when there are none.
            # Within what the in-flight refreshes left of this cycle's budget.
            self.follower.follow(now, self.executor, budget)
        for error in failures:
            if isinstance(error, (AuthenticationError, PermissionDeniedError)):
                raise error
        if failures and ok == 0:
            raise CycleFailed(str(failures[0]), reached=False)
        if failures:
            log.warning(
                "%d of %d deployments failed to sync: %s", len(failures), total, failures[0]
            )

    def _read_each(
        self,
        plans: dict[str, SyncPlan],
        deployments: list[str],
        now: float,
        failures: list[QoderError],
    ) -> int:
        """Read the deployments' own lists in the workers; returns how many synced."""
        # Each deployment is applied as soon as it is read and then let go, so only the
        # fetches not yet applied hold their pages (a first sync reads the whole window).
        # as_completed drops each future it has handed out; a list of them kept here would
        # keep every result, and so every page of a first sync, alive to the end.
        ok = 0
        for future in as_completed(
            [self.executor.submit(self.reader.read, d, plans[d]) for d in deployments]
        ):
            ok += self._apply(future.result(), now, failures)
        return ok

    def _sync_now(self, now: float) -> float:
        """The time the store syncs to. Its floor (runs below it count as dealt with) must
        not run ahead of the API's clock: were ours ahead by more than the lookback, every
        new run would fall below it. The API's Date header bounds it (+1 s: the header
        drops fractions)."""
        server_now = self.client.server_now(now)
        return now if server_now is None else min(now, server_now + 1.0)

    def _apply(self, fetched: Fetched, now: float, failures: list[QoderError]) -> int:
        """Fold one deployment's fetch into the store: 1 if it synced, else note the error."""
        sync_now = self._sync_now(now)
        dep_id = fetched.deployment_id
        with self.tracker.lock:
            if fetched.deleted:
                self.watch.forget(dep_id)
                return 1
            lookback, info = self.watch.lookback(dep_id), self.watch.info(dep_id)
            if self.tracker.apply(fetched, sync_now, lookback, info):
                return 1
        if fetched.error is not None:
            failures.append(fetched.error)
        return 0


def _too_long(result: FeedResult) -> bool:
    """Whether the feed read failed only because it needed more than api.max_pages pages."""
    error = result.fetched[0].error if result.fetched else None
    return isinstance(error, PaginationError) and error.kind == "too_many_pages"
