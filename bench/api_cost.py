"""API requests per poll cycle: the exporter's incremental poller against a naive poller that
re-reads the whole lookback window every cycle, configured deployments and discover mode.

    .venv/bin/python -m bench.api_cost [--deployments 100] [--discover] [--server g1-1000]
    .venv/bin/python -m bench.api_cost --shards 3 [--deployments 100 1000]

With --shards N, N shard pollers (--shard=i --total-shards=N) and one unsharded poller poll
the same world at the same instants: requests per cycle of each, their sum, and whether the
shards' per-deployment counts and windows equal the unsharded poller's.

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
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import requests

from qoder_exporter.config import config_from_dict
from qoder_exporter.models import STATUSES
from qoder_exporter.poller import Poller
from qoder_exporter.sharding import Shard
from qoder_exporter.simulator import BASE_PATH, Simulator
from qoder_exporter.simulator.adapter import DEFAULT_ORIGIN, mount

from .common import log, median, table
from .naive import NaivePoller

TOKEN = "pt-bench"
PHASES = ("startup", "quiet", "burst", "after")
# The simulated API, as (run shape, largest page) per name: the docs' two generations and
# the simulator's default, which mixes them (G1 runs with a lifecycle, pages capped at 100
# as G2 caps them): the hardest case for discover mode. See ../shared/qoder-api.md section 0.
SERVERS = {
    "g1-100": ("g1", 100),
    "g1-1000": ("g1", 1000),
    "g2-100": ("g2", 100),
    "g2-sessions": ("g2", 100),
}
SERVER_LABELS = {
    "g1-100": "G1 runs, pages <= 100",
    "g1-1000": "G1 runs, pages <= 1000 (G1 docs)",
    "g2-100": "G2 records, pages <= 100 (G2 docs)",
    "g2-sessions": "G2 records + sessions followed, pages <= 100",
}
# The pollers reach the simulator in process, through a requests adapter that calls its
# handle_request (simulator/adapter.py): the same requests, counted at the same place, by the
# same client code down to the transport. Over loopback HTTP every request also cost a socket
# exchange and a server thread (a third of the bench's time at 1,000 deployments), and on a
# loaded machine a stalled server thread tripped the client's read timeout: the retry was
# counted as one more request, so the counts were no longer deterministic.
API_URL = DEFAULT_ORIGIN + BASE_PATH


def _connect(session: requests.Session, sim: Simulator) -> None:
    """Route a client's session to the simulator in process (see API_URL)."""
    mount(session, sim)
    # No proxy can apply in process; requests would otherwise scan the environment for one
    # at every request (a quarter of the client's time per request).
    session.trust_env = False


# g2-sessions: every run with a session awaits it (sessions: auto); the first sync follows
# each run of the window into its session once, so that server runs with a 1 h lookback.
SESSIONS_LOOKBACK = 3600.0


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
    # For the diagnosis: the fewest feed pages (of the size the poller used) that hold every
    # run new this cycle and every run that finished in it, had we known which: a floor for
    # any reader of the feed, however it picks its pages.
    floor_pages: int = 0
    awaiting_deployments: int = 0  # deployments with runs awaiting their sessions
    resolved: int = 0  # runs resolved from their sessions this cycle

    @property
    def total(self) -> int:
        return sum(self.requests.values())


@dataclass
class CostResult:
    deployments: int
    discover: bool
    server: str = "g1-100"
    cycles: list[Cycle] = field(default_factory=list)

    @property
    def mode(self) -> str:
        mode = "discover" if self.discover else "configured"
        return f"{mode}, {SERVER_LABELS[self.server]}"

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


def _cover(positions: list[int], size: int) -> int:
    """The fewest stretches of `size` consecutive positions that hold all `positions`."""
    pages, end = 0, -1
    for p in sorted(positions):
        if p > end:
            pages, end = pages + 1, p + size - 1
    return pages


def _floor_pages(poller: Poller, known: set[str], before: dict[str, float], size: int) -> int:
    """Fewest feed pages holding every run new this cycle and every run that finished."""
    runs = sorted(
        (
            (t.created_at, rid, t.accounted)
            for s in poller.store.deployments.values()
            for rid, t in s.runs.items()
        ),
        reverse=True,
    )
    wanted = [
        i
        for i, (_, rid, accounted) in enumerate(runs)
        if rid not in known or (rid in before and accounted)
    ]
    return _cover(wanted, size)


def _count_status_lists(poller: Poller, counter: Counter[str]) -> None:
    """Count the poller's status-filtered feed calls (its in-flight refresh) by status."""
    inner = poller.client.list_all_runs

    def wrapped(**kw: Any) -> Any:
        if kw.get("status"):
            counter[str(kw["status"])] += 1
        return inner(**kw)

    poller.client.list_all_runs = wrapped  # type: ignore[method-assign]


class _SessionCount:
    """Deployments with awaited runs and runs resolved by the follower, per cycle."""

    def __init__(self) -> None:
        self.awaiting = self.resolved = 0

    def pop(self) -> tuple[int, int]:
        out = (self.awaiting, self.resolved)
        self.awaiting = self.resolved = 0
        return out


def _count_sessions(poller: Poller) -> _SessionCount:
    count = _SessionCount()
    follower = poller.cycle.follower
    if follower is None:
        return count
    real = follower.follow

    def wrapped(now: float, executor: Any, budget: Any = None) -> int:
        with poller.tracker.lock:
            count.awaiting += len(poller.store.awaiting())
        done = real(now, executor, budget)
        count.resolved += done
        return done

    follower.follow = wrapped  # type: ignore[method-assign]
    return count


def sessions_table(results: list[CostResult]) -> str:
    """The cost of following sessions against its target (qoder-sessions.md §6.2)."""
    rows = []
    for r in results:
        for phase in PHASES:
            cycles = r.phase(phase)
            if not cycles:
                continue
            lists = sum(c.requests.get("list_sessions", 0) for c in cycles)
            events = sum(c.requests.get("list_session_events", 0) for c in cycles)
            gets = sum(c.requests.get("get_session", 0) for c in cycles)
            awaiting = sum(c.awaiting_deployments for c in cycles)
            resolved = sum(c.resolved for c in cycles)
            extra = lists + events + gets
            target = awaiting + 1.2 * resolved
            rows.append(
                [
                    r.mode,
                    r.deployments,
                    phase,
                    f"{awaiting / len(cycles):g}",
                    f"{resolved / len(cycles):g}",
                    f"{lists / len(cycles):g}",
                    f"{events / len(cycles):g}",
                    f"{gets / len(cycles):g}",
                    f"{extra / len(cycles):g}",
                    f"{target / len(cycles):g}",
                    "yes" if extra <= target else "NO",
                ]
            )
    return table(
        [
            "mode",
            "deployments",
            "phase",
            "deployments awaiting sessions",
            "runs resolved",
            "list_sessions",
            "list_session_events",
            "get_session",
            "extra requests",
            "target (awaiting + 1.2 x resolved)",
            "within target",
        ],
        rows,
    )


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
    server: str = "g1-100",
) -> CostResult:
    """Run the phases; the naive poller runs in the first `naive_cycles` cycles of every
    phase (None: all of them); its cost hardly varies from cycle to cycle."""
    shape, cap = SERVERS[server]
    if server == "g2-sessions":
        lookback, naive_cycles = SESSIONS_LOOKBACK, 0  # the naive poller follows no session
    began = time.monotonic()
    sim = Simulator(seed=seed, deployments=n, token=TOKEN, shape=shape, page_cap=cap)
    log(f"  simulator with {n} deployments built ({time.monotonic() - began:.1f} s)")
    doc: dict[str, Any] = {
        "api": {"url": API_URL, "token": TOKEN, "requests_per_second": 1000, "insecure": True},
        "poll_interval": f"{int(interval)}s",
        "lookback": f"{int(lookback)}s",
        "sessions": "auto" if server == "g2-sessions" else "never",
    }
    ids = sim.deployment_ids()
    if discover:
        doc["discover"] = True
    else:
        doc["deployments"] = ids
    poller = Poller(config_from_dict(doc, env={}), clock=sim.clock.now)
    _connect(poller.client.session, sim)
    naive = NaivePoller(API_URL, TOKEN, deployments=None if discover else ids, lookback=lookback)
    _connect(naive.client.session, sim)
    result = CostResult(n, discover, server)
    status_calls: Counter[str] = Counter()
    _count_status_lists(poller, status_calls)
    active = [d for d in ids if not sim.spec(d).paused]
    follow = _count_sessions(poller)
    try:
        plan = _plan(settle, quiet, burst_cycles, burst, after)
        done: Counter[str] = Counter()
        for phase, per_deployment in plan:
            new_runs = 0 if phase == "startup" else _advance(sim, active, per_deployment, interval)
            sim.reset_counts()
            status_calls.clear()
            began = time.monotonic()
            before = _in_flight(poller)
            known = {rid for st in poller.store.deployments.values() for rid in st.runs}
            if not poller.poll_once():
                raise RuntimeError(f"poll failed: {poller.snapshot.last_error}")
            cycle = Cycle(phase, _counts(sim), new_runs=new_runs, status_lists=dict(status_calls))
            cycle.awaiting_deployments, cycle.resolved = follow.pop()
            now = sim.clock.now()
            after_poll = _in_flight(poller)
            cycle.in_flight_before = len(before)
            cycle.finished = sum(1 for rid in before if rid not in after_poll)
            if discover and phase != "startup":
                size = poller.limit.value  # the page size the poller settled on
                cycle.floor_pages = _floor_pages(poller, known, before, size)
            if phase != "settle" and (naive_cycles is None or done[phase] < naive_cycles):
                sent = naive.requests
                seen = naive.poll(now)
                cycle.naive = naive.requests - sent
                zero = dict.fromkeys(STATUSES, 0)
                cycle.mismatches = sum(
                    1 for d in ids if poller.store.recent(d, now, lookback) != seen.get(d, zero)
                )
            done[phase] += 1
            log(
                f"  {phase} cycle {done[phase]}: {cycle.total} requests "
                f"({time.monotonic() - began:.1f} s)"
            )
            if phase != "settle":
                result.cycles.append(cycle)
    finally:
        naive.close()
        poller.close()
        sim.close()
    return result


def _advance(sim: Simulator, active: list[str], per_deployment: int, interval: float) -> int:
    """One interval: manual runs spread over it, then the rest of it; the runs triggered."""
    step = interval / (per_deployment + 1)
    for _ in range(per_deployment):
        sim.advance(step)
        for dep_id in active:
            sim.trigger(dep_id)
    sim.advance(interval - step * per_deployment)
    return per_deployment * len(active)


def _plan(settle: int, quiet: int, burst_cycles: int, burst: int, after: int) -> list[Any]:
    return (
        [("startup", 0)]
        + [("settle", 0)] * settle
        + [("quiet", 0)] * quiet
        + [("burst", burst)] * burst_cycles
        + [("after", 0)] * after
    )


@dataclass
class ShardCost:
    """Requests per cycle of one unsharded poller and of each of `shards` shard pollers, all
    polling the same simulated world at the same instants."""

    deployments: int
    discover: bool
    shards: int
    server: str
    # phase -> one entry per cycle: [unsharded, shard 0, shard 1, ...]
    cycles: dict[str, list[list[int]]] = field(default_factory=dict)
    agree: bool = True  # the shards' per-deployment counts and windows equal the unsharded's


def shard_cost(
    n: int,
    *,
    discover: bool,
    shards: int,
    server: str = "g1-100",
    quiet: int = 10,
    burst_cycles: int = 5,
    after: int = 5,
    burst: int = 3,
    settle: int = 3,
    interval: float = 60.0,
    lookback: float = 86400.0,
    seed: int = 1,
) -> ShardCost:
    shape, cap = SERVERS[server]
    sim = Simulator(seed=seed, deployments=n, token=TOKEN, shape=shape, page_cap=cap)
    doc: dict[str, Any] = {
        "api": {"url": API_URL, "token": TOKEN, "requests_per_second": 1000, "insecure": True},
        "poll_interval": f"{int(interval)}s",
        "lookback": f"{int(lookback)}s",
    }
    ids = sim.deployment_ids()
    if discover:
        doc["discover"] = True
    else:
        doc["deployments"] = ids
    config = config_from_dict(doc, env={})
    pollers = [Poller(config, clock=sim.clock.now)] + [
        Poller(config, clock=sim.clock.now, shard=Shard(i, shards)) for i in range(shards)
    ]
    for poller in pollers:
        _connect(poller.client.session, sim)
    result = ShardCost(n, discover, shards, server)
    active = [d for d in ids if not sim.spec(d).paused]
    try:
        for phase, per_deployment in _plan(settle, quiet, burst_cycles, burst, after):
            if phase != "startup":
                _advance(sim, active, per_deployment, interval)
            counts = []
            for poller in pollers:
                sim.reset_counts()
                if not poller.poll_once():
                    raise RuntimeError(f"poll failed: {poller.snapshot.last_error}")
                counts.append(sum(_counts(sim).values()))
            if phase != "settle":
                result.cycles.setdefault(phase, []).append(counts)
        now = sim.clock.now()
        whole = pollers[0].store
        for poller in pollers[1:]:
            for dep_id in poller.store.deployments:
                mine = poller.store.recent(dep_id, now, lookback)
                result.agree &= mine == whole.recent(dep_id, now, lookback)
        views = {v.id: v.totals for p in pollers[1:] for v in p.snapshot.deployments}
        result.agree &= views == {v.id: v.totals for v in pollers[0].snapshot.deployments}
    finally:
        for poller in pollers:
            poller.close()
        sim.close()
    return result


def shard_report(results: list[ShardCost]) -> str:
    rows = []
    for r in results:
        mode = "discover (every shard reads the feed)" if r.discover else "configured"
        for phase in PHASES:
            cycles = r.cycles.get(phase)
            if not cycles:
                continue
            single = median([float(c[0]) for c in cycles])
            per_shard = [median([float(c[i]) for c in cycles]) for i in range(1, r.shards + 1)]
            summed = median([float(sum(c[1:])) for c in cycles])
            rows.append(
                [
                    mode,
                    r.deployments,
                    r.shards,
                    phase,
                    f"{single:g}",
                    f"{min(per_shard):g}-{max(per_shard):g}",
                    f"{summed:g}",
                    f"{summed / max(single, 1):.2f}x",
                    "yes" if r.agree else "NO",
                ]
            )
    return table(
        [
            "mode",
            "deployments",
            "shards",
            "phase",
            "unsharded requests/cycle",
            "per shard (min-max)",
            "all shards",
            "all shards / unsharded",
            "shards agree with unsharded",
        ],
        rows,
    )


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
    """Where discover mode's requests go, per phase, beside the floor for any feed reader."""
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
                    med([c.floor_pages for c in cycles]),
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
            "floor: fewest feed pages holding the new and finished runs",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deployments", type=int, nargs="+", default=[100])
    ap.add_argument("--discover", action="store_true", help="discover mode only")
    ap.add_argument("--configured", action="store_true", help="configured mode only")
    ap.add_argument("--naive-cycles", type=int, default=3)
    ap.add_argument("--server", choices=sorted(SERVERS), default="g1-100", help="simulated API")
    ap.add_argument(
        "--shards",
        type=int,
        default=0,
        help="measure N shard pollers against one unsharded poller instead",
    )
    args = ap.parse_args(argv)
    modes = [False, True]
    if args.discover != args.configured:
        modes = [args.discover]
    if args.shards:
        shard_results = []
        for n in args.deployments:
            for discover in modes:
                log(f"shard cost: {'discover' if discover else 'configured'} {n}, {args.shards}")
                shard_results.append(
                    shard_cost(n, discover=discover, shards=args.shards, server=args.server)
                )
        print(shard_report(shard_results))
        return
    results = []
    for n in args.deployments:
        for discover in modes:
            log(f"api cost: {'discover' if discover else 'configured'} {n} deployments")
            results.append(
                api_cost(n, discover=discover, naive_cycles=args.naive_cycles, server=args.server)
            )
    print(report(results))
    print()
    print(diagnosis([r for r in results if r.discover]))
    if args.server == "g2-sessions":
        print()
        print(sessions_table(results))


if __name__ == "__main__":
    main()
