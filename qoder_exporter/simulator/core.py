"""The Simulator: world state, clock sync, deployment admin, serving and accounting."""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import socket
import threading
from collections.abc import Mapping

from . import truth
from .clock import ManualClock, RealClock
from .faults import Faults
from .httpserver import Server
from .paging import sort_key
from .replies import Reply
from .routing import BASE_PATH, ENDPOINTS, handle_request
from .sessions import RunOutcome, SessionOptions, SessionStore, check_weights
from .shape import RunShape
from .shape_g1 import G1Shape
from .shape_g2 import G2Shape
from .stamps import INF, JSON, MS, NS, to_ns
from .world import Deployment, DeploymentSpec, Run, default_specs

DEFAULT_START = 1781395200.0  # 2026-06-14T00:00:00Z, the day the doc examples were captured
SHAPES: dict[str, RunShape] = {"g1": G1Shape(), "g2": G2Shape()}
_CREATION_SPAN_NS = 86400 * NS


class Simulator:
    """A deterministic Qoder deployments API: world model, HTTP server, truth and faults."""

    def __init__(
        self,
        seed: int = 0,
        *,
        clock: ManualClock | RealClock | None = None,
        deployments: int | list[DeploymentSpec] = 5,
        token: str = "pt-simulator-token",
        shape: str = "g1",
        page_cap: int = 100,
        history_s: float = 3 * 86400,
        demo: bool = False,
        sessions: SessionOptions | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self.seed = seed
        self.clock: ManualClock | RealClock = clock or ManualClock(start=DEFAULT_START)
        self.token = token
        self.shape = shape
        self.page_cap = page_cap
        self.demo = demo
        if demo:
            history_s = min(history_s, 2 * 3600.0)
        self.history_s = history_s
        self.start = self.clock.now()
        self._start_ns = to_ns(self.start)
        self._world_ns = self._start_ns
        self._deps: dict[str, Deployment] = {}
        self._dep_order: list[Deployment] = []
        self._created_count = 0
        self._runs: dict[str, Run] = {}
        self._all_runs: list[Run] = []
        self._unsorted: list[Run] = []
        self._next_due = INF
        self.sessions = SessionStore(
            seed, sessions or SessionOptions(), lambda: self._runs.values()
        )
        self.request_counts: dict[str, int] = dict.fromkeys(ENDPOINTS, 0)
        self.faults = Faults(seed, on_rotate=self._set_token)
        self._server: Server | None = None
        self.base_url = ""  # set by serve()
        self._thread: threading.Thread | None = None
        if isinstance(deployments, int):
            specs = default_specs(deployments, seed, self.start, demo, history_s)
        else:
            specs = list(deployments)
        history_begin = self._start_ns - to_ns(history_s)
        # Deployments are created a minute apart before the history begins, within a day at
        # most: 10,000 a minute apart would reach a week further back, and the world would
        # hold that week of runs of every deployment (superlinear in the deployments).
        spacing = min(61 * NS, _CREATION_SPAN_NS // max(len(specs), 1))
        for i, spec in enumerate(specs):
            base = history_begin
            if spec.succeeds_until is not None:
                # reach back far enough that the last success is in the history
                base = min(base, to_ns(spec.succeeds_until) - 12 * 3600 * NS)
            created = base - (len(specs) - i) * spacing - (i * 7919 % 1000) * MS
            self._add(spec, created)
        with self._lock:
            self._sync()
            # Sorted now, not in the first feed request: millions of runs take longer to
            # sort than a client waits for an answer.
            self._all_sorted()

    # -- settings

    @property
    def shape(self) -> str:
        """Return the run shape: "g1" (status-bearing) or "g2" (record-only)."""
        return self.run_shape.name

    @shape.setter
    def shape(self, value: str) -> None:
        if value not in SHAPES:
            raise ValueError("shape must be 'g1' or 'g2'")
        self.run_shape: RunShape = SHAPES[value]

    @property
    def page_cap(self) -> int:
        """Return the page-size cap: 100 (larger limit -> 400) or 1000 (silently capped)."""
        return self._page_cap

    @page_cap.setter
    def page_cap(self, value: int) -> None:
        if value not in (100, 1000):
            raise ValueError("page_cap must be 100 or 1000")
        self._page_cap = value

    def _set_token(self, token: str) -> None:
        """Replace the accepted token."""
        self.token = token

    # -- server

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start the HTTP server in a daemon thread and return the API base URL."""
        if self._server is not None:
            raise RuntimeError("simulator is already serving")
        server = Server((host, port), self)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="qoder-simulator", daemon=True
        )
        self._thread.start()
        bound_port = server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{shown}:{bound_port}{BASE_PATH}"
        return self.base_url

    def close(self) -> None:
        """Stop the HTTP server and drop open connections."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with server.conn_lock:
            conns = list(server.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def advance(self, seconds: float) -> None:
        """Advance a ManualClock by `seconds`."""
        if not isinstance(self.clock, ManualClock):
            raise TypeError("advance() needs a ManualClock")
        self.clock.advance(seconds)

    # -- world

    def _sync(self) -> int:
        """Bring the world up to the clock (never backwards) and return the world time in ns."""
        now = max(to_ns(self.clock.now()), self._world_ns)
        self._world_ns = now
        if now >= self._next_due:
            for dep in self._dep_order:
                if dep.next_due_ns <= now:
                    self._index(dep.generate(now))
            self._next_due = min((d.next_due_ns for d in self._dep_order), default=INF)
        return now

    def _index(self, runs: list[Run]) -> None:
        """Register new runs in the id index and the global list."""
        for run in runs:
            self._runs[run.id] = run
            self.sessions.add(run)
        self._unsorted.extend(runs)

    def _all_sorted(self) -> list[Run]:
        """Return every live run sorted by (created_at, id), merging recently created runs."""
        if self._unsorted:
            batch = self._unsorted
            self._unsorted = []
            # new runs are nearly always newer than all but the last few: re-sort only the tail
            pos = bisect.bisect_left(self._all_runs, min(map(sort_key, batch)), key=sort_key)
            batch.extend(self._all_runs[pos:])
            del self._all_runs[pos:]
            batch.sort(key=sort_key)
            self._all_runs.extend(batch)
        return self._all_runs

    def _add(self, spec: DeploymentSpec, created_ns: int) -> Deployment:
        """Create a deployment from a private copy of spec."""
        if spec.session_outcomes is not None:
            check_weights(spec.session_outcomes)
        if spec.max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1")
        if spec.interval_s is not None and spec.interval_s <= 0:
            raise ValueError("interval_s must be positive")
        for low, high in (spec.pending_s, spec.duration_s):
            if not 0 <= low <= high:
                raise ValueError("pending_s and duration_s need 0 <= low <= high")
        spec = dataclasses.replace(
            spec,
            paused_reason=dict(spec.paused_reason or {}) or None,
            session_outcomes=None if spec.session_outcomes is None else dict(spec.session_outcomes),
        )
        dep = Deployment(self._created_count, spec, created_ns, self._start_ns, self.seed)
        self._created_count += 1
        self._deps[dep.id] = dep
        self._dep_order.append(dep)
        self._next_due = min(self._next_due, dep.next_due_ns)
        return dep

    def _dep(self, deployment_id: str) -> Deployment:
        """Return a live deployment or raise KeyError."""
        dep = self._deps.get(deployment_id)
        if dep is None:
            raise KeyError(f"no such deployment: {deployment_id}")
        return dep

    def deployment_ids(self) -> list[str]:
        """Return the ids of live deployments in creation order."""
        with self._lock:
            return [d.id for d in self._dep_order]

    def spec(self, deployment_id: str) -> DeploymentSpec:
        """Return a copy of a deployment's current spec."""
        with self._lock:
            return dataclasses.replace(self._dep(deployment_id).spec)

    def add_deployment(self, spec: DeploymentSpec) -> str:
        """Create a deployment now and return its id."""
        with self._lock:
            now = self._sync()
            return self._add(spec, now).id

    def delete_deployment(self, deployment_id: str) -> None:
        """Remove a deployment and its runs from every endpoint."""
        with self._lock:
            self._sync()
            dep = self._deps.pop(deployment_id)
            self._dep_order.remove(dep)
            for run in dep.runs:
                self._runs.pop(run.id, None)
                self.sessions.remove(run)
            self._all_runs = [r for r in self._all_sorted() if r.dep is not dep]
            self._next_due = min((d.next_due_ns for d in self._dep_order), default=INF)

    def trigger(self, deployment_id: str) -> JSON:
        """Trigger a manual run now and return its JSON (KeyError: missing, ValueError: paused)."""
        with self._lock:
            now = self._sync()
            dep = self._dep(deployment_id)
            if dep.is_paused(now):
                raise ValueError(f"deployment {deployment_id} is paused")
            return self.run_shape.run_json(self._trigger(dep, now), now)

    def _trigger(self, dep: Deployment, now: int) -> Run:
        """Create a manual run at now."""
        t = max(dep._stamp(now), dep.last_event_ns)
        dep.last_event_ns = t
        # t may be stamped a little before now; fold runs finished by now first, so whether the
        # new run is skipped does not depend on whether a read already settled the deployment
        dep.settle(now)
        run = dep.create_run(t, "manual", None, dep.spec.stuck and not dep.stuck_used)
        self._index([run])
        return run

    def set_failure_rate(self, deployment_id: str, rate: float) -> None:
        """Change the failure probability of runs created from now on."""
        with self._lock:
            self._sync()
            self._dep(deployment_id).spec.failure_rate = rate

    # -- request handling

    def handle_request(self, method: str, raw_path: str, headers: Mapping[str, str]) -> Reply:
        """Decide the full reply to one request without sockets (see routing.handle_request)."""
        return handle_request(self, method, raw_path, headers)

    # -- ground truth (truth.py)

    def truth_recent(self, deployment_id: str, lookback_s: float) -> dict[str, int]:
        """Count runs created in [now - lookback_s, now] by current status."""
        return truth.recent(self, deployment_id, lookback_s)

    def truth_finished(
        self, deployment_id: str, since: float, until: float | None = None
    ) -> list[tuple[str, float | None, str | None]]:
        """List (status, duration_s, error_type) of runs that finished in (since, until]."""
        return truth.finished(self, deployment_id, since, until)

    def truth_last_success(self, deployment_id: str) -> float | None:
        """Return completed_at of the newest completed run (g2: created_at of newest success)."""
        return truth.last_success(self, deployment_id)

    def truth_last_finished_status(self, deployment_id: str) -> str | None:
        """Return the status of the newest (by created_at) finished run."""
        return truth.last_finished_status(self, deployment_id)

    def truth_in_flight(self, deployment_id: str) -> list[str]:
        """Return ids of pending/running runs (always empty in the g2 shape)."""
        return truth.in_flight(self, deployment_id)

    # -- sessions (sessions.py, sessions_api.py)

    def lose_session(self, session_id: str) -> None:
        """Make a session answer 404 everywhere from now on (its run is unchanged)."""
        with self._lock:
            self.sessions.lost.add(session_id)

    def truth_run_outcomes(
        self, deployment_id: str, since: float | None = None, until: float | None = None
    ) -> list[RunOutcome]:
        """The outcome of each run created in [since, until], oldest first (see RunOutcome)."""
        return truth.run_outcomes(self, deployment_id, since, until)

    def truth_run_outcome(self, run_id: str) -> RunOutcome:
        """The outcome of one run (KeyError when unknown)."""
        return truth.run_outcome(self, run_id)

    # -- request accounting

    def reset_counts(self) -> None:
        """Zero every per-endpoint request counter."""
        with self._lock:
            for name in self.request_counts:
                self.request_counts[name] = 0

    def total_requests(self) -> int:
        """Return the number of requests received on all endpoints."""
        with self._lock:
            return sum(self.request_counts.values())

    # -- JSON rendering
