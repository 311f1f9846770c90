"""The discover-mode feed reader against a scripted fake client: no HTTP, no sockets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import pytest

from qoder_exporter.backoff import Backoff
from qoder_exporter.client import APIError, NotFoundError, Page, RateLimitedError, follow_pages
from qoder_exporter.feed import FeedLimit, FeedReader
from qoder_exporter.fetched import Fetched
from qoder_exporter.models import Run, parse_run
from qoder_exporter.selfmetrics import SelfMetrics
from qoder_exporter.sync import RunStore, SyncPlan

T0 = 1_800_000_000.0
STEP = 30.0  # one run every 30 s across the two deployments
DEPS = ("dep_a", "dep_b")
LOOKBACK = 24 * 3600.0


def stamp(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def record(i: int, status: str) -> dict[str, Any]:
    """Run number i (older runs have smaller numbers), alternating between the deployments."""
    created = T0 + i * STEP
    doc: dict[str, Any] = {
        "id": f"run_{i:04d}",
        "deployment_id": DEPS[i % 2],
        "created_at": stamp(created),
        "status": status,
    }
    if status in ("completed", "failed"):
        doc["completed_at"] = stamp(created + 10)
        doc["duration_ms"] = 10_000
    return doc


def api_error(status: int, endpoint: str, error_type: str) -> APIError:
    return APIError(
        "refused", status=status, endpoint=endpoint, error_type=error_type, request_id=None
    )


class FakeFeed:
    """/deployment_runs and /deployment_runs/{id}, scripted: newest first, after_id cursors."""

    def __init__(self, runs: list[dict[str, Any]], *, max_limit: int = 1000) -> None:
        self.runs = sorted(runs, key=lambda r: r["id"], reverse=True)
        self.max_limit = max_limit
        self.refuse_after: set[str] = set()  # a jump from these ids answers 400
        self.rate_limited = False
        self.calls: list[tuple[Any, ...]] = []

    def pages(self, fetch: Callable[[str | None], Page]) -> Iterator[Page]:
        # The client's own cursor-following, not a copy of it.
        return follow_pages(fetch, max_pages=1000)

    def list_all_runs(
        self, *, limit: int = 100, after_id: str | None = None, status: str | None = None
    ) -> Page:
        self.calls.append(("list", limit, after_id, status))
        if self.rate_limited:
            raise RateLimitedError(
                "slow down",
                retry_after=30.0,
                status=429,
                endpoint="list_all_runs",
                error_type="rate_limit_error",
                request_id=None,
            )
        if limit > self.max_limit or after_id in self.refuse_after:
            raise api_error(400, "list_all_runs", "invalid_request_error")
        rows = [r for r in self.runs if status is None or r["status"] == status]
        ids = [r["id"] for r in rows]
        start = 0 if after_id is None else ids.index(after_id) + 1
        chunk = rows[start : start + limit]
        return Page(chunk, start + limit < len(rows), chunk[-1]["id"] if chunk else None)

    def get_run(self, run_id: str) -> dict[str, Any]:
        self.calls.append(("get", run_id))
        for r in self.runs:
            if r["id"] == run_id:
                return r
        raise NotFoundError(
            "gone",
            status=404,
            endpoint="get_run_global",
            error_type="not_found_error",
            request_id=None,
        )

    def lists(self) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == "list"]

    def gets(self) -> list[str]:
        return [c[1] for c in self.calls if c[0] == "get"]


def store_with(runs: list[Run], now: float) -> RunStore:
    store = RunStore((10.0, 60.0))
    for dep in DEPS:
        store.apply(dep, [r for r in runs if r.deployment_id == dep], now, LOOKBACK, history=True)
    return store


def plans(store: RunStore, now: float) -> dict[str, SyncPlan]:
    return {d: store.plan(d, now, LOOKBACK) for d in DEPS}


def reader(
    fake: FakeFeed, limit: FeedLimit, clock: list[float]
) -> tuple[FeedReader, SelfMetrics, Backoff]:
    metrics = SelfMetrics()
    backoff = Backoff(lambda: clock[0], metrics.count_rate_limited)
    return FeedReader(fake, backoff, limit, metrics.count_invalid), metrics, backoff


def by_id(fetched: list[Fetched]) -> dict[str, Run]:
    return {r.id: r for f in fetched for r in f.runs}


def scene(
    known: int, new: int, in_flight: tuple[int, ...] = ()
) -> tuple[RunStore, list[dict[str, Any]], float]:
    """`known` runs the store has read (those in `in_flight` then running, now completed)
    and `new` runs on top of them in the feed."""
    seen_at = T0 + known * STEP
    before = [record(i, "running" if i in in_flight else "completed") for i in range(known)]
    store = store_with([parse_run(d) for d in before], seen_at)
    feed = [record(i, "completed") for i in range(known + new)]
    return store, feed, seen_at + new * STEP


def test_reads_back_to_the_runs_it_knows() -> None:
    store, feed, now = scene(known=100, new=25)
    fake = FakeFeed(feed)
    read, _, _ = reader(fake, FeedLimit(10, 10), [now])
    result = read.read(plans(store, now), store, now, set())
    runs = by_id(result.fetched)
    assert {f"run_{i:04d}" for i in range(100, 125)} <= set(runs)
    assert all(f.error is None for f in result.fetched)
    # 25 new runs and the overlap: 3 or 4 pages of 10, not the 13 of the whole feed.
    assert 3 <= len(fake.lists()) <= 4
    assert fake.gets() == []
    assert not result.unknown_deployment


def test_a_run_of_an_unlisted_deployment_asks_for_a_relist() -> None:
    store, feed, now = scene(known=10, new=1)
    feed.append({**record(10, "completed"), "id": "run_9999", "deployment_id": "dep_new"})
    read, _, _ = reader(FakeFeed(feed), FeedLimit(10, 10), [now])
    assert read.read(plans(store, now), store, now, set()).unknown_deployment
    assert not read.read(plans(store, now), store, now, {"dep_new"}).unknown_deployment


def test_a_400_to_pages_of_1000_falls_back_to_page_size_for_good() -> None:
    store, feed, now = scene(known=20, new=5)
    fake = FakeFeed(feed, max_limit=100)
    limit = FeedLimit(1000, 100)
    read, _, _ = reader(fake, limit, [now])
    result = read.read(plans(store, now), store, now, set())
    assert all(f.error is None for f in result.fetched)
    assert "run_0024" in by_id(result.fetched)
    assert limit.value == 100
    assert [c[1] for c in fake.lists()] == [1000, 100]
    read.read(plans(store, now), store, now, set())
    assert [c[1] for c in fake.lists()][2:] == [100], "the 1000 is not tried again"


def test_a_400_at_page_size_is_an_error_not_a_retry() -> None:
    store, feed, now = scene(known=20, new=5)
    fake = FakeFeed(feed, max_limit=50)
    read, _, _ = reader(fake, FeedLimit(100, 100), [now])
    result = read.read(plans(store, now), store, now, set())
    assert all(isinstance(f.error, APIError) for f in result.fetched)
    assert len(fake.lists()) == 1


# Runs 60..69 arrive new; runs in flight lie in two clusters down the feed (positions in the
# store's order: newest first), each cluster within one page of 10.
IN_FLIGHT = (45, 47, 49, 25, 27)


def test_jumps_to_the_pages_that_hold_the_runs_in_flight() -> None:
    store, feed, now = scene(known=60, new=10, in_flight=IN_FLIGHT)
    fake = FakeFeed(feed)
    read, _, _ = reader(fake, FeedLimit(10, 10), [now])
    result = read.read(plans(store, now), store, now, set())
    runs = by_id(result.fetched)
    for i in IN_FLIGHT:
        assert runs[f"run_{i:04d}"].status == "completed"
    jumps = [c for c in fake.lists() if c[2] is not None and c[3] is None][1:]
    # Each jump starts right after the known run just newer than its cluster.
    assert [c[2] for c in jumps] == ["run_0050", "run_0028"]
    assert fake.gets() == []


def test_a_refused_jump_falls_back_to_get_by_id() -> None:
    store, feed, now = scene(known=60, new=10, in_flight=IN_FLIGHT)
    fake = FakeFeed(feed)
    fake.refuse_after.add("run_0050")  # the run we jump from left the feed
    read, _, _ = reader(fake, FeedLimit(10, 10), [now])
    result = read.read(plans(store, now), store, now, set())
    assert all(f.error is None for f in result.fetched)
    runs = by_id(result.fetched)
    for i in IN_FLIGHT:
        assert runs[f"run_{i:04d}"].status == "completed"
    assert sorted(fake.gets()) == ["run_0045", "run_0047", "run_0049"]


def test_a_run_in_flight_that_vanished_is_reported() -> None:
    store, feed, now = scene(known=20, new=2, in_flight=(15,))
    feed = [d for d in feed if d["id"] != "run_0015"]
    read, _, _ = reader(FakeFeed(feed), FeedLimit(10, 10), [now])
    result = read.read(plans(store, now), store, now, set())
    assert [v for f in result.fetched for v in f.vanished] == ["run_0015"]


def test_a_rate_limit_pauses_and_the_next_read_sends_nothing() -> None:
    store, feed, now = scene(known=20, new=5)
    fake = FakeFeed(feed)
    fake.rate_limited = True
    clock = [now]
    read, metrics, backoff = reader(fake, FeedLimit(10, 10), clock)
    result = read.read(plans(store, now), store, now, set())
    assert all(isinstance(f.error, RateLimitedError) for f in result.fetched)
    assert metrics.copy().rate_limited == 1
    assert backoff.left() == pytest.approx(30.0)
    sent = len(fake.calls)
    result = read.read(plans(store, now), store, now, set())
    assert len(fake.calls) == sent, "nothing sent while paused"
    assert all(f.error is not None for f in result.fetched)
    fake.rate_limited = False
    clock[0] += 31.0
    result = read.read(plans(store, now), store, now, set())
    assert all(f.error is None for f in result.fetched)


class _Genuine(FakeFeed):
    """The feed lists a hostile record in place of a run's; GET by id answers the true one."""

    def __init__(self, runs: list[dict[str, Any]], true: dict[str, Any]) -> None:
        super().__init__(runs)
        self.true = true

    def get_run(self, run_id: str) -> dict[str, Any]:
        self.calls.append(("get", run_id))
        return self.true if run_id == self.true["id"] else super().get_run(run_id)


def test_a_run_the_feed_shows_under_another_deployment_is_still_fetched_by_id() -> None:
    """run_0014 is dep_a's and in flight. A hostile feed shows its id under dep_b, running;
    by id it is dep_a's and completed. Sightings count per (deployment, run): the record
    under dep_b neither stands for dep_a's run nor hides it, cycle after cycle.
    (Found by review: keyed by run id alone, dep_a's run stayed in flight for good.)"""
    store, feed, now = scene(known=20, new=2, in_flight=(14,))
    true = record(14, "completed")
    feed = [
        {**d, "deployment_id": "dep_b", "status": "running"} if d["id"] == "run_0014" else d
        for d in feed
    ]
    fake = _Genuine(feed, true)
    read, _, _ = reader(fake, FeedLimit(10, 10), [now])
    for _ in range(3):
        result = read.read(plans(store, now), store, now, set())
        for f in result.fetched:
            assert f.error is None
            store.apply(f.deployment_id, f.runs, now, LOOKBACK, history=False, vanished=f.vanished)
        now += 30.0
    assert "run_0014" in fake.gets()
    assert store.deployments["dep_a"].runs["run_0014"].accounted
