"""Runs followed into their sessions, against the simulator's record-only shape over real HTTP.

Every case ends with the exact check against the simulator's truth (truth_run_outcomes): every
outcome, reason, duration bucket and token total; faults in the middle lose nothing and count
nothing twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from qoder_exporter.models import run_error_type
from qoder_exporter.poller import Poller
from qoder_exporter.simulator import DeploymentSpec, SessionOptions, Simulator
from qoder_exporter.sync import SESSION_TOKEN_BUCKETS

from .conftest import TOKEN, make_config

# Simulated days and fault runs against the simulator: the system layer.
pytestmark = pytest.mark.system

STEP = 300.0
TIMEOUT_S = 7200.0
LOOKBACK_S = 86400.0
SPECS = [
    DeploymentSpec("often", 600.0, failure_rate=0.1, duration_s=(30.0, 900.0)),
    DeploymentSpec("hourly", 3600.0, failure_rate=0.05),
    DeploymentSpec("manual", None, manual_rate_per_hour=2.0, failure_rate=0.1),
    DeploymentSpec(
        "flaky",
        900.0,
        failure_rate=0.0,
        session_outcomes={"end_turn": 1, "requires_action": 1, "never": 1, "error_terminal": 1},
    ),
]


def world(seed: int = 11, **options: Any) -> Iterator[Simulator]:
    sim = Simulator(
        seed, deployments=SPECS, token=TOKEN, shape="g2", sessions=SessionOptions(**options)
    )
    sim.serve("127.0.0.1", 0)
    yield sim
    sim.close()


@pytest.fixture
def sim() -> Iterator[Simulator]:
    yield from world()


def poller(sim: Simulator, **overrides: Any) -> Poller:
    config = make_config(sim, sessions_timeout="2h", **overrides)
    p = Poller(config, clock=sim.clock.now)
    p.client.sleep = lambda _s: None
    return p


def run_for(sim: Simulator, p: Poller, seconds: float) -> None:
    for _ in range(int(seconds // STEP)):
        sim.advance(STEP)
        p.poll_once()


@dataclass
class Expected:
    totals: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    durations: dict[str, list[float]] = field(default_factory=dict)
    tokens: Counter[str] = field(default_factory=Counter)
    per_run: list[int] = field(default_factory=list)  # tokens of each run that gave them
    credits: float = 0.0
    lost: set[str] = field(default_factory=set)


def expected(sim: Simulator, dep_id: str, started: float, end: float, lost: set[str]) -> Expected:
    """What the exporter must show for dep_id after its last poll at `end`."""
    out = Expected()
    for o in sim.truth_run_outcomes(dep_id):
        if o.session_id is None:  # failed to start: failed at once, by error.type
            if o.created_at > started:
                out.totals["failed"] += 1
                out.errors[run_error_type(o.error_type)] += 1
        elif o.outcome == "unknown" or o.session_id in lost:
            # never finishes: counted once past the timeout, unless already past it at the
            # first sync (history, like any run that ended before the start); 404: at once
            if o.created_at >= started - LOOKBACK_S and (
                o.session_id in lost or started <= o.created_at + TIMEOUT_S < end
            ):
                out.totals["failed"] += 1
                out.reasons["unknown"] += 1
        elif o.finished_at is not None and started < o.finished_at <= end:
            out.totals[o.outcome] += 1
            if o.reason is not None:
                out.reasons[o.reason] += 1
            if o.duration_s is not None:
                out.durations.setdefault(o.outcome, []).append(o.duration_s)
            out.tokens.update(o.tokens)
            if o.tokens:
                out.per_run.append(sum(o.tokens.values()))
            out.credits += o.credits or 0.0
    return out


def assert_matches_truth(
    sim: Simulator,
    p: Poller,
    started: float,
    lost: set[str] = frozenset(),  # type: ignore[assignment]
) -> None:
    snap = p.snapshot
    end = sim.clock.now()
    for view in snap.deployments:
        want = expected(sim, view.id, started, end, set(lost))
        got = {s: n for s, n in view.totals.items() if n}
        assert got == dict(want.totals), view.id
        assert {r: n for r, n in view.reasons.items() if n} == dict(want.reasons), view.id
        assert view.errors == dict(want.errors), view.id
        assert view.tokens == {k: v for k, v in want.tokens.items()}, view.id
        assert (view.credits or 0.0) == pytest.approx(want.credits, abs=1e-6)
        per_run = view.session_tokens
        if not want.per_run:
            assert per_run is None, view.id  # absent, not zero
        else:
            assert per_run is not None, view.id
            assert per_run.total == sum(want.per_run)
            for bound, count in zip(SESSION_TOKEN_BUCKETS, per_run.cumulative, strict=False):
                assert count == sum(1 for n in want.per_run if n <= bound), (view.id, bound)
            assert per_run.cumulative[-1] == len(want.per_run)
        for status in ("completed", "failed"):
            durations = sorted(want.durations.get(status, []))
            hist = view.durations.get(status)
            if not durations:
                assert hist is None or hist.cumulative[-1] == 0, (view.id, status)
                continue
            assert hist is not None
            assert hist.total == pytest.approx(sum(durations), abs=1e-3 * len(durations))
            for bound, count in zip(snap.buckets, hist.cumulative, strict=False):
                assert count == sum(1 for d in durations if d <= bound), (view.id, status, bound)
            assert hist.cumulative[-1] == len(durations)


def test_a_day_on_the_record_only_shape_matches_the_truth(sim: Simulator) -> None:
    p = poller(sim)
    started = sim.clock.now()
    p.poll_once()
    run_for(sim, p, 86400.0)
    assert_matches_truth(sim, p, started)
    views = {v.id: v for v in p.snapshot.deployments}
    # the shape of the outcomes the day produced: every reason the world draws shows up
    flaky = views[sim.deployment_ids()[3]]
    assert flaky.reasons["blocked"] and flaky.reasons["session_error"]
    assert flaky.reasons["unknown"]
    assert sum(v.totals["completed"] for v in views.values()) > 50
    # last success is a session's end, last run status the resolved outcome
    for view in views.values():
        done = [
            o
            for o in sim.truth_run_outcomes(view.id)
            if o.outcome == "completed" and o.finished_at is not None
        ]
        if done:
            assert view.last_success == pytest.approx(max(o.finished_at for o in done), abs=1e-3)


def test_string_stop_reasons_and_credits_only_usage() -> None:
    for sim in world(seed=5, stop_reason="string", usage="credits"):
        p = poller(sim)
        started = sim.clock.now()
        p.poll_once()
        run_for(sim, p, 6 * 3600.0)
        assert_matches_truth(sim, p, started)
        views = p.snapshot.deployments
        assert all(v.tokens == {} for v in views)  # absent fields: absent series
        assert sum(v.credits or 0.0 for v in views) > 0


def test_cost_is_zero_when_nothing_is_in_flight_and_bounded_otherwise(sim: Simulator) -> None:
    """<= 1 list per deployment with awaited runs per cycle, <= 1.2 events calls per run
    resolved from a finished session; nothing when no run awaits its session."""
    p = poller(sim)
    p.poll_once()
    follower = p.cycle.follower
    assert follower is not None
    lists_allowed = resolved = 0
    real = follower.follow

    def counting(now: float, executor: Any, budget: Any = None) -> int:
        nonlocal lists_allowed, resolved
        with p.tracker.lock:
            lists_allowed += len(p.store.awaiting())
        done = real(now, executor, budget)
        resolved += done
        return done

    follower.follow = counting  # type: ignore[method-assign]
    before = dict(sim.request_counts)
    run_for(sim, p, 12 * 3600.0)
    spent = Counter({k: n - before.get(k, 0) for k, n in sim.request_counts.items()})
    assert 0 < spent["list_sessions"] <= lists_allowed
    assert spent["list_session_events"] <= 1.2 * resolved
    assert spent["get_session"] == 0
    # With no run awaiting its session, not one session request.
    with p.tracker.lock:
        for st in p.store.deployments.values():
            st.sessions.clear()
    before = dict(sim.request_counts)
    real(sim.clock.now(), p._executor)
    assert all(
        sim.request_counts[k] == before[k]
        for k in ("list_sessions", "get_session", "list_session_events")
    )


def test_faults_in_the_middle_lose_nothing_and_count_nothing_twice(
    sim: Simulator, tmp_path: Path
) -> None:
    state_file = str(tmp_path / "state.json")
    p = poller(sim, state_file=state_file)
    started = sim.clock.now()
    p.poll_once()
    run_for(sim, p, 3 * 3600.0)
    # The sessions endpoints down for an hour: runs wait, nothing is resolved wrongly.
    sim.faults.broken = {"list_sessions", "get_session", "list_session_events"}
    run_for(sim, p, 3600.0)
    sim.faults.broken = set()
    # A session lost (404) while its run awaits it.
    lost: set[str] = set()
    with p.tracker.lock:
        awaiting = p.store.awaiting()
    assert awaiting, "the outage left runs awaiting their sessions"
    _, session_id, _ = next(iter(awaiting.values()))[0]
    sim.lose_session(session_id)
    lost.add(session_id)
    # A restart with the state file while sessions are unresolved.
    p.save_state()
    p.close()
    with_pending = sum(len(v) for v in awaiting.values())
    assert with_pending > 0
    p = poller(sim, state_file=state_file)
    p.tracker.started_at = started  # the same exporter, restarted: it counts since then
    with p.tracker.lock:
        assert sum(len(v) for v in p.store.awaiting().values()) == with_pending
    run_for(sim, p, 3600.0)
    # The list refused (an API without GET /sessions): sessions are read by id.
    sim.faults.absent = {"list_sessions"}
    run_for(sim, p, 3 * 3600.0)
    assert p.cycle.follower is not None and p.cycle.follower.list_refused
    assert sim.request_counts["get_session"] > 0
    sim.faults.absent = set()
    run_for(sim, p, 3 * 3600.0)
    assert_matches_truth(sim, p, started, lost)


def test_sessions_never_keeps_the_old_behaviour(sim: Simulator) -> None:
    p = poller(sim, sessions="never")
    p.poll_once()
    run_for(sim, p, 3600.0)
    assert not any(sim.request_counts[k] for k in ("list_sessions", "list_session_events"))
    assert all(not v.reasons for v in p.snapshot.deployments)


def test_record_only_pages_follow_next_page(sim: Simulator) -> None:
    """page= where the answer carries next_page: a first sync over small pages sees it all."""
    p = poller(sim, page_size=5)
    sent: list[str] = []
    adapter_get = p.client.session.get

    def spy(url: str, **kw: Any) -> Any:
        sent.append(str(kw.get("params")))
        return adapter_get(url, **kw)

    p.client.session.get = spy  # type: ignore[method-assign]
    p.poll_once()
    assert any("'page':" in s for s in sent)
    assert not any("'after_id':" in s for s in sent)
    views = {v.id: v for v in p.snapshot.deployments}
    for dep_id, view in views.items():
        in_window = sim.truth_recent(dep_id, LOOKBACK_S)
        assert sum(view.recent.values()) == sum(in_window.values()), dep_id


BY_ID = ("get_run", "get_run_global", "list_sessions", "get_session", "list_session_events")


def test_a_small_budget_defers_session_reads_and_loses_none(sim: Simulator) -> None:
    """A first sync with more finished session runs than one cycle may read: every cycle's
    reads by id stay within the budget, the rest wait (counted), newest first, and in the
    end every outcome equals the truth, counted once. Runs the budget put off past their
    sessions_timeout get a last read: their true outcome, not unknown."""
    budget = 8
    p = poller(sim)
    p.cycle.refresh_limit = budget
    started = sim.clock.now()
    spent: list[int] = []
    for step in range(6 * 3600 // int(STEP)):
        if step:
            sim.advance(STEP)
        before = sum(sim.request_counts[k] for k in BY_ID)
        p.poll_once()
        spent.append(sum(sim.request_counts[k] for k in BY_ID) - before)
        if step == 0:
            # Newest first: of the runs whose sessions had ended (and that are not past
            # twice the timeout), the newest is resolved at once, the oldest waits.
            ended = sorted(
                (o.created_at, o.deployment_id, o.run_id)
                for d in sim.deployment_ids()
                for o in sim.truth_run_outcomes(d)
                if o.session_id is not None
                and o.finished_at is not None
                and o.finished_at <= started
                and o.created_at >= started - 2 * TIMEOUT_S
            )
            assert len(ended) > budget
            with p.tracker.lock:
                runs = {d: st.runs for d, st in p.store.deployments.items()}
                assert runs[ended[-1][1]][ended[-1][2]].accounted
                assert not runs[ended[0][1]][ended[0][2]].accounted
    assert max(spent) <= budget, spent
    assert p.snapshot.deferred_session_reads > 0
    # The backlog drained: no run waits whose session ended (or timed out) cycles ago.
    truth = {o.run_id: o for d in sim.deployment_ids() for o in sim.truth_run_outcomes(d)}
    late = sim.clock.now() - 3 * STEP
    with p.tracker.lock:
        for items in p.store.awaiting().values():
            for run_id, _, created in items:
                ended = truth[run_id].finished_at
                assert (ended is None or ended > late) and created + TIMEOUT_S > late
    assert_matches_truth(sim, p, started)
    # History too: each run the window still holds shows its session's true outcome, also
    # those past the timeout (2 h) when the budget reached them. (Runs still unread at twice
    # the timeout are given up as unknown: those an hour short of it at the first sync are
    # left out, the budget reaches them in time.)
    past_timeout = 0
    for dep_id, st in p.store.deployments.items():
        for o in sim.truth_run_outcomes(dep_id):
            tracked = st.runs.get(o.run_id)
            if (
                tracked is None
                or o.session_id is None
                or o.outcome == "unknown"
                or o.created_at < started - 2 * TIMEOUT_S + 3600.0
            ):
                continue
            assert tracked.status == o.outcome, (dep_id, o)
            past_timeout += o.created_at + TIMEOUT_S < started
    assert past_timeout > budget
