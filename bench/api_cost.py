"""API requests per poll cycle: the exporter's incremental poller against a naive poller that
re-reads the whole lookback window every cycle, configured deployments and discover mode.

    .venv/bin/python -m bench.api_cost [--deployments 100] [--discover]

Both pollers read the same simulated API (bench runs it on a manual clock, 60 s per cycle) at
the same instant, and their `recent_runs` per deployment are compared: they must agree. The
simulator counts requests per endpoint. Phases:

- startup: the first poll (reads each deployment's window; the naive poller does that always);
- quiet: the simulator's own schedules only (each deployment triggers every 5-15 minutes);
- burst: before each of these cycles, `burst` manual runs per deployment are triggered,
  spread over the interval (sim.trigger);
- after: quiet cycles right after the bursts, while the burst's runs finish.

Request counts are deterministic for a seed, so there is nothing to repeat: the figure per
phase is the median over its cycles, and the max is shown too.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from qoder_exporter.config import config_from_dict
from qoder_exporter.models import STATUSES
from qoder_exporter.poller import Poller
from qoder_exporter.simulator import Simulator

from .common import log, median, table
from .naive import NaivePoller

TOKEN = "pt-bench"
READBACK_HORIZON = 3600.0
PHASES = ("startup", "quiet", "burst", "after")


@dataclass
class Cycle:
    phase: str
    requests: dict[str, int]  # the incremental poller's, by endpoint
    naive: int | None = None  # the naive poller's, when it ran this cycle
    mismatches: int | None = None  # deployments whose recent_runs differ between the two
    new_runs: int = 0  # runs triggered by the bench before this cycle
    # Status-filtered list calls on the feed (the in-flight refresh), by status.
    status_lists: dict[str, int] = field(default_factory=dict)
    in_flight_before: int = 0  # runs the store held in flight before the cycle
    finished: int = 0  # ... of which the cycle saw finish
    # What-if, for the diagnosis: the runs a single read of the feed from the top back to the
    # oldest run in flight before the cycle (younger than READBACK_HORIZON) would return, and
    # the in-flight runs older than that horizon (one request each).
    readback_runs: int = 0
    old_in_flight: int = 0

    def readback_pages(self, page_size: int) -> int:
        return -(-self.readback_runs // page_size) + self.old_in_flight

    @property
    def total(self) -> int:
        return sum(self.requests.values())


@dataclass
class CostResult:
    deployments: int
    discover: bool
    page_size: int = 100
    cycles: list[Cycle] = field(default_factory=list)

    @property
    def mode(self) -> str:
        mode = "discover" if self.discover else "configured"
        return mode if self.page_size == 100 else f"{mode}, page_size {self.page_size}"

    def phase(self, name: str) -> list[Cycle]:
        return [c for c in self.cycles if c.phase == name]

    def incremental(self, name: str) -> float:
        return median([c.total for c in self.phase(name)])

    def naive(self, name: str) -> float | None:
        runs = [c.naive for c in self.phase(name) if c.naive is not None]
        return median(runs) if runs else None

    def endpoints(self, name: str) -> dict[str, float]:
        """Median requests per endpoint over the phase's cycles."""
        cycles = self.phase(name)
        names = sorted({e for c in cycles for e, v in c.requests.items() if v})
        return {e: median([c.requests.get(e, 0) for c in cycles]) for e in names}

    @property
    def mismatches(self) -> int:
        return sum(c.mismatches or 0 for c in self.cycles)


def _in_flight(poller: Poller) -> dict[str, float]:
    """Run id -> created_at of every run the store holds in flight."""
    return {
        rid: t.created_at
        for state in poller.store.deployments.values()
        for rid, t in state.runs.items()
        if not t.accounted
    }


def _tracked_since(poller: Poller, since: float) -> int:
    return sum(
        1
        for state in poller.store.deployments.values()
        for t in state.runs.values()
        if t.created_at >= since
    )


def _count_status_lists(poller: Poller, counter: Counter[str]) -> None:
    """Count the poller's status-filtered feed calls (its in-flight refresh) by status."""
    inner = poller.client.list_all_runs

    def wrapped(**kw: Any) -> Any:
        if kw.get("status"):
            counter[str(kw["status"])] += 1
        return inner(**kw)

    poller.client.list_all_runs = wrapped  # type: ignore[method-assign]


def _counts(sim: Simulator) -> dict[str, int]:
    with sim._lock:  # the simulator's own lock around its counters
        return {k: v for k, v in sim.request_counts.items() if v}


def api_cost(
    n: int,
    *,
    discover: bool,
    quiet: int = 10,
    burst_cycles: int = 5,
    after: int = 5,
    burst: int = 3,
    naive_cycles: int | None = 3,
    interval: float = 60.0,
    lookback: float = 86400.0,
    settle: int = 3,
    seed: int = 1,
    page_size: int = 100,
) -> CostResult:
    """Run the phases; the naive poller runs in the first `naive_cycles` cycles of every
    phase (None: all of them); its cost hardly varies from cycle to cycle."""
    # A page size over 100 needs a server that accepts it (the G1 docs' cap is 1000).
    sim = Simulator(
        seed=seed, deployments=n, token=TOKEN, page_cap=100 if page_size <= 100 else 1000
    )
    url = sim.serve("127.0.0.1", 0)
    doc: dict[str, Any] = {
        "api": {"url": url, "token": TOKEN, "requests_per_second": 1000},
        "poll_interval": f"{int(interval)}s",
        "lookback": f"{int(lookback)}s",
        "page_size": page_size,
    }
    ids = sim.deployment_ids()
    if discover:
        doc["discover"] = True
    else:
        doc["deployments"] = ids
    poller = Poller(config_from_dict(doc, env={}), clock=sim.clock.now)
    naive = NaivePoller(
        url, TOKEN, deployments=None if discover else ids, lookback=lookback, page_size=page_size
    )
    result = CostResult(n, discover, page_size)
    status_calls: Counter[str] = Counter()
    _count_status_lists(poller, status_calls)
    active = [d for d in ids if not sim.spec(d).paused]
    try:
        plan = (
            [("startup", 0)]
            + [("settle", 0)] * settle
            + [("quiet", 0)] * quiet
            + [("burst", burst)] * burst_cycles
            + [("after", 0)] * after
        )
        done: Counter[str] = Counter()
        for phase, per_deployment in plan:
            new_runs = 0
            if phase != "startup":
                # Manual runs spread over the interval, then the rest of the interval.
                step = interval / (per_deployment + 1)
                for _ in range(per_deployment):
                    sim.advance(step)
                    for dep_id in active:
                        sim.trigger(dep_id)
                        new_runs += 1
                sim.advance(interval - step * per_deployment)
            sim.reset_counts()
            status_calls.clear()
            before = _in_flight(poller)
            if not poller.poll_once():
                raise RuntimeError(f"poll failed: {poller.snapshot.last_error}")
            cycle = Cycle(phase, _counts(sim), new_runs=new_runs, status_lists=dict(status_calls))
            now = sim.clock.now()
            after_poll = _in_flight(poller)
            cycle.in_flight_before = len(before)
            cycle.finished = sum(1 for rid in before if rid not in after_poll)
            young = [t for t in before.values() if t >= now - READBACK_HORIZON]
            cycle.old_in_flight = len(before) - len(young)
            cycle.readback_runs = _tracked_since(poller, min(young)) if young else 0
            if phase != "settle" and (naive_cycles is None or done[phase] < naive_cycles):
                sent = naive.requests
                seen = naive.poll(now)
                cycle.naive = naive.requests - sent
                zero = dict.fromkeys(STATUSES, 0)
                cycle.mismatches = sum(
                    1 for d in ids if poller.store.recent(d, now, lookback) != seen.get(d, zero)
                )
            done[phase] += 1
            if phase != "settle":
                result.cycles.append(cycle)
    finally:
        naive.close()
        poller.close()
        sim.close()
    return result


def report(results: list[CostResult]) -> str:
    rows = []
    for r in results:
        for phase in PHASES:
            cycles = r.phase(phase)
            if not cycles:
                continue
            inc = r.incremental(phase)
            nv = r.naive(phase)
            top = sorted(r.endpoints(phase).items(), key=lambda kv: -kv[1])
            rows.append(
                [
                    r.mode,
                    r.deployments,
                    phase,
                    len(cycles),
                    f"{inc:g}",
                    max(c.total for c in cycles),
                    f"{inc / r.deployments:.2f}",
                    "-" if nv is None else f"{nv:g}",
                    "-" if nv is None else f"{nv / max(inc, 1):.1f}x",
                    ", ".join(f"{e} {v:g}" for e, v in top if v),
                    "yes" if all(not c.mismatches for c in cycles) else "NO",
                ]
            )
    return table(
        [
            "mode",
            "deployments",
            "phase",
            "cycles",
            "requests/cycle (median)",
            "max",
            "per deployment",
            "naive requests/cycle",
            "naive / incremental",
            "incremental by endpoint (median)",
            "recent_runs agree",
        ],
        rows,
    )


def diagnosis(results: list[CostResult]) -> str:
    """Where the incremental poller's requests go, per phase, beside the what-if figures."""
    rows = []
    for r in results:
        for phase in PHASES[1:]:
            cycles = r.phase(phase)
            if not cycles:
                continue

            def med(values: list[float]) -> str:
                return f"{median(values):g}"

            status = [float(sum(c.status_lists.values())) for c in cycles]
            feed = [
                c.requests.get("list_all_runs", 0) - s for c, s in zip(cycles, status, strict=True)
            ]
            rows.append(
                [
                    r.mode,
                    r.deployments,
                    phase,
                    med([c.total for c in cycles]),
                    med([c.requests.get("list_runs", 0) for c in cycles]),
                    med(feed),
                    med(status),
                    med([c.requests.get("get_run_global", 0) for c in cycles]),
                    med([c.requests.get("list_deployments", 0) for c in cycles]),
                    med([c.in_flight_before for c in cycles]),
                    med([c.finished for c in cycles]),
                    med([c.readback_pages(r.page_size) for c in cycles]),
                    med([c.readback_pages(1000) for c in cycles]),
                ]
            )
    return table(
        [
            "mode",
            "deployments",
            "phase",
            "requests",
            "list_runs",
            "feed pages (unfiltered)",
            "feed pages by status (pending/running)",
            "get_run_global",
            "list_deployments",
            "in flight before",
            "of which finished",
            "what-if: one feed read-back, pages",
            "what-if: pages of 1000",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deployments", type=int, nargs="+", default=[100])
    ap.add_argument("--discover", action="store_true", help="discover mode only")
    ap.add_argument("--configured", action="store_true", help="configured mode only")
    ap.add_argument("--naive-cycles", type=int, default=3)
    args = ap.parse_args(argv)
    modes = [False, True]
    if args.discover != args.configured:
        modes = [args.discover]
    results = []
    for n in args.deployments:
        for discover in modes:
            log(f"api cost: {'discover' if discover else 'configured'} {n} deployments")
            results.append(api_cost(n, discover=discover, naive_cycles=args.naive_cycles))
    print(report(results))
    print()
    print(diagnosis(results))


if __name__ == "__main__":
    main()
