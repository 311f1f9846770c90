"""The sessions endpoints: GET /sessions, /sessions/{id} and /sessions/{id}/events.

Parameters as qoder-sessions.md §4.1 and §4.4 document them: limit 1-100 (more is a 400),
page/after_id/before_id (one at most), order, created_at[gt|gte|lt|lte]; the list filters by
deployment_id and statuses (repeatable); the events list by types (repeated `types[]`, or a comma
list in `types`; unknown types match nothing and are no error), compared times are processed_at.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .paging import choice, cursor_param, envelope, ordered_page, parse_limit, sort_key, time_bounds
from .replies import ApiError, Request
from .sessions import SESSION_STATUSES, Event, Session
from .stamps import JSON
from .world import Run

if TYPE_CHECKING:
    from .core import Simulator

ENDPOINTS = ("list_sessions", "get_session", "list_session_events")


def _session(sim: Simulator, req: Request) -> Session:
    """Return the session named by the path, or answer 404."""
    session = sim.sessions.get(req.args[0])
    if session is None or session.created_ns > req.now:
        raise ApiError(404, "not_found_error", "Session not found")
    return session


def _values(req: Request, name: str) -> list[str]:
    """Every value of a repeatable parameter: name=a&name=b, name[]=a, name=a,b."""
    raw = req.multi.get(name, []) + req.multi.get(name + "[]", [])
    return [part.strip() for value in raw for part in value.split(",") if part.strip()]


def _cursor(req: Request, find: dict[str, tuple[int, str]]) -> tuple[str, tuple[int, str]] | None:
    """Resolve the cursor to a key; an id not in this list is a 400."""
    given = cursor_param(req.query)
    if given is None:
        return None
    direction, name, item_id = given
    key = find.get(item_id)
    if key is None:
        raise ApiError(400, "invalid_request_error", f"{name} {item_id} is not in this list", name)
    return direction, key


def list_sessions(sim: Simulator, req: Request) -> JSON:
    """Serve GET /sessions."""
    query, now = req.query, req.now
    limit = parse_limit(query, 100)
    ascending = choice(query, "order", ("asc", "desc")) == "asc"
    statuses = set(_values(req, "statuses"))
    if statuses - set(SESSION_STATUSES):
        raise ApiError(
            400,
            "invalid_request_error",
            f"statuses must be among {', '.join(SESSION_STATUSES)}",
            "statuses",
        )
    runs: list[Run] = sim._all_sorted()
    if "deployment_id" in query:
        dep = sim._deps.get(query["deployment_id"])
        runs = dep.runs if dep is not None else []
    store = sim.sessions
    cursor: tuple[str, tuple[int, str]] | None = None
    given = cursor_param(query)
    if given is not None:
        run = store.run_of(given[2])
        find = {} if run is None else {given[2]: sort_key(run)}
        cursor = _cursor(req, find)

    def match(run: Run) -> bool:
        if run.created_ns > now or not store.listed(run):
            return False
        return not statuses or store.plan(run).status(now) in statuses

    lo, hi = time_bounds(runs, sort_key, query, "created_at")
    page, more = ordered_page(runs, sort_key, lo, hi, match, limit, cursor, ascending)
    return envelope([store.plan(r).json(now) for r in page], more)


def get_session(sim: Simulator, req: Request) -> JSON:
    """Serve GET /sessions/{id}."""
    return _session(sim, req).json(req.now)


def _event_key(event: Event) -> tuple[int, str]:
    return (event.processed_ns, event.id)


def list_events(sim: Simulator, req: Request) -> JSON:
    """Serve GET /sessions/{id}/events."""
    session = _session(sim, req)
    query = req.query
    limit = parse_limit(query, 100)
    ascending = choice(query, "order", ("asc", "desc")) != "desc"
    events = session.events_at(req.now)
    cursor = _cursor(req, {e.id: _event_key(e) for e in events})
    types = set(_values(req, "types"))

    def match(event: Event) -> bool:
        return not types or event.type in types

    lo, hi = time_bounds(events, _event_key, query, "created_at")
    page, more = ordered_page(events, _event_key, lo, hi, match, limit, cursor, ascending)
    return envelope([e.json() for e in page], more)


ROUTES = (
    ("GET", re.compile(r"/sessions"), "list_sessions", list_sessions),
    ("GET", re.compile(r"/sessions/([^/]+)"), "get_session", get_session),
    ("GET", re.compile(r"/sessions/([^/]+)/events"), "list_session_events", list_events),
)
