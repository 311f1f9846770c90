"""The command line as a user runs it: real processes, real files, real sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from qoder_exporter.cli import parse_listen
from qoder_exporter.simulator import Simulator

from .conftest import TOKEN, announced_port
from .waiting import eventually

pytestmark = pytest.mark.system  # see [tool.pytest.ini_options] markers

ROOT = Path(__file__).resolve().parent.parent


def exporter(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "exporter.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def write_config(tmp_path: Path, sim: Simulator, extra: str = "") -> Path:
    path = tmp_path / "config.yaml"
    ids = "\n".join(f"  - {d}" for d in sim.deployment_ids())
    path.write_text(
        f"api:\n  url: {sim.base_url}\n  token: ${{QODER_PAT}}\ndeployments:\n{ids}\n{extra}"
    )
    return path


def test_config_check_accepts_a_good_file(tmp_path: Path, sim: Simulator) -> None:
    result = exporter(
        "--config.check", "--config", str(write_config(tmp_path, sim)), env={"QODER_PAT": TOKEN}
    )
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_config_check_names_the_bad_key(tmp_path: Path, sim: Simulator) -> None:
    path = write_config(tmp_path, sim, "poll_interval: soon\npage_sise: 10\n")
    result = exporter("--config.check", "--config", str(path), env={"QODER_PAT": TOKEN})
    assert result.returncode == 1
    assert "poll_interval" in result.stderr and "page_sise" in result.stderr
    assert TOKEN not in result.stderr + result.stdout


def test_once_prints_the_exposition_and_exits_zero(tmp_path: Path, sim: Simulator) -> None:
    result = exporter(
        "--once", "--config", str(write_config(tmp_path, sim)), env={"QODER_PAT": TOKEN}
    )
    assert result.returncode == 0, result.stderr
    families = {f.name: f for f in text_string_to_metric_families(result.stdout)}
    assert families["qoder_up"].samples[0].value == 1.0
    assert len(families["qoder_deployment_info"].samples) == len(sim.deployment_ids())
    assert TOKEN not in result.stdout + result.stderr


def test_once_exits_one_when_the_api_refuses_the_token(tmp_path: Path, sim: Simulator) -> None:
    result = exporter(
        "--once", "--config", str(write_config(tmp_path, sim)), env={"QODER_PAT": "pt-wrong-token"}
    )
    assert result.returncode == 1
    assert "qoder_up 0.0" in result.stdout
    assert "authentication_error" in result.stderr
    assert "pt-wrong-token" not in result.stdout + result.stderr


def test_json_logs(tmp_path: Path, sim: Simulator) -> None:
    result = exporter(
        "--once",
        "--log.format",
        "json",
        "--config",
        str(write_config(tmp_path, sim)),
        env={"QODER_PAT": "pt-wrong-token"},
    )
    line = next(ln for ln in result.stderr.splitlines() if "authentication_error" in ln)
    assert line.startswith("{") and '"level": "warning"' in line


def test_demo_serves_live_metrics_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "exporter.py"),
            "--demo",
            "--web.listen-address",
            "127.0.0.1:0",
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        port = announced_port(proc)
        # The rest of its log, drained so the exporter never blocks on a full pipe, and
        # shown if the wait fails (it once stalled for 30 s, cause unknown).
        log: list[str] = []
        assert proc.stderr is not None
        threading.Thread(target=lambda: log.extend(proc.stderr or ()), daemon=True).start()
        last: list[str] = []

        def up() -> str | None:
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            last[:] = [ln for ln in text.splitlines() if ln.startswith(("qoder_up", "qoder_ex"))]
            return text if "qoder_up 1.0" in text else None

        body = eventually(
            up,
            30,
            lambda: (
                "the demo serves qoder_up 1.0; its log since:\n"
                + "".join(log[-40:])
                + "\nits self-metrics:\n"
                + "\n".join(last[:60])
            ),
        )
        families = {f.name: f for f in text_string_to_metric_families(body)}
        assert families["qoder_up"].samples[0].value == 1.0
        recent = sum(s.value for s in families["qoder_deployment_recent_runs"].samples)
        assert recent > 0, "the demo shows runs from its first poll"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_parse_listen() -> None:
    assert parse_listen(":7637") == ("", 7637)
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:9000") == ("::1", 9000)


def test_config_check_validates_the_web_config_too(tmp_path: Path, sim: Simulator) -> None:
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_userz:\n  prometheus: x\n")
    result = exporter(
        "--config.check",
        "--config",
        str(write_config(tmp_path, sim)),
        "--web.config.file",
        str(web),
        env={"QODER_PAT": TOKEN},
    )
    assert result.returncode == 1
    assert "basic_auth_userz" in result.stderr
