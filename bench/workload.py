"""Synthetic exporter state: a Snapshot of N deployments, and the plain-client baseline.

The snapshot is what a poll of N deployments publishes, with values that vary per deployment
(seeded), so body sizes and gzip ratios are realistic rather than N copies of one record.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from qoder_exporter.collector import _render_failures_family, families
from qoder_exporter.config import DEFAULT_DURATION_BUCKETS
from qoder_exporter.models import Deployment
from qoder_exporter.selfmetrics import POLL_BUCKETS, REQUEST_BUCKETS
from qoder_exporter.snapshot import DeploymentView, HistogramData, Snapshot

ERROR_TYPES = (
    "unknown_error",
    "session_rate_limited_error",
    "environment_not_found_error",
    "agent_archived_error",
)
ENDPOINTS = ("list_deployments", "list_runs", "list_all_runs", "get_run_global")
# The gauges the exporter computes at scrape time (ages); everything else is per poll.
AGE_METRICS = (
    "qoder_deployment_last_success_age_seconds",
    "qoder_deployment_oldest_in_flight_run_age_seconds",
)


def _hist(rng: random.Random, bounds: tuple[float, ...], n: int) -> HistogramData:
    counts = [0] * (len(bounds) + 1)
    total = 0.0
    for _ in range(n):
        value = rng.lognormvariate(4.5, 1.0)
        i = next((k for k, b in enumerate(bounds) if value <= b), len(bounds))
        counts[i] += 1
        total += value
    cumulative, running = [], 0
    for c in counts:
        running += c
        cumulative.append(running)
    return HistogramData(tuple(cumulative), round(total, 3))


def snapshot(n: int, now: float, seed: int = 1) -> Snapshot:
    """The snapshot a poll of n deployments publishes, as of `now`."""
    rng = random.Random(seed)
    bounds = DEFAULT_DURATION_BUCKETS
    views = []
    for i in range(n):
        dep_id = f"dep_{rng.getrandbits(128):032x}"
        paused = rng.random() < 0.05
        recent = {
            "pending": rng.randint(0, 1),
            "running": rng.randint(0, 2),
            "completed": rng.randint(20, 150),
            "failed": rng.randint(0, 15),
            "skipped": rng.randint(0, 5),
        }
        totals = {s: recent[s] * rng.randint(1, 30) for s in ("completed", "failed", "skipped")}
        errors = {
            e: rng.randint(1, 40) for e in rng.sample(ERROR_TYPES, rng.randint(0, len(ERROR_TYPES)))
        }
        in_flight = {s: now - rng.uniform(1, 900) for s in ("pending", "running") if recent[s] > 0}
        views.append(
            DeploymentView(
                id=dep_id,
                info=Deployment(
                    dep_id,
                    f"deployment-{i}",
                    "paused" if paused else "active",
                    f"agent_{rng.getrandbits(128):032x}",
                    f"*/{rng.choice((5, 6, 10, 12, 15))} * * * * (UTC)",
                    paused_reason="manual" if paused else None,
                    consecutive_failures=rng.randint(0, 3),
                    next_trigger_at=now + rng.uniform(0, 900),
                    created_at=now - rng.uniform(86400, 90 * 86400),
                ),
                recent=recent,
                totals=totals,
                durations={
                    "completed": _hist(rng, bounds, totals["completed"]),
                    "failed": _hist(rng, bounds, totals["failed"]),
                },
                errors=errors,
                last_success=None if rng.random() < 0.02 else now - rng.uniform(60, 86400),
                last_finished_status=rng.choice(("completed", "completed", "failed", "skipped")),
                oldest_in_flight=in_flight,
                sync_ok=rng.random() > 0.01,
                last_error=None,
            )
        )
    requests = {(e, "200"): rng.randint(1000, 100000) for e in ENDPOINTS}
    requests[("list_runs", "429")] = 3
    return Snapshot(
        taken_at=now,
        buckets=bounds,
        deployments=tuple(views),
        up=True,
        polls_done=1000,
        last_success_poll=now,
        polls={"success": 1000, "failure": 2},
        poll_duration=_hist(rng, POLL_BUCKETS, 1002),
        requests=requests,
        request_durations={e: _hist(rng, REQUEST_BUCKETS, 500) for e in ENDPOINTS},
        request_duration_buckets=REQUEST_BUCKETS,
        poll_duration_buckets=POLL_BUCKETS,
        tracked_runs=sum(sum(v.recent.values()) for v in views),
    )


class PlainCollector:
    """What a plain prometheus_client exporter would register: every family built from the
    state at every scrape, the scrape-time ages included (as the cached exposition has them)."""

    def __init__(self, snap: Snapshot, clock: Callable[[], float]) -> None:
        self.snapshot = snap
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        yield from families(snap)
        # The exporter registers its render-failure counter next to the snapshot's families.
        yield _render_failures_family(0)
        now = self.clock()
        success = GaugeMetricFamily(
            AGE_METRICS[0],
            "Seconds since the newest completed run finished, computed at scrape time.",
            labels=["deployment_id"],
        )
        in_flight = GaugeMetricFamily(
            AGE_METRICS[1],
            "Age of the oldest run still pending or running (0 when none), computed at scrape "
            "time.",
            labels=["deployment_id", "status"],
        )
        for d in snap.deployments:
            if d.last_success is not None:
                success.add_metric([d.id], max(now - d.last_success, 0.0))
        for d in snap.deployments:
            for status in ("pending", "running"):
                ref = d.oldest_in_flight.get(status)
                in_flight.add_metric([d.id, status], max(now - ref, 0.0) if ref else 0.0)
        yield success
        yield in_flight
