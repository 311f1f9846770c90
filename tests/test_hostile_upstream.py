"""A hostile or broken upstream API and a corrupt state file (issue 15): harm stays bounded.

Each test points a QoderClient, or a Poller where the effect is end to end, at tests/hostile.py
on loopback. Every wait is bounded by a deadline the client enforces itself.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from qoder_exporter import state
from qoder_exporter.client import (
    ERROR_KINDS,
    MAX_RETRY_AFTER,
    InvalidResponseError,
    QoderClient,
    RateLimitedError,
    TransportError,
)
from qoder_exporter.collector import Exposition
from qoder_exporter.config import Secret, config_from_dict
from qoder_exporter.models import MAX_LABEL_LENGTH, RUN_ERROR_TYPES, parse_run
from qoder_exporter.poller import Poller, refresh_limit
from qoder_exporter.sync import RunStore
from tests.hostile import DEPLOYMENT, NOW, HostileAPI

TOKEN = "pt-hostile-SECRET-1b2c"


@pytest.fixture
def api() -> Iterator[HostileAPI]:
    with HostileAPI() as server:
        yield server


Errors = list[tuple[str, str]]


def client_for(api: HostileAPI, **kw: Any) -> tuple[QoderClient, Errors]:
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 5.0)
    client = QoderClient(api.base_url, Secret(TOKEN), **kw)
    errors: Errors = []
    client.on_error = lambda endpoint, kind: errors.append((endpoint, kind))
    return client, errors


def poller_for(
    api: HostileAPI, *, discover: bool = False, poll_interval: str = "60s", **client_kw: Any
) -> Poller:
    doc: dict[str, Any] = {
        "api": {"url": api.base_url, "token": TOKEN, "max_retries": 0, "timeout": "5s"},
        "poll_interval": poll_interval,
        "lookback": "24h",
    }
    if discover:
        doc["discover"] = True
    else:
        doc["deployments"] = [DEPLOYMENT]
    config = config_from_dict(doc, env={})
    client, _ = client_for(api, **client_kw)
    poller = Poller(config, client, clock=lambda: NOW + 60)
    poller.client.sleep = lambda _s: None
    return poller


def render(poller: Poller) -> str:
    return (
        Exposition(poller.snapshot, lambda: NOW + 60)
        .body(openmetrics=False, compress=False)
        .decode()
    )


# --- #4 a body sent one byte at a time --------------------------------------------------


def test_a_trickling_body_ends_at_the_deadline(api: HostileAPI) -> None:
    # Without a total deadline each byte resets the per-read timeout and the poll waits
    # for the whole trickle (a minute here, forever from a hostile server).
    api.mode = "slow_body"
    client, errors = client_for(api, deadline=1.0)
    with pytest.raises(TransportError) as caught:
        client.list_runs(DEPLOYMENT)
    assert caught.value.kind == "timeout"
    assert errors == [("list_runs", "timeout")]


def test_the_deadline_lets_the_next_request_through(api: HostileAPI) -> None:
    api.mode = "slow_body"
    client, _ = client_for(api, deadline=1.0)
    with pytest.raises(TransportError):
        client.list_runs(DEPLOYMENT)
    api.mode = "normal"
    assert [r["id"] for r in client.list_runs(DEPLOYMENT).data] == ["run_2", "run_1"]


# --- #5 response size ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["gzip_bomb", "huge_body"])
def test_an_oversized_answer_is_refused_and_counted(api: HostileAPI, mode: str) -> None:
    api.mode = mode
    client, errors = client_for(api, max_response_bytes=1024 * 1024)
    with pytest.raises(InvalidResponseError) as caught:
        client.list_runs(DEPLOYMENT)
    assert caught.value.kind == "response_too_large"
    assert errors == [("list_runs", "response_too_large")]


def test_an_oversized_answer_fails_the_poll_and_is_exported(api: HostileAPI) -> None:
    api.mode = "gzip_bomb"
    poller = poller_for(api, max_response_bytes=1024 * 1024)
    try:
        assert not poller.poll_once()
        assert (
            'qoder_exporter_api_errors_total{endpoint="list_deployments",'
            'error_type="response_too_large"}' in render(poller)
        )
    finally:
        poller.close()


# --- #6 pagination ----------------------------------------------------------------------


def test_cyclic_cursors_are_a_counted_error(api: HostileAPI) -> None:
    api.mode = "cyclic_cursors"
    client, errors = client_for(api)
    with pytest.raises(InvalidResponseError) as caught:
        for _ in client.pages(lambda c: client.list_runs(DEPLOYMENT, after_id=c)):
            pass
    assert caught.value.kind == "pagination_loop"
    assert errors == [("list_runs", "pagination_loop")]
    assert len(api.paths) == 3  # A, B, then A again: stop


@pytest.mark.system
def test_a_listing_without_end_stops_at_max_pages(api: HostileAPI) -> None:
    api.mode = "fresh_cursors"
    client, errors = client_for(api, max_pages=40)
    with pytest.raises(InvalidResponseError) as caught:
        for _ in client.pages(lambda c: client.list_runs(DEPLOYMENT, after_id=c)):
            pass
    assert caught.value.kind == "too_many_pages"
    assert errors == [("list_runs", "too_many_pages")]
    assert len(api.paths) == 40


# --- #2 lone surrogates, #15 unbounded label values ---------------------------------------


def test_lone_surrogates_do_not_stop_metrics(api: HostileAPI) -> None:
    api.mode = "surrogates"
    poller = poller_for(api)
    try:
        assert poller.poll_once()
        assert poller.poll_once()
        text = render(poller)  # raised UnicodeEncodeError before
        assert 'name="bad' in text
        assert re.search(r'error_type="other"', text)
    finally:
        poller.close()


def test_surrogates_survive_no_restart_through_the_state_file(
    api: HostileAPI, tmp_path: Path
) -> None:
    api.mode = "surrogates"
    poller = poller_for(api)
    try:
        assert poller.poll_once()
        assert poller.poll_once()
        path = tmp_path / "state.json"
        state.save(poller.store, str(path), api.base_url)
        # A file from before the fix, or edited: the poison must not come back from it.
        doc = json.loads(path.read_text())
        doc["deployments"][DEPLOYMENT]["errors"] = {"x\ud800": 2}
        path.write_text(json.dumps(doc))
        store = RunStore(poller.store.buckets)
        assert state.load(store, str(path), api.base_url, now=NOW)
        assert store.deployments[DEPLOYMENT].errors == {"other": 2}
        json.dumps(state.dump(store, api.base_url)).encode("utf-8")
    finally:
        poller.close()


def test_error_types_from_the_api_are_a_bounded_label(api: HostileAPI) -> None:
    api.mode = "error_types"
    poller = poller_for(api)
    try:
        for _ in range(5):
            assert poller.poll_once()
        text = render(poller)
        values = set(re.findall(r'error_type="([^"]*)"', text))
        assert values <= set(RUN_ERROR_TYPES) | set(ERROR_KINDS)
        assert all(len(v) <= MAX_LABEL_LENGTH for v in re.findall(r'="([^"]*)"', text))
    finally:
        poller.close()


# --- #12 ids that leave their path segment ------------------------------------------------


def test_ids_that_climb_out_of_the_path_are_refused(api: HostileAPI) -> None:
    api.mode = "traversal"
    poller = poller_for(api, discover=True)
    try:
        assert poller.poll_once()
        assert poller.poll_once()  # the second cycle reads the feed and in-flight runs
        assert poller.snapshot.invalid_records.get("deployment") == 2
        assert [v.id for v in poller.snapshot.deployments] == [DEPLOYMENT]
        assert not [p for p in api.paths if "admin" in p or "dep_y" in p]
    finally:
        poller.close()


def test_every_path_segment_is_escaped(api: HostileAPI) -> None:
    client, _ = client_for(api)
    client.get_deployment("dep_x/../../../../admin/keys")
    client.get_run("run?after_id=1#x")
    assert api.paths == [
        "/api/v1/deployments/dep_x%2F..%2F..%2F..%2F..%2Fadmin%2Fkeys",
        "/api/v1/deployment_runs/run%3Fafter_id%3D1%23x",
    ]


# --- #7 timestamps in the future ----------------------------------------------------------


def test_a_run_from_the_future_is_refused_against_the_api_clock(api: HostileAPI) -> None:
    api.mode = "future"
    client, _ = client_for(api)
    page = client.list_runs(DEPLOYMENT)
    bound = client.not_after(NOW)
    assert NOW <= bound <= NOW + 3600  # the Date header: the world's clock, plus skew
    refused = []
    for item in page.data:
        try:
            parse_run(item, not_after=bound)
        except ValueError:
            refused.append(item["id"])
    assert refused == ["run_9"]


def test_a_run_from_the_future_does_not_hold_last_success(api: HostileAPI) -> None:
    api.mode = "future"
    poller = poller_for(api)
    try:
        assert poller.poll_once()
        last = poller.store.deployments[DEPLOYMENT].last_success
        assert last is not None and last < NOW + 3600
        assert poller.snapshot.invalid_records.get("run") == 1
    finally:
        poller.close()


# --- #16 a frozen or wrong Date header ----------------------------------------------------


class SteppedClocks:
    """Our monotonic and wall clocks, stepped together by the test."""

    def __init__(self) -> None:
        self.elapsed = 0.0

    def monotonic(self) -> float:
        return 1000.0 + self.elapsed

    def wall(self) -> float:
        return NOW + 60 + self.elapsed


def test_a_frozen_date_does_not_stop_the_api_clock(api: HostileAPI) -> None:
    api.mode = "frozen_date"
    client, _ = client_for(api)
    clocks = SteppedClocks()
    client.monotonic = clocks.monotonic
    client.list_runs(DEPLOYMENT)
    clocks.elapsed += 3600
    client.list_runs(DEPLOYMENT)  # the same Date again, an hour later by our clock
    server_now = client.server_now()
    assert server_now is not None and server_now >= NOW + 3600


def test_a_date_far_from_our_clock_is_not_trusted(api: HostileAPI) -> None:
    api.mode = "frozen_date"
    api.date = NOW - 30 * 86400
    client, _ = client_for(api)
    client.list_runs(DEPLOYMENT)
    assert client.server_now() is not None
    assert client.server_now(NOW) is None
    assert client.not_after(NOW) == NOW + client.max_clock_skew


def test_a_frozen_date_lets_the_store_floor_move(api: HostileAPI) -> None:
    # The poller's store clock is min(now, server_now() + 1): with a frozen Date it stayed
    # at the frozen time, no run ever left the store, and the store grew without bound.
    api.mode = "frozen_date"
    clocks = SteppedClocks()
    doc: dict[str, Any] = {
        "api": {"url": api.base_url, "token": TOKEN, "max_retries": 0, "timeout": "5s"},
        "deployments": [DEPLOYMENT],
        "lookback": "1h",
    }
    client, _ = client_for(api)
    client.monotonic = clocks.monotonic
    poller = Poller(config_from_dict(doc, env={}), client, clock=clocks.wall)
    try:
        assert poller.poll_once()
        for _ in range(3):
            clocks.elapsed += 3 * 3600
            assert poller.poll_once()
        floor = poller.store.deployments[DEPLOYMENT].floor
        assert floor >= clocks.wall() - 3600 - 120
    finally:
        poller.close()


# --- #18 nested JSON, no data list ----------------------------------------------------------


@pytest.mark.parametrize("mode", ["nested", "no_data"])
def test_unreadable_answers_are_counted_invalid_response(api: HostileAPI, mode: str) -> None:
    api.mode = mode
    client, errors = client_for(api)
    with pytest.raises(InvalidResponseError):
        client.list_runs(DEPLOYMENT)
    assert errors == [("list_runs", "invalid_response")]


@pytest.mark.parametrize("mode", ["nested", "no_data"])
def test_unreadable_answers_are_exported(
    api: HostileAPI, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    api.mode = mode
    poller = poller_for(api)
    try:
        poller.poll_once()
        assert (
            'qoder_exporter_api_errors_total{endpoint="list_deployments",'
            'error_type="invalid_response"}' in render(poller)
        )
        assert "Traceback" not in caplog.text and "RecursionError" not in caplog.text
    finally:
        poller.close()


# --- #20 Retry-After extremes, cross-host redirects ---------------------------------------


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "-5", "1e308", "0"])
def test_retry_after_extremes_give_a_bounded_back_off(api: HostileAPI, value: str) -> None:
    api.mode = "retry_after"
    api.retry_after = value
    client, _ = client_for(api)
    with pytest.raises(RateLimitedError) as caught:
        client.list_runs(DEPLOYMENT)
    wait = caught.value.retry_after
    assert math.isfinite(wait) and 0 < wait <= MAX_RETRY_AFTER


def test_a_redirect_to_another_host_is_refused(api: HostileAPI) -> None:
    with HostileAPI() as elsewhere:
        api.mode = "redirect"
        api.redirect_to = elsewhere.base_url.removesuffix("/api/v1")
        client, errors = client_for(api)
        with pytest.raises(InvalidResponseError) as caught:
            client.list_runs(DEPLOYMENT)
        assert caught.value.kind == "redirect_refused"
        assert errors == [("list_runs", "redirect_refused")]
        assert elsewhere.paths == []


def test_a_redirect_within_the_api_is_followed(api: HostileAPI) -> None:
    api.mode = "redirect"
    api.redirect_to = api.base_url.removesuffix("/api/v1") + "/moved"
    client, _ = client_for(api)
    with pytest.raises(InvalidResponseError):
        client.list_runs(DEPLOYMENT)  # it redirects forever: bounded hops
    assert 2 <= len(api.paths) <= 5


# --- #8 a corrupt state file --------------------------------------------------------------


def good_state(api_url: str) -> dict[str, Any]:
    store = RunStore((1.0, 10.0))
    run = parse_run(
        {
            "id": "run_1",
            "deployment_id": DEPLOYMENT,
            "status": "completed",
            "created_at": "2026-06-13T23:00:00Z",
            "completed_at": "2026-06-13T23:00:10Z",
            "duration_ms": 10_000,
        }
    )
    store.apply(DEPLOYMENT, [run], NOW, 86400, history=False)
    return state.dump(store, api_url)


URL = "https://api.example/api/v1"


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        target: Any = doc["deployments"][DEPLOYMENT]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(_set(("totals", "completed"), -3), id="negative-total"),
        pytest.param(_set(("durations", "completed", "sum"), math.nan), id="nan-sum"),
        pytest.param(_set(("durations", "completed", "sum"), 10**400), id="400-digit-sum"),
        pytest.param(_set(("last_success",), 1e300), id="last-success-1e300"),
        pytest.param(_set(("last_success",), NOW + 86400), id="last-success-tomorrow"),
        pytest.param(_set(("floor",), math.inf), id="infinite-floor"),
        pytest.param(_set(("floor",), 10**400), id="400-digit-floor"),
        pytest.param(_set(("runs", "run_1"), [NOW, "nonsense", True]), id="bad-status"),
        pytest.param(_set(("runs", "run_1"), [-1.0, "completed", True]), id="created-1969"),
        pytest.param(_set(("errors",), {"unknown_error": 1.5}), id="fractional-count"),
        pytest.param(_set(("errors",), []), id="errors-not-an-object"),
        pytest.param(_set(("last_finished",), [NOW, "../x", "completed"]), id="bad-id"),
        pytest.param(
            lambda doc: doc["deployments"].update({"dep/../x": {}}), id="bad-deployment-id"
        ),
    ],
)
def test_a_state_file_with_bad_values_is_moved_aside(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None]
) -> None:
    doc = good_state(URL)
    edit(doc)
    path = tmp_path / "state.json"
    path.write_text(json.dumps(doc))
    store = RunStore((1.0, 10.0))
    assert not state.load(store, str(path), URL, now=NOW)
    assert store.deployments == {}
    assert not path.exists()
    assert len(list(tmp_path.glob("state.json.rejected-*"))) == 1


def test_a_good_state_file_is_restored(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps(good_state(URL)))
    store = RunStore((1.0, 10.0))
    assert state.load(store, str(path), URL, now=NOW)
    assert store.deployments[DEPLOYMENT].totals["completed"] == 1


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nested"),
        pytest.param(b'{"format": 1e999}', id="1e999"),
        pytest.param(b'{"format": ' + b"9" * 5000 + b"}", id="5000-digit-int"),
        pytest.param(b"\xff\xfe not utf-8", id="not-utf8"),
    ],
)
def test_an_unparsable_state_file_is_moved_aside(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    assert not state.load(RunStore((1.0,)), str(path), URL, now=NOW)
    assert not path.exists()


def test_a_directory_as_state_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.mkdir()
    assert not state.load(RunStore((1.0,)), str(path), URL, now=NOW)
    assert not path.exists()


def test_an_unreadable_state_file_is_moved_aside(tmp_path: Path) -> None:
    # Unreadable for everyone, root included (a file's mode does not stop root): a symlink
    # to itself, which open() refuses with ELOOP.
    path = tmp_path / "state.json"
    path.symlink_to(path)
    assert not state.load(RunStore((1.0, 10.0)), str(path), URL, now=NOW)
    assert not os.path.lexists(path)
    assert len(list(tmp_path.iterdir())) == 1  # the link, kept aside under another name


def test_a_state_file_that_cannot_be_moved_does_not_stop_start_up(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    path = directory / "state.json"
    path.mkdir()
    (path / "keep").write_text("")  # a non-empty directory: no rename over it later
    directory.chmod(0o500)
    try:
        assert not state.load(RunStore((1.0,)), str(path), URL, now=NOW)
    finally:
        directory.chmod(0o700)


# --- #17 a stream of runs that stay running -------------------------------------------


@pytest.mark.system
def test_fetches_by_id_per_cycle_are_bounded_and_the_rest_deferred(api: HostileAPI) -> None:
    # Every poll brings 800 new runs that never finish: without a bound each cycle GETs every
    # one of them seen before, and every cycle is slower than the last.
    api.mode = "running_stream"
    # 20 req/s x 30 s / 2: the client's rate budget is lifted so the test runs fast.
    poller = poller_for(api, poll_interval="30s", requests_per_second=10_000)
    limit = refresh_limit(poller.config)
    assert limit == 300
    try:
        gets = []
        for _ in range(4):
            before = len(api.paths)
            assert poller.poll_once()
            gets.append(sum(1 for p in api.paths[before:] if "/deployment_runs/" in p))
        assert gets == [0, limit, limit, limit]
        # In flight before cycles 2, 3, 4: 800, 1600, 2400 (they stay running).
        deferred = (800 - limit) + (1600 - limit) + (2400 - limit)
        assert poller.snapshot.deferred_refreshes == deferred
        assert f"qoder_exporter_deferred_refreshes_total {float(deferred)}" in render(poller)
    finally:
        poller.close()
