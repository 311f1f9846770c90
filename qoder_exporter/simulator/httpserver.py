"""The socket side: a threading HTTP server that hands each request to handle_request."""

from __future__ import annotations

import contextlib
import email.utils
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import Simulator


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # keep-alive handler threads must not block close()
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sim: Simulator) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.sim = sim
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(address, Handler)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "qoder-simulator"
    timeout = 60  # idle keep-alive connections are dropped eventually
    # headers and body go out in two writes; with Nagle on, every keep-alive reply waits ~40 ms
    # for the client's delayed ACK (Go's net/http, like most servers, sets TCP_NODELAY too)
    disable_nagle_algorithm = True
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests and demos do not want an access log on stderr."""

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The Date header, on the simulated clock: a server's Date is its own time."""
        when = self.server.sim.clock.now() if timestamp is None else timestamp
        return email.utils.formatdate(when, usegmt=True)

    def setup(self) -> None:
        """Track the connection so close() can drop kept-alive clients."""
        super().setup()
        with self.server.conn_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        """Untrack the connection."""
        try:
            super().finish()
        finally:
            with self.server.conn_lock:
                self.server.connections.discard(self.connection)

    def do_GET(self) -> None:
        """Serve a GET."""
        self._serve("GET")

    def do_POST(self) -> None:
        """Serve a POST."""
        self._serve("POST")

    def do_PUT(self) -> None:
        """Serve a PUT (always unknown)."""
        self._serve("PUT")

    def do_PATCH(self) -> None:
        """Serve a PATCH (always unknown)."""
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        """Serve a DELETE (always unknown)."""
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        """Read the body, let the simulator decide the reply, then send or reset it."""
        length = int(self.headers.get("Content-Length") or 0)
        if length > 0:
            self.rfile.read(length)
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = self.server.sim.handle_request(method, self.path, headers)
        if reply.reset:
            self._reset()
            return
        if reply.delay_s > 0:
            time.sleep(reply.delay_s)
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)

    def _reset(self) -> None:
        """Abort the connection with a TCP RST and no response at all."""
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        # the buffered reader holds a reference to the socket; both must go for close() to
        # release the descriptor (and, with SO_LINGER 0, send the RST) right now
        self.rfile.close()
        self.connection.close()
