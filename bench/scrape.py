"""Scrape latency, body size and server CPU per scrape: the cached exposition against a plain
prometheus_client exporter that renders (and gzips) the same state at every scrape.

    .venv/bin/python -m bench.scrape [--deployments 10 100 1000 5000] [--repeats 5]

Each server runs in a child process (bench.serve) so its CPU time is read apart from the
client's. The client is http.client with keep-alive (as Prometheus), asking for the text
format with gzip; latency is request sent to last body byte read.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .common import log, median, ms, percentile, process_cpu_seconds, table
from .workload import AGE_METRICS

ROOT = Path(__file__).resolve().parent.parent
TEXT_ACCEPT = "text/plain;version=0.0.4"


class Server:
    """A bench.serve child process; use as a context manager."""

    def __init__(self, deployments: int, mode: str, seed: int = 1, now: float = 0.0) -> None:
        self.mode = mode
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "bench.serve", "--deployments", str(deployments)),
                *("--mode", mode, "--seed", str(seed), "--now", str(now or time.time())),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.close()
            raise RuntimeError(f"bench.serve --mode {mode} did not start")
        self.port = int(json.loads(line)["port"])

    def cpu(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Scraper:
    """One keep-alive scraping client (reconnects when the server closes the connection)."""

    def __init__(self, port: int, *, compress: bool = True) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Accept": TEXT_ACCEPT}
        if compress:
            self.headers["Accept-Encoding"] = "gzip"

    def scrape(self) -> tuple[float, bytes, dict[str, str]]:
        start = time.perf_counter()
        self.conn.request("GET", "/metrics", headers=self.headers)
        response = self.conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"/metrics answered {response.status}")
        return elapsed, body, {k.lower(): v for k, v in response.getheaders()}

    def run(self, count: int, budget_s: float, minimum: int) -> list[float]:
        """At least `minimum` scrapes, at most `count`, stopping once `budget_s` is spent."""
        samples: list[float] = []
        began = time.perf_counter()
        while len(samples) < count:
            samples.append(self.scrape()[0])
            if len(samples) >= minimum and time.perf_counter() - began > budget_s:
                break
        return samples

    def close(self) -> None:
        self.conn.close()


@dataclass
class RunStats:
    """One timed series of scrapes against one server."""

    latencies: list[float]
    cpu_s: float  # server process CPU over the series

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)

    @property
    def cpu_per_scrape(self) -> float:
        return self.cpu_s / len(self.latencies)


@dataclass
class Series:
    """Repeated RunStats for one (deployments, mode, scrapers); figures are medians."""

    runs: list[RunStats] = field(default_factory=list)
    gzip_bytes: int = 0
    plain_bytes: int = 0

    @property
    def p50(self) -> float:
        return median([r.p50 for r in self.runs])

    @property
    def p99(self) -> float:
        return median([r.p99 for r in self.runs])

    @property
    def cpu_per_scrape(self) -> float:
        return median([r.cpu_per_scrape for r in self.runs])

    @property
    def scrapes(self) -> int:
        return int(median([len(r.latencies) for r in self.runs]))


def timed_run(
    server: Server, *, scrapers: int, count: int, budget_s: float, minimum: int
) -> RunStats:
    """`scrapers` clients scraping at once (an HA pair of Prometheus servers is 2)."""
    clients = [Scraper(server.port) for _ in range(scrapers)]
    for c in clients:
        c.scrape()  # warm up: connection open, caches hot
    results: list[list[float]] = [[] for _ in clients]
    barrier = threading.Barrier(len(clients))

    def work(i: int) -> None:
        barrier.wait()
        results[i] = clients[i].run(count, budget_s, minimum)

    cpu0 = server.cpu()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu1 = server.cpu()
    for c in clients:
        c.close()
    return RunStats([s for r in results for s in r], cpu1 - cpu0)


def body_sizes(server: Server) -> tuple[int, int]:
    """(gzip bytes, plain bytes) on the wire for one scrape."""
    zipped = Scraper(server.port, compress=True)
    plain = Scraper(server.port, compress=False)
    try:
        _, zbody, zheaders = zipped.scrape()
        _, pbody, _ = plain.scrape()
    finally:
        zipped.close()
        plain.close()
    if zheaders.get("content-encoding") != "gzip":
        raise RuntimeError(f"{server.mode}: gzip was not negotiated")
    return len(zbody), len(pbody)


def scrape_bench(
    sizes: list[int],
    *,
    repeats: int = 5,
    scrapes: int = 200,
    budget_s: float = 3.0,
    minimum: int = 5,
) -> dict[int, dict[str, Series]]:
    """Per size: {"cached": Series, "baseline": Series}, one scraper, both servers up at once
    and measured alternately in every repeat so that machine noise hits both alike."""
    out: dict[int, dict[str, Series]] = {}
    for n in sizes:
        log(f"scrape: {n} deployments")
        now = time.time()
        with Server(n, "cached", now=now) as cached, Server(n, "baseline", now=now) as baseline:
            series = {"cached": Series(), "baseline": Series()}
            for name, server in (("cached", cached), ("baseline", baseline)):
                series[name].gzip_bytes, series[name].plain_bytes = body_sizes(server)
            for _ in range(repeats):
                for name, server in (("cached", cached), ("baseline", baseline)):
                    series[name].runs.append(
                        timed_run(
                            server, scrapers=1, count=scrapes, budget_s=budget_s, minimum=minimum
                        )
                    )
        out[n] = series
    return out


def ha_bench(
    n: int, *, repeats: int = 5, scrapes: int = 200, budget_s: float = 3.0, minimum: int = 5
) -> dict[tuple[str, int], Series]:
    """1 against 2 simultaneous scrapers, cached and baseline, at n deployments."""
    out: dict[tuple[str, int], Series] = {}
    log(f"scrape: HA pair at {n} deployments")
    now = time.time()
    with Server(n, "cached", now=now) as cached, Server(n, "baseline", now=now) as baseline:
        for _ in range(repeats):
            for name, server in (("cached", cached), ("baseline", baseline)):
                for scrapers in (1, 2):
                    out.setdefault((name, scrapers), Series()).runs.append(
                        timed_run(
                            server,
                            scrapers=scrapers,
                            count=scrapes,
                            budget_s=budget_s,
                            minimum=minimum,
                        )
                    )
    return out


def _without_ages(text: str) -> tuple[list[str], set[str]]:
    """The exposition minus the scrape-time age families; and the age series (name+labels)."""
    kept, ages = [], set()
    for line in text.splitlines():
        if line.startswith("# "):
            parts = line.split(" ", 3)
            if len(parts) > 2 and parts[2] in AGE_METRICS:
                continue
        else:
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in AGE_METRICS:
                ages.add(line.rsplit(" ", 1)[0])
                continue
        kept.append(line)
    return kept, ages


def check_bodies(n: int) -> dict[str, bool]:
    """Correctness: the cached body (plain and gunzipped) equals the plain client's body line
    for line, except the age values that both compute at scrape time."""
    now = time.time()
    with Server(n, "cached", now=now) as cached, Server(n, "baseline", now=now) as baseline:
        bodies = {}
        for name, server in (("cached", cached), ("baseline", baseline)):
            zipped, plain = Scraper(server.port), Scraper(server.port, compress=False)
            _, zbody, _ = zipped.scrape()
            _, pbody, _ = plain.scrape()
            zipped.close()
            plain.close()
            bodies[name] = (gzip.decompress(zbody).decode(), pbody.decode())
    c_zip, c_plain = (_without_ages(t) for t in bodies["cached"])
    b_zip, b_plain = (_without_ages(t) for t in bodies["baseline"])
    return {
        "gzip_equals_plain": c_zip == c_plain and b_zip == b_plain,
        "static_part_equal": c_plain[0] == b_plain[0],
        "age_series_equal": c_plain[1] == b_plain[1],
        "has_age_series": bool(c_plain[1]),
    }


def report(results: dict[int, dict[str, Series]]) -> str:
    rows = []
    for n, s in results.items():
        c, b = s["cached"], s["baseline"]
        rows.append(
            [
                n,
                ms(c.p50),
                ms(c.p99),
                ms(b.p50),
                ms(b.p99),
                f"{b.p50 / c.p50:.1f}x",
                f"{c.gzip_bytes:,}",
                f"{b.gzip_bytes:,}",
                f"{c.plain_bytes:,}",
                f"{c.scrapes}/{b.scrapes}",
            ]
        )
    return table(
        [
            "deployments",
            "cached p50 ms",
            "cached p99 ms",
            "plain client p50 ms",
            "plain client p99 ms",
            "speed-up (p50)",
            "gzip bytes (cached)",
            "gzip bytes (plain client)",
            "uncompressed bytes",
            "scrapes/run (cached/plain)",
        ],
        rows,
    )


def cpu_report(results: dict[int, dict[str, Series]]) -> str:
    rows = []
    for n, s in results.items():
        c, b = s["cached"], s["baseline"]
        rows.append(
            [
                n,
                ms(c.cpu_per_scrape),
                ms(b.cpu_per_scrape),
                f"{b.cpu_per_scrape / max(c.cpu_per_scrape, 1e-9):.0f}x",
            ]
        )
    return table(
        ["deployments", "cached CPU ms/scrape", "plain client CPU ms/scrape", "ratio"], rows
    )


def ha_report(n: int, results: dict[tuple[str, int], Series]) -> str:
    rows = []
    for name in ("cached", "baseline"):
        one, two = results[(name, 1)], results[(name, 2)]
        label = "cached (qoder-exporter)" if name == "cached" else "plain prometheus_client"
        for scrapers, s in ((1, one), (2, two)):
            rows.append(
                [
                    label,
                    n,
                    scrapers,
                    ms(s.p50),
                    ms(s.p99),
                    ms(s.cpu_per_scrape),
                    f"{s.p50 / one.p50:.2f}x",
                ]
            )
    return table(
        [
            "server",
            "deployments",
            "simultaneous scrapers",
            "p50 ms",
            "p99 ms",
            "server CPU ms/scrape",
            "p50 vs 1 scraper",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deployments", type=int, nargs="+", default=[10, 100, 1000, 5000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scrapes", type=int, default=200)
    args = ap.parse_args(argv)
    results = scrape_bench(args.deployments, repeats=args.repeats, scrapes=args.scrapes)
    print(report(results))
    print()
    print(cpu_report(results))


if __name__ == "__main__":
    main()
