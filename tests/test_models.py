"""Parsing of Run and Deployment JSON in both documented shapes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qoder_exporter.models import (
    MAX_LABEL_LENGTH,
    RUN_ERROR_TYPES,
    STATUSES,
    TRIGGERS,
    ParseError,
    clean_text,
    parse_deployment,
    parse_run,
    parse_timestamp,
    run_error_type,
    trigger_label,
)

G1_COMPLETED: dict[str, Any] = {
    "id": "drun_019ec55a68af73028afa5b87931cb2f3",
    "type": "deployment_run",
    "deployment_id": "dep_019ec55a2b687b3f94eee77dd77e4b2a",
    "agent": {"id": "agent_019ebb21ef8e7df6a559052c94875160", "type": "agent", "version": 1},
    "status": "completed",
    "error": None,
    "trigger_context": {"type": "manual"},
    "session_id": "sess_019ec55a68b37e1e8d660691af161ab4",
    "cas_run_extras": {
        "attempt": 1,
        "turn_id": "turn_019ec55a68b87a9dafad75c1554d1102",
        "started_at": "2026-06-14T08:58:17.165588Z",
    },
    "triggered_at": "2026-06-14T08:58:17.13334Z",
    "created_at": "2026-06-14T08:58:17.13334Z",
    "completed_at": "2026-06-14T08:58:34.433744Z",
    "duration_ms": 17268,
}

G2_FAILED: dict[str, Any] = {
    "id": "drun_019ec55a68af73028afa5b87931cb2f3",
    "type": "deployment_run",
    "deployment_id": "dep_019ec55a2b687b3f94eee77dd77e4b2a",
    "agent": {"id": "agent_019ebb21ef8e7df6a559052c94875160", "type": "agent", "version": 1},
    "created_at": "2026-06-14T08:58:17Z",
    "session_id": None,
    "error": {"type": "environment_archived_error", "message": "environment env_x is archived"},
    "trigger_context": {"type": "schedule", "scheduled_at": "2026-06-15T01:30:00Z"},
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-06-14T08:58:17Z", 1781427497.0),
        ("2026-06-14T08:58:17.1Z", 1781427497.1),
        ("2026-06-14T08:58:17.133340942Z", 1781427497.133340942),
        ("2026-06-14T10:58:17.5+02:00", 1781427497.5),
        ("2026-06-14t08:58:17z", 1781427497.0),
    ],
)
def test_timestamps_with_zero_to_nine_fraction_digits(text: str, expected: float) -> None:
    assert parse_timestamp(text) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2026-06-14",
        "2026-06-14T08:58:17",
        "2026-13-01T00:00:00Z",
        "x",
        "2026-06-14T08:58:17.1234567890Z",
    ],
)
def test_bad_timestamps_are_rejected(text: str) -> None:
    with pytest.raises(ParseError):
        parse_timestamp(text)


def test_g1_completed_run() -> None:
    run = parse_run(G1_COMPLETED)
    assert run.status == "completed"
    assert run.duration_s == pytest.approx(17.268)
    assert run.completed_at == pytest.approx(1781427514.433744)
    assert run.started_at == pytest.approx(1781427497.165588)
    assert run.error_type is None
    assert run.terminal


def test_g1_running_run_omits_completion_keys() -> None:
    data = {k: v for k, v in G1_COMPLETED.items() if k not in ("completed_at", "duration_ms")}
    data["status"] = "running"
    run = parse_run(data)
    assert run.status == "running" and run.completed_at is None and run.duration_s is None
    assert not run.terminal


def test_g2_record_with_error_is_a_failed_run() -> None:
    run = parse_run(G2_FAILED)
    assert run.status == "failed"
    assert run.error_type == "environment_archived_error"
    assert run.duration_s is None
    assert run.trigger == "schedule"


def test_g2_record_with_session_is_running_until_its_session_says() -> None:
    data = dict(G2_FAILED, error=None, session_id="sess_019ec55a68b37e1e8d660691af161ab4")
    run = parse_run(data)
    assert run.status == "running" and not run.has_status
    assert run.session_id == "sess_019ec55a68b37e1e8d660691af161ab4"
    assert run.completed_at is None


def test_g1_run_keeps_its_session_id_and_status() -> None:
    run = parse_run(G1_COMPLETED)
    assert run.has_status and run.session_id == "sess_019ec55a68b37e1e8d660691af161ab4"


def test_unusable_session_id_is_not_followed() -> None:
    data = dict(G2_FAILED, error=None, session_id="sess\n" + "x" * 200)
    with pytest.raises(ParseError, match=r"run\.status"):
        parse_run(data)


def test_statuses_are_shared_not_one_string_per_record() -> None:
    """The store keeps each tracked run's status: all runs share one string per status."""
    for status in STATUSES:
        # json.loads makes a new string per record, as a page from the API does.
        run = parse_run(json.loads(json.dumps(dict(G1_COMPLETED, status=status))))
        assert run.status is STATUSES[STATUSES.index(status)]


def test_unknown_fields_are_ignored() -> None:
    assert parse_run(dict(G1_COMPLETED, brand_new_field={"x": 1})).status == "completed"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"id": None}, "run.id"),
        ({"deployment_id": 5}, "run.deployment_id"),
        ({"created_at": "yesterday"}, "run.created_at"),
        ({"status": "exploded"}, "run.status"),
        ({"status": ["running"]}, "run.status"),
        ({"duration_ms": "17s"}, "run.duration_ms"),
        ({"duration_ms": -1}, "run.duration_ms"),
        ({"completed_at": 12}, "run.completed_at"),
        ({"error": "boom"}, "run.error"),
    ],
)
def test_bad_run_fields_are_named(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ParseError) as err:
        parse_run(dict(G1_COMPLETED, **change))
    assert err.value.field == field


def test_g2_record_without_outcome_is_rejected() -> None:
    with pytest.raises(ParseError, match=r"run\.status"):
        parse_run(dict(G2_FAILED, error=None, session_id=None))


def test_not_an_object() -> None:
    with pytest.raises(ParseError, match="run"):
        parse_run(["not", "a", "run"])


def test_deployment_from_docs_example() -> None:
    dep = parse_deployment(
        {
            "id": "dep_019ec556114c78f8b60ee34fcb98bf59",
            "name": "daily-status-report",
            "agent": {"id": "agent_x", "type": "agent", "version": 1},
            "status": "paused",
            "paused_reason": {"type": "manual"},
            "schedule": {"type": "cron", "expression": "30 9 * * 1-5", "timezone": "Asia/Shanghai"},
            "metadata": {
                "cas_config": {
                    "stats": {"consecutive_failures": 2, "next_trigger_at": "2026-06-15T01:30:00Z"}
                }
            },
            "created_at": "2026-06-14T08:53:32Z",
        }
    )
    assert dep.name == "daily-status-report"
    assert dep.status == "paused" and dep.paused_reason == "manual"
    assert dep.schedule == "30 9 * * 1-5 (Asia/Shanghai)"
    assert dep.consecutive_failures == 2
    assert dep.next_trigger_at == pytest.approx(parse_timestamp("2026-06-15T01:30:00Z"))


def test_minimal_deployment_and_g2_string_metadata() -> None:
    dep = parse_deployment({"id": "dep_1", "metadata": {"team": "sre"}, "schedule": None})
    assert dep.name == "dep_1" and dep.schedule == "manual" and dep.status == "unknown"
    assert dep.consecutive_failures is None


def test_deployment_without_id_is_rejected() -> None:
    with pytest.raises(ParseError, match=r"deployment\.id"):
        parse_deployment({"name": "x"})


# --- hostile values (issue 15) ---------------------------------------------------------


@pytest.mark.parametrize(
    "bad_id",
    [
        "dep_x/../../../../admin/keys",
        "dep_y?after_id=1",
        "dep_z#frag",
        "dep %20",
        "d\ud800",
        "x" * 129,
    ],
)
def test_ids_that_do_not_fit_a_path_segment_are_rejected(bad_id: str) -> None:
    with pytest.raises(ParseError, match=r"deployment\.id"):
        parse_deployment({"id": bad_id})
    with pytest.raises(ParseError, match=r"run\.deployment_id"):
        parse_run({**G1_COMPLETED, "deployment_id": bad_id})
    with pytest.raises(ParseError, match=r"run\.id"):
        parse_run({**G1_COMPLETED, "id": bad_id})


def test_lone_surrogates_become_replacement_characters() -> None:
    # json.loads reads "\\ud800" into a str that cannot be encoded as UTF-8.
    raw = json.loads(
        '{"id": "dep_1", "name": "a\\ud800b", "status": "act\\udfffive",'
        ' "agent": {"id": "ag\\ud800"}, "paused_reason": {"type": "\\ud800"},'
        ' "schedule": {"expression": "0 * * * *", "timezone": "\\ud800"}}'
    )
    dep = parse_deployment(raw)
    for value in (dep.name, dep.status, dep.agent_id, dep.paused_reason, dep.schedule):
        assert value is not None
        value.encode("utf-8")  # raised UnicodeEncodeError before
    assert dep.name.startswith("a") and dep.name.endswith("b") and "\ufffd" in dep.name
    assert clean_text("plain") == "plain"


def test_label_values_from_the_api_are_capped() -> None:
    long = "x" * 10_000
    dep = parse_deployment(
        {
            "id": "dep_1",
            "name": long,
            "status": long,
            "agent": {"id": long},
            "paused_reason": {"type": long},
            "schedule": {"expression": long, "timezone": long},
        }
    )
    for value in (dep.name, dep.status, dep.agent_id, dep.paused_reason, dep.schedule):
        assert value is not None and len(value) <= MAX_LABEL_LENGTH


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        ("environment_archived_error", "environment_archived_error"),
        ("session_rate_limited_error", "session_rate_limited_error"),
        ("unknown_error", "unknown_error"),
        ("brand_new_error", "other"),
        ("x" * 10_000, "other"),
        ("a\ud800", "other"),
        ("", "unknown_error"),
        (None, "unknown_error"),
        (7, "unknown_error"),
    ],
)
def test_run_error_types_are_a_bounded_set(raw: object, label: str) -> None:
    run = parse_run({**G2_FAILED, "error": {"type": raw, "message": "m"}})
    assert run.error_type == label


@pytest.mark.parametrize(
    ("raw", "label"),
    [("manual", "manual"), ("schedule", "schedule"), ("retry", "retry"), ("x" * 999, "other")],
)
def test_trigger_types_are_a_bounded_set(raw: str, label: str) -> None:
    run = parse_run({**G1_COMPLETED, "trigger_context": {"type": raw}})
    assert run.trigger == label


@pytest.mark.parametrize("field", ["created_at", "completed_at"])
def test_times_beyond_the_api_clock_are_refused(field: str) -> None:
    not_after = parse_timestamp("2026-06-14T09:00:00Z")
    assert parse_run(G1_COMPLETED, not_after=not_after).id == G1_COMPLETED["id"]
    with pytest.raises(ParseError, match=field):
        parse_run({**G1_COMPLETED, field: "2099-01-01T00:00:00Z"}, not_after=not_after)


def test_a_deployment_created_in_the_future_has_no_creation_time() -> None:
    doc = {"id": "dep_1", "created_at": "2099-01-01T00:00:00Z"}
    assert (
        parse_deployment(doc, not_after=parse_timestamp("2026-06-14T09:00:00Z")).created_at is None
    )
    assert parse_deployment(doc).created_at is not None


def test_run_attempt_and_trigger_time() -> None:
    run = parse_run(G1_COMPLETED)
    assert run.attempt == 1
    assert run.triggered_at == pytest.approx(parse_timestamp("2026-06-14T08:58:17.13334Z"))
    g2 = parse_run(G2_FAILED)
    assert g2.attempt is None and g2.triggered_at is None


@pytest.mark.parametrize("attempt", [True, -1, 2**60, "2", 1.5, None])
def test_unusable_attempt_is_unknown_not_an_error(attempt: object) -> None:
    extras = {**G1_COMPLETED["cas_run_extras"], "attempt": attempt}
    run = parse_run({**G1_COMPLETED, "cas_run_extras": extras, "triggered_at": "yesterday"})
    assert run.attempt is None and run.triggered_at is None


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        ("schedule", "schedule"),
        ("manual", "manual"),
        ("retry", "retry"),
        ("webhook", "other"),
        ("", "other"),
        (None, "other"),
        ("x" * 10_000, "other"),
    ],
)
def test_trigger_label_is_bounded(raw: str | None, label: str) -> None:
    assert trigger_label(raw) == label
    assert label in TRIGGERS


def test_run_error_type_is_bounded() -> None:
    assert run_error_type("organization_disabled_error") == "organization_disabled_error"
    assert run_error_type("brand_new_error") == "other"
    assert run_error_type(None) == "unknown_error"
    assert len(RUN_ERROR_TYPES) == len(set(RUN_ERROR_TYPES)) == 17


def test_deployment_schedule_retry_and_archive_fields() -> None:
    dep = parse_deployment(
        {
            "id": "dep_1",
            "status": "active",
            "archived_at": "2026-06-14T09:00:00Z",
            "agent": {"id": "agent_x", "type": "agent", "version": 7},
            "schedule": {
                "type": "cron",
                "expression": "30 * * * *",
                "timezone": "UTC",
                "upcoming_runs_at": ["2026-06-15T02:30:00Z", "bad", "2026-06-15T01:30:00Z"],
            },
            "metadata": {
                "cas_config": {
                    "config": {"max_retries": 2},
                    "stats": {"next_trigger_at": "2026-06-15T03:30:00Z"},
                }
            },
        }
    )
    assert dep.archived and dep.agent_version == "7" and dep.max_retries == 2
    first, second = parse_timestamp("2026-06-15T01:30:00Z"), parse_timestamp("2026-06-15T02:30:00Z")
    assert dep.upcoming_runs_at == (first, second)  # sorted, the bad entry dropped
    assert dep.next_trigger == first  # upcoming_runs_at before stats.next_trigger_at
    assert not dep.manual


def test_deployment_without_schedule_extras() -> None:
    dep = parse_deployment(
        {
            "id": "dep_1",
            "archived_at": None,
            "agent": {"version": {"not": "a version"}},
            "schedule": {"expression": "0 * * * *", "upcoming_runs_at": "soon"},
            "metadata": {"cas_config": {"config": {"max_retries": "3"}, "stats": {}}},
        }
    )
    assert not dep.archived and dep.agent_version == "" and dep.max_retries is None
    assert dep.upcoming_runs_at == () and dep.next_trigger is None
    manual = parse_deployment({"id": "dep_2", "schedule": None})
    assert manual.manual and manual.next_trigger is None


def test_upcoming_runs_at_is_bounded() -> None:
    many = [f"2026-06-15T01:{m:02d}:00Z" for m in range(60)]
    dep = parse_deployment(
        {"id": "dep_1", "schedule": {"expression": "* * * * *", "upcoming_runs_at": many}}
    )
    assert len(dep.upcoming_runs_at) == 10
