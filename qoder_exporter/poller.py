"""Poll cycles: fetch from the API, fold into the RunStore, publish a Snapshot."""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from . import state
from .client import (
    MAX_RETRY_AFTER,
    APIError,
    AuthenticationError,
    NotFoundError,
    Page,
    PermissionDeniedError,
    QoderClient,
    QoderError,
    RateLimitedError,
)
from .config import Config, ConfigError, read_token_file
from .models import IN_FLIGHT, Deployment, ParseError, Run, parse_deployment, parse_run
from .snapshot import DeploymentView, HistogramData, Snapshot
from .sync import DeploymentState, Histogram, RunStore, SyncPlan, plan_jumps, reached_known

log = logging.getLogger(__name__)

# Deployment metadata (names, paused state) changes rarely; refreshing it at this pace
# keeps a quiet cycle at one request per deployment.
METADATA_REFRESH_S = 300.0
# Bound on pages read back through history to find a last success older than the window.
HISTORY_PAGES = 5
DEFAULT_PAGE_SIZE = 100  # config's default page_size
FEED_PAGE_SIZE = 1000  # tried first for the feed; see _feed_limit()
# Room on a deployment's first page for runs new since the last cycle (see _fetch).
FIRST_PAGE_SLACK = 10
# Runs in flight for longer than this are not looked for by jumping along the feed.
JUMP_HORIZON_S = 3600.0
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
POLL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _Paused(Exception):
    """The API asked us to back off; remaining work in this cycle is skipped."""


@dataclass
class _Fetched:
    deployment_id: str
    runs: list[Run] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    error: QoderError | None = None
    deleted: bool = False


@dataclass
class _SyncStatus:
    ok: bool = False
    at: float | None = None
    error: str | None = None


class SelfMetrics:
    """Counters the client threads update; copied into each snapshot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = {}
        self.durations: dict[str, Histogram] = {}
        self.invalid: dict[str, int] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.rate_limited = 0

    def observe_request(self, endpoint: str, code: str, seconds: float) -> None:
        with self._lock:
            key = (endpoint, code)
            self.requests[key] = self.requests.get(key, 0) + 1
            hist = self.durations.get(endpoint)
            if hist is None:
                hist = self.durations[endpoint] = Histogram([0] * (len(REQUEST_BUCKETS) + 1))
            hist.observe(REQUEST_BUCKETS, seconds)

    def count_error(self, endpoint: str, kind: str) -> None:
        with self._lock:
            key = (endpoint, kind)
            self.errors[key] = self.errors.get(key, 0) + 1

    def count_invalid(self, kind: str) -> None:
        with self._lock:
            self.invalid[kind] = self.invalid.get(kind, 0) + 1

    def copy(
        self,
    ) -> tuple[
        dict[tuple[str, str], int],
        dict[str, HistogramData],
        dict[str, int],
        dict[tuple[str, str], int],
    ]:
        with self._lock:
            return (
                dict(self.requests),
                {k: _frozen(h) for k, h in self.durations.items()},
                dict(self.invalid),
                dict(self.errors),
            )


class Poller:
    """Runs poll cycles; the latest Snapshot is always available, never blocked on the API."""

    def __init__(
        self,
        config: Config,
        client: QoderClient | None = None,
        *,
        clock: Callable[[], float] = time.time,
        on_snapshot: Callable[[Snapshot], None] | None = None,
    ) -> None:
        self.config = config
        self.metrics = SelfMetrics()
        self.client = client or QoderClient(
            config.api.url,
            config.api.token,
            timeout=config.api.timeout,
            max_retries=config.api.max_retries,
            requests_per_second=config.api.requests_per_second,
        )
        self.client.observer = self.metrics.observe_request
        self.client.on_error = self.metrics.count_error
        self.clock = clock
        self.on_snapshot = on_snapshot
        # Held while the store changes or is saved: shutdown saves from another thread.
        self._store_lock = threading.Lock()
        self.store = RunStore(config.duration_buckets)
        self.started_at = clock()
        self._token_stat = _stat(config.api.token_file)
        self._pending: Config | None = None
        self._feed_limit = _feed_limit(config)
        self._saved: tuple[str, int] | None = None  # (path, store.changes) last written
        self._wake = threading.Event()
        self.reload_ok: bool | None = None  # None: never reloaded
        self.reload_at: float | None = None
        if config.state_file:
            state.load(self.store, config.state_file, config.api.url)
            self._drop_unwatched()
        self._lookbacks = {d.id: d.lookback or config.lookback for d in config.deployments}
        self._deployments: dict[str, Deployment] = {}
        self._deleted: set[str] = set()
        self._sync: dict[str, _SyncStatus] = {}
        self._metadata_at: float | None = None
        # On self.clock, the clock Retry-After speaks of (and one tests can step).
        self._paused_until = 0.0
        self._probing = False  # the next cycle's first request goes alone (see _cycle)
        self._polls: dict[str, int] = {"success": 0, "failure": 0}
        self._poll_hist = Histogram([0] * (len(POLL_BUCKETS) + 1))
        self._up = False
        self._last_success_poll: float | None = None
        self._last_error: str | None = None
        self._executor = ThreadPoolExecutor(config.concurrency, thread_name_prefix="qoder-poll")
        self.snapshot = self._build_snapshot(clock())
        self.heartbeat = time.monotonic()

    # --- public ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Poll every poll_interval until stop is set."""
        while not stop.is_set():
            began = time.monotonic()
            self.poll_once()
            self.heartbeat = time.monotonic()
            wait = max(self.config.poll_interval - (time.monotonic() - began), 0.0)
            wait = max(wait, self._paused_until - self.clock())
            self._wake.wait(wait)
            self._wake.clear()

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
            self._check_pause()
            self._refresh_token(force=False)
            try:
                self._cycle(now)
            except AuthenticationError:
                # The token file may have been rotated since we last read it: once more.
                if not self._refresh_token(force=True):
                    raise
                self._cycle(now)
            reached = True
        except _Paused:
            error = "rate limited by the API: backing off"
        except _CycleFailed as exc:
            reached, error = exc.reached, str(exc)
        except QoderError as exc:
            error = str(exc)
        except Exception as exc:  # a bug must not kill the poll thread
            log.exception("poll cycle failed")
            error = f"internal error: {type(exc).__name__}"
        if error is not None:
            log.warning("poll failed: %s", error)
        self._up = reached
        self._last_error = error
        self._polls["success" if reached else "failure"] += 1
        if reached:
            self._last_success_poll = now
        self._poll_hist.observe(POLL_BUCKETS, time.monotonic() - began)
        if reached:
            self.save_state()
        self.publish()
        return reached

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def save_state(self) -> None:
        """Write the state file if configured and the store changed; failures are logged."""
        path = self.config.state_file
        if not path:
            return
        try:
            with self._store_lock:
                if (path, self.store.changes) == self._saved and os.path.exists(path):
                    return
                state.save(self.store, path, self.config.api.url)
                self._saved = (path, self.store.changes)
        except OSError as exc:
            log.error("cannot save state to %s: %s", path, exc.strerror or exc)

    def reconfigure(self, config: Config) -> None:
        """Take a new, already validated config at the start of the next cycle."""
        self._pending = config
        self.wake()

    def publish(self) -> None:
        """Rebuild the snapshot and hand it to on_snapshot (after a poll, or a rejected reload)."""
        with self._store_lock:
            self.snapshot = self._build_snapshot(self.clock())
        if self.on_snapshot is not None:
            try:
                self.on_snapshot(self.snapshot)
            except Exception:  # a bad value must not kill the poll thread; scrapes go on
                log.exception("cannot render the snapshot; serving the previous one")

    def note_reload(self, ok: bool) -> None:
        self.reload_ok = ok
        if ok:
            self.reload_at = time.time()

    # --- configuration and token -------------------------------------------------------

    def _take_pending_config(self, now: float) -> None:
        new, self._pending = self._pending, None
        if new is None:
            return
        old = self.config
        if new.api != old.api:
            client = QoderClient(
                new.api.url,
                new.api.token,
                timeout=new.api.timeout,
                max_retries=new.api.max_retries,
                requests_per_second=new.api.requests_per_second,
            )
            client.observer, client.on_error = self.client.observer, self.client.on_error
            client.sleep = self.client.sleep
            self.client.session.close()
            self.client = client
            self._token_stat = _stat(new.api.token_file)
            self._paused_until = 0.0
        with self._store_lock:
            if new.api.url != old.api.url:
                # Another API (account or region): nothing we counted is about it.
                self.store = RunStore(new.duration_buckets)
                self._saved = None
                self.started_at = now
                self._deployments.clear()
                self._sync.clear()
            elif new.duration_buckets != old.duration_buckets:
                log.warning("duration_buckets changed: run-duration histograms start again")
                self.store.rebucket(new.duration_buckets)
            self.config = new
            self._feed_limit = _feed_limit(new)
            self._lookbacks = {d.id: d.lookback or new.lookback for d in new.deployments}
            self._deleted.clear()
            self._drop_unwatched()
        if new.concurrency != old.concurrency:
            self._executor.shutdown(wait=False)
            self._executor = ThreadPoolExecutor(new.concurrency, thread_name_prefix="qoder-poll")
        self._metadata_at = None  # names, new deployments: refresh now
        log.info("configuration applied")

    def _drop_unwatched(self) -> None:
        """Configured mode: forget deployments no longer listed (restored state, reload)."""
        if self.config.discover:
            return
        listed = {d.id for d in self.config.deployments}
        for dep_id in [d for d in self.store.deployments if d not in listed]:
            self.store.drop(dep_id)
            self._sync.pop(dep_id, None)
            self._deployments.pop(dep_id, None)

    def _refresh_token(self, *, force: bool) -> bool:
        """Re-read api.token_file when it changed (or when forced); True if the token changed."""
        path = self.config.api.token_file
        if not path:
            return False
        seen = _stat(path)
        if not force and seen == self._token_stat:
            return False
        self._token_stat = seen
        try:
            token = read_token_file(path)
        except ConfigError as exc:
            log.error("keeping the old token: %s", exc.errors[0])
            return False
        if token == self.client.token:
            return False
        self.client.set_token(token)
        log.info("token re-read from api.token_file")
        return True

    def lookback(self, deployment_id: str) -> float:
        return self._lookbacks.get(deployment_id, self.config.lookback)

    # --- one cycle ---------------------------------------------------------------------

    def _cycle(self, now: float) -> None:
        if self._metadata_at is None or now - self._metadata_at >= METADATA_REFRESH_S:
            try:
                self._refresh_metadata()
                self._metadata_at = now
            except RateLimitedError as exc:
                self._pause(exc)
                raise
            except (AuthenticationError, PermissionDeniedError):
                raise
            except QoderError as exc:
                # Old names and states are still better than no run data: go on.
                if self.config.discover and not self._deployments:
                    raise
                log.warning("deployment metadata not refreshed: %s", exc)
        watched = self._watched()
        fresh = [d for d in watched if d not in self.store.deployments]
        use_feed = self.config.discover and self.polls_done() > 0
        per_deployment = fresh if use_feed else watched
        # Plans are taken here, before any worker runs: workers never read the store.
        plans = {d: self.store.plan(d, now, self.lookback(d)) for d in per_deployment}
        ok, total = 0, len(per_deployment)
        failures: list[QoderError] = []
        # _pause sets it again should this cycle meet another 429.
        probing, self._probing = self._probing, False
        if probing and per_deployment:
            # After a rate limit, one request tells whether it is over. The others start
            # only once it has answered, so another 429 pauses them before they send.
            probe, per_deployment = per_deployment[0], per_deployment[1:]
            ok += self._apply_fetched(self._fetch(probe, plans[probe]), now, failures)
        # Each deployment is applied as soon as it is read and then let go, so only the
        # fetches not yet applied hold their pages (a first sync reads the whole window).
        # as_completed drops each future it has handed out; a list of them kept here would
        # keep every result, and so every page of a first sync, alive to the end.
        for future in as_completed(
            [self._executor.submit(self._fetch, d, plans[d]) for d in per_deployment]
        ):
            ok += self._apply_fetched(future.result(), now, failures)
        if use_feed:
            feed = self._fetch_feed([d for d in watched if d not in fresh], now)
            total += len(feed)
            for fetched in feed:
                ok += self._apply_fetched(fetched, now, failures)
        for error in failures:
            if isinstance(error, (AuthenticationError, PermissionDeniedError)):
                raise error
        if failures and ok == 0:
            raise _CycleFailed(str(failures[0]), reached=False)
        if failures:
            log.warning(
                "%d of %d deployments failed to sync: %s", len(failures), total, failures[0]
            )

    def _apply_fetched(self, fetched: _Fetched, now: float, failures: list[QoderError]) -> int:
        """Fold one deployment's fetch into the store: 1 if it synced, else note the error."""
        # The store's floor (runs below it count as dealt with) must not run ahead of the
        # API's clock: were ours ahead by more than the lookback, every new run would fall
        # below it. The API's Date header bounds it (+1 s: the header drops fractions).
        server_now = self.client.server_now()
        sync_now = now if server_now is None else min(now, server_now + 1.0)
        with self._store_lock:
            if self._apply(fetched, sync_now):
                return 1
        if fetched.error is not None:
            failures.append(fetched.error)
        return 0

    def polls_done(self) -> int:
        return self._polls["success"] + self._polls["failure"]

    def _watched(self) -> list[str]:
        if self.config.discover:
            return sorted(self._deployments)
        return [d.id for d in self.config.deployments if d.id not in self._deleted]

    def _refresh_metadata(self) -> None:
        try:
            listed = self._list_deployments()
        except APIError as exc:
            if not self._refused_big_pages(exc):
                raise
            listed = self._list_deployments()
        if self.config.discover:
            for gone in set(self._deployments) - set(listed):
                self._forget(gone)
            self._deployments = listed
            return
        for dep_cfg in self.config.deployments:
            dep_id = dep_cfg.id
            if dep_id in listed:
                self._deployments[dep_id] = listed[dep_id]
                self._deleted.discard(dep_id)
                continue
            # Not listed: archived (still readable by id) or deleted (404).
            try:
                self._deployments[dep_id] = parse_deployment(self.client.get_deployment(dep_id))
                self._deleted.discard(dep_id)
            except NotFoundError:
                self._forget(dep_id)
            except ParseError as exc:
                self.metrics.count_invalid("deployment")
                log.warning("deployment %s: unusable record: %s", dep_id, exc)

    def _list_deployments(self) -> dict[str, Deployment]:
        # Pages as large as the feed's: listing 1,000 deployments takes 1 request, not 10,
        # where the API allows it.
        listed: dict[str, Deployment] = {}
        for page in self.client.pages(
            lambda c: self.client.list_deployments(limit=self._feed_limit, after_id=c)
        ):
            for dep in self._parse(page.data, parse_deployment, "deployment"):
                listed[dep.id] = dep
        return listed

    def _forget(self, deployment_id: str) -> None:
        if deployment_id not in self._deleted:
            log.warning("deployment %s no longer exists: dropping its series", deployment_id)
        self._deleted.add(deployment_id)
        self._deployments.pop(deployment_id, None)
        self.store.drop(deployment_id)
        self._sync.pop(deployment_id, None)

    def _fetch(self, deployment_id: str, plan: SyncPlan) -> _Fetched:
        """Worker: read one deployment's new runs and refresh its in-flight ones."""
        out = _Fetched(deployment_id)
        size = self.config.page_size
        # After the first sync a cycle finds a few new runs on top of what it knows: a first
        # page just deep enough for them and the runs in flight costs the same request and
        # a fraction of the parsing (most of a quiet cycle's CPU). Later pages are full.
        first = size if plan.initial else min(size, plan.reach + FIRST_PAGE_SLACK)
        try:
            self._check_pause()
            for page in self.client.pages(
                lambda c: self.client.list_runs(
                    deployment_id, limit=size if c else first, after_id=c
                )
            ):
                runs = self._parse(page.data, parse_run, "run")
                out.runs += runs
                if reached_known(runs, plan):
                    break
            self._refresh_in_flight(out, plan.in_flight)
            if plan.initial and not any(r.status == "completed" for r in out.runs):
                out.runs += self._last_success(deployment_id)
        except NotFoundError:
            out.deleted = True
        except RateLimitedError as exc:
            self._pause(exc)
            out.error = exc
        except QoderError as exc:
            out.error = exc
        except _Paused:
            out.error = QoderError("skipped: backing off after a rate limit")
        return out

    def _fetch_feed(self, deployment_ids: list[str], now: float) -> list[_Fetched]:
        results = self._read_feed(deployment_ids, now)
        if results and self._refused_big_pages(results[0].error):
            results = self._read_feed(deployment_ids, now)
        return results

    def _refused_big_pages(self, error: BaseException | None) -> bool:
        """True (once) when the API answered 400 to a page larger than page_size."""
        if not (
            isinstance(error, APIError)
            and error.status == 400
            and self._feed_limit > self.config.page_size
        ):
            return False
        # One generation of the API caps limit at 100 and answers 400 above it.
        log.info(
            "the API refuses pages of %d records: using %d",
            self._feed_limit,
            self.config.page_size,
        )
        self._feed_limit = self.config.page_size
        return True

    def _read_feed(self, deployment_ids: list[str], now: float) -> list[_Fetched]:
        """Read new runs of all known deployments from the cross-deployment feed."""
        plans = {d: self.store.plan(d, now, self.lookback(d)) for d in deployment_ids}
        by_dep = {d: _Fetched(d) for d in deployment_ids}
        try:
            self._check_pause()
            floor = min((p.floor for p in plans.values()), default=now)
            known = frozenset().union(*(p.known for p in plans.values()))
            marks = [p.watermark for p in plans.values() if p.watermark is not None]
            feed_plan = SyncPlan(False, known, frozenset(), floor, max(marks, default=None), True)
            feed = self._feed_pages(None)
            for page in feed:
                runs = self._parse(page.data, parse_run, "run")
                for run in runs:
                    if run.deployment_id in by_dep:
                        by_dep[run.deployment_id].runs.append(run)
                    elif run.deployment_id not in self._deleted and run.created_at >= floor:
                        # A deployment we have not listed yet: pick it up next cycle.
                        self._metadata_at = None
                if reached_known(runs, feed_plan):
                    break
            seen = {r.id for f in by_dep.values() for r in f.runs}
            stale = {
                run_id: dep_id
                for dep_id, plan in plans.items()
                for run_id in plan.in_flight
                if run_id not in seen
            }
            if len(stale) > 1:
                self._find_stale(stale, by_dep, plans, now)
            for dep_id, fetched in by_dep.items():
                self._refresh_in_flight(fetched, plans[dep_id].in_flight)
        except RateLimitedError as exc:
            self._pause(exc)
            return [_Fetched(d, error=exc) for d in deployment_ids]
        except (QoderError, _Paused) as exc:
            err = exc if isinstance(exc, QoderError) else QoderError("backing off")
            return [_Fetched(d, error=err) for d in deployment_ids]
        return list(by_dep.values())

    def _feed_pages(self, status: str | None) -> Iterator[Page]:
        return self.client.pages(
            lambda c: self.client.list_all_runs(limit=self._feed_limit, after_id=c, status=status)
        )

    def _find_stale(
        self,
        stale: dict[str, str],
        by_dep: dict[str, _Fetched],
        plans: dict[str, SyncPlan],
        now: float,
    ) -> None:
        """Learn how the in-flight runs that the feed's new pages did not show are now.

        The feed is ordered by creation, so these runs lie scattered down it. Either jump
        straight to the pages that hold them, or first list the runs still pending and
        running (a page per `limit` of them) and jump only to those that left the lists:
        they finished (or vanished). The cheaper, as far as the store can tell, wins. Runs
        left over are fetched by id afterwards (_refresh_in_flight).
        """
        limit = self._feed_limit
        order = self._feed_order(stale, now - JUMP_HORIZON_S)
        jumps, singles = plan_jumps(order, stale, limit)
        statuses = Counter(
            self.store.deployments[d].runs[r].status for d, p in plans.items() for r in p.in_flight
        )
        listing = sum(max(1, -(-statuses[s] // limit)) for s in IN_FLIGHT)
        if len(jumps) + len(singles) > listing:
            # Bounded: a server that ignored `status` must not make us page through all
            # history; runs not reached here are fetched below.
            for status in sorted(IN_FLIGHT):
                for page in itertools.islice(self._feed_pages(status), HISTORY_PAGES):
                    self._take(page, stale, by_dep)
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
            self._take(page, stale, by_dep)

    def _take(self, page: Page, stale: dict[str, str], by_dep: dict[str, _Fetched]) -> None:
        """Hand the stale runs a page holds to their deployments."""
        for run in self._parse(page.data, parse_run, "run"):
            dep_id = stale.pop(run.id, None)
            if dep_id is not None:
                by_dep[dep_id].runs.append(run)

    def _feed_order(self, stale: dict[str, str], horizon: float) -> list[str]:
        """The feed as the store knows it, newest first, back to the oldest stale run.

        Not further back than `horizon`: runs in flight for longer than that are few (stuck
        ones) and are found by the status lists or by id.
        """
        since = min(self.store.deployments[d].runs[r].created_at for r, d in stale.items())
        since = max(since, horizon)
        known = [
            (t.created_at, rid)
            for st in self.store.deployments.values()
            for rid, t in st.runs.items()
            if t.created_at >= since
        ]
        known.sort(reverse=True)
        return [rid for _, rid in known]

    def _refresh_in_flight(self, out: _Fetched, in_flight: Iterable[str]) -> None:
        seen = {r.id for r in out.runs}
        for run_id in sorted(set(in_flight) - seen):
            self._check_pause()
            try:
                out.runs += self._parse([self.client.get_run(run_id)], parse_run, "run")
            except NotFoundError:
                out.vanished.append(run_id)

    def _last_success(self, deployment_id: str) -> list[Run]:
        """Find the newest completed run even when it is older than the window."""
        pages = self.client.pages(
            lambda c: self.client.list_runs(
                deployment_id, limit=self.config.page_size, after_id=c, status="completed"
            )
        )
        for page in itertools.islice(pages, HISTORY_PAGES):
            # Filter here too: servers of the record-only generation ignore `status`.
            for run in self._parse(page.data, parse_run, "run"):
                if run.status == "completed" and run.deployment_id == deployment_id:
                    return [run]
        return []

    def _apply(self, fetched: _Fetched, now: float) -> bool:
        dep_id = fetched.deployment_id
        if fetched.deleted:
            self._forget(dep_id)
            return True
        status = self._sync.setdefault(dep_id, _SyncStatus())
        status.at = now
        if fetched.error is not None:
            status.ok, status.error = False, str(fetched.error)
            return False
        initial = dep_id not in self.store.deployments
        # A deployment created after we started has no history: all its runs are news.
        info = self._deployments.get(dep_id)
        history = initial and not (
            info is not None and info.created_at is not None and info.created_at >= self.started_at
        )
        result = self.store.apply(
            dep_id,
            fetched.runs,
            now,
            self.lookback(dep_id),
            history=history,
            vanished=fetched.vanished,
            counted_since=self.started_at,
            max_retries=info.max_retries if info is not None else None,
        )
        self.store.note_schedule(dep_id, info)
        if result.vanished:
            log.warning("deployment %s: %d in-flight runs vanished", dep_id, result.vanished)
        status.ok, status.error = True, None
        return True

    def _parse(self, items: list[Any], parse: Callable[[Any], Any], kind: str) -> list[Any]:
        out = []
        for item in items:
            try:
                out.append(parse(item))
            except ParseError as exc:
                self.metrics.count_invalid(kind)
                log.warning("skipping unusable %s record: %s", kind, exc)
        return out

    def _pause(self, exc: RateLimitedError) -> None:
        self.metrics.rate_limited += 1
        self._probing = True
        until = self.clock() + exc.retry_after
        self._paused_until = max(self._paused_until, until)
        log.warning("API rate limit: backing off for %.1fs", exc.retry_after)

    def _check_pause(self) -> None:
        left = self._paused_until - self.clock()
        if left > MAX_RETRY_AFTER:
            self._paused_until = 0.0  # the wall clock stepped back: do not wait for hours
        elif left > 0:
            raise _Paused()

    # --- snapshot ----------------------------------------------------------------------

    def _build_snapshot(self, now: float) -> Snapshot:
        views = []
        for dep_id in self._watched():
            state = self.store.deployments.get(dep_id)
            sync = self._sync.get(dep_id, _SyncStatus())
            lookback = self.lookback(dep_id)
            info = self._deployments.get(dep_id)
            views.append(
                DeploymentView(
                    id=dep_id,
                    info=info,
                    recent=self.store.recent(dep_id, now, lookback),
                    totals=dict(state.totals) if state else {},
                    durations={k: _frozen(h) for k, h in state.durations.items()} if state else {},
                    errors=dict(state.errors) if state else {},
                    last_success=state.last_success if state else None,
                    last_finished_status=state.last_finished[2]
                    if state and state.last_finished
                    else None,
                    oldest_in_flight=self.store.oldest_in_flight(dep_id),
                    sync_ok=sync.ok,
                    last_sync=sync.at,
                    last_error=sync.error,
                    **_view_extras(state, self.store.expected(dep_id, info)),
                )
            )
        requests, durations, invalid, errors = self.metrics.copy()
        return Snapshot(
            taken_at=now,
            buckets=self.store.buckets,
            deployments=tuple(views),
            up=self._up,
            polls_done=self.polls_done(),
            last_success_poll=self._last_success_poll,
            poll_interval=self.config.poll_interval,
            polls=dict(self._polls),
            poll_duration=_frozen(self._poll_hist),
            requests=requests,
            request_durations=durations,
            request_duration_buckets=REQUEST_BUCKETS,
            poll_duration_buckets=POLL_BUCKETS,
            rate_limit_waits=self.client.bucket.waits,
            rate_limit_wait_seconds=self.client.bucket.waited_seconds,
            rate_limited=self.metrics.rate_limited,
            invalid_records=invalid,
            api_errors=errors,
            tracked_runs=self.store.size(),
            last_error=self._last_error,
            reload_ok=self.reload_ok,
            reload_at=self.reload_at,
        )


class _CycleFailed(QoderError):
    def __init__(self, message: str, *, reached: bool) -> None:
        super().__init__(message)
        self.reached = reached


def _feed_limit(config: Config) -> int:
    """Page size for the cross-deployment feed and, in discover mode, the deployment list.

    The feed holds every deployment's runs, so its pages fill fast: with the default
    page_size, try the larger cap of the API generation that allows 1000 (a tenth of the
    requests at 1,000 deployments); the first 400 falls back to page_size for good.
    """
    if config.discover and config.page_size == DEFAULT_PAGE_SIZE:
        return FEED_PAGE_SIZE
    return config.page_size


def _stat(path: str | None) -> tuple[int, int, int] | None:
    """What tells a rewritten file apart: inode (rename), size and mtime."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _view_extras(st: DeploymentState | None, expected: float | None) -> dict[str, Any]:
    """The issue-13 fields of a DeploymentView (kept apart for the poller split)."""
    if st is None:
        return {}
    return {
        "by_trigger": dict(st.by_trigger),
        "retried_failures": st.retried,
        "queue": _frozen(st.queue) if st.queue else None,
        "consecutive_failures": st.consecutive,
        "last_run": st.last_run,
        "last_failure": st.last_failure,
        "expected_run": expected,
    }


def _frozen(hist: Histogram) -> HistogramData:
    return HistogramData(tuple(hist.cumulative()), hist.total)
