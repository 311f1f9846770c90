"""Memory against runs in the lookback window: RSS and tracked runs, one child process per size.

    .venv/bin/python -m bench.memory [--runs 10000 100000 1000000]

Each child feeds a RunStore directly (sync.RunStore.apply with synthetic models.Run objects,
no HTTP) as a first sync of `deployments` deployments whose window holds `runs` runs in all
(2% of them in flight), then reads VmRSS from /proc/self/status. Then it rolls the clock
forward through one more whole window in 10 steps, each bringing a step's worth of new runs
and finishing the previous step's in-flight runs, as steady polling does: the store must stay
at one window (bounded), not grow with every run ever seen.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .common import log, median, status_kib, table

ROOT = Path(__file__).resolve().parent.parent
LOOKBACK = 86400.0
DEPLOYMENTS = 1000
IN_FLIGHT_SHARE = 0.02
ROLL_STEPS = 10


def _runs(
    rng: random.Random, dep_id: str, count: int, start: float, end: float, in_flight: bool
) -> list[Any]:
    from qoder_exporter.models import Run

    out = []
    for _ in range(count):
        created = rng.uniform(start, end)
        roll = rng.random()
        if in_flight and roll < IN_FLIGHT_SHARE:
            out.append(Run(f"drun_{rng.getrandbits(128):032x}", dep_id, created, "running"))
            continue
        status = "failed" if roll < 0.12 else "skipped" if roll < 0.15 else "completed"
        duration = None if status == "skipped" else rng.uniform(30, 300)
        out.append(
            Run(
                f"drun_{rng.getrandbits(128):032x}",
                dep_id,
                created,
                status,
                completed_at=created + (duration or 0.0),
                duration_s=duration,
                error_type="unknown_error" if status == "failed" else None,
            )
        )
    return out


def child(runs: int, deployments: int, seed: int = 1) -> dict[str, Any]:
    """Measure in this process; call in a fresh one (python -m bench.memory --child N)."""
    from qoder_exporter.config import DEFAULT_DURATION_BUCKETS
    from qoder_exporter.models import Run
    from qoder_exporter.sync import RunStore

    rng = random.Random(seed)
    gc.collect()
    rss_base = status_kib("VmRSS")
    store = RunStore(DEFAULT_DURATION_BUCKETS)
    now = 1_800_000_000.0
    ids = [f"dep_{rng.getrandbits(128):032x}" for _ in range(deployments)]
    per_dep = [runs // deployments + (i < runs % deployments) for i in range(deployments)]
    cpu0 = time.process_time()
    for dep_id, count in zip(ids, per_dep, strict=True):
        batch = _runs(rng, dep_id, count, now - LOOKBACK, now, in_flight=True)
        store.apply(dep_id, batch, now, LOOKBACK, history=True)
    apply_cpu = time.process_time() - cpu0
    del batch
    gc.collect()
    tracked = store.size()
    rss_full = status_kib("VmRSS")

    # Roll one whole window forward: new runs arrive, earlier in-flight runs finish.
    sizes = []
    step = LOOKBACK / ROLL_STEPS
    for _ in range(ROLL_STEPS):
        later = now + step
        for dep_id, count in zip(ids, per_dep, strict=True):
            state = store.deployments[dep_id]
            finished = [
                Run(rid, dep_id, t.created_at, "completed", completed_at=later, duration_s=60.0)
                for rid, t in state.runs.items()
                if not t.accounted
            ]
            fresh = _runs(rng, dep_id, count // ROLL_STEPS, now, later, in_flight=True)
            store.apply(dep_id, finished + fresh, later, LOOKBACK, history=False)
        now = later
        sizes.append(store.size())
    gc.collect()
    rss_rolled = status_kib("VmRSS")
    return {
        "runs": runs,
        "deployments": deployments,
        "tracked": tracked,
        "tracked_after_roll_max": max(sizes),
        "tracked_after_roll": sizes[-1],
        "rss_base_kib": rss_base,
        "rss_full_kib": rss_full,
        "rss_rolled_kib": rss_rolled,
        "hwm_kib": status_kib("VmHWM"),
        "apply_cpu_s": apply_cpu,
    }


def measure(runs: int, deployments: int = DEPLOYMENTS, seed: int = 1) -> dict[str, Any]:
    """One child process per measurement, so sizes do not contaminate each other."""
    out = subprocess.run(
        [
            *(sys.executable, "-m", "bench.memory", "--child", str(runs)),
            *("--deployments", str(deployments), "--seed", str(seed)),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def memory_bench(
    sizes: list[int], *, repeats: int = 3, deployments: int = DEPLOYMENTS
) -> list[dict[str, Any]]:
    """Median over `repeats` fresh processes (different seeds) per size."""
    out = []
    for runs in sizes:
        log(f"memory: {runs:,} runs in the window")
        samples = [measure(runs, deployments, seed) for seed in range(1, repeats + 1)]
        row = {k: median([s[k] for s in samples]) for k in samples[0]}
        row["repeats"] = repeats
        out.append(row)
    return out


def bytes_per_run(row: dict[str, Any]) -> float:
    return float((row["rss_full_kib"] - row["rss_base_kib"]) * 1024 / row["runs"])


def report(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        lines.append(
            [
                f"{r['runs']:,.0f}",
                f"{r['deployments']:,.0f}",
                f"{r['tracked']:,.0f}",
                f"{r['rss_base_kib'] / 1024:.0f}",
                f"{r['rss_full_kib'] / 1024:.0f}",
                f"{bytes_per_run(r):.0f}",
                f"{r['tracked_after_roll_max']:,.0f}",
                f"{r['rss_rolled_kib'] / 1024:.0f}",
                f"{r['apply_cpu_s'] * 1e6 / r['runs']:.1f}",
            ]
        )
    return table(
        [
            "runs in window",
            "deployments",
            "tracked runs",
            "RSS before MiB",
            "RSS full MiB",
            "bytes/run",
            "tracked, max while rolling one more window",
            "RSS after rolling MiB",
            "apply CPU us/run",
        ],
        lines,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--deployments", type=int, default=DEPLOYMENTS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.deployments, args.seed)))
        return
    print(report(memory_bench(args.runs, repeats=args.repeats, deployments=args.deployments)))


if __name__ == "__main__":
    main()
