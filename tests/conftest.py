"""Shared fixtures: the simulator over real HTTP on port 0, and pollers pointed at it."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from qoder_exporter.config import Config, config_from_dict
from qoder_exporter.poller import Poller
from qoder_exporter.simulator import Simulator

from .waiting import eventually

TOKEN = "pt-test-SECRET-7f3a9c"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator(seed=7, deployments=6, token=TOKEN)
    simulator.serve("127.0.0.1", 0)
    yield simulator
    simulator.close()


def make_config(sim: Simulator, **overrides: Any) -> Config:
    """A config for the simulator: every deployment listed unless discover is set."""
    doc: dict[str, Any] = {
        "api": {
            "url": sim_url(sim),
            "token": TOKEN,
            "requests_per_second": 1000,
            "max_retries": 2,
            "timeout": "5s",
        },
        "poll_interval": "60s",
        "lookback": "24h",
        "concurrency": 4,
    }
    if overrides.pop("discover", False):
        doc["discover"] = True
    else:
        doc["deployments"] = sim.deployment_ids()
    api = overrides.pop("api", {})
    doc["api"].update(api)
    doc.update(overrides)
    return config_from_dict(doc, env={})


def sim_url(sim: Simulator) -> str:
    return sim.base_url


@pytest.fixture
def poller_for(sim: Simulator) -> Iterator[Callable[..., Poller]]:
    made: list[Poller] = []

    def factory(**overrides: Any) -> Poller:
        poller = Poller(make_config(sim, **overrides), clock=sim.clock.now)
        # Retries back off in real time; tests keep them instant.
        poller.client.sleep = lambda _s: None
        made.append(poller)
        return poller

    yield factory
    for p in made:
        p.close()


def announced_port(proc: subprocess.Popen[str], timeout: float = 30) -> int:
    """The port an exporter process logs ("listening on http(s)://host:port/metrics")."""
    assert proc.stderr is not None
    stderr = proc.stderr
    said: list[str] = []

    def port() -> int | None:
        line = stderr.readline()
        said.append(line)
        if not line and proc.poll() is not None:
            pytest.fail(f"the exporter exited ({proc.returncode}):\n{''.join(said)}")
        match = re.search(r"listening on https?://[^:]+:(\d+)/metrics", line)
        return int(match.group(1)) if match else None

    return eventually(
        port, timeout, lambda: f"the exporter announced its address:\n{''.join(said)}", interval=0
    )
