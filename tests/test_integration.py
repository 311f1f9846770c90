"""The exporter against the simulator over real HTTP, compared with its ground truth."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from qoder_exporter.poller import Poller
from qoder_exporter.simulator import Simulator

from .conftest import TOKEN, make_config
from .truth import DAY, STEP, assert_matches_truth, run_for

pytestmark = pytest.mark.system  # see [tool.pytest.ini_options] markers


@pytest.mark.parametrize(
    ("discover", "shape", "page_size"),
    [(False, "g1", 100), (True, "g1", 100), (False, "g2", 100), (True, "g1", 20)],
)
def test_a_simulated_day_matches_ground_truth(
    sim: Simulator, poller_for: Callable[..., Poller], discover: bool, shape: str, page_size: int
) -> None:
    sim.shape = shape
    # The record-only shape's truth here is the record's (truth_finished); with sessions
    # followed it is the session's, checked in test_session_outcomes.py.
    extra = {"sessions": "never"} if shape == "g2" else {}
    poller = poller_for(discover=discover, page_size=page_size, **extra)
    started = sim.clock.now()
    assert poller.poll_once()
    run_for(sim, poller, DAY)
    assert poller.snapshot.up
    assert sum(sum(v.totals.values()) for v in poller.snapshot.deployments) > 100
    assert_matches_truth(sim, poller, started)


def test_last_success_days_old_and_stuck_run(
    sim: Simulator, poller_for: Callable[..., Poller]
) -> None:
    poller = poller_for()
    poller.poll_once()
    run_for(sim, poller, 6 * 3600)
    views = poller.snapshot.deployments
    now = sim.clock.now()
    old = [v for v in views if v.last_success is not None and now - v.last_success > 2 * DAY]
    assert old, "the simulator has a deployment whose last success is days old"
    stuck = [v for v in views if now - v.oldest_in_flight.get("running", now) > 5 * 3600]
    assert stuck, "the stuck run is tracked even though it is older than its peers"


def test_quiet_cycle_costs_one_page_per_deployment(
    sim: Simulator, poller_for: Callable[..., Poller]
) -> None:
    poller = poller_for()
    poller.poll_once()
    poller.poll_once()
    sim.reset_counts()
    assert poller.poll_once()
    in_flight = sum(len(sim.truth_in_flight(d)) for d in sim.deployment_ids())
    counts = sim.request_counts
    assert counts.get("list_runs", 0) == len(sim.deployment_ids())
    assert counts.get("get_run_global", 0) <= in_flight
    assert counts.get("list_deployments", 0) == 0  # metadata is refreshed every 5 minutes


def test_quiet_cycle_first_pages_are_as_deep_as_the_runs_in_flight(
    sim: Simulator, poller_for: Callable[..., Poller]
) -> None:
    """A quiet cycle asks each deployment for a short first page; counts stay exact."""
    poller = poller_for(page_size=100)
    started = sim.clock.now()
    poller.poll_once()
    limits: list[int] = []
    list_runs = poller.client.list_runs

    def recording(deployment_id: str, **kw: Any) -> Any:
        limits.append(kw["limit"])
        return list_runs(deployment_id, **kw)

    poller.client.list_runs = recording  # type: ignore[method-assign]
    run_for(sim, poller, 6 * 3600, step=60)
    assert_matches_truth(sim, poller, started)
    # Most first pages are 10 runs plus those down to the oldest in flight; repo-indexer's
    # stuck run makes its deployment's pages reach back to it.
    assert sorted(limits)[len(limits) // 2] <= 15, limits
    assert 15 < max(limits) <= 100


def test_discover_quiet_cycle_uses_the_feed(
    sim: Simulator, poller_for: Callable[..., Poller]
) -> None:
    poller = poller_for(discover=True)
    poller.poll_once()
    poller.poll_once()
    sim.reset_counts()
    assert poller.poll_once()
    counts = sim.request_counts
    assert counts.get("list_all_runs", 0) == 1
    assert counts.get("list_runs", 0) == 0


def test_new_deployment_is_discovered_and_counted_from_its_first_run(
    sim: Simulator, poller_for: Callable[..., Poller]
) -> None:
    from qoder_exporter.simulator import DeploymentSpec

    poller = poller_for(discover=True)
    started = sim.clock.now()
    poller.poll_once()
    sim.advance(60)
    sim.add_deployment(DeploymentSpec(name="late", interval_s=300, failure_rate=0.5))
    run_for(sim, poller, 3 * 3600)
    assert_matches_truth(sim, poller, started)


def test_discover_reads_finished_runs_from_the_feed_not_one_get_each() -> None:
    """Many runs finish after the feed's first page moved past them: older pages are read."""
    sim = Simulator(seed=5, deployments=40, token=TOKEN)
    sim.serve("127.0.0.1", 0)
    poller = Poller(make_config(sim, discover=True, page_size=10), clock=sim.clock.now)
    poller.client.sleep = lambda _s: None
    try:
        started = sim.clock.now()
        poller.poll_once()
        gets = feed = 0
        for _ in range(36):
            sim.advance(STEP)
            sim.reset_counts()
            poller.poll_once()
            gets += sim.request_counts["get_run_global"]
            feed += sim.request_counts["list_all_runs"]
        assert_matches_truth(sim, poller, started)
        finished = sum(len(sim.truth_finished(d, since=started)) for d in sim.deployment_ids())
        assert gets < finished / 10, (gets, feed, finished)
    finally:
        poller.close()
        sim.close()


@pytest.mark.parametrize("page_cap", [100, 1000])
def test_discover_feed_tries_large_pages_and_falls_back(page_cap: int) -> None:
    sim = Simulator(seed=9, deployments=8, token=TOKEN, page_cap=page_cap)
    sim.serve("127.0.0.1", 0)
    poller = Poller(make_config(sim, discover=True), clock=sim.clock.now)
    poller.client.sleep = lambda _s: None
    try:
        started = sim.clock.now()
        poller.poll_once()
        run_for(sim, poller, 6 * 3600)
        assert_matches_truth(sim, poller, started)
        errors = poller.snapshot.api_errors
        # The 100-cap generation refuses the first large page (the deployment list comes
        # first), once; the other takes it.
        assert errors.get(("list_deployments", "invalid_request_error"), 0) == (
            1 if page_cap == 100 else 0
        )
        assert errors.get(("list_all_runs", "invalid_request_error"), 0) == 0
        assert poller.limit.value == (100 if page_cap == 100 else 1000)
    finally:
        poller.close()
        sim.close()


@pytest.mark.parametrize(("page_cap", "requests"), [(100, 1 + 3), (1000, 1)])
def test_discover_lists_deployments_in_large_pages_where_the_api_allows(
    page_cap: int, requests: int
) -> None:
    """250 deployments: one page of 1000, or a refused probe and three pages of 100."""
    sim = Simulator(seed=9, deployments=250, token=TOKEN, page_cap=page_cap)
    sim.serve("127.0.0.1", 0)
    poller = Poller(make_config(sim, discover=True), clock=sim.clock.now)
    try:
        assert poller.poll_once()
        assert sim.request_counts["list_deployments"] == requests
        assert len(poller.snapshot.deployments) == 250
    finally:
        poller.close()
        sim.close()


def test_discover_jump_from_a_run_that_left_the_feed_falls_back_to_get() -> None:
    """The poller jumps down the feed from runs it tracks; one deleted since answers 400."""
    from qoder_exporter.simulator import DeploymentSpec

    sim = Simulator(seed=11, deployments=20, token=TOKEN)
    sim.serve("127.0.0.1", 0)
    # A busy deployment whose runs fill most of the feed: most jumps start from one of them.
    busy = sim.add_deployment(
        DeploymentSpec(name="busy", interval_s=None, manual_rate_per_hour=900.0, max_concurrent=50)
    )
    poller = Poller(make_config(sim, discover=True, page_size=10), clock=sim.clock.now)
    poller.client.sleep = lambda _s: None
    try:
        started = sim.clock.now()
        poller.poll_once()
        run_for(sim, poller, 3600, step=60)
        sim.delete_deployment(busy)
        # Within the 5 minutes before the metadata refresh notices, the store still holds the
        # busy deployment's runs, and the poller jumps from them: those runs are fetched by
        # id instead, and no cycle fails for it.
        for _ in range(60):
            sim.advance(60)
            assert poller.poll_once(), poller.snapshot.last_error
        refused = poller.snapshot.api_errors.get(("list_all_runs", "invalid_request_error"), 0)
        assert refused > 0
        assert busy not in {v.id for v in poller.snapshot.deployments}
        assert_matches_truth(sim, poller, started)
    finally:
        poller.close()
        sim.close()


def test_discover_feed_longer_than_max_pages_resyncs_per_deployment(
    sim: Simulator, poller_for: Callable[..., Poller]
) -> None:
    """After a long gap (an outage, a long back-off), more runs are new than api.max_pages
    pages of the feed hold: the cycle reads each deployment's list instead, as a first sync
    does, and goes on; before, every cycle failed on the same endless listing for good."""
    poller = poller_for(discover=True, page_size=10, lookback="3h", api={"max_pages": 3})
    started = sim.clock.now()
    assert poller.poll_once(), poller.snapshot.last_error
    sim.advance(3 * 3600)  # ~60 new runs: more than 3 pages of 10
    sim.reset_counts()
    assert poller.poll_once(), poller.snapshot.last_error
    assert sim.request_counts["list_runs"] >= len(sim.deployment_ids()), sim.request_counts
    assert_matches_truth(sim, poller, started)
    # And back to the feed at once.
    sim.advance(STEP)
    sim.reset_counts()
    assert poller.poll_once()
    assert sim.request_counts.get("list_runs", 0) == 0
    assert_matches_truth(sim, poller, started)
