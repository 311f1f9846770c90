"""The landing page in a real headless browser (Debian's chromium), driven over DevTools.

Chromium is started with --remote-debugging-pipe: the Chrome DevTools Protocol spoken as
NUL-terminated JSON over two pipes (fd 3 in, fd 4 out), so that no WebSocket client is
needed. The test loads the page of a live exporter over the simulator and reads back what the
browser rendered, every console message, every exception and every request the page made.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import requests

from qoder_exporter import logs
from qoder_exporter.models import Deployment
from qoder_exporter.server import _when, landing_page
from qoder_exporter.simulator import Simulator
from qoder_exporter.snapshot import DeploymentView, Snapshot

from .harness import LiveExporter, fresh_snapshot, require_tool

pytestmark = pytest.mark.system

TIMEOUT_S = 30.0


class DevTools:
    """A minimal CDP client over --remote-debugging-pipe; events are kept in arrival order."""

    def __init__(self, binary: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="qoder-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}",
            "about:blank",
        ]
        # The protocol wants the pipes on fds 3 and 4 exactly. A small exec wrapper puts them
        # there (preexec_fn with dup2 is unsafe while the exporter's threads run); the fds are
        # first moved above 9 so that placing one cannot clobber the other.
        inbound = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
        outbound = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)
        wrapper = (
            "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
            "os.closerange(5, 1024); os.execv(sys.argv[3], sys.argv[3:])"
        )
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", wrapper, str(inbound), str(outbound), binary, *flags],
            pass_fds=(inbound, outbound),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
        )
        os.close(inbound)
        os.close(outbound)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send a command and wait for its answer; events met meanwhile are recorded."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                assert "error" not in reply, (method, reply["error"])
                result: dict[str, Any] = reply.get("result", {})
                return result
        raise TimeoutError(f"no answer to {method}")

    def wait_event(self, method: str, session: str) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT_S
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            seen = len(self.events)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} event")
            self._read(deadline)

    def drain(self, seconds: float) -> None:
        """Record the events that arrive within the next few seconds."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self._read(deadline)
            except TimeoutError:
                return

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("chromium said nothing")
            ready, _, _ = select.select([self._from_browser], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe:\n{self.logs()}")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        message: dict[str, Any] = json.loads(raw)
        if "method" in message:
            self.events.append(message)
        return message

    def logs(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-4000:]

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError, AssertionError):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self.stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def exporter() -> Iterator[LiveExporter]:
    live = LiveExporter()
    try:
        for _ in range(3):  # runs finish, fail and get skipped: every column has something
            live.step()
        yield live
    finally:
        live.close()


@pytest.fixture(scope="module")
def loaded(exporter: LiveExporter) -> Iterator[tuple[DevTools, str, dict[str, Any]]]:
    """The landing page loaded in chromium: (devtools, session, what the page shows)."""
    browser = DevTools(require_tool("chromium"))
    try:
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session)
        browser.send("Page.navigate", session, url=exporter.url + "/")
        browser.wait_event("Page.loadEventFired", session)
        # Late console messages (a favicon 404, a CSP report) arrive after the load event.
        browser.drain(1.0)
        shown = browser.send(
            "Runtime.evaluate",
            session,
            returnByValue=True,
            expression="""({
                title: document.title,
                text: document.body.innerText,
                links: Array.from(document.querySelectorAll('a'), a => a.href),
                rows: Array.from(
                    document.querySelectorAll('#deployments tbody tr'),
                    tr => Array.from(tr.cells, td => td.innerText.trim())),
                headers: Array.from(
                    document.querySelectorAll('#deployments thead th'), th => th.innerText.trim()),
            })""",
        )["result"]["value"]
        yield browser, session, shown
    finally:
        browser.close()


def test_page_loads_and_lists_the_simulators_deployments(
    exporter: LiveExporter, loaded: tuple[DevTools, str, dict[str, Any]]
) -> None:
    _, _, shown = loaded
    assert shown["title"] == "Qoder Exporter"
    ids = exporter.sim.deployment_ids()
    names = {exporter.sim.spec(d).name for d in ids}
    assert f"Watched deployments ({len(ids)})" in shown["text"]
    assert shown["headers"] == [
        "Name",
        "ID",
        "Status",
        "Last poll",
        "Polled at",
        "Last run",
        "Last success",
        "In flight",
    ]
    rows = {row[1]: row for row in shown["rows"]}
    assert set(rows) == set(ids), "one row per watched deployment, by id"
    assert {row[0] for row in rows.values()} == names
    for dep_id, row in rows.items():
        assert row[3] == "ok", f"{dep_id}: last poll result"
        assert row[4].endswith("UTC"), f"{dep_id}: poll time"
        assert row[5] in ("completed", "failed", "skipped", "cancelled", "none yet"), row
        assert row[6] == "never" or row[6].endswith(" ago)"), f"{dep_id}: last success {row[6]}"
    # The simulator has a deployment that stopped succeeding days ago and one paused by hand.
    assert any(row[6].endswith(" ago)") for row in rows.values())
    assert any("paused" in row[2] for row in rows.values())
    assert "Qoder API: up" in shown["text"]


def test_links_to_metrics_and_health_endpoints_work(
    exporter: LiveExporter, loaded: tuple[DevTools, str, dict[str, Any]]
) -> None:
    _, _, shown = loaded
    expected = {f"{exporter.url}/{path}" for path in ("metrics", "-/healthy", "-/ready")}
    assert expected <= set(shown["links"])
    assert "qoder_up 1.0" in requests.get(f"{exporter.url}/metrics", timeout=5).text
    assert requests.get(f"{exporter.url}/-/healthy", timeout=5).status_code == 200
    # The harness polls on a simulated clock a day behind the wall clock, so readiness (last
    # successful poll against wall time) says not ready here: the link answers all the same.
    ready = requests.get(f"{exporter.url}/-/ready", timeout=5)
    assert ready.status_code in (200, 503) and ready.text.strip(), ready.text


def test_no_console_errors_exceptions_or_outside_requests(
    exporter: LiveExporter, loaded: tuple[DevTools, str, dict[str, Any]]
) -> None:
    browser, session, _ = loaded
    mine = [e for e in browser.events if e.get("sessionId") == session]
    problems = [
        e["params"]
        for e in mine
        if e["method"] == "Runtime.exceptionThrown"
        or (
            e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert")
        )
        or (
            e["method"] == "Log.entryAdded"
            and e["params"]["entry"]["level"] in ("error", "warning")
        )
    ]
    assert not problems, problems
    requested = [
        e["params"]["request"]["url"] for e in mine if e["method"] == "Network.requestWillBeSent"
    ]
    assert exporter.url + "/" in requested
    outside = [u for u in requested if not (u.startswith(exporter.url + "/") or u == "data:,")]
    assert not outside, f"the page loads resources from elsewhere: {outside}"
    failed = [e["params"] for e in mine if e["method"] == "Network.loadingFailed"]
    assert not failed, failed


def test_page_headers_forbid_outside_resources(exporter: LiveExporter) -> None:
    page = requests.get(exporter.url + "/", timeout=5)
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script" not in page.text.lower()
    assert "http://" not in page.text and "https://" not in page.text, "no external resources"


def test_page_escapes_what_the_api_says() -> None:
    hostile = Deployment(
        id="dep_<b>1</b>",
        name="<script>alert(1)</script>",
        status='active" onmouseover="x',
        agent_id="a",
        schedule="manual",
        paused_reason="<i>error</i>",
    )
    view = DeploymentView(
        id=hostile.id,
        info=hostile,
        recent={},
        totals={},
        durations={},
        errors={},
        last_success=None,
        last_finished_status="<u>failed</u>",
        oldest_in_flight={},
        sync_ok=False,
        last_error="<img src=x onerror=alert(1)>",
    )
    snap = Snapshot(
        taken_at=1.0,
        buckets=(1.0,),
        deployments=(view,),
        last_error="<iframe src=//evil>",
        last_sync={view.id: 1.0},
    )
    page = landing_page(snap, 2.0).decode()
    for raw in ("<script>", "<img", "<iframe", "<b>", "<i>", "<u>", '" onmouseover="'):
        assert raw not in page, raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


# hostile_view's last sync: it failed then, so the page shows its error.
SYNCED = {"dep_1": 1.0}


def hostile_view(**changes: Any) -> DeploymentView:
    fields: dict[str, Any] = {
        "id": "dep_1",
        "info": None,
        "recent": {},
        "totals": {},
        "durations": {},
        "errors": {},
        "last_success": None,
        "last_finished_status": "completed",
        "oldest_in_flight": {},
        "sync_ok": False,
        "last_error": None,
    }
    fields.update(changes)
    return DeploymentView(**fields)


@pytest.mark.parametrize(
    "when",
    [253402387140.0, 1e300, float("inf"), float("nan"), -1e20],
    ids=["year-10000", "1e300", "inf", "nan", "far-past"],
)
def test_page_renders_out_of_range_timestamps(when: float) -> None:
    # completed_at "9999-12-31T23:59:59-23:59" is valid RFC 3339 and lies in year 10000.
    view = hostile_view(last_success=when)
    snap = Snapshot(
        taken_at=1.0,
        buckets=(1.0,),
        deployments=(view,),
        last_success_poll=when,
        last_sync={view.id: when},
    )
    page = landing_page(snap, 2.0).decode()
    assert "dep_1" in page and "out of range" in page


def test_page_neutralises_bidi_controls_and_lone_surrogates() -> None:
    hostile = Deployment(
        id="dep_1",
        name="invoice\u202egpj.exe",
        status="active",
        agent_id="a",
        schedule="manual",
        paused_reason="\x1b[31mred\u2028line\ud800",
    )
    view = hostile_view(info=hostile, last_error="zero\u200bwidth\x00nul\x85nel")
    snap = Snapshot(
        taken_at=1.0,
        buckets=(1.0,),
        deployments=(view,),
        last_error="\u2066x\u2069",
        last_sync=SYNCED,
    )
    page = landing_page(snap, 2.0).decode()  # a lone surrogate would fail to encode
    for raw in ("\u202e", "\x1b", "\u2028", "\u200b", "\x00", "\x85", "\u2066", "\u2069"):
        assert raw not in page, repr(raw)
    assert "invoice&lt;U+202E&gt;gpj.exe" in page
    assert "&lt;U+D800&gt;" in page


def test_page_caps_long_strings_from_the_api() -> None:
    view = hostile_view(id="dep_" + "x" * 1_000_000, last_error="request_id " + "r" * 3_000_000)
    snap = Snapshot(
        taken_at=1.0,
        buckets=(1.0,),
        deployments=(view,),
        last_error="e" * 3_000_000,
        last_sync={view.id: 1.0},
    )
    page = landing_page(snap, 2.0)
    assert len(page) < 20_000
    # the id (row attribute, name, id), the deployment's error, the poll's error
    assert page.count(b"more chars]") == 5


def test_page_redacts_secrets_added_at_runtime() -> None:
    # A token rotated through token_file is added by the client; an upstream that echoes the
    # Authorization header in a 401 message must not put it on the page.
    rotated = "pt-rotated-landing-5b1c9e"
    logs.add_secret(rotated)
    echo = f"authentication_error: bad header 'Authorization: Bearer {rotated}'"
    view = hostile_view(last_error=echo)
    snap = Snapshot(
        taken_at=1.0, buckets=(1.0,), deployments=(view,), last_error=echo, last_sync=SYNCED
    )
    page = landing_page(snap, 2.0).decode()
    assert rotated not in page
    assert page.count("&lt;redacted&gt;") == 2


def _sync_rows(page: bytes) -> list[str]:
    return sorted(re.findall(r"<tr data-deployment-id=.*?</tr>", page.decode()))


def test_sync_column_through_failed_cycles(sim: Simulator, poller_for) -> None:  # type: ignore[no-untyped-def]
    poller = poller_for(discover=True)
    for step in range(6):
        if step == 3:
            sim.faults.broken.add("list_all_runs")  # the feed fails: every deployment fails
        if step == 5:
            sim.faults.broken.clear()
        poller.poll_once()
        now = sim.clock.now()
        with poller.tracker.lock:
            fresh = fresh_snapshot(poller, now)
        page = landing_page(poller.snapshot, now)
        assert _sync_rows(page) == _sync_rows(landing_page(fresh, now))
        if step in (3, 4):
            assert page.count(b'class="bad">failed</span>: ') == len(poller.snapshot.deployments)
            assert page.count(_when(now).encode()) >= len(poller.snapshot.deployments)
        assert len(poller.snapshot.deployments) > 0
        sim.advance(60.0)


def test_same_id_in_two_accounts_shows_each_accounts_sync() -> None:
    v = DeploymentView("dep_1", None, {}, {}, {}, {}, None, None, {}, True, None)
    bad = replace(v, sync_ok=False, last_error="boom")
    a = Snapshot(1.0, (), deployments=(v,), account="a", last_sync={"dep_1": 1000.0})
    b = Snapshot(1.0, (), deployments=(bad,), account="b", last_sync={"dep_1": 2000.0})
    merged = Snapshot(1.0, (), deployments=(v, bad), accounts=(a, b))
    rows = _sync_rows(landing_page(merged, 3000.0))
    assert len(rows) == 2
    assert any("ok" in r and "1970-01-01 00:16:40" in r for r in rows)
    assert any("boom" in r and "1970-01-01 00:33:20" in r for r in rows)
