"""HTTP server: /metrics, the landing page and health endpoints. Never calls the API."""

from __future__ import annotations

import html
import io
import logging
import math
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from . import __version__, logs
from .collector import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, Exposition
from .connections import (
    Connection,
    ConnectionRegistry,
    DeadlineReader,
    DeadlineWriter,
    HeadTooLarge,
)
from .snapshot import DeploymentView, Snapshot
from .webconfig import ActiveWebConfig, WebConfigWatcher

log = logging.getLogger(__name__)

# Requests being answered at once (rendering a page, compressing): connections waiting for
# a request head or idle between requests hold no such slot.
MAX_CONCURRENT_REQUESTS = 16
# How long a complete request waits for one of those slots before a 503.
WORKER_WAIT_S = 5.0
# Open connections (default of --web.max-connections); at the cap the connection that has
# waited longest for a request head is cut to make room.
MAX_CONNECTIONS = 256
# The whole request head (default of --web.read-header-timeout), from accept or from the
# first byte of a keep-alive connection's next request: a client dripping bytes is cut then.
READ_HEADER_TIMEOUT_S = 5.0
# A keep-alive connection waiting for its next request.
IDLE_TIMEOUT_S = 30.0
# Each write of an answer (headers, body) to a client that reads slowly or not at all.
WRITE_TIMEOUT_S = 10.0
LISTEN_BACKLOG = 128
# The TLS handshake, as a whole: a client that sends nothing, or a byte at a time, gives its
# connection back after this long.
HANDSHAKE_TIMEOUT_S = 5.0
# A request head bigger than this closes the connection (headers are a few hundred bytes).
MAX_HEAD_BYTES = 64 * 1024
# A POST body is never used; a bigger one closes the connection instead of being read.
_MAX_DISCARDED_BODY = 64 * 1024
UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Basic realm="qoder-exporter", charset="UTF-8"'}
# Strings from the API as shown on the landing page: names and ids, then error messages.
MAX_SHOWN_CHARS = 256
MAX_SHOWN_ERROR_CHARS = 1024


def _qvalues(header: str) -> dict[str, float]:
    """'gzip;q=0, br' -> {'gzip': 0.0, 'br': 1.0}; a bad q counts as 0 (not wanted)."""
    out: dict[str, float] = {}
    for element in header.split(","):
        name, *params = (p.strip() for p in element.split(";"))
        if not name:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                q = min(max(q, 0.0), 1.0) if math.isfinite(q) else 0.0
        name = name.lower()
        out[name] = max(q, out.get(name, 0.0))
    return out


def _accepts_openmetrics(accept: str) -> bool:
    """OpenMetrics only when asked by name, with q > 0 and not below text/plain's q."""
    q = _qvalues(accept)
    om = q.get("application/openmetrics-text", 0.0)
    text = max(q.get("text/plain", 0.0), q.get("text/*", 0.0), q.get("*/*", 0.0))
    return om > 0 and om >= text


def _accepts_gzip(accept_encoding: str) -> bool:
    q = _qvalues(accept_encoding)
    gzip_q = q.get("gzip", q.get("x-gzip", q.get("*", 0.0)))
    return gzip_q > 0


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    try:
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, ValueError, OSError):
        # e.g. year 10000 from "9999-12-31T23:59:59-23:59", valid RFC 3339
        return f"out of range ({ts:.6g})"


def _age(seconds: float) -> str:
    """A short human age: 45s, 12m, 3h 20m, 2d 4h."""
    if not math.isfinite(seconds) or seconds >= 1e11:
        return "?"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _show(value: str | None, limit: int = MAX_SHOWN_CHARS) -> str:
    """A string from the API or an error as safe HTML text.

    Secrets redacted; controls, bidi overrides and other invisible characters (and lone
    surrogates, which cannot be encoded) shown as <U+XXXX>; cut to limit characters.
    """
    text = logs.redact(value or "")
    text = logs.cap(text, limit)
    text = "".join(
        (" " if c in "\t\n\r" else f"<U+{ord(c):04X}>") if logs.is_unsafe(c) else c for c in text
    )
    return html.escape(text)


# The landing page loads nothing from anywhere: inline style only, no scripts, and an empty
# data: icon so that browsers do not ask for /favicon.ico (a 404 in their console).
LANDING_PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_STATUS_CLASS = {"completed": "ok", "failed": "bad", "skipped": "warn", "cancelled": "warn"}


def _deployment_row(d: DeploymentView, last_sync: float | None, now: float) -> str:
    name = d.info.name if d.info else d.id
    state = d.info.status if d.info else "unknown"
    if d.info and d.info.paused_reason:
        state = f"{state} ({d.info.paused_reason})"
    if d.sync_ok:
        result = '<span class="ok">ok</span>'
    elif last_sync is None:
        result = "pending"
    else:
        result = f'<span class="bad">failed</span>: {_show(d.last_error, MAX_SHOWN_ERROR_CHARS)}'
    if d.last_finished_status is None:
        last_run = "none yet"
    else:
        css = _STATUS_CLASS.get(d.last_finished_status, "")
        last_run = f'<span class="{css}">{_show(d.last_finished_status)}</span>'
    in_flight = sum(d.recent.get(s, 0) for s in ("pending", "running"))
    if d.last_success is None:
        success = "never"
    else:
        success = f"{_when(d.last_success)} ({_age(now - d.last_success)} ago)"
    return (
        f'<tr data-deployment-id="{_show(d.id)}">'
        f"<td>{_show(name)}</td><td><code>{_show(d.id)}</code></td>"
        f"<td>{_show(state)}</td><td>{result}</td><td>{_when(last_sync)}</td>"
        f"<td>{last_run}</td><td>{success}</td><td>{in_flight}</td>"
        "</tr>"
    )


def landing_page(snap: Snapshot, now: float) -> bytes:
    """The / page: links, build info and every watched deployment with its last poll.

    Self-contained HTML: every value is escaped, redacted and cut (see _show); nothing is
    loaded from elsewhere. Never raises on odd values (a timestamp in year 10000, NaN).
    """
    # Each account's deployments with its sync times (the same id may be in two accounts).
    listed = [
        (d, part.last_sync.get(d.id)) for part in snap.accounts or (snap,) for d in part.deployments
    ]
    listed.sort(key=lambda ds: ((ds[0].info.name if ds[0].info else ""), ds[0].id))
    rows = "\n".join(_deployment_row(d, synced, now) for d, synced in listed)
    if not rows:
        rows = '<tr><td colspan="8">No deployment yet: waiting for the first poll.</td></tr>'
    up = '<span class="ok">up</span>' if snap.up else '<span class="bad">down</span>'
    error = (
        f'<p class="bad">Last error: {_show(snap.last_error, MAX_SHOWN_ERROR_CHARS)}</p>'
        if snap.last_error
        else ""
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
    return body.encode("utf-8", "replace")  # _show already removed lone surrogates


@dataclass(frozen=True, slots=True)
class _Response:
    code: int
    ctype: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    gzip: bool = False


def _text(code: int, message: str, headers: dict[str, str] | None = None) -> _Response:
    return _Response(code, "text/plain", f"{message}\n".encode(), headers or {})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self,
        address: tuple[str, int],
        handler: Callable[[socket.socket, Any, _Server, Connection], object],
        web: WebConfigWatcher | None,
        handshake_timeout: float,
        max_connections: int,
    ) -> None:
        super().__init__(address, BaseHTTPRequestHandler)
        self.handler = handler  # takes the Connection too, to tell the registry its state
        self.workers = threading.BoundedSemaphore(MAX_CONCURRENT_REQUESTS)
        self.connections = ConnectionRegistry(max_connections)
        self.web = web
        self.handshake_timeout = handshake_timeout

    def process_request(self, request: Any, client_address: Any) -> None:
        # The accept loop never waits: a connection over the cap evicts the one that has
        # waited longest for its request head, or is closed if every one is being answered.
        conn = Connection(request)
        if not self.connections.admit(conn):
            self.shutdown_request(request)
            return
        thread = threading.Thread(
            target=self._serve_connection, args=(conn, client_address), daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # no more threads: shed this connection
            self.connections.leave(conn)
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-request (reset, TLS EOF) is routine, not a traceback.
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.debug("connection from %s: %s", client_address[0], error)
        else:
            log.exception("error serving %s", client_address[0])

    def _serve_connection(self, conn: Connection, client_address: Any) -> None:
        # The TLS handshake happens here, in the connection's own thread, never in the accept
        # loop: a client that connects and stays silent holds up nobody but itself.
        connection: socket.socket | None = conn.sock
        try:
            context = self.web.refresh().context if self.web is not None else None
            if context is not None:
                connection = self._handshake(conn.sock, context, client_address)
                if connection is not None:
                    self.connections.replace_socket(conn, connection)
            if connection is not None:
                self.handler(connection, client_address, self, conn)
        except Exception:
            self.handle_error(connection, client_address)
        finally:
            self.connections.leave(conn)  # before the close: never cut a closed socket
            if connection is not None:
                self.shutdown_request(connection)

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
    reload: what POST /-/reload calls; it answers (ok, message). None: no lifecycle endpoint
    (404), which is what the CLI does unless --web.enable-lifecycle is given.
    read_header_timeout: seconds for a whole request head; max_connections: open connections.
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
        read_header_timeout: float = READ_HEADER_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.exposition = exposition
        self.healthy = healthy
        self.clock = clock
        self.reload = reload
        self.read_header_timeout = read_header_timeout
        # Loaded before binding: a bad file fails start-up without taking the port.
        self.web = WebConfigWatcher(web_config_file) if web_config_file else None
        self.httpd = _Server(
            address, self._handler_class(), self.web, handshake_timeout, max_connections
        )
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

    def answer(self, method: str, path: str, headers: Any) -> _Response:
        """The answer to one complete request (authentication included)."""
        web = self.web_config()
        response = self._route(web, method, path, headers)
        if web is not None and web.headers:
            # The web config's headers (http_server_config.headers) win over the defaults.
            return replace(response, headers={**response.headers, **web.headers})
        return response

    def _route(
        self, web: ActiveWebConfig | None, method: str, path: str, headers: Any
    ) -> _Response:
        auth = web.auth if web is not None and path != "/-/healthy" else None
        if auth is not None and auth.check(headers.get("Authorization")) is None:
            return _text(401, "Unauthorized", UNAUTHORIZED_HEADERS)
        if method in ("GET", "HEAD"):
            return self._get(path, headers)
        if method == "POST":
            if path == "/-/reload" and self.reload is not None:
                return self._reload(self.reload)
            if path in ("/", "/metrics", "/-/healthy", "/-/ready"):
                return _text(405, "use GET", {"Allow": "GET, HEAD"})
            return _text(404, "not found")
        return _text(501, f"method not implemented: {method[:32]}")

    def _get(self, path: str, headers: Any) -> _Response:
        if path == "/metrics":
            openmetrics = _accepts_openmetrics(headers.get("Accept", ""))
            compress = _accepts_gzip(headers.get("Accept-Encoding", ""))
            body = self.exposition.body(openmetrics=openmetrics, compress=compress)
            ctype = OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
            return _Response(200, ctype, body, gzip=compress)
        if path == "/":
            page = landing_page(self.exposition.snapshot, self.clock())
            return _Response(
                200,
                "text/html; charset=utf-8",
                page,
                {"Content-Security-Policy": LANDING_PAGE_CSP, "X-Content-Type-Options": "nosniff"},
            )
        if path == "/-/healthy":
            ok = self.healthy()
            return _text(200, "OK") if ok else _text(503, "unhealthy")
        if path == "/-/ready":
            ok, why = self.ready()
            return _text(200 if ok else 503, why)
        if path == "/-/reload" and self.reload is not None:
            return _text(405, "use POST", {"Allow": "POST"})
        return _text(404, "not found")

    def _reload(self, hook: Callable[[], tuple[bool, str]]) -> _Response:
        try:
            ok, message = hook()
        except Exception:
            log.exception("reload failed")
            ok, message = False, "reload failed: internal error (see the log)"
        return _text(200 if ok else 500, message.rstrip())

    def _handler_class(self) -> Callable[[socket.socket, Any, _Server, Connection], object]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            """Reads each request under its deadlines, answers under a worker slot."""

            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes; with Nagle on, the body of a small
            # response waits for the client's delayed ACK (40 ms on Linux) on keep-alive.
            disable_nagle_algorithm = True
            server_version = f"qoder-exporter/{__version__}"

            def __init__(
                self, request: Any, client_address: Any, httpd: _Server, conn: Connection
            ) -> None:
                self.conn = conn
                super().__init__(request, client_address, httpd)

            def setup(self) -> None:
                self.connection = self.request
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
                self.reader = DeadlineReader(self.connection)
                self.buffered = io.BufferedReader(self.reader)
                self.rfile = self.buffered
                self.wfile = DeadlineWriter(self.connection, WRITE_TIMEOUT_S)
                # The first request's head is due read_header_timeout after the accept.
                self.head_due: float | None = time.monotonic() + server.read_header_timeout

            def handle_one_request(self) -> None:
                registry = server.httpd.connections
                conn = self.conn
                try:
                    if not self._read_request():
                        self.close_connection = True
                        return
                    if not registry.busy(conn):
                        self.close_connection = True  # cut while its head completed
                        return
                    try:
                        self._respond(self._answer())
                    finally:
                        registry.waiting(conn)
                except TimeoutError as exc:
                    log.debug("%s: %s", self.client_address[0], exc)
                    self.close_connection = True

            def _read_request(self) -> bool:
                """Read a request head and discard its body; False to close the connection."""
                if self.head_due is None:
                    # Keep-alive: the next request may come after an idle wait; its head is
                    # due read_header_timeout after its first byte.
                    self.reader.start(time.monotonic() + IDLE_TIMEOUT_S)
                    try:
                        if not self.buffered.peek(1):
                            return False
                    except (TimeoutError, OSError):
                        return False
                    self.head_due = time.monotonic() + server.read_header_timeout
                self.reader.start(self.head_due, MAX_HEAD_BYTES)
                self.head_due = None
                try:
                    self.raw_requestline = self.rfile.readline(65537)
                    if not self.raw_requestline:
                        return False
                    if len(self.raw_requestline) > 65536:
                        self.requestline = self.request_version = self.command = ""
                        self.send_error(414)
                        return False
                    if not self.parse_request():
                        return False  # parse_request sent the error
                    return self._discard_body()
                except (TimeoutError, HeadTooLarge, OSError) as exc:
                    log.debug("%s: request not read: %r", self.client_address[0], exc)
                    return False

            def _discard_body(self) -> bool:
                """Read exactly the body a request announces, so that none of it is ever
                taken for the next request (request smuggling); False to close."""
                chunked = self.headers.get_all("Transfer-Encoding")
                lengths = self.headers.get_all("Content-Length") or []
                length = lengths[0].strip() if len(lengths) == 1 else ""
                plain = length.isascii() and length.isdigit() and len(length) < 10
                size = int(length) if plain else 0
                bodiless = self.command in ("GET", "HEAD")
                if len(lengths) > 1 or (lengths and not plain) or (chunked and lengths):
                    self.send_error(400, "Bad Content-Length")
                    return False
                if bodiless and (chunked or size):
                    self.send_error(400, "A GET or HEAD request takes no body")
                    return False
                if chunked or size > _MAX_DISCARDED_BODY:
                    # Not read: answered, then closed.
                    self.close_connection = True
                    return True
                self.reader.start(time.monotonic() + server.read_header_timeout)
                return len(self.rfile.read(size)) == size if size else True

            def _answer(self) -> _Response:
                path = urlsplit(self.path).path
                workers = server.httpd.workers
                if not workers.acquire(timeout=WORKER_WAIT_S):
                    self.close_connection = True
                    return _text(503, "busy: too many requests at once")
                try:
                    return server.answer(self.command, path, self.headers)
                except Exception:
                    log.exception("error answering %s %s", self.command, path[:256])
                    self.close_connection = True
                    return _text(500, "internal error (see the log)")
                finally:
                    workers.release()

            def _respond(self, response: _Response) -> None:
                # Written outside the worker slot: a client that reads slowly holds only
                # its own connection, for at most WRITE_TIMEOUT_S per write.
                self.send_response(response.code)
                self.send_header("Content-Type", response.ctype)
                for key, value in response.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(response.body)))
                if response.gzip:
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Vary", "Accept, Accept-Encoding")
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(response.body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s %s", self.address_string(), format % args)

        return Handler
