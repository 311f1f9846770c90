"""The whole alert path, for real: exporter -> Prometheus -> Alertmanager -> webhook.

The exporter polls the simulator; a real Prometheus scrapes it with the bundled rules and
sends to a real Alertmanager (Debian `prometheus-alertmanager`) running the example
prometheus/alertmanager.yml, whose receivers point at a webhook receiver of this test.

What is changed in the temporary copies, and nothing else:
- alerts.yml: every `for:` is scaled from minutes to seconds x2 (5m -> 10s), so that the
  test takes seconds; their order (RunFailed waits longer than ConsecutiveFailures) is kept.
- alertmanager.yml: the receivers' URLs (to the local webhook) and the timings (group_wait,
  group_interval, repeat_interval in seconds). Routes, grouping and inhibitions are as shipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from qoder_exporter.simulator import DeploymentSpec

from .harness import ROOT, LiveExporter, Prometheus, fast_rule_files, free_port, require_tool

# A real Prometheus and Alertmanager: the system layer, not the fast loop.
pytestmark = pytest.mark.system

PROM_DIR = ROOT / "prometheus"
RUNBOOK_BASE = "https://github.com/qoder-exporter/qoder-exporter/blob/main/README.md"
GRAFANA = "http://localhost:3000"
DEADLINE_S = 90.0


@dataclass
class Notification:
    receiver: str  # the webhook path: /qoder-pager or /qoder-chat
    at: float
    body: dict[str, Any]

    @property
    def alertnames(self) -> set[str]:
        return {a["labels"]["alertname"] for a in self.body["alerts"]}


class Webhook:
    """An HTTP receiver on port 0 that records every notification."""

    def __init__(self) -> None:
        self.received: list[Notification] = []
        self._lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(min(length, 1 << 20)))
                with hook._lock:
                    hook.received.append(Notification(self.path, time.monotonic(), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def snapshot(self) -> list[Notification]:
        with self._lock:
            return list(self.received)

    def wait(
        self, match: Callable[[Notification], bool], count: int = 1, timeout: float = DEADLINE_S
    ) -> list[Notification]:
        deadline = time.monotonic() + timeout
        while True:
            found = [n for n in self.snapshot() if match(n)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Proxy:
    """The exporter as Prometheus sees it; close() takes it down for real.

    Closing the exporter's own server is not enough: its HTTP/1.1 keep-alive connections
    would go on serving Prometheus. This proxy answers one request per connection.
    """

    def __init__(self, upstream: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                r = requests.get(upstream + self.path, timeout=5)
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers.get("Content-Type", "text/plain"))
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.server.shutdown()
            self.server.server_close()


class Alertmanager:
    """A real Alertmanager on a free port, no clustering, a temporary data directory."""

    def __init__(self, config: dict[str, Any]) -> None:
        binary = require_tool("prometheus-alertmanager")
        self.dir = Path(tempfile.mkdtemp(prefix="qoder-am-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (self.dir / "alertmanager.yml").write_text(yaml.safe_dump(config))
        self.log = (self.dir / "alertmanager.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={self.dir / 'alertmanager.yml'}",
                f"--storage.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"alertmanager exited:\n{self.logs()}")
            try:
                if requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"alertmanager not ready:\n{self.logs()}")
            time.sleep(0.2)

    def logs(self) -> str:
        self.log.flush()
        return (self.dir / "alertmanager.log").read_text(errors="replace")[-4000:]

    def alerts(self, alertname: str) -> list[dict[str, Any]]:
        r = requests.get(
            f"{self.url}/api/v2/alerts",
            params={"filter": f'alertname="{alertname}"', "inhibited": "true"},
            timeout=5,
        )
        r.raise_for_status()
        result: list[dict[str, Any]] = r.json()
        return result

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def example_alertmanager(webhook: str) -> dict[str, Any]:
    """The example config with the receivers pointed at the webhook and seconds for timings."""
    config: dict[str, Any] = yaml.safe_load((PROM_DIR / "alertmanager.yml").read_text())
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"{webhook}/{receiver['name']}"

    def fast(route: dict[str, Any]) -> None:
        for key, value in (
            ("group_wait", "1s"),
            ("group_interval", "1s"),
            ("repeat_interval", "3s"),
        ):
            if key in route or route is config["route"]:
                route[key] = value
        for child in route.get("routes", []):
            fast(child)

    fast(config["route"])
    return config


@dataclass
class Stack:
    exporter: LiveExporter
    prom: Prometheus
    am: Alertmanager
    webhook: Webhook
    proxy: Proxy
    target: str  # the deployment made to fail
    target_name: str


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    require_tool("prometheus")
    require_tool("prometheus-alertmanager")
    quick = {"pending_s": (0.0, 0.5), "duration_s": (0.5, 1.5)}
    specs = [
        # Hourly, healthy until the test makes it fail; three runs may be in flight at once.
        DeploymentSpec("hourly-sync", 3600.0, failure_rate=0.0, max_concurrent=3, **quick),
        DeploymentSpec("ten-minutely", 600.0, failure_rate=0.0, **quick),
        # Manual only and never triggered: idle, must stay silent.
        DeploymentSpec("on-demand", None, failure_rate=0.0, **quick),
    ]
    # Simulated time follows the wall clock (0.5 s steps every 0.5 s) from 5 s behind it, so
    # that ages and expected trigger times are what they would be in production.
    exporter = LiveExporter(deployments=specs, step_s=0.5, behind_s=5.0)
    workdir = Path(tempfile.mkdtemp(prefix="qoder-alerting-"))
    webhook = Webhook()
    proxy = Proxy(exporter.url)
    am: Alertmanager | None = None
    prom: Prometheus | None = None
    try:
        am = Alertmanager(example_alertmanager(webhook.url))
        rules = fast_rule_files(workdir)
        prom = Prometheus(
            {"qoder": [proxy.address]},
            rules,
            alertmanager=f"127.0.0.1:{am.port}",
        )
        exporter.drive()
        target = exporter.sim.deployment_ids()[0]
        yield Stack(exporter, prom, am, webhook, proxy, target, "hourly-sync")
    finally:
        if prom is not None:
            prom.close()
        if am is not None:
            am.close()
        webhook.close()
        proxy.close()
        exporter.close()
        shutil.rmtree(workdir, ignore_errors=True)


def about(alertname: str, deployment_id: str | None = None) -> Callable[[Notification], bool]:
    def match(n: Notification) -> bool:
        return any(
            a["labels"]["alertname"] == alertname
            and a["status"] == "firing"
            and (deployment_id is None or a["labels"].get("deployment_id") == deployment_id)
            for a in n.body["alerts"]
        )

    return match


def test_failing_deployment_pages_once_then_exporter_down_inhibits(stack: Stack) -> None:
    prom, am, webhook, sim = stack.prom, stack.am, stack.webhook, stack.exporter.sim
    target = stack.target
    # A baseline: the target's counters ingested before it fails (increase() needs two points).
    assert prom.wait_for(f'qoder_deployment_runs_total{{deployment_id="{target}"}}')
    assert prom.wait_for(
        f'count_over_time(qoder_deployment_info{{deployment_id="{target}"}}[1m]) > 2'
    )

    sim.set_failure_rate(target, 1.0)
    for _ in range(3):
        sim.trigger(target)

    # Pager: one notification group per alert name and exporter, the target in it, with a
    # summary, an absolute runbook URL and an absolute dashboard link.
    pages = webhook.wait(about("QoderDeploymentConsecutiveFailures", target), count=2)
    assert pages, f"no page for {target}:\n{prom.logs()}\n{am.logs()}"
    page = pages[0]
    assert page.receiver == "/qoder-pager"
    assert set(page.body["groupLabels"]) == {"alertname", "job", "instance"}
    assert page.body["groupLabels"]["alertname"] == "QoderDeploymentConsecutiveFailures"
    [alert] = [a for a in page.body["alerts"] if a["labels"]["deployment_id"] == target]
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["name"] == stack.target_name
    assert alert["labels"]["instance"] == stack.proxy.address
    annotations = alert["annotations"]
    assert stack.target_name in annotations["summary"] and "in a row" in annotations["summary"]
    assert annotations["runbook_url"] == f"{RUNBOOK_BASE}#qoderdeploymentconsecutivefailures"
    assert annotations["dashboard"] == (
        f"{GRAFANA}/d/qoder-exporter/qoder-exporter?var-deployment={stack.target_name}"
    )
    # The repeat came (repeat_interval is 3 s here): an inhibition below has something to stop.
    assert len(pages) >= 2

    # RunFailed fires too for the target, but ConsecutiveFailures inhibits it: chat hears
    # nothing about the target. Nothing else pages or chats: the other deployments are
    # healthy, the manual one is idle, and no notification reaches the default receiver.
    run_failed = f'alertname="QoderDeploymentRunFailed", deployment_id="{target}"'
    assert prom.wait_for(f'ALERTS{{{run_failed}, alertstate="firing"}}'), prom.logs()
    deadline = time.monotonic() + DEADLINE_S
    while not [a for a in am.alerts("QoderDeploymentRunFailed") if a["status"]["inhibitedBy"]]:
        assert time.monotonic() < deadline, am.alerts("QoderDeploymentRunFailed")
        time.sleep(0.2)
    seen = webhook.snapshot()
    assert {n.receiver for n in seen} == {"/qoder-pager"}, [
        (n.receiver, n.alertnames) for n in seen
    ]
    assert {name for n in seen for name in n.alertnames} == {"QoderDeploymentConsecutiveFailures"}
    assert {a["labels"]["deployment_id"] for n in seen for a in n.body["alerts"]} == {target}

    # The exporter goes down: QoderExporterDown pages, and the deployment page, kept firing by
    # keep_firing_for, is inhibited: no repeat of it and no false "resolved" meanwhile.
    stack.proxy.close()
    down = webhook.wait(about("QoderExporterDown"), count=3)
    assert len(down) >= 3, f"{prom.logs()}\n{am.logs()}"
    assert down[0].receiver == "/qoder-pager"
    [suppressed] = am.alerts("QoderDeploymentConsecutiveFailures")
    assert suppressed["status"]["state"] == "suppressed"
    assert suppressed["status"]["inhibitedBy"]
    # Notifications of the deployment group sent once ExporterDown's first page went out
    # (allowing for one in flight at that moment): none, through three ExporterDown repeats.
    later = [
        n
        for n in webhook.snapshot()
        if n.at > down[1].at and "QoderDeploymentConsecutiveFailures" in n.alertnames
    ]
    assert not later, [n.body for n in later]
