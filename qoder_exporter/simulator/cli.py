"""`python -m qoder_exporter.simulator`: serve the simulated API on the wall clock."""

from __future__ import annotations

import argparse
import sys
import time

from .clock import RealClock
from .core import Simulator
from .sessions import SessionOptions


def main(argv: list[str] | None = None) -> int:
    """Run the simulator on the wall clock until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m qoder_exporter.simulator",
        description="Serve a simulated Qoder Cloud Agents deployments API.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", choices=("g1", "g2"), default="g1")
    parser.add_argument("--page-cap", type=int, choices=(100, 1000), default=100)
    parser.add_argument("--deployments", type=int, default=5)
    parser.add_argument("--token", default="pt-simulator-token")
    parser.add_argument(
        "--demo", action="store_true", help="fast profile: runs every 15-60 s, 2 h of history"
    )
    parser.add_argument(
        "--stop-reason",
        choices=("object", "string"),
        default="object",
        help="how session.status_idle carries stop_reason",
    )
    parser.add_argument(
        "--usage",
        choices=("tokens", "credits"),
        default="tokens",
        help="session usage form: token fields, or {total_credits} only",
    )
    args = parser.parse_args(argv)
    sim = Simulator(
        args.seed,
        clock=RealClock(),
        deployments=args.deployments,
        token=args.token,
        shape=args.shape,
        page_cap=args.page_cap,
        demo=args.demo,
        sessions=SessionOptions(stop_reason=args.stop_reason, usage=args.usage),
    )
    url = sim.serve(args.host, args.port)
    print(f"QODER_API_URL={url}", flush=True)
    print(f"QODER_PAT={sim.token}", flush=True)
    print("serving the simulated Qoder API; Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sim.close()
    return 0
