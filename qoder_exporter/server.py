"""HTTP server: /metrics, the landing page and health endpoints. Never calls the API."""

from __future__ import annotations

import html
import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from . import __version__
from .collector import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, Exposition
from .snapshot import DeploymentView, Snapshot
from .webconfig import ActiveWebConfig, WebConfigWatcher

log = logging.getLogger(__name__)

MAX_CONCURRENT_REQUESTS = 16
SOCKET_TIMEOUT_S = 30.0
# The whole TLS handshake, not each read: a client that sends nothing, or a byte at a time,
# gives its connection slot back after this long.
HANDSHAKE_TIMEOUT_S = 5.0
# A POST body is never used; a bigger one closes the connection instead of being read.
_MAX_DISCARDED_BODY = 64 * 1024
UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Basic realm="qoder-exporter", charset="UTF-8"'}


def _accepts_openmetrics(accept: str) -> bool:
    return any(
        part.split(";")[0].strip() == "application/openmetrics-text" for part in accept.split(",")
    )


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(seconds: float) -> str:
    """A short human age: 45s, 12m, 3h 20m, 2d 4h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


# The landing page loads nothing from anywhere: inline style only, no scripts, and an empty
# data: icon so that browsers do not ask for /favicon.ico (a 404 in their console).
LANDING_PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_STATUS_CLASS = {"completed": "ok", "failed": "bad", "skipped": "warn", "cancelled": "warn"}


def _deployment_row(d: DeploymentView, now: float) -> str:
    name = d.info.name if d.info else d.id
    state = d.info.status if d.info else "unknown"
    if d.info and d.info.paused_reason:
        state = f"{state} ({d.info.paused_reason})"
    if d.sync_ok:
        result = '<span class="ok">ok</span>'
    elif d.last_sync is None:
        result = "pending"
    else:
        result = f'<span class="bad">failed</span>: {html.escape(d.last_error or "")}'
    if d.last_finished_status is None:
        last_run = "none yet"
    else:
        css = _STATUS_CLASS.get(d.last_finished_status, "")
        last_run = f'<span class="{css}">{html.escape(d.last_finished_status)}</span>'
    in_flight = sum(d.recent.get(s, 0) for s in ("pending", "running"))
    if d.last_success is None:
        success = "never"
    else:
        success = f"{_when(d.last_success)} ({_age(now - d.last_success)} ago)"
    return (
        f'<tr data-deployment-id="{html.escape(d.id)}">'
        f"<td>{html.escape(name)}</td><td><code>{html.escape(d.id)}</code></td>"
        f"<td>{html.escape(state)}</td><td>{result}</td><td>{_when(d.last_sync)}</td>"
        f"<td>{last_run}</td><td>{success}</td><td>{in_flight}</td>"
        "</tr>"
    )


def landing_page(snap: Snapshot, now: float) -> bytes:
    """The / page: links, build info and every watched deployment with its last poll.

    Self-contained HTML: every value is escaped, nothing is loaded from elsewhere.
    """
    deployments = sorted(snap.deployments, key=lambda d: ((d.info.name if d.info else ""), d.id))
    rows = "\n".join(_deployment_row(d, now) for d in deployments)
    if not rows:
        rows = '<tr><td colspan="8">No deployment yet: waiting for the first poll.</td></tr>'
    up = '<span class="ok">up</span>' if snap.up else '<span class="bad">down</span>'
    error = (
        f'<p class="bad">Last error: {html.escape(snap.last_error)}</p>' if snap.last_error else ""
    )
    if snap.last_success_poll is None:
        last_poll = "never"
    else:
        last_poll = f"{_when(snap.last_success_poll)} ({_age(now - snap.last_success_poll)} ago)"
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>Qoder Exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
.ok{{color:#080}}.bad{{color:#b00}}.warn{{color:#b60}}</style></head>
<body><h1>Qoder Exporter</h1>
<p>Prometheus exporter for Qoder Cloud Agents deployment runs.
Version {html.escape(__version__)}.</p>
<ul><li><a href="metrics">/metrics</a>: the metrics, for Prometheus</li>
<li><a href="-/healthy">/-/healthy</a>: the process and its poll thread are alive</li>
<li><a href="-/ready">/-/ready</a>: a recent poll reached the Qoder API</li></ul>
<p id="api">Qoder API: {up}; polls done: {snap.polls_done}; last successful poll:
{last_poll}; page rendered {_when(now)}.</p>{error}
<h2>Watched deployments ({len(snap.deployments)})</h2>
<table id="deployments"><thead><tr><th>Name</th><th>ID</th><th>Status</th><th>Last poll</th>
<th>Polled at</th><th>Last run</th><th>Last success</th><th>In flight</th></tr></thead>
<tbody>
{rows}
</tbody></table></body></html>
"""
    return body.encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        web: WebConfigWatcher | None,
        handshake_timeout: float,
    ) -> None:
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(MAX_CONCURRENT_REQUESTS)
        self.web = web
        self.handshake_timeout = handshake_timeout

    def process_request(self, request: Any, client_address: Any) -> None:
        # Shed load instead of spawning unbounded threads for a flood of connections.
        if not self.slots.acquire(timeout=1.0):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-request (reset, TLS EOF) is routine, not a traceback.
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.debug("connection from %s: %s", client_address[0], error)
        else:
            log.exception("error serving %s", client_address[0])

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens here, in the connection's own thread, never in the accept
        # loop: a client that connects and stays silent holds up nobody but itself.
        connection = request
        try:
            context = self.web.refresh().context if self.web is not None else None
            if context is not None:
                connection = self._handshake(request, context, client_address)
            if connection is not None:
                self.finish_request(connection, client_address)
        except Exception:
            self.handle_error(connection, client_address)
        finally:
            if connection is not None:
                self.shutdown_request(connection)
            self.slots.release()

    def _handshake(
        self, request: socket.socket, context: ssl.SSLContext, client_address: Any
    ) -> ssl.SSLSocket | None:
        # With a socket timeout, CPython bounds the whole do_handshake() by one deadline
        # (not each read), so a client dripping bytes cannot stretch it.
        request.settimeout(self.handshake_timeout)
        try:
            connection = context.wrap_socket(
                request, server_side=True, do_handshake_on_connect=False
            )
        except OSError:
            self.shutdown_request(request)
            return None
        try:
            connection.do_handshake()
        except (OSError, ValueError) as exc:
            log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
            self.shutdown_request(connection)
            return None
        return connection


class ExporterServer:
    """Serves the exposition and health; the poller feeds it snapshots.

    web_config_file: TLS and basic auth, exporter-toolkit style (WebConfigError if it is bad).
    reload: what POST /-/reload calls; it answers (ok, message).
    """

    def __init__(
        self,
        exposition: Exposition,
        address: tuple[str, int],
        *,
        healthy: Callable[[], bool],
        clock: Callable[[], float] = time.time,
        web_config_file: str | None = None,
        reload: Callable[[], tuple[bool, str]] | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
    ) -> None:
        self.exposition = exposition
        self.healthy = healthy
        self.clock = clock
        self.reload = reload
        # Loaded before binding: a bad file fails start-up without taking the port.
        self.web = WebConfigWatcher(web_config_file) if web_config_file else None
        self.httpd = _Server(address, self._handler_class(), self.web, handshake_timeout)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def scheme(self) -> str:
        return "https" if self.web is not None and self.web.tls else "http"

    def web_config(self) -> ActiveWebConfig | None:
        """The web config in force, re-read first if its files changed."""
        return self.web.refresh() if self.web is not None else None

    def ready(self) -> tuple[bool, str]:
        snap = self.exposition.snapshot
        if snap.last_success_poll is None:
            return False, "no successful poll yet"
        age = self.clock() - snap.last_success_poll
        if age > 3 * snap.poll_interval + 30:
            return False, f"last successful poll {age:.0f}s ago"
        return True, "ready"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="qoder-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = SOCKET_TIMEOUT_S
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes; with Nagle on, the body of a small
            # response waits for the client's delayed ACK (40 ms on Linux) on keep-alive.
            disable_nagle_algorithm = True
            server_version = f"qoder-exporter/{__version__}"
            web: ActiveWebConfig | None = None

            def _allowed(self, path: str) -> bool:
                """True if the request may go on; else a 401 has been sent."""
                self.web = server.web_config()
                if self.web is None or self.web.auth is None or path == "/-/healthy":
                    return True
                if self.web.auth.check(self.headers.get("Authorization")) is not None:
                    return True
                self._send(401, "text/plain", b"Unauthorized\n", headers=UNAUTHORIZED_HEADERS)
                return False

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if not self._allowed(path):
                    return
                if path == "/metrics":
                    self._metrics()
                elif path == "/":
                    snap = server.exposition.snapshot
                    self._send(
                        200,
                        "text/html; charset=utf-8",
                        landing_page(snap, server.clock()),
                        headers={
                            "Content-Security-Policy": LANDING_PAGE_CSP,
                            "X-Content-Type-Options": "nosniff",
                        },
                    )
                elif path == "/-/healthy":
                    ok = server.healthy()
                    self._send(200 if ok else 503, "text/plain", b"OK\n" if ok else b"unhealthy\n")
                elif path == "/-/ready":
                    ok, why = server.ready()
                    self._send(200 if ok else 503, "text/plain", f"{why}\n".encode())
                elif path == "/-/reload" and server.reload is not None:
                    self._send(405, "text/plain", b"use POST\n", headers={"Allow": "POST"})
                else:
                    self._send(404, "text/plain", b"not found\n")

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_POST(self) -> None:
                self._discard_body()
                path = urlsplit(self.path).path
                if not self._allowed(path):
                    return
                if path == "/-/reload" and server.reload is not None:
                    self._reload(server.reload)
                elif path in ("/", "/metrics", "/-/healthy", "/-/ready"):
                    self._send(405, "text/plain", b"use GET\n", headers={"Allow": "GET, HEAD"})
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _reload(self, hook: Callable[[], tuple[bool, str]]) -> None:
                try:
                    ok, message = hook()
                except Exception:
                    log.exception("reload failed")
                    ok, message = False, "reload failed: internal error (see the log)"
                self._send(200 if ok else 500, "text/plain", f"{message.rstrip()}\n".encode())

            def _discard_body(self) -> None:
                length = self.headers.get("Content-Length", "0").strip()
                plain = length.isascii() and length.isdigit() and len(length) < 10
                size = int(length) if plain else -1
                if "Transfer-Encoding" in self.headers or not 0 <= size <= _MAX_DISCARDED_BODY:
                    self.close_connection = True
                elif size:
                    self.rfile.read(size)

            def _metrics(self) -> None:
                openmetrics = _accepts_openmetrics(self.headers.get("Accept", ""))
                compress = "gzip" in self.headers.get("Accept-Encoding", "")
                body = server.exposition.body(openmetrics=openmetrics, compress=compress)
                ctype = OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
                self._send(200, ctype, body, gzip=compress)

            def _send(
                self,
                code: int,
                ctype: str,
                body: bytes,
                *,
                gzip: bool = False,
                headers: dict[str, str] | None = None,
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                # The web config's headers (http_server_config.headers) win over the defaults.
                extra = {**(headers or {}), **(self.web.headers if self.web else {})}
                for key, value in extra.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                if gzip:
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Vary", "Accept, Accept-Encoding")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s %s", self.address_string(), format % args)

        return Handler
