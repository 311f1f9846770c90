"""Sharding: the assignment (property-tested), the flags, and three shard processes scraped by
a real Prometheus whose sums over the shards equal one unsharded process, exactly."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from bench import api_cost
from qoder_exporter.cli import parse_args
from qoder_exporter.poller import Poller
from qoder_exporter.sharding import Shard, ShardError, shard_from_pod, shard_of
from qoder_exporter.simulator import ManualClock, Simulator

from .conftest import TOKEN, make_config
from .harness import Prometheus
from .truth import STEP
from .waiting import eventually

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parent.parent
_IDS = st.from_regex(r"dep_[A-Za-z0-9_-]{1,40}", fullmatch=True)


# --- the assignment --------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(ids=st.lists(_IDS, max_size=50, unique=True), total=st.integers(1, 64))
def test_every_deployment_is_in_exactly_one_shard(ids: list[str], total: int) -> None:
    shards = [Shard(i, total) for i in range(total)]
    for dep_id in ids:
        owners = [s.index for s in shards if s.owns(dep_id)]
        assert owners == [shard_of(dep_id, total)]


def test_the_assignment_is_the_same_on_every_restart() -> None:
    """sha256, not hash(): a fixed vector, and a process with another hash seed agrees."""
    ids = [f"dep_{n:04x}" for n in range(200)]
    here = [shard_of(d, 7) for d in ids]
    assert here[:8] == [shard_of(d, 7) for d in ids[:8]]
    assert (shard_of("dep_019ec556114c78f8b60ee34fcb98bf59", 3), shard_of("dep_a", 5)) == (
        _fixed("dep_019ec556114c78f8b60ee34fcb98bf59", 3),
        _fixed("dep_a", 5),
    )
    code = (
        "from qoder_exporter.sharding import shard_of;"
        "print([shard_of(f'dep_{n:04x}', 7) for n in range(200)])"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": seed, "PATH": ""},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == str(here)
    assert len(set(here)) == 7, "every shard gets some of 200 deployments"


def _fixed(dep_id: str, total: int) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(dep_id.encode()).digest()[:8], "big") % total


@pytest.mark.parametrize(
    ("pod", "total", "index"),
    [("qoder-exporter-0", 3, 0), ("qoder-exporter-2", 3, 2), ("a-b-10", 11, 10)],
)
def test_the_shard_is_the_statefulset_pod_ordinal(pod: str, total: int, index: int) -> None:
    assert shard_from_pod(pod, total) == Shard(index, total)
    args = parse_args(["--config", "x.yaml", f"--pod={pod}", f"--total-shards={total}"])
    assert args.shard == Shard(index, total)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--shard=3", "--total-shards=3"], "--shard: must be from 0 to --total-shards - 1 (2)"),
        (["--total-shards=0"], "--total-shards: must be from 1 to 1024"),
        (["--pod=qoder-exporter"], "--pod: expected a StatefulSet pod name ending in -<ordinal>"),
        (["--pod=qoder-exporter-3", "--total-shards=3"], "--pod: ordinal 3 of"),
        (["--pod=q-1", "--shard=1", "--total-shards=2"], "set either --shard or --pod"),
    ],
)
def test_bad_shard_flags_are_refused(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--config", "x.yaml", *flags])
    assert message in capsys.readouterr().err


def test_shard_rejects_out_of_range() -> None:
    with pytest.raises(ShardError):
        Shard(2, 2)


@pytest.mark.parametrize("discover", [False, True])
def test_shard_pollers_split_the_deployments(sim: Simulator, discover: bool) -> None:
    """In process: the shards' deployments are disjoint and cover all; the feed's runs of
    other shards' deployments do not make a shard list deployments again."""
    pollers = [
        Poller(make_config(sim, discover=discover), clock=sim.clock.now, shard=Shard(i, 3))
        for i in range(3)
    ]
    for p in pollers:
        assert p.poll_once()
    sim.reset_counts()
    for _ in range(3):  # within METADATA_REFRESH_S: a listing would be a relisting
        sim.advance(60)
        for p in pollers:
            assert p.poll_once()
    if discover:
        assert sim.request_counts["list_deployments"] == 0, "no relisting"
    seen = [{v.id for v in p.snapshot.deployments} for p in pollers]
    assert sorted(d for s in seen for d in s) == sorted(sim.deployment_ids())
    assert all(p.snapshot.shard == Shard(i, 3) for i, p in enumerate(pollers))
    for p in pollers:
        p.close()


@pytest.mark.parametrize("discover", [False, True])
def test_bench_measures_shards_against_one_process(discover: bool) -> None:
    r = api_cost.shard_cost(
        12, discover=discover, shards=3, quiet=2, burst_cycles=2, after=1, settle=1
    )
    assert r.agree, "the shards' counts and windows equal the unsharded poller's"
    for phase in ("quiet", "burst"):
        for cycle in r.cycles[phase]:
            if discover:
                assert all(n > 0 for n in cycle[1:]), "every shard reads the feed"
            else:
                # The shards share the runs' requests; each lists the deployments (1 page).
                assert cycle[0] <= sum(cycle[1:]) <= cycle[0] + 2
    assert "all shards / unsharded" in api_cost.shard_report([r])


# --- for real: shard processes, one unsharded process, one Prometheus ------------------------


class _Exporter:
    def __init__(self, config: Path, log: Path, *flags: str) -> None:
        self.log_path = log
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "exporter.py"),
                "--config",
                str(config),
                "--web.listen-address",
                "127.0.0.1:0",
                *flags,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            cwd=ROOT,
        )
        self.port = eventually(self._port, 30, lambda: f"the exporter's port: {self._text()}")
        self.address = f"127.0.0.1:{self.port}"

    def _text(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def _port(self) -> int | None:
        if self.proc.poll() is not None:
            pytest.fail(f"the exporter exited ({self.proc.returncode}):\n{self._text()}")
        m = re.search(r"listening on http://[^:]+:(\d+)/metrics", self._text())
        return int(m.group(1)) if m else None

    def successful_polls(self) -> float:
        body = requests.get(f"http://{self.address}/metrics", timeout=5).text
        for family in text_string_to_metric_families(body):
            for s in family.samples:
                if s.name == "qoder_exporter_polls_total" and s.labels["result"] == "success":
                    return s.value
        return 0.0

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def world() -> Iterator[Simulator]:
    """A stepped world two hours behind the wall clock with one hour of history: every run is
    well inside the lookback, and the exporters' windows follow the API's (frozen) clock, so
    every process sees the same world between steps."""
    sim = Simulator(
        seed=23, deployments=12, token=TOKEN, clock=ManualClock(time.time() - 7200), history_s=3600
    )
    sim.serve("127.0.0.1", 0)
    yield sim
    sim.close()


def _write_config(path: Path, sim: Simulator, discover: bool) -> None:
    ids = "".join(f"  - {d}\n" for d in sim.deployment_ids())
    watch = "discover: true\n" if discover else f"deployments:\n{ids}"
    path.write_text(
        f"api:\n  url: {sim.base_url}\n  token: {TOKEN}\n  requests_per_second: 200\n"
        f"poll_interval: 1s\nlookback: 24h\n{watch}"
    )


# Per-deployment series compared; the age gauges are computed at scrape time (wall clock).
_COMPARED = (
    "qoder_deployment_info",
    "qoder_deployment_recent_runs",
    "qoder_deployment_runs_total",
    "qoder_deployment_run_duration_seconds_bucket",
    "qoder_deployment_run_duration_seconds_sum",
    "qoder_deployment_run_duration_seconds_count",
    "qoder_deployment_last_success_timestamp_seconds",
    "qoder_deployment_last_run_status",
    "qoder_deployment_run_errors_total",
    "qoder_deployment_sync_success",
    "qoder_deployment_last_run_timestamp_seconds",
    "qoder_deployment_consecutive_failures",
    "qoder_deployment_run_queue_seconds_count",
)


def _vector(prom: Prometheus, name: str, job: str) -> dict[tuple[tuple[str, str], ...], str]:
    rows = prom.query(f'sum without (instance, job) ({name}{{job="{job}"}})')
    return {tuple(sorted(r["metric"].items())): r["value"][1] for r in rows}


def _settle(exporters: list[_Exporter]) -> None:
    """Wait until every process has finished two polls since the world last changed."""
    before = [e.successful_polls() for e in exporters]
    for e, n in zip(exporters, before, strict=True):
        eventually(
            lambda e=e, n=n: e.successful_polls() >= n + 2,
            90,  # four exporters, a Prometheus and the simulator share two loaded cores in CI
            lambda e=e: f"a poll after the step; the exporter's log ends:\n{e._text()}",
        )


@pytest.mark.parametrize("discover", [False, True])
def test_three_shards_sum_to_one_unsharded_process(
    world: Simulator, tmp_path: Path, discover: bool
) -> None:
    config = tmp_path / "config.yaml"
    _write_config(config, world, discover)
    exporters: list[_Exporter] = []
    prom: Prometheus | None = None
    try:
        flags: list[list[str]] = [
            ["--shard=0", "--total-shards=3"],
            ["--shard=1", "--total-shards=3"],
            ["--pod=qoder-exporter-2", "--pod-namespace=monitoring", "--total-shards=3"],
            [],
        ]
        for n, f in enumerate(flags):
            exporters.append(_Exporter(config, tmp_path / f"exporter{n}.log", *f))
        shards, single = exporters[:3], exporters[3]
        prom = Prometheus({"shards": [e.address for e in shards], "single": [single.address]}, [])
        _settle(exporters)
        for _ in range(4):
            world.advance(STEP)
            _settle(exporters)
        # Every process has read the final world; now wait for a scrape of it.
        scraped = time.time()
        eventually(
            lambda: (
                all(float(r["value"][1]) > scraped + 1 for r in prom.query("timestamp(qoder_up)"))
                and len(prom.query("qoder_up")) == 4
            ),
            30,
            "Prometheus scraped every process after the last poll",
        )
        for name in _COMPARED:
            sharded, unsharded = _vector(prom, name, "shards"), _vector(prom, name, "single")
            assert unsharded, name
            assert sharded == unsharded, name
        total = prom.query('sum(qoder_deployment_runs_total{job="single"})')
        assert float(total[0]["value"][1]) > 0, "runs finished while the exporters watched"
        owners = prom.query('count by (deployment_id) (qoder_deployment_info{job="shards"})')
        assert len(owners) == len(world.deployment_ids())
        assert {r["value"][1] for r in owners} == {"1"}, "no deployment in two shards"
        info = prom.query('qoder_exporter_shard_info{job="shards"}')
        assert sorted((r["metric"]["shard"], r["metric"]["total_shards"]) for r in info) == [
            ("0", "3"),
            ("1", "3"),
            ("2", "3"),
        ]
        assert prom.query('qoder_exporter_shard_info{job="single"}') == []
    finally:
        if prom is not None:
            prom.close()
        for e in exporters:
            e.close()
