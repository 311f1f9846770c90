"""Discover mode's reader: new runs of every deployment from the cross-deployment feed.

After the first sync, one listing of /deployment_runs (newest first) back to the runs we
know replaces a listing per deployment. In-flight runs lying further down the feed are
reached by jumping to the pages that hold them (sync.plan_jumps), by the status lists, or
by id. Reads the store but never writes it: the poller applies what this returns.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from .backoff import Backoff, Paused
from .client import APIError, Page, QoderError, RateLimitedError
from .config import Config
from .fetched import (
    Bound,
    Fetched,
    RefreshBudget,
    no_bound,
    parse_records,
    refresh_in_flight,
    run_parser,
)
from .models import IN_FLIGHT, Run
from .reader import HISTORY_PAGES
from .sync import OVERLAP_S, RunStore, SyncPlan, plan_jumps

log = logging.getLogger(__name__)

FEED_PAGE_SIZE = 1000  # tried first for the feed; see feed_limit()
# Runs in flight for longer than this are not looked for by jumping along the feed.
JUMP_HORIZON_S = 3600.0
# Other shards' runs a shard remembers (an id and a time each): a few MB at most.
MAX_FOREIGN_RUNS = 200_000


class FeedClient(Protocol):
    """What the feed reader needs of QoderClient (tests pass a scripted fake)."""

    def pages(self, fetch: Callable[[str | None], Page]) -> Iterator[Page]: ...

    def list_all_runs(
        self, *, limit: int = 100, after_id: str | None = None, status: str | None = None
    ) -> Page: ...

    def get_run(self, run_id: str) -> dict[str, Any]: ...


def feed_limit(config: Config) -> int:
    """Page size for the cross-deployment feed and, in discover mode, the deployment list.

    The feed holds every deployment's runs, so its pages fill fast: with the default
    page_size, try the larger cap of the API generation that allows 1000 (a tenth of the
    requests at 1,000 deployments); the first 400 falls back to page_size for good.
    """
    if config.discover and not config.page_size_set:
        return FEED_PAGE_SIZE
    return config.page_size


class FeedLimit:
    """The page size for the feed and the deployment list, shrunk once on a 400."""

    def __init__(self, value: int, page_size: int) -> None:
        self.value = value
        self.page_size = page_size

    @classmethod
    def for_config(cls, config: Config) -> FeedLimit:
        return cls(feed_limit(config), config.page_size)

    def refused(self, error: BaseException | None) -> bool:
        """True (once) when the API answered 400 to a page larger than page_size."""
        if not (
            isinstance(error, APIError) and error.status == 400 and self.value > self.page_size
        ):
            return False
        # One generation of the API caps limit at 100 and answers 400 above it.
        log.info("the API refuses pages of %d records: using %d", self.value, self.page_size)
        self.value = self.page_size
        return True


@dataclass
class FeedResult:
    # The planned deployments the feed showed something of (runs, vanished runs), or all of
    # them with the error when the read failed.
    fetched: list[Fetched]
    # A run of a deployment not listed yet (and not forgotten): list deployments again.
    unknown_deployment: bool = False
    # The planned deployments it showed nothing new of, read fine: most, most cycles.
    quiet: list[str] = field(default_factory=list)


class FeedReader:
    def __init__(
        self,
        client: FeedClient,
        backoff: Backoff,
        limit: FeedLimit,
        count_invalid: Callable[[str], None],
    ) -> None:
        self.client = client
        self.backoff = backoff
        self.limit = limit
        self.count_invalid = count_invalid
        # Set by the cycle: records dated past it are refused (see models.parse_run).
        self.not_after: Bound = no_bound
        self.budget: RefreshBudget | None = None  # this cycle's fetches by id
        # Sharded: runs of another shard's deployments are not unknown, just not ours.
        self.owns: Callable[[str], bool] = _everything
        # Sharded: the other shards' runs seen in the feed within JUMP_HORIZON_S (id ->
        # created_at). They mark how far the feed was read and where a jump lands, as they
        # would in one unsharded process; without them a shard pages down to its own newest
        # run through every other shard's, and its jumps miss (a page holds fewer of its runs).
        self._foreign: dict[str, float] = {}

    def read(
        self, plans: dict[str, SyncPlan], store: RunStore, now: float, forgotten: set[str]
    ) -> FeedResult:
        """Read new runs of the planned deployments; once more with smaller pages on a 400."""
        result = self._read(plans, store, now, forgotten)
        if result.fetched and self.limit.refused(result.fetched[0].error):
            result = self._read(plans, store, now, forgotten)
        return result

    def _read(
        self, plans: dict[str, SyncPlan], store: RunStore, now: float, forgotten: set[str]
    ) -> FeedResult:
        # Only the deployments with news get a Fetched: at 10,000 deployments most have none,
        # and the cycle settles those in one pass (Tracker.quiet).
        by_dep: dict[str, Fetched] = {}
        unknown = False
        try:
            self.backoff.check()
            floor = min((p.floor for p in plans.values()), default=now)
            marks = [p.watermark for p in plans.values() if p.watermark is not None]
            marks += self._foreign.values()
            watermark = max(marks, default=None)
            foreign: dict[str, float] = {}
            # (deployment, run) of the in-flight runs shown with the status we know; by pair,
            # not by id: a record must not stand for another deployment's run of that id.
            resolved: set[tuple[str, str]] = set()
            for page in self._pages(None):
                runs = self._parse_new(page, plans, store)
                for run in runs:
                    if isinstance(run, _Settled):
                        if run.in_flight:
                            resolved.add((run.deployment_id, run.id))
                        continue  # applying it again would change nothing
                    if run.deployment_id in plans:
                        _fetched(by_dep, run.deployment_id).runs.append(run)
                    elif (
                        run.deployment_id not in forgotten
                        and run.created_at >= floor
                        and self.owns(run.deployment_id)
                    ):
                        unknown = True  # a deployment we have not listed yet: next cycle
                    if not self.owns(run.deployment_id):
                        foreign[run.id] = run.created_at
                if _reached_known(runs, plans, self._foreign, floor, watermark):
                    break
            self._remember(foreign, now)
            resolved.update(_shown(by_dep))
            stale = {
                run_id: dep_id
                for dep_id, plan in plans.items()
                for run_id in plan.in_flight
                if (dep_id, run_id) not in resolved
            }
            if len(stale) > 1:
                self._find_stale(stale, by_dep, plans, store, now, resolved)
            resolved.update(_shown(by_dep))
            # What the pages did not show is fetched by id, within the budget.
            for dep_id, plan in plans.items():
                if not plan.in_flight:
                    continue  # nothing to fetch by id (most deployments, most cycles)
                left = [r for r in plan.in_flight if (dep_id, r) not in resolved]
                if not left:
                    continue
                refresh_in_flight(
                    self.client,
                    self.backoff,
                    self.count_invalid,
                    _fetched(by_dep, dep_id),
                    left,
                    not_after=self.not_after,
                    budget=self.budget,
                )
        except RateLimitedError as exc:
            self.backoff.pause(exc.retry_after)
            return FeedResult([Fetched(d, error=exc) for d in plans], unknown)
        except (QoderError, Paused) as exc:
            err = exc if isinstance(exc, QoderError) else QoderError("backing off")
            return FeedResult([Fetched(d, error=err) for d in plans], unknown)
        quiet = [d for d in plans if d not in by_dep]
        return FeedResult(list(by_dep.values()), unknown, quiet)

    def _pages(self, status: str | None) -> Iterator[Page]:
        return self.client.pages(
            lambda c: self.client.list_all_runs(limit=self.limit.value, after_id=c, status=status)
        )

    def _parse_new(
        self, page: Page, plans: dict[str, SyncPlan], store: RunStore
    ) -> list[Run | _Settled]:
        """The page's runs, with those already accounted not parsed again.

        Most of what the feed's head shows each cycle are runs counted in an earlier cycle,
        or still in flight with the status we know; their records cannot change what is
        counted (sync.RunStore.apply), so only their id, deployment and the creation time we
        stored are kept, for _reached_known. Any record that is not such a plain, known one
        is parsed (and checked) in full.
        """
        out: list[Run | _Settled] = []
        fresh: list[Any] = []
        for item in page.data:
            if isinstance(item, dict):
                run_id, dep_id = item.get("id"), item.get("deployment_id")
                if isinstance(run_id, str) and isinstance(dep_id, str):
                    plan = plans.get(dep_id)
                    known = _known(plan, store, dep_id, run_id, item)
                    if known is not None:
                        out.append(known)
                        continue
            fresh.append(item)
        if fresh:
            out += parse_records(fresh, run_parser(self.not_after), "run", self.count_invalid)
        return out

    def _find_stale(
        self,
        stale: dict[str, str],
        by_dep: dict[str, Fetched],
        plans: dict[str, SyncPlan],
        store: RunStore,
        now: float,
        resolved: set[tuple[str, str]],
    ) -> None:
        """Learn how the in-flight runs that the feed's new pages did not show are now.

        The feed is ordered by creation, so these runs lie scattered down it. Either jump
        straight to the pages that hold them, or first list the runs still pending and
        running (a page per `limit` of them) and jump only to those that left the lists:
        they finished (or vanished). The cheaper, as far as the store can tell, wins. Runs
        left over are fetched by id afterwards (refresh_in_flight).
        """
        limit = self.limit.value
        order = _feed_order(store, stale, now - JUMP_HORIZON_S, self._foreign)
        jumps, singles = plan_jumps(order, stale, limit)
        statuses = Counter(
            store.deployments[d].runs[r].status for d, p in plans.items() for r in p.in_flight
        )
        listing = sum(max(1, -(-statuses[s] // limit)) for s in IN_FLIGHT)
        if len(jumps) + len(singles) > listing:
            # Bounded: a server that ignored `status` must not make us page through all
            # history; runs not reached here are fetched by id.
            for status in sorted(IN_FLIGHT):
                for page in itertools.islice(self._pages(status), HISTORY_PAGES):
                    self._take(page, stale, by_dep, plans, store, resolved)
            jumps, _ = plan_jumps(order, stale, limit)
        for jump in jumps:
            if not any(t in stale for t in jump.targets):
                continue
            try:
                page = self.client.list_all_runs(limit=jump.limit, after_id=jump.after_id)
            except APIError as exc:
                if exc.status != 400:
                    raise
                # The run we jump from has left the feed: these are fetched by id.
                log.debug("jump down the feed refused: %s", exc)
                continue
            self._take(page, stale, by_dep, plans, store, resolved)

    def _remember(self, seen: dict[str, float], now: float) -> None:
        if not seen and not self._foreign:
            return
        horizon = now - JUMP_HORIZON_S
        kept = {r: t for r, t in self._foreign.items() if t >= horizon}
        kept.update(seen)  # the newest, even past the horizon: where the next read stops
        if len(kept) > MAX_FOREIGN_RUNS:
            kept = dict(sorted(kept.items(), key=lambda kv: -kv[1])[:MAX_FOREIGN_RUNS])
        self._foreign = kept

    def _take(
        self,
        page: Page,
        stale: dict[str, str],
        by_dep: dict[str, Fetched],
        plans: dict[str, SyncPlan],
        store: RunStore,
        resolved: set[tuple[str, str]],
    ) -> None:
        """Hand the stale runs a page holds to their deployments.

        A jump page is read for the few stale runs in it: the other records are not parsed
        (those with an id that is not a stale run's are not wanted here), nor are the stale
        runs still in flight with the status we know (most: a run lasts minutes).
        """
        wanted = []
        for item in page.data:
            if not (isinstance(item, dict) and isinstance(item.get("id"), str)):
                wanted.append(item)  # parsed: counted and logged as unusable
                continue
            dep_id = stale.get(item["id"])
            if dep_id is None:
                continue
            # A stale run is in flight: _known answers only when its status is unchanged.
            known = _known(plans[dep_id], store, dep_id, item["id"], item)
            if item.get("deployment_id") == dep_id and known is not None:
                del stale[item["id"]]
                resolved.add((dep_id, item["id"]))
            else:
                wanted.append(item)
        for run in parse_records(wanted, run_parser(self.not_after), "run", self.count_invalid):
            dep_id = stale.pop(run.id, None)
            # A record under another deployment's name is not this run's: fetched by id.
            if dep_id is not None and dep_id == run.deployment_id:
                _fetched(by_dep, dep_id).runs.append(run)


@dataclass(frozen=True, slots=True)
class _Settled:
    """A feed record of a run accounted already, or in flight with the status we know:
    where it lies, nothing more."""

    id: str
    deployment_id: str
    created_at: float
    in_flight: bool = False


def _known(
    plan: SyncPlan | None, store: RunStore, dep_id: str, run_id: str, item: dict[str, Any]
) -> _Settled | None:
    """The record as a _Settled when applying it could change nothing, else None.

    Such a record is not checked again: its run was checked when first seen, and what we
    count of it cannot change until its status does (then the record is parsed in full,
    and a broken one counted and logged). A record that breaks while its run stays in
    flight is so not counted invalid; the run's next change is."""
    if plan is None or run_id not in plan.known or run_id in plan.awaiting:
        return None
    tracked = store.deployments[dep_id].runs.get(run_id)
    if tracked is None:
        return None
    if run_id not in plan.in_flight:
        return _Settled(run_id, dep_id, tracked.created_at)  # accounted: never changes
    if item.get("status") == tracked.status:
        return _Settled(run_id, dep_id, tracked.created_at, in_flight=True)
    return None


def _shown(by_dep: dict[str, Fetched]) -> Iterator[tuple[str, str]]:
    """(deployment, run) of every run the pages brought, each under its own deployment."""
    return ((f.deployment_id, r.id) for f in by_dep.values() for r in f.runs)


def _fetched(by_dep: dict[str, Fetched], deployment_id: str) -> Fetched:
    fetched = by_dep.get(deployment_id)
    if fetched is None:
        fetched = by_dep[deployment_id] = Fetched(deployment_id)
    return fetched


def _everything(deployment_id: str) -> bool:
    return True


def _reached_known(
    runs: list[Run | _Settled],
    plans: dict[str, SyncPlan],
    foreign: dict[str, float],
    floor: float,
    watermark: float | None,
) -> bool:
    """sync.reached_known for the feed: each run looked up in its own deployment's plan (or
    among the other shards' runs), so no union of every deployment's known runs is built
    each cycle."""
    if any(r.created_at < floor for r in runs):
        return True
    if watermark is None:
        return False
    bound = watermark - OVERLAP_S
    for r in runs:
        if r.created_at > bound:
            continue
        plan = plans.get(r.deployment_id)
        if r.id in foreign if plan is None else r.id in plan.known:
            return True
    return False


# Runs are tracked in about the order they were created (each read is folded in creation
# order, newer reads later); this much disorder is allowed for when _feed_order stops.
_ORDER_SLACK_S = 600.0


def _feed_order(
    store: RunStore, stale: dict[str, str], horizon: float, foreign: dict[str, float]
) -> list[str]:
    """The feed as the store knows it, newest first, back to the oldest stale run.

    Not further back than `horizon`: runs in flight for longer than that are few (stuck
    ones) and are found by the status lists or by id. Each deployment's runs are read from
    the newest tracked back, not all of them: the window holds a day, this a few minutes.
    """
    since = min(store.deployments[d].runs[r].created_at for r, d in stale.items())
    since = max(since, horizon)
    known = []
    for st in store.deployments.values():
        for rid, t in reversed(st.runs.items()):
            if t.created_at >= since:
                known.append((t.created_at, rid))
            elif t.created_at < since - _ORDER_SLACK_S:
                break
    known += ((t, rid) for rid, t in foreign.items() if t >= since)
    known.sort(reverse=True)
    return [rid for _, rid in known]
