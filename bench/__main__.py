"""Run every benchmark, print the results and write them to bench/RESULTS.md.

bench/run                 # the whole suite (about 15-20 minutes on 2 cores)
bench/run --quick         # smaller sizes and fewer repeats, a couple of minutes
bench/run --only scrape   # one part: scrape, api, poll, memory, cpu (cpu needs scrape)
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import api_cost, memory, poll, render, scale, scrape
from .common import load_average, log, machine, median, table

HERE = Path(__file__).resolve().parent
PARTS = ("scrape", "api", "poll", "memory", "cpu", "shards", "scale")
# "A few requests per cycle" for discover mode, made a number.
FEW = 10


@dataclass(frozen=True)
class Profile:
    repeats: int
    scrape_sizes: tuple[int, ...]
    scrapes: int
    ha_size: int
    api: tuple[tuple[int, bool, str, int | None], ...]  # deployments, discover, server, naive
    api_cycles: tuple[int, int, int]  # quiet, burst, after
    poll_sizes: tuple[int, ...]
    poll_cycles: int
    memory_sizes: tuple[int, ...]
    memory_repeats: int
    # Issue 14: render at these sizes (synthetic snapshot), poll cycles with the simulator
    # up to scale_poll_max deployments (its world and first sync take minutes at 5,000).
    scale_sizes: tuple[int, ...] = (1000, 5000, 10_000, 20_000)
    scale_poll_max: int = 5000


FULL = Profile(
    repeats=5,
    scrape_sizes=(10, 100, 1000, 5000),
    scrapes=200,
    ha_size=1000,
    api=(
        (100, False, "g1-100", 3),
        (100, True, "g1-100", 3),
        (1000, False, "g1-100", 1),
        (1000, True, "g1-100", 1),
        (1000, True, "g1-1000", 0),
        (1000, True, "g2-100", 0),
    ),
    api_cycles=(10, 5, 5),
    poll_sizes=(100, 1000),
    poll_cycles=3,
    memory_sizes=(10_000, 100_000, 1_000_000),
    memory_repeats=3,
)
QUICK = Profile(
    repeats=2,
    scrape_sizes=(10, 100, 1000),
    scrapes=50,
    ha_size=1000,
    api=((100, False, "g1-100", 1), (100, True, "g1-100", 1)),
    api_cycles=(4, 2, 2),
    poll_sizes=(100,),
    poll_cycles=2,
    memory_sizes=(10_000, 100_000),
    memory_repeats=1,
    scale_sizes=(200,),
    scale_poll_max=200,
)


def poll_settings(n: int) -> tuple[poll.Setting, ...]:
    if n <= 100:
        return poll.DEFAULT_SETTINGS
    # Serial at 20 req/s would take 50 s per cycle at 1,000: its time is the serial column.
    return tuple(s for s in poll.DEFAULT_SETTINGS if s.concurrency > 1)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


class Results:
    """Collects each part's Markdown and the headline figures."""

    def __init__(self) -> None:
        self.sections: list[tuple[str, str]] = []
        self.headline: list[list[str]] = []
        self.targets: list[list[str]] = []
        self.notes: list[str] = []
        self.findings: list[str] = []

    def section(self, title: str, body: str) -> None:
        self.sections.append((title, body))
        print(f"\n## {title}\n\n{body}\n", flush=True)


def run_scrape(p: Profile, out: Results, data: dict[str, Any]) -> None:
    results = scrape.scrape_bench(list(p.scrape_sizes), repeats=p.repeats, scrapes=p.scrapes)
    data["scrape"] = results
    body = (
        "Latency from request to last body byte, `Accept-Encoding: gzip`, text format, one "
        "keep-alive client; each server in its own process. *Cached* is qoder-exporter "
        "(rendered once per poll, ages appended per scrape); *plain client* is "
        "`prometheus_client.start_http_server` with a collector over the same state, so "
        "`generate_latest` (and gzip) run at every scrape. Figures are medians over "
        f"{p.repeats} runs; a run is up to {p.scrapes} scrapes (the plain client's stop after "
        "3 s, at least 5).\n\n" + scrape.report(results)
    )
    out.section("1. Scrape latency and body size", body)
    for n, s in results.items():
        c, b = s["cached"], s["baseline"]
        if n == 1000:
            ratio = b.p50 / c.p50
            out.targets.append(
                [
                    "Scrape at 1,000 deployments, gzip: >= 10x faster than plain "
                    "prometheus_client and < 20 ms p50",
                    f"{c.p50 * 1000:.1f} ms p50, {ratio:.0f}x",
                    verdict(ratio >= 10 and c.p50 < 0.020),
                ]
            )
        if n in (1000, 5000):
            out.headline.append(
                [
                    f"Scrape p50 / p99, {n:,} deployments (gzip)",
                    f"{c.p50 * 1000:.1f} / {c.p99 * 1000:.1f} ms "
                    f"(plain prometheus_client {b.p50 * 1000:.0f} ms: {b.p50 / c.p50:.0f}x); "
                    f"{c.gzip_bytes / 1024:.0f} KiB on the wire",
                    "`bench/run` (`python -m bench.scrape`)",
                ]
            )


def run_api(p: Profile, out: Results, data: dict[str, Any]) -> None:
    quiet, burst, after = p.api_cycles
    results = []
    for n, discover, server, naive_cycles in p.api:
        log(f"api cost: {'discover' if discover else 'configured'} {n}, server {server}")
        results.append(
            api_cost.api_cost(
                n,
                discover=discover,
                server=server,
                naive_cycles=naive_cycles,
                quiet=quiet,
                burst_cycles=burst,
                after=after,
            )
        )
    data["api"] = results
    body = (
        "Requests per poll cycle (60 s on the simulator's clock, lookback 24 h) counted by the "
        "simulator, beside a naive poller that re-reads the whole window every cycle "
        "(bench/naive.py; it reads runs only, no metadata, so its ratio is conservative). "
        "Both read the same API at the same instant; *recent_runs agree* compares their "
        "`recent_runs` for every deployment. Bursts: 3 manual runs per active deployment "
        "triggered during each burst cycle. Request counts are deterministic for a seed: the "
        "figure is the median over the phase's cycles. The simulated API is the simulator's "
        "default (runs with a lifecycle as the G1 docs show them, pages capped at 100 as the "
        "G2 docs cap them: the hardest case for discover mode) unless the mode names the "
        "docs generation it follows (../shared/qoder-api.md, section 0).\n\n"
        + api_cost.report(results)
        + "\n\nWhere discover mode's requests go (medians per cycle; configured mode is one "
        "list_runs page per deployment), with the runs it held in flight before the cycle, "
        "those that finished, and a floor: the fewest feed pages, of the size the poller "
        "used, that hold every run new in the cycle and every run that finished in it, as if "
        "a reader knew which runs those were and where they lie.\n\n"
        + api_cost.diagnosis([r for r in results if r.discover])
    )
    out.section("2. API cost per poll cycle", body)
    for r in results:
        q = r.incremental("quiet")
        quiet_max = max(c.total for c in r.phase("quiet"))
        nv = r.naive("quiet")
        ratio = f", naive {nv:g} ({nv / max(q, 1):.0f}x)" if nv else ""
        out.headline.append(
            [
                f"API requests per quiet cycle, {r.mode}, {r.deployments:,} deployments",
                f"{q:g} (max {quiet_max}){ratio}",
                f"`python -m bench.api_cost --deployments {r.deployments} --server {r.server}`",
            ]
        )
        if r.mismatches:
            out.notes.append(
                f"api cost {r.mode} {r.deployments}: recent_runs differ from the naive "
                f"poller's in {r.mismatches} deployment-cycles"
            )
        if not r.discover:
            per = q / r.deployments
            out.targets.append(
                [
                    f"Configured, {r.deployments:,} deployments: at most one request per "
                    "deployment per quiet cycle (median)",
                    f"{per:.2f} per deployment (max {quiet_max} in a cycle with the 5-minute "
                    "metadata refresh)",
                    verdict(per <= 1.0),
                ]
            )
            continue
        floor = median([c.floor_pages for c in r.phase("quiet")])
        mark = verdict(q <= FEW)
        if q > FEW:
            out.findings.append(discover_diagnosis(r, results))
            if floor > FEW:
                mark = f"MISSED: out of reach, any reader needs >= {floor:g}"
        out.targets.append(
            [
                f"Discover, {r.deployments:,} deployments, {api_cost.SERVER_LABELS[r.server]}: "
                f"a few (<= {FEW}) requests per quiet cycle",
                f"{q:g} (median; floor {floor:g})",
                mark,
            ]
        )


def discover_diagnosis(r: api_cost.CostResult, results: list[api_cost.CostResult]) -> str:
    """Why a discover-mode quiet cycle costs more than a few requests, from the counts."""
    quiet = r.phase("quiet")
    status = median([sum(c.status_lists.values()) for c in quiet])
    feed = median([c.requests.get("list_all_runs", 0) for c in quiet]) - status
    gets = median([c.requests.get("get_run_global", 0) for c in quiet])
    meta = median([c.requests.get("list_deployments", 0) for c in quiet])
    floor = median([c.floor_pages for c in quiet])
    others = [
        x for x in results if x.discover and x.deployments == r.deployments and x.server != r.server
    ]
    text = (
        f"**Discover mode at {r.deployments:,} deployments, {api_cost.SERVER_LABELS[r.server]}: "
        f"{r.incremental('quiet'):g} requests per quiet cycle (median), not a few.** Per cycle: "
        f"{feed:g} unfiltered feed pages (new runs, then jumps to the pages that hold runs "
        f"that finished), {status:g} status-filtered pages (pending/running), {gets:g} "
        f"get_run_global, {meta:g} list_deployments (median; {r.deployments // 100} pages "
        "every 5th cycle, the metadata refresh). Why: besides the ~1-2 pages of new runs, a "
        "cycle must learn the outcome of every run that was in flight and finished since "
        f"(median {median([c.finished for c in quiet]):g} of "
        f"{median([c.in_flight_before for c in quiet]):g} per cycle here), and the feed is "
        "ordered by creation, not completion: those runs lie scattered back to the oldest "
        "run in flight, up to ~21 minutes in the simulated mix (some deployments' runs last "
        "up to 1.4x their interval). Even a reader that knew which runs finished and where "
        f"they lie needs {floor:g} pages per cycle (the floor column), so the target "
        "is out of reach on this API at this scale: the cost follows run throughput x the "
        "spread of run lengths / page size, and grows with deployments only because their "
        "runs do. What the design does about it (feed.py `_find_stale`): it jumps with "
        "after_id cursors straight to the pages that hold the runs it is looking for, as few "
        "pages as cover them (sync.py `plan_jumps`), and first lists the pending and running "
        "runs when that is cheaper than jumping to every run in flight, so it jumps only to "
        f"those that left the lists. The gap to the floor is those lists ({status:g}) and "
        f"runs alone in their page, fetched by id ({gets:g}). Before the jumps (a straight "
        "read back through the feed) this cycle cost 27.5 requests. The API generations the "
        "docs describe do meet the target"
    )
    if others:
        text += ": " + "; ".join(
            f"{api_cost.SERVER_LABELS[x.server]} {x.incremental('quiet'):g} per quiet cycle"
            for x in others
        )
    text += (
        ". Left to try: list by status only beyond the newest pages (a status list takes an "
        "after_id cursor too), so the recent, dense part of the feed is read once."
    )
    return text


def run_shards(p: Profile, out: Results, data: dict[str, Any]) -> None:
    """API requests of 3 shards against one unsharded process (README "Sharding")."""
    quiet, burst, after = p.api_cycles
    results = []
    for n in sorted({n for n, _, _, _ in p.api}):
        for discover in (False, True):
            log(f"shard cost: {'discover' if discover else 'configured'} {n}, 3 shards")
            results.append(
                api_cost.shard_cost(
                    n, discover=discover, shards=3, quiet=quiet, burst_cycles=burst, after=after
                )
            )
    out.section(
        "Sharding: API requests of 3 shards against one process",
        "`python -m bench.api_cost --shards 3`: the shards and one unsharded poller poll the "
        "same simulated world at the same instants (simulator g1-100).\n\n"
        + api_cost.shard_report(results),
    )


def run_poll(p: Profile, out: Results, data: dict[str, Any]) -> None:
    results = []
    for n in p.poll_sizes:
        results += poll.poll_time(n, poll_settings(n), latency=0.05, cycles=p.poll_cycles)
    # The same quiet cycle asking for pages of 10: same requests, fewer records to parse.
    small = min(p.poll_sizes)
    results += poll.poll_time(
        small, (poll.Setting(False, 8, 20.0),), latency=0.05, cycles=p.poll_cycles, page_size=10
    )
    data["poll"] = results
    body = (
        "Quiet steady-state cycles with 50 ms added to every API request by the simulator "
        "(`Simulator.faults.latency_s`), the poller in its own process. *Serial* is requests "
        "x 50 ms; the *rate-budget floor* is what `api.requests_per_second` alone allows "
        "(after its burst of rate/5); the *concurrency floor* is serial / `concurrency`. "
        "The cycle takes about the larger floor: concurrency hides the latency until the "
        "rate budget is the limit. Discover mode pages the feed with cursors, one page after "
        f"another. Medians over {p.poll_cycles} cycles.\n\n" + poll.report(results)
    )
    out.section("3. Poll cycle time with 50 ms API latency", body)
    for r in results:
        s = r.setting
        if s.concurrency == 8 and s.rps == 20.0 and not s.discover and r.page_size == 100:
            if r.med("wall") > 0.75 * 60:
                out.findings.append(
                    f"**Poll time at the default rate budget.** {r.deployments:,} configured "
                    f"deployments take {r.med('wall'):.0f} s per quiet cycle at 20 req/s "
                    f"({r.requests:g} requests), most of a 60 s poll interval: the rate budget, "
                    "not latency or concurrency, is the limit. At this scale raise "
                    "`api.requests_per_second` (the docs suggest at most 50), lengthen "
                    "`poll_interval`, or use `discover: true`, whose cycles cost tens of "
                    "requests, not one per deployment."
                )
            out.headline.append(
                [
                    f"Poll cycle, {r.deployments:,} deployments, 50 ms API latency, "
                    "defaults (concurrency 8, 20 req/s)",
                    f"{r.med('wall'):.1f} s for {r.requests:g} requests "
                    f"(serial {r.serial_s():.1f} s)",
                    "`python -m bench.poll`",
                ]
            )


def run_scale(p: Profile, out: Results, data: dict[str, Any]) -> None:
    rows = [render.measure_in_child(n, 0.25) for n in p.scale_sizes]
    polled = scale.run([n for n in p.scale_sizes if n <= p.scale_poll_max], cycles=2)
    data["scale"] = {"render": rows}
    body = (
        "Render after a poll on bench.workload's synthetic snapshot (no API), each size in a "
        "fresh process: the first render, a quiet one (new views, same values) and one with "
        "25% of the deployments changed (`python -m bench.render`).\n\n"
        + render.report(rows, 0.25)
        + "\n\nSteady discover-mode poll cycles against the simulator (24 h window, no added "
        "latency), the poller in its own process, in the cron world (cron-like schedules, ~5% "
        "of the deployments change a minute) and the busy one (every deployment every 5-15 "
        "minutes, ~21%) (`python -m bench.scale`):\n\n" + scale.report(polled)
    )
    out.section("6. Scale: 1,000 to 20,000 deployments in one process (issue 14)", body)


def run_memory(p: Profile, out: Results, data: dict[str, Any]) -> None:
    rows = memory.memory_bench(list(p.memory_sizes), repeats=p.memory_repeats)
    data["memory"] = rows
    per_run = [memory.bytes_per_run(r) for r in rows]
    slope = ""
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        marginal = (b["rss_full_kib"] - a["rss_full_kib"]) * 1024 / (b["runs"] - a["runs"])
        slope = (
            f"\n\nMarginal cost between {a['runs']:,.0f} and {b['runs']:,.0f} runs: "
            f"{marginal:.0f} bytes/run."
        )
    body = (
        f"A RunStore fed directly (no HTTP) as the first sync of {memory.DEPLOYMENTS:,} "
        "deployments whose 24 h window holds N runs (2% in flight), one fresh process per "
        "measurement, RSS from /proc/self/status. Then the clock rolls one more whole window "
        "forward in 10 steps (new runs arrive, in-flight ones finish): the store stays at one "
        f"window. Medians over {p.memory_repeats} processes.\n\n" + memory.report(rows) + slope
    )
    out.section("4. Memory against runs in the window", body)
    flat = max(per_run) <= 1.5 * min(per_run) if per_run else False
    bounded = all(r["tracked_after_roll_max"] <= 1.05 * r["runs"] for r in rows)
    out.targets.append(
        [
            "Memory: flat cost per run, bounded by the window",
            f"{min(per_run):.0f}-{max(per_run):.0f} bytes/run; tracked runs after rolling "
            "a window <= 1.05 x window",
            verdict(flat and bounded),
        ]
    )
    big = rows[-1]
    out.headline.append(
        [
            f"Memory, {big['runs']:,.0f} runs in the window",
            f"{big['rss_full_kib'] / 1024:.0f} MiB RSS ({memory.bytes_per_run(big):.0f} bytes/run)",
            "`python -m bench.memory`",
        ]
    )


def run_cpu(p: Profile, out: Results, data: dict[str, Any]) -> None:
    parts = []
    if "scrape" in data:
        parts.append(
            "Server process CPU per scrape (utime+stime of the server process over the "
            "scrapes of section 1):\n\n" + scrape.cpu_report(data["scrape"])
        )
    ha = scrape.ha_bench(p.ha_size, repeats=p.repeats, scrapes=p.scrapes)
    data["ha"] = ha
    parts.append(
        f"An HA pair of Prometheus servers: 2 clients scraping at once, {p.ha_size:,} "
        "deployments, against 1 client:\n\n" + scrape.ha_report(p.ha_size, ha)
    )
    if "poll" in data:
        parts.append(
            "Poller process CPU per quiet poll cycle (time.process_time over poll_once: "
            "client, JSON, sync, snapshot) and per render of the exposition that follows "
            "each poll (text and OpenMetrics, each gzipped once):\n\n"
            + poll.cpu_report(data["poll"])
        )
    one, two = ha[("cached", 1)], ha[("cached", 2)]
    out.headline.append(
        [
            f"CPU per scrape, {p.ha_size:,} deployments",
            f"{one.cpu_per_scrape * 1000:.1f} ms (plain prometheus_client "
            f"{ha[('baseline', 1)].cpu_per_scrape * 1000:.0f} ms); HA pair p50 "
            f"{two.p50 * 1000:.1f} ms vs {one.p50 * 1000:.1f} ms alone",
            "`bench/run`",
        ]
    )
    if "poll" in data:
        for r in data["poll"]:
            s = r.setting
            if s.concurrency == 8 and s.rps == 20.0 and not s.discover and r.page_size == 100:
                out.headline.append(
                    [
                        f"CPU per quiet poll, {r.deployments:,} deployments (configured)",
                        f"{r.med('cpu_poll') * 1000:.0f} ms + "
                        f"{r.med('cpu_render') * 1000:.0f} ms render",
                        "`python -m bench.poll`",
                    ]
                )
    out.section("5. CPU per scrape and per poll", "\n\n".join(parts))
    polls = {
        (r.deployments, r.mode, r.setting.concurrency, r.setting.rps): r
        for r in data.get("poll", ())
    }
    full = polls.get((100, "configured", 8, 20.0))
    small = polls.get((100, "configured, page_size 10", 8, 20.0))
    if full and small:
        a, b = full.med("cpu_poll"), small.med("cpu_poll")
        # The poller sizes each deployment's first page to what it needs to see (new runs
        # and those in flight); were that to stop working, pages of 10 would show it.
        if a > 1.3 * b:
            out.findings.append(
                "**Poll CPU is mostly parsing records already known.** A quiet configured "
                f"cycle costs {a * 1000:.0f} ms CPU, and {b * 1000:.0f} ms ({a / b:.1f}x less) "
                f"with pages of 10 for the same {small.requests:g} requests: the first page "
                "of each deployment holds many more runs than the cycle needs to read."
            )
    biggest = max(data.get("poll", ()), key=lambda r: r.med("tracked"), default=None)
    if biggest is not None and "memory" in data:
        per_run = memory.bytes_per_run(data["memory"][-1])
        state = biggest.med("tracked") * per_run / 2**20
        rss = biggest.med("rss_kib") / 1024
        if rss > 2 * state + 64:
            out.findings.append(
                f"**Poller RSS is well above the state.** With "
                f"{biggest.deployments:,} deployments ({biggest.med('tracked'):,.0f} runs "
                f"tracked) the poller process holds {rss:.0f} MiB RSS, where the store needs "
                f"about {state:.0f} MiB ({per_run:.0f} bytes/run, section 4). Not the "
                "start-up peak of fetched pages: the poller applies each deployment's fetch as "
                "it completes, and RSS stayed the same when it began to. Not yet explained."
            )


def write(path: Path, out: Results, info: dict[str, str], command: str, began: float) -> None:
    minutes = (time.time() - began) / 60
    lines = [
        "# Benchmark results",
        "",
        f"Written by `{command}` on {info['date']} ({minutes:.0f} min). Rerun it to refresh "
        "this file; each part also runs alone (`python -m bench.scrape`, `bench.api_cost`, "
        "`bench.poll`, `bench.memory`).",
        "",
        table(["machine", ""], [[k, v] for k, v in info.items()]),
        "",
        "Noise: the machine has 2 cores, shared with whatever else runs (here, at times, "
        "other test suites). Timing figures are medians of repeated runs for that reason; "
        "request counts and memory are deterministic or nearly so. Load average at the "
        "end: " + load_average() + ".",
        "",
    ]
    if out.targets:
        lines += ["## Targets (issue 7)", "", table(["target", "measured", ""], out.targets), ""]
    if out.headline:
        lines += ["## Headline", "", table(["figure", "value", "command"], out.headline), ""]
    for note in out.notes:
        lines += [f"- {note}"]
    for title, body in out.sections:
        lines += [f"## {title}", "", body, ""]
    if out.findings:
        lines += ["## Findings and diagnosis", ""]
        for finding in out.findings:
            lines += [f"- {finding}", ""]
    path.write_text("\n".join(lines))
    log(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    ap.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--repeats", type=int, default=None, help="timing repeats (default 5)")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results file (default bench/RESULTS.md, written only when every part ran)",
    )
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    profile = QUICK if args.quick else FULL
    if args.repeats:
        profile = Profile(**{**profile.__dict__, "repeats": args.repeats})
    command = "bench/run" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))
    info = machine()
    print(table(["machine", ""], [[k, v] for k, v in info.items()]), flush=True)
    began = time.time()
    out = Results()
    data: dict[str, Any] = {}
    steps = {
        "scrape": run_scrape,
        "api": run_api,
        "poll": run_poll,
        "memory": run_memory,
        "cpu": run_cpu,
        "shards": run_shards,
        "scale": run_scale,
    }
    for name in PARTS:
        if name in args.only:
            steps[name](profile, out, data)
    if out.targets:
        print("\n## Targets\n\n" + table(["target", "measured", ""], out.targets))
    if out.headline:
        print("\n## Headline\n\n" + table(["figure", "value", "command"], out.headline))
    if out.findings:
        print("\n## Findings and diagnosis\n\n" + "\n\n".join(f"- {f}" for f in out.findings))
    out_path = args.out
    if out_path is None and set(args.only) == set(PARTS) and not args.quick:
        out_path = HERE / "RESULTS.md"
    if args.no_write or out_path is None:
        log("results not written (a partial or quick run; --out FILE writes them)")
    else:
        write(out_path, out, info, command, began)
    return 0


if __name__ == "__main__":
    sys.exit(main())
