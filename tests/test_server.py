"""The HTTP side over a real socket: /metrics, landing page, health, and the token."""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
import requests
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families

from qoder_exporter.collector import Exposition
from qoder_exporter.poller import Poller
from qoder_exporter.server import ExporterServer
from qoder_exporter.simulator import Simulator

from .conftest import TOKEN


@pytest.fixture
def served(sim: Simulator, poller_for: Callable[..., Poller]) -> Iterator[tuple[Poller, str]]:
    poller = poller_for()
    exposition = Exposition(poller.snapshot, sim.clock.now)
    poller.on_snapshot = exposition.update
    server = ExporterServer(exposition, ("127.0.0.1", 0), healthy=lambda: True, clock=sim.clock.now)
    server.start()
    yield poller, f"http://127.0.0.1:{server.port}"
    server.close()


def metrics(base: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    body = requests.get(f"{base}/metrics", timeout=5).text
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_metrics_before_first_poll_say_down_and_not_ready(served: tuple[Poller, str]) -> None:
    _, base = served
    assert metrics(base)["qoder_up"] == [({}, 0.0)]
    assert requests.get(f"{base}/-/ready", timeout=5).status_code == 503
    assert requests.get(f"{base}/-/healthy", timeout=5).status_code == 200


def test_metrics_after_a_poll(served: tuple[Poller, str], sim: Simulator) -> None:
    poller, base = served
    assert poller.poll_once()
    m = metrics(base)
    assert m["qoder_up"] == [({}, 1.0)]
    ids = {labels["deployment_id"] for labels, _ in m["qoder_deployment_info"]}
    assert ids == set(sim.deployment_ids())
    assert requests.get(f"{base}/-/ready", timeout=5).status_code == 200


def test_api_down_still_answers_200_with_up_zero(
    served: tuple[Poller, str], sim: Simulator
) -> None:
    poller, base = served
    poller.poll_once()
    sim.faults.down = True
    sim.advance(60)
    poller.poll_once()
    response = requests.get(f"{base}/metrics", timeout=5)
    assert response.status_code == 200
    assert metrics(base)["qoder_up"] == [({}, 0.0)]
    # The last good values stay, with their age visible.
    assert "qoder_exporter_last_successful_poll_timestamp_seconds" in metrics(base)


def test_openmetrics_and_gzip_negotiation(served: tuple[Poller, str]) -> None:
    poller, base = served
    poller.poll_once()
    r = requests.get(
        f"{base}/metrics",
        headers={
            "Accept": "application/openmetrics-text; version=1.0.0",
            "Accept-Encoding": "gzip",
        },
        timeout=5,
        stream=True,
    )
    assert r.headers["Content-Type"].startswith("application/openmetrics-text")
    assert r.headers["Content-Encoding"] == "gzip"
    body = gzip.decompress(r.raw.read())
    assert body.endswith(b"# EOF\n")
    assert any(f.name == "qoder_up" for f in om_parse(body.decode()))
    plain = requests.get(f"{base}/metrics", headers={"Accept-Encoding": "identity"}, timeout=5)
    assert plain.headers["Content-Type"].startswith("text/plain")
    assert "Content-Encoding" not in plain.headers


def test_landing_page_lists_deployments_and_links(
    served: tuple[Poller, str], sim: Simulator
) -> None:
    poller, base = served
    poller.poll_once()
    page = requests.get(base + "/", timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    for link in ('href="metrics"', 'href="-/healthy"', 'href="-/ready"'):
        assert link in page.text
    for dep_id in sim.deployment_ids():
        assert dep_id in page.text
    assert requests.get(base + "/nope", timeout=5).status_code == 404


def test_token_never_in_metrics_logs_or_reprs(
    served: tuple[Poller, str], sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    poller, base = served
    caplog.set_level(logging.DEBUG)
    poller.poll_once()
    sim.faults.inject("500", count=5)
    sim.faults.inject("malformed", count=2)
    sim.advance(60)
    poller.poll_once()
    sim.faults.revoke_after = 0
    sim.advance(60)
    poller.poll_once()
    texts = [
        requests.get(f"{base}/metrics", timeout=5).text,
        requests.get(base + "/", timeout=5).text,
        caplog.text,
        repr(poller.config),
        str(poller.config),
        repr(poller.client),
        poller.snapshot.last_error or "",
    ]
    for text in texts:
        assert TOKEN not in text
    assert "authentication_error" in caplog.text


def test_a_snapshot_that_fails_to_render_says_down_and_is_counted(
    served: tuple[Poller, str], caplog: pytest.LogCaptureFixture
) -> None:
    poller, base = served
    assert poller.poll_once()
    assert metrics(base)["qoder_up"] == [({}, 1.0)]
    good = poller.snapshot
    # A lone surrogate (legal in JSON) cannot be encoded: the render fails.
    poison = replace(good.deployments[0], id="dep_\ud800")
    assert poller.on_snapshot is not None
    poller.on_snapshot(replace(good, deployments=(poison, *good.deployments[1:])))
    m = metrics(base)
    assert m["qoder_up"] == [({}, 0.0)], "never the previous body with qoder_up 1"
    assert m["qoder_exporter_render_failures_total"] == [({}, 1.0)]
    assert "cannot render the snapshot" in caplog.text
    assert requests.get(f"{base}/", timeout=5).status_code == 200, "the page still renders"
    poller.on_snapshot(good)
    m = metrics(base)
    assert m["qoder_up"] == [({}, 1.0)]
    assert m["qoder_exporter_render_failures_total"] == [({}, 1.0)]
