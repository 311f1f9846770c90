"""Bounded memory: a week at high run rates keeps the state at one lookback window.

The run store holds O(in-flight runs + runs in the lookback window), never O(all runs ever
seen): runs below a deployment's floor are evicted. The poller steps half an hour at a time
(a larger step than production's minute keeps the test quick; the run rates stay high:
several runs a minute per deployment).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from qoder_exporter.poller import Poller
from qoder_exporter.simulator import DeploymentSpec, Simulator

from .conftest import TOKEN, make_config
from .truth import DAY, assert_matches_truth

LOOKBACK = DAY
STEP = 1800.0
DAYS = 7

SPECS = [
    # interval_s, manual_rate_per_hour: 1/min + 2/min, 2/min + 1/min, 1/min + 0.5/min
    DeploymentSpec(
        "busy-a",
        interval_s=60.0,
        manual_rate_per_hour=120.0,
        failure_rate=0.1,
        pending_s=(1.0, 5.0),
        duration_s=(5.0, 40.0),
        max_concurrent=3,
    ),
    DeploymentSpec(
        "busy-b",
        interval_s=30.0,
        manual_rate_per_hour=60.0,
        failure_rate=0.2,
        pending_s=(0.5, 3.0),
        duration_s=(10.0, 90.0),  # often longer than the interval: skipped runs too
        max_concurrent=2,
    ),
    DeploymentSpec(
        "busy-c",
        interval_s=60.0,
        manual_rate_per_hour=30.0,
        failure_rate=0.05,
        pending_s=(1.0, 10.0),
        duration_s=(30.0, 300.0),
        max_concurrent=4,
    ),
]


def window_bound(spec: DeploymentSpec, lookback: float) -> float:
    """Runs a deployment can hold: the window's runs (scheduled exactly, manual ones Poisson,
    allowed six standard deviations) plus its in-flight runs (at most max_concurrent)."""
    assert spec.interval_s is not None
    scheduled = lookback / spec.interval_s + 1
    manual = lookback * spec.manual_rate_per_hour / 3600
    return scheduled + manual + 6 * math.sqrt(manual) + spec.max_concurrent


@pytest.fixture
def busy_sim() -> Iterator[Simulator]:
    sim = Simulator(seed=11, deployments=SPECS, token=TOKEN, history_s=1.5 * DAY)
    sim.serve("127.0.0.1", 0)
    yield sim
    sim.close()


def test_state_stays_flat_over_a_week_at_high_rates(busy_sim: Simulator) -> None:
    sim = busy_sim
    poller = Poller(make_config(sim, lookback="24h"), clock=sim.clock.now)
    poller.client.sleep = lambda _s: None
    try:
        started = sim.clock.now()
        assert poller.poll_once()
        per_day: list[int] = []  # the largest state seen after any poll of each day
        per_poll = int(DAY // STEP)
        for _ in range(DAYS):
            largest = 0
            for _ in range(per_poll):
                sim.advance(STEP)
                assert poller.poll_once()
                size = poller.store.size()
                assert poller.snapshot.tracked_runs == size
                largest = max(largest, size)
            per_day.append(largest)
        bound = sum(window_bound(s, LOOKBACK) for s in SPECS)
        mean = sum(
            LOOKBACK / s.interval_s + LOOKBACK * s.manual_rate_per_hour / 3600
            for s in SPECS
            if s.interval_s is not None
        )
        ever = sum(
            sum(sim.truth_recent(d, DAYS * DAY + 2 * DAY).values()) for d in sim.deployment_ids()
        )
        print(
            f"runs in the API {ever}; window mean {mean:.0f}, bound {bound:.0f}; "
            f"largest state per day {per_day}"
        )
        day2, day7 = per_day[1], per_day[-1]
        assert day2 <= bound
        assert day7 <= bound
        # Flat: the last day's largest state is within the window's own noise of day 2's.
        noise = 6 * math.sqrt(mean)
        assert abs(day7 - day2) <= noise, (day2, day7, noise)
        assert max(per_day) <= bound
        # And nowhere near everything seen: the API holds (DAYS + history) days of runs.
        assert ever > 7 * max(per_day)
        # Still exact after a week of it.
        assert_matches_truth(sim, poller, started)
    finally:
        poller.close()
