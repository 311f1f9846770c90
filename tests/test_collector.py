"""Golden exposition for a fixed snapshot, parsed back with prometheus_client's parsers."""

from __future__ import annotations

import gzip
import os
import platform
import re
from dataclasses import replace
from pathlib import Path

from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families

from qoder_exporter import __version__
from qoder_exporter.client import ERROR_KINDS
from qoder_exporter.collector import API_ENDPOINTS, Exposition
from qoder_exporter.filters import DEFAULT_METRICS, MetricFilter, MetricsConfig, join_patterns
from qoder_exporter.models import RUN_ERROR_TYPES, Deployment
from qoder_exporter.simulator import Simulator
from qoder_exporter.snapshot import DeploymentView, HistogramData, Snapshot
from qoder_exporter.sync import QUEUE_BUCKETS, SESSION_TOKEN_BUCKETS

from .harness import fresh_snapshot

GOLDEN = Path(__file__).parent / "testdata" / "golden.prom"
NOW = 1_781_400_000.0


def fixed_snapshot() -> Snapshot:
    dep = Deployment(
        id="dep_019ec556114c78f8b60ee34fcb98bf59",
        name='nightly "report"',
        status="active",
        agent_id="agent_019eb4d4a06d747c865d5800b9c57ae2",
        schedule="30 9 * * 1-5 (UTC)",
        consecutive_failures=1,
        next_trigger_at=NOW + 600,
        agent_version="3",
        upcoming_runs_at=(NOW + 300, NOW + 3900),  # preferred over next_trigger_at
    )
    paused = Deployment(
        id="dep_019ec556114c78f8b60ee34fcb98bf60",
        name="weekly",
        status="paused",
        agent_id="agent_1",
        schedule="manual",
        paused_reason="error",
    )
    archived = Deployment(
        id="dep_019ec556114c78f8b60ee34fcb98bf61",
        name="old_archived_1781000000",
        status="active",  # the API keeps it: the info metric says archived
        agent_id="agent_2",
        schedule="0 * * * * (UTC)",
        archived=True,
    )
    return Snapshot(
        taken_at=NOW,
        buckets=(10.0, 60.0),
        deployments=(
            DeploymentView(
                id=dep.id,
                info=dep,
                recent={"pending": 1, "running": 2, "completed": 10, "failed": 3, "skipped": 1},
                totals={"completed": 4, "failed": 2, "skipped": 1},
                by_trigger={
                    ("completed", "schedule"): 3,
                    ("completed", "manual"): 1,
                    ("failed", "retry"): 2,
                    ("skipped", "schedule"): 1,
                },
                retried_failures=1,
                queue=HistogramData((1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3), 4000.5),
                consecutive_failures=2,
                last_run=NOW - 60.0,
                last_failure=NOW - 30.0,
                expected_run=NOW + 300,
                durations={
                    "completed": HistogramData((1, 3, 4), 130.5),
                    "failed": HistogramData((2, 2, 2), 9.0),
                },
                errors={"unknown_error": 1, "not_documented_error": 1},
                last_success=NOW - 120.0,
                last_finished_status="failed",
                oldest_in_flight={"running": NOW - 3600.0},
                sync_ok=True,
                last_error=None,
            ),
            DeploymentView(
                id=paused.id,
                info=paused,
                recent={},
                totals={},
                durations={},
                errors={},
                last_success=None,
                last_finished_status=None,
                oldest_in_flight={},
                sync_ok=False,
                last_error="list_runs: HTTP 500",
            ),
            DeploymentView(
                id=archived.id,
                info=archived,
                recent={},
                totals={"completed": 2},  # no by_trigger (a view from an old state): "other"
                durations={},
                errors={},
                last_success=NOW - 86400.0,
                last_finished_status="completed",
                oldest_in_flight={},
                sync_ok=True,
                last_error=None,
                last_run=NOW - 86400.0 - 10,
            ),
        ),
        up=True,
        polls_done=3,
        last_success_poll=NOW,
        polls={"success": 3, "failure": 1},
        poll_duration=HistogramData((3, 4), 1.25),
        poll_duration_buckets=(0.5,),
        requests={("list_runs", "200"): 7, ("list_runs", "500"): 1},
        request_durations={"list_runs": HistogramData((8, 8), 0.4)},
        request_duration_buckets=(0.1,),
        rate_limit_waits=2,
        rate_limit_wait_seconds=0.5,
        invalid_records={"run": 1},
        api_errors={("list_runs", "api_error"): 2, ("list_runs", "teapot_error"): 1},
        tracked_runs=17,
    )


def render(openmetrics: bool = False, compress: bool = False) -> bytes:
    return Exposition(fixed_snapshot(), lambda: NOW + 30).body(
        openmetrics=openmetrics, compress=compress
    )


def _normalise(text: str) -> str:
    # The Python version is the one value that depends on the machine.
    return text.replace(f'python_version="{platform.python_version()}"', 'python_version="X"')


def test_golden_text_exposition() -> None:
    body = _normalise(render().decode())
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(body)
    assert body == GOLDEN.read_text(), "run with UPDATE_GOLDEN=1 and review the diff"


def test_text_exposition_parses_back() -> None:
    families = {f.name: f for f in text_string_to_metric_families(render().decode())}
    runs: dict[str, float] = {}
    for s in families["qoder_deployment_runs"].samples:
        if s.labels["deployment_id"].endswith("59") and s.name.endswith("_total"):
            runs[s.labels["status"]] = runs.get(s.labels["status"], 0.0) + s.value
    assert runs == {"completed": 4.0, "failed": 2.0, "skipped": 1.0}
    ages = families["qoder_deployment_last_success_age_seconds"].samples
    # 30 s after the snapshot, 120 s (and a day) before it
    assert [s.value for s in ages] == [150.0, 86430.0]
    info = families["qoder_deployment_info"].samples[0]
    assert info.labels["name"] == 'nightly "report"'
    build = families["qoder_exporter_build_info"].samples[0]
    assert build.labels["version"] == __version__


def test_openmetrics_exposition_parses_and_ends_with_eof() -> None:
    body = render(openmetrics=True).decode()
    assert body.endswith("# EOF\n") and body.count("# EOF") == 1
    names = {f.name for f in om_parse(body)}
    assert {"qoder_deployment_runs", "qoder_deployment_run_duration_seconds", "qoder_up"} <= names


def test_gzip_body_decodes_to_the_plain_body() -> None:
    assert gzip.decompress(render(compress=True)) == render()
    assert gzip.decompress(render(openmetrics=True, compress=True)) == render(openmetrics=True)


def test_every_recent_status_is_present_even_when_zero() -> None:
    families = {f.name: f for f in text_string_to_metric_families(render().decode())}
    statuses = [
        s.labels["status"]
        for s in families["qoder_deployment_recent_runs"].samples
        if s.labels["deployment_id"].endswith("60")
    ]
    assert statuses == ["pending", "running", "completed", "failed", "skipped"]


def test_snapshot_swap_is_atomic_for_readers() -> None:
    expo = Exposition(fixed_snapshot(), lambda: NOW)
    before = expo.body(openmetrics=False, compress=False)
    empty = Snapshot(taken_at=NOW, buckets=(10.0,))
    expo.update(empty)
    after = expo.body(openmetrics=False, compress=False)
    assert before != after
    assert b"dep_019ec556114c78f8b60ee34fcb98bf59" not in after


def _samples(name: str) -> list[tuple[dict[str, str], float]]:
    families = {f.name: f for f in text_string_to_metric_families(render().decode())}
    return [(s.labels, s.value) for s in families[name].samples if not s.name.endswith("_created")]


def test_every_status_and_trigger_is_present_from_zero() -> None:
    deps = [d.id for d in fixed_snapshot().deployments]
    seen = {
        (lb["deployment_id"], lb["status"], lb["trigger"])
        for lb, _ in _samples("qoder_deployment_runs")
    }
    assert seen == {
        (d, s, t)
        for d in deps
        for s in ("completed", "failed", "skipped")
        for t in ("schedule", "manual", "retry", "other")
    }


def test_run_error_types_are_bounded_and_present_from_zero() -> None:
    by_dep: dict[str, dict[str, float]] = {}
    for lb, value in _samples("qoder_deployment_run_errors"):
        by_dep.setdefault(lb["deployment_id"], {})[lb["error_type"]] = value
    assert len(by_dep) == 3
    for errors in by_dep.values():
        assert set(errors) == set(RUN_ERROR_TYPES)
    first = by_dep["dep_019ec556114c78f8b60ee34fcb98bf59"]
    assert first["unknown_error"] == 1.0 and first["other"] == 1.0  # not_documented_error
    assert sum(first.values()) == 2.0


def test_api_errors_are_bounded_and_present_from_zero() -> None:
    errors = {
        (lb["endpoint"], lb["error_type"]): v for lb, v in _samples("qoder_exporter_api_errors")
    }
    assert set(errors) == {(e, k) for e in API_ENDPOINTS for k in ERROR_KINDS}
    assert errors[("list_runs", "api_error")] == 2.0
    assert errors[("list_runs", "other")] == 1.0  # teapot_error
    assert errors[("get_run_global", "timeout")] == 0.0


def test_archived_deployment_reads_archived_and_has_no_expected_run() -> None:
    info = {lb["deployment_id"]: lb for lb, _ in _samples("qoder_deployment_info")}
    assert info["dep_019ec556114c78f8b60ee34fcb98bf61"]["status"] == "archived"
    assert info["dep_019ec556114c78f8b60ee34fcb98bf59"]["agent_version"] == "3"
    archived = {lb["deployment_id"]: v for lb, v in _samples("qoder_deployment_archived")}
    assert archived["dep_019ec556114c78f8b60ee34fcb98bf61"] == 1.0
    expected = {
        lb["deployment_id"] for lb, _ in _samples("qoder_deployment_expected_run_timestamp_seconds")
    }
    assert expected == {"dep_019ec556114c78f8b60ee34fcb98bf59"}


def test_next_trigger_prefers_upcoming_runs_at() -> None:
    values = [v for _, v in _samples("qoder_deployment_next_trigger_timestamp_seconds")]
    assert values == [NOW + 300]  # not stats.next_trigger_at (NOW + 600)


def _reference(snap: Snapshot, *, openmetrics: bool) -> bytes:
    """What prometheus_client writes for collector.families(): the fragments must match it."""
    from prometheus_client import CollectorRegistry
    from prometheus_client import exposition as text_format
    from prometheus_client.openmetrics import exposition as om_format

    from qoder_exporter.collector import SnapshotCollector, _RenderFailuresCollector

    registry = CollectorRegistry(auto_describe=True)
    registry.register(SnapshotCollector(snap))
    registry.register(_RenderFailuresCollector(Exposition(Snapshot(0.0, ()), lambda: 0.0)))
    if openmetrics:
        body: bytes = om_format.generate_latest(registry)
        return body.removesuffix(b"# EOF\n")
    return text_format.generate_latest(registry)


def _static(body: bytes) -> bytes:
    """The body before the scrape-time ages."""
    return body[: body.index(b"# HELP qoder_deployment_last_success_age_seconds")]


def _varied_snapshot() -> Snapshot:
    """The fixed snapshot's deployments plus odd ones: escapes, exponents, no metadata."""
    snap = fixed_snapshot()
    odd = DeploymentView(
        id='dep_"odd"\\\n',
        info=Deployment(
            id="x",
            name="a\\b\nc",
            status="paused",
            agent_id="agent_é",
            schedule="",
            consecutive_failures=1234567,
            next_trigger_at=0.5,
        ),
        recent={"running": 10**7},
        totals={"failed": 1},
        durations={"skipped": HistogramData((0, 0, 1), 1e-9)},
        errors={"weird": 3},
        last_success=1e21,
        last_finished_status="skipped",
        oldest_in_flight={},
        sync_ok=False,
        last_error=None,
        retried_failures=10**9,
        consecutive_failures=7,
        last_run=123456.5,
        last_failure=1234567.0,
        reasons={"blocked": 2, "unknown": 0, 'we"ird': 1},
        tokens={"output": 5, "input": 10**7},
        session_tokens=HistogramData((0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2), 1e7 + 5 + 1.5e9),
        credits=1.5e-7,
        list_cost_usd=12.25,
    )
    bare = DeploymentView("dep_bare", None, {}, {}, {}, {}, None, None, {}, True, None)
    return Snapshot(
        taken_at=NOW,
        buckets=snap.buckets,
        deployments=(*snap.deployments[:1], odd, bare, *snap.deployments[1:]),
        missing=("dep_gone", 'dep_"gone2"'),
        up=True,
    )


def _accounts_snapshot() -> Snapshot:
    """Two accounts, one with a name to escape, watching one same deployment id."""
    varied = _varied_snapshot()
    intl = replace(varied, account="intl")
    china = replace(
        varied,
        account='cn"\\',
        deployments=varied.deployments[:2],
        missing=("dep_cn_gone",),
        up=False,
    )
    return replace(
        varied,
        deployments=(*intl.deployments, *china.deployments),
        missing=(*intl.missing, *china.missing),
        accounts=(intl, china),
    )


def test_fragments_match_prometheus_client_for_both_formats() -> None:
    varied = _varied_snapshot()
    odd_bounds = replace(varied, deployments=varied.deployments[2:3], buckets=(0.001, 2.5, 1e7))
    many = _accounts_snapshot()
    for snap in (fixed_snapshot(), varied, odd_bounds, Snapshot(taken_at=NOW, buckets=()), many):
        expo = Exposition(snap, lambda: NOW)
        for om in (False, True):
            body = expo.body(openmetrics=om, compress=False)
            assert _static(body) == _reference(snap, openmetrics=om)


def _without_ages(body: bytes) -> bytes:
    """The body before the scrape-time ages, whichever of them the filter kept."""
    for name in (b"last_success_age_seconds", b"oldest_in_flight_run_age_seconds"):
        at = body.find(b"# HELP qoder_deployment_" + name)
        if at >= 0:
            return body[:at]
    return body.removesuffix(b"# EOF\n")


METRICS_CONFIGS = (
    MetricsConfig(failed_duration_histogram=False),
    MetricsConfig(MetricFilter(deny=join_patterns(["qoder_deployment_run_.*", "qoder_up"]))),
    MetricsConfig(MetricFilter(deny=re.compile("qoder_deployment_watched_missing"))),
    MetricsConfig(
        MetricFilter(allow=join_patterns(["qoder_deployment_(info|runs|run_credits)", "x"])),
        failed_duration_histogram=False,
    ),
)


def test_fragments_follow_the_metrics_config_and_its_reload() -> None:
    """The filter and the failed-histogram switch drop the same lines from /metrics as from
    collector.families(), also when a reload brings another metrics: section."""
    varied = _varied_snapshot()
    expo = Exposition(varied, lambda: NOW)
    for metrics in (*METRICS_CONFIGS, DEFAULT_METRICS):
        snap = replace(varied, metrics=metrics)
        for fresh in (Exposition(snap, lambda: NOW), expo):
            fresh.update(snap)
            for om in (False, True):
                body = fresh.body(openmetrics=om, compress=False)
                assert _without_ages(body) == _reference(snap, openmetrics=om)
                assert gzip.decompress(fresh.body(openmetrics=om, compress=True)) == body
    body = expo.body(openmetrics=False, compress=False)
    assert b"qoder_deployment_run_credits_total" in body  # back to the defaults
    assert b'qoder_deployment_watched_missing{deployment_id="dep_gone"} 1.0' in body


def test_second_render_re_renders_only_the_changed_deployment() -> None:
    snap = _varied_snapshot()
    expo = Exposition(snap, lambda: NOW)
    assert expo.fragments.rendered == len(snap.deployments)
    # A new poll: fresh view objects (and a new sync time, which /metrics does not show)
    # for every deployment, new values for one only.
    changed = tuple(replace(d, recent=dict(d.recent)) for d in snap.deployments)
    changed = (
        changed[0],
        replace(changed[1], totals={"failed": 2}, by_trigger={("failed", "retry"): 2}),
        *changed[2:],
    )
    second = replace(snap, taken_at=NOW + 60, deployments=changed)
    expo.update(second)
    assert expo.fragments.rendered == len(snap.deployments) + 1
    for om in (False, True):
        body = expo.body(openmetrics=om, compress=False)
        assert _static(body) == _reference(second, openmetrics=om)
        gz = expo.body(openmetrics=om, compress=True)
        assert gzip.decompress(gz) == body
    expo.update(second)
    assert expo.fragments.rendered == len(snap.deployments) + 1


def test_gzip_blocks_are_compressed_again_only_where_lines_changed(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """With blocks of a few deployments, a poll that changes one deployment keeps the other
    blocks' gzip members; the body stays exact through changes, additions and removals."""
    from qoder_exporter import collector

    monkeypatch.setattr(collector, "_BLOCK_BYTES", 600)
    base = _varied_snapshot().deployments
    deps = [replace(base[i % len(base)], id=f"dep_{i:03}") for i in range(40)]

    def snap_of(views: list[DeploymentView]) -> Snapshot:
        return replace(_varied_snapshot(), deployments=tuple(views))

    def members(expo: Exposition) -> dict[int, bytes]:
        # the members themselves are held, so no id is reused while compared
        return {id(b.gz): b.gz for f in expo._families for b in f.blocks}

    expo = Exposition(snap_of(deps), lambda: NOW)
    assert max(len(f.blocks) for f in expo._families) >= 10
    steps = [
        lambda d: d.__setitem__(17, replace(d[17], recent={"running": 99})),
        lambda d: d.__setitem__(3, replace(d[3], errors={"other_error": 4})),
        lambda d: d.insert(20, replace(base[0], id="dep_020a")),
        lambda d: d.pop(5),
        lambda d: d.__setitem__(39, replace(d[39], last_success=NOW - 1.0)),
    ]
    for step in steps:
        before = members(expo)
        step(deps)
        snap = snap_of(deps)
        expo.update(snap)
        assert members(expo).keys() & before.keys(), "no block was kept"
        for om in (False, True):
            body = expo.body(openmetrics=om, compress=False)
            assert _static(body) == _reference(snap, openmetrics=om)
            assert gzip.decompress(expo.body(openmetrics=om, compress=True)) == body
    # A change of one deployment compresses again one block per family it shows in.
    before = members(expo)
    deps[30] = replace(deps[30], recent={"failed": 12345})
    expo.update(snap_of(deps))
    assert 1 <= len(members(expo).keys() - before.keys()) <= 2


def test_kept_views_and_plans_equal_fresh_ones_across_polls(sim: Simulator, poller_for) -> None:  # type: ignore[no-untyped-def]
    """The snapshot builder's kept views and the store's kept plans are what building them
    afresh gives, poll after poll; quiet deployments are not read from the store again."""
    poller = poller_for(discover=True)
    expo = Exposition(poller.snapshot, sim.clock.now)
    reused = 0
    for _ in range(6):
        before = {d.id: d for d in poller.snapshot.deployments}
        poller.poll_once()
        expo.update(poller.snapshot)
        # a deployment with nothing new keeps its view object, though its sync time moved
        reused += sum(before.get(d.id) is d for d in poller.snapshot.deployments)
        synced = poller.snapshot.last_sync
        assert {d.id for d in poller.snapshot.deployments} <= set(synced)
        assert all(sim.clock.now() - 1.0 <= t <= sim.clock.now() for t in synced.values())
        with poller.tracker.lock:
            fresh = fresh_snapshot(poller, sim.clock.now())
            store = poller.store
            for dep_id, state in store.deployments.items():
                plan = store.plan(dep_id, sim.clock.now(), 86400.0)
                state.plan_cache = None
                assert plan == store.plan(dep_id, sim.clock.now(), 86400.0)
        assert fresh.deployments == poller.snapshot.deployments
        assert fresh.last_sync == poller.snapshot.last_sync
        sim.advance(60.0)
    assert poller.views.built < 6 * len(poller.snapshot.deployments)
    assert reused > 0
    for om in (False, True):
        fresh_expo = Exposition(poller.snapshot, sim.clock.now)
        assert expo.body(openmetrics=om, compress=False) == fresh_expo.body(
            openmetrics=om, compress=False
        )


# A value for each field the exposition shows, different from the varied snapshot's second
# deployment's: each must reach /metrics after an incremental render.
_CHANGED_FIELDS = {
    "info": Deployment(id="x", name="renamed", status="paused", agent_id="a2", schedule="@hourly"),
    "recent": {"running": 3, "failed": 1},
    "totals": {"completed": 40},
    "durations": {"completed": HistogramData((1,) * (len(fixed_snapshot().buckets) + 1), 7.5)},
    "errors": {"agent_archived_error": 2},
    "last_success": 1.5e9,
    "last_finished_status": "completed",
    "sync_ok": True,
    "by_trigger": {("failed", "manual"): 5},
    "retried_failures": 11,
    "queue": HistogramData((2,) * (len(QUEUE_BUCKETS) + 1), 3.25),
    "consecutive_failures": 4,
    "last_run": 1.6e9,
    "last_failure": 1.7e9,
    "expected_run": 1.8e9,
    "reasons": {"cancelled": 2},
    "tokens": {"input": 123},
    "credits": 9.5,
    "list_cost_usd": 0.75,
    "session_tokens": HistogramData((1,) * (len(SESSION_TOKEN_BUCKETS) + 1), 2000.0),
}


def test_a_change_to_any_shown_field_reaches_the_body() -> None:
    """A changed deployment keeps the lines of the families whose inputs did not change:
    every field the exposition shows must be among some family's inputs."""
    from qoder_exporter.fragments import _RENDERED

    assert set(_CHANGED_FIELDS) == set(_RENDERED) - {"id"}
    snap = _varied_snapshot()
    expo = Exposition(snap, lambda: NOW)
    for name, value in _CHANGED_FIELDS.items():
        deps = list(snap.deployments)
        assert getattr(deps[1], name) != value, name
        deps[1] = replace(deps[1], **{name: value})
        changed = replace(snap, deployments=tuple(deps))
        expo.update(changed)
        for om in (False, True):
            assert _static(expo.body(openmetrics=om, compress=False)) == _reference(
                changed, openmetrics=om
            ), name
            assert gzip.decompress(expo.body(openmetrics=om, compress=True)) == expo.body(
                openmetrics=om, compress=False
            )
        expo.update(snap)
        assert _static(expo.body(openmetrics=False, compress=False)) == _reference(
            snap, openmetrics=False
        ), f"{name} back"
