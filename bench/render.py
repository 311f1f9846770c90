"""Render CPU after a poll at scale, on the synthetic snapshot of bench.workload (no API).

    .venv/bin/python -m bench.render [--deployments 1000 5000 10000 20000] [--changed 0.25]

Per size: the first render (every deployment), a quiet render (no value changed: nothing
is rendered again) and a render where a share of the deployments changed values (new
counts and a new sample in a histogram, as a finished run brings), with the deployments
re-rendered counted. CPU is time.process_time of Exposition.update; RSS after the renders.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace

from .common import load_average, log, status_kib, table


def measure(n: int, changed: float, seed: int = 1) -> dict[str, float]:
    from qoder_exporter.collector import Exposition
    from qoder_exporter.snapshot import HistogramData

    from .workload import snapshot

    now = time.time()
    snap = snapshot(n, now, seed)
    cpu0 = time.process_time()
    expo = Exposition(snap, time.time)
    first = time.process_time() - cpu0
    text = expo.body(openmetrics=False, compress=False)
    gz = expo.body(openmetrics=False, compress=True)
    # A quiet poll, pessimistic: new view objects, the same values (the snapshot builder
    # passes a deployment's old view object on while its values stay the same).
    quiet_snap = replace(
        snap,
        taken_at=now + 60,
        deployments=tuple(replace(d) for d in snap.deployments),
    )
    cpu0 = time.process_time()
    r0 = expo.fragments.rendered
    expo.update(quiet_snap)
    quiet, quiet_rendered = time.process_time() - cpu0, expo.fragments.rendered - r0
    rng = random.Random(seed)
    views = []
    for d in quiet_snap.deployments:
        if rng.random() < changed:
            done = d.durations.get("completed") or HistogramData((0,) * (len(snap.buckets) + 1), 0)
            bumped = HistogramData(tuple(c + 1 for c in done.cumulative), done.total + 30.0)
            totals = dict(d.totals)
            totals["completed"] = totals.get("completed", 0) + 1
            d = replace(
                d,
                totals=totals,
                by_trigger={},
                durations={**d.durations, "completed": bumped},
                last_success=now + 100,
            )
        views.append(d)
    cpu0 = time.process_time()
    r0 = expo.fragments.rendered
    expo.update(replace(quiet_snap, taken_at=now + 120, deployments=tuple(views)))
    busy, busy_rendered = time.process_time() - cpu0, expo.fragments.rendered - r0
    cpu0 = time.process_time()
    for _ in range(5):
        expo.body(openmetrics=False, compress=True)
    ages = (time.process_time() - cpu0) / 5
    return {
        "deployments": n,
        "series": sum(1 for ln in text.splitlines() if not ln.startswith(b"#")),
        "body": len(text),
        "gz": len(gz),
        "first": first,
        "quiet": quiet,
        "quiet_rendered": quiet_rendered,
        "busy": busy,
        "busy_rendered": busy_rendered,
        "scrape_cpu": ages,
        "rss_kib": status_kib("VmRSS"),
    }


def measure_in_child(n: int, changed: float) -> dict[str, float]:
    """measure() in a fresh process, so RSS is that size's alone."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        row: dict[str, float] = pool.apply(measure, (n, changed))
    return row


def report(rows: list[dict[str, float]], changed: float) -> str:
    return table(
        [
            "deployments",
            "series",
            "text body MiB",
            "gzip MiB",
            "first render CPU ms",
            "quiet render CPU ms (re-rendered)",
            f"render CPU ms, {changed:.0%} changed (re-rendered)",
            "CPU ms per gzip scrape (ages)",
            "RSS MiB",
        ],
        [
            [
                f"{r['deployments']:,}",
                f"{r['series']:,}",
                f"{r['body'] / 2**20:.1f}",
                f"{r['gz'] / 2**20:.2f}",
                f"{r['first'] * 1000:.0f}",
                f"{r['quiet'] * 1000:.0f} ({r['quiet_rendered']:,})",
                f"{r['busy'] * 1000:.0f} ({r['busy_rendered']:,})",
                f"{r['scrape_cpu'] * 1000:.1f}",
                f"{r['rss_kib'] / 1024:.0f}",
            ]
            for r in rows
        ],
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deployments", type=int, nargs="+", default=[1000, 5000, 10000, 20000])
    ap.add_argument("--changed", type=float, default=0.25)
    args = ap.parse_args(argv)
    log(f"load average {load_average()}")
    rows = []
    for n in args.deployments:
        rows.append(measure_in_child(n, args.changed))
        log(f"render: {n} deployments done")
        print(report(rows[-1:], args.changed), flush=True)
    print(report(rows, args.changed))
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
