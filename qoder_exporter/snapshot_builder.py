"""Builds the Snapshot that /metrics and the landing page read, from the poller's parts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .client import TokenBucket
from .models import Deployment
from .selfmetrics import POLL_BUCKETS, REQUEST_BUCKETS, PollStats, SelfMetrics, frozen
from .snapshot import DeploymentView, Snapshot
from .sync import DeploymentState, RunStore
from .tracker import SyncStatus, Tracker
from .watchlist import WatchList


@dataclass(frozen=True)
class ReloadStatus:
    ok: bool | None = None  # None: never reloaded
    at: float | None = None


@dataclass(frozen=True, slots=True)
class _Kept:
    """One deployment's view parts from the store, valid while its state (the same object at
    the same version), metadata and lookback hold, and until `until` (when its oldest run in
    the window leaves the window)."""

    state: DeploymentState | None
    version: int
    info: Deployment | None
    lookback: float
    until: float
    parts: dict[str, Any]
    view: DeploymentView

    def holds(
        self, state: DeploymentState | None, info: Deployment | None, lookback: float, now: float
    ) -> bool:
        return (
            self.state is state
            and self.version == (state.version if state else -1)
            and (self.info is info or self.info == info)
            and self.lookback == lookback
            and now <= self.until
        )


class ViewCache:
    """The previous snapshot's views: a deployment whose store state (its version), metadata,
    lookback and sync status did not change keeps its view object, and the collector keeps
    its rendered lines, so a quiet poll costs little per deployment."""

    def __init__(self) -> None:
        self._kept: dict[str, _Kept] = {}
        self._buckets: tuple[float, ...] = ()  # the store's when _kept was made
        self.built = 0  # views whose parts were read from the store again


def build_snapshot(
    now: float,
    tracker: Tracker,
    watch: WatchList,
    stats: PollStats,
    metrics: SelfMetrics,
    bucket: TokenBucket,
    poll_interval: float,
    reload: ReloadStatus,
    cache: ViewCache | None = None,
) -> Snapshot:
    """Call with tracker.lock held."""
    store = tracker.store
    cache = cache or ViewCache()
    if cache._buckets != store.buckets:
        cache._kept, cache._buckets = {}, store.buckets  # other histogram bounds: all anew
    kept: dict[str, _Kept] = {}
    views = []
    never = SyncStatus()
    for dep_id in watch.watched():
        state = store.deployments.get(dep_id)
        sync = tracker.sync.get(dep_id, never)
        info = watch.info(dep_id)
        lookback = watch.lookback(dep_id)
        old = cache._kept.get(dep_id)
        if old is not None and old.holds(state, info, lookback, now):
            if old.view.sync_ok == sync.ok and old.view.last_error == sync.error:
                # Nothing new (most deployments, most polls): the same view object, which
                # the collector skips without comparing.
                kept[dep_id] = old
                views.append(old.view)
                continue
            parts, until = old.parts, old.until
        else:
            cache.built += 1
            parts, until = _parts(store, dep_id, state, info, now, lookback)
        view = DeploymentView(id=dep_id, info=info, sync_ok=sync.ok, last_error=sync.error, **parts)
        version = state.version if state else -1
        kept[dep_id] = _Kept(state, version, info, lookback, until, parts, view)
        views.append(view)
    cache._kept = kept
    counters = metrics.copy()
    return Snapshot(
        taken_at=now,
        buckets=store.buckets,
        deployments=tuple(views),
        up=stats.up,
        polls_done=stats.done(),
        last_success_poll=stats.last_success,
        poll_interval=poll_interval,
        polls=dict(stats.polls),
        poll_duration=frozen(stats.hist),
        requests=counters.requests,
        request_durations=counters.request_durations,
        request_duration_buckets=REQUEST_BUCKETS,
        poll_duration_buckets=POLL_BUCKETS,
        rate_limit_waits=bucket.waits,
        rate_limit_wait_seconds=bucket.waited_seconds,
        rate_limited=counters.rate_limited,
        deferred_refreshes=counters.deferred,
        deferred_session_reads=counters.deferred_sessions,
        invalid_records=counters.invalid,
        api_errors=counters.errors,
        tracked_runs=store.size(),
        missing=watch.missing(),
        last_error=stats.last_error,
        reload_ok=reload.ok,
        reload_at=reload.at,
        metrics=watch.config.metrics,
        last_sync={d: s.at for d, s in tracker.sync.items() if s.at is not None},
    )


def _parts(
    store: RunStore,
    dep_id: str,
    state: DeploymentState | None,
    info: Deployment | None,
    now: float,
    lookback: float,
) -> tuple[dict[str, Any], float]:
    """A view's fields read from the store, and until when they hold (see _Kept)."""
    recent, until = store.recent_until(dep_id, now, lookback)
    parts = {
        "recent": recent,
        "totals": dict(state.totals) if state else {},
        "durations": {k: frozen(h) for k, h in state.durations.items()} if state else {},
        "errors": dict(state.errors) if state else {},
        "last_success": state.last_success if state else None,
        "last_finished_status": state.last_finished[2] if state and state.last_finished else None,
        "oldest_in_flight": store.oldest_in_flight(dep_id),
        **_view_extras(state, store.expected(dep_id, info)),
    }
    return parts, until


def _view_extras(st: DeploymentState | None, expected: float | None) -> dict[str, Any]:
    """The run-history fields of a DeploymentView: trigger counts, streak, last run, queue."""
    if st is None:
        return {}
    return {
        "by_trigger": dict(st.by_trigger),
        "retried_failures": st.retried,
        "queue": frozen(st.queue) if st.queue else None,
        "consecutive_failures": st.consecutive,
        "last_run": st.last_run,
        "last_failure": st.last_failure,
        "expected_run": expected,
        "reasons": dict(st.reasons),
        "tokens": dict(st.tokens),
        "credits": st.credits,
        "list_cost_usd": st.list_cost_usd,
        "session_tokens": frozen(st.session_tokens) if st.session_tokens else None,
    }
