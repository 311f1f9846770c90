"""Real processes for integration tests: a live exporter over the simulator, and Prometheus.

The exporter runs in-process (Poller + ExporterServer on port 0) against the simulator on a
stepped clock; a driver thread moves simulated time forward and polls, so that a real
Prometheus scraping the exporter sees counters move within seconds of wall time.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from qoder_exporter.accounts import Accounts
from qoder_exporter.collector import Exposition
from qoder_exporter.config import Config, config_from_dict
from qoder_exporter.poller import Poller
from qoder_exporter.server import ExporterServer
from qoder_exporter.simulator import DeploymentSpec, ManualClock, Simulator
from qoder_exporter.snapshot import Snapshot
from qoder_exporter.snapshot_builder import build_snapshot

from .conftest import TOKEN, make_config
from .waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
RULE_FILES = [ROOT / "prometheus" / n for n in ("rules.yml", "thresholds.yml", "alerts.yml")]


def fast_rule_files(directory: Path) -> list[Path]:
    """The bundled rule files, with every `for:` of alerts.yml at 2 s per minute (5m -> 10s).

    For tests that need alerts to fire within seconds; everything else is as shipped, and the
    order of the `for:` durations is kept.
    """

    def scale(m: re.Match[str]) -> str:
        minutes = int(m.group(2)) * (60 if m.group(3) == "h" else 1)
        return f"{m.group(1)}{2 * minutes}s"

    alerts = ROOT / "prometheus" / "alerts.yml"
    text = re.sub(r"^(\s+for: )(\d+)([mh])$", scale, alerts.read_text(), flags=re.M)
    fast = directory / "alerts.yml"
    fast.write_text(text)
    return [*RULE_FILES[:-1], fast]


def require_tool(name: str) -> str:
    """The tool's path; skips without it, but fails under CI=true (CI must install it)."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (scripts/system-deps installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def run_tool(name: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run an installed tool (see require_tool) and return what it printed, never raising."""
    return subprocess.run(
        [require_tool(name), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveExporter:
    """Simulator + poller + HTTP server; `step()` moves simulated time and polls once."""

    def __init__(
        self,
        *,
        deployments: int | list[DeploymentSpec] = 6,
        seed: int = 7,
        step_s: float = 300.0,
        behind_s: float = 86400.0,
        accounts: tuple[str, ...] = (),
    ) -> None:
        # Simulated time starts behind_s (a day) in the past so that stepping it never passes
        # the wall clock: ages computed at scrape time (wall clock) stay positive. A test that
        # needs ages close to the truth steps in real time (step_s = the drive period) from a
        # few seconds behind.
        self.sim = Simulator(
            seed=seed,
            deployments=deployments,
            token=TOKEN,
            clock=ManualClock(time.time() - behind_s),
        )
        self.sim.serve("127.0.0.1", 0)
        self.step_s = step_s
        # With accounts: every account watches the simulator's deployments with its token
        # (the same token under several names), so each deployment is watched several times.
        self.poller: Poller | Accounts
        if accounts:
            self.poller = Accounts(self._accounts_config(accounts), clock=self.sim.clock.now)
            pollers = list(self.poller.pollers.values())
        else:
            self.poller = Poller(
                make_config(self.sim, poll_interval="5s", lookback="6h"), clock=self.sim.clock.now
            )
            pollers = [self.poller]
        for poller in pollers:
            poller.client.sleep = lambda _s: None
        self.exposition = Exposition(self.poller.snapshot, time.time)
        self.poller.on_snapshot = self.exposition.update
        self.server = ExporterServer(self.exposition, ("127.0.0.1", 0), healthy=lambda: True)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.port}"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.step()

    def _accounts_config(self, names: tuple[str, ...]) -> Config:
        api = {"url": self.sim.base_url, "token": TOKEN, "requests_per_second": 1000}
        doc: dict[str, Any] = {
            "accounts": [
                {"name": name, "api": api, "deployments": self.sim.deployment_ids()}
                for name in names
            ],
            "poll_interval": "5s",
            "lookback": "6h",
        }
        return config_from_dict(doc, env={})

    def step(self) -> None:
        with self._lock:
            self.sim.advance(self.step_s)
            self.poller.poll_once()

    def drive(self, every_s: float = 0.5) -> None:
        """Step in the background until close()."""

        def loop() -> None:
            while not self._stop.wait(every_s):
                self.step()

        self._thread = threading.Thread(target=loop, name="drive", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.server.close()
        self.poller.close()
        self.sim.close()


class Prometheus:
    """A real Prometheus on a free port with a temporary data directory."""

    def __init__(
        self,
        targets: dict[str, list[str]],
        rule_files: list[Path],
        *,
        alertmanager: str | None = None,
    ) -> None:
        self.binary = require_tool("prometheus")
        self.dir = Path(tempfile.mkdtemp(prefix="qoder-prom-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": hosts}]}
                for job, hosts in targets.items()
            ],
        }
        resend: list[str] = []
        if alertmanager is not None:
            config["alerting"] = {
                "alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]
            }
            # Resend firing alerts every second (1m by default): Alertmanager sees them at once.
            resend = ["--rules.alert.resend-delay=1s"]
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (self.dir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                *resend,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.close()  # not left running when it never got ready
            raise

    def _wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited:\n{self.logs()}")
            return requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200

        eventually(ready, timeout, lambda: f"prometheus is ready:\n{self.logs()}")

    def logs(self) -> str:
        self.log.flush()
        return (self.dir / "prometheus.log").read_text(errors="replace")[-4000:]

    def api(self, path: str, **params: str) -> Any:
        r = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = r.json()
        assert body.get("status") == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else []
        return result

    def wait_for(self, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll an instant query until it returns a non-empty vector; fail if it never does."""
        return eventually(
            lambda: self.query(expr),
            timeout,
            lambda: f"{expr} returns data; prometheus logged:\n{self.logs()}",
            interval=0.5,
        )

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def live_stack(
    down_port: int | None = None,
    rule_files: list[Path] | None = None,
    accounts: tuple[str, ...] = (),
) -> Iterator[tuple[LiveExporter, Prometheus]]:
    """A driven exporter and a Prometheus scraping it (job "qoder") with the bundled rules.

    With down_port, a second job "qoder-down" scrapes a port nobody listens on. rule_files
    replaces the bundled rule files (fast_rule_files, say); accounts, see LiveExporter.
    """
    exporter = LiveExporter(accounts=accounts)
    prom: Prometheus | None = None
    try:
        targets = {"qoder": [exporter.url.removeprefix("http://")]}
        if down_port is not None:
            targets["qoder-down"] = [f"127.0.0.1:{down_port}"]
        prom = Prometheus(targets, rule_files or RULE_FILES)
        exporter.drive()
        yield exporter, prom
    finally:
        if prom is not None:
            prom.close()
        exporter.close()


def fresh_snapshot(poller: Poller, now: float) -> Snapshot:
    """What building the poller's snapshot afresh gives, with no kept views (call with
    poller.tracker.lock held)."""
    return build_snapshot(
        now,
        poller.tracker,
        poller.watch,
        poller.stats,
        poller.metrics,
        poller.client.bucket,
        poller.config.poll_interval,
        poller.reload,
    )
