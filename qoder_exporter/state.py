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
from .models import MAX_CLOCK_SKEW, STATUSES, TERMINAL, TRIGGERS, run_error_type, valid_id
from .sync import MAX_ANNOUNCED, QUEUE_BUCKETS, DeploymentState, Histogram, RunStore, Tracked

log = logging.getLogger(__name__)

FORMAT = "qoder-exporter-state"
# 2 added the per-trigger counts, retried failures, queue histogram, failure streak, last
# run and failure times and the announced trigger times. A version 1 file is read (its counts
# go under trigger "other"); an exporter that reads only 1 moves a version 2 file aside.
# 3 added the runs awaiting their sessions and the session counters (sessionstate.py); a
# version 1 or 2 file is read (nothing awaited, counters from zero).
# 4 added the tokens-per-run histogram (sessionstate.restore_v4); a version 3 file is read
# (the histogram from zero).
VERSION = 4
READS = (1, 2, 3, 4)


# A histogram's sum of run durations: 2**53 runs of a year each is far below it.
MAX_SUM = 1e30


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


def restore(
    doc: object,
    store: RunStore,
    api_url: str,
    *,
    now: float | None = None,
    max_clock_skew: float = MAX_CLOCK_SKEW,
) -> int:
    """Fill an empty store from a dumped document; StateError if it does not fit.

    Every value is checked (type, range, finite, not later than `now` plus the skew): a
    counter that went negative or a last success "in 2099" would be exported as true.
    """
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
    check = _Checker((time.time() if now is None else now) + max_clock_skew)
    deployments = doc.get("deployments")
    if not isinstance(deployments, dict):
        raise StateError("malformed state: deployments: expected an object")
    restored: dict[str, DeploymentState] = {}
    for dep_id, d in deployments.items():
        try:
            check.id(dep_id, "deployment id")
            buckets = len(store.buckets) if same_buckets else None
            restored[dep_id] = _restore_one(d, buckets, check, version)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise StateError(f"malformed state: {dep_id}: {type(exc).__name__}") from None
        except StateError as exc:
            raise StateError(f"malformed state: {dep_id}: {exc}") from None
    store.deployments.update(restored)
    return len(restored)


def _restore_one(d: Any, buckets: int | None, check: _Checker, version: int) -> DeploymentState:
    """One deployment's state; `buckets` is None when histograms start again."""
    if not isinstance(d, dict):
        raise StateError("expected an object")
    st = DeploymentState(floor=check.time(d["floor"], "floor"))
    for rid, entry in check.mapping(d["runs"], "runs").items():
        check.id(rid, "run id")
        if not isinstance(entry, list) or len(entry) != 3:
            raise StateError(f"run {rid}: expected [created_at, status, accounted]")
        created, status, accounted = entry
        if status not in STATUSES or not isinstance(accounted, bool):
            raise StateError(f"run {rid}: bad status or accounted flag")
        st.runs[rid] = Tracked(check.time(created, "run created_at"), status, accounted)
    totals = check.mapping(d["totals"], "totals")
    st.totals = {s: check.count(totals.get(s, 0), "totals") for s in TERMINAL}
    durations = check.mapping(d["durations"], "durations")
    if buckets is not None:
        for s, h in durations.items():
            if s not in TERMINAL or not isinstance(h, dict) or not isinstance(h["counts"], list):
                raise StateError(f"histogram of {s!r}: malformed")
            counts = [check.count(c, "histogram count") for c in h["counts"]]
            if len(counts) != buckets + 1:
                raise StateError(f"histogram of {s} has the wrong length")
            total = h["sum"]
            if not _number(total) or not 0 <= total <= MAX_SUM:
                raise StateError(f"histogram of {s}: sum is not a number from 0 to {MAX_SUM:g}")
            st.durations[s] = Histogram(counts, float(total))
    for key, value in check.mapping(d["errors"], "errors").items():
        # Keys become label values: the same bounded set as fresh runs' error types.
        label = run_error_type(key)
        st.errors[label] = st.errors.get(label, 0) + check.count(value, "errors")
    last = d["last_success"]
    st.last_success = None if last is None else check.time(last, "last_success")
    lf = d["last_finished"]
    if lf is not None:
        if not isinstance(lf, list) or len(lf) != 3 or lf[2] not in TERMINAL:
            raise StateError("last_finished: expected [created_at, id, terminal status]")
        check.id(lf[1], "last_finished id")
        st.last_finished = (check.time(lf[0], "last_finished"), lf[1], lf[2])
    if version >= 2:
        _restore_v2(st, d, check)
    else:
        st.by_trigger = {(s, "other"): n for s, n in st.totals.items() if n}
    if version >= 3:
        sessionstate.restore(st, d)
    if version >= 4:
        sessionstate.restore_v4(st, d)
    return st


def _nest(by_trigger: dict[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (status, trigger), n in by_trigger.items():
        out.setdefault(status, {})[trigger] = n
    return out


def _restore_v2(st: DeploymentState, d: dict[str, Any], check: _Checker) -> None:
    """The fields version 2 added: trigger counts, retries, queue time, streak, times."""
    for status, per in check.mapping(d["by_trigger"], "by_trigger").items():
        for trigger, n in check.mapping(per, "by_trigger").items():
            if status not in TERMINAL or trigger not in TRIGGERS:
                raise StateError(f"unknown status/trigger {status!r}/{trigger!r}")
            st.by_trigger[(status, trigger)] = check.count(n, "by_trigger")
    st.retried = check.count(d["retried"], "retried")
    queue = d["queue"]
    if queue is not None:
        if not isinstance(queue, dict) or not isinstance(queue["counts"], list):
            raise StateError("queue histogram: malformed")
        counts = [check.count(c, "queue count") for c in queue["counts"]]
        if len(counts) != len(QUEUE_BUCKETS) + 1:
            raise StateError("queue histogram has the wrong length")
        total = queue["sum"]
        if not _number(total) or not 0 <= total <= MAX_SUM:
            raise StateError(f"queue histogram: sum is not a number from 0 to {MAX_SUM:g}")
        st.queue = Histogram(counts, float(total))
    st.consecutive = check.count(d["consecutive"], "consecutive")
    st.last_run = None if d["last_run"] is None else check.time(d["last_run"], "last_run")
    last_failure = d["last_failure"]
    st.last_failure = None if last_failure is None else check.time(last_failure, "last_failure")
    announced = d["announced"]
    if not isinstance(announced, list):
        raise StateError("announced: expected a list")
    # Announced trigger times are in the future by nature: bounded by finiteness, not now.
    times = [float(t) for t in announced if _number(t) and 0 <= t < 1e11]
    st.announced = sorted(times)[:MAX_ANNOUNCED]


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Checker:
    """The checks of restored values; each raises StateError naming the value."""

    def __init__(self, latest: float) -> None:
        self.latest = latest

    def time(self, value: object, what: str) -> float:
        # float() of a 400-digit integer raises OverflowError; test the range first.
        if not _number(value) or not 0 <= value <= self.latest:  # type: ignore[operator]
            raise StateError(f"{what}: not a time from 1970 to now")
        return float(value)  # type: ignore[arg-type]

    def count(self, value: object, what: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
            raise StateError(f"{what}: not a count from 0 to 2**53")
        return value

    def id(self, value: object, what: str) -> None:
        if not valid_id(value):
            raise StateError(f"{what}: not an id")

    def mapping(self, value: object, what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise StateError(f"{what}: expected an object")
        return value


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


def load(
    store: RunStore,
    path: str,
    api_url: str,
    *,
    now: float | None = None,
    max_clock_skew: float = MAX_CLOCK_SKEW,
) -> bool:
    """Restore from path if it exists; a bad file is logged and moved aside. True if restored.

    Whatever the file holds, start-up goes on: at worst fresh, with the file kept aside.
    """
    try:
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            log.info("no state file at %s: starting fresh", path)
            return False
        except OSError as exc:
            # A directory, an unreadable file, an I/O error.
            raise StateError(f"cannot read: {type(exc).__name__}") from None
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            # RecursionError: nested thousands deep; ValueError includes bad UTF-8 and
            # integers past Python's digit limit.
            raise StateError(f"not JSON we can read: {type(exc).__name__}") from None
        count = restore(doc, store, api_url, now=now, max_clock_skew=max_clock_skew)
    except StateError as exc:
        store.deployments.clear()
        _move_aside(path, str(exc))
        return False
    log.info("restored state of %d deployments from %s", count, path)
    return True


def _move_aside(path: str, reason: str) -> None:
    aside = f"{path}.rejected-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    try:
        os.replace(path, aside)
    except OSError as exc:
        log.error(
            "state file %s rejected (%s) and could not be moved aside (%s): starting fresh",
            path,
            reason,
            exc.strerror or type(exc).__name__,
        )
        return
    log.error("state file %s rejected (%s); moved to %s, starting fresh", path, reason, aside)
