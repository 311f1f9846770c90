"""The benchmarks at tiny sizes: well-formed results and correctness invariants, never time.

bench/run measures; these only check that what it measures is right (the cached body is the
plain client's body, the naive and incremental pollers agree, request counts stay within
their bounds, memory stays bounded by the window), so the benchmark cannot rot unnoticed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import __main__ as suite
from bench import api_cost, memory, poll, render, scale, scrape
from bench.common import machine, percentile, process_cpu_seconds, status_kib, table
from bench.naive import NaivePoller
from qoder_exporter.models import STATUSES
from qoder_exporter.simulator import Simulator

pytestmark = pytest.mark.system  # see [tool.pytest.ini_options] markers


def test_helpers() -> None:
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    assert process_cpu_seconds(__import__("os").getpid()) > 0
    assert status_kib("VmRSS") > 0
    info = machine()
    assert {"date", "cpu", "cores", "python"} <= set(info)
    text = table(["a", "b"], [[1, "x"], [22, "yy"]])
    assert text.splitlines()[1].startswith("|--")
    assert len(text.splitlines()) == 4


def test_cached_body_is_the_plain_clients_body_but_the_ages() -> None:
    checks = scrape.check_bodies(10)
    assert checks == {
        "gzip_equals_plain": True,
        "static_part_equal": True,
        "age_series_equal": True,
        "has_age_series": True,
    }


def test_scrape_bench_is_well_formed() -> None:
    results = scrape.scrape_bench([10], repeats=2, scrapes=5)
    series = results[10]
    for name in ("cached", "baseline"):
        s = series[name]
        assert len(s.runs) == 2
        assert all(len(r.latencies) == 5 for r in s.runs)
        assert 0 < s.p50 <= s.p99
        assert s.cpu_per_scrape >= 0
        assert 0 < s.gzip_bytes < s.plain_bytes
    text = scrape.report(results)
    assert "| 10 " in text
    assert "| 10 " in scrape.cpu_report(results)


def test_ha_pair_scrapes_twice_as_often() -> None:
    results = scrape.ha_bench(10, repeats=1, scrapes=4)
    assert set(results) == {("cached", 1), ("cached", 2), ("baseline", 1), ("baseline", 2)}
    for (_, scrapers), s in results.items():
        assert [len(r.latencies) for r in s.runs] == [4 * scrapers]
    assert "simultaneous scrapers" in scrape.ha_report(10, results)


@pytest.mark.parametrize("discover", [False, True])
def test_api_cost_pollers_agree_and_stay_within_bounds(discover: bool) -> None:
    n = 10
    result = api_cost.api_cost(
        n, discover=discover, quiet=3, burst_cycles=2, after=1, settle=1, naive_cycles=None
    )
    assert [c.phase for c in result.cycles] == ["startup"] + ["quiet"] * 3 + ["burst"] * 2 + [
        "after"
    ]
    # Naive and incremental pollers read the same API at the same instant: same recent_runs.
    assert all(c.mismatches == 0 for c in result.cycles)
    assert result.mismatches == 0
    assert all(c.naive is not None and c.naive > 0 for c in result.cycles)
    assert all(c.new_runs > 0 for c in result.phase("burst"))
    quiet = [c.total for c in result.phase("quiet")]
    if discover:
        assert max(quiet) <= suite.FEW
    else:
        # One page per deployment, plus a metadata page when the 5-minute refresh is due.
        assert max(quiet) <= n + 1
        assert result.incremental("quiet") <= n
    assert result.naive("quiet") is not None
    assert result.naive("quiet") >= result.incremental("quiet")
    for c in result.cycles:
        assert 0 <= c.finished <= c.in_flight_before
        if discover and c.phase != "startup":
            # The floor is what any reader of the feed needs: ours cannot do with less.
            read = c.requests.get("list_all_runs", 0) - sum(c.status_lists.values())
            assert 0 <= c.floor_pages <= read + c.requests.get("get_run_global", 0)
    assert "recent_runs agree" in api_cost.report([result])
    assert result.mode in api_cost.diagnosis([result])


def test_naive_poller_matches_the_simulators_truth() -> None:
    with Simulator(seed=3, deployments=5, token="pt-bench") as sim:
        url = sim.serve("127.0.0.1", 0)
        ids = sim.deployment_ids()
        for deployments in (ids, None):
            naive = NaivePoller(url, "pt-bench", deployments=deployments, lookback=6 * 3600)
            seen = naive.poll(sim.clock.now())
            naive.close()
            for d in ids:
                zero = dict.fromkeys(STATUSES, 0)
                assert seen.get(d, zero) == sim.truth_recent(d, 6 * 3600)
            assert naive.requests > 0


def test_poll_time_is_well_formed() -> None:
    setting = poll.Setting(discover=False, concurrency=2, rps=1000.0)
    (result,) = poll.poll_time(6, (setting,), latency=0.01, cycles=2, settle=1)
    assert len(result.cycles) == 2
    for cycle in result.cycles:
        assert cycle["ok"]
        assert cycle["requests"] >= 6  # at least a page per deployment
        assert cycle["cpu_poll"] > 0 and cycle["cpu_render"] > 0
        assert cycle["tracked"] > 0
    assert result.serial_s() == pytest.approx(result.requests * 0.01)
    assert result.concurrency_floor_s() == pytest.approx(result.serial_s() / 2)
    assert "| 6 " in poll.report([result])
    assert "| 6 " in poll.cpu_report([result])


def test_memory_is_bounded_by_the_window() -> None:
    row = memory.measure(1000, deployments=10)
    assert row["tracked"] == 1000
    # Rolling a whole window forward neither loses the window nor keeps what left it.
    assert 0.9 * 1000 <= row["tracked_after_roll"] <= row["tracked_after_roll_max"] <= 1050
    assert row["rss_full_kib"] >= row["rss_base_kib"] > 0
    assert "| 1,000 " in memory.report([dict(row, repeats=1)])


def test_results_file_is_written(tmp_path: Path) -> None:
    out = suite.Results()
    out.targets.append(["a target", "1 ms", "met"])
    out.headline.append(["a figure", "2 ms", "`bench/run`"])
    out.sections.append(("1. Something", "| a |\n|---|\n| 1 |"))
    path = tmp_path / "RESULTS.md"
    suite.write(path, out, machine(), "bench/run", 0.0)
    text = path.read_text()
    assert text.startswith("# Benchmark results")
    for part in ("bench/run", "## Targets", "## Headline", "## 1. Something", "cores"):
        assert part in text


def test_discover_diagnosis_names_the_costs() -> None:
    r = api_cost.CostResult(1000, True)
    for total in (20, 30):
        c = api_cost.Cycle(
            "quiet",
            {"list_all_runs": total, "get_run_global": 2},
            status_lists={"pending": 1, "running": 3},
            in_flight_before=300,
            finished=90,
            floor_pages=12,
        )
        r.cycles.append(c)
    big = api_cost.CostResult(1000, True, server="g1-1000", cycles=list(r.cycles))
    text = suite.discover_diagnosis(r, [r, big])
    for part in ("1,000 deployments", "4 status-filtered", "2 get_run_global", "needs 12 pages"):
        assert part in text


def test_scale_bench_is_well_formed() -> None:
    cron, busy = scale.run([6], cycles=1, settle=1)
    assert (cron.world, busy.world) == ("cron", "busy")
    for result in (cron, busy):
        (cycle,) = result.result.cycles
        assert cycle["series"] > 6 and 0 < cycle["gzip_bytes"] < cycle["body_bytes"]
        assert 0 <= cycle["deployments_rendered"] <= 6  # never more than the deployments
    assert "| cron  | 6 " in scale.report([cron, busy])


def test_the_cron_world_keeps_the_deployments_and_spreads_their_schedules() -> None:
    from qoder_exporter.simulator.world import default_specs

    specs = scale.cron_world(400, 1, 86400.0)
    plain = default_specs(400, 1, 0.0, False, 86400.0)
    assert [s.name for s in specs] == [s.name for s in plain]
    scheduled = [s for s in specs if s.interval_s is not None]
    hourly = [s for s in scheduled if s.interval_s == 3600.0]
    assert 0.5 < len(hourly) / len(scheduled) < 0.7
    assert all(0 <= s.phase_s < (s.interval_s or 0) for s in scheduled)
    assert len({s.phase_s for s in hourly}) > 40  # at many cron minutes, not all at :00
    daily = [s for s in scale.daily_world(400, 1, 86400.0) if s.interval_s is not None]
    assert {s.interval_s for s in daily} == {86400.0}
    assert all(s.manual_rate_per_hour == 0.0 for s in daily)


def test_render_bench_quiet_poll_renders_nothing_again() -> None:
    row = render.measure(40, 0.5)
    assert row["quiet_rendered"] == 0  # same values, new view objects: nothing re-rendered
    assert 0 < row["busy_rendered"] < 40
    assert row["series"] > 40 and 0 < row["gz"] < row["body"]
    assert "| 40 " in render.report([row], 0.5)
