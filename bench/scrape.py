"""Scrape latency over real HTTP for N deployments, against re-rendering on every scrape.

Run: .venv/bin/python bench/scrape.py [--deployments 1000] [--scrapes 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import requests
from prometheus_client import CollectorRegistry, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qoder_exporter.collector import Exposition, SnapshotCollector
from qoder_exporter.config import DEFAULT_DURATION_BUCKETS
from qoder_exporter.models import Deployment
from qoder_exporter.server import ExporterServer
from qoder_exporter.snapshot import DeploymentView, HistogramData, Snapshot


def snapshot(n: int, now: float) -> Snapshot:
    bounds = DEFAULT_DURATION_BUCKETS
    hist = HistogramData(tuple(range(1, len(bounds) + 2)), 1234.5)
    views = tuple(
        DeploymentView(
            id=f"dep_{i:032x}",
            info=Deployment(
                f"dep_{i:032x}",
                f"deployment-{i}",
                "active",
                f"agent_{i:032x}",
                "*/10 * * * * (UTC)",
                consecutive_failures=0,
            ),
            recent={"pending": 1, "running": 1, "completed": 100, "failed": 5, "skipped": 2},
            totals={"completed": 1000, "failed": 50, "skipped": 20},
            durations={"completed": hist, "failed": hist},
            errors={"unknown_error": 40, "session_rate_limited_error": 10},
            last_success=now - 300,
            last_finished_status="completed",
            oldest_in_flight={"running": now - 60},
            sync_ok=True,
            last_sync=now,
            last_error=None,
        )
        for i in range(n)
    )
    return Snapshot(
        taken_at=now,
        buckets=bounds,
        deployments=views,
        up=True,
        polls_done=1,
        last_success_poll=now,
    )


def timed(
    get: requests.Session, url: str, headers: dict[str, str], scrapes: int
) -> tuple[list[float], int]:
    samples, size = [], 0
    for _ in range(scrapes):
        start = time.perf_counter()
        r = get.get(url, headers=headers, timeout=30)
        samples.append(time.perf_counter() - start)
        _ = r.content  # read the whole body
        size = int(r.headers["Content-Length"])  # bytes on the wire
    return samples, size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deployments", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--scrapes", type=int, default=100)
    args = ap.parse_args()
    print(
        f"{'deployments':>11} {'cached p50':>11} {'cached p99':>11} {'rerender p50':>13} "
        f"{'ratio':>6} {'gzip bytes':>11} {'plain bytes':>12}"
    )
    for n in args.deployments:
        now = time.time()
        snap = snapshot(n, now)
        expo = Exposition(snap, time.time)
        server = ExporterServer(expo, ("127.0.0.1", 0), healthy=lambda: True)
        server.start()
        url = f"http://127.0.0.1:{server.port}/metrics"
        session = requests.Session()
        gz = {"Accept-Encoding": "gzip"}
        timed(session, url, gz, 5)  # warm up
        cached, gz_size = timed(session, url, gz, args.scrapes)
        server.close()
        # Baseline: what a plain prometheus_client exporter does, rendering at every scrape.
        registry = CollectorRegistry()
        registry.register(SnapshotCollector(snap))
        rerender = []
        for _ in range(max(10, args.scrapes // 10)):
            start = time.perf_counter()
            body = generate_latest(registry)
            rerender.append(time.perf_counter() - start)
        p50 = statistics.median(cached)
        p99 = statistics.quantiles(cached, n=100)[98]
        base = statistics.median(rerender)
        print(
            f"{n:>11} {p50 * 1000:>9.2f}ms {p99 * 1000:>9.2f}ms {base * 1000:>11.2f}ms "
            f"{base / p50:>5.1f}x {gz_size:>11} {len(body):>12}"
        )


if __name__ == "__main__":
    main()
