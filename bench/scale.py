"""Scale: one process at 1,000 to 20,000 deployments in discover mode (issue 14).

    .venv/bin/python -m bench.scale [--deployments 1000 5000 10000 20000] [--cycles 3]
                                    [--world cron busy]

The simulator (24 h window of runs) serves the API with no added latency; the poller runs in
a child process (bench.poll.PollProcess) and renders after every poll as the exporter does.
Per size: CPU of a steady-state poll cycle and of the render after it, deployments
re-rendered, series, body bytes, poller RSS. Scrape latency against the plain
prometheus_client is bench.scrape's (`--deployments` there too).

Three worlds, the same deployments otherwise:
- cron: schedules as a platform team's are, each at its own cron minute: 10% every 15
  minutes, 60% hourly, 10% every 6 hours, 20% daily, manual triggers as the simulator's.
  About 5% of the deployments change in a 60 s cycle.
- busy: the simulator's default, every deployment every 5-15 minutes (1.85M runs a day at
  10,000): about 21% change in a cycle, every cycle.
- daily (`--world daily`, not by default): every deployment daily at its own minute, no
  manual runs: almost nothing changes, so a cycle costs what the deployments do as such.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time
from typing import Any

from . import poll
from .common import load_average, log, table

DISCOVER = poll.Setting(True, 8, 1000.0)
# The exporter's window is 24 h: the world begins 2 h before it, not the simulator's default
# 3 days (runs the exporter never reads, three times the simulator's building time and
# memory). Same deployments, same run rate.
HISTORY_S = 26 * 3600.0

# (interval s, weight) of the cron world's schedules
CRON_MIX = ((900.0, 10), (3600.0, 60), (6 * 3600.0, 10), (86400.0, 20))


def cron_world(
    n: int, seed: int, history_s: float, mix: tuple[tuple[float, int], ...] = CRON_MIX
) -> list[Any]:
    """The simulator's default deployments, each on a cron schedule of `mix` at a cron
    minute of its own (as `17 * * * *`), runs of 0.5-10 minutes."""
    from qoder_exporter.simulator.core import DEFAULT_START
    from qoder_exporter.simulator.world import default_specs

    rng = random.Random(f"{seed}:cron")
    intervals = [i for i, _ in mix]
    weights = [w for _, w in mix]
    out = []
    for spec in default_specs(n, seed, DEFAULT_START, False, history_s):
        if spec.interval_s is None:
            out.append(spec)
            continue
        interval = rng.choices(intervals, weights)[0]
        phase = 60.0 * rng.randrange(int(interval // 60))
        out.append(
            dataclasses.replace(spec, interval_s=interval, phase_s=phase, duration_s=(30.0, 600.0))
        )
    return out


def daily_world(n: int, seed: int, history_s: float) -> list[Any]:
    """Every scheduled deployment daily, at its own minute, no manual runs: a cycle where
    almost nothing happens, so what it costs is what the deployments cost as such."""
    return [
        dataclasses.replace(s, manual_rate_per_hour=0.0)
        for s in cron_world(n, seed, history_s, ((86400.0, 1),))
    ]


WORLDS = {"cron": cron_world, "busy": None, "daily": daily_world}


@dataclasses.dataclass
class ScaleResult:
    world: str
    result: poll.PollResult


def run(
    sizes: list[int], cycles: int = 3, settle: int = 2, worlds: tuple[str, ...] = ("cron", "busy")
) -> list[ScaleResult]:
    out = []
    for world in worlds:
        for n in sizes:
            began = time.perf_counter()
            for r in poll.poll_time(
                n,
                (DISCOVER,),
                latency=0.0,
                cycles=cycles,
                settle=settle,
                history_s=HISTORY_S,
                world=WORLDS[world],
            ):
                out.append(ScaleResult(world, r))
            log(f"scale: {world} world, {n} deployments took {time.perf_counter() - began:.0f} s")
            log("\n" + report(out[-1:]))  # each size as it is done: the large ones take long
    return out


def report(results: list[ScaleResult]) -> str:
    rows = []
    for sr in results:
        r = sr.result
        rows.append(
            [
                sr.world,
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
            "world",
            "deployments",
            "series",
            "text body MiB",
            "gzip MiB",
            "requests/cycle",
            "poll CPU ms",
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
    ap.add_argument("--world", nargs="+", choices=sorted(WORLDS), default=["cron", "busy"])
    args = ap.parse_args(argv)
    log(f"load average {load_average()}")
    results = run(args.deployments, args.cycles, worlds=tuple(args.world))
    print(report(results))
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
