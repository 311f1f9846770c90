"""Client pieces that need no server: Retry-After and Date parsing."""

from __future__ import annotations

import pytest

from qoder_exporter.client import (
    MAX_RETRY_AFTER,
    APIError,
    InvalidResponseError,
    TransportError,
    error_kind,
    parse_http_date,
    parse_retry_after,
)

SERVER_NOW = 1781395200.0  # Sun, 14 Jun 2026 00:00:00 GMT


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("-5", 0.0),  # never negative
        ("999999", MAX_RETRY_AFTER),  # capped: longer waits are the poller's call
        ("Sun, 14 Jun 2026 00:02:00 GMT", 120.0),  # against the server's Date, not ours
        ("Sat, 13 Jun 2026 23:59:00 GMT", 0.0),  # already past
        ("soon", None),
        ("nan", None),  # float() reads it, and min/max pass a NaN straight through
        ("-nan", None),
        ("inf", MAX_RETRY_AFTER),
        ("-inf", 0.0),
        ("Sun, 99 Foo 2026 00:02:00 GMT", None),
    ],
)
def test_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, SERVER_NOW) == expected


def test_http_date() -> None:
    assert parse_http_date("Sun, 14 Jun 2026 00:00:00 GMT") == SERVER_NOW
    assert parse_http_date("not a date") is None
    assert parse_http_date(None) is None


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (TransportError("t", endpoint="e", kind="timeout"), "timeout"),
        (InvalidResponseError("i", endpoint="e"), "invalid_response"),
        (InvalidResponseError("i", endpoint="e", kind="response_too_large"), "response_too_large"),
        (
            APIError("a", status=404, endpoint="e", error_type="not_found_error", request_id=None),
            "not_found_error",
        ),
        # Well-formed but undocumented: one label per new name would have no bound.
        (
            APIError("a", status=400, endpoint="e", error_type="made_up_error", request_id=None),
            "other",
        ),
        (APIError("a", status=400, endpoint="e", error_type="x" * 500, request_id=None), "other"),
    ],
)
def test_error_kinds_are_a_bounded_set(exc: Exception, kind: str) -> None:
    assert error_kind(exc) == kind  # type: ignore[arg-type]
