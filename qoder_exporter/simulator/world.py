"""The world model: deployments, their trigger streams and runs with fixed timelines."""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from typing import Any

from .paging import sort_key
from .stamps import INF, JSON, MS, NS, new_id, quantize, to_ns

STATUSES = ("pending", "running", "completed", "failed", "skipped")
TERMINAL = frozenset({"completed", "failed", "skipped"})
DEFAULT_ERROR_TYPES = ("unknown_error", "session_rate_limited_error", "environment_not_found_error")
STUCK_NS = 10 * 86400 * NS

_ERROR_MESSAGES = {
    "unknown_error": "An unexpected error occurred while creating the session",
    "session_rate_limited_error": "Session creation was rate limited; try again later",
    "environment_not_found_error": "environment {env} not found",
    "environment_archived_error": "environment {env} is archived",
    "agent_archived_error": "agent {agent} is archived",
}

_NAMES = (
    "daily-status-report",
    "pr-triage",
    "issue-labeler",
    "flaky-test-hunter",
    "docs-sync",
    "security-scan",
    "changelog-writer",
    "backlog-grooming",
    "ci-failure-digest",
    "license-check",
)


@dataclass
class DeploymentSpec:
    """How one simulated deployment behaves."""

    name: str
    interval_s: float | None = 600.0
    manual_rate_per_hour: float = 0.0
    failure_rate: float = 0.1
    pending_s: tuple[float, float] = (1.0, 10.0)
    duration_s: tuple[float, float] = (30.0, 300.0)
    max_concurrent: int = 1
    paused: bool = False
    paused_reason: dict[str, Any] | None = None
    stuck: bool = False
    succeeds_until: float | None = None
    error_types: tuple[str, ...] = DEFAULT_ERROR_TYPES
    # Extension: when paused, the unix time it was paused at (runs happen before it); None means
    # paused since creation.
    paused_at: float | None = None
    # Extension: weights of how this deployment's sessions end (sessions.SESSION_OUTCOMES);
    # None: the world's SessionOptions.weights.
    session_outcomes: dict[str, float] | None = None
    # Extension: where in its interval the schedule fires, as a cron minute does ("17 * * * *"
    # is an hourly interval at phase 17 min); 0 fires on the interval's multiples of the epoch.
    phase_s: float = 0.0


class Run:
    """One run whose whole timeline is fixed at creation; its status is derived from the time."""

    __slots__ = (
        "aux",
        "completed_ns",
        "created_ns",
        "dep",
        "error_type",
        "id",
        "outcome",
        "scheduled_ns",
        "started_ns",
        "trigger",
    )

    def __init__(
        self,
        run_id: str,
        dep: Deployment,
        created_ns: int,
        trigger: str,
        scheduled_ns: int | None,
    ) -> None:
        self.id = run_id
        self.dep = dep
        self.created_ns = created_ns
        self.trigger = trigger
        self.scheduled_ns = scheduled_ns
        self.started_ns: int | None = None
        self.completed_ns = created_ns
        self.outcome = "skipped"
        self.error_type: str | None = None
        self.aux = 0  # random bits for the session and turn ids, formatted only when rendered

    def status_at(self, now_ns: int) -> str:
        """Return the G1 status at now_ns."""
        if self.started_ns is None:
            return "skipped"
        if now_ns < self.started_ns:
            return "pending"
        if now_ns < self.completed_ns:
            return "running"
        return self.outcome

    def g2_status(self) -> str:
        """Return the G2 record outcome: completed (session created) or failed (error)."""
        return "completed" if self.outcome == "completed" else "failed"

    def duration_ms(self) -> int | None:
        """Return completed_at - started_at in whole ms (None for skipped runs)."""
        if self.started_ns is None:
            return None
        return (self.completed_ns - self.started_ns) // MS

    def session_id(self) -> str:
        """Return the id of the session this run created."""
        ms = (self.started_ns or self.created_ns) // MS
        return new_id("sess_", ms, self.aux & ((1 << 74) - 1))

    def turn_id(self) -> str:
        """Return the id of the first turn of the run's session."""
        ms = (self.started_ns or self.created_ns) // MS
        return new_id("turn_", ms + 5, self.aux >> 74)


class Deployment:
    """A deployment, its run history and the state of its trigger streams."""

    def __init__(
        self, index: int, spec: DeploymentSpec, created_ns: int, start_ns: int, seed: int
    ) -> None:
        self.index = index
        self.spec = spec
        self.rng = random.Random(f"{seed}:{index}")
        self.created_ns = created_ns
        self.start_ns = start_ns
        rng = self.rng
        self.id = new_id("dep_", created_ns // MS, rng.getrandbits(74))
        agent_ms = created_ns // MS - rng.randrange(86400_000, 30 * 86400_000)
        self.agent_id = new_id("agent_", agent_ms, rng.getrandbits(74))
        self.agent_version = rng.randint(1, 4)
        env_ms = agent_ms - rng.randrange(3600_000, 86400_000)
        self.environment_id = new_id("env_", env_ms, rng.getrandbits(74))
        self.runs: list[Run] = []
        self.in_flight: list[Run] = []  # not yet settled: pending or running at the settle time
        self.total_failures = 0
        self.consecutive_failures = 0
        self.last_success_ns: int | None = None
        self.last_scheduled_ns: int | None = None
        self.stuck_used = False
        self.last_event_ns = created_ns
        if spec.paused:
            self.end_ns = created_ns if spec.paused_at is None else to_ns(spec.paused_at)
        else:
            self.end_ns = INF
        until = spec.succeeds_until
        self.succeeds_until_ns = INF if until is None else to_ns(until)
        self.interval_ns = None if spec.interval_s is None else to_ns(spec.interval_s)
        # jitter stays far below the interval so scheduled runs keep their order
        self.jitter_ns = 0 if self.interval_ns is None else min(3 * NS, self.interval_ns // 10)
        self.phase_ns = 0 if self.interval_ns is None else to_ns(spec.phase_s) % self.interval_ns
        self.next_grid_ns = INF
        self.next_sched_ns = INF
        if self.interval_ns is not None:
            self.next_grid_ns = self.grid_after(created_ns)
            self.next_sched_ns = self._draw_sched()
        self.next_manual_ns = self._draw_manual(created_ns)

    def grid_after(self, ns: int) -> int:
        """The first schedule tick after ns (the interval's grid, shifted by the phase)."""
        assert self.interval_ns is not None
        return ((ns - self.phase_ns) // self.interval_ns + 1) * self.interval_ns + self.phase_ns

    def _stamp(self, ns: int) -> int:
        """Quantize a timestamp to a randomly chosen precision (0, 3, 6 or 9 digits)."""
        return quantize(ns, 3 * self.rng.getrandbits(2))

    def _draw_sched(self) -> int:
        """Return the actual time of the next scheduled fire (grid + jitter), or INF."""
        if self.next_grid_ns >= self.end_ns:
            self.next_grid_ns = INF
            return INF
        jitter = self.rng.randrange(self.jitter_ns + 1)
        return max(self._stamp(self.next_grid_ns + jitter), self.last_event_ns)

    def _draw_manual(self, after_ns: int) -> int:
        """Return the time of the next Poisson manual trigger after after_ns, or INF."""
        rate = self.spec.manual_rate_per_hour
        if rate <= 0:
            return INF
        t = after_ns + int(self.rng.expovariate(rate / 3600.0) * NS)
        t = max(self._stamp(t), after_ns)
        return t if t < self.end_ns else INF

    @property
    def next_due_ns(self) -> int:
        """Return when this deployment's next trigger event happens."""
        return min(self.next_sched_ns, self.next_manual_ns)

    def is_paused(self, now_ns: int) -> bool:
        """Return whether the deployment is paused at now_ns."""
        return self.spec.paused and now_ns >= self.end_ns

    def generate(self, until_ns: int) -> list[Run]:
        """Create, in time order, every triggered run up to until_ns; return the new runs."""
        new: list[Run] = []
        while True:
            t = self.next_due_ns
            if t > until_ns:
                return new
            scheduled_ns: int | None = None
            self.last_event_ns = t
            if self.next_sched_ns <= self.next_manual_ns:
                scheduled_ns = self.next_grid_ns
                assert self.interval_ns is not None
                self.next_grid_ns += self.interval_ns
                self.next_sched_ns = self._draw_sched()
                trigger = "schedule"
            else:
                self.next_manual_ns = self._draw_manual(t)
                trigger = "manual"
            # the stuck run is the last one triggered at or before the simulator's start (the
            # next trigger is already drawn, so we know); later deployments get their first one
            stuck = (
                self.spec.stuck
                and not self.stuck_used
                and (self.created_ns >= self.start_ns or t <= self.start_ns < self.next_due_ns)
            )
            new.append(self.create_run(t, trigger, scheduled_ns, stuck))

    def create_run(self, t: int, trigger: str, scheduled_ns: int | None, stuck: bool) -> Run:
        """Create one run triggered at t, deciding its whole timeline now."""
        self.settle(t)
        rng = self.rng
        spec = self.spec
        run = Run(new_id("drun_", t // MS, rng.getrandbits(74)), self, t, trigger, scheduled_ns)
        if trigger == "schedule":
            self.last_scheduled_ns = t
        if len(self.in_flight) >= spec.max_concurrent:
            # skipped runs are terminal at creation: no session, no start, no duration
            self._append(run)
            return run
        pending_ns = int(rng.uniform(*spec.pending_s) * NS)
        started = self._stamp(t + pending_ns)
        if started < t:
            started = t + pending_ns
        if stuck:
            self.stuck_used = True
            duration_ns = STUCK_NS
        else:
            duration_ns = int(rng.uniform(*spec.duration_s) * NS)
        completed = self._stamp(started + duration_ns)
        if completed <= started:
            completed = started + max(duration_ns, MS)
        failed = rng.random() < spec.failure_rate
        if t > self.succeeds_until_ns:
            failed = True
        run.started_ns = started
        run.completed_ns = completed
        run.outcome = "failed" if failed else "completed"
        if failed:
            run.error_type = rng.choice(spec.error_types) if spec.error_types else "unknown_error"
        run.aux = rng.getrandbits(148)
        self._append(run)
        self.in_flight.append(run)
        return run

    def _append(self, run: Run) -> None:
        """Add a run to the sorted history (almost always at the end)."""
        if not self.runs or sort_key(run) > sort_key(self.runs[-1]):
            self.runs.append(run)
        else:
            bisect.insort(self.runs, run, key=sort_key)

    def settle(self, now_ns: int) -> None:
        """Fold runs that finished by now_ns into the deployment's counters, in finish order."""
        if not self.in_flight or min(r.completed_ns for r in self.in_flight) > now_ns:
            return
        done = sorted(
            (r for r in self.in_flight if r.completed_ns <= now_ns),
            key=lambda r: (r.completed_ns, r.id),
        )
        self.in_flight = [r for r in self.in_flight if r.completed_ns > now_ns]
        for run in done:
            if run.outcome == "failed":
                self.total_failures += 1
                self.consecutive_failures += 1
            else:
                self.consecutive_failures = 0
                if self.last_success_ns is None or run.completed_ns > self.last_success_ns:
                    self.last_success_ns = run.completed_ns

    def error_json(self, error_type: str) -> JSON:
        """Return the {type, message} error object for a run error type."""
        fallback = error_type + ": the session could not be created"
        template = _ERROR_MESSAGES.get(error_type, fallback)
        return {
            "type": error_type,
            "message": template.format(env=self.environment_id, agent=self.agent_id),
        }

    def agent_json(self) -> JSON:
        """Return the agent reference object."""
        return {"id": self.agent_id, "type": "agent", "version": self.agent_version}


def default_specs(
    n: int, seed: int, start: float, demo: bool, history_s: float
) -> list[DeploymentSpec]:
    """Build n varied specs; with n >= 4 the first four cover the interesting cases."""
    rng = random.Random(f"{seed}:specs")
    if demo:
        intervals = (15.0, 20.0, 30.0, 45.0, 60.0)
        pending, duration = (0.5, 3.0), (3.0, 40.0)
    else:
        intervals = (300.0, 360.0, 600.0, 720.0, 900.0)
        pending, duration = (1.0, 10.0), (30.0, 300.0)
    specs: list[DeploymentSpec] = []
    if n >= 4:
        common: dict[str, Any] = {"pending_s": pending, "duration_s": duration}
        specs += [
            DeploymentSpec(
                "repo-indexer", rng.choice(intervals), failure_rate=0.05, stuck=True, **common
            ),
            # all-failing for days: the demo interval is slower so the history stays small
            DeploymentSpec(
                "dependency-audit",
                300.0 if demo else 600.0,
                failure_rate=0.1,
                succeeds_until=start - 3 * 86400,
                error_types=("environment_not_found_error",),
                **common,
            ),
            DeploymentSpec(
                "weekly-digest",
                rng.choice(intervals),
                paused=True,
                paused_at=start - history_s / 3,
                **common,
            ),
            DeploymentSpec(
                "release-notes",
                None,
                manual_rate_per_hour=30.0 if demo else 2.0,
                failure_rate=0.15,
                **common,
            ),
        ]
    for i in range(len(specs), n):
        k = i - (4 if n >= 4 else 0)
        name = _NAMES[k % len(_NAMES)]
        if k >= len(_NAMES):
            name += f"-{k // len(_NAMES) + 1}"
        interval = rng.choice(intervals)
        dur = duration
        if k % 4 == 3:
            # runs that sometimes outlast the interval, so max_concurrent produces skipped runs
            dur = (interval * 0.3, interval * 1.4)
        specs.append(
            DeploymentSpec(
                name,
                interval,
                manual_rate_per_hour=rng.choice((0.0, 0.0, 0.5, 1.0)) * (20 if demo else 1),
                failure_rate=rng.choice((0.02, 0.05, 0.1, 0.2, 0.35)),
                pending_s=pending,
                duration_s=dur,
                max_concurrent=rng.choice((1, 1, 1, 2)),
                error_types=DEFAULT_ERROR_TYPES
                + rng.choice(((), ("agent_archived_error",), ("environment_archived_error",))),
            )
        )
    return specs
