"""Command line: flags named like the Prometheus exporters' own."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence

from . import __version__, logs
from .accounts import Accounts
from .collector import Exposition
from .config import Config, ConfigError, config_from_dict, load_config, parse_duration
from .poller import Poller
from .server import MAX_CONNECTIONS, READ_HEADER_TIMEOUT_S, ExporterServer
from .sharding import MAX_SHARDS, Shard, ShardError, shard_from_pod
from .webconfig import WebConfigError, load_web_config

log = logging.getLogger("qoder_exporter")

DEFAULT_LISTEN = ":7637"
# How long shutdown waits for a poll cycle in progress before exiting without it.
SHUTDOWN_GRACE_S = 3.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="qoder-exporter",
        description="Prometheus exporter for Qoder Cloud Agents deployment runs.",
    )
    p.add_argument("--config", "--config.file", dest="config", help="path to config.yaml")
    p.add_argument(
        "--config.check",
        dest="check",
        action="store_true",
        help="validate the configuration and exit (0 valid, 1 invalid)",
    )
    p.add_argument(
        "--web.listen-address",
        dest="listen",
        default=DEFAULT_LISTEN,
        help=f"address to serve /metrics on (default {DEFAULT_LISTEN})",
    )
    p.add_argument(
        "--web.config.file",
        dest="web_config",
        help="YAML enabling TLS and/or basic auth, as exporter-toolkit's (see README)",
    )
    p.add_argument(
        "--web.enable-lifecycle",
        dest="enable_lifecycle",
        action="store_true",
        help="enable POST /-/reload (off by default: any client reaching the port could use "
        "it); SIGHUP reloads either way",
    )
    p.add_argument(
        "--web.read-header-timeout",
        dest="read_header_timeout",
        type=_duration_flag,
        default=READ_HEADER_TIMEOUT_S,
        help="deadline for a whole request head, e.g. 5s (default "
        f"{READ_HEADER_TIMEOUT_S:g}s); a slower client is disconnected",
    )
    p.add_argument(
        "--web.max-connections",
        dest="max_connections",
        type=_positive_int,
        default=MAX_CONNECTIONS,
        help="open HTTP connections; at the cap the one idle longest is closed "
        f"(default {MAX_CONNECTIONS})",
    )
    p.add_argument(
        "--log.level",
        dest="log_level",
        default="info",
        choices=["debug", "info", "warn", "warning", "error"],
    )
    p.add_argument("--log.format", dest="log_format", default="logfmt", choices=["logfmt", "json"])
    p.add_argument(
        "--demo",
        action="store_true",
        help="run against an embedded Qoder API simulator (no account needed)",
    )
    p.add_argument(
        "--demo.shape",
        dest="demo_shape",
        default="status",
        choices=["status", "record"],
        help="the demo API's run shape: status (runs with a lifecycle) or record "
        "(record-only runs, outcomes from their sessions)",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="poll once, print the exposition and exit (0 if the poll succeeded)",
    )
    _shard_flags(p)
    p.add_argument("--version", action="version", version=f"qoder-exporter {__version__}")
    args = p.parse_args(argv)
    if not args.config and not args.demo:
        p.error("one of --config or --demo is required")
    try:
        args.shard = shard_of_args(args)
    except ShardError as exc:
        p.error(str(exc))
    return args


def _shard_flags(p: argparse.ArgumentParser) -> None:
    """kube-state-metrics' sharding flags (see sharding.py)."""
    p.add_argument(
        "--shard",
        dest="shard_index",
        type=int,
        default=None,
        help="this process's shard, 0 to --total-shards - 1 (default 0)",
    )
    p.add_argument(
        "--total-shards",
        dest="total_shards",
        type=int,
        default=1,
        help=f"number of shards, 1 to {MAX_SHARDS}; 1 disables sharding (default 1)",
    )
    p.add_argument(
        "--pod",
        dest="pod",
        default=None,
        help="automatic sharding: this StatefulSet pod's name (--pod=$(POD_NAME)); the "
        "shard is its ordinal suffix, --total-shards the StatefulSet's replicas",
    )
    p.add_argument(
        "--pod-namespace",
        dest="pod_namespace",
        default=None,
        help="the pod's namespace (--pod-namespace=$(POD_NAMESPACE)), logged with the shard",
    )


def shard_of_args(args: argparse.Namespace) -> Shard:
    total = args.total_shards
    if not 1 <= total <= MAX_SHARDS:
        raise ShardError(f"--total-shards: must be from 1 to {MAX_SHARDS}, got {total}")
    if args.pod is not None:
        if args.shard_index is not None:
            raise ShardError("--shard: set either --shard or --pod, not both")
        return shard_from_pod(args.pod, total)
    return Shard(args.shard_index or 0, total)


def _tokens(config: Config) -> list[str]:
    return [config.api.token.reveal(), *(a.api.token.reveal() for a in config.accounts)]


def new_poller(config: Config, shard: Shard) -> Poller | Accounts:
    if config.accounts:
        return Accounts(config, shard=shard)
    return Poller(config, shard=shard)


def _duration_flag(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 < seconds <= 3600:
        raise argparse.ArgumentTypeError(f"expected a duration between 1ms and 1h, got {text!r}")
    return seconds


def _positive_int(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65536:
        raise argparse.ArgumentTypeError(f"expected a number from 1 to 65536, got {text!r}")
    return int(text)


def parse_listen(address: str) -> tuple[str, int]:
    """':7637' -> ('', 7637); '127.0.0.1:0' -> ('127.0.0.1', 0); '[::1]:80' too."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--web.listen-address: expected host:port, got {address!r}")
    return host.strip("[]"), int(port)


def demo_config(shape: str = "status") -> tuple[Config, object]:
    """Start the embedded simulator and a config that discovers its deployments."""
    from .simulator import RealClock, SessionOptions, Simulator

    g2 = shape == "record"
    sim = Simulator(
        seed=42,
        clock=RealClock(),
        deployments=6,
        demo=True,
        shape="g2" if g2 else "g1",
        sessions=SessionOptions() if g2 else None,
    )
    url = sim.serve("127.0.0.1", 0)
    config = config_from_dict(
        {
            "api": {"url": url, "token": sim.token, "requests_per_second": 50},
            "discover": True,
            "poll_interval": "5s",
            "lookback": "1h",
            "duration_buckets": [1, 2, 5, 10, 20, 30, 60, 120, 300],
        },
        env={},
    )
    return config, sim


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logs.setup("warning" if args.log_level == "warn" else args.log_level, args.log_format)
    try:
        if args.demo:
            config, _sim = demo_config(args.demo_shape)
            log.info("demo mode: polling the embedded simulator at %s", config.api.url)
        else:
            config = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    for token in _tokens(config):
        logs.add_secret(token)
    if args.check:
        if args.web_config:
            try:
                load_web_config(args.web_config)
            except WebConfigError as exc:
                print(str(exc), file=sys.stderr)
                return 1
            print(f"{args.web_config}: web configuration is valid")
        print(f"{args.config}: configuration is valid")
        return 0

    shard = args.shard
    if shard.sharded:
        where = f" (pod {args.pod} in {args.pod_namespace})" if args.pod else ""
        log.info("shard %d of %d%s", shard.index, shard.total, where)
    poller = new_poller(config, shard)
    if args.once:
        ok = poller.poll_once()
        exposition = Exposition(poller.snapshot, time.time)
        sys.stdout.buffer.write(exposition.body(openmetrics=False, compress=False))
        poller.close()
        return 0 if ok else 1
    return serve(
        poller,
        args.listen,
        None if args.demo else args.config,
        web_config=args.web_config,
        enable_lifecycle=args.enable_lifecycle,
        read_header_timeout=args.read_header_timeout,
        max_connections=args.max_connections,
    )


def reload_config(poller: Poller | Accounts, path: str) -> tuple[bool, str]:
    """Validate the config file again; a bad one is rejected and the running one stays."""
    try:
        config = load_config(path)
        problem = _reload_problem(poller, config)
        if problem is not None:
            raise ConfigError([problem])
    except ConfigError as exc:
        poller.note_reload(False)
        poller.publish()
        log.error("config reload rejected, keeping the running config: %s", "; ".join(exc.errors))
        return False, str(exc)
    for token in _tokens(config):
        logs.add_secret(token)
    poller.note_reload(True)
    poller.reconfigure(config)  # applied by the poll thread, which it wakes
    log.info("config reloaded from %s", path)
    return True, "config reloaded\n"


def _reload_problem(poller: Poller | Accounts, config: Config) -> str | None:
    if isinstance(poller, Accounts) != bool(config.accounts):
        return "accounts: switching between accounts and a single api needs a restart"
    return poller.reload_problem(config) if isinstance(poller, Accounts) else None


def _ignore(signum: int, frame: object) -> None:
    """Installed for the signals serve() reads from its wakeup socket instead."""


def serve(
    poller: Poller | Accounts,
    listen: str,
    config_path: str | None = None,
    *,
    web_config: str | None = None,
    enable_lifecycle: bool = False,
    read_header_timeout: float = READ_HEADER_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
) -> int:
    """Run the poll loop and the HTTP server until SIGTERM or SIGINT; SIGHUP reloads.

    POST /-/reload exists only with enable_lifecycle (as Prometheus' --web.enable-lifecycle).
    """
    try:
        address = parse_listen(listen)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    exposition = Exposition(poller.snapshot, time.time)
    poller.on_snapshot = exposition.update
    stop = threading.Event()
    thread = threading.Thread(target=poller.run, args=(stop,), name="qoder-poller", daemon=True)

    def healthy() -> bool:
        return thread.is_alive()

    def reload() -> tuple[bool, str]:
        assert config_path is not None
        return reload_config(poller, config_path)

    try:
        server = ExporterServer(
            exposition,
            address,
            healthy=healthy,
            web_config_file=web_config,
            reload=reload if config_path and enable_lifecycle else None,
            read_header_timeout=read_header_timeout,
            max_connections=max_connections,
        )
    except WebConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"--web.listen-address {listen}: {exc.strerror}", file=sys.stderr)
        return 1
    # Signals are read, not handled: a handler that set an Event could deadlock, since the
    # main thread may hold that Event's lock (inside wait()) when the handler runs on it.
    # The C-level handler writes each signal's number to this socket; the main loop reads it.
    wake_r, wake_w = socket.socketpair()
    wake_w.setblocking(False)
    previous_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _ignore)  # not SIG_DFL: that would end the process at once
    thread.start()
    server.start()
    host = address[0] or "0.0.0.0"
    log.info("listening on %s://%s:%d/metrics", server.scheme, host, server.port)
    while not stop.is_set():
        for signum in wake_r.recv(64):
            if signum in (signal.SIGTERM, signal.SIGINT):
                stop.set()
            elif signum == signal.SIGHUP and not stop.is_set():
                if config_path is None:
                    log.warning("SIGHUP ignored: no config file to reload (demo mode)")
                else:
                    reload()
    signal.set_wakeup_fd(previous_fd)
    wake_r.close()
    wake_w.close()
    log.info("shutting down")
    server.close()
    poller.wake()
    thread.join(SHUTDOWN_GRACE_S)
    poller.save_state()
    poller.close()
    if thread.is_alive():
        # A request to the API is still in flight; the state is saved, do not wait for it.
        log.warning("poll still running after %.0fs: exiting anyway", SHUTDOWN_GRACE_S)
        logging.shutdown()
        os._exit(0)
    log.info("stopped")
    return 0
