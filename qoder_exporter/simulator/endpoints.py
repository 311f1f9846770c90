"""The deployments-family endpoints: deployment JSON and the run and deployment lists."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import TYPE_CHECKING

from .paging import (
    choice,
    cursor_param,
    envelope,
    parse_limit,
    select_page,
    sort_key,
    time_bounds,
    time_param,
)
from .replies import ApiError, Request
from .stamps import JSON, NS, cron_for, fmt
from .world import STATUSES, Deployment, Run

if TYPE_CHECKING:
    from .core import Simulator


def deployment_json(dep: Deployment, now: int) -> JSON:
    """Render a deployment as of now."""
    dep.settle(now)
    paused = dep.is_paused(now)
    schedule: JSON | None = None
    upcoming: list[str] = []
    if dep.interval_ns is not None:
        first = dep.grid_after(now)
        upcoming = [fmt(first + i * dep.interval_ns, whole=True) for i in range(5)]
        schedule = {
            "type": "cron",
            "expression": cron_for(dep.interval_ns / NS, dep.phase_ns / NS),
            "timezone": "UTC",
            "upcoming_runs_at": upcoming,
        }
        if dep.last_scheduled_ns is not None:
            schedule["last_run_at"] = fmt(dep.last_scheduled_ns, whole=True)
    stats: JSON = {
        "total_runs": len(dep.runs),
        "total_failures": dep.total_failures,
        "consecutive_failures": dep.consecutive_failures,
    }
    if dep.runs:
        stats["last_triggered_at"] = fmt(dep.runs[-1].created_ns, whole=True)
    if upcoming:
        stats["next_trigger_at"] = upcoming[0]
    reason = None
    if paused:
        reason = dep.spec.paused_reason or {"type": "manual"}
    updated = max(dep.created_ns, dep.end_ns) if paused else dep.created_ns
    return {
        "id": dep.id,
        "type": "deployment",
        "name": dep.spec.name,
        "description": f"Simulated deployment {dep.spec.name}",
        "agent": dep.agent_json(),
        "environment_id": dep.environment_id,
        "status": "paused" if paused else "active",
        "paused_reason": reason,
        "archived_at": None,
        "schedule": schedule,
        "initial_events": [{"type": "user.message", "content": f"Run {dep.spec.name}"}],
        "resources": [],
        "vault_ids": [],
        "metadata": {
            "cas_config": {
                "session_strategy": "new_session",
                "config": {
                    "max_concurrent": dep.spec.max_concurrent,
                    "max_retries": 0,
                    "timeout_ms": 300000,
                },
                "stats": stats,
            }
        },
        "created_at": fmt(dep.created_ns, whole=True),
        "updated_at": fmt(updated, whole=True),
    }


def run_cursor(
    sim: Simulator, query: dict[str, str], dep: Deployment | None
) -> tuple[str, tuple[int, str]] | None:
    """Resolve a run cursor; it must name a run of this list (else 400)."""
    given = cursor_param(query)
    if given is None:
        return None
    direction, name, run_id = given
    run = sim._runs.get(run_id)
    if run is None or (dep is not None and run.dep is not dep):
        raise ApiError(400, "invalid_request_error", f"{name} {run_id} is not in this list", name)
    return direction, sort_key(run)


def run_filter(sim: Simulator, query: dict[str, str], now: int) -> Callable[[Run], bool]:
    """Build the predicate for status, trigger_type and has_error."""
    status = choice(query, "status", STATUSES)
    shape = sim.run_shape
    if not shape.filters_status:
        status = None
    trigger = choice(query, "trigger_type", ("manual", "schedule", "retry"))
    has_error_raw = query.get("has_error")
    has_error: bool | None = None
    if has_error_raw is not None:
        lowered = has_error_raw.lower()
        if lowered not in ("true", "false", "1", "0"):
            raise ApiError(400, "invalid_request_error", "has_error must be a boolean", "has_error")
        has_error = lowered in ("true", "1")

    def match(run: Run) -> bool:
        if trigger is not None and run.trigger != trigger:
            return False
        if status is None and has_error is None:
            return True
        current = shape.status(run, now)
        if status is not None and current != status:
            return False
        return has_error is None or has_error == (current == "failed")

    return match


def list_runs(sim: Simulator, req: Request) -> JSON:
    """Serve GET /deployments/{id}/runs."""
    dep, query, now = _deployment(sim, req), req.query, req.now
    limit = parse_limit(query, sim.page_cap)
    cursor = run_cursor(sim, query, dep)
    match = run_filter(sim, query, now)
    lo, hi = 0, len(dep.runs)
    after = time_param(query, "triggered_after")
    before = time_param(query, "triggered_before")
    if after is not None:
        lo = bisect.bisect_left(dep.runs, (after, ""), key=sort_key)
    if before is not None:
        hi = bisect.bisect_left(dep.runs, (before, ""), key=sort_key)
    page, more = select_page(dep.runs, lo, hi, match, limit, cursor)
    return envelope([sim.run_shape.run_json(r, now) for r in page], more)


def list_all_runs(sim: Simulator, req: Request) -> JSON:
    """Serve GET /deployment_runs."""
    query, now = req.query, req.now
    limit = parse_limit(query, sim.page_cap)
    cursor = run_cursor(sim, query, None)
    match = run_filter(sim, query, now)
    items = sim._all_sorted()
    if "deployment_id" in query:
        dep = sim._deps.get(query["deployment_id"])
        items = dep.runs if dep is not None else []
    lo, hi = time_bounds(items, sort_key, query, "created_at")
    page, more = select_page(items, lo, hi, match, limit, cursor)
    return envelope([sim.run_shape.run_json(r, now) for r in page], more)


def list_deployments(sim: Simulator, req: Request) -> JSON:
    """Serve GET /deployments."""
    query, now = req.query, req.now
    limit = parse_limit(query, sim.page_cap)
    cursor: tuple[str, tuple[int, str]] | None = None
    given = cursor_param(query)
    if given is not None:
        direction, name, dep_id = given
        dep = sim._deps.get(dep_id)
        if dep is None:
            raise ApiError(
                400, "invalid_request_error", f"{name} {dep_id} is not in this list", name
            )
        cursor = direction, sort_key(dep)
    status = choice(query, "status", ("active", "paused"))
    agent_id = query.get("agent_id")

    def match(dep: Deployment) -> bool:
        if agent_id is not None and dep.agent_id != agent_id:
            return False
        return status is None or dep.is_paused(now) == (status == "paused")

    # creation order is not created_at order: a deployment may be backdated (succeeds_until)
    items = sorted(sim._dep_order, key=sort_key)
    lo, hi = time_bounds(items, sort_key, query, "created_at")
    page, more = select_page(items, lo, hi, match, limit, cursor)
    return envelope([deployment_json(d, now) for d in page], more)


def _deployment(sim: Simulator, req: Request) -> Deployment:
    """Return the deployment named by the path, or answer 404."""
    dep = sim._deps.get(req.args[0])
    if dep is None:
        raise ApiError(404, "not_found_error", "Deployment not found")
    return dep


def get_deployment(sim: Simulator, req: Request) -> JSON:
    """Serve GET /deployments/{id}."""
    return deployment_json(_deployment(sim, req), req.now)


def get_run(sim: Simulator, req: Request) -> JSON:
    """Serve GET /deployments/{id}/runs/{run_id}."""
    dep = _deployment(sim, req)
    run = sim._runs.get(req.args[1])
    if run is None or run.dep is not dep:
        raise ApiError(404, "not_found_error", "Deployment run not found")
    return sim.run_shape.run_json(run, req.now)


def get_run_global(sim: Simulator, req: Request) -> JSON:
    """Serve GET /deployment_runs/{run_id}."""
    run = sim._runs.get(req.args[0])
    if run is None:
        raise ApiError(404, "not_found_error", "Deployment run not found")
    return sim.run_shape.run_json(run, req.now)


def create_run(sim: Simulator, req: Request) -> JSON:
    """Serve POST /deployments/{id}/run: trigger a manual run (409 when paused)."""
    dep = _deployment(sim, req)
    if dep.is_paused(req.now):
        raise ApiError(409, "conflict_error", "Deployment is not active (paused)")
    return sim.run_shape.run_json(sim._trigger(dep, req.now), req.now)
