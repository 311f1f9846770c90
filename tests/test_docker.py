"""The container image, built and run for real against the simulator (host network).

Needs a Docker daemon; scripts/ci-docker provides one and a registry-free base image
(qoder-base:bookworm) on a Debian host. Without Docker the module skips, under CI=true it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from qoder_exporter import __version__
from qoder_exporter.simulator import ManualClock, Simulator

from .conftest import TOKEN
from .waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "qoder-exporter:test"
pytestmark = pytest.mark.system

LOCAL_BASE = "qoder-base:bookworm"  # built by scripts/ci-docker
CONFIG_PATH = "/etc/qoder-exporter/config.yml"
SECRET_PATH = "/run/secrets/qoder_pat"
UID = 65532
DEADLINE_S = 60.0
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


def docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a docker command; fail the test with its output when it fails."""
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        output = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        pytest.fail(f"docker {' '.join(args[:2])} failed ({proc.returncode}):\n{output}")
    return proc


def docker_missing() -> str | None:
    """Why Docker cannot be used here, or None when it can."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    try:
        proc = subprocess.run(
            ["docker", "info"], capture_output=True, text=True, timeout=30, check=False
        )
    except subprocess.TimeoutExpired:
        return "`docker info` timed out"
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["no output"]
        return f"no Docker daemon answers: {lines[-1]}"
    return None


def base_image() -> str | None:
    """$QODER_BASE_IMAGE, else the local CI base when present, else the Dockerfile's default."""
    explicit = os.environ.get("QODER_BASE_IMAGE")
    if explicit:
        return explicit
    probe = subprocess.run(
        ["docker", "image", "inspect", LOCAL_BASE], capture_output=True, timeout=30, check=False
    )
    return LOCAL_BASE if probe.returncode == 0 else None


def container_name() -> str:
    return f"qoder-exporter-test-{uuid.uuid4().hex[:12]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(text: str, name: str) -> float | None:
    return next((v for n, labels, v in samples(text) if n == name and not labels), None)


@pytest.fixture(scope="module")
def image() -> str:
    reason = docker_missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true; scripts/ci-docker sets Docker up)")
        pytest.skip(reason)
    args = ["build", "--network", "host", "--tag", IMAGE]
    base = base_image()
    if base is not None:
        args += ["--build-arg", f"BASE_IMAGE={base}"]
    args += [a for v in PROXY_VARS if v in os.environ for a in ("--build-arg", v)]
    docker(*args, str(ROOT), timeout=1800)
    return IMAGE


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    # A frozen world "now", so every run the simulator made lies inside the exporter's window.
    simulator = Simulator(seed=7, deployments=6, token=TOKEN, clock=ManualClock(time.time()))
    simulator.serve("127.0.0.1", 0)
    yield simulator
    simulator.close()


@dataclass
class Container:
    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        proc = subprocess.run(
            ["docker", "logs", self.name], capture_output=True, text=True, timeout=30, check=False
        )
        return proc.stdout + proc.stderr

    def inspect(self) -> Any:
        return json.loads(docker("inspect", self.name).stdout)[0]

    def metrics(self) -> str:
        try:
            return requests.get(f"{self.url}/metrics", timeout=5).text
        except requests.RequestException:
            return ""

    def wait_until_up(self) -> str:
        """Wait for a poll that reached the API; return that /metrics text."""
        body = ""

        def up() -> bool:
            nonlocal body
            if not self.inspect()["State"]["Running"]:
                pytest.fail(f"container {self.name} exited:\n{self.logs()}")
            body = self.metrics()
            return bool(body) and value(body, "qoder_up") == 1

        eventually(up, DEADLINE_S, lambda: f"{self.name}: qoder_up 1\n{self.logs()}")
        return body


Runner = Callable[..., Container]


@pytest.fixture(scope="module")
def run_container(image: str) -> Iterator[Runner]:
    """Start detached containers on the host network; every one is removed at the end."""
    names: list[str] = []

    def run(*args: str, docker_args: Sequence[str] = ()) -> Container:
        port = free_port()
        name = container_name()
        names.append(name)
        flags = ["--detach", "--name", name, "--network", "host", "--read-only"]
        flags += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
        # The image's HEALTHCHECK, sooner and on this test's port.
        flags += ["--health-interval", "1s", "--health-start-period", "30s"]
        flags += ["--env", f"QODER_HEALTHCHECK_URL=http://127.0.0.1:{port}/-/healthy"]
        docker("run", *flags, *docker_args, image, *args, f"--web.listen-address=127.0.0.1:{port}")
        return Container(name, port)

    yield run
    for name in names:
        subprocess.run(["docker", "rm", "--force", name], capture_output=True, timeout=60)


def write_config(directory: Path, **extra: Any) -> Path:
    """A config without api.url (QODER_API_URL gives it), readable by the image's user."""
    api: dict[str, Any] = {"requests_per_second": 200, "timeout": "5s", **extra}
    doc = {"api": api, "discover": True, "poll_interval": "2s", "lookback": "24h"}
    path = directory / "config.yml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    path.chmod(0o644)
    return path


@pytest.fixture(scope="module")
def exporter(
    run_container: Runner, sim: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Container:
    """The exporter on a read-only root: config file mounted, token from a secret file."""
    directory = tmp_path_factory.mktemp("docker")
    secret = directory / "qoder_pat"
    secret.write_text(TOKEN + "\n")
    secret.chmod(0o444)
    config = write_config(directory, token_file=SECRET_PATH)
    container = run_container(
        "--config",
        CONFIG_PATH,
        "--log.level=debug",
        docker_args=[
            *("--env", f"QODER_API_URL={sim.base_url}"),
            *("--volume", f"{config}:{CONFIG_PATH}:ro"),
            *("--volume", f"{secret}:{SECRET_PATH}:ro"),
        ],
    )
    container.wait_until_up()
    return container


def test_image_labels_user_port_and_healthcheck(image: str) -> None:
    config = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.title"] == "qoder-exporter"
    assert "org.opencontainers.image.source" in labels
    assert labels["org.opencontainers.image.description"]
    assert config["User"] == f"{UID}:{UID}"
    assert "7637/tcp" in config["ExposedPorts"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert "urllib" in " ".join(config["Healthcheck"]["Test"])
    assert config["Cmd"] == ["--config", CONFIG_PATH]


def test_image_holds_no_pip_compiler_or_tests(image: str) -> None:
    probe = (
        "import importlib.util as u, os, shutil\n"
        "print(u.find_spec('pip') is not None, u.find_spec('setuptools') is not None)\n"
        "print([c for c in ('gcc', 'cc', 'make', 'curl', 'pip', 'pip3') if shutil.which(c)])\n"
        "print(sorted(os.listdir('/app')))\n"
    )
    out = docker("run", "--rm", "--entrypoint", "/opt/venv/bin/python", image, "-c", probe)
    assert out.stdout.splitlines() == [
        "False False",
        "[]",
        "['exporter.py', 'qoder_exporter']",
    ]


def test_image_adds_little_to_its_base(image: str) -> None:
    layers = docker("history", "--format", "{{.Size}}\t{{.CreatedBy}}", "--human=false", image)
    base = base_image() or "python:3.11-slim-bookworm"
    base_size = int(docker("image", "inspect", "--format", "{{.Size}}", base).stdout)
    size = int(docker("image", "inspect", "--format", "{{.Size}}", image).stdout)
    # Dependencies and the exporter are ~8 MB; more means something leaked into the image.
    assert size - base_size < 20_000_000, layers.stdout


def test_metrics_served_from_the_container(exporter: Container, sim: Simulator) -> None:
    body = exporter.wait_until_up()
    found = samples(body)
    ids = {labels["deployment_id"] for n, labels, _ in found if n == "qoder_deployment_info"}
    assert ids == set(sim.deployment_ids())
    counted = {
        labels["deployment_id"]
        for n, labels, _ in found
        if n.startswith("qoder_deployment_runs_total")
    }
    assert counted == ids
    recent = sum(v for n, _, v in found if n == "qoder_deployment_recent_runs")
    assert recent > 0
    assert any(n == "qoder_deployment_run_duration_seconds_bucket" for n, _, _ in found)
    assert requests.get(f"{exporter.url}/-/healthy", timeout=5).status_code == 200
    assert requests.get(f"{exporter.url}/-/ready", timeout=5).status_code == 200


def test_docker_health_turns_healthy(exporter: Container) -> None:
    def healthy() -> bool:
        return bool(exporter.inspect()["State"]["Health"]["Status"] == "healthy")

    eventually(
        healthy,
        DEADLINE_S,
        lambda: f"docker health status healthy\n{json.dumps(exporter.inspect()['State'])}",
    )


def test_runs_as_non_root_on_read_only_root(exporter: Container) -> None:
    state = exporter.inspect()
    assert state["HostConfig"]["ReadonlyRootfs"] is True
    status = docker("exec", exporter.name, "cat", "/proc/1/status").stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    gids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Gid:"))
    assert uids == [str(UID)] * 4
    assert gids == [str(UID)] * 4
    # /tmp is writable by anyone on a writable root: only --read-only refuses this.
    write = subprocess.run(
        ["docker", "exec", exporter.name, "touch", "/tmp/probe"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert write.returncode != 0


def test_secret_token_not_in_logs_or_inspect(exporter: Container) -> None:
    exporter.wait_until_up()
    logs = exporter.logs()
    assert "level=debug" in logs  # the most talkative level, and still no token
    assert TOKEN not in logs
    assert TOKEN not in docker("inspect", exporter.name).stdout
    assert TOKEN not in docker("image", "inspect", IMAGE).stdout


def test_token_from_environment_with_once(image: str, sim: Simulator, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    name = container_name()
    args = ["docker", "run", "--rm", "--name", name, "--network", "host", "--read-only"]
    # `--env QODER_PAT` copies the variable from docker's environment, off the command line.
    args += ["--env", f"QODER_API_URL={sim.base_url}", "--env", "QODER_PAT"]
    args += ["--volume", f"{config}:{CONFIG_PATH}:ro", image, "--config", CONFIG_PATH, "--once"]
    try:
        proc = subprocess.run(
            args,
            env={**os.environ, "QODER_PAT": TOKEN},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        subprocess.run(["docker", "rm", "--force", name], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert value(proc.stdout, "qoder_up") == 1
    assert TOKEN not in proc.stderr


def test_demo_mode_in_the_container(run_container: Runner) -> None:
    container = run_container("--demo")
    body = container.wait_until_up()
    ids = {
        labels["deployment_id"] for n, labels, _ in samples(body) if n == "qoder_deployment_info"
    }
    assert len(ids) > 0
