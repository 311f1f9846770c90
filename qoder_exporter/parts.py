"""The poller's parts built from a config: a fresh set at start and on each reload.

A reload builds new parts rather than patching fields one by one; what survives a reload
(the client unless `api` changed, the backoff, the store, the executor, the self-metrics)
is passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .backoff import Backoff
from .client import QoderClient
from .config import Config
from .cycle import Cycle
from .feed import FeedLimit, FeedReader
from .models import Deployment
from .reader import DeploymentReader
from .selfmetrics import SelfMetrics
from .sessions import SessionFollower
from .sharding import Shard
from .tracker import Tracker
from .watchlist import WatchList

__all__ = [
    "Parts",
    "build_parts",
    "new_client",
    "new_executor",
    "refresh_limit",
    "replace_client",
]


@dataclass(frozen=True)
class Parts:
    """What one config's cycles run with. Both readers and the session follower are the
    cycle's; the feed limit is shared by the watch list and the feed reader."""

    limit: FeedLimit
    watch: WatchList
    cycle: Cycle


def build_parts(
    config: Config,
    *,
    client: QoderClient,
    backoff: Backoff,
    tracker: Tracker,
    executor: ThreadPoolExecutor,
    metrics: SelfMetrics,
    shard: Shard,
    known: dict[str, Deployment],
    on_forget: Callable[[str], None],
) -> Parts:
    """New parts; `known` are the deployments the previous watch list knew (none at start)."""
    count = metrics.count_invalid
    limit = FeedLimit.for_config(config)
    watch = WatchList(config, client, limit, count, on_forget, known, shard)
    feed = FeedReader(client, backoff, limit, count)
    feed.owns = shard.owns
    reader = DeploymentReader(client, backoff, config.page_size, count, config.sessions)
    tracker.sessions_mode = config.sessions

    def max_retries(deployment_id: str) -> int | None:
        info = watch.info(deployment_id)
        return info.max_retries if info is not None else None

    follower = SessionFollower(
        client,
        backoff,
        tracker,
        config.sessions_timeout,
        max_retries,
        metrics.count_deferred_sessions,
    )
    cycle = Cycle(
        config.discover,
        client,
        backoff,
        tracker,
        watch,
        reader,
        feed,
        executor,
        refresh_limit(config),
        metrics.count_deferred,
        follower,
    )
    return Parts(limit, watch, cycle)


def new_client(config: Config) -> QoderClient:
    client = QoderClient(
        config.api.url,
        config.api.token,
        timeout=config.api.timeout,
        max_retries=config.api.max_retries,
        requests_per_second=config.api.requests_per_second,
        deadline=config.api.deadline,
        max_response_bytes=config.api.max_response_bytes,
        max_pages=config.api.max_pages,
        max_clock_skew=config.api.max_clock_skew,
    )
    if config.api.workspace_id:
        client.session.headers["qoder-workspace-id"] = config.api.workspace_id
    return client


def replace_client(config: Config, old: QoderClient) -> QoderClient:
    """The client for a changed `api` section: it reports to the same counters (and sleeps
    the same way) as the one it replaces, whose connections are closed."""
    client = new_client(config)
    client.observer, client.on_error, client.sleep = old.observer, old.on_error, old.sleep
    old.session.close()
    return client


def refresh_limit(config: Config) -> int:
    """In-flight runs fetched by id per cycle: half the requests the rate budget allows in a
    poll interval (at least 100), so that the pages always have room."""
    return max(100, int(config.api.requests_per_second * config.poll_interval / 2))


def new_executor(config: Config) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(config.concurrency, thread_name_prefix="qoder-poll")
