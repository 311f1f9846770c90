"""Poll cycle time with a slow API, and CPU per poll: the poller runs in a child process.

    .venv/bin/python -m bench.poll [--deployments 100 1000] [--latency 0.05] [--cycles 3]

The simulated API (this process, manual clock) answers every request after a constant
`latency` (Simulator.faults.latency_s). The poller lives in a child process whose clock is
the simulator's, shared through memory, so its CPU time (time.process_time: all its threads)
holds the poller's work only: HTTP client, JSON parsing, sync, snapshot; and, apart, the
render of the exposition that follows every poll.

The start-up poll and the settling cycles run with no latency and a 1000/s budget; the
measured cycles are quiet steady-state cycles (60 s apart on the simulator's clock) with the
latency and the rate budget of the configuration under test.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .common import log, median, status_kib, table

TOKEN = "pt-bench"
STARTUP_RPS = 1000.0
# Set to a file name: the child writes there a cProfile of each poll (CPU figures inflate).
PROFILE_ENV = "BENCH_POLL_PROFILE"


class _GCTime:
    """Seconds (wall, single-threaded here) the cyclic garbage collector ran."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._began = 0.0
        gc.callbacks.append(self._note)

    def _note(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._began


def _child(conn: Connection, clock: Any, doc: dict[str, Any]) -> None:
    from qoder_exporter.client import TokenBucket
    from qoder_exporter.collector import Exposition
    from qoder_exporter.config import config_from_dict
    from qoder_exporter.heap import Heap
    from qoder_exporter.poller import Poller

    poller = Poller(config_from_dict(doc, env={}), clock=lambda: float(clock.value))
    exposition = Exposition(poller.snapshot, time.time)
    in_gc = _GCTime()
    heap = Heap()
    try:
        while True:
            command = conn.recv()
            if command is None:
                return
            rps = float(command["rps"])
            if poller.client.bucket.rate != rps:
                poller.client.bucket = TokenBucket(rps)
            waits0 = poller.client.bucket.waits
            profile = cProfile.Profile(time.process_time) if PROFILE_ENV in os.environ else None
            gc0 = in_gc.seconds
            cpu0, wall0 = time.process_time(), time.perf_counter()
            if profile is not None:
                profile.enable()
            ok = poller.poll_once()
            wall1, cpu1 = time.perf_counter(), time.process_time()
            if profile is not None:
                profile.disable()
                # the last poll's profile stays (the last measured quiet cycle)
                profile.dump_stats(os.environ[PROFILE_ENV])
            rendered0 = exposition.fragments.rendered
            exposition.update(poller.snapshot)
            heap.settle()  # as Poller.run does after each poll
            cpu2 = time.process_time()
            text = exposition.body(openmetrics=False, compress=False)
            conn.send(
                {
                    "ok": ok,
                    "error": poller.snapshot.last_error,
                    "wall": wall1 - wall0,
                    "cpu_poll": cpu1 - cpu0,
                    "cpu_render": cpu2 - cpu1,
                    "gc": in_gc.seconds - gc0,  # of poll and render, in the garbage collector
                    "rate_waits": poller.client.bucket.waits - waits0,
                    "tracked": poller.store.size(),
                    "rss_kib": status_kib("VmRSS"),
                    "deployments_rendered": exposition.fragments.rendered - rendered0,
                    "series": sum(1 for ln in text.splitlines() if not ln.startswith(b"#")),
                    "body_bytes": len(text),
                    "gzip_bytes": len(exposition.body(openmetrics=False, compress=True)),
                }
            )
    finally:
        poller.close()


class PollProcess:
    """A poller in a child process, polling when told, on a clock the parent sets."""

    def __init__(self, doc: dict[str, Any], now: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.clock = ctx.Value("d", now, lock=False)
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_child, args=(child_conn, self.clock, doc), daemon=True)
        self.proc.start()
        child_conn.close()

    def poll(self, now: float, rps: float) -> dict[str, Any]:
        self.clock.value = now
        self.conn.send({"rps": rps})
        if not self.conn.poll(900):
            raise RuntimeError("poller child did not answer")
        result: dict[str, Any] = self.conn.recv()
        if not result["ok"]:
            raise RuntimeError(f"poll failed: {result['error']}")
        return result

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


@dataclass(frozen=True)
class Setting:
    discover: bool
    concurrency: int
    rps: float

    @property
    def mode(self) -> str:
        return "discover" if self.discover else "configured"


@dataclass
class PollResult:
    deployments: int
    setting: Setting
    latency: float
    page_size: int = 100
    cycles: list[dict[str, Any]] = field(default_factory=list)

    @property
    def mode(self) -> str:
        mode = self.setting.mode
        return mode if self.page_size == 100 else f"{mode}, page_size {self.page_size}"

    def med(self, key: str) -> float:
        return median([c[key] for c in self.cycles])

    @property
    def requests(self) -> float:
        return self.med("requests")

    def serial_s(self) -> float:
        """One request after another, no rate limit: requests x latency."""
        return self.requests * self.latency

    def rate_floor_s(self) -> float:
        """The rate budget alone (its burst of rate/5 tokens is free)."""
        return max(self.requests - max(1.0, self.setting.rps / 5), 0.0) / self.setting.rps

    def concurrency_floor_s(self) -> float:
        return self.serial_s() / self.setting.concurrency


DEFAULT_SETTINGS = (
    Setting(False, 1, 20.0),
    Setting(False, 8, 20.0),
    Setting(False, 8, 50.0),
    Setting(False, 8, 1000.0),
    Setting(True, 8, 20.0),
)


def poll_time(
    n: int,
    settings: tuple[Setting, ...] = DEFAULT_SETTINGS,
    *,
    latency: float = 0.05,
    cycles: int = 3,
    settle: int = 2,
    interval: float = 60.0,
    seed: int = 1,
    page_size: int = 100,
    history_s: float | None = None,
    world: Callable[[int, int, float], list[Any]] | None = None,
) -> list[PollResult]:
    """history_s: how far back the simulated world begins (the simulator's 3 days if None);
    world(n, seed, history_s): the deployments' specs (the simulator's default if None)."""
    from qoder_exporter.simulator import Simulator

    extra = {} if history_s is None else {"history_s": history_s}
    specs: int | list[Any] = n if world is None else world(n, seed, history_s or 3 * 86400.0)
    sim = Simulator(seed=seed, deployments=specs, token=TOKEN, **extra)
    url = sim.serve("127.0.0.1", 0)
    out = []
    try:
        for setting in settings:
            log(
                f"poll: {n} deployments, {setting.mode}, concurrency {setting.concurrency}, "
                f"{setting.rps:g} req/s"
            )
            doc: dict[str, Any] = {
                "api": {"url": url, "token": TOKEN, "requests_per_second": STARTUP_RPS},
                "poll_interval": f"{int(interval)}s",
                "lookback": "24h",
                "concurrency": setting.concurrency,
                "page_size": page_size,
            }
            if setting.discover:
                doc["discover"] = True
            else:
                doc["deployments"] = sim.deployment_ids()
            child = PollProcess(doc, sim.clock.now())
            result = PollResult(n, setting, latency, page_size)
            try:
                sim.faults.latency_s = 0.0
                child.poll(sim.clock.now(), STARTUP_RPS)
                for _ in range(settle):
                    sim.advance(interval)
                    child.poll(sim.clock.now(), STARTUP_RPS)
                sim.faults.latency_s = latency
                for _ in range(cycles):
                    sim.advance(interval)
                    sim.reset_counts()
                    polled = child.poll(sim.clock.now(), setting.rps)
                    polled["requests"] = sim.total_requests()
                    result.cycles.append(polled)
            finally:
                sim.faults.latency_s = 0.0
                child.close()
            out.append(result)
    finally:
        sim.close()
    return out


def report(results: list[PollResult]) -> str:
    rows = []
    for r in results:
        s = r.setting
        rows.append(
            [
                r.deployments,
                r.mode,
                s.concurrency,
                f"{s.rps:g}",
                f"{r.requests:g}",
                f"{r.med('wall'):.2f}",
                f"{r.serial_s():.2f}",
                f"{r.rate_floor_s():.2f}",
                f"{r.concurrency_floor_s():.2f}",
                f"{r.med('cpu_poll') * 1000:.0f}",
            ]
        )
    return table(
        [
            "deployments",
            "mode",
            "concurrency",
            "rate budget req/s",
            "requests/cycle",
            "cycle wall s",
            "serial s (requests x latency)",
            "rate-budget floor s",
            "concurrency floor s",
            "poll CPU ms",
        ],
        rows,
    )


def cpu_report(results: list[PollResult]) -> str:
    rows = []
    seen = set()
    for r in results:
        key = (r.deployments, r.mode)
        if key in seen:
            continue
        seen.add(key)
        rows.append(
            [
                r.deployments,
                r.mode,
                f"{r.requests:g}",
                f"{r.med('cpu_poll') * 1000:.0f}",
                f"{r.med('cpu_poll') * 1000 / max(r.requests, 1):.2f}",
                f"{r.med('cpu_render') * 1000:.0f}",
                f"{r.med('tracked'):,.0f}",
                f"{r.med('rss_kib') / 1024:.0f}",
            ]
        )
    return table(
        [
            "deployments",
            "mode",
            "requests/cycle",
            "CPU ms per poll",
            "CPU ms per request",
            "CPU ms per render (once per poll)",
            "tracked runs",
            "poller RSS MiB",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deployments", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--cycles", type=int, default=3)
    args = ap.parse_args(argv)
    results = []
    for n in args.deployments:
        results += poll_time(n, latency=args.latency, cycles=args.cycles)
    print(report(results))
    print()
    print(cpu_report(results))


if __name__ == "__main__":
    main()
