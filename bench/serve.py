"""Child process: serve /metrics for a synthetic snapshot, the exporter's way or the plain way.

    python -m bench.serve --deployments 1000 --mode cached|baseline

Prints one JSON line {"port": N, "pid": N} once listening, then serves until stdin closes.
Running the server in its own process lets the parent read its CPU time (/proc/PID/stat)
without counting the scraping client.

- cached: qoder_exporter's ExporterServer over an Exposition (rendered once, cached bytes,
  ages appended per scrape, gzip negotiated).
- baseline: a plain prometheus_client exporter, `start_http_server` with a collector that
  builds every family at every scrape (generate_latest, gzip per scrape when asked).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from prometheus_client import CollectorRegistry, start_http_server

from qoder_exporter.collector import Exposition
from qoder_exporter.server import ExporterServer

from .workload import PlainCollector, snapshot


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deployments", type=int, required=True)
    ap.add_argument("--mode", choices=("cached", "baseline"), required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--now", type=float, default=None, help="state as of (default: now)")
    args = ap.parse_args(argv)
    snap = snapshot(args.deployments, args.now or time.time(), args.seed)
    if args.mode == "cached":
        server = ExporterServer(Exposition(snap, time.time), ("127.0.0.1", 0), healthy=lambda: True)
        server.start()
        port = server.port
    else:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(PlainCollector(snap, time.time))  # type: ignore[arg-type]
        httpd, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        port = httpd.server_address[1]
    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
    sys.stdin.read()  # serve until the parent closes our stdin
    return 0


if __name__ == "__main__":
    sys.exit(main())
