"""Immutable per-cycle view of everything the exporter publishes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .filters import DEFAULT_METRICS, MetricsConfig
from .models import Deployment
from .sharding import Shard


@dataclass(frozen=True, slots=True)
class HistogramData:
    cumulative: tuple[int, ...]  # one per bucket bound, then +Inf
    total: float


@dataclass(frozen=True, slots=True)
class DeploymentView:
    """One watched deployment as of the last cycle."""

    id: str
    info: Deployment | None
    recent: dict[str, int]
    totals: dict[str, int]
    durations: dict[str, HistogramData]
    errors: dict[str, int]
    last_success: float | None
    last_finished_status: str | None
    oldest_in_flight: dict[str, float]
    sync_ok: bool
    last_error: str | None
    # (status, trigger) -> finished runs; when empty the renderer falls back to `totals`.
    by_trigger: dict[tuple[str, str], int] = field(default_factory=dict)
    retried_failures: int = 0
    queue: HistogramData | None = None  # sync.QUEUE_BUCKETS
    consecutive_failures: int = 0  # computed by the exporter from the runs it saw
    last_run: float | None = None
    last_failure: float | None = None
    expected_run: float | None = None  # sync.expected_run; None when not expected to run
    # From runs followed into their sessions (outcomes.py): empty/None when none were.
    reasons: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    credits: float | None = None
    list_cost_usd: float | None = None
    session_tokens: HistogramData | None = None  # sync.SESSION_TOKEN_BUCKETS, tokens per run


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one poll cycle produced; the collector and server read only this."""

    taken_at: float
    buckets: tuple[float, ...]
    deployments: tuple[DeploymentView, ...] = ()
    up: bool = False
    polls_done: int = 0
    last_success_poll: float | None = None
    poll_interval: float = 60.0
    # Self-metrics, copied from the poller's counters at snapshot time.
    polls: dict[str, int] = field(default_factory=dict)
    poll_duration: HistogramData | None = None
    requests: dict[tuple[str, str], int] = field(default_factory=dict)
    request_durations: dict[str, HistogramData] = field(default_factory=dict)
    request_duration_buckets: tuple[float, ...] = ()
    poll_duration_buckets: tuple[float, ...] = ()
    rate_limit_waits: int = 0
    rate_limit_wait_seconds: float = 0.0
    rate_limited: int = 0
    deferred_refreshes: int = 0
    deferred_session_reads: int = 0
    invalid_records: dict[str, int] = field(default_factory=dict)
    api_errors: dict[tuple[str, str], int] = field(default_factory=dict)
    tracked_runs: int = 0
    # Configured deployments the API answers 404 for: kept visible, not silently dropped.
    missing: tuple[str, ...] = ()
    last_error: str | None = None
    reload_ok: bool | None = None  # None: the config was never reloaded
    reload_at: float | None = None
    metrics: MetricsConfig = DEFAULT_METRICS  # family filter, failed-duration switch
    # Sharded (--total-shards > 1): qoder_exporter_shard_info says which shard this is.
    shard: Shard | None = None
    # With `accounts` configured: this account's name (its series' `account` label), and in
    # the merged snapshot the per-account snapshots the collector renders, labelled.
    account: str | None = None
    accounts: tuple[Snapshot, ...] = ()
    # When each deployment was last synced (ok or not), by id; none: never tried. Not in
    # the views: it moves every cycle for every deployment, and a view that stays the same
    # object is one the collector need not look at again.
    last_sync: Mapping[str, float] = field(default_factory=dict)
