"""Poll cycles: fetch from the API, fold into the store, publish a Snapshot.

The Poller only orchestrates; each step lives in its own module (see ARCHITECTURE.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from . import state
from .backoff import Backoff, Paused
from .client import AuthenticationError, QoderClient, QoderError
from .config import Config
from .cycle import CycleFailed
from .heap import HEAP
from .models import Deployment
from .parts import build_parts, new_client, new_executor, refresh_limit, replace_client
from .selfmetrics import PollStats, SelfMetrics
from .sharding import NO_SHARD, Shard
from .snapshot import Snapshot
from .snapshot_builder import ReloadStatus, ViewCache, build_snapshot
from .statewriter import StateWriter
from .sync import RunStore
from .tokenfile import TokenFile
from .tracker import Tracker

__all__ = ["Poller", "refresh_limit"]

log = logging.getLogger(__name__)


class Poller:
    """Runs poll cycles; the latest Snapshot is always available, never blocked on the API."""

    def __init__(
        self,
        config: Config,
        client: QoderClient | None = None,
        *,
        clock: Callable[[], float] = time.time,
        on_snapshot: Callable[[Snapshot], None] | None = None,
        shard: Shard = NO_SHARD,
        account: str | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.shard = shard
        self.account = account  # the `account` label, when accounts are configured
        self.on_snapshot = on_snapshot
        # Survive reloads: the exporter's own counters.
        self.metrics = SelfMetrics()
        self.stats = PollStats()
        self.reload = ReloadStatus()
        self.client = client or new_client(config)
        self.client.observer = self.metrics.observe_request
        self.client.on_error = self.metrics.count_error
        self.backoff = Backoff(clock, self.metrics.count_rate_limited)
        self.tracker = Tracker(config.duration_buckets, clock())
        self._writer = StateWriter()
        self._token = TokenFile(config.api.token_file)
        self._executor = new_executor(config)
        self._pending: Config | None = None
        self._wake = threading.Event()
        self._early_at: float | None = None  # when a reload last cut a wait short
        self.views = ViewCache()  # unchanged deployments keep their views between polls
        self._build_parts(config, known={})
        if config.state_file:
            state.load(
                self.store,
                config.state_file,
                config.api.url,
                now=clock(),
                max_clock_skew=config.api.max_clock_skew,
            )
            self._drop_unwatched()
        self.snapshot = self._build_snapshot()

    def _build_parts(self, config: Config, known: dict[str, Deployment]) -> None:
        parts = build_parts(
            config,
            client=self.client,
            backoff=self.backoff,
            tracker=self.tracker,
            executor=self._executor,
            metrics=self.metrics,
            shard=self.shard,
            known=known,
            on_forget=self._drop,
        )
        self.limit, self.watch, self.cycle = parts.limit, parts.watch, parts.cycle

    # --- public ------------------------------------------------------------------------

    @property
    def store(self) -> RunStore:
        return self.tracker.store

    def lookback(self, deployment_id: str) -> float:
        return self.watch.lookback(deployment_id)

    def polls_done(self) -> int:
        return self.stats.done()

    def run(self, stop: threading.Event) -> None:
        """Poll every poll_interval until stop is set."""
        while not stop.is_set():
            began = time.monotonic()
            self.poll_once()
            HEAP.settle()
            due = began + self.config.poll_interval
            self._wait(stop, max(due, time.monotonic() + self.backoff.left()))

    def _wait(self, stop: threading.Event, due: float) -> None:
        # A reload cuts the wait short at most once per poll_interval: a storm of reloads
        # (SIGHUP, POST /-/reload) must not become a storm of API requests. The new config
        # is taken at the next cycle either way.
        while not stop.is_set():
            left = due - time.monotonic()
            if left <= 0:
                return
            self._wake.wait(left)
            self._wake.clear()
            if self._pending is None:
                return  # stop, or a plain wake()
            now = time.monotonic()
            if self._early_at is None or now - self._early_at >= self.config.poll_interval:
                self._early_at = now
                return

    def wake(self) -> None:
        """End the current wait early (stop, reload)."""
        self._wake.set()

    def poll_once(self) -> bool:
        """One cycle; returns whether it reached the API and authenticated (qoder_up)."""
        began = time.monotonic()
        now = self.clock()
        reached, error = False, None
        try:
            self._take_pending_config(now)
            self.backoff.check()
            self._token.refresh(self.client, force=False)
            try:
                self.cycle.run(now, first=self.polls_done() == 0)
            except AuthenticationError:
                # The token file may have been rotated since we last read it: once more.
                if not self._token.refresh(self.client, force=True):
                    raise
                self.cycle.run(now, first=self.polls_done() == 0)
            reached = True
        except Paused:
            error = "rate limited by the API: backing off"
        except CycleFailed as exc:
            reached, error = exc.reached, str(exc)
        except QoderError as exc:
            error = str(exc)
        except Exception as exc:  # a bug must not kill the poll thread
            log.exception("poll cycle failed")
            error = f"internal error: {type(exc).__name__}"
        if error is not None:
            log.warning("poll failed: %s", error)
        self.stats.record(reached, error, now, time.monotonic() - began)
        if reached:
            self.save_state()
        self.publish()
        return reached

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def save_state(self) -> None:
        """Write the state file if configured and the store changed; failures are logged."""
        path = self.config.state_file
        if path:
            with self.tracker.lock:
                self._writer.save(self.tracker.store, path, self.config.api.url)

    def reconfigure(self, config: Config) -> None:
        """Take a new, already validated config at the start of the next cycle."""
        self._pending = config
        self.wake()

    def publish(self) -> None:
        """Rebuild the snapshot and hand it to on_snapshot (after a poll, or a rejected reload)."""
        self.snapshot = self._build_snapshot()
        if self.on_snapshot is not None:
            try:
                self.on_snapshot(self.snapshot)
            except Exception:  # a bad value must not kill the poll thread; scrapes go on
                log.exception("cannot render the snapshot; serving the previous one")

    def note_reload(self, ok: bool) -> None:
        self.reload = ReloadStatus(ok, time.time() if ok else self.reload.at)

    # --- configuration -----------------------------------------------------------------

    def _take_pending_config(self, now: float) -> None:
        new, self._pending = self._pending, None
        if new is None:
            return
        old = self.config
        if new.api != old.api:
            self.client = replace_client(new, self.client)
            self._token = TokenFile(new.api.token_file)
            self.backoff.clear()
        with self.tracker.lock:
            known = self.watch.deployments
            if new.api.url != old.api.url:
                # Another API (account or region): nothing we counted is about it.
                self.tracker = Tracker(new.duration_buckets, now)
                self._writer = StateWriter()
                known = {}
            elif new.duration_buckets != old.duration_buckets:
                log.warning("duration_buckets changed: run-duration histograms start again")
                self.store.rebucket(new.duration_buckets)
            if new.concurrency != old.concurrency:
                self._executor.shutdown(wait=False)
                self._executor = new_executor(new)
            self.config = new
            # Fresh parts; a new watch list refreshes names and deployments at once.
            self._build_parts(new, known)
            self._drop_unwatched()
        log.info("configuration applied")

    def _drop(self, deployment_id: str) -> None:
        self.tracker.drop(deployment_id)  # the tracker of the moment: reloads replace it

    def _drop_unwatched(self) -> None:
        for dep_id in self.watch.unwatched(list(self.store.deployments)):
            self.tracker.drop(dep_id)

    def _build_snapshot(self) -> Snapshot:
        with self.tracker.lock:
            snap = build_snapshot(
                self.clock(),
                self.tracker,
                self.watch,
                self.stats,
                self.metrics,
                self.client.bucket,
                self.config.poll_interval,
                self.reload,
                self.views,
            )
        if self.shard.sharded or self.account is not None:
            snap = replace(snap, shard=self.shard if self.shard.sharded else None)
            snap = replace(snap, account=self.account)
        return snap
