"""The optional state file: the run store saved across restarts, atomically and versioned.

With it a restart neither loses nor double-counts: the counters continue from their saved
values, and the runs that finished while the exporter was down are found by the usual
incremental read (every run newer than the saved ones is new; saved in-flight runs are
re-read by id). A file that cannot be trusted is moved aside, never half-used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from typing import Any

from . import sessionstate
from .models import TERMINAL, TRIGGERS, run_error_label
from .sync import MAX_ANNOUNCED, QUEUE_BUCKETS, DeploymentState, Histogram, RunStore, Tracked

log = logging.getLogger(__name__)

FORMAT = "qoder-exporter-state"
# 2 added the per-trigger counts, retried failures, queue histogram, failure streak, last
# run and failure times and the announced trigger times. A version 1 file is read (its counts
# go under trigger "other"); an exporter that reads only 1 moves a version 2 file aside.
# 3 added the runs awaiting their sessions and the session counters (sessionstate.py); a
# version 1 or 2 file is read (nothing awaited, counters from zero).
VERSION = 3
READS = (1, 2, 3)


class StateError(Exception):
    """The file is not a state this exporter can use; the message says why."""


def dump(store: RunStore, api_url: str) -> dict[str, Any]:
    deployments: dict[str, Any] = {}
    for dep_id, st in store.deployments.items():
        deployments[dep_id] = {
            "floor": st.floor,
            # [created_at, status, accounted]: compact, as a window may hold many runs.
            "runs": {rid: [t.created_at, t.status, t.accounted] for rid, t in st.runs.items()},
            "totals": st.totals,
            "durations": {s: {"counts": h.counts, "sum": h.total} for s, h in st.durations.items()},
            "errors": st.errors,
            "last_success": st.last_success,
            "last_finished": list(st.last_finished) if st.last_finished else None,
            "by_trigger": _nest(st.by_trigger),
            "retried": st.retried,
            "queue": {"counts": st.queue.counts, "sum": st.queue.total} if st.queue else None,
            "consecutive": st.consecutive,
            "last_run": st.last_run,
            "last_failure": st.last_failure,
            "announced": st.announced,
            **sessionstate.dump(st),
        }
    return {
        "format": FORMAT,
        "version": VERSION,
        "saved_at": time.time(),
        "api_url": api_url,
        "buckets": list(store.buckets),
        "deployments": deployments,
    }


def restore(doc: object, store: RunStore, api_url: str) -> int:
    """Fill an empty store from a dumped document; StateError if it does not fit."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StateError("not a qoder-exporter state file")
    version = doc.get("version")
    if version not in READS or isinstance(version, bool):
        raise StateError(f"state version {version!r}, this exporter reads {READS}")
    if doc.get("api_url") != api_url:
        # Another account or region: its runs and counters are not ours.
        raise StateError(f"state is for {doc.get('api_url')!r}, not {api_url!r}")
    same_buckets = doc.get("buckets") == list(store.buckets)
    if not same_buckets:
        log.warning("duration_buckets changed: run-duration histograms start again from zero")
    restored: dict[str, DeploymentState] = {}
    try:
        for dep_id, d in doc["deployments"].items():
            st = DeploymentState(floor=float(d["floor"]))
            for rid, (created, status, accounted) in d["runs"].items():
                st.runs[str(rid)] = Tracked(float(created), str(status), bool(accounted))
            st.totals = {s: int(d["totals"].get(s, 0)) for s in TERMINAL}
            if same_buckets:
                for s, h in d["durations"].items():
                    counts = [int(c) for c in h["counts"]]
                    if len(counts) != len(store.buckets) + 1:
                        raise StateError(f"{dep_id}: histogram of {s} has the wrong length")
                    st.durations[str(s)] = Histogram(counts, float(h["sum"]))
            for k, v in d["errors"].items():
                # Older files may hold error types outside today's bounded set.
                key = run_error_label(str(k))
                st.errors[key] = st.errors.get(key, 0) + int(v)
            last = d["last_success"]
            st.last_success = None if last is None else float(last)
            lf = d["last_finished"]
            st.last_finished = None if lf is None else (float(lf[0]), str(lf[1]), str(lf[2]))
            if version >= 2:
                _restore_v2(st, d)
            if version >= 3:
                sessionstate.restore(st, d)
            else:
                st.by_trigger = {(s, "other"): n for s, n in st.totals.items() if n}
            restored[str(dep_id)] = st
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StateError(f"malformed state: {type(exc).__name__}: {exc}") from None
    store.deployments.update(restored)
    return len(restored)


def _nest(by_trigger: dict[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (status, trigger), n in by_trigger.items():
        out.setdefault(status, {})[trigger] = n
    return out


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _restore_v2(st: DeploymentState, d: dict[str, Any]) -> None:
    for status, per in d["by_trigger"].items():
        for trigger, n in per.items():
            if status not in TERMINAL or trigger not in TRIGGERS:
                raise StateError(f"unknown status/trigger {status!r}/{trigger!r}")
            st.by_trigger[(status, trigger)] = int(n)
    st.retried = int(d["retried"])
    queue = d["queue"]
    if queue is not None:
        counts = [int(c) for c in queue["counts"]]
        if len(counts) != len(QUEUE_BUCKETS) + 1:
            raise StateError("queue histogram has the wrong length")
        st.queue = Histogram(counts, float(queue["sum"]))
    st.consecutive = int(d["consecutive"])
    st.last_run = _opt_float(d["last_run"])
    st.last_failure = _opt_float(d["last_failure"])
    st.announced = sorted(float(t) for t in d["announced"])[:MAX_ANNOUNCED]


def save(store: RunStore, path: str, api_url: str) -> None:
    """Write atomically: a temporary file in the same directory, fsync, rename, fsync dir."""
    directory = os.path.dirname(os.path.abspath(path))
    data = json.dumps(dump(store, api_url), separators=(",", ":")).encode()
    fd, tmp = tempfile.mkstemp(prefix=".state-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(store: RunStore, path: str, api_url: str) -> bool:
    """Restore from path if it exists; a bad file is logged and moved aside. True if restored."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        log.info("no state file at %s: starting fresh", path)
        return False
    try:
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise StateError(f"not JSON: {exc}") from None
        count = restore(doc, store, api_url)
    except StateError as exc:
        aside = f"{path}.rejected-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        os.replace(path, aside)
        store.deployments.clear()
        log.error("state file %s rejected (%s); moved to %s, starting fresh", path, exc, aside)
        return False
    log.info("restored state of %d deployments from %s", count, path)
    return True
