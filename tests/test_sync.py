"""Table-driven tests of the pure sync logic (RunStore) with plain lists of runs."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qoder_exporter import state as state_mod
from qoder_exporter.models import Deployment, Run
from qoder_exporter.sync import (
    JUMP_SLACK,
    MAX_ANNOUNCED,
    SESSION_TOKEN_BUCKETS,
    Jump,
    Resolution,
    RunStore,
    SyncPlan,
    expected_run,
    plan_jumps,
    reached_known,
    remember_announced,
)

DEP = "dep_a"
H = 3600.0
LOOKBACK = 24 * H
T0 = 1_800_000_000.0


def run(
    rid: str,
    created: float,
    status: str,
    *,
    duration: float | None = None,
    completed: float | None = None,
    error: str | None = None,
    dep: str = DEP,
) -> Run:
    if status in ("completed", "failed") and completed is None:
        completed = created + (duration or 0.0)
    return Run(
        id=rid,
        deployment_id=dep,
        created_at=created,
        status=status,
        completed_at=completed,
        duration_s=duration,
        error_type=error if status == "failed" else None,
    )


def store() -> RunStore:
    return RunStore((10.0, 60.0, 600.0))


def poll(s: RunStore, now: float, runs: list[Run], *, vanished: tuple[str, ...] = ()) -> int:
    history = DEP not in s.deployments
    return s.apply(DEP, runs, now, LOOKBACK, history=history, vanished=vanished).counted


# Each case: a list of polls (time offset, runs seen), then the expected totals.
CASES = {
    "history is not counted": (
        [(0, [run("r1", -H, "completed", duration=5), run("r2", -2 * H, "failed", duration=7)])],
        {"completed": 0, "failed": 0, "skipped": 0},
    ),
    "in flight at start, finishes later": (
        [
            (0, [run("r1", -60, "running")]),
            (60, [run("r1", -60, "completed", duration=50)]),
        ],
        {"completed": 1, "failed": 0, "skipped": 0},
    ),
    "pending to running to failed": (
        [
            (0, []),
            (60, [run("r1", 30, "pending")]),
            (120, [run("r1", 30, "running")]),
            (180, [run("r1", 30, "failed", duration=100, error="unknown_error")]),
            (240, [run("r1", 30, "failed", duration=100, error="unknown_error")]),
        ],
        {"completed": 0, "failed": 1, "skipped": 0},
    ),
    "new runs already finished are counted": (
        [
            (0, [run("r0", -H, "completed", duration=3)]),
            (60, [run("r1", 10, "completed", duration=20), run("r2", 20, "skipped")]),
        ],
        {"completed": 1, "failed": 0, "skipped": 1},
    ),
    "duplicate pages count once": (
        [
            (0, []),
            (60, [run("r1", 10, "completed", duration=20)] * 3),
            (120, [run("r1", 10, "completed", duration=20)]),
        ],
        {"completed": 1, "failed": 0, "skipped": 0},
    ),
    "overlapping sightings keep the most advanced status": (
        [
            (0, []),
            (60, [run("r1", 10, "running"), run("r1", 10, "completed", duration=20)]),
        ],
        {"completed": 1, "failed": 0, "skipped": 0},
    ),
    "a status regression is ignored": (
        [
            (0, []),
            (60, [run("r1", 10, "completed", duration=20)]),
            (120, [run("r1", 10, "running")]),
            (180, [run("r1", 10, "completed", duration=20)]),
        ],
        {"completed": 1, "failed": 0, "skipped": 0},
    ),
    "finished while the API was unreachable": (
        # polls at 60..300 failed (nothing applied); the run is seen again at 360
        [
            (0, [run("r1", -10, "running")]),
            (360, [run("r1", -10, "completed", duration=200)]),
        ],
        {"completed": 1, "failed": 0, "skipped": 0},
    ),
    "a run older than the window still in flight is counted when it ends": (
        [
            (0, [run("stuck", -30 * H, "running")]),
            (2 * H, [run("stuck", -30 * H, "completed", duration=32 * H)]),
        ],
        {"completed": 1, "failed": 0, "skipped": 0},
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_exactly_once(name: str) -> None:
    polls, expected = CASES[name]
    s = store()
    for offset, runs in polls:
        poll(s, T0 + offset, [_shift(r) for r in runs])
    assert s.deployments[DEP].totals == expected


def _shift(r: Run) -> Run:
    return Run(
        id=r.id,
        deployment_id=r.deployment_id,
        created_at=T0 + r.created_at,
        status=r.status,
        completed_at=None if r.completed_at is None else T0 + r.completed_at,
        duration_s=r.duration_s,
        error_type=r.error_type,
    )


def at(rid: str, offset: float, status: str, **kw: float) -> Run:
    return _shift(run(rid, offset, status, **kw))  # type: ignore[arg-type]


def test_histogram_and_errors_observed_once() -> None:
    s = store()
    poll(s, T0, [])
    poll(
        s, T0 + 60, [at("r1", 10, "completed", duration=5), at("r2", 20, "completed", duration=61)]
    )
    poll(
        s,
        T0 + 120,
        [
            at("r1", 10, "completed", duration=5),
            _failed("r3", 30, "agent_archived_error"),
            _failed("r4", 40, "x_error"),  # not a documented type: bounded to "other"
        ],
    )
    state = s.deployments[DEP]
    hist = state.durations["completed"]
    assert hist.cumulative() == [1, 1, 2, 2]  # le=10, 60, 600, +Inf
    assert hist.total == pytest.approx(66.0)
    assert state.errors == {"agent_archived_error": 1, "other": 1}
    assert state.durations["failed"].cumulative() == [0, 2, 2, 2]


def _failed(rid: str, offset: float, error: str) -> Run:
    return _shift(run(rid, offset, "failed", duration=30, error=error))


def test_bucket_boundary_is_inclusive() -> None:
    s = store()
    poll(s, T0, [])
    poll(s, T0 + 60, [at("r1", 10, "completed", duration=10.0)])
    assert s.deployments[DEP].durations["completed"].cumulative() == [1, 1, 1, 1]


def test_recent_window_by_status() -> None:
    s = store()
    runs = [
        at("old", -25 * H, "completed", duration=1),
        at("edge", -24 * H, "failed", duration=1),
        at("r1", -H, "completed", duration=1),
        at("r2", -60, "running"),
        at("r3", -5, "pending"),
    ]
    poll(s, T0, runs)
    assert s.recent(DEP, T0, LOOKBACK) == {
        "pending": 1,
        "running": 1,
        "completed": 1,
        "failed": 1,
        "skipped": 0,
    }
    # The window slides: an hour later the edge run is out.
    assert s.recent(DEP, T0 + H, LOOKBACK)["failed"] == 0


def test_last_success_survives_eviction_and_comes_from_history() -> None:
    s = store()
    poll(s, T0, [at("ancient", -5 * 24 * H, "completed", duration=3)])
    state = s.deployments[DEP]
    assert state.last_success == pytest.approx(T0 - 5 * 24 * H + 3)
    assert "ancient" not in state.runs  # older than the window: not held
    assert state.totals["completed"] == 0


def test_last_run_status_is_newest_finished() -> None:
    s = store()
    poll(s, T0, [at("a", -100, "completed", duration=1), at("b", -50, "failed", duration=1)])
    assert s.deployments[DEP].last_finished is not None
    assert s.deployments[DEP].last_finished[2] == "failed"
    poll(s, T0 + 60, [at("c", 10, "running")])  # in flight does not change it
    assert s.deployments[DEP].last_finished[2] == "failed"


def test_evicted_runs_seen_again_are_not_recounted() -> None:
    s = store()
    poll(s, T0, [])
    poll(s, T0 + 60, [at("r1", 10, "completed", duration=1)])
    poll(s, T0 + 25 * H, [])  # r1 leaves the window
    assert "r1" not in s.deployments[DEP].runs
    poll(s, T0 + 25 * H + 60, [at("r1", 10, "completed", duration=1)])  # overlap page
    assert s.deployments[DEP].totals["completed"] == 1


def test_resolved_session_run_seen_again_below_the_floor_is_not_recounted() -> None:
    """A record-only run's record never changes: after it was resolved and evicted, a page
    that shows it again must not make it awaited (and counted) a second time."""
    s = store()
    poll(s, T0, [])
    record = dataclasses.replace(at("r1", 10, "running"), session_id="sess_1", has_status=False)
    poll(s, T0 + 60, [record])
    assert s.resolve(DEP, "r1", Resolution("completed", None, T0 + 100, 90.0))
    assert not s.resolve(DEP, "r1", Resolution("completed", None, T0 + 100, 90.0))
    poll(s, T0 + 25 * H, [])  # r1 leaves the window
    assert "r1" not in s.deployments[DEP].runs
    poll(s, T0 + 25 * H + 60, [record])  # a page deep enough to show it again
    assert "r1" not in s.deployments[DEP].sessions
    assert s.deployments[DEP].totals["completed"] == 1


def test_tokens_per_run_observed_once_and_absent_without_tokens() -> None:
    """One observation per resolved run whose usage gives tokens (the kinds' sum); a
    credits-only usage observes nothing, so the histogram stays absent; a second resolve of
    the same run adds nothing. It survives the state file; a version 3 file reads as absent."""
    s = store()
    poll(s, T0, [])
    records = [
        dataclasses.replace(at(rid, 10 + i, "running"), session_id=f"s_{rid}", has_status=False)
        for i, rid in enumerate(("r1", "r2", "r3"))
    ]
    poll(s, T0 + 60, records)
    st = s.deployments[DEP]
    credits_only = Resolution("completed", None, T0 + 100, 90.0, (), 2.5)
    assert s.resolve(DEP, "r1", credits_only)
    assert st.session_tokens is None and st.credits == 2.5
    big = Resolution("completed", None, T0 + 100, 90.0, (("input", 2_000_000), ("output", 5)))
    assert s.resolve(DEP, "r2", big)
    assert not s.resolve(DEP, "r2", big)
    assert s.resolve(DEP, "r3", Resolution("failed", "unknown", T0 + 100, None, (("input", 0),)))
    hist = st.session_tokens
    assert hist is not None
    assert SESSION_TOKEN_BUCKETS[7] == 3e6  # 2,000,005 falls in (1e6, 3e6]
    assert hist.cumulative() == [1] * 7 + [2] * 5 and hist.total == 2_000_005
    doc = json.loads(json.dumps(state_mod.dump(s, "u")))
    copy = store()
    state_mod.restore(doc, copy, "u", now=T0 + H)
    assert copy.deployments[DEP].session_tokens == hist
    v3 = {**doc, "version": 3}
    copy = store()
    state_mod.restore(v3, copy, "u", now=T0 + H)
    assert copy.deployments[DEP].session_tokens is None
    for bad in ({"counts": [1] * 3, "sum": 1.0}, {"counts": [-1] * 12, "sum": 1}, "x"):
        doc["deployments"][DEP]["session_tokens"] = bad
        with pytest.raises(state_mod.StateError, match="malformed state"):
            state_mod.restore(doc, store(), "u", now=T0 + H)


def test_clock_jump_back_does_not_lower_the_floor() -> None:
    s = store()
    poll(s, T0, [])
    poll(s, T0 + 60, [at("r1", 10, "completed", duration=1)])
    poll(s, T0 + 25 * H, [])
    floor = s.deployments[DEP].floor
    poll(s, T0 + 60, [at("r1", 10, "completed", duration=1)])  # clock went back a day
    assert s.deployments[DEP].floor == floor
    assert s.deployments[DEP].totals["completed"] == 1


def test_vanished_in_flight_run_is_dropped_uncounted() -> None:
    s = store()
    poll(s, T0, [at("r1", -10, "running")])
    poll(s, T0 + 60, [], vanished=("r1",))
    assert "r1" not in s.deployments[DEP].runs
    assert s.deployments[DEP].totals["completed"] == 0


def test_runs_of_other_deployments_are_ignored() -> None:
    s = store()
    poll(s, T0, [])
    poll(s, T0 + 60, [_shift(run("x", 10, "completed", duration=1, dep="dep_other"))])
    assert s.deployments[DEP].totals["completed"] == 0


def test_state_is_bounded_by_window_plus_in_flight() -> None:
    s = store()
    poll(s, T0, [])
    n = 0
    for minute in range(1, 3 * 24 * 60):  # three days, one run a minute
        now = T0 + minute * 60
        poll(s, now, [at(f"r{minute}", minute * 60 - 30, "completed", duration=5)])
        n += 1
        assert len(s.deployments[DEP].runs) <= 24 * 60 + 1
    assert s.deployments[DEP].totals["completed"] == n


def test_plan_freezes_what_workers_need() -> None:
    s = store()
    assert s.plan(DEP, T0, LOOKBACK).initial
    poll(s, T0, [at("a", -60, "running"), at("b", -30, "completed", duration=1)])
    plan = s.plan(DEP, T0 + 60, LOOKBACK)
    assert not plan.initial
    assert plan.known == {"a", "b"}
    assert plan.in_flight == {"a"}
    assert plan.watermark == pytest.approx(T0 - 30)
    assert plan.reach == 2  # "a" in flight, and "b" newer than it


def test_plan_reach_is_how_deep_the_in_flight_runs_lie() -> None:
    s = store()
    runs = [at(f"r{i}", -600 + i * 60, "completed", duration=1) for i in range(8)]
    poll(s, T0, [*runs, at("slow", -500, "running")])
    assert s.plan(DEP, T0 + 60, LOOKBACK).reach == 7  # "slow" and the 6 created after it
    poll(s, T0 + 60, [at("slow", -500, "completed", duration=400)])
    assert s.plan(DEP, T0 + 120, LOOKBACK).reach == 0  # nothing in flight


@pytest.mark.parametrize(
    ("runs", "expected"),
    [
        ([], False),
        ([at("new", 100, "pending")], False),
        ([at("new", 100, "pending"), at("known", 50, "completed")], True),
        # the newest known run shares the watermark: keep reading past it (tie-break margin)
        ([at("new", 100, "pending"), at("top", 98, "completed")], False),
        ([at("older", -25 * H, "completed")], True),  # below the floor
    ],
)
def test_paging_stops_once_past_known_runs(runs: list[Run], expected: bool) -> None:
    plan = SyncPlan(
        initial=False,
        known=frozenset({"known", "top"}),
        in_flight=frozenset(),
        floor=T0 - LOOKBACK,
        watermark=T0 + 98,
        has_success=True,
    )
    assert reached_known(runs, plan) is expected


# --- plan_jumps: which feed pages to read for runs scattered down the feed ----------------

FEED = [f"r{i:03d}" for i in range(300)]  # newest first, as the feed lists them


def test_jumps_group_targets_within_a_page_and_start_at_the_newer_neighbour() -> None:
    jumps, singles = plan_jumps(FEED, ["r010", "r050", "r108", "r200", "r210"], 100)
    assert jumps == [
        Jump("r009", 100, ("r010", "r050", "r108")),  # 99 + slack, capped
        Jump("r199", 11 + JUMP_SLACK, ("r200", "r210")),
    ]
    assert singles == []


def test_a_target_alone_in_its_page_or_unplaceable_is_fetched_by_id() -> None:
    # r000 has no newer neighbour to jump from; "gone" is not in the store's order.
    jumps, singles = plan_jumps(FEED, ["r000", "gone", "r150", "r290", "r295"], 100)
    assert jumps == [Jump("r289", 6 + JUMP_SLACK, ("r290", "r295"))]
    assert sorted(singles) == ["gone", "r000", "r150"]


def test_a_jump_never_reads_more_than_the_page_limit() -> None:
    jumps, _ = plan_jumps(FEED, ["r001", "r099", "r100"], 100)
    assert jumps == [Jump("r000", 100, ("r001", "r099", "r100"))]


@given(st.sets(st.integers(0, 299), max_size=60), st.sampled_from([2, 10, 100]))
def test_jumps_cover_every_target_once_with_the_fewest_requests(
    picked: set[int], limit: int
) -> None:
    targets = [FEED[i] for i in picked]
    jumps, singles = plan_jumps(FEED, targets, limit)
    covered = [t for j in jumps for t in j.targets] + singles
    assert sorted(covered) == sorted(targets)
    for jump in jumps:
        start = FEED.index(jump.after_id) + 1
        assert jump.limit <= limit
        assert all(start <= FEED.index(t) < start + jump.limit for t in jump.targets)
    # As few requests as any set of pages of `limit` runs (r000 needs its own request):
    # count the pages a left-to-right sweep needs.
    pages, end = 0, -1
    for i in sorted(picked - {0}):
        if i > end:
            pages, end = pages + 1, i + limit - 1
    assert len(jumps) + len(singles) == pages + (0 in picked)


# --- issue 13: triggers, retries, failure streaks, schedule adherence -----------------


def ext(
    rid: str,
    offset: float,
    status: str,
    *,
    trigger: str | None = "schedule",
    attempt: int | None = None,
    started: float | None = None,
    triggered: float | None = None,
    duration: float | None = None,
    completed: float | None = None,
    error: str | None = None,
) -> Run:
    created = T0 + offset
    if status in ("completed", "failed") and completed is None:
        completed = created + 30
    return Run(
        id=rid,
        deployment_id=DEP,
        created_at=created,
        status=status,
        completed_at=None if completed is None else completed,
        duration_s=duration,
        started_at=None if started is None else T0 + started,
        error_type=error or ("unknown_error" if status == "failed" else None),
        trigger=trigger,
        attempt=attempt,
        triggered_at=None if triggered is None else T0 + triggered,
    )


def test_finished_runs_are_counted_by_bounded_trigger() -> None:
    s = store()
    poll(s, T0, [])
    poll(
        s,
        T0 + 60,
        [
            ext("a", 1, "completed", trigger="schedule"),
            ext("b", 2, "failed", trigger="retry"),
            ext("c", 3, "skipped", trigger="manual"),
            ext("d", 4, "completed", trigger="webhook"),
            ext("e", 5, "completed", trigger=None),
            ext("f", 6, "running", trigger="schedule"),
        ],
    )
    state = s.deployments[DEP]
    assert state.by_trigger == {
        ("completed", "schedule"): 1,
        ("failed", "retry"): 1,
        ("skipped", "manual"): 1,
        ("completed", "other"): 2,
    }
    assert state.totals == {"completed": 3, "failed": 1, "skipped": 1}


@pytest.mark.parametrize(
    ("attempt", "max_retries", "retried"),
    [(1, 2, True), (2, 2, True), (3, 2, False), (1, 0, False), (None, 2, False), (1, None, False)],
)
def test_retried_failures_are_those_the_api_will_retry(
    attempt: int | None, max_retries: int | None, retried: bool
) -> None:
    s = store()
    s.apply(DEP, [], T0, LOOKBACK, history=True)
    s.apply(
        DEP,
        [ext("f", 10, "failed", attempt=attempt)],
        T0 + 60,
        LOOKBACK,
        history=False,
        max_retries=max_retries,
    )
    state = s.deployments[DEP]
    assert state.totals["failed"] == 1
    assert state.retried == int(retried)
    assert state.consecutive == int(not retried)  # a retried failure is not final


def test_consecutive_failures_follow_creation_order_and_reset_on_success() -> None:
    s = store()
    poll(s, T0, [])
    # One page, newest first as the API sends it: folded oldest first.
    page = [
        ext("r4", 40, "failed"),
        ext("r3", 30, "skipped"),  # the scheduler fired during r2: no change
        ext("r2", 20, "failed"),
        ext("r1", 10, "completed"),
    ]
    poll(s, T0 + 60, page)
    assert s.deployments[DEP].consecutive == 2
    poll(s, T0 + 120, [ext("r5", 70, "failed")])
    assert s.deployments[DEP].consecutive == 3
    poll(s, T0 + 180, [ext("r5", 70, "failed"), ext("r6", 130, "completed")])
    assert s.deployments[DEP].consecutive == 0


def test_consecutive_failures_come_from_the_first_syncs_history() -> None:
    s = store()
    history = [ext("h1", -3 * H, "completed"), ext("h2", -2 * H, "failed"), ext("h3", -H, "failed")]
    poll(s, T0, history)
    state = s.deployments[DEP]
    assert state.totals["failed"] == 0  # history is not counted ...
    assert state.consecutive == 2  # ... but the streak is computed from it
    poll(s, T0 + 60, history)  # seen again: not folded twice
    assert state.consecutive == 2


def test_in_flight_run_counts_in_the_streak_when_it_finishes() -> None:
    s = store()
    poll(s, T0, [ext("a", -100, "failed"), ext("b", -50, "running")])
    assert s.deployments[DEP].consecutive == 1
    poll(s, T0 + 60, [ext("b", -50, "failed")])
    assert s.deployments[DEP].consecutive == 2


def test_last_run_and_last_failure_times() -> None:
    s = store()
    poll(s, T0, [ext("old", -5 * 24 * H, "failed", completed=T0 - 5 * 24 * H + 9)])
    state = s.deployments[DEP]
    assert state.last_run == T0 - 5 * 24 * H  # history, even beyond the window
    assert state.last_failure == T0 - 5 * 24 * H + 9
    poll(s, T0 + 60, [ext("p", 30, "pending")])
    assert state.last_run == T0 + 30  # any status
    poll(s, T0 + 120, [ext("f", 40, "failed", completed=None, trigger="manual")])
    assert state.last_failure == T0 + 40 + 30
    g2 = ext("g2", 100, "failed")
    poll(s, T0 + 180, [Run(g2.id, DEP, g2.created_at, "failed", error_type="unknown_error")])
    assert state.last_failure == T0 + 100  # no completed_at: created_at


def test_queue_time_observed_once_where_the_api_gives_both() -> None:
    s = store()
    poll(s, T0, [])
    runs = [
        ext("a", 10, "completed", triggered=10, started=13),  # 3 s
        ext("b", 20, "completed", triggered=20, started=19.5),  # rounding: 0 s
        ext("c", 30, "completed", triggered=30, started=None),  # no start: not observed
        ext("d", 40, "failed", triggered=40, started=-5000),  # nonsense: not observed
        ext("e", 50, "running", triggered=50, started=52),  # not finished yet
    ]
    poll(s, T0 + 60, runs)
    poll(s, T0 + 120, runs)  # seen again: observed once
    queue = s.deployments[DEP].queue
    assert queue is not None
    assert queue.cumulative()[:2] == [1, 2]  # le=1, le=5
    assert queue.cumulative()[-1] == 2
    assert queue.total == pytest.approx(3.0)


def test_failed_run_without_duration_uses_completed_minus_started() -> None:
    s = store()
    poll(s, T0, [])
    runs = [
        ext("f1", 10, "failed", started=11, completed=T0 + 41),  # 30 s
        ext("f2", 20, "failed", started=None),  # no start: not observed
        ext("c1", 30, "completed", started=31, completed=T0 + 35),  # completed: duration_ms only
    ]
    poll(s, T0 + 60, runs)
    state = s.deployments[DEP]
    assert state.durations["failed"].cumulative() == [0, 1, 1, 1]
    assert state.durations["failed"].total == pytest.approx(30.0)
    assert "completed" not in state.durations


M = 60.0


@pytest.mark.parametrize(
    ("announced", "last_run", "expected"),
    [
        ([], None, None),
        ([T0 + H], None, T0 + H),
        ([T0, T0 + H], T0 - 1, T0 + H),  # T0 answered by a run a second early
        ([T0, T0 + H], T0 - M, T0 + H),  # exactly the slack: answered
        ([T0, T0 + H], T0 - M - 1, T0),  # the run came too early: T0 still expected
        ([T0, T0 + H], T0 + H + 5, None),  # all answered, nothing new announced
        ([T0 + 2 * H, T0, T0 + H], T0 - 10 * H, T0),  # any order: the earliest
    ],
)
def test_expected_run(
    announced: list[float], last_run: float | None, expected: float | None
) -> None:
    assert expected_run(announced, last_run) == expected


def test_remembered_trigger_times_are_bounded_and_drop_answered_ones() -> None:
    kept = remember_announced([T0, T0 + H], [T0 + k * H for k in range(1, 30)], T0 + 10)
    assert kept == [T0 + k * H for k in range(1, MAX_ANNOUNCED + 1)]


def _dep(**kw: object) -> Deployment:
    base: dict[str, object] = {
        "id": DEP,
        "name": "n",
        "status": "active",
        "agent_id": "a",
        "schedule": "0 * * * * (UTC)",
    }
    return Deployment(**{**base, **kw})  # type: ignore[arg-type]


def note(s: RunStore, dep_id: str, info: Deployment) -> float | None:
    """What a poll does: note the metadata after the sync, read the value at snapshot."""
    s.note_schedule(dep_id, info)
    return s.expected(dep_id, info)


def test_expected_run_stays_at_the_missed_slot_when_the_scheduler_stops() -> None:
    s = store()
    poll(s, T0, [ext("r0", -5, "completed")])
    # On time: the next hourly slot, announced by upcoming_runs_at and next_trigger_at.
    info = _dep(upcoming_runs_at=(T0 + H, T0 + 2 * H), next_trigger_at=T0 + H)
    assert note(s, DEP, info) == T0 + H
    # The run at T0 + H came: the slot is answered and the next one is expected.
    poll(s, T0 + H + 30, [ext("r1", H + 2, "completed")])
    info = _dep(upcoming_runs_at=(T0 + 2 * H, T0 + 3 * H))
    assert note(s, DEP, info) == T0 + 2 * H
    # The scheduler stalls; the API keeps announcing later slots: the missed one stays.
    for hour in (3, 4, 5):
        info = _dep(upcoming_runs_at=(T0 + hour * H, T0 + (hour + 1) * H))
        assert note(s, DEP, info) == T0 + 2 * H
    # The remembered slot survives a restart through the state file.
    copy = store()
    state_mod.restore(json.loads(json.dumps(state_mod.dump(s, "u"))), copy, "u", now=T0 + 6 * H)
    assert note(copy, DEP, _dep()) == T0 + 2 * H


@pytest.mark.parametrize(
    "change",
    [{"schedule": "manual"}, {"archived": True}, {"status": "paused", "paused_reason": "manual"}],
)
def test_no_expected_run_when_not_expected_to_run(change: dict[str, object]) -> None:
    s = store()
    poll(s, T0, [])
    assert note(s, DEP, _dep(next_trigger_at=T0 - H)) == T0 - H  # missed
    assert note(s, DEP, _dep(next_trigger_at=T0 - H, **change)) is None
    # Its memory is gone: resumed, it waits for the newly announced slot only.
    assert note(s, DEP, _dep(next_trigger_at=T0 + H)) == T0 + H
    assert note(s, "dep_unknown", _dep()) is None


def test_state_file_round_trips_the_new_fields() -> None:
    s = store()
    poll(s, T0, [ext("h", -H, "failed")])
    s.apply(
        DEP,
        [ext("a", 10, "failed", attempt=1, triggered=10, started=12, trigger="retry")],
        T0 + 60,
        LOOKBACK,
        history=False,
        max_retries=1,
    )
    s.note_schedule(DEP, _dep(upcoming_runs_at=(T0 + H,)))
    doc = json.loads(json.dumps(state_mod.dump(s, "u")))
    assert doc["version"] == state_mod.VERSION
    copy = store()
    state_mod.restore(doc, copy, "u", now=T0 + 24 * H)
    assert state_mod.dump(copy, "u")["deployments"] == doc["deployments"]
    st = copy.deployments[DEP]
    assert st.by_trigger == {("failed", "retry"): 1} and st.retried == 1
    assert st.consecutive == 1 and st.queue is not None and st.announced == [T0 + H]


def test_version_1_state_file_is_read_with_its_counts_under_other() -> None:
    v1 = {
        "format": "qoder-exporter-state",
        "version": 1,
        "api_url": "u",
        "buckets": [10.0, 60.0, 600.0],
        "deployments": {
            DEP: {
                "floor": T0 - LOOKBACK,
                "runs": {"r1": [T0 - 10, "completed", True]},
                "totals": {"completed": 5, "failed": 2, "skipped": 0},
                "durations": {},
                "errors": {"unknown_error": 1, "made_up_error": 1},
                "last_success": T0 - 10,
                "last_finished": [T0 - 10, "r1", "completed"],
            }
        },
    }
    s = store()
    assert state_mod.restore(v1, s, "u", now=T0 + 24 * H) == 1
    st = s.deployments[DEP]
    assert st.by_trigger == {("completed", "other"): 5, ("failed", "other"): 2}
    assert st.errors == {"unknown_error": 1, "other": 1}
    assert st.consecutive == 0 and st.last_run is None and st.announced == []
    with pytest.raises(state_mod.StateError, match="version"):
        state_mod.restore({**v1, "version": 99}, store(), "u")
