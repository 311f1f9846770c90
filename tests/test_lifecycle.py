"""Restart safety (state_file), token rotation (token_file), reload and shutdown."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from qoder_exporter import state
from qoder_exporter.config import config_from_dict
from qoder_exporter.poller import Poller
from qoder_exporter.simulator import ManualClock, Simulator
from qoder_exporter.sync import RunStore

from .conftest import TOKEN, make_config
from .truth import STEP, assert_matches_truth, run_for

ROOT = Path(__file__).resolve().parent.parent


def poller_with(sim: Simulator, **overrides: Any) -> Poller:
    poller = Poller(make_config(sim, **overrides), clock=sim.clock.now)
    poller.client.sleep = lambda _s: None
    return poller


# --- state file ----------------------------------------------------------------------------


@pytest.mark.parametrize("discover", [False, True])
def test_restart_with_state_neither_loses_nor_double_counts(
    sim: Simulator, tmp_path: Path, discover: bool
) -> None:
    path = str(tmp_path / "state.json")
    first = poller_with(sim, state_file=path, discover=discover)
    started = sim.clock.now()
    assert first.poll_once()
    run_for(sim, first, 4 * 3600)
    before = {v.id: dict(v.totals) for v in first.snapshot.deployments}
    first.save_state()
    first.close()

    sim.advance(3 * 3600 + 17)  # down for three hours: runs start and finish meanwhile
    second = poller_with(sim, state_file=path, discover=discover)
    assert second.poll_once()
    after = {v.id: dict(v.totals) for v in second.snapshot.deployments}
    for dep_id, totals in before.items():
        for status, n in totals.items():
            assert after[dep_id].get(status, 0) >= n, "counters continue, never reset"
    run_for(sim, second, 3600)
    assert_matches_truth(sim, second, started)
    second.close()


def test_restart_without_state_starts_counters_afresh(sim: Simulator) -> None:
    first = poller_with(sim)
    first.poll_once()
    run_for(sim, first, 3 * 3600)
    assert sum(sum(v.totals.values()) for v in first.snapshot.deployments) > 0
    first.close()
    second = poller_with(sim)
    second.poll_once()
    assert sum(sum(v.totals.values()) for v in second.snapshot.deployments) == 0


def test_state_is_written_atomically_and_versioned(sim: Simulator, tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    poller = poller_with(sim, state_file=str(path))
    poller.poll_once()
    run_for(sim, poller, 3600)
    doc = json.loads(path.read_text())
    assert doc["format"] == state.FORMAT and doc["version"] == state.VERSION
    assert set(doc["deployments"]) == set(sim.deployment_ids())
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"], "no temporary files left"
    assert TOKEN not in path.read_text()
    poller.close()


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"{not json", "not JSON"),
        (b'{"format": "something-else"}', "not a qoder-exporter state file"),
        (b'{"format": "qoder-exporter-state", "version": 99}', "state version 99"),
        (
            b'{"format": "qoder-exporter-state", "version": 1, "api_url": "http://other/x"}',
            "state is for 'http://other/x'",
        ),
        (
            b'{"format": "qoder-exporter-state", "version": 1, "api_url": "URL",'
            b' "buckets": [], "deployments": {"d": {"floor": "x"}}}',
            "malformed state",
        ),
    ],
)
def test_a_bad_state_file_is_moved_aside_and_the_exporter_starts_fresh(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, why: str
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content.replace(b"URL", sim.base_url.encode()))
    poller = poller_with(sim, state_file=str(path))
    assert poller.store.deployments == {}
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("state.json.rejected-")]
    assert len(aside) == 1 and aside[0].read_bytes() == content.replace(
        b"URL", sim.base_url.encode()
    )
    assert why in caplog.text
    assert poller.poll_once(), "starts fresh and goes on"
    assert path.exists(), "a new state is written after the first good poll"
    poller.close()


def test_state_round_trips_exactly(sim: Simulator, tmp_path: Path) -> None:
    poller = poller_with(sim)
    poller.poll_once()
    run_for(sim, poller, 6 * 3600)
    path = str(tmp_path / "s.json")
    state.save(poller.store, path, "u")
    copy = RunStore(poller.store.buckets)
    assert state.load(copy, path, "u")
    assert state.dump(copy, "u")["deployments"] == state.dump(poller.store, "u")["deployments"]
    poller.close()


def test_changed_buckets_restart_histograms_but_keep_counters(tmp_path: Path) -> None:
    store = RunStore((1.0, 10.0))
    sim = Simulator(seed=3, deployments=2, token=TOKEN)
    try:
        sim.serve()
        poller = poller_with(sim)
        poller.poll_once()
        run_for(sim, poller, 3 * 3600)
        path = str(tmp_path / "s.json")
        state.save(poller.store, path, "u")
        poller.close()
    finally:
        sim.close()
    assert state.load(store, path, "u")
    assert all(not st.durations for st in store.deployments.values())
    assert sum(sum(st.totals.values()) for st in store.deployments.values()) > 0


# --- token rotation ----------------------------------------------------------------------


def test_rotated_token_file_is_picked_up_without_restart(sim: Simulator, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    doc = {
        "api": {"url": sim.base_url, "token_file": str(token_file), "requests_per_second": 1000},
        "deployments": sim.deployment_ids(),
    }
    poller = Poller(config_from_dict(doc, env={}), clock=sim.clock.now)
    poller.client.sleep = lambda _s: None
    started = sim.clock.now()
    assert poller.poll_once()
    run_for(sim, poller, 3600)

    # Rotation done right: the new token is written before the old one is revoked.
    token_file.write_text("pt-rotated-1\n")
    sim.faults.rotate_token("pt-rotated-1")
    sim.advance(STEP)
    assert poller.poll_once(), "the file changed: re-read before the cycle"

    # Rotation done in the wrong order: the old token is revoked first, so a poll fails;
    # the next 401 makes the exporter re-read the file, with no restart.
    sim.faults.rotate_token("pt-rotated-2")
    sim.advance(STEP)
    assert not poller.poll_once()
    # Same size, same inode, same mtime: nothing to see by stat, only the 401 can tell.
    before = token_file.stat()
    token_file.write_text("pt-rotated-2\n")
    os.utime(token_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    sim.advance(STEP)
    assert poller.poll_once()
    run_for(sim, poller, 3600)
    assert_matches_truth(sim, poller, started)
    poller.close()


# --- the process: SIGTERM, SIGHUP, /-/reload ------------------------------------------------


@pytest.fixture
def live_sim() -> Iterator[Simulator]:
    """A simulator on wall-clock-aligned simulated time, for exporter processes."""
    simulator = Simulator(seed=11, deployments=4, token=TOKEN, clock=ManualClock(time.time()))
    simulator.serve("127.0.0.1", 0)
    yield simulator
    simulator.close()


class Process:
    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "exporter.py"),
                "--config",
                str(config),
                "--web.listen-address",
                "127.0.0.1:0",
            ],
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.lines: list[str] = []
        # A thread reads stderr, so wait_for keeps its deadline even when the process is
        # silent (a readline here would block for as long as the process lives).
        self._new: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = int(self.wait_for(r"listening on http://[^:]+:(\d+)/metrics").group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._new.put(line)

    def wait_for(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._new.get(timeout=left)
            except queue.Empty:
                break
            self.lines.append(line)
            m = re.search(pattern, line)
            if m:
                return m
        raise AssertionError(f"no {pattern!r} in:\n{''.join(self.lines)}")

    def metrics(self) -> dict[str, float]:
        body = requests.get(f"{self.url}/metrics", timeout=5).text
        return {
            s.name: s.value
            for f in text_string_to_metric_families(body)
            for s in f.samples
            if not s.labels
        }

    def stop(self) -> tuple[int, float]:
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=20)
        self._reader.join(timeout=5)
        while not self._new.empty():
            self.lines.append(self._new.get())
        return code, time.monotonic() - began


def write_config(path: Path, sim: Simulator, extra: str = "") -> None:
    ids = "\n".join(f"  - {d}" for d in sim.deployment_ids())
    path.write_text(
        f"api:\n  url: {sim.base_url}\n  token: {TOKEN}\npoll_interval: 1s\n"
        f"deployments:\n{ids}\n{extra}"
    )


def test_sigterm_saves_state_and_exits_within_seconds(live_sim: Simulator, tmp_path: Path) -> None:
    config, state_path = tmp_path / "config.yaml", tmp_path / "state.json"
    write_config(config, live_sim, f"state_file: {state_path}\n")
    proc = Process(config)
    try:
        deadline = time.monotonic() + 20
        while proc.metrics().get("qoder_up") != 1.0 and time.monotonic() < deadline:
            time.sleep(0.2)
        state_path.unlink(missing_ok=True)
    finally:
        code, took = proc.stop()
    assert code == 0
    assert took < 5, f"shutdown took {took:.1f}s"
    assert json.loads(state_path.read_text())["format"] == state.FORMAT, "saved at shutdown"
    assert TOKEN not in "".join(proc.lines)


def test_sighup_and_post_reload_apply_good_configs_and_reject_bad_ones(
    live_sim: Simulator, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    write_config(config, live_sim)
    proc = Process(config)
    try:
        assert "qoder_exporter_config_last_reload_successful" not in proc.metrics()

        config.write_text(config.read_text() + "poll_intervall: 5s\n")  # a typo
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_for(r"config reload rejected.*poll_intervall")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            m = proc.metrics()
            if "qoder_exporter_config_last_reload_successful" in m:
                break
            time.sleep(0.2)
        assert m["qoder_exporter_config_last_reload_successful"] == 0.0
        assert requests.get(f"{proc.url}/-/healthy", timeout=5).status_code == 200, "still up"

        r = requests.post(f"{proc.url}/-/reload", timeout=5)
        assert r.status_code == 500 and "poll_intervall" in r.text

        write_config(config, live_sim, "lookback: 2h\n")
        r = requests.post(f"{proc.url}/-/reload", timeout=5)
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 10
        while proc.metrics().get("qoder_exporter_config_last_reload_successful") != 1.0:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert proc.metrics()["qoder_up"] == 1.0
    finally:
        code, _ = proc.stop()
    assert code == 0


def test_a_burst_of_signals_neither_deadlocks_nor_loses_sigterm(
    live_sim: Simulator, tmp_path: Path
) -> None:
    """Handlers that set an Event could deadlock the main thread inside that Event's wait();
    serve() reads signals from a wakeup socket instead. Hammer it, then stop it."""
    config = tmp_path / "config.yaml"
    write_config(config, live_sim)
    proc = Process(config)
    try:
        for _ in range(300):
            proc.proc.send_signal(signal.SIGHUP)
        proc.wait_for("config reloaded")
        assert requests.get(f"{proc.url}/-/healthy", timeout=5).status_code == 200
    finally:
        code, seconds = proc.stop()
    assert code == 0 and seconds < 5


def test_reconfigure_drops_unlisted_deployments_and_restarts_histograms_only(
    sim: Simulator,
) -> None:
    poller = poller_with(sim)
    poller.poll_once()
    run_for(sim, poller, 3 * 3600)
    kept = sim.deployment_ids()[1:]
    before = {v.id: dict(v.totals) for v in poller.snapshot.deployments}
    poller.reconfigure(make_config(sim, deployments=kept, duration_buckets=[1, 60, 3600]))
    sim.advance(STEP)
    assert poller.poll_once()
    views = {v.id: v for v in poller.snapshot.deployments}
    assert set(views) == set(kept)
    assert poller.snapshot.buckets == (1.0, 60.0, 3600.0)
    for dep_id in kept:
        for status, n in before[dep_id].items():
            assert views[dep_id].totals.get(status, 0) >= n, "counters continue"
        for data in views[dep_id].durations.values():
            assert data.cumulative[-1] <= sum(views[dep_id].totals.values()) - sum(
                before[dep_id].values()
            ), "histograms hold only runs finished since the reload"
    poller.close()


def until(check: Any, what: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_storm_of_reloads_brings_at_most_one_early_poll_per_interval(sim: Simulator) -> None:
    poller = poller_with(sim, poll_interval="1h")
    stop = threading.Event()
    thread = threading.Thread(target=poller.run, args=(stop,), daemon=True)
    thread.start()
    try:
        until(lambda: poller.polls_done() == 1, "the first poll")
        new = make_config(sim, poll_interval="1h", deployments=sim.deployment_ids()[1:])
        poller.reconfigure(new)
        until(lambda: poller.polls_done() == 2, "the reload's early poll")
        assert poller.config is new
        for _ in range(20):
            poller.reconfigure(new)
            # The poll thread has woken and cleared the wake-up: it saw this reload.
            until(lambda: not poller._wake.is_set(), "the poll thread to see the reload")
    finally:
        stop.set()
        poller.wake()
        thread.join(30)
        poller.close()
    assert not thread.is_alive()
    assert poller.polls_done() == 2, "the later reloads wait for the next cycle"
    assert poller._pending is new, "still taken at the next cycle"


def test_state_is_rewritten_only_when_the_store_changed(sim: Simulator, tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    poller = poller_with(sim, state_file=str(path))
    assert poller.poll_once()
    written = path.stat().st_ino  # each save renames a new file into place
    assert poller.poll_once()  # no simulated time passed: nothing new
    assert path.stat().st_ino == written
    sim.advance(3600)
    assert poller.poll_once()
    assert path.stat().st_ino != written
    poller.close()
