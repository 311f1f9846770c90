"""Property-based tests: bad input never crashes the parsers, the config loader or the poller.

Every rejection is a ParseError / ConfigError naming the field (key path) at fault, valid
input round-trips, and arbitrary API documents only ever count as invalid records.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from qoder_exporter.collector import Exposition
from qoder_exporter.config import (
    _TOP_KEYS,
    Config,
    ConfigError,
    config_from_dict,
    format_duration,
    load_config,
)
from qoder_exporter.models import (
    MAX_CLOCK_SKEW,
    STATUSES,
    Deployment,
    ParseError,
    Run,
    parse_deployment,
    parse_run,
    run_error_type,
)
from qoder_exporter.poller import Poller

pytestmark = pytest.mark.system  # see [tool.pytest.ini_options] markers

# Moderate example counts keep this module well under 30 s; CI gets the same, derandomized
# (a fixed seed), so a failure there is reproducible.
settings.register_profile(
    "properties",
    max_examples=150,
    deadline=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile("properties")

NOW = 1781395200.0  # 2026-06-14T00:00:00Z

# ---------------------------------------------------------------- JSON strategies

# Integers beyond what a float holds: JSON allows them (regressions at the end of the module).
_ints = st.integers(min_value=-(2**1100), max_value=2**1100)
_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    _ints,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)

# Timestamps: what the API plausibly sends, and what it should not.
_bad_timestamps = st.one_of(
    json_values,
    st.sampled_from(
        [
            "",
            "2026-06-14",
            "2026-06-14T00:00:00",  # no zone
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-06-14T24:00:00Z",
            "2026-06-14T00:00:00.1234567890Z",  # ten digits
            "0000-01-01T00:00:00Z",
            "2026-06-14T00:00:00+2:00",
            "yesterday",
        ]
    ),
)


@st.composite
def timestamps(draw: st.DrawFn) -> tuple[str, float]:
    """An RFC 3339 timestamp with 0-9 fractional digits and a zone; and its unix time."""
    sec = draw(st.integers(min_value=946684800, max_value=4102444800))  # 2000..2100
    digits = draw(st.integers(min_value=0, max_value=9))
    frac = draw(st.integers(min_value=0, max_value=10**digits - 1)) if digits else 0
    offset_min = draw(st.sampled_from([0, 0, 60, -300, 330, 14 * 60, -12 * 60]))
    local = time.gmtime(sec + offset_min * 60)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", local)
    if digits:
        text += "." + str(frac).rjust(digits, "0")
    if offset_min == 0:
        text += draw(st.sampled_from(["Z", "z", "+00:00"]))
    else:
        sign = "+" if offset_min > 0 else "-"
        hours, minutes = divmod(abs(offset_min), 60)
        text += f"{sign}{hours:02d}:{minutes:02d}"
    if draw(st.booleans()):
        text = text.replace("T", "t", 1)
    return text, sec + (frac / 10**digits if digits else 0.0)


_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=24).map(
    lambda s: "x" + s
)
_extra = st.dictionaries(
    st.text(min_size=1, max_size=8).map(lambda k: "x_" + k), json_values, max_size=3
)

# ---------------------------------------------------------------- runs

RUN_FIELDS = {
    "run",
    "run.id",
    "run.deployment_id",
    "run.created_at",
    "run.status",
    "run.error",
    "run.completed_at",
    "run.duration_ms",
    "run.cas_run_extras.started_at",
}


def _check_run(run: Run) -> None:
    assert run.status in STATUSES
    assert math.isfinite(run.created_at)
    assert run.duration_s is None or run.duration_s >= 0
    assert run.error_type is None or run.status == "failed"
    assert isinstance(run.id, str) and run.id
    assert isinstance(run.deployment_id, str) and run.deployment_id


def _check_parse_error(exc: ParseError, fields: set[str]) -> None:
    assert exc.field in fields, exc.field
    assert str(exc).startswith(exc.field + ": "), str(exc)


_run_keys = st.sampled_from(
    [
        "id",
        "deployment_id",
        "created_at",
        "status",
        "error",
        "completed_at",
        "duration_ms",
        "cas_run_extras",
        "session_id",
        "trigger_context",
        "other",
    ]
)
_shaped_runs = st.dictionaries(_run_keys, json_values, max_size=11)


@st.composite
def valid_runs(draw: st.DrawFn) -> tuple[dict[str, Any], Run]:
    """A run in either documented shape, and the Run it must parse into."""
    run_id, dep_id = draw(_ids), draw(_ids)
    created_text, created = draw(timestamps())
    trigger = draw(st.sampled_from([None, "manual", "schedule", "retry"]))
    doc: dict[str, Any] = {"id": run_id, "type": "deployment_run", "deployment_id": dep_id}
    doc["created_at"] = created_text
    if trigger is not None:
        doc["trigger_context"] = {"type": trigger}
    doc.update(draw(_extra))
    error_type = draw(st.one_of(st.none(), st.text(min_size=1, max_size=30)))
    if draw(st.booleans()):  # G1: status-bearing
        status = draw(st.sampled_from(STATUSES))
        doc["status"] = status
        completed = started = duration = None
        if status in ("running", "completed", "failed"):
            started_text, started = draw(timestamps())
            doc["cas_run_extras"] = {"attempt": 1, "started_at": started_text}
        if status in ("completed", "failed", "skipped") and draw(st.booleans()):
            completed_text, completed = draw(timestamps())
            doc["completed_at"] = completed_text
        if status in ("completed", "failed") and draw(st.booleans()):
            duration_ms = draw(st.integers(min_value=0, max_value=10**10) | st.floats(0, 1e9))
            doc["duration_ms"] = duration_ms
            duration = duration_ms / 1000.0
        error = None
        if status == "failed" and draw(st.booleans()):
            doc["error"] = {"type": error_type, "message": "m"}
            error = run_error_type(error_type)  # documented types, else "other"
        else:
            doc["error"] = None
        expected = Run(
            run_id, dep_id, created, status, completed, duration, started, error, trigger
        )
    else:  # G2: record-only: failed at once, or running until its session says
        if draw(st.booleans()):
            doc["session_id"] = "sess_" + draw(_ids)
            doc["error"] = None
            expected = Run(run_id, dep_id, created, "running", None, None, None, None, trigger)
        else:
            doc["session_id"] = None
            doc["error"] = {"type": error_type, "message": "m"}
            error = run_error_type(error_type)  # documented types, else "other"
            expected = Run(run_id, dep_id, created, "failed", None, None, None, error, trigger)
    return doc, expected


def _assert_same_run(got: Run, want: Run) -> None:
    for name in ("id", "deployment_id", "status", "error_type", "trigger"):
        assert getattr(got, name) == getattr(want, name), name
    for name in ("created_at", "completed_at", "started_at", "duration_s"):
        g, w = getattr(got, name), getattr(want, name)
        assert (g is None) == (w is None), name
        if w is not None:
            assert g == pytest.approx(w, abs=1e-6), name


@PROFILE
@given(doc=st.one_of(json_values, _shaped_runs))
def test_any_json_is_a_run_or_a_parse_error_naming_the_field(doc: Any) -> None:
    try:
        run = parse_run(doc)
    except ParseError as exc:
        _check_parse_error(exc, RUN_FIELDS)
    else:
        _check_run(run)


@PROFILE
@given(case=valid_runs())
def test_valid_runs_round_trip(case: tuple[dict[str, Any], Run]) -> None:
    doc, expected = case
    _assert_same_run(parse_run(doc), expected)
    # Through the wire format too: JSON text and back.
    _assert_same_run(parse_run(json.loads(json.dumps(doc))), expected)


# One field broken at a time: (field, bad values, the field the error must name).
RUN_BREAKAGES: list[tuple[str, list[Any], str]] = [
    ("id", [None, "", 5, [], {}, True], "run.id"),
    ("deployment_id", [None, "", 7.5, ["dep"], {}], "run.deployment_id"),
    ("created_at", [None, 1781395200, True, {}], "run.created_at"),
    ("status", ["exploded", "COMPLETED", 3, ["running"], {}, ""], "run.status"),
    ("error", ["boom", 5, ["x"], True], "run.error"),
    ("completed_at", ["soon", 5, [], {}], "run.completed_at"),
    ("duration_ms", ["12", True, -1, -0.5, [], {}], "run.duration_ms"),
]


@st.composite
def broken_runs(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A valid run (either shape) with exactly one field broken or, if required, missing."""
    doc, _ = draw(valid_runs())
    field, bad, named = draw(st.sampled_from(RUN_BREAKAGES))
    if field in ("created_at", "completed_at"):
        value = draw(st.sampled_from(bad) | _bad_timestamps.filter(lambda v: v is not None))
    else:
        value = draw(st.sampled_from(bad))
    if field in ("id", "deployment_id", "created_at") and draw(st.booleans()):
        del doc[field]
    else:
        doc[field] = value
    return doc, named


@PROFILE
@given(case=broken_runs())
def test_a_broken_run_field_is_named_in_the_rejection(case: tuple[dict[str, Any], str]) -> None:
    doc, named = case
    try:
        parse_run(doc)
    except ParseError as exc:
        assert exc.field == named, (exc.field, named, doc)
        assert str(exc).startswith(named + ": ")
    else:
        pytest.fail(f"accepted a run with a broken {named}: {doc!r}")


def test_started_at_inside_cas_run_extras_is_named_by_its_path() -> None:
    doc = {
        "id": "r",
        "deployment_id": "d",
        "status": "running",
        "created_at": "2026-06-14T00:00:00Z",
        "cas_run_extras": {"started_at": "later"},
    }
    with pytest.raises(ParseError) as info:
        parse_run(doc)
    assert info.value.field == "run.cas_run_extras.started_at"


# ---------------------------------------------------------------- deployments

_dep_keys = st.sampled_from(
    ["id", "name", "status", "agent", "schedule", "paused_reason", "metadata", "created_at"]
)
_shaped_deployments = st.dictionaries(_dep_keys, json_values, max_size=8) | st.fixed_dictionaries(
    {
        "id": _ids,
        "metadata": st.fixed_dictionaries(
            {"cas_config": st.fixed_dictionaries({"stats": json_values})}
        ),
    }
)


@PROFILE
@given(doc=st.one_of(json_values, _shaped_deployments))
def test_any_json_is_a_deployment_or_a_parse_error_naming_the_field(doc: Any) -> None:
    try:
        dep = parse_deployment(doc)
    except ParseError as exc:
        _check_parse_error(exc, {"deployment", "deployment.id"})
    else:
        assert isinstance(dep, Deployment)
        for name in ("id", "name", "status", "agent_id", "schedule"):
            assert isinstance(getattr(dep, name), str), name
        assert dep.consecutive_failures is None or isinstance(dep.consecutive_failures, int)


@st.composite
def valid_deployments(draw: st.DrawFn) -> tuple[dict[str, Any], Deployment]:
    dep_id = "dep_" + draw(_ids)
    name = draw(st.text(min_size=1, max_size=30))
    status = draw(st.sampled_from(["active", "paused"]))
    agent_id = "agent_" + draw(_ids)
    created_text, created = draw(timestamps())
    doc: dict[str, Any] = {
        "id": dep_id,
        "type": "deployment",
        "name": name,
        "status": status,
        "agent": {"id": agent_id, "type": "agent", "version": 1},
        "created_at": created_text,
        **draw(_extra),
    }
    schedule = "manual"
    if draw(st.booleans()):
        expression = draw(st.sampled_from(["*/5 * * * *", "0 0 * * *", "30 1 * * 1-5"]))
        tz = draw(st.sampled_from(["UTC", "Asia/Shanghai", ""]))
        doc["schedule"] = {"type": "cron", "expression": expression, "timezone": tz}
        schedule = f"{expression} ({tz})" if tz else expression
    else:
        doc["schedule"] = None
    reason = None
    if status == "paused":
        reason = draw(st.sampled_from(["manual", "error"]))
        doc["paused_reason"] = {"type": reason}
    stats: dict[str, Any] = {}
    failures = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=10**6)))
    if failures is not None:
        stats["consecutive_failures"] = failures
    next_at = None
    if draw(st.booleans()):
        next_text, next_at = draw(timestamps())
        stats["next_trigger_at"] = next_text
    doc["metadata"] = {"cas_config": {"stats": stats}}
    expected = Deployment(
        dep_id, name, status, agent_id, schedule, reason, failures, next_at, created
    )
    return doc, expected


@PROFILE
@given(case=valid_deployments())
def test_valid_deployments_round_trip(case: tuple[dict[str, Any], Deployment]) -> None:
    doc, expected = case
    got = parse_deployment(json.loads(json.dumps(doc)))
    for name in ("id", "name", "status", "agent_id", "schedule", "paused_reason"):
        assert getattr(got, name) == getattr(expected, name), name
    assert got.consecutive_failures == expected.consecutive_failures
    for name in ("next_trigger_at", "created_at"):
        g, w = getattr(got, name), getattr(expected, name)
        assert (g is None) == (w is None), name
        if w is not None:
            assert g == pytest.approx(w, abs=1e-6)


def test_a_deployment_without_an_id_is_rejected_by_name() -> None:
    for doc in ({}, {"id": ""}, {"id": 5}, {"name": "x"}):
        with pytest.raises(ParseError) as info:
            parse_deployment(doc)
        assert info.value.field == "deployment.id"
        assert str(info.value).startswith("deployment.id: ")


# ---------------------------------------------------------------- config

TOP_KEYS = _TOP_KEYS
_KEY_PATH = re.compile(r"((?:[A-Za-z_]\w*|\[.+?\])(?:\.[A-Za-z_]\w*|\[.+?\])*): \S")
_config_keys = st.sampled_from(
    [*TOP_KEYS, "url", "token", "timeout", "max_retries", "requests_per_second", "id", "x"]
)
_config_any = st.recursive(
    _json_scalars | st.sampled_from(["30s", "5m", "24h", "dep_abc", "${NOPE}", "$$", "1h30m"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_config_keys, inner, max_size=5),
    max_leaves=20,
)


def _check_config_error(exc: ConfigError, source: str | None, *, one_line: bool = True) -> None:
    """Every error names what is at fault: the file, or a key path."""
    assert exc.errors
    for line in exc.errors:
        if one_line:
            assert "\n" not in line, line
        if source is not None and line.startswith(source):
            continue
        match = _KEY_PATH.match(line)
        assert match, line
        root = re.split(r"[.\[]", match.group(1), maxsplit=1)[0]
        unknown = "unknown key" in line
        assert root in TOP_KEYS or unknown or root == "", line


@PROFILE
@given(doc=_config_any)
def test_any_document_is_a_config_or_a_config_error_with_key_paths(doc: object) -> None:
    try:
        config = config_from_dict(doc, env={})
    except ConfigError as exc:
        _check_config_error(exc, "<top level>")
    else:
        assert isinstance(config, Config)


_yaml_texts = st.one_of(
    st.text(max_size=200),
    _config_any.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    st.sampled_from(
        [
            "api: {token: x}\napi: {token: y}\n",  # duplicate key
            "a: &a [*a]\n",
            "!!python/object:os.system {}\n",
            "deployments: [dep_a]\n\tbad: tab\n",
            "poll_interval: 1e999\n",
            "page_size: 99999999999999999999999999999999\n",
            "lookback: 2001-02-30\n",
            "--- \n...\n",
            "\ufeffapi: {token: t}\ndiscover: true\n",
        ]
    ),
)


@PROFILE
@given(text=_yaml_texts)
def test_any_config_file_loads_or_fails_with_a_config_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "config.yaml")
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as handle:
            handle.write(text)
        try:
            config = load_config(path, env={})
        except ConfigError as exc:
            _check_config_error(exc, path)
        else:
            assert isinstance(config, Config)


VALID_CONFIG: dict[str, Any] = {
    "api": {
        "url": "http://127.0.0.1:9/api/v1/cloud",
        "token": "pt-abc",
        "timeout": "5s",
        "max_retries": 2,
        "requests_per_second": 10,
    },
    "deployments": ["dep_a", {"id": "dep_b", "lookback": "2h"}],
    "poll_interval": "60s",
    "lookback": "24h",
    "page_size": 100,
    "concurrency": 4,
    "duration_buckets": [1, 10, 100],
}

# (key path as a tuple, a bad value, the key path the error must start with)
CONFIG_BREAKAGES: list[tuple[tuple[Any, ...], Any, str]] = [
    (("api", "url"), 5, "api.url"),
    (("api", "url"), "ftp://example.com", "api.url"),
    (("api", "url"), "not a url", "api.url"),
    (("api", "token"), 5, "api.token"),
    (("api", "token"), "", "api.token"),
    (("api", "token"), "has space", "api.token"),
    (("api", "token"), "${UNSET_VAR}", "api.token"),
    (("api", "timeout"), "fast", "api.timeout"),
    (("api", "timeout"), -1, "api.timeout"),
    (("api", "timeout"), True, "api.timeout"),
    (("api", "max_retries"), -1, "api.max_retries"),
    (("api", "max_retries"), 1.5, "api.max_retries"),
    (("api", "max_retries"), "x", "api.max_retries"),
    (("api", "requests_per_second"), 0, "api.requests_per_second"),
    (("api", "requests_per_second"), 1001, "api.requests_per_second"),
    (("api", "requests_per_second"), "many", "api.requests_per_second"),
    (("api", "tokn"), "x", "api.tokn"),
    (("poll_interval",), "often", "poll_interval"),
    (("poll_interval",), "0.5s", "poll_interval"),
    (("lookback",), "1d2h3x", "lookback"),
    (("lookback",), "30s", "lookback"),  # shorter than poll_interval
    (("page_size",), 0, "page_size"),
    (("page_size",), 1001, "page_size"),
    (("concurrency",), 65, "concurrency"),
    (("concurrency",), "4", "concurrency"),
    (("duration_buckets",), [], "duration_buckets"),
    (("duration_buckets",), "1,2", "duration_buckets"),
    (("duration_buckets", 1), 0.5, "duration_buckets[1]"),
    (("duration_buckets", 2), "x", "duration_buckets[2]"),
    (("deployments",), "dep_a", "deployments"),
    (("deployments", 0), 5, "deployments[0]"),
    (("deployments", 0), "not-a-dep", "deployments[0]"),
    (("deployments", 1, "lookback"), "soon", "deployments[1].lookback"),
    (("deployments", 1, "lookback"), "10s", "deployments[1].lookback"),
    (("deployments", 1, "id"), "dep_a", "deployments[1].id"),  # duplicate
    (("deployments", 1, "colour"), "red", "deployments[1].colour"),
    (("discover",), "yes", "discover"),
    (("discover",), True, "discover"),  # both deployments and discover
    (("state_file",), 5, "state_file"),
    (("polling",), "60s", "polling"),
]


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


@PROFILE
@given(breakages=st.lists(st.sampled_from(CONFIG_BREAKAGES), min_size=1, max_size=4))
def test_every_broken_config_key_is_named(
    breakages: list[tuple[tuple[Any, ...], Any, str]],
) -> None:
    # One breakage per key; "all errors reported at once" means each one is named.
    by_key = {path: (path, bad, named) for path, bad, named in breakages}
    # Rules across fields are only checked when both sides are valid on their own.
    if ("lookback",) in by_key and ("poll_interval",) in by_key:
        del by_key[("lookback",)]
    if ("discover",) in by_key and by_key[("discover",)][1] is True:
        by_key = {k: v for k, v in by_key.items() if k[0] != "deployments"}
    if ("poll_interval",) in by_key:
        by_key.pop(("deployments", 1, "lookback"), None)
    if ("deployments", 0) in by_key:
        by_key.pop(("deployments", 1, "id"), None)  # no longer a duplicate of it
    for whole in (("duration_buckets",), ("deployments",)):
        if whole in by_key:
            by_key = {k: v for k, v in by_key.items() if k == whole or k[0] != whole[0]}
    doc = json.loads(json.dumps(VALID_CONFIG))
    for path, bad, _ in by_key.values():
        _set(doc, path, bad)
    with pytest.raises(ConfigError) as info:
        config_from_dict(doc, env={})
    for _, _, named in by_key.values():
        assert any(line.startswith(named + ": ") for line in info.value.errors), (
            named,
            info.value.errors,
        )
    assert "pt-abc" not in str(info.value)


_durations_ms = st.integers(min_value=1, max_value=30 * 86_400_000)


@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, Any]:
    poll_ms = draw(st.integers(min_value=1000, max_value=3_600_000))
    lookback_ms = draw(st.integers(min_value=poll_ms, max_value=30 * 86_400_000))
    token = draw(
        st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)
    )
    doc: dict[str, Any] = {
        "api": {
            "url": draw(
                st.sampled_from(
                    [
                        "https://api.qoder.com/api/v1/cloud",
                        "https://api.qoder.com.cn/api/v1/cloud",
                        "http://127.0.0.1:8080/api/v1/cloud",
                        "http://[::1]:9/x",
                    ]
                )
            ),
            # ${VAR} expansion applies to the token too: a literal $ is written $$.
            "token": token.replace("$", "$$"),
            "timeout": format_duration(draw(_durations_ms) / 1000),
            "max_retries": draw(st.integers(min_value=0, max_value=10)),
            "requests_per_second": draw(
                st.floats(min_value=0.001, max_value=1000)
                | st.integers(min_value=1, max_value=1000)
            ),
        },
        "poll_interval": format_duration(poll_ms / 1000),
        "lookback": format_duration(lookback_ms / 1000),
        "page_size": draw(st.integers(min_value=1, max_value=1000)),
        "concurrency": draw(st.integers(min_value=1, max_value=64)),
        "duration_buckets": sorted(
            draw(
                st.sets(
                    st.floats(min_value=0.001, max_value=1e6) | st.integers(1, 10**6),
                    min_size=1,
                    max_size=20,
                ).map(lambda s: {float(x) for x in s})
            )
        ),
    }
    if draw(st.booleans()):
        doc["discover"] = True
    else:
        ids = draw(st.lists(_ids.map(lambda s: "dep_" + s), min_size=1, max_size=5, unique=True))
        items: list[Any] = []
        for dep_id in ids:
            if draw(st.booleans()):
                items.append(dep_id)
            else:
                own = draw(st.integers(min_value=poll_ms, max_value=30 * 86_400_000))
                items.append({"id": dep_id, "lookback": format_duration(own / 1000)})
        doc["deployments"] = items
    return {"doc": doc, "token": token}


@PROFILE
@given(case=valid_configs())
def test_valid_configs_round_trip_through_yaml(case: dict[str, Any]) -> None:
    doc, token = case["doc"], case["token"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "config.yaml")
        with open(path, "w", encoding="utf-8") as handle:
            yaml.safe_dump(doc, handle)
        config = load_config(path, env={})
    api = doc["api"]
    assert config.api.url == api["url"]
    assert config.api.token.reveal() == token
    assert format_duration(config.api.timeout) == api["timeout"]
    assert config.api.max_retries == api["max_retries"]
    assert config.api.requests_per_second == float(api["requests_per_second"])
    assert format_duration(config.poll_interval) == doc["poll_interval"]
    assert format_duration(config.lookback) == doc["lookback"]
    assert config.page_size == doc["page_size"]
    assert config.concurrency == doc["concurrency"]
    assert config.duration_buckets == tuple(doc["duration_buckets"])
    assert config.discover == bool(doc.get("discover"))
    listed = doc.get("deployments", [])
    assert [d.id for d in config.deployments] == [
        d if isinstance(d, str) else d["id"] for d in listed
    ]
    for item, dep in zip(listed, config.deployments, strict=True):
        if isinstance(item, dict):
            assert dep.lookback is not None
            assert format_duration(dep.lookback) == item["lookback"]
        else:
            assert dep.lookback is None


# ---------------------------------------------------------------- the poller


class FakeApi:
    """A tiny API that serves whatever documents the test sets, and keeps the oracle:
    how many records in what it served a correct exporter must count as invalid."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.docs: dict[str, tuple[int, Any]] = {}
        self.invalid = {"run": 0, "deployment": 0}
        self.served = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0].removeprefix("/api/v1/cloud")
                parts = path.strip("/").split("/")
                if parts[0] == "deployments":
                    endpoint = ("list_deployments", "get_deployment", "list_runs")[
                        min(len(parts), 3) - 1
                    ]
                elif parts[0] == "sessions":  # this API has no sessions: records' are lost
                    endpoint = "sessions"
                else:
                    endpoint = "list_runs" if len(parts) == 1 else "get_run"
                status, doc = (
                    (404, {"type": "error", "error": {"type": "not_found_error"}})
                    if endpoint == "sessions"
                    else api.respond(endpoint)
                )
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api/v1/cloud"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def set(self, docs: dict[str, tuple[int, Any]]) -> None:
        with self.lock:
            self.docs = docs
            self.invalid = {"run": 0, "deployment": 0}
            self.served = 0

    def respond(self, endpoint: str) -> tuple[int, Any]:
        with self.lock:
            status, doc = self.docs.get(endpoint, (200, {"data": [], "has_more": False}))
            self.served += 1
            if status == 200 and isinstance(doc, dict):
                kind = "deployment" if "deployment" in endpoint else "run"
                # Runs dated past the poller's clock (NOW: this server's Date is the real
                # time, which the client distrusts as more than a day off) plus the skew are
                # unusable too.
                parse = (
                    parse_deployment
                    if kind == "deployment"
                    else functools.partial(parse_run, not_after=NOW + MAX_CLOCK_SKEW)
                )
                if endpoint in ("get_deployment", "get_run"):
                    records = [doc]
                else:
                    data = doc.get("data")
                    records = data if isinstance(data, list) else []
                for record in records:
                    try:
                        parse(record)
                    except Exception:  # ParseError, or a parser bug: unusable either way
                        self.invalid[kind] += 1
            return status, doc

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def fake_api() -> Iterator[FakeApi]:
    api = FakeApi()
    yield api
    api.close()


_ts_near_now = st.integers(min_value=int(NOW) - 2 * 86400, max_value=int(NOW) + 600).map(
    lambda s: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s))
)


@st.composite
def run_records(draw: st.DrawFn) -> Any:
    """A record the watched deployments might plausibly list: mostly sound, some broken."""
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(json_values)
    doc, _ = draw(valid_runs())
    doc["deployment_id"] = draw(st.sampled_from(["dep_a", "dep_a", "dep_b", "dep_other"]))
    doc["created_at"] = draw(_ts_near_now)
    doc["id"] = "drun_" + draw(st.sampled_from("abcdefgh"))  # repeats across pages
    if choice <= 2:
        field, bad, _ = draw(st.sampled_from(RUN_BREAKAGES))
        doc[field] = draw(st.sampled_from(bad))
    elif choice == 3:
        doc.update(draw(_shaped_runs))
    return doc


def _envelope(records: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    good = st.fixed_dictionaries(
        {"data": st.lists(records, max_size=6)},
        optional={
            "has_more": st.booleans() | json_values,
            "last_id": st.one_of(st.none(), json_values, st.sampled_from(["drun_a", "drun_b"])),
            "first_id": json_values,
        },
    )
    bad = st.one_of(json_values, st.fixed_dictionaries({"data": json_values}))
    return st.integers(0, 9).flatmap(lambda n: bad if n == 0 else good)


# Mostly 200: an error status ends the cycle early and hides what comes after it.
_statuses = st.integers(0, 19).flatmap(
    lambda n: st.just(200) if n else st.sampled_from([400, 401, 403, 404, 429, 500, 503])
)


@st.composite
def api_documents(draw: st.DrawFn) -> dict[str, tuple[int, Any]]:
    dep_doc, _ = draw(valid_deployments())
    dep_doc["id"] = "dep_a"
    deployments = st.integers(0, 3).flatmap(
        lambda n: st.just(dep_doc) if n else st.one_of(json_values, _shaped_deployments)
    )
    return {
        "list_deployments": (draw(_statuses), draw(_envelope(deployments))),
        "get_deployment": (draw(_statuses), draw(deployments)),
        "list_runs": (draw(_statuses), draw(_envelope(run_records()))),
        "get_run": (draw(_statuses), draw(run_records())),
    }


def _poller_for(api: FakeApi, discover: bool) -> Poller:
    doc: dict[str, Any] = {
        "api": {
            "url": api.url,
            "token": "pt-fuzz",
            "max_retries": 0,
            "timeout": "2s",
            "requests_per_second": 1000,
        },
        "concurrency": 2,
        "page_size": 5,
    }
    if discover:
        doc["discover"] = True
    else:
        doc["deployments"] = ["dep_a", "dep_b"]
    poller = Poller(config_from_dict(doc, env={}), clock=lambda: NOW)
    poller.client.sleep = lambda _s: None
    return poller


@settings(PROFILE, max_examples=80)
@given(docs=api_documents(), discover=st.booleans())
def test_no_api_document_crashes_the_poller(
    fake_api: FakeApi, docs: dict[str, tuple[int, Any]], discover: bool
) -> None:
    fake_api.set(docs)
    poller = _poller_for(fake_api, discover)
    exposition = Exposition(poller.snapshot, lambda: NOW)
    poller.on_snapshot = exposition.update
    try:
        for _ in range(2):  # the first sync, then an incremental one
            assert poller.poll_once() in (True, False)
            error = poller.snapshot.last_error or ""
            assert not error.startswith("internal error"), error
        # Every unparseable record served was counted once, under its kind, and nothing else.
        invalid = poller.snapshot.invalid_records
        event(f"up={poller.snapshot.up}")
        event(f"invalid runs counted: {min(invalid.get('run', 0), 3)}+")
        event(f"tracked runs: {min(poller.snapshot.tracked_runs, 2)}+")
        assert invalid.get("run", 0) == fake_api.invalid["run"]
        assert invalid.get("deployment", 0) == fake_api.invalid["deployment"]
        text = exposition.body(openmetrics=False, compress=False).decode()
        assert {f.name for f in text_string_to_metric_families(text)} >= {"qoder_up"}
    finally:
        poller.close()


# ------------------------------------------------ regressions (bugs these tests found)


def test_a_huge_integer_duration_is_a_parse_error() -> None:
    doc = {
        "id": "r",
        "deployment_id": "d",
        "status": "completed",
        "created_at": "2026-06-14T00:00:00Z",
        "duration_ms": 10**400,
    }
    with pytest.raises(ParseError) as info:
        parse_run(doc)
    assert info.value.field == "run.duration_ms"


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_duration_is_a_parse_error(bad: float) -> None:
    doc = json.loads(
        json.dumps(
            {
                "id": "r",
                "deployment_id": "d",
                "status": "completed",
                "created_at": "2026-06-14T00:00:00Z",
                "duration_ms": bad,
            }
        )
    )
    with pytest.raises(ParseError) as info:
        parse_run(doc)
    assert info.value.field == "run.duration_ms"


def test_a_run_with_a_huge_duration_does_not_fail_the_cycle(fake_api: FakeApi) -> None:
    good = {
        "id": "drun_good",
        "deployment_id": "dep_a",
        "status": "completed",
        "created_at": "2026-06-13T23:00:00Z",
        "completed_at": "2026-06-13T23:01:00Z",
        "duration_ms": 60000,
    }
    bad = dict(good, id="drun_bad", duration_ms=10**400)
    fake_api.set({"list_runs": (200, {"data": [bad, good], "has_more": False})})
    poller = _poller_for(fake_api, discover=False)
    try:
        assert poller.poll_once()
        assert poller.snapshot.invalid_records.get("run") == fake_api.invalid["run"] == 2
    finally:
        poller.close()


def test_a_deployment_with_huge_stats_does_not_crash_the_poll_loop(fake_api: FakeApi) -> None:
    dep = {
        "id": "dep_a",
        "name": "a",
        "status": "active",
        "metadata": {"cas_config": {"stats": {"consecutive_failures": 10**400}}},
    }
    fake_api.set({"list_deployments": (200, {"data": [dep], "has_more": False})})
    poller = _poller_for(fake_api, discover=False)
    exposition = Exposition(poller.snapshot, lambda: NOW)
    poller.on_snapshot = exposition.update
    try:
        poller.poll_once()
        text = exposition.body(openmetrics=False, compress=False).decode()
        assert "qoder_deployment_info" in text
    finally:
        poller.close()


def test_a_control_character_in_the_config_file_is_a_one_line_error() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "config.yaml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("discover: true\x08\n")
        with pytest.raises(ConfigError) as info:
            load_config(path, env={})
    _check_config_error(info.value, path)


# A leap second (second 60) is read as 59, not rejected.
@example(doc={"id": "x", "deployment_id": "y", "created_at": "2026-06-14T00:00:60Z"})
@PROFILE
@given(doc=_shaped_runs)
def test_shaped_runs_never_raise_anything_but_parse_error(doc: dict[str, Any]) -> None:
    try:
        _check_run(parse_run(doc))
    except ParseError as exc:
        _check_parse_error(exc, RUN_FIELDS)
