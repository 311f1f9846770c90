"""API requests per poll cycle in steady state, configured deployments and discover mode.

Run: .venv/bin/python bench/api_cost.py [--deployments 100] [--cycles 60]

The simulator's deployments trigger every 10-15 minutes (some manual, one stuck, one paused),
so a 60 s cycle usually sees no new run for most deployments: the "quiet" cycle the README
quotes. The first cycles (start-up: metadata, last-success lookups) are left out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qoder_exporter.config import config_from_dict
from qoder_exporter.poller import Poller
from qoder_exporter.simulator import Simulator

TOKEN = "pt-bench"


def measure(n: int, cycles: int, discover: bool, interval: float) -> tuple[list[int], int]:
    sim = Simulator(seed=1, deployments=n, token=TOKEN)
    url = sim.serve("127.0.0.1", 0)
    doc: dict[str, object] = {
        "api": {"url": url, "token": TOKEN, "requests_per_second": 1000},
        "poll_interval": f"{int(interval)}s",
        "lookback": "24h",
    }
    if discover:
        doc["discover"] = True
    else:
        doc["deployments"] = sim.deployment_ids()
    poller = Poller(config_from_dict(doc, env={}), clock=sim.clock.now)
    sim.reset_counts()
    poller.poll_once()
    startup = sim.total_requests()
    for _ in range(3):  # settle: in-flight runs of the start finish
        sim.advance(interval)
        poller.poll_once()
    per_cycle = []
    for _ in range(cycles):
        sim.advance(interval)
        sim.reset_counts()
        assert poller.poll_once()
        per_cycle.append(sim.total_requests())
    poller.close()
    sim.close()
    return per_cycle, startup


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deployments", type=int, nargs="+", default=[100])
    ap.add_argument("--cycles", type=int, default=60)
    ap.add_argument("--interval", type=float, default=60.0)
    args = ap.parse_args()
    print(f"{'mode':>10} {'deps':>5} {'startup':>8} {'median':>7} {'mean':>6} {'max':>5}")
    for n in args.deployments:
        for discover in (False, True):
            per_cycle, startup = measure(n, args.cycles, discover, args.interval)
            mode = "discover" if discover else "configured"
            print(
                f"{mode:>10} {n:>5} {startup:>8} {statistics.median(per_cycle):>7.0f} "
                f"{statistics.mean(per_cycle):>6.1f} {max(per_cycle):>5}"
            )


if __name__ == "__main__":
    main()
