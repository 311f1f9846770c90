"""The Prometheus bundle against real tools: promtool, and a real Prometheus scraping us."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from .harness import (
    ROOT,
    RULE_FILES,
    LiveExporter,
    Prometheus,
    free_port,
    live_stack,
    require_tool,
    run_tool,
)
from .waiting import eventually

pytestmark = pytest.mark.system

PROM_DIR = ROOT / "prometheus"


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return run_tool("promtool", *args, stdin=stdin.decode() if stdin is not None else None)


def test_promtool_check_rules_reports_nothing() -> None:
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in (result.stdout + result.stderr).upper()


@pytest.mark.parametrize("name", ["alerts_test.yml", "accounts_test.yml"])
def test_promtool_rule_unit_tests_pass(name: str) -> None:
    result = promtool("test", "rules", str(PROM_DIR / "tests" / name))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test_and_a_runbook() -> None:
    alerts = [
        rule["alert"]
        for group in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    ]
    tests = (PROM_DIR / "tests" / "alerts_test.yml").read_text()
    readme = (ROOT / "README.md").read_text()
    for alert in alerts:
        assert f"alertname: {alert}" in tests, f"{alert} has no promtool test"
        assert f"### {alert}" in readme, f"{alert} has no runbook entry in the README"


def test_example_configs_are_valid() -> None:
    prom = promtool("check", "config", "--syntax-only", str(PROM_DIR / "prometheus.yml"))
    assert prom.returncode == 0, prom.stdout + prom.stderr
    am = run_tool("amtool", "check-config", str(PROM_DIR / "alertmanager.yml"))
    assert am.returncode == 0, am.stdout + am.stderr


# (labels, receiver the example alertmanager.yml must route them to)
ROUTES = [
    ({"alertname": "QoderDeploymentConsecutiveFailures", "severity": "critical"}, "qoder-pager"),
    (
        {"alertname": "QoderDeploymentMissedSchedule", "severity": "critical", "team": "x"},
        "qoder-pager",
    ),
    ({"alertname": "QoderOrganizationDisabled", "severity": "critical"}, "qoder-pager"),
    ({"alertname": "QoderExporterDown", "severity": "critical"}, "qoder-pager"),
    ({"alertname": "QoderDeploymentRunFailed", "severity": "warning"}, "qoder-chat"),
    ({"alertname": "QoderDeploymentPaused", "severity": "info"}, "qoder-chat"),
    ({"alertname": "SomethingElse", "severity": "critical"}, "default"),
    ({"alertname": "QoderDeploymentRunFailed"}, "default"),
]


@pytest.mark.parametrize(("labels", "receiver"), ROUTES)
def test_amtool_routes(labels: dict[str, str], receiver: str) -> None:
    args = [f"{k}={v}" for k, v in labels.items()]
    result = run_tool(
        "amtool",
        "config",
        "routes",
        "test",
        f"--config.file={PROM_DIR / 'alertmanager.yml'}",
        f"--verify.receivers={receiver}",
        *args,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_every_alert_routes_somewhere_but_default() -> None:
    """Every bundled alert's severity has a route: none falls through to `default`."""
    for group in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            severity = rule["labels"]["severity"]
            result = run_tool(
                "amtool",
                "config",
                "routes",
                "test",
                f"--config.file={PROM_DIR / 'alertmanager.yml'}",
                f"alertname={rule['alert']}",
                f"severity={severity}",
            )
            assert result.stdout.strip() in ("qoder-pager", "qoder-chat"), rule["alert"]


def _exprs() -> list[tuple[str, str]]:
    return [
        (rule.get("alert") or rule["record"], rule["expr"])
        for f in RULE_FILES
        for group in yaml.safe_load(f.read_text())["groups"]
        for rule in group["rules"] or []
    ]


def test_no_rule_strips_target_labels() -> None:
    """Aggregations keep instance and users' target labels: `without`, not `by`.

    The only `by` allowed: the name lookup in qoder_deployment_info (joined group_left, so
    the left side keeps its labels) and the per-deployment threshold defaults.
    """
    allowed = {
        "max by (job, account, deployment_id, name) (qoder_deployment_info)",
        "group by (deployment_id) (qoder_deployment_info)",
    }
    for name, expr in _exprs():
        flat = " ".join(expr.split())
        for a in allowed:
            flat = flat.replace(a, "")
        assert not re.search(r"\b(sum|max|min|avg|count|group)\s+by\b", flat), name


def test_alert_links_are_absolute_and_match_the_readme() -> None:
    result = subprocess.run(
        [str(ROOT / "scripts" / "alert-links"), "--check"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_alert_links_rewrites_every_base(tmp_path: Path) -> None:
    copy = tmp_path / "alerts.yml"
    copy.write_text((PROM_DIR / "alerts.yml").read_text())
    result = subprocess.run(
        [
            str(ROOT / "scripts" / "alert-links"),
            "--file",
            str(copy),
            "--runbook-base",
            "https://wiki.example.com/qoder",
            "--grafana-url",
            "https://grafana.example.com/",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rules = [r for g in yaml.safe_load(copy.read_text())["groups"] for r in g["rules"]]
    for rule in rules:
        ann = rule["annotations"]
        assert ann["runbook_url"] == f"https://wiki.example.com/qoder#{rule['alert'].lower()}"
        assert ann["dashboard"].startswith("https://grafana.example.com/d/qoder-exporter/")

    # Comments and everything but the links are kept.
    def comments(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.lstrip().startswith("#")]

    assert comments(copy.read_text()) == comments((PROM_DIR / "alerts.yml").read_text())


def test_promtool_check_metrics_on_a_real_scrape() -> None:
    exporter = LiveExporter()
    try:
        exporter.step()
        body = requests.get(f"{exporter.url}/metrics", timeout=5).content
    finally:
        exporter.close()
    assert b"qoder_deployment_runs_total" in body
    result = promtool("check", "metrics", stdin=body)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[LiveExporter, Prometheus]]:
    require_tool("prometheus")
    with live_stack(down_port=free_port()) as s:
        yield s


def test_series_are_ingested(stack: tuple[LiveExporter, Prometheus]) -> None:
    exporter, prom = stack
    watched = len(exporter.sim.deployment_ids())
    result = prom.wait_for('count(qoder_deployment_info{job="qoder"})')
    assert result and int(float(result[0]["value"][1])) == watched
    assert prom.wait_for('qoder_up{job="qoder"} == 1')
    assert prom.wait_for('up{job="qoder"} == 1')
    for name in (
        "qoder_deployment_recent_runs",
        "qoder_deployment_runs_total",
        "qoder_deployment_run_duration_seconds_bucket",
        "qoder_deployment_last_success_age_seconds",
        "qoder_exporter_api_requests_total",
    ):
        assert prom.wait_for(f'{name}{{job="qoder"}}'), f"{name} not ingested"


def test_every_rule_evaluates_without_error(stack: tuple[LiveExporter, Prometheus]) -> None:
    _, prom = stack

    def evaluated() -> list[dict[str, Any]]:
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        done = all(r.get("lastEvaluation", "").startswith("2") for r in rules)
        return rules if done else []

    rules = eventually(evaluated, 30, "every rule evaluated once", interval=0.5)
    expected = sum(
        len(g["rules"]) for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"]
    )
    assert len(rules) == expected, "Prometheus loaded every rule of the bundle"
    bad = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not bad, bad


def test_recording_rules_produce_series(stack: tuple[LiveExporter, Prometheus]) -> None:
    _, prom = stack
    for record in (
        "deployment_id:qoder_threshold_failure_ratio:max",
        "deployment_id:qoder_threshold_no_success_seconds:max",
        "deployment_id:qoder_threshold_in_flight_seconds:max",
        "deployment_id:qoder_threshold_consecutive_failures:max",
        "deployment_id:qoder_threshold_schedule_grace_seconds:max",
        "deployment_id:qoder_threshold_skipped_ratio:max",
        "qoder_threshold_stale_seconds:max",
        "deployment_id_status:qoder_deployment_runs:increase1h",
    ):
        assert prom.wait_for(record), f"{record} has no series"


def test_exporter_down_alert_goes_pending(stack: tuple[LiveExporter, Prometheus]) -> None:
    _, prom = stack
    result = prom.wait_for('ALERTS{alertname="QoderExporterDown", job="qoder-down"}')
    assert result, "the unreachable target drives QoderExporterDown"
    assert not prom.query('ALERTS{alertname="QoderExporterDown", job="qoder"}')


def test_a_failing_deployment_drives_its_failure_alert(
    stack: tuple[LiveExporter, Prometheus],
) -> None:
    exporter, prom = stack
    sim = exporter.sim
    # A healthy scheduled deployment: not the stuck, paused or long-failing ones.
    target = next(
        d
        for d in sim.deployment_ids()
        if (spec := sim.spec(d)).interval_s
        and not (spec.stuck or spec.paused or spec.succeeds_until is not None)
    )
    # Two scrapes first, so that increase() has a baseline before the failures.
    failed = f'qoder_deployment_runs_total{{deployment_id="{target}", status="failed"}}'
    prom.wait_for(f"count_over_time({failed}[5m]) >= 2")
    sim.set_failure_rate(target, 1.0)
    for _ in range(3):
        sim.trigger(target)
    selector = f'ALERTS{{alertname="QoderDeploymentRunFailed", deployment_id="{target}"}}'
    result = prom.wait_for(selector, timeout=60)
    assert result, f"no failure alert for {target}:\n{prom.logs()}"
    labels = result[0]["metric"]
    assert labels["alertstate"] in ("pending", "firing")
    assert labels["severity"] == "warning"
    assert labels["name"] == sim.spec(target).name
    alerts = prom.api("alerts")["alerts"]
    mine = [
        a
        for a in alerts
        if a["labels"]["alertname"] == "QoderDeploymentRunFailed"
        and a["labels"]["deployment_id"] == target
    ]
    assert mine and sim.spec(target).name in mine[0]["annotations"]["summary"]
