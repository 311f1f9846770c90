"""The simulator's sessions (qoder-sessions.md §4) and the record-only shape's cursor
(qoder-api.md §3), through the requests adapter over the simulator's request handler."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import requests

from qoder_exporter.simulator import (
    SESSION_ERROR_TYPES,
    SESSION_OUTCOMES,
    DeploymentSpec,
    SessionOptions,
    Simulator,
    mount,
)
from qoder_exporter.simulator.stamps import parse_rfc3339

TOKEN = "pt-sessions-token"
FINAL_EVENTS = {
    "end_turn": ["agent.message", "session.status_idle"],
    "stop_sequence": ["agent.message", "session.status_idle"],
    "budget_reached": ["agent.message", "session.status_idle"],
    "cancelled": ["agent.message", "session.status_idle"],
    "retries_exhausted": ["session.error", "session.status_idle"],
    "requires_action": ["agent.custom_tool_use", "session.status_idle"],
    "error_terminal": ["session.error", "session.status_terminated"],
    "terminated": ["session.status_terminated"],
    "never": [],
}
VERDICT = {
    "end_turn": ("completed", None),
    "stop_sequence": ("completed", None),
    "retries_exhausted": ("failed", "retries_exhausted"),
    "budget_reached": ("failed", "budget_reached"),
    "cancelled": ("failed", "cancelled"),
    "requires_action": ("failed", "blocked"),
    "error_terminal": ("failed", "session_error"),
    "terminated": ("failed", "terminated"),
    "never": ("unknown", None),
}


class Api:
    """GETs against the simulator through the adapter."""

    def __init__(self, sim: Simulator) -> None:
        self.session = requests.Session()
        self.base = mount(self.session, sim)

    def get(self, path: str, **params: Any) -> tuple[int, Any]:
        r = self.session.get(
            self.base + path, params=params, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        return r.status_code, r.json()

    def ok(self, path: str, **params: Any) -> Any:
        status, body = self.get(path, **params)
        assert status == 200, body
        return body

    def walk(self, path: str, **params: Any) -> list[Any]:
        """Every item of a list, following next_page with page=."""
        items: list[Any] = []
        for _ in range(10_000):
            page = self.ok(path, **params)
            items += page["data"]
            if not page["has_more"]:
                return items
            params["page"] = page["next_page"]
        raise AssertionError("the walk does not end")


def ns(text: str) -> int:
    value = parse_rfc3339(text)
    assert value is not None
    return value


def one_shot(outcome: str, **options: Any) -> tuple[Simulator, Api, str]:
    """A g2 world with one manual-only deployment whose sessions all end with `outcome`."""
    spec = DeploymentSpec(
        "one",
        interval_s=None,
        failure_rate=0.0,
        pending_s=(5.0, 5.0),
        duration_s=(100.0, 100.0),
        session_outcomes={outcome: 1.0},
    )
    sim = Simulator(3, deployments=[spec], shape="g2", token=TOKEN, **options)
    return sim, Api(sim), sim.deployment_ids()[0]


def world(seed: int = 5, **options: Any) -> tuple[Simulator, Api]:
    specs = [
        DeploymentSpec("busy", 600.0, failure_rate=0.2, duration_s=(30.0, 400.0)),
        DeploymentSpec("manual", None, manual_rate_per_hour=3.0, failure_rate=0.1),
        DeploymentSpec("quick", 900.0, failure_rate=0.05, max_concurrent=2),
    ]
    sim = Simulator(seed, deployments=specs, shape="g2", token=TOKEN, history_s=86400, **options)
    return sim, Api(sim)


# ---------------------------------------------------------------- status machine and outcomes


@pytest.mark.parametrize("outcome", SESSION_OUTCOMES)
def test_each_outcome_runs_its_status_machine(outcome: str) -> None:
    sim, api, dep = one_shot(outcome, sessions=SessionOptions(reschedule_rate=0.0))
    run = sim.trigger(dep)
    sid = run["session_id"]
    assert run["error"] is None and sid
    sim.advance(1)
    session = api.ok(f"/sessions/{sid}")
    assert (session["status"], session["deployment_id"]) == ("idle", dep)
    assert api.ok(f"/sessions/{sid}/events")["data"] == [], "the turn has not started"
    assert sim.truth_run_outcome(run["id"]).outcome == "unknown"
    sim.advance(50)
    assert api.ok(f"/sessions/{sid}")["status"] == "running"
    types = [e["type"] for e in api.ok(f"/sessions/{sid}/events")["data"]]
    assert types == ["session.status_running", "user.message"]
    sim.advance(3 * 86400)
    session = api.ok(f"/sessions/{sid}")
    events = api.ok(f"/sessions/{sid}/events")["data"]
    assert [e["type"] for e in events] == types + FINAL_EVENTS[outcome]
    expected_status = {
        "never": "running",
        "error_terminal": "terminated",
        "terminated": "terminated",
    }
    assert session["status"] == expected_status.get(outcome, "idle")
    truth = sim.truth_run_outcome(run["id"])
    assert (truth.outcome, truth.reason) == VERDICT[outcome]
    idle = [e for e in events if e["type"] == "session.status_idle"]
    if idle:
        assert idle[0]["stop_reason"]["type"] == outcome
        assert truth.duration_s == (ns(idle[0]["processed_at"]) - ns(run["created_at"])) / 1e9
        assert truth.finished_at is not None
    else:
        assert truth.duration_s is None
    errors = [e for e in events if e["type"] == "session.error"]
    if errors:
        retry = {"retries_exhausted": "exhausted", "error_terminal": "terminal"}[outcome]
        assert errors[-1]["error"]["retry_status"] == {"type": retry}
        assert errors[-1]["error"]["type"] in SESSION_ERROR_TYPES
        assert truth.error_type == errors[-1]["error"]["type"]
    if outcome == "requires_action":
        tool = events[-2]["id"]
        assert idle[0]["stop_reason"]["event_ids"] == [tool]
    if outcome == "never":
        assert truth.finished_at is None


def test_rescheduling_is_transient() -> None:
    sim, api, dep = one_shot("end_turn", sessions=SessionOptions(reschedule_rate=1.0))
    run = sim.trigger(dep)
    sid = run["session_id"]
    sim.advance(5 + 35)  # 35 s into a 100 s turn: inside 30%..40%
    assert api.ok(f"/sessions/{sid}")["status"] == "rescheduling"
    sim.advance(200)
    events = api.ok(f"/sessions/{sid}/events")["data"]
    assert [e["type"] for e in events] == [
        "session.status_running",
        "user.message",
        "session.error",
        "session.status_rescheduled",
        "session.status_running",
        "agent.message",
        "session.status_idle",
    ]
    assert events[2]["error"]["retry_status"] == {"type": "retrying"}
    session = api.ok(f"/sessions/{sid}")
    assert session["status"] == "idle"
    truth = sim.truth_run_outcome(run["id"])
    assert (truth.outcome, truth.reason) == ("completed", None)
    assert truth.active_s == session["stats"]["active_seconds"]
    assert truth.active_s is not None and truth.active_s < 100 - 9  # the 10 s window excluded


def test_blocked_session_stays_blocked() -> None:
    sim, api, dep = one_shot("requires_action")
    sid = sim.trigger(dep)["session_id"]
    sim.advance(200)
    before = api.ok(f"/sessions/{sid}/events")["data"]
    sim.advance(30 * 86400)
    assert api.ok(f"/sessions/{sid}/events")["data"] == before
    assert api.ok(f"/sessions/{sid}")["status"] == "idle"


def test_stop_reason_as_plain_string() -> None:
    sim, api, dep = one_shot("budget_reached", sessions=SessionOptions(stop_reason="string"))
    sid = sim.trigger(dep)["session_id"]
    sim.advance(200)
    idle = api.ok(f"/sessions/{sid}/events", **{"types[]": "session.status_idle"})["data"]
    assert [e["stop_reason"] for e in idle] == ["budget_reached"]


def test_every_session_error_kind_occurs() -> None:
    spec = DeploymentSpec(
        "errors",
        300.0,
        failure_rate=0.0,
        session_outcomes={"error_terminal": 1, "retries_exhausted": 1},
    )
    sim = Simulator(2, deployments=[spec], shape="g2", token=TOKEN, history_s=86400)
    outcomes = sim.truth_run_outcomes(sim.deployment_ids()[0])
    assert {o.error_type for o in outcomes if o.session_id} >= set(SESSION_ERROR_TYPES)


# ---------------------------------------------------------------- usage


def test_usage_in_token_form_matches_the_truth() -> None:
    sim, api = world()
    for dep in sim.deployment_ids():
        for truth in sim.truth_run_outcomes(dep):
            if truth.finished_at is None or truth.session_id is None:
                continue
            usage = api.ok(f"/sessions/{truth.session_id}")["usage"]
            cache = usage["cache_creation"]
            assert truth.tokens == {
                "input": usage["input_tokens"],
                "output": usage["output_tokens"],
                "cache_read": usage["cache_read_input_tokens"],
                "cache_creation": cache["ephemeral_5m_input_tokens"]
                + cache["ephemeral_1h_input_tokens"],
            }
            assert truth.credits is None


def test_usage_in_credit_form_matches_the_truth() -> None:
    sim, api = world(sessions=SessionOptions(usage="credits"))
    checked = 0
    for truth in sim.truth_run_outcomes(sim.deployment_ids()[0]):
        if truth.finished_at is None or truth.session_id is None:
            continue
        usage = api.ok(f"/sessions/{truth.session_id}")["usage"]
        assert set(usage) == {"total_credits"}
        assert usage["total_credits"] == truth.credits
        assert truth.tokens == {}
        checked += 1
    assert checked > 10


def test_usage_is_deterministic_from_the_seed() -> None:
    def totals(seed: int) -> list[dict[str, int]]:
        sim, _ = world(seed)
        return [o.tokens for o in sim.truth_run_outcomes(sim.deployment_ids()[0])]

    assert totals(5) == totals(5)
    assert totals(5) != totals(6)


def test_usage_grows_while_running() -> None:
    sim, api, dep = one_shot("end_turn", sessions=SessionOptions(reschedule_rate=0.0))
    sid = sim.trigger(dep)["session_id"]
    sim.advance(30)
    early = api.ok(f"/sessions/{sid}")["usage"]["output_tokens"]
    sim.advance(200)
    final = api.ok(f"/sessions/{sid}")["usage"]["output_tokens"]
    assert 0 < early < final


# ---------------------------------------------------------------- a day compared with the truth


def classify(api: Api, run: dict[str, Any]) -> tuple[str, str | None]:
    """What an exporter following sessions concludes (qoder-sessions.md §4.6)."""
    if run["error"] is not None:
        return "failed", None
    sid = run["session_id"]
    status, session = api.get(f"/sessions/{sid}")
    if status == 404:
        return "unknown", None
    if session["status"] in ("running", "rescheduling"):
        return "unknown", None
    events = api.ok(
        f"/sessions/{sid}/events",
        order="desc",
        limit=10,
        **{"types[]": ["session.status_idle", "session.error", "session.status_terminated"]},
    )["data"]
    if not events:
        return "unknown", None  # the turn has not started
    newest = events[0]
    if newest["type"] == "session.status_terminated":
        error = any(
            e["type"] == "session.error" and e["error"]["retry_status"]["type"] == "terminal"
            for e in events
        )
        return "failed", "session_error" if error else "terminated"
    reason = newest["stop_reason"]["type"]
    names = {"requires_action": "blocked"}
    if reason in ("end_turn", "stop_sequence"):
        return "completed", None
    return "failed", names.get(reason, reason)


def test_a_simulated_day_over_the_api_matches_the_truth() -> None:
    sim, api = world()
    sim.advance(6 * 3600)
    runs = api.walk("/deployment_runs", limit=100)
    truth = {o.run_id: o for d in sim.deployment_ids() for o in sim.truth_run_outcomes(d)}
    assert len(runs) == len(truth)
    seen = Counter()
    for run in runs:
        expected = truth[run["id"]]
        assert classify(api, run) == (expected.outcome, expected.reason), run["id"]
        seen[expected.outcome, expected.reason] += 1
    assert len(seen) >= 7, seen  # the day covers most outcomes


def test_every_session_has_a_run_and_a_deployment() -> None:
    _, api = world()
    runs = {r["session_id"]: r for r in api.walk("/deployment_runs", limit=100) if r["session_id"]}
    sessions = api.walk("/sessions", limit=100)
    assert {s["id"] for s in sessions} == set(runs)
    for s in sessions:
        assert s["deployment_id"] == runs[s["id"]]["deployment_id"]


# ---------------------------------------------------------------- GET /sessions parameters


def test_session_list_filters_and_order() -> None:
    sim, api = world()
    dep = sim.deployment_ids()[0]
    everything = api.walk("/sessions", limit=100)
    created = [ns(s["created_at"]) for s in everything]
    assert created == sorted(created, reverse=True), "desc by default"
    mine = api.walk("/sessions", limit=100, deployment_id=dep)
    assert mine == [s for s in everything if s["deployment_id"] == dep]
    ascending = api.walk("/sessions", limit=7, order="asc")
    assert ascending == everything[::-1]
    running = api.walk("/sessions", limit=100, statuses="running")
    assert running and {s["status"] for s in running} == {"running"}
    both = api.walk("/sessions", limit=100, statuses=["running", "terminated"])
    also = api.walk("/sessions", limit=100, **{"statuses[]": ["running", "terminated"]})
    assert both == also == [s for s in everything if s["status"] in ("running", "terminated")]
    middle = everything[len(everything) // 2]["created_at"]
    newer = api.walk("/sessions", limit=100, **{"created_at[gte]": middle})
    older = api.walk("/sessions", limit=100, **{"created_at[lt]": middle})
    assert newer + older == everything
    assert api.get("/sessions", deployment_id="dep_nope")[1]["data"] == []


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": "101"}, "limit"),
        ({"limit": "0"}, "limit"),
        ({"statuses": "sleeping"}, "statuses"),
        ({"order": "sideways"}, "order"),
        ({"after_id": "sess_unknown"}, "after_id"),
        ({"created_at[gt]": "yesterday"}, "created_at[gt]"),
    ],
)
def test_session_list_rejects_bad_parameters(params: dict[str, str], param: str) -> None:
    _, api = world()
    status, body = api.get("/sessions", **params)
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param


def test_session_list_cursors() -> None:
    _, api = world()
    everything = api.walk("/sessions", limit=100)
    first = api.ok("/sessions", limit=5)
    assert first["next_page"] == first["last_id"]
    after = api.ok("/sessions", limit=5, after_id=first["last_id"])
    by_page = api.ok("/sessions", limit=5, page=first["next_page"])
    assert after == by_page
    assert after["data"] == everything[5:10]
    back = api.ok("/sessions", limit=3, before_id=after["first_id"])
    assert back["data"] == everything[2:5]
    status, body = api.get("/sessions", page=first["next_page"], after_id=first["last_id"])
    assert status == 400 and body["error"]["type"] == "invalid_request_error"


# ---------------------------------------------------------------- GET /sessions/{id}/events


def busy_session(api: Api, sim: Simulator) -> str:
    """A session that finished its turn after a rescheduling (seven events)."""
    outcomes = sim.truth_run_outcomes(sim.deployment_ids()[0])
    best = next(o for o in outcomes if o.session_id and o.outcome == "completed")
    assert best.session_id is not None
    return best.session_id


def test_event_list_parameters() -> None:
    sim, api = world(sessions=SessionOptions(reschedule_rate=1.0))
    sid = busy_session(api, sim)
    path = f"/sessions/{sid}/events"
    events = api.ok(path, limit=100)["data"]
    assert len(events) >= 6
    times = [ns(e["processed_at"]) for e in events]
    assert times == sorted(times), "asc by default"
    assert api.ok(path, order="desc")["data"] == events[::-1]
    for limit in (1, 2, 4):
        assert api.walk(path, limit=limit) == events
        assert api.walk(path, limit=limit, order="desc") == events[::-1]
    status_types = ["session.status_running", "session.status_idle"]
    wanted = [e for e in events if e["type"] in status_types]
    assert api.ok(path, **{"types[]": status_types})["data"] == wanted
    assert api.ok(path, types=",".join(status_types))["data"] == wanted
    with_unknown = api.ok(path, **{"types[]": [*status_types, "session.no_such_type"]})
    assert with_unknown["data"] == wanted, "unknown types are silently ignored"
    assert api.ok(path, types="session.no_such_type")["data"] == []
    third = events[2]["processed_at"]
    assert api.ok(path, **{"created_at[gt]": third})["data"] == events[3:]
    assert api.ok(path, **{"created_at[lte]": third})["data"] == events[:3]
    assert api.ok(path, after_id=events[1]["id"], limit=2)["data"] == events[2:4]
    assert api.ok(path, before_id=events[4]["id"], limit=2)["data"] == events[2:4]
    desc_after = api.ok(path, order="desc", after_id=events[4]["id"], limit=2)["data"]
    assert desc_after == [events[3], events[2]]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": "101"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"page": "evt_x", "after_id": "evt_y"}, "page"),
        ({"after_id": "evt_y", "before_id": "evt_z"}, "before_id"),
        ({"after_id": "evt_not_here"}, "after_id"),
        ({"order": "random"}, "order"),
    ],
)
def test_event_list_rejects_bad_parameters(params: dict[str, str], param: str) -> None:
    sim, api = world()
    sid = next(
        o.session_id for o in sim.truth_run_outcomes(sim.deployment_ids()[0]) if o.session_id
    )
    status, body = api.get(f"/sessions/{sid}/events", **params)
    assert status == 400
    assert body["error"]["param"] == param


# ---------------------------------------------------------------- faults


def test_sessions_endpoint_down_and_back() -> None:
    sim, api = world()
    sid = api.ok("/sessions", limit=1)["data"][0]["id"]
    sim.faults.broken = {"list_sessions", "get_session"}
    assert api.get("/sessions")[0] == 500
    status, body = api.get(f"/sessions/{sid}")
    assert (status, body["error"]["type"]) == (500, "api_error")
    assert api.get(f"/sessions/{sid}/events")[0] == 200, "only the broken endpoints fail"
    assert api.get("/deployments")[0] == 200
    sim.faults.clear()
    assert api.get(f"/sessions/{sid}")[0] == 200


def test_a_lost_session_is_404_everywhere() -> None:
    sim, api = world()
    run = next(r for r in api.walk("/deployment_runs", limit=100) if r["session_id"])
    sid = run["session_id"]
    sim.lose_session(sid)
    for path in (f"/sessions/{sid}", f"/sessions/{sid}/events"):
        status, body = api.get(path)
        assert (status, body["error"]["type"]) == (404, "not_found_error")
    assert sid not in {s["id"] for s in api.walk("/sessions", limit=100)}
    assert sim.truth_run_outcome(run["id"]).outcome == "unknown"
    assert api.ok(f"/deployment_runs/{run['id']}") == run, "the run record is unchanged"


def test_runs_with_an_error_have_no_session() -> None:
    sim, api = world()
    failed = [r for r in api.walk("/deployment_runs", limit=100) if r["error"]]
    assert failed
    for run in failed[:5]:
        truth = sim.truth_run_outcome(run["id"])
        assert (truth.outcome, truth.session_id) == ("failed", None)
        assert truth.error_type == run["error"]["type"]


# ---------------------------------------------------------------- the record-only shape's cursor


def test_record_shape_pages_with_page() -> None:
    sim, api = world()
    dep = sim.deployment_ids()[0]
    by_after: list[Any] = []
    params: dict[str, Any] = {"limit": 9}
    while True:
        page = api.ok(f"/deployments/{dep}/runs", **params)
        by_after += page["data"]
        if not page["has_more"]:
            break
        params["after_id"] = page["last_id"]
    assert api.walk(f"/deployments/{dep}/runs", limit=9) == by_after
    assert len(api.walk("/deployment_runs", limit=13)) == sum(
        sum(sim.truth_recent(d, 30 * 86400).values()) for d in sim.deployment_ids()
    )
    first = api.ok("/deployment_runs", limit=5)
    for other in ("after_id", "before_id"):
        status, body = api.get(
            "/deployment_runs", page=first["next_page"], **{other: first["last_id"]}
        )
        assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = api.get("/deployment_runs", limit=101)
    assert status == 400
