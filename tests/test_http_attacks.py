"""The HTTP server under attack: slowloris, connection floods, request smuggling, content
negotiation with q=0, and the lifecycle endpoint. Loopback only, every attack bounded in time
and in connections."""

from __future__ import annotations

import contextlib
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from qoder_exporter.collector import Exposition
from qoder_exporter.server import ExporterServer, _accepts_gzip, _accepts_openmetrics
from qoder_exporter.simulator import Simulator
from qoder_exporter.snapshot import Snapshot

from .conftest import TOKEN

ROOT = Path(__file__).resolve().parent.parent
HEAD_TIMEOUT_S = 1.0  # the server's request head deadline in these tests
SCRAPE_TIMEOUT_S = 3.0  # what a scraper waits for each answer


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def make_server() -> Iterator[Callable[..., ExporterServer]]:
    made: list[ExporterServer] = []

    def factory(**kwargs: object) -> ExporterServer:
        snap = Snapshot(taken_at=time.time(), buckets=(1.0,), up=True)
        server = ExporterServer(
            Exposition(snap, time.time),
            ("127.0.0.1", 0),
            healthy=lambda: True,
            read_header_timeout=HEAD_TIMEOUT_S,
            **kwargs,  # type: ignore[arg-type]
        )
        server.start()
        made.append(server)
        return server

    yield factory
    for server in made:
        server.close()


def scrape(port: int) -> None:
    """One scrape on a fresh connection; fails unless answered in time with qoder_up."""
    r = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=SCRAPE_TIMEOUT_S)
    assert r.status_code == 200
    assert any(f.name == "qoder_up" for f in text_string_to_metric_families(r.text))


def closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class Slowloris:
    """clients connections, each sending a partial request head, then a byte every drip_s;
    a connection the server closes is opened again at once. Counts the server's cuts."""

    def __init__(self, port: int, clients: int, drip_s: float) -> None:
        self.port, self.clients, self.drip_s = port, clients, drip_s
        self.cut = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> socket.socket | None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        except OSError:
            return None
        return sock

    def _run(self) -> None:
        socks = [self._open() for _ in range(self.clients)]
        while not self._stop.wait(self.drip_s):
            for i, sock in enumerate(socks):
                if sock is not None and closed_by_peer(sock):
                    self.cut += 1
                    sock.close()
                    sock = None
                if sock is None:
                    socks[i] = self._open()
                    continue
                with contextlib.suppress(OSError):
                    sock.send(b"a")
        for sock in socks:
            if sock is not None:
                sock.close()

    def __enter__(self) -> Slowloris:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.mark.system
def test_50_slowloris_clients_do_not_starve_a_scraper(
    make_server: Callable[..., ExporterServer],
) -> None:
    server = make_server()
    with Slowloris(server.port, clients=50, drip_s=0.25) as attack, requests.Session() as kept:
        end = time.monotonic() + 4 * HEAD_TIMEOUT_S
        scrapes = 0
        while time.monotonic() < end:
            scrape(server.port)
            # A keep-alive scraper too: between its requests it holds no worker.
            assert kept.get(f"http://127.0.0.1:{server.port}/-/healthy", timeout=3).ok
            scrapes += 1
        # Bytes every 0.25 s never trip a per-read timeout: only a head deadline cuts them.
        wait_until(lambda: attack.cut >= 50, "the head deadline to cut every slow client")
    assert scrapes >= 2


def test_a_flood_of_silent_connections_does_not_lock_out_a_scraper(
    make_server: Callable[..., ExporterServer],
) -> None:
    server = make_server(max_connections=32)
    flood: list[socket.socket] = []
    try:
        for _ in range(150):
            flood.append(socket.create_connection(("127.0.0.1", server.port), timeout=2))
        for _ in range(5):
            scrape(server.port)
        # The longest-waiting connections were cut to make room; at most the cap stay open.
        wait_until(
            lambda: sum(not closed_by_peer(s) for s in flood) <= 32,
            "the server to cut flood connections beyond its cap",
        )
    finally:
        for sock in flood:
            sock.close()


def exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send data on one connection; return what came back and whether the server closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return b"".join(chunks), False
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
        return b"".join(chunks), False


INNER = b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize(
    "outer",
    [
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(INNER),
        b"HEAD / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(INNER),
        b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n",
        # A body on another method is read exactly and dropped, never run.
        b"DELETE / HTTP/1.1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(INNER),
    ],
    ids=["get-content-length", "head", "get-chunked", "two-lengths", "unknown-method"],
)
def test_a_body_on_get_is_never_run_as_a_second_request(
    make_server: Callable[..., ExporterServer], outer: bytes
) -> None:
    reloads: list[int] = []

    def reload() -> tuple[bool, str]:
        reloads.append(1)
        return True, "reloaded"

    server = make_server(reload=reload)
    answer, closed = exchange(server.port, outer + INNER)
    assert closed, "the connection ends after the one answer"
    assert answer.count(b"HTTP/1.") == 1, answer
    assert reloads == [], "the body was run as a request"


def test_a_post_body_is_read_exactly_and_the_next_request_answered(
    make_server: Callable[..., ExporterServer],
) -> None:
    server = make_server(reload=lambda: (True, "reloaded"))
    body = b"ignored"
    first = b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    last = b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer, closed = exchange(server.port, first + body + last)
    assert closed and answer.count(b"HTTP/1.1 200") == 2, answer


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        ("application/openmetrics-text;version=1.0.0;q=0, text/plain", False),
        ("application/openmetrics-text;q=0", False),
        ("application/openmetrics-text;q=nan", False),
        ("application/openmetrics-text;q=0.3,text/plain;q=0.5", False),
        ("text/plain;version=0.0.4", False),
        ("*/*", False),
        # What Prometheus sends
        (
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
            "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            True,
        ),
        ("application/openmetrics-text; version=1.0.0", True),
    ],
)
def test_openmetrics_only_when_wanted(accept: str, openmetrics: bool) -> None:
    assert _accepts_openmetrics(accept) is openmetrics


@pytest.mark.parametrize(
    ("accept_encoding", "gzip"),
    [
        ("gzip;q=0", False),
        ("gzip; q=0.000, identity", False),
        ("*;q=0", False),
        ("notgzip", False),
        ("", False),
        ("gzip", True),
        ("br, GZIP;q=0.5", True),
        ("*", True),
    ],
)
def test_gzip_only_when_wanted(accept_encoding: str, gzip: bool) -> None:
    assert _accepts_gzip(accept_encoding) is gzip


def test_q_zero_gets_neither_gzip_nor_openmetrics_over_http(
    make_server: Callable[..., ExporterServer],
) -> None:
    server = make_server()
    r = requests.get(
        f"http://127.0.0.1:{server.port}/metrics",
        headers={
            "Accept": "application/openmetrics-text;version=1.0.0;q=0,text/plain;q=0.5",
            "Accept-Encoding": "gzip;q=0",
        },
        timeout=5,
        stream=True,
    )
    assert r.headers["Content-Type"].startswith("text/plain")
    assert "Content-Encoding" not in r.headers
    assert b"qoder_up" in r.raw.read()


class Exporter:
    """exporter.py in a process over the simulator, its stderr drained by a thread."""

    def __init__(self, config: Path, *flags: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "exporter.py"),
                *("--config", str(config), "--web.listen-address", "127.0.0.1:0", *flags),
            ],
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()
        self.port = 0
        deadline = time.monotonic() + 20
        while not self.port:
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            if "listening on http://" in line:
                self.port = int(line.split("127.0.0.1:")[1].split("/")[0])
        self.url = f"http://127.0.0.1:{self.port}"

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def reload_successful(self) -> float | None:
        body = requests.get(f"{self.url}/metrics", timeout=5).text
        for family in text_string_to_metric_families(body):
            if family.name == "qoder_exporter_config_last_reload_successful":
                return family.samples[0].value
        return None

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)


@pytest.mark.system
def test_post_reload_needs_web_enable_lifecycle_and_sighup_works_without(
    sim: Simulator, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    ids = "".join(f"  - {d}\n" for d in sim.deployment_ids())
    config.write_text(f"api:\n  url: {sim.base_url}\n  token: {TOKEN}\ndeployments:\n{ids}")
    exporter = Exporter(config)
    try:
        r = requests.post(f"{exporter.url}/-/reload", timeout=5)
        assert r.status_code == 404
        assert exporter.reload_successful() is None, "no reload happened"
        exporter.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: exporter.reload_successful() == 1.0, "SIGHUP to reload")
    finally:
        exporter.stop()
    exporter = Exporter(config, "--web.enable-lifecycle")
    try:
        r = requests.post(f"{exporter.url}/-/reload", timeout=5)
        assert r.status_code == 200, r.text
    finally:
        exporter.stop()
