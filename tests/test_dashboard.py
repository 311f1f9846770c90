"""The Grafana dashboard and the quickstart stack, checked against real tools.

- The dashboard JSON: well formed, on its datasource variable only, panels laid out on the
  24-column grid without overlaps.
- Every metric name in every PromQL query is one the exporter emits (read from a real scrape
  of a live exporter over the simulator) or a recording rule of prometheus/rules.yml.
- Every query, with the dashboard variables substituted, runs against the real Prometheus of
  the integration harness and returns data once the simulator has produced runs.
- The compose file, the Prometheus config of the stack and the Grafana provisioning files
  refer to files and services that exist.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from .harness import (
    ROOT,
    LiveExporter,
    Prometheus,
    fast_rule_files,
    live_stack,
    require_tool,
    run_tool,
)
from .waiting import eventually

DASHBOARD_PATH = ROOT / "grafana" / "qoder-exporter.json"
PROVISIONING = ROOT / "grafana" / "provisioning"
COMPOSE_PATH = ROOT / "docker-compose.yml"
DASHBOARD_UID = "qoder-exporter"
DS_REF = "${datasource}"

CORE_PANELS = {
    "row",
    "stat",
    "timeseries",
    "table",
    "heatmap",
    "bargauge",
    "gauge",
    "text",
    "piechart",
    "state-timeline",
    "status-history",
    "barchart",
    "histogram",
    "logs",
}

# What the variables stand for when a query is sent to Prometheus by hand.
SUBSTITUTIONS = {
    "deployment": ".*",
    "job": ".*",
    "interval": "1m",
    "__interval": "1m",
    "__rate_interval": "1m",
    "__range": "1h",
}

# Queries that legitimately return nothing while the simulator is healthy, by panel title
# and refId. Each needs a reason. (Labelled counters start at 0, so even "API errors by
# type" has series before the first error.)
NO_DATA_ALLOWED = {
    # Tokens, credits and list cost exist only for runs followed into their sessions (the
    # record-only API shape); the harness's simulator is the status-bearing shape, so these
    # series are declared but empty. tests/test_session_outcomes.py checks their values.
    ("Cost per deployment per day", "A"),
    ("Cost per deployment per day", "B"),
    ("Tokens per day by kind", "A"),
    ("Tokens per day by kind", "B"),
}


def load_dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text())
    return doc


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(panel title, refId, PromQL, instant) of every panel target and annotation."""
    found: list[tuple[str, str, str, bool]] = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            instant = bool(target.get("instant")) and not target.get("range")
            found.append((panel["title"], target["refId"], target["expr"], instant))
    for annotation in dashboard["annotations"]["list"]:
        if annotation.get("expr"):
            found.append((f"annotation {annotation['name']}", "-", annotation["expr"], False))
    return found


def variable_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    """name -> query text of the query variables."""
    out: dict[str, str] = {}
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            out[var["name"]] = query["query"] if isinstance(query, dict) else query
    return out


_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")


def substitute(expr: str, overrides: dict[str, str] | None = None) -> str:
    """Replace Grafana variables ($x, ${x}, ${x:fmt}, [[x]]); $1 and friends are left alone."""
    values = {**SUBSTITUTIONS, **(overrides or {})}

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name.isdigit():  # label_replace's "$1"
            return m.group(0)
        assert name in values, f"unknown variable ${name} in {expr!r}"
        return values[name]

    out = _VARIABLE.sub(repl, expr)
    assert not re.search(r"\$[A-Za-z_]", out), out
    return out


# ------------------------------------------------------------------ PromQL identifiers

PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "atan2",
    "inf",
    "nan",
}
PROMQL_AGGREGATIONS = {
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
}
PROMQL_FUNCTIONS = {
    "abs",
    "absent",
    "absent_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_quantile",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "ln",
    "log2",
    "log10",
    "minute",
    "month",
    "predict_linear",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sqrt",
    "time",
    "timestamp",
    "vector",
    "year",
    *(f"{agg}_over_time" for agg in ("avg", "min", "max", "sum", "count", "stddev", "stdvar")),
    "quantile_over_time",
    "last_over_time",
    "present_over_time",
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_LIST = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_NUMBER_WORD = re.compile(r"^(?:0x[0-9a-f]+|\d+(?:\.\d*)?(?:e[+-]?\d+)?)$", re.IGNORECASE)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    Strings, label matchers, range/subquery brackets and the label lists of by/without/on/
    ignoring/group_left/group_right are removed first; what is left of the identifiers are
    keywords, function calls (checked against the PromQL function list, so a misspelt
    function is an error here too) and metric names. {__name__="x"} selectors count as x.
    """
    names = set(re.findall(r'__name__\s*=\s*"([A-Za-z_:][A-Za-z0-9_:]*)"', expr))
    text = _STRING.sub('""', expr)
    text = re.sub(r"#[^\n]*", " ", text)  # comments
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers (strings already blanked)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # [5m], [1h:1m]
    text = _LABEL_LIST.sub(" ", text)
    for m in _IDENT.finditer(text):
        word, call = m.group(1), m.group(2)
        lower = word.lower()
        if call and lower in ("and", "or", "unless", "bool"):
            continue  # a binary operator before a parenthesis: `x or (y)`
        if call:
            assert lower in PROMQL_FUNCTIONS | PROMQL_AGGREGATIONS, f"unknown function {word}"
        elif lower in PROMQL_KEYWORDS or _NUMBER_WORD.match(word):
            continue
        elif lower in PROMQL_AGGREGATIONS and re.match(r"\s*(by|without)\b", text[m.end() :]):
            continue  # sum by (x) (...): the label list is gone, the call follows
        else:
            names.add(word)
    return names


def label_values_metric(query: str) -> tuple[str, str]:
    """label_values(selector, label) -> (selector, label)."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query, re.DOTALL)
    assert m, f"not a label_values() query: {query}"
    return m.group(1), m.group(2)


def test_metric_name_extraction() -> None:
    assert metric_names(
        'histogram_quantile(0.95, sum by (le) (rate(foo_bucket{a="bar_total", b=~"x|y"}[5m])))'
    ) == {"foo_bucket"}
    assert metric_names(
        "sum by (job, deployment_id) (increase(a_total[1h] offset 5m)) / ignoring (x) b"
        " * on (job) group_left (name, status) max by (job) (c{name=~'$deployment'}) > 1e-9"
    ) == {"a_total", "b", "c"}
    assert metric_names('label_replace(x == 1, "last_run", "$1", "status", "(.+)")') == {"x"}
    assert metric_names("count(rec:rule:ratio1h) or vector(0)") == {"rec:rule:ratio1h"}
    assert metric_names('{__name__="up", job="q"} and sum without (a)(b)') == {"up", "b"}
    assert metric_names('time() - max(ts{job=~"j"}) > bool 2 unless absent(z)') == {"ts", "z"}
    assert metric_names("max_over_time(m[1h:1m]) and sum(n) by (x)") == {"m", "n"}
    assert metric_names("(a == 1) * 2 or (b == 1) unless (c)") == {"a", "b", "c"}
    with pytest.raises(AssertionError, match="unknown function"):
        metric_names("rat(x[1m])")


# ------------------------------------------------------------------ the JSON itself


def test_dashboard_identity_and_schema() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == DASHBOARD_UID, "a stable uid: alert links and bookmarks use it"
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["title"]
    # Provisionable as it is: no import-time placeholders, no database id.
    assert "__inputs" not in dashboard and "__requires" not in dashboard
    assert dashboard.get("id") is None
    assert "${DS_" not in DASHBOARD_PATH.read_text()


def test_panels_are_core_with_unique_ids() -> None:
    panels = all_panels(load_dashboard())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    assert all(isinstance(i, int) and i > 0 for i in ids)
    for panel in panels:
        assert panel["type"] in CORE_PANELS, f"{panel['title']}: {panel['type']} is a plugin"
        assert panel.get("title"), panel["id"]
        if panel["type"] != "row":
            assert panel.get("description"), f"{panel['title']}: say what it shows"
    titles = [p["title"] for p in panels if p["type"] != "row"]
    assert len(titles) == len(set(titles)), "panel titles are unique"


def test_grid_has_no_overlaps_and_fits_24_columns() -> None:
    panels = load_dashboard()["panels"]
    boxes = []
    for panel in panels:
        g = panel["gridPos"]
        assert set(g) >= {"x", "y", "w", "h"}, panel["title"]
        assert g["x"] >= 0 and g["y"] >= 0 and g["w"] > 0 and g["h"] > 0, panel["title"]
        assert g["x"] + g["w"] <= 24, f"{panel['title']} is wider than the grid"
        if panel["type"] == "row":
            assert g["w"] == 24 and g["h"] == 1 and g["x"] == 0
            assert panel.get("collapsed") or not panel.get("panels")
        boxes.append((panel["title"], g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]))
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            overlap = a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]
            assert not overlap, f"{a[0]!r} overlaps {b[0]!r}"


def _datasource_refs(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield f"{path}.{key}", value
            yield from _datasource_refs(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _datasource_refs(value, f"{path}[{i}]")


def test_everything_queries_through_the_datasource_variable() -> None:
    dashboard = load_dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert not ds.get("current", {}).get("value"), "no pinned datasource: the default is used"
    refs = list(_datasource_refs({k: v for k, v in dashboard.items() if k != "templating"}))
    refs += list(_datasource_refs([v for v in variables.values() if v["type"] != "datasource"]))
    assert refs
    for where, ref in refs:
        assert ref == {"type": "prometheus", "uid": DS_REF}, f"{where}: {ref}"
    for panel in all_panels(dashboard):
        if panel["type"] in ("row", "text"):
            continue
        assert panel.get("datasource") == {"type": "prometheus", "uid": DS_REF}, panel["title"]
        assert panel.get("targets"), f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target.get("datasource") == panel["datasource"], panel["title"]
            assert target.get("expr"), panel["title"]
    # No uid of a concrete datasource anywhere, whatever the key.
    uids = re.findall(r'"uid":\s*"([^"]*)"', DASHBOARD_PATH.read_text())
    assert set(uids) == {DASHBOARD_UID, DS_REF}, set(uids)


def test_variables() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    assert list(variables) == ["datasource", "job", "deployment", "interval", "lookback"]
    deployment = variables["deployment"]
    assert deployment["multi"] and deployment["includeAll"]
    selector, label = label_values_metric(variable_queries(load_dashboard())["deployment"])
    assert label == "name" and metric_names(selector) == {"qoder_deployment_info"}
    interval = variables["interval"]
    assert interval["type"] == "interval" and interval["auto"]


def test_sections_and_alert_annotation() -> None:
    dashboard = load_dashboard()
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Overview", "Deployments", "Runs", "Exporter health"]
    panels = {p["title"]: p for p in all_panels(dashboard)}
    table = panels["Deployment status"]
    assert table["type"] == "table"
    assert [t["id"] for t in table["transformations"]] == ["merge", "organize"]
    columns = set(table["transformations"][1]["options"]["renameByName"].values())
    assert {
        "Deployment",
        "Status",
        "Last run",
        "Last success age",
        "Runs (window)",
        "Failed (window)",
        "p95 duration (1d)",
        "Failures in a row",
        "Last run ago",
        "Next trigger in",
        "Schedule lag",
        "Last success / threshold",
        "Agent version",
    } <= columns
    for status in ("completed", "failed"):
        heatmap = panels[f"Run duration distribution ({status})"]
        assert heatmap["type"] == "heatmap"
        assert heatmap["targets"][0]["format"] == "heatmap"
        assert f'status="{status}"' in heatmap["targets"][0]["expr"]
    assert panels["Deployment state"]["type"] == "state-timeline"
    assert "cancelled" not in DASHBOARD_PATH.read_text(), "no such status"
    assert (
        "histogram_quantile"
        in panels["Run duration percentiles (completed runs)"]["targets"][0]["expr"]
    )
    # Every per-deployment query selects deployments by name through the info metric.
    for title, ref, expr, _ in queries(dashboard):
        if "qoder_deployment" in expr and not title.startswith("annotation"):
            assert 'name=~"$deployment"' in expr, f"{title}/{ref} ignores $deployment"
    [annotation] = dashboard["annotations"]["list"]
    assert annotation["expr"] == 'ALERTS{alertname=~"Qoder.*", alertstate="firing"}'
    assert annotation["datasource"] == {"type": "prometheus", "uid": DS_REF}


def test_alerts_link_to_the_dashboard() -> None:
    rules = yaml.safe_load((ROOT / "prometheus" / "alerts.yml").read_text())
    variables = {v["name"] for v in load_dashboard()["templating"]["list"]}
    for group in rules["groups"]:
        for rule in group["rules"]:
            link = rule["annotations"].get("dashboard", "")
            assert re.match(rf"^https?://[^/]+/d/{DASHBOARD_UID}/", link), rule["alert"]
            for var in re.findall(r"var-(\w+)=", link):
                assert var in variables, f"{rule['alert']}: no variable {var}"
            # QoderDeploymentMissing: a deployment that answers 404 has no name to select.
            if rule["alert"].startswith("QoderDeployment") and rule["alert"] != (
                "QoderDeploymentMissing"
            ):
                assert "var-deployment={{ $labels.name | urlquery }}" in link, rule["alert"]


# ------------------------------------------------------------------ names against a scrape


@pytest.fixture(scope="module")
def emitted() -> set[str]:
    """Every series name a live exporter declares or exposes, plus what Prometheus adds."""
    exporter = LiveExporter()
    try:
        for _ in range(4):
            exporter.step()
        body = requests.get(f"{exporter.url}/metrics", timeout=5).text
    finally:
        exporter.close()
    names: set[str] = set()
    for line in body.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind == "summary":
                names |= {f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    # Series Prometheus makes itself: the scrape's up, and the alerts of the bundled rules.
    names |= {"up", "ALERTS", "ALERTS_FOR_STATE"}
    return names


def recording_rules() -> set[str]:
    doc = yaml.safe_load((ROOT / "prometheus" / "rules.yml").read_text())
    return {r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r}


def test_every_metric_in_every_query_exists(emitted: set[str]) -> None:
    assert "qoder_deployment_run_duration_seconds_bucket" in emitted
    assert "qoder_exporter_api_errors_total" in emitted, "declared even before any error"
    known = emitted | recording_rules()
    dashboard = load_dashboard()
    used: set[str] = set()
    for title, ref, expr, _ in queries(dashboard):
        names = metric_names(substitute(expr))
        assert names, f"{title}/{ref} selects no metric"
        unknown = names - known
        assert not unknown, f"{title}/{ref}: {sorted(unknown)} are not emitted nor recorded"
        used |= names
    for name, query in variable_queries(dashboard).items():
        selector, _ = label_values_metric(query)
        assert metric_names(substitute(selector)) <= known, name
    # The dashboard covers the contract and uses the recording rules.
    for must in (
        "qoder_deployment_info",
        "qoder_deployment_runs_total",
        "qoder_deployment_recent_runs",
        "qoder_deployment_run_duration_seconds_bucket",
        "qoder_deployment_last_success_age_seconds",
        "qoder_deployment_last_run_status",
        "qoder_deployment_run_errors_total",
        "qoder_deployment_oldest_in_flight_run_age_seconds",
        "qoder_up",
        "qoder_exporter_poll_duration_seconds_bucket",
        "qoder_exporter_api_requests_total",
        "qoder_exporter_api_errors_total",
        "qoder_exporter_rate_limit_waits_total",
        "qoder_exporter_last_successful_poll_timestamp_seconds",
        "deployment_id:qoder_deployment_runs_failure:ratio1h",
        "deployment_id:qoder_deployment_run_duration_seconds:p95_1d",
        "qoder_deployment_consecutive_failures",
        "qoder_deployment_last_run_timestamp_seconds",
        "qoder_deployment_next_trigger_timestamp_seconds",
        "qoder_deployment_expected_run_timestamp_seconds",
        "qoder_deployment_archived",
        "deployment_id:qoder_threshold_no_success_seconds:max",
    ):
        assert must in used, f"no panel shows {must}"


# ------------------------------------------------------------------ queries in a real Prometheus

DATA_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LiveExporter, Prometheus, float]]:
    require_tool("prometheus")
    # Alerts' `for:` in seconds: the alert annotation needs an alert firing within the deadline.
    rules = fast_rule_files(tmp_path_factory.mktemp("rules"))
    with live_stack(rule_files=rules) as (exporter, prom):
        yield exporter, prom, time.monotonic() + DATA_TIMEOUT_S


def evaluate(prom: Prometheus, expr: str, instant: bool) -> list[dict[str, Any]]:
    """Run a query the way its panel does (instant, or a range over the last minutes)."""
    if instant:
        data = prom.api("query", query=expr)
    else:
        now = time.time()
        data = prom.api("query_range", query=expr, start=str(now - 300), end=str(now), step="5")
    assert data["resultType"] in ("vector", "matrix"), data["resultType"]
    result: list[dict[str, Any]] = data["result"]
    return result


def with_data(prom: Prometheus, expr: str, instant: bool, deadline: float) -> list[dict[str, Any]]:
    """The query's result once it has data; the stack's data deadline is shared by all tests."""
    return eventually(
        lambda: evaluate(prom, expr, instant),
        deadline - time.monotonic(),
        f"data for {expr}",
        interval=1.0,
    )


QUERIES = queries(load_dashboard())


@pytest.mark.system
@pytest.mark.parametrize(
    ("title", "ref", "expr", "instant"),
    QUERIES,
    ids=[f"{title}/{ref}" for title, ref, _, _ in QUERIES],
)
def test_query_runs_and_returns_data(
    stack: tuple[LiveExporter, Prometheus, float], title: str, ref: str, expr: str, instant: bool
) -> None:
    _, prom, deadline = stack
    query = substitute(expr)
    if (title, ref) in NO_DATA_ALLOWED:
        evaluate(prom, query, instant)  # still has to be valid PromQL
        return
    result = with_data(prom, query, instant, deadline)
    assert result, f"{title}/{ref} returned no data:\n{query}"


def test_no_data_allow_list_is_current() -> None:
    present = {(title, ref) for title, ref, _, _ in QUERIES}
    assert present >= NO_DATA_ALLOWED, NO_DATA_ALLOWED - present


@pytest.mark.system
def test_deployment_variable_lists_the_simulators_deployments(
    stack: tuple[LiveExporter, Prometheus, float],
) -> None:
    exporter, prom, deadline = stack
    expected = sorted(exporter.sim.spec(d).name for d in exporter.sim.deployment_ids())
    jobs = _label_values(prom, variable_queries(load_dashboard())["job"], deadline)
    assert jobs == ["qoder"]
    names = _label_values(prom, variable_queries(load_dashboard())["deployment"], deadline)
    assert names == expected


def _label_values(prom: Prometheus, query: str, deadline: float) -> list[str]:
    selector, label = label_values_metric(substitute(query))
    values: list[str] = eventually(
        lambda: prom.api(f"label/{label}/values", **{"match[]": selector}),
        deadline - time.monotonic(),
        f"values of {label} for {selector}",
        interval=1.0,
    )
    return sorted(values)


def grafana_regex_escape(value: str) -> str:
    """How Grafana writes a value of a multi-value variable into a PromQL regex string."""
    return re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", value)


@pytest.mark.system
def test_selecting_one_deployment_narrows_every_panel(
    stack: tuple[LiveExporter, Prometheus, float],
) -> None:
    """With $deployment set to one name, series that carry a name carry only that one."""
    exporter, prom, deadline = stack
    chosen = exporter.sim.spec(exporter.sim.deployment_ids()[0]).name
    pattern = grafana_regex_escape(chosen)
    watched = with_data(
        prom,
        substitute(
            next(e for t, _, e, _ in QUERIES if t == "Deployments watched"),
            {"deployment": pattern},
        ),
        True,
        deadline,
    )
    assert watched and float(watched[0]["value"][1]) == 1
    for title, ref, expr, instant in QUERIES:
        if title.startswith("annotation"):
            continue  # the alert annotations show every Qoder alert, on purpose
        result = evaluate(prom, substitute(expr, {"deployment": pattern}), instant)
        names = {s["metric"]["name"] for s in result if "name" in s["metric"]}
        assert names <= {chosen}, f"{title}/{ref} leaks {names - {chosen}}"


ACCOUNTS = ("intl", "china")


@pytest.fixture(scope="module")
def two_accounts(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LiveExporter, Prometheus, float]]:
    """Two accounts watching the same deployments (the same token under two names)."""
    require_tool("prometheus")
    rules = fast_rule_files(tmp_path_factory.mktemp("rules"))
    with live_stack(rule_files=rules, accounts=ACCOUNTS) as (exporter, prom):
        yield exporter, prom, time.monotonic() + DATA_TIMEOUT_S


@pytest.mark.system
def test_two_accounts_watching_one_deployment_keep_their_own_series(
    two_accounts: tuple[LiveExporter, Prometheus, float],
) -> None:
    """Every query runs (a join on deployment_id alone would be many-to-many), and every
    series that names a deployment names its account too: one row per account watching it."""
    exporter, prom, deadline = two_accounts
    ids = set(exporter.sim.deployment_ids())
    watched = with_data(
        prom,
        substitute(next(e for t, _, e, _ in QUERIES if t == "Deployments watched")),
        True,
        deadline,
    )
    assert float(watched[0]["value"][1]) == len(ACCOUNTS) * len(ids)
    for title, ref, expr, instant in QUERIES:
        query = substitute(expr)
        if (title, ref) in NO_DATA_ALLOWED or title.startswith("annotation"):
            evaluate(prom, query, instant)  # still has to run
            continue
        result = with_data(prom, query, instant, deadline)
        named = [s["metric"] for s in result if "deployment_id" in s["metric"]]
        for labels in named:
            assert labels.get("account") in ACCOUNTS, f"{title}/{ref} lost the account:\n{query}"
        if (title, ref) == ("Deployment status", "A"):  # from the info metric: never in flux
            rows = {(m["account"], m["deployment_id"]) for m in named}
            assert rows == {(a, d) for a in ACCOUNTS for d in ids}, rows


# ------------------------------------------------------------------ provisioning and compose


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE_PATH.read_text())
    return doc


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> repo path of the service's bind mounts (named volumes skipped)."""
    out: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = (COMPOSE_PATH.parent / source).resolve()
    return out


def _flag(command: list[str], name: str) -> str:
    values = [c.split("=", 1)[1] for c in command if c.startswith(f"{name}=")]
    assert len(values) == 1, (name, command)
    return values[0]


def test_compose_services_and_mounts_exist() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"exporter", "prometheus", "alertmanager", "grafana"}
    for name, service in services.items():
        for target, source in _mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
            assert ROOT in source.parents, f"{name}: {source} is outside the repository"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose.get("volumes", {}), f"{name}: volume {source}"
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"

    exporter = services["exporter"]
    assert exporter["build"] == "." and (ROOT / "Dockerfile").exists()
    assert exporter["command"] == ["--demo", "--web.listen-address=:7637"]
    assert "7637:7637" in exporter["ports"]


@pytest.mark.system
def test_compose_prometheus_gets_its_config_and_the_bundled_rules() -> None:
    service = _compose()["services"]["prometheus"]
    mounts = _mounts(service)
    config_path = _flag(service["command"], "--config.file")
    assert config_path in mounts, "the config file is mounted"
    config = yaml.safe_load(mounts[config_path].read_text())
    bundled = {p.name: p for p in (ROOT / "prometheus").glob("*.yml")}
    rule_sources = []
    for rule_file in config["rule_files"]:
        assert rule_file in mounts, f"{rule_file} is not mounted"
        rule_sources.append(mounts[rule_file])
    assert {p.name for p in rule_sources} == {"rules.yml", "thresholds.yml", "alerts.yml"}
    assert all(bundled[p.name] == p for p in rule_sources)
    # Targets are services of the stack on their ports.
    [qoder] = [j for j in config["scrape_configs"] if j["job_name"] == "qoder"]
    assert qoder["static_configs"][0]["targets"] == ["exporter:7637"]
    alertmanagers = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alertmanagers == ["alertmanager:9093"]
    check = run_tool("promtool", "check", "config", "--syntax-only", str(mounts[config_path]))
    assert check.returncode == 0, check.stdout + check.stderr


def test_compose_alertmanager_and_grafana_provisioning() -> None:
    services = _compose()["services"]
    am = services["alertmanager"]
    am_mounts = _mounts(am)
    am_config = _flag(am["command"], "--config.file")
    assert am_mounts[am_config] == ROOT / "prometheus" / "alertmanager.yml"

    grafana = services["grafana"]
    mounts = _mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == PROVISIONING
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    [ds] = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["uid"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090" and ds.get("isDefault")
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "qoder.yml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    folder = provider["options"]["path"]
    assert mounts[f"{folder}/qoder-exporter.json"] == DASHBOARD_PATH
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert mounts[home] == DASHBOARD_PATH


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.mark.system
def test_docker_compose_config_is_valid() -> None:
    command = _compose_command()
    if command is None:
        require_tool("docker-compose")  # skips here; under CI=true (which installs it) fails
        return
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_PATH), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
