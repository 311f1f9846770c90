"""Scale: one process at 1,000 to 20,000 deployments in discover mode (issue 14).

    .venv/bin/python -m bench.scale [--deployments 1000 5000 10000 20000] [--cycles 3]

The simulator (24 h window of runs) serves the API with no added latency; the poller runs in
a child process (bench.poll.PollProcess) and renders after every poll as the exporter does.
Per size: CPU of a quiet poll cycle and of the render after it, deployments re-rendered,
series, body bytes, poller RSS. Scrape latency against the plain prometheus_client is
bench.scrape's (`--deployments` there too).
"""

from __future__ import annotations

import argparse
import time

from . import poll
from .common import load_average, log, table

DISCOVER = poll.Setting(True, 8, 1000.0)
# The exporter's window is 24 h: the world begins 2 h before it, not the simulator's default
# 3 days (runs the exporter never reads, three times the simulator's building time and
# memory). Same deployments, same run rate.
HISTORY_S = 26 * 3600.0


def run(sizes: list[int], cycles: int = 3, settle: int = 2) -> list[poll.PollResult]:
    out = []
    for n in sizes:
        began = time.perf_counter()
        out += poll.poll_time(
            n, (DISCOVER,), latency=0.0, cycles=cycles, settle=settle, history_s=HISTORY_S
        )
        log(f"scale: {n} deployments took {time.perf_counter() - began:.0f} s")
        log("\n" + report(out[-1:]))  # each size as it is done: the large ones take long
    return out


def report(results: list[poll.PollResult]) -> str:
    rows = []
    for r in results:
        rows.append(
            [
                f"{r.deployments:,}",
                f"{r.med('series'):,.0f}",
                f"{r.med('body_bytes') / 2**20:.1f}",
                f"{r.med('gzip_bytes') / 2**20:.2f}",
                f"{r.requests:g}",
                f"{r.med('cpu_poll') * 1000:.0f}",
                f"{r.med('cpu_render') * 1000:.0f}",
                f"{(r.med('cpu_poll') + r.med('cpu_render')) * 1000:.0f}",
                f"{r.med('gc') * 1000:.0f}",
                f"{r.med('deployments_rendered'):,.0f}",
                f"{r.med('tracked'):,.0f}",
                f"{r.med('rss_kib') / 1024:.0f}",
            ]
        )
    return table(
        [
            "deployments",
            "series",
            "text body MiB",
            "gzip MiB",
            "requests/cycle",
            "poll CPU ms (quiet)",
            "render CPU ms",
            "poll + render CPU ms",
            "of which GC ms",
            "deployments re-rendered",
            "tracked runs",
            "poller RSS MiB",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deployments", type=int, nargs="+", default=[1000, 5000, 10000, 20000])
    ap.add_argument("--cycles", type=int, default=3)
    args = ap.parse_args(argv)
    log(f"load average {load_average()}")
    results = run(args.deployments, args.cycles)
    print(report(results))
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
