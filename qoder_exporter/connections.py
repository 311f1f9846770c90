"""HTTP connections under deadlines: what keeps slow or idle clients from starving a scraper.

A connection thread reads its request head under one deadline for the whole head (not per
read), and holds no worker slot while it waits: slots are taken only to build an answer. Open
connections are capped; when the cap is reached, the connection that has waited longest for
its next request head is cut to make room, so a flood of silent connections cannot lock out a
scraper, whose head arrives within a round trip of connecting.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Callable


class HeadTooLarge(Exception):
    """The client sent more header bytes than a request head may hold."""


class DeadlineReader(io.RawIOBase):
    """Socket reads under an absolute deadline: each recv gets only the time that is left.

    With a plain socket timeout each read restarts the clock, so a client sending one byte
    every few seconds is never timed out; here the whole head shares one deadline.
    """

    def __init__(self, sock: socket.socket, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.sock = sock
        self.clock = clock
        self._deadline: float | None = None
        self._budget: int | None = None

    def start(self, deadline: float, max_bytes: int | None = None) -> None:
        """Reads from now on must finish by deadline and, if given, total at most max_bytes."""
        self._deadline, self._budget = deadline, max_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if self._deadline is not None:
            left = self._deadline - self.clock()
            if left <= 0:
                raise TimeoutError("request deadline passed")
            self.sock.settimeout(left)
        if self._budget is not None and self._budget <= 0:
            raise HeadTooLarge
        n = self.sock.recv_into(buffer)
        if self._budget is not None:
            self._budget -= n
        return n

    def close(self) -> None:
        # The socket belongs to the server, which shuts it down and closes it.
        super().close()


class DeadlineWriter(io.BufferedIOBase):
    """Socket writes where each write (headers, body) must be taken within timeout seconds.

    sendall's timeout on a TLS socket is per record; this loops on send with what is left, so
    a client that reads a byte at a time cannot hold the connection longer.
    """

    def __init__(
        self, sock: socket.socket, timeout: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.sock = sock
        self.timeout = timeout
        self.clock = clock

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        deadline = self.clock() + self.timeout
        with memoryview(data) as view, view.cast("B") as left_view:
            sent = 0
            while sent < len(left_view):
                left = deadline - self.clock()
                if left <= 0:
                    raise TimeoutError("response write deadline passed")
                self.sock.settimeout(left)
                sent += self.sock.send(left_view[sent:])
            return sent

    def close(self) -> None:
        super().close()


class Connection:
    """One accepted connection, as the registry sees it."""

    __slots__ = ("cut", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.cut = False  # set by the registry when it evicted this connection


class ConnectionRegistry:
    """Counts open connections; those waiting for a request head may be cut to make room."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._open = 0
        self._waiting: dict[Connection, None] = {}  # insertion order: longest waiting first
        self.evicted = 0
        self.refused = 0

    @property
    def open(self) -> int:
        return self._open

    def admit(self, conn: Connection) -> bool:
        """Count conn in, cutting the longest-waiting connection if at the cap."""
        with self._lock:
            if self._open >= self.limit:
                if not self._waiting:
                    self.refused += 1
                    return False
                oldest = next(iter(self._waiting))
                del self._waiting[oldest]
                oldest.cut = True
                self._open -= 1
                self.evicted += 1
                _cut(oldest.sock)
            self._open += 1
            self._waiting[conn] = None
            return True

    def replace_socket(self, conn: Connection, sock: socket.socket) -> None:
        """After a TLS handshake the connection lives on in a new socket object."""
        with self._lock:
            conn.sock = sock

    def busy(self, conn: Connection) -> bool:
        """conn has a whole request and is being answered: no longer cut. False if cut."""
        with self._lock:
            if conn.cut:
                return False
            self._waiting.pop(conn, None)
            return True

    def waiting(self, conn: Connection) -> None:
        """conn waits for its next request (keep-alive): the newest to be cut."""
        with self._lock:
            if not conn.cut:
                self._waiting[conn] = None

    def leave(self, conn: Connection) -> None:
        """conn is about to be closed; called before the socket is closed, never after."""
        with self._lock:
            self._waiting.pop(conn, None)
            if not conn.cut:
                conn.cut = True
                self._open -= 1


def _cut(sock: socket.socket) -> None:
    # The base class's shutdown, also for a TLS socket: it wakes the connection's thread
    # from its blocked read at once, and that thread closes the socket. Called under the
    # registry's lock, so the socket cannot have been closed (and its fd reused) yet.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
