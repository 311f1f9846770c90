"""The exact-count check: the exporter's snapshot against the simulator's ground truth.

Shared by the integration, fault and memory tests.
"""

from __future__ import annotations

from collections import Counter

import pytest

from qoder_exporter.poller import Poller
from qoder_exporter.simulator import Simulator

STEP = 300.0  # a poll every five simulated minutes
DAY = 86400.0
TERMINAL_STATUSES = ("completed", "failed", "skipped")


def run_for(sim: Simulator, poller: Poller, seconds: float, step: float = STEP) -> None:
    """Advance simulated time by `seconds`, polling once after every `step`."""
    for _ in range(int(seconds // step)):
        sim.advance(step)
        poller.poll_once()


def assert_counts_match_truth(sim: Simulator, poller: Poller, started: float) -> None:
    """Nothing lost, nothing counted twice: runs_total, histograms and errors are exact.

    `started` is the simulated time from which every run that finished must be counted.
    """
    snap = poller.snapshot
    views = {v.id: v for v in snap.deployments}
    assert set(views) == set(sim.deployment_ids())
    for dep_id, view in views.items():
        finished = sim.truth_finished(dep_id, since=started)
        expected = Counter(status for status, _, _ in finished)
        assert {s: view.totals.get(s, 0) for s in TERMINAL_STATUSES} == {
            s: expected.get(s, 0) for s in TERMINAL_STATUSES
        }, dep_id
        for status in ("completed", "failed"):
            durations = sorted(d for s, d, _ in finished if s == status and d is not None)
            hist = view.durations.get(status)
            if not durations:
                assert hist is None or hist.cumulative[-1] == 0
                continue
            assert hist is not None, (dep_id, status)
            assert hist.cumulative[-1] == len(durations)
            assert hist.total == pytest.approx(sum(durations), abs=1e-3 * len(durations))
            for bound, count in zip(snap.buckets, hist.cumulative, strict=False):
                assert count == sum(1 for d in durations if d <= bound + 1e-9), (status, bound)
        errors = Counter(e for s, _, e in finished if s == "failed")
        assert view.errors == dict(errors), dep_id


def assert_matches_truth(
    sim: Simulator,
    poller: Poller,
    started: float,
    *,
    clock_offset: float = 0.0,
) -> None:
    """Exact counts, histogram buckets and sums, window counts and last success.

    clock_offset is how far the poller's clock runs ahead of the API's (negative: behind);
    the window the exporter reports is then lookback - clock_offset seconds of API time.
    """
    assert_counts_match_truth(sim, poller, started)
    assert_window_matches_truth(sim, poller, clock_offset=clock_offset)


def assert_window_matches_truth(
    sim: Simulator, poller: Poller, *, clock_offset: float = 0.0
) -> None:
    """recent_runs, last success and last status equal the API's as of the last poll."""
    for view in poller.snapshot.deployments:
        dep_id = view.id
        window = poller.lookback(dep_id) - clock_offset
        assert view.recent == sim.truth_recent(dep_id, window), dep_id
        truth_success = sim.truth_last_success(dep_id)
        if truth_success is None:
            assert view.last_success is None
        else:
            assert view.last_success == pytest.approx(truth_success, abs=1e-3)
        assert view.last_finished_status == sim.truth_last_finished_status(dep_id)
