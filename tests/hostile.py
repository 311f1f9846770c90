"""A hostile (or badly broken) Qoder API: a stdlib HTTP server on loopback, one mode per finding.

In mode "normal" it serves a tiny, valid world: one deployment (dep_a) with two runs. Each
other mode breaks one thing the way issue 15's review did, so a test can point a QoderClient
or a Poller at it and check that the harm stays bounded. Every wait inside the server is
short and ends when the server closes: a test cannot hang on it.
"""

from __future__ import annotations

import email.utils
import gzip
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

DEPLOYMENT = "dep_a"
NOW = 1781395200.0  # 2026-06-14T00:00:00Z: the world's clock, and its Date header

MODES = (
    "normal",
    "slow_body",  # headers at once, then the body one byte at a time
    "gzip_bomb",  # a small gzip body that decompresses to 64 MiB
    "huge_body",  # 32 MiB of JSON, no Content-Length
    "cyclic_cursors",  # last_id A, B, A, B, ... with has_more forever
    "fresh_cursors",  # a new last_id on every page, has_more forever
    "surrogates",  # lone surrogates in a deployment name and (2nd read on) a run's error.type
    "future",  # a run completed in 2099
    "traversal",  # deployment ids that would climb out of their path segment
    "error_types",  # every run failed with a new, 10 kB long error.type
    "frozen_date",  # the Date header never moves (set `date` to choose it)
    "nested",  # a 2xx body nested 100,000 deep
    "no_data",  # a list answer without its data list
    "retry_after",  # 429 with Retry-After set to `retry_after` (nan by default)
    "redirect",  # 302 to another origin (set `redirect_to`)
    "running_stream",  # every listing brings STREAM new runs that stay running for ever
)
STREAM = 800


def _ts(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _run(run_id: str, created: float, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": run_id,
        "type": "deployment_run",
        "deployment_id": DEPLOYMENT,
        "status": "completed",
        "error": None,
        "trigger_context": {"type": "schedule"},
        "created_at": _ts(created),
        "completed_at": _ts(created + 10),
        "duration_ms": 10_000,
    }
    doc.update(extra)
    return doc


def _deployment(dep_id: str, name: str = "daily") -> dict[str, Any]:
    return {
        "id": dep_id,
        "type": "deployment",
        "name": name,
        "status": "active",
        "agent": {"id": "agent_1"},
        "paused_reason": None,
        "schedule": {"expression": "0 * * * *", "timezone": "UTC"},
        "created_at": _ts(NOW - 30 * 86400),
    }


class HostileAPI:
    """The server; `mode` may be changed between requests. `paths` logs every request."""

    def __init__(self, mode: str = "normal") -> None:
        assert mode in MODES, mode
        self.mode = mode
        self.date: float = NOW  # frozen_date: the Date header sent
        self.retry_after = "nan"
        self.redirect_to = ""
        self.paths: list[str] = []
        self.closed = threading.Event()
        self._counter = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/api/v1"

    def close(self) -> None:
        self.closed.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HostileAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_number(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    # --- the world, bent by the mode ----------------------------------------------------

    def answer(self, path: str, query: dict[str, str]) -> tuple[int, Any]:
        """(status, JSON document) for a GET; raw modes are handled by the handler."""
        mode = self.mode
        if mode == "no_data" and (path == "/deployments" or path.endswith("runs")):
            return 200, {"object": "list", "has_more": False}
        if mode in ("cyclic_cursors", "fresh_cursors") and path.endswith("runs"):
            after = query.get("after_id")
            if mode == "cyclic_cursors":
                last = "run_B" if after == "run_A" else "run_A"
            else:
                last = f"run_{self.next_number()}"
            return 200, {"data": [], "has_more": True, "last_id": last}
        if path == "/deployments":
            ids = [DEPLOYMENT]
            if mode == "traversal":
                ids += ["dep_x/../../../../admin/keys", "dep_y?after_id=x#frag"]
            name = "bad\ud800name" if mode == "surrogates" else "daily"
            deps = [_deployment(i, name) for i in ids]
            return 200, {"data": deps, "has_more": False, "last_id": None}
        if path.startswith("/deployments/") and path.count("/") == 2:
            return 200, _deployment(path.rsplit("/", 1)[1])
        if path.endswith("/runs") or path == "/deployment_runs":
            return 200, {"data": self._runs(), "has_more": False, "last_id": None}
        if path.startswith("/deployment_runs/"):
            run_id = path.rsplit("/", 1)[1]
            if mode == "running_stream":
                return 200, _run(run_id, NOW - 30, status="running")
            return 200, _run(run_id, NOW - 3600)
        return 404, {"type": "error", "error": {"type": "not_found_error", "message": "no"}}

    def _runs(self) -> list[dict[str, Any]]:
        runs = [_run("run_2", NOW - 600), _run("run_1", NOW - 3600)]
        # A poller takes the runs of its first read as history: the poisoned run comes later.
        if self.mode == "surrogates" and self.next_number() > 1:
            runs.insert(
                0,
                _run(
                    "run_3",
                    NOW - 300,
                    status="failed",
                    error={"type": "boom\udfff", "message": "x"},
                    duration_ms=1000,
                ),
            )
        elif self.mode == "running_stream":
            n = self.next_number()
            runs[:0] = [_run(f"run_s{n}x{i}", NOW - 30, status="running") for i in range(STREAM)]
        elif self.mode == "future":
            runs.insert(0, _run("run_9", NOW - 60, completed_at="2099-01-01T00:00:00Z"))
        elif self.mode == "error_types":
            n = self.next_number()
            runs.insert(
                0,
                _run(
                    f"run_e{n}",
                    NOW - 60,
                    status="failed",
                    error={"type": f"e{n}_" + "x" * 10_000, "message": "x"},
                ),
            )
        return runs


def _handler(api: HostileAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: a body without Content-Length ends when the connection does.
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

        def date_time_string(self, timestamp: float | None = None) -> str:
            when = api.date if api.mode == "frozen_date" else NOW + (time.monotonic() - _T0)
            return email.utils.formatdate(when, usegmt=True)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            api.paths.append(self.path)
            path = url.path.removeprefix("/api/v1")
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            raw = _RAW.get(api.mode)
            if raw is not None:
                raw(self, api)
                return
            status, doc = api.answer(path, query)
            self._send_json(status, doc)

        def _send_json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
            # ensure_ascii keeps lone surrogates as \\udXXX escapes, as a JSON API would.
            self._send(status, json.dumps(doc).encode(), headers)

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


_T0 = time.monotonic()


def _slow_body(h: Any, api: HostileAPI) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.end_headers()
    h.wfile.flush()
    # One byte every 50 ms, for up to a minute: far longer than any deadline under test.
    for byte in (b'{"data": [' + b" " * 1200)[:1200]:
        if api.closed.wait(0.05):
            return
        try:
            h.wfile.write(bytes([byte]))
            h.wfile.flush()
        except OSError:
            return


_BOMB: list[bytes] = []


def _gzip_bomb(h: Any, api: HostileAPI) -> None:
    if not _BOMB:
        _BOMB.append(gzip.compress(b" " * (64 * 1024 * 1024), 9))
    h._send(200, _BOMB[0], {"Content-Encoding": "gzip"})


def _huge_body(h: Any, api: HostileAPI) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.end_headers()
    chunk = b" " * (1024 * 1024)
    try:
        h.wfile.write(b'{"data": [')
        for _ in range(32):
            if api.closed.is_set():
                return
            h.wfile.write(chunk)
        h.wfile.write(b"]}")
    except OSError:
        return


def _nested(h: Any, api: HostileAPI) -> None:
    depth = 100_000
    h._send(200, b'{"data": ' + b"[" * depth + b"]" * depth + b"}")


def _retry_after(h: Any, api: HostileAPI) -> None:
    doc = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    h._send_json(429, doc, {"Retry-After": api.retry_after})


def _redirect(h: Any, api: HostileAPI) -> None:
    h.send_response(302)
    h.send_header("Location", api.redirect_to + h.path)
    h.send_header("Content-Length", "0")
    h.end_headers()


_RAW: dict[str, Callable[[Any, HostileAPI], None]] = {
    "slow_body": _slow_body,
    "gzip_bomb": _gzip_bomb,
    "huge_body": _huge_body,
    "nested": _nested,
    "retry_after": _retry_after,
    "redirect": _redirect,
}
