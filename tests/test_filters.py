"""Cardinality control: discover include/exclude, the metric allowlist/denylist, and the
failed-runs duration switch; and the series-per-deployment figures the README publishes."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from qoder_exporter.collector import Exposition
from qoder_exporter.config import DEFAULT_DURATION_BUCKETS, ConfigError, config_from_dict
from qoder_exporter.filters import MetricsConfig
from qoder_exporter.poller import Poller
from qoder_exporter.simulator import DeploymentSpec, Simulator

from .test_collector import NOW, fixed_snapshot

ROOT = Path(__file__).resolve().parent.parent
BASE = {"api": {"token": "t0k3n"}}

# The leanest configuration the README's Scaling section documents: what success/failure
# rates, freshness, streaks, pauses and sync health need.
LEANEST: dict[str, Any] = {
    "allowlist": [
        "qoder_up",
        "qoder_exporter_.*",
        "qoder_deployment_(info|runs|last_success_timestamp_seconds|consecutive_failures)",
        "qoder_deployment_(paused|sync_success|watched_missing)",
    ],
}


def read(doc: dict[str, Any]) -> Any:
    return config_from_dict({**BASE, **doc}, env={})


def errors(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        read(doc)
    return caught.value.errors


# Config


def test_discover_true_keeps_working_without_a_filter() -> None:
    config = read({"discover": True})
    assert config.discover and config.discover_filter is None


def test_discover_mapping_turns_discover_on_with_its_filter() -> None:
    config = read(
        {
            "discover": {
                "include": {"name": "prod-.*", "statuses": ["active"]},
                "exclude": {"agent_ids": ["agent_x"]},
            }
        }
    )
    assert config.discover
    keep = config.discover_filter
    assert keep is not None and keep.include is not None and keep.exclude is not None
    assert keep.include.statuses == frozenset({"active"})
    assert keep.exclude.agent_ids == frozenset({"agent_x"})


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        (
            {"discover": {"include": {"name": "("}}},
            "discover.include.name: invalid regular expression '(': "
            "missing ), unterminated subpattern at position 0",
        ),
        (
            {"discover": {"exclude": {"statuses": ["stopped"]}}},
            "discover.exclude.statuses[0]: must be one of active, paused, archived, got 'stopped'",
        ),
        (
            {"discover": {"include": {}}},
            "discover.include: must set at least one of: name, agent_ids, statuses",
        ),
        (
            {"discover": {"include": {"agent_ids": "agent_1"}}},
            "discover.include.agent_ids: must be a non-empty list of strings, got 'agent_1'",
        ),
        (
            {"discover": {"include": {"names": "x"}}},
            "discover.include.names: unknown key (did you mean 'name'?)",
        ),
        (
            {"discover": {"only": {"name": "x"}}},
            "discover.only: unknown key (expected one of: include, exclude)",
        ),
        (
            {"discover": True, "metrics": {"allowlist": ["a"], "denylist": ["b"]}},
            "metrics: set either metrics.allowlist or metrics.denylist, not both",
        ),
        (
            {"discover": True, "metrics": {"denylist": ["ok", "[z-a]"]}},
            "metrics.denylist[1]: invalid regular expression '[z-a]': "
            "bad character range z-a at position 1",
        ),
        (
            {"discover": True, "metrics": {"allowlist": []}},
            "metrics.allowlist: must be a non-empty list of strings, got an empty list",
        ),
        (
            {"discover": True, "metrics": {"failed_duration_histogram": "no"}},
            "metrics.failed_duration_histogram: must be true or false, got 'no'",
        ),
        (
            {"deployments": ["dep_a"], "discover": {"include": {"name": "x"}}},
            "discover: set either deployments or discover: true, not both",
        ),
    ],
)
def test_filter_config_errors_name_the_key(doc: dict[str, Any], error: str) -> None:
    assert errors(doc) == [error]


# Collector


def render(metrics: MetricsConfig) -> str:
    snap = dataclasses.replace(fixed_snapshot(), metrics=metrics)
    return Exposition(snap, lambda: NOW + 30).body(openmetrics=False, compress=False).decode()


def family_names(text: str) -> set[str]:
    # render_failures says whether the rest could be rendered at all: never filtered.
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "qoder_exporter_render_failures" in names
    return names - {"qoder_exporter_render_failures"}


def metrics_config(**section: Any) -> MetricsConfig:
    return read({"discover": True, "metrics": section}).metrics


def test_allowlist_keeps_only_matching_families_counters_with_or_without_total() -> None:
    text = render(
        metrics_config(allowlist=["qoder_up", "qoder_deployment_runs_total", "qoder_.*_age_.*"])
    )
    assert family_names(text) == {
        "qoder_up",
        "qoder_deployment_runs",
        "qoder_deployment_last_success_age_seconds",
        "qoder_deployment_oldest_in_flight_run_age_seconds",
    }
    assert family_names(render(metrics_config(allowlist=["qoder_deployment_runs"]))) == {
        "qoder_deployment_runs"
    }


def test_denylist_drops_matching_families_and_patterns_are_anchored() -> None:
    full = family_names(render(MetricsConfig()))
    text = render(metrics_config(denylist=["qoder_deployment_run_.*", "up"]))
    dropped = full - family_names(text)
    assert dropped == {
        "qoder_deployment_run_duration_seconds",
        "qoder_deployment_run_errors",
        "qoder_deployment_run_retried_failures",
        "qoder_deployment_run_queue_seconds",
        "qoder_deployment_run_failure_reasons",
        "qoder_deployment_run_tokens",
        "qoder_deployment_run_session_tokens",
        "qoder_deployment_run_credits",
        "qoder_deployment_run_list_cost_usd",
    }  # "up" matches no whole name: qoder_up stays


def test_failed_duration_histogram_switch_drops_only_the_failed_series() -> None:
    def statuses(text: str) -> set[str]:
        return {
            s.labels["status"]
            for f in text_string_to_metric_families(text)
            if f.name == "qoder_deployment_run_duration_seconds"
            for s in f.samples
        }

    assert statuses(render(MetricsConfig())) == {"completed", "failed"}
    assert statuses(render(metrics_config(failed_duration_histogram=False))) == {"completed"}


def series_per_deployment(metrics: MetricsConfig) -> int:
    """Sample lines of one deployment, with the default buckets and every series present."""
    snap = fixed_snapshot()
    view = dataclasses.replace(snap.deployments[0], durations={}, queue=None)
    snap = dataclasses.replace(
        snap, buckets=DEFAULT_DURATION_BUCKETS, deployments=(view,), metrics=metrics
    )
    text = Exposition(snap, lambda: NOW).body(openmetrics=False, compress=False).decode()
    return sum(f'deployment_id="{view.id}"' in line for line in text.splitlines())


def test_readme_publishes_the_measured_series_per_deployment() -> None:
    """The Scaling section's figures are these renders' line counts: they cannot drift."""
    rows = {
        "defaults": series_per_deployment(MetricsConfig()),
        "no failed histogram": series_per_deployment(
            metrics_config(failed_duration_histogram=False)
        ),
        "leanest": series_per_deployment(metrics_config(**LEANEST)),
    }
    assert rows["leanest"] < rows["no failed histogram"] < rows["defaults"]
    readme = (ROOT / "README.md").read_text()
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    for text in (readme, results):
        for row, count in rows.items():
            assert re.search(rf"\|\s*{row}\s*\|\s*{count}\s*\|", text), (row, count)
    for pattern in LEANEST["allowlist"]:
        assert pattern in readme, pattern


# Discover filters against the simulator


@pytest.fixture
def world() -> Any:
    sim = Simulator(seed=11, deployments=0, token="t0k3n")
    for name in ("prod-a", "prod-b", "prod-b-canary", "dev-c"):
        sim.add_deployment(DeploymentSpec(name=name, interval_s=120, failure_rate=0.3))
    sim.add_deployment(DeploymentSpec(name="prod-held", interval_s=120, paused=True))
    sim.serve("127.0.0.1", 0)
    yield sim
    sim.close()


def poller_with(sim: Simulator, discover: dict[str, Any]) -> Poller:
    doc = {
        "api": {"url": sim.base_url, "token": "t0k3n", "requests_per_second": 1000},
        "discover": discover,
        "concurrency": 2,
    }
    poller = Poller(config_from_dict(doc, env={}), clock=sim.clock.now)
    poller.client.sleep = lambda _s: None
    return poller


def watched_names(poller: Poller) -> set[str]:
    return {poller.watch.deployments[d].name for d in poller.watch.watched()}


def exposed_ids(poller: Poller) -> set[str]:
    return {d.id for d in poller.snapshot.deployments}


def run(sim: Simulator, poller: Poller, cycles: int) -> None:
    for _ in range(cycles):
        sim.advance(60)
        assert poller.poll_once()


def test_include_and_exclude_select_the_watched_deployments(world: Simulator) -> None:
    poller = poller_with(
        world,
        {"include": {"name": "prod-.*", "statuses": ["active"]}, "exclude": {"name": ".*-canary"}},
    )
    try:
        assert poller.poll_once()
        run(world, poller, 3)
        assert watched_names(poller) == {"prod-a", "prod-b"}
        assert exposed_ids(poller) == set(poller.watch.watched())
        assert len(poller.watch.excluded) == 3
    finally:
        poller.close()


def test_runs_of_filtered_out_deployments_in_the_feed_do_not_relist_every_cycle(
    world: Simulator,
) -> None:
    poller = poller_with(world, {"exclude": {"name": "dev-.*|.*-canary"}})
    try:
        assert poller.poll_once()
        run(world, poller, 2)
        world.reset_counts()
        # Every excluded deployment runs every 2 minutes: the feed shows their runs each cycle.
        run(world, poller, 6)
        assert world.request_counts["list_all_runs"] >= 6
        # Only the 5-minute metadata refresh lists them, not a relist per cycle.
        assert world.request_counts["list_deployments"] <= 1
        # A new deployment (selected) is still found through the feed's relist.
        world.add_deployment(DeploymentSpec(name="prod-new", interval_s=60))
        run(world, poller, 3)
        assert "prod-new" in watched_names(poller)
        # A new excluded one costs one relist, not one per cycle.
        world.add_deployment(DeploymentSpec(name="dev-new", interval_s=60))
        run(world, poller, 3)
        world.reset_counts()
        run(world, poller, 4)
        assert world.request_counts["list_deployments"] <= 1
        assert "dev-new" not in watched_names(poller)
    finally:
        poller.close()


def test_a_deployment_that_stops_matching_loses_its_series(world: Simulator) -> None:
    spec = DeploymentSpec(
        name="prod-pausing", interval_s=60, paused=True, paused_at=world.clock.now() + 200
    )
    target = world.add_deployment(spec)
    poller = poller_with(world, {"include": {"statuses": ["active"]}})
    try:
        assert poller.poll_once()
        run(world, poller, 2)
        assert "prod-held" not in watched_names(poller)
        assert target in exposed_ids(poller)
        run(world, poller, 6)  # paused at 200 s; the metadata refresh (5 minutes) sees it
        assert target not in exposed_ids(poller)
        assert target not in poller.store.deployments
        assert target not in poller.watch.forgotten  # left out, not deleted
        assert target in poller.watch.excluded
    finally:
        poller.close()
