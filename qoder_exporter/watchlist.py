"""Which deployments are watched: the configured ones, or in discover mode all listed ones.

Keeps their metadata (names, paused state), refreshed every METADATA_REFRESH_S, and forgets
a deployment the API answers 404 for.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from .backoff import Backoff
from .client import (
    APIError,
    AuthenticationError,
    NotFoundError,
    Page,
    PermissionDeniedError,
    QoderError,
    RateLimitedError,
)
from .config import Config
from .feed import FeedLimit
from .fetched import Bound, no_bound, parse_records
from .models import Deployment, ParseError, parse_deployment
from .sharding import NO_SHARD, Shard

log = logging.getLogger(__name__)

# Deployment metadata (names, paused state) changes rarely; refreshing it at this pace
# keeps a quiet cycle at one request per deployment.
METADATA_REFRESH_S = 300.0


class DeploymentsClient(Protocol):
    def pages(self, fetch: Callable[[str | None], Page]) -> Iterator[Page]: ...

    def list_deployments(self, *, limit: int = 100, after_id: str | None = None) -> Page: ...

    def get_deployment(self, deployment_id: str) -> dict[str, Any]: ...


class WatchList:
    def __init__(
        self,
        config: Config,
        client: DeploymentsClient,
        limit: FeedLimit,
        count_invalid: Callable[[str], None],
        on_forget: Callable[[str], None],
        known: dict[str, Deployment] | None = None,
        shard: Shard = NO_SHARD,
    ) -> None:
        self.config = config
        self.shard = shard  # only the deployments this shard owns are watched
        self.client = client
        self.limit = limit
        self.count_invalid = count_invalid
        self.on_forget = on_forget  # drops the deployment's series
        # Set by the cycle: a created_at past it is dropped (see models.parse_deployment).
        self.not_after: Bound = no_bound
        self.deployments: dict[str, Deployment] = dict(known or {})
        self.forgotten: set[str] = set()  # answered 404 (configured mode: until listed again)
        # Discover mode: listed but left out by discover's include/exclude, as of the last
        # listing. The feed ignores their runs rather than listing again for them.
        self.excluded: frozenset[str] = frozenset()
        self._configured = [d for d in config.deployments if shard.owns(d.id)]
        self._lookbacks = {d.id: d.lookback or config.lookback for d in self._configured}
        self._metadata_at: float | None = None

    def lookback(self, deployment_id: str) -> float:
        return self._lookbacks.get(deployment_id, self.config.lookback)

    def watched(self) -> list[str]:
        if self.config.discover:
            return sorted(self.deployments)
        return [d.id for d in self._configured if d.id not in self.forgotten]

    def missing(self) -> tuple[str, ...]:
        """Configured deployments the API answered 404 for (discover mode: none)."""
        if self.config.discover:
            return ()
        return tuple(d.id for d in self._configured if d.id in self.forgotten)

    def info(self, deployment_id: str) -> Deployment | None:
        return self.deployments.get(deployment_id)

    def unwatched(self, deployment_ids: Iterable[str]) -> list[str]:
        """Those of deployment_ids no longer listed or another shard's (restored state, reload)."""
        if self.config.discover:
            return [d for d in deployment_ids if not self.shard.owns(d)]
        listed = {d.id for d in self._configured}
        gone = [d for d in deployment_ids if d not in listed]
        for dep_id in gone:
            self.deployments.pop(dep_id, None)
        return gone

    def ignored(self) -> set[str]:
        """Deployments whose runs in the feed are expected and skipped (no relisting)."""
        return self.forgotten | self.excluded

    def relist(self) -> None:
        """Refresh the metadata at the next cycle (a new deployment showed up)."""
        self._metadata_at = None

    def refresh_if_due(self, now: float, backoff: Backoff) -> None:
        if self._metadata_at is not None and now - self._metadata_at < METADATA_REFRESH_S:
            return
        try:
            self._refresh()
            self._metadata_at = now
        except RateLimitedError as exc:
            backoff.pause(exc.retry_after)
            raise
        except (AuthenticationError, PermissionDeniedError):
            raise
        except QoderError as exc:
            # Old names and states are still better than no run data: go on.
            if self.config.discover and not self.deployments:
                raise
            log.warning("deployment metadata not refreshed: %s", exc)

    def forget(self, deployment_id: str) -> None:
        if deployment_id not in self.forgotten:
            log.warning("deployment %s no longer exists: dropping its series", deployment_id)
        self.forgotten.add(deployment_id)
        self.deployments.pop(deployment_id, None)
        self.on_forget(deployment_id)

    def _refresh(self) -> None:
        try:
            listed = self._list()
        except APIError as exc:
            if not self.limit.refused(exc):
                raise
            listed = self._list()
        if self.config.discover:
            listed = {d: dep for d, dep in listed.items() if self.shard.owns(d)}
            keep = self.config.discover_filter
            excluded = frozenset(d for d, dep in listed.items() if keep and not keep.keeps(dep))
            for gone in set(self.deployments) - set(listed):
                self.forget(gone)
            for dropped in excluded & set(self.deployments):
                # Still exists, no longer selected (renamed, paused...): drop its series.
                log.info("deployment %s left out by discover's filter", dropped)
                self.on_forget(dropped)
            self.excluded = excluded
            self.deployments = {d: dep for d, dep in listed.items() if d not in excluded}
            return
        for dep_cfg in self._configured:
            dep_id = dep_cfg.id
            if dep_id in listed:
                self.deployments[dep_id] = listed[dep_id]
                self.forgotten.discard(dep_id)
                continue
            # Not listed: archived (still readable by id) or deleted (404).
            try:
                self.deployments[dep_id] = parse_deployment(
                    self.client.get_deployment(dep_id), self.not_after()
                )
                self.forgotten.discard(dep_id)
            except NotFoundError:
                self.forget(dep_id)
            except ParseError as exc:
                self.count_invalid("deployment")
                log.warning("deployment %s: unusable record: %s", dep_id, exc)

    def _list(self) -> dict[str, Deployment]:
        # Pages as large as the feed's: listing 1,000 deployments takes 1 request, not 10,
        # where the API allows it.
        listed: dict[str, Deployment] = {}
        for page in self.client.pages(
            lambda c: self.client.list_deployments(limit=self.limit.value, after_id=c)
        ):
            parse = functools.partial(parse_deployment, not_after=self.not_after())
            for dep in parse_records(page.data, parse, "deployment", self.count_invalid):
                listed[dep.id] = dep
        return listed
