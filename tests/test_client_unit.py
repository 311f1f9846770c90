"""QoderClient against the simulator through a requests adapter: every answer, no sockets."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from qoder_exporter.client import (
    APIError,
    AuthenticationError,
    InvalidResponseError,
    NotFoundError,
    QoderClient,
    RateLimitedError,
    ServerError,
    TransportError,
)
from qoder_exporter.config import Secret
from qoder_exporter.simulator import Simulator, mount

TOKEN = "pt-unit-SECRET-51c2"


@pytest.fixture(autouse=True)
def no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any network connection in these tests is a bug: the adapter must answer everything."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a socket was opened")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def sim() -> Simulator:
    return Simulator(seed=3, deployments=5, token=TOKEN)


def make_client(sim: Simulator, token: str = TOKEN, **kw: Any) -> QoderClient:
    session = requests.Session()
    base_url = mount(session, sim)
    client = QoderClient(base_url, Secret(token), session=session, requests_per_second=1e6, **kw)
    client.sleep = lambda seconds: None  # retries back off without waiting
    return client


@pytest.fixture
def client(sim: Simulator) -> Iterator[QoderClient]:
    c = make_client(sim)
    yield c
    c.session.close()


def all_runs(sim: Simulator, dep: str) -> int:
    return sum(sim.truth_recent(dep, 10 * 86400).values())


def test_pagination_walks_every_run_once(sim: Simulator, client: QoderClient) -> None:
    dep = sim.deployment_ids()[0]
    pages = list(client.pages(lambda cursor: client.list_runs(dep, limit=7, after_id=cursor)))
    ids = [run["id"] for page in pages for run in page.data]
    assert len(pages) > 2, "the walk must cross pages"
    assert len(ids) == len(set(ids)) == all_runs(sim, dep)
    created = [run["created_at"] for page in pages for run in page.data]
    assert created == sorted(created, reverse=True), "newest first"
    assert not pages[-1].has_more


def test_pagination_of_deployments_and_the_global_feed(sim: Simulator, client: QoderClient) -> None:
    pages = list(client.pages(lambda cursor: client.list_deployments(limit=2, after_id=cursor)))
    assert sorted(d["id"] for p in pages for d in p.data) == sorted(sim.deployment_ids())
    feed = list(client.pages(lambda cursor: client.list_all_runs(limit=100, after_id=cursor)))
    total = sum(all_runs(sim, dep) for dep in sim.deployment_ids())
    assert sum(len(p.data) for p in feed) == total


def test_objects(sim: Simulator, client: QoderClient) -> None:
    dep = sim.deployment_ids()[1]
    assert client.get_deployment(dep)["id"] == dep
    run = client.list_runs(dep, limit=1).data[0]
    assert client.get_run(run["id"]) == run


def test_404_is_not_found_with_the_envelope(client: QoderClient) -> None:
    with pytest.raises(NotFoundError) as err:
        client.get_deployment("dep_missing")
    assert err.value.status == 404
    assert err.value.error_type == "not_found_error"
    assert err.value.request_id, "request_id is read from the envelope"
    assert err.value.request_id in str(err.value)


def test_401_wrong_token_and_revocation(sim: Simulator) -> None:
    wrong = make_client(sim, token="pt-wrong")
    with pytest.raises(AuthenticationError) as err:
        wrong.list_deployments()
    assert err.value.status == 401
    assert "pt-wrong" not in str(err.value) and TOKEN not in str(err.value)
    right = make_client(sim)
    sim.faults.revoke_after = 1
    right.list_deployments()
    with pytest.raises(AuthenticationError):
        right.list_deployments()


def test_429_with_retry_after_is_rate_limited_and_not_retried(
    sim: Simulator, client: QoderClient
) -> None:
    sim.faults.inject("429", endpoint="list_deployments", retry_after="7")
    sim.reset_counts()
    with pytest.raises(RateLimitedError) as err:
        client.list_deployments()
    assert err.value.retry_after == 7.0
    assert sim.request_counts["list_deployments"] == 1
    client.list_deployments()  # the fault was used up


def test_503_with_retry_after_is_rate_limited(sim: Simulator, client: QoderClient) -> None:
    sim.faults.inject("503", retry_after="3")
    with pytest.raises(RateLimitedError) as err:
        client.list_deployments()
    assert err.value.retry_after == 3.0


@pytest.mark.parametrize("kind", ["malformed", "truncated"])
def test_unreadable_body_is_an_invalid_response(
    sim: Simulator, client: QoderClient, kind: str
) -> None:
    sim.faults.inject(kind)
    with pytest.raises(InvalidResponseError) as err:
        client.list_deployments()
    assert err.value.status == 200


def test_error_envelope_of_a_bad_request(client: QoderClient, sim: Simulator) -> None:
    dep = sim.deployment_ids()[0]
    with pytest.raises(APIError) as err:
        client.list_runs(dep, limit=101)
    assert type(err.value) is APIError
    assert (err.value.status, err.value.error_type) == (400, "invalid_request_error")
    assert "limit must be between 1 and 100" in str(err.value)


def test_server_errors_are_retried_then_raised(sim: Simulator, client: QoderClient) -> None:
    sim.faults.inject("500", count=2)
    assert client.list_deployments().data, "two 500s fit in max_retries=2"
    sim.faults.inject("502", count=3)
    with pytest.raises(ServerError) as err:
        client.list_deployments()
    assert err.value.status == 502


def test_reset_and_slow_replies_are_transport_errors(sim: Simulator) -> None:
    client = make_client(sim, max_retries=0, timeout=2.0)
    sim.faults.inject("reset")
    with pytest.raises(TransportError) as err:
        client.list_deployments()
    assert err.value.kind == "connection"
    sim.faults.inject("slow", retry_after="30")
    with pytest.raises(TransportError) as err:
        client.list_deployments()
    assert err.value.kind == "timeout"
    sim.faults.latency_s = 1.0  # shorter than the timeout: answered, and not waited for
    assert client.list_deployments().data


def test_server_date_follows_the_simulated_clock(sim: Simulator, client: QoderClient) -> None:
    client.list_deployments()
    now = client.server_now()
    assert now is not None and abs(now - sim.clock.now()) < 2


@pytest.mark.parametrize(
    ("no_proxy", "proxied"), [("", True), ("api.example.test", False), ("example.test", False)]
)
def test_own_session_reads_the_proxy_environment_once(
    monkeypatch: pytest.MonkeyPatch, no_proxy: str, proxied: bool
) -> None:
    """The proxies and CA bundle requests would read at each request are read at start."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.test:3128")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/bundle.pem")
    url = "https://api.example.test/api/v1/cloud"
    session = QoderClient(url, Secret(TOKEN)).session
    assert not session.trust_env
    expected = requests.Session().merge_environment_settings(url, {}, None, None, None)
    assert session.proxies.get("https") == expected["proxies"].get("https")
    assert (session.proxies.get("https") is not None) is proxied
    assert session.verify == expected["verify"] == "/etc/ssl/bundle.pem"
