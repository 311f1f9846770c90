"""The run store: exactly-once accounting of deployment runs. Pure logic, no I/O.

Per deployment the store tracks the runs of the lookback window plus every run still in
flight (whatever its age). A run is *accounted* once it has been seen terminal: either
counted (it finished while we watched) or taken as history (it had already finished when
the deployment was first synced). Accounted runs never change again, so a run can be counted
at most once; tracked runs leave the store only once accounted and older than the window,
and the deployment's *floor* (the oldest creation time still tracked, never moving back)
tells the poller which untracked runs it has already dealt with.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .models import (
    IN_FLIGHT,
    STATUSES,
    TERMINAL,
    Deployment,
    Run,
    run_error_type,
    trigger_label,
)
from .outcomes import REASONS

# Runs created within this many seconds before the newest one we know are re-read, so a
# run that shares a millisecond with it (ids tie-break at random) is not missed.
OVERLAP_S = 5.0
_RANK = {"pending": 0, "running": 1, "completed": 2, "failed": 2, "skipped": 2}
# Queue time (cas_run_extras.started_at - triggered_at): fixed bounds, seconds.
QUEUE_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
# Tokens per run (the sum of the kinds a session's final usage gives): fixed bounds in steps
# of about half a decade. A session's usage is cumulative over its turn, and an agent turn
# re-sends its context with every model request (cache reads count too), so one short answer
# is ~1e3-1e4, a run of a few tool steps 1e5-1e6 and a long one 1e7; past 1e8 is a runaway.
SESSION_TOKEN_BUCKETS = (1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6, 3e6, 1e7, 3e7, 1e8)
# A run created this long before an announced trigger time still answers it (fire jitter).
TRIGGER_SLACK_S = 60.0
# Announced trigger times remembered per deployment: the earliest unanswered ones.
MAX_ANNOUNCED = 10
# Longer than a year is a bad record, not a duration.
_MAX_SPAN_S = 366 * 86400.0


@dataclass(slots=True)
class Tracked:
    created_at: float
    status: str
    accounted: bool


@dataclass(frozen=True, slots=True)
class PendingSession:
    """A run in flight until its session says how it ended (sessions.py)."""

    session_id: str
    trigger: str | None  # trigger_context.type, for the trigger label once counted
    history: bool  # seen on the deployment's first sync: history if it ended before start


@dataclass(frozen=True, slots=True)
class Resolution:
    """How a followed run ended, from its session (outcomes.py)."""

    status: str  # completed or failed
    reason: str | None  # outcomes.REASONS for a failure, None for a success
    finished_at: float
    duration_s: float | None = None
    tokens: tuple[tuple[str, int], ...] = ()  # (kind, count) of the session's final usage
    credits: float | None = None
    list_cost_usd: float | None = None


@dataclass(slots=True)
class Histogram:
    """Per-bucket (non-cumulative) counts; the last slot is +Inf."""

    counts: list[int]
    total: float = 0.0

    def observe(self, bounds: tuple[float, ...], value: float) -> None:
        self.counts[bisect.bisect_left(bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[int]:
        out, running = [], 0
        for c in self.counts:
            running += c
            out.append(running)
        return out


@dataclass(slots=True)
class DeploymentState:
    """Everything the store knows about one deployment."""

    floor: float
    runs: dict[str, Tracked] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TERMINAL, 0))
    durations: dict[str, Histogram] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    last_success: float | None = None
    last_finished: tuple[float, str, str] | None = None  # (created_at, id, status)
    # (status, trigger) -> count; sums to `totals` per status (a pre-trigger state file's
    # counts sit under "other").
    by_trigger: dict[tuple[str, str], int] = field(default_factory=dict)
    retried: int = 0  # failed runs the API retries (attempt <= max_retries)
    queue: Histogram | None = None  # QUEUE_BUCKETS
    consecutive: int = 0  # final failures since the last completed run
    last_run: float | None = None  # created_at of the newest run seen
    last_failure: float | None = None  # completed_at (else created_at) of the newest failure
    announced: list[float] = field(default_factory=list)  # sorted trigger times, unanswered
    # Runs followed into their sessions: run id -> what resolving it needs. Part of the state.
    sessions: dict[str, PendingSession] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)  # session failures by reason
    tokens: dict[str, int] = field(default_factory=dict)  # by kind, of resolved runs
    credits: float | None = None  # None until a resolved run's session gave credits
    list_cost_usd: float | None = None
    # SESSION_TOKEN_BUCKETS; None until a resolved run's session gave tokens.
    session_tokens: Histogram | None = None
    # Bumped whenever anything above changes (not the floor alone): the snapshot builder
    # keeps a deployment's view, and the collector its rendered lines, while it stays put.
    version: int = 0
    # At most the oldest accounted run's creation time, so expire() scans the runs only
    # when one may have fallen below the floor, not at every apply (O(runs) per cycle).
    low: float = float("-inf")
    # plan()'s answer as of `version`: rebuilt only for deployments that changed.
    plan_cache: tuple[int, SyncPlan] | None = None
    # note_schedule's last input (the deployment's metadata object, last_run): unchanged,
    # the announced times are too, so a quiet cycle does not work them out again.
    schedule_seen: tuple[Deployment, float | None] | None = None

    def watermark(self) -> float | None:
        """Creation time of the newest tracked run."""
        return max((t.created_at for t in self.runs.values()), default=None)

    def in_flight(self) -> list[str]:
        return [rid for rid, t in self.runs.items() if not t.accounted]


@dataclass(frozen=True, slots=True)
class SyncPlan:
    """What a poll worker needs to know to fetch one deployment, frozen for thread safety."""

    initial: bool
    known: frozenset[str]
    in_flight: frozenset[str]
    floor: float
    watermark: float | None
    has_success: bool
    # Tracked runs from the newest back to the oldest one in flight (0: none in flight):
    # how deep the first page must reach to show every in-flight run without a GET each.
    reach: int = 0
    # Runs awaiting their sessions: known, not accounted, yet not re-read by id either.
    awaiting: frozenset[str] = frozenset()

    def with_floor(self, floor: float) -> SyncPlan:
        """dataclasses.replace(self, floor=floor), spelt out: once per deployment per cycle."""
        return SyncPlan(
            self.initial,
            self.known,
            self.in_flight,
            floor,
            self.watermark,
            self.has_success,
            self.reach,
            self.awaiting,
        )


@dataclass(frozen=True, slots=True)
class ApplyResult:
    counted: int
    new_in_flight: int
    vanished: int


def merge_duplicates(runs: Iterable[Run]) -> dict[str, Run]:
    """Collapse repeated sightings of a run (overlapping pages) into its most advanced one."""
    merged: dict[str, Run] = {}
    for run in runs:
        seen = merged.get(run.id)
        if seen is None or _RANK[run.status] > _RANK[seen.status]:
            merged[run.id] = run
    return merged


class RunStore:
    """Per-deployment run accounting; only the poller thread calls it."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = tuple(sorted(buckets))
        self.deployments: dict[str, DeploymentState] = {}
        # Bumped by every change worth saving (runs, counters, last outcomes), so the state
        # file is rewritten only when it would differ; a floor that merely moved up is not
        # one (an older, lower floor is safe).
        self.changes = 0

    def plan(self, deployment_id: str, now: float, lookback: float) -> SyncPlan:
        state = self.deployments.get(deployment_id)
        if state is None:
            return SyncPlan(True, frozenset(), frozenset(), now - lookback, None, False)
        cached = state.plan_cache
        if cached is not None and cached[0] == state.version:
            plan = cached[1]
            if plan.floor != state.floor:
                # the window moved on (every cycle): keep the moved plan for the next call
                plan = plan.with_floor(state.floor)
                state.plan_cache = (state.version, plan)
            return plan
        plan = self._plan(state)
        state.plan_cache = (state.version, plan)
        return plan

    def _plan(self, state: DeploymentState) -> SyncPlan:
        # A run awaiting its session has an immutable record: nothing to re-read by id.
        # One pass for the newest run and the runs in flight: this runs for every
        # deployment that changed, each cycle.
        in_flight: list[str] = []
        newest: float | None = None
        oldest: float | None = None
        sessions = state.sessions
        for rid, t in state.runs.items():
            created = t.created_at
            if newest is None or created > newest:
                newest = created
            if not t.accounted and rid not in sessions:
                in_flight.append(rid)
                if oldest is None or created < oldest:
                    oldest = created
        reach = 0
        if oldest is not None:
            reach = sum(1 for t in state.runs.values() if t.created_at >= oldest)
        return SyncPlan(
            initial=False,
            known=frozenset(state.runs),
            in_flight=frozenset(in_flight),
            floor=state.floor,
            watermark=newest,
            has_success=state.last_success is not None,
            reach=reach,
            awaiting=frozenset(state.sessions) if state.sessions else frozenset(),
        )

    def apply(
        self,
        deployment_id: str,
        runs: Iterable[Run],
        now: float,
        lookback: float,
        *,
        history: bool,
        vanished: Iterable[str] = (),
        counted_since: float | None = None,
        max_retries: int | None = None,
    ) -> ApplyResult:
        """Fold one poll's sightings of a deployment's runs into its state.

        With history=True (the first sync of a deployment) runs already terminal are taken
        as history, not counted: a restart must not replay the window into increase(). Runs
        that finished after counted_since (when the exporter started) are counted even
        then: the first sync may come late, after the API was unreachable at start.
        max_retries is the deployment's: a failed run with attempt <= it will be retried.
        Runs are folded in creation order, so the failure streak follows the feed.
        """
        before = self.changes
        state = self.deployments.get(deployment_id)
        if state is not None and not runs and not vanished:
            # Most deployments show nothing new in a quiet cycle: only the window moves.
            self.expire(deployment_id, now, lookback)
            return ApplyResult(0, 0, 0)
        if state is None:
            state = self.deployments[deployment_id] = DeploymentState(floor=now - lookback)
            self.changes += 1
        counted = new_in_flight = updated = 0
        merged = sorted(merge_duplicates(runs).values(), key=lambda r: (r.created_at, r.id))
        for run in merged:
            if run.deployment_id != deployment_id:
                continue
            self._note_outcome(state, run)
            tracked = state.runs.get(run.id)
            if tracked is None:
                if run.session_id is not None and run.created_at < state.floor:
                    # An awaited run's record never changes: below the floor it was dealt
                    # with (resolved and evicted, or older than the window at first sync).
                    continue
                if run.status in IN_FLIGHT:
                    # Never-seen in-flight runs are new whatever their age: nothing is
                    # evicted before it is accounted, so this run cannot be a repeat.
                    state.runs[run.id] = Tracked(run.created_at, run.status, False)
                    if run.session_id is not None:
                        state.sessions[run.id] = PendingSession(
                            run.session_id, run.trigger, history
                        )
                        if not state.reasons:  # labelled counters start at 0
                            state.reasons = dict.fromkeys(REASONS, 0)
                    new_in_flight += 1
                elif run.created_at >= state.floor:
                    if not history or _finished_since(run, counted_since):
                        self._count(state, run, max_retries)
                        counted += 1
                    _fold_streak(state, run, max_retries)
                    state.runs[run.id] = Tracked(run.created_at, run.status, True)
                    state.low = min(state.low, run.created_at)
                    updated += 1
                # else: below the floor, so already counted and evicted, or history.
            elif not tracked.accounted and tracked.status != run.status:
                tracked.status = run.status
                updated += 1
                if run.terminal:
                    tracked.accounted = True
                    state.sessions.pop(run.id, None)
                    state.low = min(state.low, tracked.created_at)
                    self._count(state, run, max_retries)
                    _fold_streak(state, run, max_retries)
                    counted += 1
            # An accounted run never changes: a regressed status is an API glitch.
        gone = 0
        for run_id in vanished:
            tracked = state.runs.get(run_id)
            if tracked is not None and not tracked.accounted:
                del state.runs[run_id]
                state.sessions.pop(run_id, None)
                gone += 1
        self.changes += new_in_flight + updated + gone
        self.expire(deployment_id, now, lookback)
        if self.changes != before:
            state.version += 1
        return ApplyResult(counted, new_in_flight, gone)

    def resolve(
        self,
        deployment_id: str,
        run_id: str,
        res: Resolution,
        *,
        counted_since: float | None = None,
        max_retries: int | None = None,
    ) -> bool:
        """Account a run awaiting its session, once; False if it is not awaited (any more).

        A run first seen on the deployment's first sync whose session ended before
        counted_since is history, as in apply.
        """
        state = self.deployments.get(deployment_id)
        pending = state.sessions.pop(run_id, None) if state is not None else None
        if state is None or pending is None:
            return False
        tracked = state.runs.get(run_id)
        self.changes += 1
        state.version += 1  # cached views and plans of this deployment are stale now
        if tracked is None or tracked.accounted:
            return False
        run = Run(
            id=run_id,
            deployment_id=deployment_id,
            created_at=tracked.created_at,
            status=res.status,
            completed_at=res.finished_at,
            duration_s=res.duration_s,
            trigger=pending.trigger,
        )
        self._note_outcome(state, run)
        tracked.status, tracked.accounted = run.status, True
        state.low = min(state.low, tracked.created_at)  # so expire() sees it to evict
        if not pending.history or _finished_since(run, counted_since):
            self._count(state, run, max_retries, res.reason)
            for kind, n in res.tokens:
                state.tokens[kind] = state.tokens.get(kind, 0) + n
            if res.tokens:  # a credits-only usage observes nothing: absent, not zero
                if state.session_tokens is None:
                    state.session_tokens = Histogram([0] * (len(SESSION_TOKEN_BUCKETS) + 1))
                state.session_tokens.observe(SESSION_TOKEN_BUCKETS, sum(n for _, n in res.tokens))
            if res.credits is not None:
                state.credits = (state.credits or 0.0) + res.credits
            if res.list_cost_usd is not None:
                state.list_cost_usd = (state.list_cost_usd or 0.0) + res.list_cost_usd
        _fold_streak(state, run, max_retries)
        return True

    def awaiting(self) -> dict[str, list[tuple[str, str, float]]]:
        """Per deployment, the runs awaiting their sessions: (run id, session id, created)."""
        out: dict[str, list[tuple[str, str, float]]] = {}
        for dep_id, st in self.deployments.items():
            for run_id, p in st.sessions.items():
                tracked = st.runs.get(run_id)
                if tracked is not None:
                    out.setdefault(dep_id, []).append((run_id, p.session_id, tracked.created_at))
        return out

    def expire(self, deployment_id: str, now: float, lookback: float) -> None:
        """Drop accounted runs older than the window; the floor never moves back."""
        self._expire(self.deployments[deployment_id], now - lookback)

    def quiet(
        self,
        deployment_ids: Iterable[str],
        now: float,
        lookback: Callable[[str], float],
        info: Callable[[str], Deployment | None],
    ) -> None:
        """apply() with no runs, then note_schedule(), for each of these deployments: their
        windows move on. One pass, for the thousands a quiet cycle has. The feed plans only
        deployments the store knows; one it does not (none today) is left to its next
        sync, which creates its state as apply() does."""
        deployments = self.deployments
        for dep_id in deployment_ids:
            state = deployments.get(dep_id)
            if state is None:
                continue
            self._expire(state, now - lookback(dep_id))
            self._note_schedule(state, info(dep_id))

    def _expire(self, state: DeploymentState, floor: float) -> None:
        if floor > state.floor:
            state.floor = floor
        if state.low >= state.floor:
            return  # no accounted run is below the floor
        old = [rid for rid, t in state.runs.items() if t.accounted and t.created_at < state.floor]
        for rid in old:
            del state.runs[rid]
        state.low = min(
            (t.created_at for t in state.runs.values() if t.accounted), default=float("inf")
        )
        if old:
            self.changes += len(old)
            state.version += 1

    def rebucket(self, buckets: tuple[float, ...]) -> None:
        """New histogram bounds: old counts cannot be re-binned, so histograms restart."""
        self.buckets = tuple(sorted(buckets))
        for st in self.deployments.values():
            st.durations.clear()
            st.version += 1
        self.changes += 1

    def drop(self, deployment_id: str) -> None:
        if self.deployments.pop(deployment_id, None) is not None:
            self.changes += 1

    def recent(self, deployment_id: str, now: float, lookback: float) -> dict[str, int]:
        """Tracked runs created within the lookback window, by current status."""
        return self.recent_until(deployment_id, now, lookback)[0]

    def recent_until(
        self, deployment_id: str, now: float, lookback: float
    ) -> tuple[dict[str, int], float]:
        """recent(), and until when it holds while the deployment's state stays put: the
        time its oldest run in the window leaves it (inf: never)."""
        counts = dict.fromkeys(STATUSES, 0)
        oldest = float("inf")
        state = self.deployments.get(deployment_id)
        if state is not None:
            cutoff = now - lookback
            for t in state.runs.values():
                created = t.created_at
                if created >= cutoff:
                    counts[t.status] += 1
                    if created < oldest:  # not min(): a call per run of every changed view
                        oldest = created
        return counts, oldest + lookback

    def oldest_in_flight(self, deployment_id: str) -> dict[str, float]:
        """Creation time of the oldest pending and running run."""
        out: dict[str, float] = {}
        state = self.deployments.get(deployment_id)
        if state is not None:
            for t in state.runs.values():
                if not t.accounted and t.created_at < out.get(t.status, float("inf")):
                    out[t.status] = t.created_at
        return out

    def size(self) -> int:
        return sum(len(s.runs) for s in self.deployments.values())

    def note_schedule(self, deployment_id: str, info: Deployment | None) -> None:
        """Remember the trigger times the deployment's metadata announces.

        Called after each sync of the deployment (before the state is saved). Manual,
        paused and archived deployments are not expected to run: their memory is cleared,
        so a slot announced before a pause cannot count as missed once resumed.
        """
        state = self.deployments.get(deployment_id)
        if state is not None:
            self._note_schedule(state, info)

    def _note_schedule(self, state: DeploymentState, info: Deployment | None) -> None:
        if info is None:
            return
        if state.schedule_seen is not None and state.schedule_seen == (info, state.last_run):
            # the same metadata object and the same newest run: the same answer as last time
            return
        state.schedule_seen = (info, state.last_run)
        kept: list[float] = []
        if _expected_to_run(info):
            fresh = list(info.upcoming_runs_at)
            if info.next_trigger_at is not None:
                fresh.append(info.next_trigger_at)
            kept = remember_announced(state.announced, fresh, state.last_run)
        if kept != state.announced:
            state.announced = kept
            state.version += 1
            self.changes += 1

    def expected(self, deployment_id: str, info: Deployment | None) -> float | None:
        """The expected run time (see expected_run), None when not expected to run."""
        state = self.deployments.get(deployment_id)
        if state is None or info is None or not _expected_to_run(info):
            return None
        return expected_run(state.announced, state.last_run)

    def _note_outcome(self, state: DeploymentState, run: Run) -> None:
        if state.last_run is None or run.created_at > state.last_run:
            state.last_run = run.created_at
            self.changes += 1
        if run.status == "failed":
            failed = run.completed_at if run.completed_at is not None else run.created_at
            if state.last_failure is None or failed > state.last_failure:
                state.last_failure = failed
                self.changes += 1
        if run.status == "completed":
            finished = run.completed_at if run.completed_at is not None else run.created_at
            if state.last_success is None or finished > state.last_success:
                state.last_success = finished
                self.changes += 1
        if run.terminal:
            key = (run.created_at, run.id, run.status)
            if state.last_finished is None or key[:2] > state.last_finished[:2]:
                state.last_finished = key
                self.changes += 1

    def _count(
        self, state: DeploymentState, run: Run, max_retries: int | None, reason: str | None = None
    ) -> None:
        state.totals[run.status] += 1
        key = (run.status, trigger_label(run.trigger))
        state.by_trigger[key] = state.by_trigger.get(key, 0) + 1
        duration = run_duration(run)
        if duration is not None:
            hist = state.durations.get(run.status)
            if hist is None:
                hist = state.durations[run.status] = Histogram([0] * (len(self.buckets) + 1))
            hist.observe(self.buckets, duration)
        queued = queue_time(run)
        if queued is not None:
            if state.queue is None:
                state.queue = Histogram([0] * (len(QUEUE_BUCKETS) + 1))
            state.queue.observe(QUEUE_BUCKETS, queued)
        if run.status == "failed" and reason is not None:
            # A failure its session told: by reason, not by the run's (absent) error.type,
            # so errors and reasons together sum to the failed runs.
            state.reasons[reason] = state.reasons.get(reason, 0) + 1
        elif run.status == "failed":
            error = run_error_type(run.error_type)
            state.errors[error] = state.errors.get(error, 0) + 1
            if will_retry(run, max_retries):
                state.retried += 1


def run_duration(run: Run) -> float | None:
    """duration_ms, else for a failed run completed_at - started_at (the API's own formula)."""
    if run.duration_s is not None:
        return run.duration_s
    if run.status == "failed" and run.completed_at is not None and run.started_at is not None:
        span = run.completed_at - run.started_at
        return span if 0.0 <= span <= _MAX_SPAN_S else None
    return None


def queue_time(run: Run) -> float | None:
    """cas_run_extras.started_at - triggered_at, where the API gives both and it is sane."""
    if run.started_at is None or run.triggered_at is None:
        return None
    span = run.started_at - run.triggered_at
    if -1.0 <= span < 0.0:
        return 0.0  # the two clocks' rounding, not a run that started before its trigger
    return span if 0.0 <= span <= _MAX_SPAN_S else None


def will_retry(run: Run, max_retries: int | None) -> bool:
    """A failed run the API retries: attempt <= max_retries; unknown either way: final."""
    return (
        run.status == "failed"
        and run.attempt is not None
        and max_retries is not None
        and run.attempt <= max_retries
    )


def _fold_streak(state: DeploymentState, run: Run, max_retries: int | None) -> None:
    # Only accounted runs reach here, each once: a completion resets, a final failure adds,
    # a skipped run (the scheduler fired while one was running) leaves the streak alone.
    if run.status == "completed":
        state.consecutive = 0
    elif run.status == "failed" and not will_retry(run, max_retries):
        state.consecutive += 1


def _expected_to_run(info: Deployment) -> bool:
    return not (info.manual or info.archived or info.status == "paused")


def remember_announced(
    kept: list[float], fresh: Iterable[float], last_run: float | None
) -> list[float]:
    """The announced trigger times still unanswered by a run, the earliest MAX_ANNOUNCED."""
    answered = float("-inf") if last_run is None else last_run + TRIGGER_SLACK_S
    times = {t for t in kept if t > answered}
    times.update(t for t in fresh if t > answered)
    return sorted(times)[:MAX_ANNOUNCED]


def expected_run(announced: Iterable[float], last_run: float | None) -> float | None:
    """When the next run is due: the earliest announced time no run has answered yet.

    A time s is answered by a run created after s - TRIGGER_SLACK_S (fire jitter). While
    the scheduler keeps time this is a future time; once it stops firing, the value stays
    at the missed slot, so `time() - this > grace` is the missed-schedule alert.
    """
    answered = float("-inf") if last_run is None else last_run + TRIGGER_SLACK_S
    return min((t for t in announced if t > answered), default=None)


def _finished_since(run: Run, since: float | None) -> bool:
    if since is None:
        return False
    finished = run.completed_at if run.completed_at is not None else run.created_at
    return finished > since


def reached_known(runs: list[Run], plan: SyncPlan) -> bool:
    """True once paging has gone past what earlier cycles already read."""
    if any(r.created_at < plan.floor for r in runs):
        return True
    if plan.watermark is None:
        return False
    bound = plan.watermark - OVERLAP_S
    return any(r.id in plan.known and r.created_at <= bound for r in runs)


@dataclass(frozen=True, slots=True)
class Jump:
    """One page of the feed to read: the `limit` runs right after (older than) `after_id`."""

    after_id: str
    limit: int
    targets: tuple[str, ...]


# Runs a jump page reads beyond the last run it is meant to hold: our order of the feed can
# differ from the server's by runs we do not track (unlisted deployments, ties in time).
JUMP_SLACK = 5


def plan_jumps(
    order: list[str], targets: Iterable[str], limit: int
) -> tuple[list[Jump], list[str]]:
    """The fewest feed pages that hold `targets`, and the targets left to fetch by id.

    `order` is the feed as the store knows it, newest first. A page read with after_id=X
    holds the runs right after X, so a page that starts at a target's newer neighbour holds
    it and the older targets within `limit` runs; taking such pages greedily from the newest
    target is the fewest pages that hold them all (points covered by fixed-length intervals).
    A target alone in its page costs one request either way and is left to fetch by id (a
    smaller answer), as is one we cannot place.
    """
    pos = {rid: i for i, rid in enumerate(order)}
    wanted = list(targets)
    singles = [t for t in wanted if pos.get(t, 0) == 0]
    placed = sorted((pos[t], t) for t in wanted if pos.get(t, 0) > 0)
    jumps: list[Jump] = []
    i = 0
    while i < len(placed):
        first = placed[i][0]
        j = i + 1
        while j < len(placed) and placed[j][0] - first < limit:
            j += 1
        group = [t for _, t in placed[i:j]]
        if len(group) == 1:
            singles += group
        else:
            span = placed[j - 1][0] - first + 1
            jumps.append(Jump(order[first - 1], min(limit, span + JUMP_SLACK), tuple(group)))
        i = j
    return jumps, singles
