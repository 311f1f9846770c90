"""The session classification (outcomes.py): pure functions, no sockets."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qoder_exporter.models import parse_run
from qoder_exporter.outcomes import (
    REASONS,
    apply_mode,
    classify_session,
    classify_stop_reason,
    parse_session,
    parse_usage,
)

T0 = "2026-06-14T08:00:00Z"
CREATED = 1781424000.0  # T0


def ev(kind: str, second: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"evt_{kind}_{second}",
        "type": kind,
        "processed_at": f"2026-06-14T08:{second // 60:02d}:{second % 60:02d}Z",
        **extra,
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("end_turn", ("completed", None)),
        ({"type": "end_turn"}, ("completed", None)),
        ({"type": "stop_sequence"}, ("completed", None)),
        ("retries_exhausted", ("failed", "retries_exhausted")),
        ({"type": "budget_reached"}, ("failed", "budget_reached")),
        ({"type": "cancelled"}, ("failed", "cancelled")),
        ({"type": "requires_action", "event_ids": ["evt_1"]}, ("failed", "blocked")),
        ("requires_action", ("failed", "blocked")),
        ("brand_new_reason", ("failed", "unknown")),
        (None, ("failed", "unknown")),
        ({"type": 3}, ("failed", "unknown")),
        ({}, ("failed", "unknown")),
        (["end_turn"], ("failed", "unknown")),
    ],
)
def test_stop_reason_as_string_or_object(value: object, expected: tuple[str, str | None]) -> None:
    assert classify_stop_reason(value) == expected


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=8,
    )
)
def test_any_stop_reason_classifies_into_the_bounded_set(value: object) -> None:
    status, reason = classify_stop_reason(value)
    assert (status, reason) == ("completed", None) or (status == "failed" and reason in REASONS)
    if isinstance(value, (str, dict)):
        same = value if isinstance(value, str) else value.get("type")
        if isinstance(same, str) and same not in ("end_turn", "stop_sequence"):
            assert status == "failed"


@given(
    st.sampled_from(
        [
            "end_turn",
            "stop_sequence",
            "retries_exhausted",
            "budget_reached",
            "cancelled",
            "requires_action",
        ]
    ),
    st.booleans(),
)
def test_string_and_object_forms_agree(kind: str, _: bool) -> None:
    assert classify_stop_reason(kind) == classify_stop_reason({"type": kind})


@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["id", "type", "processed_at", "stop_reason", "error"]),
            st.none()
            | st.text(max_size=30)
            | st.integers()
            | st.sampled_from(
                ["session.status_idle", "session.error", "session.status_terminated", T0]
            ),
            max_size=5,
        ),
        max_size=6,
    ),
    st.sampled_from(["idle", "running", "terminated", "rescheduling", "weird", None, 5]),
)
def test_hostile_events_never_crash(events: list[dict[str, Any]], status: object) -> None:
    verdict = classify_session(status, events, CREATED)
    if verdict is not None:
        assert verdict.status in ("completed", "failed")
        assert verdict.reason is None or verdict.reason in REASONS


def test_running_session_is_not_over() -> None:
    assert (
        classify_session(
            "running", [ev("session.status_idle", 10, stop_reason="end_turn")], CREATED
        )
        is None
    )
    assert classify_session("rescheduling", [], CREATED) is None


def test_idle_with_no_idle_since_the_run_has_not_started() -> None:
    before = {
        "type": "session.status_idle",
        "processed_at": "2026-06-14T07:59:00Z",
        "stop_reason": "end_turn",
    }
    assert classify_session("idle", [before], CREATED) is None
    assert classify_session("idle", [], CREATED) is None


def test_newest_idle_decides_and_first_idle_gives_the_duration() -> None:
    events = [
        ev("session.status_idle", 90, stop_reason={"type": "budget_reached"}),
        ev("session.status_idle", 30, stop_reason="end_turn"),
    ]
    verdict = classify_session("idle", events, CREATED)
    assert verdict is not None
    assert (verdict.status, verdict.reason) == ("failed", "budget_reached")
    assert verdict.duration_s == 30.0 and verdict.finished_at == CREATED + 90


def test_fatal_error_before_a_successful_idle_is_a_session_error() -> None:
    fatal = ev(
        "session.error", 20, error={"type": "billing_error", "retry_status": {"type": "exhausted"}}
    )
    retrying = ev(
        "session.error",
        10,
        error={"type": "model_overloaded_error", "retry_status": {"type": "retrying"}},
    )
    idle = ev("session.status_idle", 30, stop_reason="end_turn")
    verdict = classify_session("idle", [idle, fatal, retrying], CREATED)
    assert verdict is not None and (verdict.status, verdict.reason) == ("failed", "session_error")
    verdict = classify_session("idle", [idle, retrying], CREATED)
    assert verdict is not None and verdict.status == "completed"


def test_terminated_without_idle() -> None:
    term = ev("session.status_terminated", 40)
    verdict = classify_session("terminated", [term], CREATED)
    assert verdict is not None and (verdict.reason, verdict.duration_s) == ("terminated", None)
    assert verdict.finished_at == CREATED + 40
    fatal = ev("session.error", 39, error={"type": "x", "retry_status": {"type": "terminal"}})
    verdict = classify_session("terminated", [term, fatal], CREATED)
    assert verdict is not None and verdict.reason == "session_error"


def test_usage_in_both_documented_forms_and_absent_fields() -> None:
    tokens = parse_usage(
        {
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_read_input_tokens": 7,
            "cache_creation": {"ephemeral_5m_input_tokens": 1, "ephemeral_1h_input_tokens": 2},
            "list_cost": {"amount": "2500", "currency": "USD"},
        }
    )
    assert dict(tokens.tokens) == {"input": 10, "output": 5, "cache_read": 7, "cache_creation": 3}
    assert tokens.credits is None and tokens.list_cost_usd == 25.0
    credits = parse_usage({"total_credits": 5.94})
    assert credits.tokens == () and credits.credits == 5.94
    assert parse_usage({}).tokens == () and parse_usage(None).credits is None
    hostile = parse_usage(
        {
            "input_tokens": -1,
            "output_tokens": True,
            "total_credits": float("nan"),
            "list_cost": {"amount": "1e9", "currency": "USD"},
        }
    )
    assert hostile.tokens == () and hostile.credits is None and hostile.list_cost_usd is None


def test_session_object_is_parsed_tolerantly() -> None:
    info = parse_session({"id": "sess_1", "status": "idle", "stats": {"active_seconds": 0}})
    assert info is not None and info.active_seconds == 0 and info.usage.tokens == ()
    assert parse_session({"id": 3}) is None and parse_session([]) is None


RECORD: dict[str, Any] = {
    "id": "drun_1",
    "deployment_id": "dep_1",
    "created_at": T0,
    "session_id": "sess_1",
    "error": None,
}


def test_modes() -> None:
    record = parse_run(RECORD)
    status_bearing = parse_run({**RECORD, "status": "completed", "completed_at": T0})
    assert apply_mode(record, "auto").status == "running" and apply_mode(record, "auto").session_id
    never = apply_mode(record, "never")
    assert (
        never.status == "completed"
        and never.completed_at == never.created_at
        and never.session_id is None
    )
    assert apply_mode(status_bearing, "auto").session_id is None
    assert apply_mode(status_bearing, "auto").status == "completed"
    assert apply_mode(status_bearing, "always").status == "running"


def test_negative_zero_credits_read_as_zero() -> None:
    """prometheus_client writes -0.0 as "-0.0"; the cached body must not have two zeros."""
    import math

    credits = parse_usage({"total_credits": -0.0}).credits
    assert credits == 0.0 and math.copysign(1.0, credits) == 1.0
