"""Turns a Snapshot into the exposition, rendered once per poll and served from cache.

Sample of the output:

    qoder_deployment_runs_total{deployment_id="dep_…",status="failed"} 3.0
    qoder_deployment_last_success_age_seconds{deployment_id="dep_…"} 812.402
"""

from __future__ import annotations

import gzip
import logging
import platform
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client import exposition as text_format
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.openmetrics import exposition as om_format
from prometheus_client.utils import floatToGoString

from . import __version__, fragments
from .client import ERROR_KINDS
from .fragments import FragmentCache
from .models import RUN_ERROR_TYPES, STATUSES, TERMINAL, TRIGGERS
from .snapshot import DeploymentView, HistogramData, Snapshot
from .sync import QUEUE_BUCKETS, SESSION_TOKEN_BUCKETS

log = logging.getLogger(__name__)

TEXT_CONTENT_TYPE = text_format.CONTENT_TYPE_LATEST
OPENMETRICS_CONTENT_TYPE = om_format.CONTENT_TYPE_LATEST
_TERMINAL = tuple(s for s in STATUSES if s in TERMINAL)
_OBSERVED = ("completed", "failed")  # statuses whose runs carry a duration
_OM_EOF = b"# EOF\n"
_OM_EOF_GZ = gzip.compress(_OM_EOF)
# The client's endpoints and every error kind client.error_kind returns, all present at 0;
# any other kind is counted as "other".
API_ENDPOINTS = (
    "list_deployments",
    "get_deployment",
    "list_runs",
    "list_all_runs",
    "get_run_global",
    "list_sessions",
    "get_session",
    "list_session_events",
)
_ERROR_KINDS = frozenset(ERROR_KINDS)


def _float_le(bound: float) -> str:
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


def _buckets(bounds: tuple[float, ...], data: HistogramData | None) -> list[tuple[str, float]]:
    cumulative = data.cumulative if data else (0,) * (len(bounds) + 1)
    labels = [_float_le(b) for b in bounds] + ["+Inf"]
    return list(zip(labels, (float(c) for c in cumulative), strict=True))


def families(snap: Snapshot) -> Iterator[Metric]:
    """Every metric family that changes only when a poll publishes a new snapshot."""
    keeps = snap.metrics.filter.keeps  # metrics.allowlist / denylist
    if snap.accounts:
        source: Iterable[Metric] = _with_account(
            snap.accounts, lambda a: (*_deployment_families(a), *_self_families(a))
        )
    else:
        source = (*_deployment_families(snap), *_self_families(snap))
    for family in (*source, *_process_families(snap)):
        if keeps(family.name, family.type):
            yield family


def _with_account(
    accounts: tuple[Snapshot, ...], families_of: Callable[[Snapshot], Iterable[Metric]]
) -> Iterator[Metric]:
    """Each account's families, their samples labelled account="<name>", merged by name."""
    merged: dict[str, Metric] = {}
    for snap in accounts:
        for family in families_of(snap):
            out = merged.get(family.name)
            if out is None:
                out = Metric(family.name, family.documentation, family.type, family.unit)
                merged[family.name] = out
            label = {"account": snap.account or ""}
            out.samples.extend(s._replace(labels={**label, **s.labels}) for s in family.samples)
    return iter(merged.values())


def _deployment_families(snap: Snapshot) -> Iterator[Metric]:
    deps = snap.deployments
    info = GaugeMetricFamily(
        "qoder_deployment_info",
        "Watched deployment, value 1; join on deployment_id for its name.",
        labels=["deployment_id", "name", "status", "agent_id", "schedule", "agent_version"],
    )
    recent = GaugeMetricFamily(
        "qoder_deployment_recent_runs",
        "Runs triggered within the lookback window, by current status.",
        labels=["deployment_id", "status"],
    )
    totals = CounterMetricFamily(
        "qoder_deployment_runs",
        "Runs that reached a terminal status while the exporter watched, each counted once, "
        "by trigger_context.type (schedule, manual, retry, other).",
        labels=["deployment_id", "status", "trigger"],
    )
    durations = HistogramMetricFamily(
        "qoder_deployment_run_duration_seconds",
        "Duration of finished runs (duration_ms), each observed once.",
        labels=["deployment_id", "status"],
    )
    last_success = GaugeMetricFamily(
        "qoder_deployment_last_success_timestamp_seconds",
        "completed_at of the newest completed run, even if older than the lookback window.",
        labels=["deployment_id"],
    )
    last_status = GaugeMetricFamily(
        "qoder_deployment_last_run_status",
        "1 for the status of the newest finished run, 0 for the others.",
        labels=["deployment_id", "status"],
    )
    errors = CounterMetricFamily(
        "qoder_deployment_run_errors",
        "Failed runs by error.type (the documented types; any other is other).",
        labels=["deployment_id", "error_type"],
    )
    rest = _ScheduleFamilies()
    cost = _SessionFamilies()
    paused = GaugeMetricFamily(
        "qoder_deployment_paused",
        "1 when the deployment is paused; reason is manual, error (auto-paused) or none.",
        labels=["deployment_id", "reason"],
    )
    sync_ok = GaugeMetricFamily(
        "qoder_deployment_sync_success",
        "1 when the last poll of this deployment's runs succeeded.",
        labels=["deployment_id"],
    )
    for d in deps:
        _add_deployment(snap, d, info, recent, totals, durations, last_success, last_status, errors)
        if d.info is not None:
            reason = d.info.paused_reason or ("manual" if d.info.status == "paused" else "none")
            paused.add_metric([d.id, reason], 1.0 if d.info.status == "paused" else 0.0)
        rest.add(snap, d)
        cost.add(d)
        sync_ok.add_metric([d.id], 1.0 if d.sync_ok else 0.0)
    yield from (info, recent, totals, durations, last_success, last_status, errors)
    yield paused
    yield from rest.families()
    yield from cost.families()
    yield sync_ok
    missing = _gauge(
        "qoder_deployment_watched_missing",
        "1 for a configured deployment that the API answers 404 for (deleted, or another "
        "account's); 0 for every other watched deployment.",
    )
    for d in deps:
        missing.add_metric([d.id], 0.0)
    for dep_id in snap.missing:
        missing.add_metric([dep_id], 1.0)
    yield missing


def _gauge(name: str, doc: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=["deployment_id"])


class _ScheduleFamilies:
    """Failure streaks, retries, queue time and schedule adherence (issue 13)."""

    def __init__(self) -> None:
        self.retried = CounterMetricFamily(
            "qoder_deployment_run_retried_failures",
            "Failed runs the API retries (cas_run_extras.attempt <= max_retries); "
            "final failures are runs_total{status=failed} minus these.",
            labels=["deployment_id"],
        )
        self.consecutive = _gauge(
            "qoder_deployment_consecutive_failures",
            "Final failed runs in a row (creation order) since the last completed run, "
            "counted by the exporter; skipped runs leave it unchanged.",
        )
        self.api_consecutive = _gauge(
            "qoder_deployment_api_consecutive_failures",
            "Consecutive failed runs as counted by the Qoder API (metadata.cas_config.stats).",
        )
        self.last_run = _gauge(
            "qoder_deployment_last_run_timestamp_seconds",
            "created_at of the newest run seen, any status.",
        )
        self.last_failure = _gauge(
            "qoder_deployment_last_failure_timestamp_seconds",
            "completed_at (else created_at) of the newest failed run.",
        )
        self.next_trigger = _gauge(
            "qoder_deployment_next_trigger_timestamp_seconds",
            "Next trigger time announced by the API (schedule.upcoming_runs_at, else "
            "metadata.cas_config.stats.next_trigger_at).",
        )
        self.expected = _gauge(
            "qoder_deployment_expected_run_timestamp_seconds",
            "Earliest announced trigger time not yet followed by a run: in the future while "
            "on time, stuck at the missed slot when the schedule stops firing. Absent for "
            "manual, paused and archived deployments.",
        )
        self.archived = _gauge(
            "qoder_deployment_archived", "1 when the deployment is archived (archived_at set)."
        )
        self.queue = HistogramMetricFamily(
            "qoder_deployment_run_queue_seconds",
            "Queue time of finished runs (cas_run_extras.started_at - triggered_at), "
            "each observed once, where the API gives both.",
            labels=["deployment_id"],
        )

    def add(self, snap: Snapshot, d: DeploymentView) -> None:
        dep = [d.id]
        self.retried.add_metric(dep, float(d.retried_failures))
        self.consecutive.add_metric(dep, float(d.consecutive_failures))
        if d.last_run is not None:
            self.last_run.add_metric(dep, d.last_run)
        if d.last_failure is not None:
            self.last_failure.add_metric(dep, d.last_failure)
        if d.expected_run is not None:
            self.expected.add_metric(dep, d.expected_run)
        self.queue.add_metric(
            dep, _buckets(QUEUE_BUCKETS, d.queue), d.queue.total if d.queue else 0.0
        )
        meta = d.info
        if meta is None:
            return
        self.archived.add_metric(dep, 1.0 if meta.archived else 0.0)
        if meta.consecutive_failures is not None:
            self.api_consecutive.add_metric(dep, float(meta.consecutive_failures))
        if meta.next_trigger is not None:
            self.next_trigger.add_metric(dep, meta.next_trigger)

    def families(self) -> Iterator[Metric]:
        yield from (self.retried, self.consecutive, self.api_consecutive, self.last_run)
        yield from (self.last_failure, self.next_trigger, self.expected, self.archived)
        yield self.queue


class _SessionFamilies:
    """What runs followed into their sessions tell: failure reasons, tokens, credits."""

    def __init__(self) -> None:
        self.reasons = CounterMetricFamily(
            "qoder_deployment_run_failure_reasons",
            "Failed runs whose session told why (reason: retries_exhausted, budget_reached, "
            "blocked, terminated, cancelled, session_error, unknown); failures of runs that "
            "could not start are in run_errors_total by error_type.",
            labels=["deployment_id", "reason"],
        )
        self.tokens = CounterMetricFamily(
            "qoder_deployment_run_tokens",
            "Tokens of finished runs' sessions (final usage), added once per run, by kind; "
            "only the kinds the API reports.",
            labels=["deployment_id", "kind"],
        )
        self.per_run = HistogramMetricFamily(
            "qoder_deployment_run_session_tokens",
            "Tokens per finished run (the sum of the kinds its session's final usage gives), "
            "each run observed once; absent until a run's session gives tokens.",
            labels=["deployment_id"],
        )
        self.credits = CounterMetricFamily(
            "qoder_deployment_run_credits",
            "Credits (usage.total_credits) of finished runs' sessions, added once per run.",
            labels=["deployment_id"],
        )
        self.list_cost = CounterMetricFamily(
            "qoder_deployment_run_list_cost_usd",
            "List price in USD (usage.list_cost) of finished runs' sessions, added once per run.",
            labels=["deployment_id"],
        )

    def add(self, d: DeploymentView) -> None:
        for reason, n in sorted(d.reasons.items()):
            self.reasons.add_metric([d.id, reason], float(n))
        for kind, n in sorted(d.tokens.items()):
            self.tokens.add_metric([d.id, kind], float(n))
        if d.session_tokens is not None:
            data = d.session_tokens
            self.per_run.add_metric([d.id], _buckets(SESSION_TOKEN_BUCKETS, data), data.total)
        if d.credits is not None:
            self.credits.add_metric([d.id], d.credits)
        if d.list_cost_usd is not None:
            self.list_cost.add_metric([d.id], d.list_cost_usd)

    def families(self) -> Iterator[Metric]:
        yield from (self.reasons, self.tokens, self.per_run, self.credits, self.list_cost)


def _add_deployment(
    snap: Snapshot,
    d: DeploymentView,
    info: GaugeMetricFamily,
    recent: GaugeMetricFamily,
    totals: CounterMetricFamily,
    durations: HistogramMetricFamily,
    last_success: GaugeMetricFamily,
    last_status: GaugeMetricFamily,
    errors: CounterMetricFamily,
) -> None:
    meta = d.info
    status = "unknown"
    if meta is not None:
        # The API keeps status "active" on an archived deployment: say what it is.
        status = "archived" if meta.archived else meta.status
    info.add_metric(
        [
            d.id,
            meta.name if meta else d.id,
            status,
            meta.agent_id if meta else "",
            meta.schedule if meta else "",
            meta.agent_version if meta else "",
        ],
        1.0,
    )
    for status in STATUSES:
        recent.add_metric([d.id, status], float(d.recent.get(status, 0)))
    by_trigger = d.by_trigger or {(s, "other"): n for s, n in d.totals.items()}
    for status in _TERMINAL:
        for trigger in TRIGGERS:
            totals.add_metric([d.id, status, trigger], float(by_trigger.get((status, trigger), 0)))
    for status in sorted(set(_OBSERVED) | set(d.durations)):
        if status == "failed" and not snap.metrics.failed_duration_histogram:
            continue
        data = d.durations.get(status)
        durations.add_metric(
            [d.id, status], _buckets(snap.buckets, data), data.total if data else 0.0
        )
    if d.last_success is not None:
        last_success.add_metric([d.id], d.last_success)
    if d.last_finished_status is not None:
        for status in _TERMINAL:
            last_status.add_metric([d.id, status], float(status == d.last_finished_status))
    by_type = dict.fromkeys(RUN_ERROR_TYPES, 0)
    for error_type, count in d.errors.items():
        by_type[error_type if error_type in by_type else "other"] += count
    for error_type, count in by_type.items():
        errors.add_metric([d.id, error_type], float(count))


def _api_errors(counted: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    """Every known (endpoint, kind) at 0 plus the counts, unknown kinds summed as other."""
    endpoints = set(API_ENDPOINTS) | {e for e, _ in counted}
    out = {(e, k): 0 for e in endpoints for k in ERROR_KINDS}
    for (endpoint, kind), n in counted.items():
        key = (endpoint, kind if kind in _ERROR_KINDS else "other")
        out[key] += n
    return out


def _self_families(snap: Snapshot) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "qoder_up",
        "1 when the last poll reached the Qoder API and authenticated.",
        value=1.0 if snap.up else 0.0,
    )
    polls = CounterMetricFamily("qoder_exporter_polls", "Poll cycles by result.", labels=["result"])
    for result in ("success", "failure"):
        polls.add_metric([result], float(snap.polls.get(result, 0)))
    yield polls
    poll_hist = HistogramMetricFamily(
        "qoder_exporter_poll_duration_seconds", "Duration of poll cycles."
    )
    poll_hist.add_metric(
        [],
        _buckets(snap.poll_duration_buckets, snap.poll_duration),
        snap.poll_duration.total if snap.poll_duration else 0.0,
    )
    yield poll_hist
    last_poll = GaugeMetricFamily(
        "qoder_exporter_last_successful_poll_timestamp_seconds",
        "Time of the last poll that reached the API; data is as old as this.",
    )
    if snap.last_success_poll is not None:
        last_poll.add_metric([], snap.last_success_poll)
    yield last_poll
    reqs = CounterMetricFamily(
        "qoder_exporter_api_requests",
        "Requests sent to the Qoder API by endpoint and HTTP status (error/timeout: no answer).",
        labels=["endpoint", "code"],
    )
    for (endpoint, code), count in sorted(snap.requests.items()):
        reqs.add_metric([endpoint, code], float(count))
    yield reqs
    req_hist = HistogramMetricFamily(
        "qoder_exporter_api_request_duration_seconds",
        "Duration of requests to the Qoder API.",
        labels=["endpoint"],
    )
    for endpoint, data in sorted(snap.request_durations.items()):
        req_hist.add_metric([endpoint], _buckets(snap.request_duration_buckets, data), data.total)
    yield req_hist
    yield CounterMetricFamily(
        "qoder_exporter_rate_limit_waits",
        "Requests delayed by the exporter's own rate budget (api.requests_per_second).",
        value=float(snap.rate_limit_waits),
    )
    yield CounterMetricFamily(
        "qoder_exporter_rate_limit_wait_seconds",
        "Seconds spent waiting for the exporter's own rate budget.",
        value=snap.rate_limit_wait_seconds,
    )
    yield CounterMetricFamily(
        "qoder_exporter_api_rate_limited",
        "Times the API answered 429 (or 503 with Retry-After) and the exporter backed off.",
        value=float(snap.rate_limited),
    )
    yield CounterMetricFamily(
        "qoder_exporter_deferred_refreshes",
        "In-flight runs a cycle did not fetch by id because it reached its per-cycle bound "
        "(requests_per_second x poll_interval / 2); they are read in later cycles.",
        value=float(snap.deferred_refreshes),
    )
    yield CounterMetricFamily(
        "qoder_exporter_deferred_session_reads",
        "Runs awaiting their sessions whose reads a cycle put off because the per-cycle bound "
        "(what the in-flight refreshes left of it) was spent; newest runs first, the rest "
        "are read in later cycles.",
        value=float(snap.deferred_session_reads),
    )
    errors = CounterMetricFamily(
        "qoder_exporter_api_errors",
        "Failed API request attempts (retried or not) by endpoint and error type: timeout, "
        "connection, invalid_response, or the API's error.type.",
        labels=["endpoint", "error_type"],
    )
    for (endpoint, kind), n in sorted(_api_errors(snap.api_errors).items()):
        errors.add_metric([endpoint, kind], float(n))
    yield errors
    invalid = CounterMetricFamily(
        "qoder_exporter_invalid_records",
        "API records that could not be parsed and were skipped, by kind.",
        labels=["kind"],
    )
    for kind in sorted({"run", "deployment"} | set(snap.invalid_records)):
        invalid.add_metric([kind], float(snap.invalid_records.get(kind, 0)))
    yield invalid
    yield GaugeMetricFamily(
        "qoder_exporter_tracked_runs",
        "Runs held in memory (lookback window plus in-flight runs).",
        value=float(snap.tracked_runs),
    )


def _process_families(snap: Snapshot) -> Iterator[Metric]:
    """The process's own: reloads, build, shard (never per account)."""
    if snap.reload_ok is not None:
        # Only after a reload was tried, as Prometheus' own prometheus_config_* gauges.
        yield GaugeMetricFamily(
            "qoder_exporter_config_last_reload_successful",
            "Whether the last configuration reload (SIGHUP or POST /-/reload) succeeded.",
            value=1.0 if snap.reload_ok else 0.0,
        )
    if snap.reload_at is not None:
        yield GaugeMetricFamily(
            "qoder_exporter_config_last_reload_success_timestamp_seconds",
            "When the configuration was last reloaded successfully.",
            value=snap.reload_at,
        )
    build = GaugeMetricFamily(
        "qoder_exporter_build_info",
        "Exporter build information, value 1.",
        labels=["version", "python_version"],
    )
    build.add_metric([__version__, platform.python_version()], 1.0)
    yield build
    if snap.shard is not None:
        shard = GaugeMetricFamily(
            "qoder_exporter_shard_info",
            "This process's shard (--shard or the StatefulSet pod ordinal) of total_shards.",
            labels=["shard", "total_shards"],
        )
        shard.add_metric([str(snap.shard.index), str(snap.shard.total)], 1.0)
        yield shard


class SnapshotCollector:
    """prometheus_client custom collector over the current snapshot."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def describe(self) -> list[Metric]:
        return list(families(Snapshot(taken_at=0.0, buckets=())))

    def collect(self) -> Iterator[Metric]:
        return families(self.snapshot)


@dataclass(frozen=True, slots=True)
class _Rendered:
    text: _Lazy
    text_gz: bytes
    om: _Lazy
    om_gz: bytes
    ages: tuple[_AgeFamily, ...]  # gauges computed at scrape time


_SUCCESS_AGE = "qoder_deployment_last_success_age_seconds"
_IN_FLIGHT_AGE = "qoder_deployment_oldest_in_flight_run_age_seconds"
_AGE_HEADERS = {
    _SUCCESS_AGE: f"# HELP {_SUCCESS_AGE} Seconds since the newest completed run finished, "
    f"computed at scrape time.\n# TYPE {_SUCCESS_AGE} gauge\n",
    _IN_FLIGHT_AGE: f"# HELP {_IN_FLIGHT_AGE} Age of the oldest run still pending or running "
    f"(0 when none), computed at scrape time.\n# TYPE {_IN_FLIGHT_AGE} gauge\n",
}
_IN_FLIGHT = ("pending", "running")


class _AgeFamily:
    """A gauge whose values move with the clock. At render time: its HELP and TYPE lines
    and the lines that do not move (nothing in flight: 0), encoded and gzipped once; the
    moving lines as one %-template, filled at each scrape (a tenth of the cost of writing
    each line). Prometheus does not mind the order of a family's series."""

    def __init__(self, header: str) -> None:
        self.header = header
        self.fixed: list[str] = [header]  # whole lines
        self.moving: list[str] = []  # line beginnings, %-escaped, each ending in %.3f\n
        self.since: list[float] = []  # each moving line's value is now - since
        self.fixed_bytes = b""
        self.fixed_gz = b""
        self._fill = ""

    def done(self) -> _AgeFamily:
        self.fixed_bytes = "".join(self.fixed).encode()
        self.fixed_gz = gzip.compress(self.fixed_bytes, _FAMILY_GZIP_LEVEL)
        self._fill = "".join(self.moving)
        self.fixed, self.moving = [], []
        return self

    def lines(self, now: float) -> bytes:
        """The moving lines at `now` (a start in the future reads 0)."""
        return (self._fill % tuple([now - t if t < now else 0.0 for t in self.since])).encode()


# A deployment's age lines up to their values: the success line, then per in-flight status
# the line as written when 0 and the line's %-escaped beginning.
_Prefixes = tuple[str, tuple[tuple[str, str], ...]]


def _prefixes(account: str | None, deployment_id: str) -> _Prefixes:
    labels = fragments.Dep.of(deployment_id, account).text
    in_flight = []
    for status in _IN_FLIGHT:
        begin = f'{_IN_FLIGHT_AGE}{{{labels},status="{status}"}} '
        in_flight.append((f"{begin}0.000\n", begin.replace("%", "%%") + "%.3f\n"))
    success = f"{_SUCCESS_AGE}{{{labels}}} ".replace("%", "%%") + "%.3f\n"
    return success, tuple(in_flight)


class _AgeLines:
    """Builds the age families after each poll; each deployment's line beginnings depend
    on its id and account only, so they are kept across renders."""

    def __init__(self) -> None:
        self._kept: dict[tuple[str | None, str], _Prefixes] = {}

    def families(self, snap: Snapshot) -> tuple[_AgeFamily, ...]:
        success, in_flight = (
            _AgeFamily(_AGE_HEADERS[_SUCCESS_AGE]),
            _AgeFamily(_AGE_HEADERS[_IN_FLIGHT_AGE]),
        )
        kept, new = self._kept, {}
        for part in snap.accounts or (snap,):
            account = (part.account or "") if snap.accounts else None
            for d in part.deployments:
                key = (account, d.id)
                pre = kept.get(key) or _prefixes(account, d.id)
                new[key] = pre
                if d.last_success is not None:
                    success.moving.append(pre[0])
                    success.since.append(d.last_success)
                for status, (zero, begin) in zip(_IN_FLIGHT, pre[1], strict=True):
                    since = d.oldest_in_flight.get(status)
                    if since is None:
                        in_flight.fixed.append(zero)
                    else:
                        in_flight.moving.append(begin)
                        in_flight.since.append(since)
        self._kept = new
        keeps = snap.metrics.filter.keeps
        return tuple(f.done() for f in (success, in_flight) if keeps(f.header.split(" ", 3)[2]))


def _render_failures_family(count: int) -> CounterMetricFamily:
    return CounterMetricFamily(
        "qoder_exporter_render_failures",
        "Snapshots that could not be rendered; /metrics then says qoder_up 0 until one renders.",
        value=float(count),
    )


class _FixedCollector:
    """Yields the families it is given; for the body served when a render fails."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


class _RenderFailuresCollector:
    def __init__(self, exposition: Exposition) -> None:
        self.exposition = exposition

    def describe(self) -> list[Metric]:
        return [_render_failures_family(0)]

    def collect(self) -> Iterator[Metric]:
        yield _render_failures_family(self.exposition.render_failures)


class _SelfCollector:
    """The exporter's own families, few samples each: rendered by prometheus_client."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def describe(self) -> list[Metric]:
        return list(_self_families(Snapshot(taken_at=0.0, buckets=())))

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        keeps = snap.metrics.filter.keeps  # as families() filters them
        if snap.accounts:
            source: Iterable[Metric] = _with_account(snap.accounts, _self_families)
        else:
            source = _self_families(snap)
        return (f for f in (*source, *_process_families(snap)) if keeps(f.name, f.type))


# The per-deployment families are tens of MB at 10,000 deployments: level 1 compresses them
# about 3x faster than 6 for ~13% more bytes on the wire (bench/RESULTS.md, Scale).
_FAMILY_GZIP_LEVEL = 1


class _Headers:
    """Each per-deployment family's HELP and TYPE lines, plain and gzipped, per format."""

    def __init__(self, families: tuple[fragments.Family, ...]) -> None:
        self.text, self.om = fragments.headers(families)
        self.text_gz = [gzip.compress(h, 6) for h in self.text]
        self.om_gz = [gzip.compress(h, 6) for h in self.om]


# A family's samples are gzipped in blocks of deployments, each block a gzip member of its
# own kept while its bytes stay the same, so a poll that changes a few deployments
# compresses their blocks again, not the whole family (tens of MB at 10,000 deployments).
# Deflate looks back 32 KiB at most: blocks of about twice that compress nearly as well as
# the family in one piece (bench/RESULTS.md, Scale).
_BLOCK_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class _Block:
    samples: bytes
    gz: bytes


@dataclass(frozen=True, slots=True)
class _Family:
    """One per-deployment family's samples of the last render, in blocks of `per_block`
    deployments (by position), each with its gzip member."""

    blocks: tuple[_Block, ...]
    per_block: int

    def patch(self, frags: Sequence[tuple[bytes, ...]], i: int, changed: list[int]) -> _Family:
        """This family (index i in frags) with the blocks holding the changed positions
        compressed again: the deployments are the same, in the same order, as before."""
        blocks = list(self.blocks)
        per_block = self.per_block
        for b in {at // per_block for at in changed}:
            data = b"".join(f[i] for f in frags[b * per_block : (b + 1) * per_block])
            blocks[b] = _block(data, blocks[b])
        return _Family(tuple(blocks), per_block)

    @classmethod
    def render(cls, parts: Sequence[bytes], prev: _Family | None) -> _Family:
        """The family of these per-deployment parts, reusing prev's unchanged blocks."""
        per_block = _per_block(parts, prev)
        old = prev.blocks if prev is not None and prev.per_block == per_block else ()
        blocks = []
        for b, at in enumerate(range(0, len(parts), per_block)):
            data = b"".join(parts[at : at + per_block])
            blocks.append(_block(data, old[b] if b < len(old) else None))
        return cls(tuple(blocks), per_block)


def _block(data: bytes, old: _Block | None) -> _Block:
    """The block of these samples: the old one (and its gzip member) if they are its own."""
    if old is not None and old.samples == data:
        return old
    return _Block(data, gzip.compress(data, _FAMILY_GZIP_LEVEL))


def _per_block(parts: Sequence[bytes], prev: _Family | None) -> int:
    """Deployments per block: about _BLOCK_BYTES of samples. Kept from the last render
    unless 4x off (block boundaries that moved every poll would compress everything)."""
    size = sum(map(len, parts))
    ideal = max(1, _BLOCK_BYTES * len(parts) // size) if size else 1 << 16
    if prev is not None and prev.per_block // 4 <= ideal <= prev.per_block * 4:
        return prev.per_block
    return ideal


class Exposition:
    """Holds the rendered exposition of the latest snapshot; safe for concurrent scrapes.

    The per-deployment families are assembled from fragments.FragmentCache (only the
    deployments whose values changed are rendered again) and gzipped family by family, each
    family's member kept while its samples stay the same; a gzip stream may hold several
    members, which Go's and Python's decoders join. Sample lines are the same in both
    formats, so one gzip member per family serves both; only the headers differ.
    """

    def __init__(self, snapshot: Snapshot, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.render_failures = 0
        self._metrics = snapshot.metrics
        self.fragments = FragmentCache(fragments.families_for(self._metrics))
        self._headers = _Headers(self.fragments.families)
        self._families: list[_Family] = []
        self._ages = _AgeLines()
        self._self = _SelfCollector(snapshot)
        self._registry = CollectorRegistry(auto_describe=True)
        self._registry.register(self._self)
        self._registry.register(_RenderFailuresCollector(self))
        self._lock = threading.Lock()  # serialises renders, never held by scrapes
        self._rendered = self._render_or_fallback(snapshot)
        self.snapshot = snapshot

    def update(self, snapshot: Snapshot) -> None:
        """Render a new snapshot once; scrapes keep serving the old bytes meanwhile."""
        with self._lock:
            rendered = self._render_or_fallback(snapshot)
            # One reference swap: a scrape sees either the old or the new body, never a mix.
            self._rendered, self.snapshot = rendered, snapshot

    def _render_or_fallback(self, snapshot: Snapshot) -> _Rendered:
        try:
            return self._render(snapshot)
        except Exception:
            # Keeping the previous body would go on claiming qoder_up 1 for data that is no
            # longer current; say qoder_up 0 instead, and count it.
            self.render_failures += 1
            log.exception("cannot render the snapshot: /metrics says qoder_up 0 until one renders")
            return self._fallback()

    def _fallback(self) -> _Rendered:
        up = GaugeMetricFamily(
            "qoder_up",
            "1 when the last poll reached the Qoder API and authenticated.",
            value=0.0,
        )
        registry = CollectorRegistry(auto_describe=False)
        collector = _FixedCollector([up, _render_failures_family(self.render_failures)])
        registry.register(collector)
        text = text_format.generate_latest(registry)
        om: bytes = om_format.generate_latest(registry)  # type: ignore[no-untyped-call]
        om = om.removesuffix(_OM_EOF)
        return _Rendered(
            _Lazy([text]), gzip.compress(text, 6), _Lazy([om]), gzip.compress(om, 6), ()
        )

    def _render(self, snapshot: Snapshot) -> _Rendered:
        if snapshot.metrics != self._metrics:
            # Another metrics: section (a reload): other families, or other lines in them.
            self._metrics = snapshot.metrics
            self.fragments = FragmentCache(fragments.families_for(self._metrics))
            self._headers = _Headers(self.fragments.families)
            self._families = []
        # With accounts, each account's deployments in turn, labelled with its name.
        parts = snapshot.accounts or (snapshot,)
        groups = [((p.account or "") if snapshot.accounts else None, p.deployments) for p in parts]
        frags, dirty = self.fragments.fragments(groups, snapshot.buckets)
        kept = self.fragments.families
        # watched_missing (last when kept) also lists the configured deployments missing.
        last = len(kept) - 1 if kept and kept[-1] is fragments.MISSING else None
        families = []
        for i in range(len(kept)):
            prev = self._families[i] if i < len(self._families) else None
            if prev is not None and dirty is not None and i != last:
                changed = dirty.get(i)
                if changed is None:
                    families.append(prev)  # no deployment's lines changed: nor its members
                else:
                    families.append(prev.patch(frags, i, changed))
                continue
            if i == last:
                lines = _with_missing(frags, i, groups, [p.missing for p in parts])
            else:
                lines = [f[i] for f in frags]
            families.append(_Family.render(lines, prev))
        self._families = families
        self._self.snapshot = snapshot
        tail_text = text_format.generate_latest(self._registry)
        tail_om: bytes = om_format.generate_latest(self._registry)  # type: ignore[no-untyped-call]
        tail_om = tail_om.removesuffix(_OM_EOF)
        h = self._headers
        text, om, text_gz, om_gz = [], [], [], []
        for i, f in enumerate(families):
            text.append(h.text[i])
            om.append(h.om[i])
            text_gz.append(h.text_gz[i])
            om_gz.append(h.om_gz[i])
            for block in f.blocks:
                text.append(block.samples)
                om.append(block.samples)
                text_gz.append(block.gz)
                om_gz.append(block.gz)
        return _Rendered(
            _Lazy([*text, tail_text]),
            b"".join([*text_gz, gzip.compress(tail_text, 6)]),
            _Lazy([*om, tail_om]),
            b"".join([*om_gz, gzip.compress(tail_om, 6)]),
            self._ages.families(snapshot),
        )

    def body(self, *, openmetrics: bool, compress: bool) -> bytes:
        """The full exposition: cached static part plus the scrape-time ages."""
        rendered = self._rendered
        now = self.clock()
        eof = _OM_EOF if openmetrics else b""
        if compress:
            static = rendered.om_gz if openmetrics else rendered.text_gz
            # A gzip stream may hold several members; decoders (Go's, Python's) join them.
            parts = [static]
            for f in rendered.ages:
                parts += (f.fixed_gz, gzip.compress(f.lines(now), _FAMILY_GZIP_LEVEL))
            parts.append(_OM_EOF_GZ if openmetrics else b"")
            return b"".join(parts)
        ages = b"".join(p for f in rendered.ages for p in (f.fixed_bytes, f.lines(now)))
        return (rendered.om if openmetrics else rendered.text).get() + ages + eof


def _with_missing(
    frags: list[tuple[bytes, ...]],
    i: int,
    groups: Sequence[fragments.Group],
    missing: Sequence[tuple[str, ...]],
) -> list[bytes]:
    """watched_missing's lines: each account's watched deployments (0), then its
    configured deployments that are missing (1), as collector.families() gives them."""
    out: list[bytes] = []
    at = 0
    for (account, views), gone in zip(groups, missing, strict=True):
        out.extend(f[i] for f in frags[at : at + len(views)])
        at += len(views)
        name = "qoder_deployment_watched_missing"
        out.extend(f"{name}{{{fragments.Dep.of(d, account).text}}} 1.0\n".encode() for d in gone)
    return out


class _Lazy:
    """An uncompressed body, joined from its parts on the first scrape that asks for it:
    Prometheus asks for gzip, so most polls never need the tens of MB joined."""

    def __init__(self, parts: list[bytes]) -> None:
        self._parts: list[bytes] | None = parts
        self._joined: bytes | None = None
        self._lock = threading.Lock()

    def get(self) -> bytes:
        with self._lock:
            if self._joined is None:
                assert self._parts is not None
                self._joined, self._parts = b"".join(self._parts), None
            return self._joined
