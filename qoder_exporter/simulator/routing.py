"""Request handling without sockets: route, faults, auth, then the endpoint's answer.

`handle_request` is the whole API as a pure function of (method, path+query, headers); the HTTP
server (httpserver.py) and the requests adapter (adapter.py) only deliver its Reply.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from . import endpoints, sessions_api
from .replies import AUTH_MESSAGE, ApiError, Reply, Request, dump, error_reply, fault_reply
from .stamps import JSON

if TYPE_CHECKING:
    from .core import Simulator

Handler = Callable[["Simulator", Request], JSON]

BASE_PATH = "/api/v1/cloud"
# Endpoint names: the keys of request counts and of fault targeting.
ENDPOINTS = (
    "list_deployments",
    "get_deployment",
    "list_runs",
    "list_all_runs",
    "get_run",
    "get_run_global",
    "create_run",
    *sessions_api.ENDPOINTS,
    "unknown",
)

_P = re.compile
ROUTES: tuple[tuple[str, re.Pattern[str], str, Handler], ...] = (
    ("GET", _P(r"/deployments"), "list_deployments", endpoints.list_deployments),
    ("GET", _P(r"/deployments/([^/]+)"), "get_deployment", endpoints.get_deployment),
    ("GET", _P(r"/deployments/([^/]+)/runs"), "list_runs", endpoints.list_runs),
    ("GET", _P(r"/deployments/([^/]+)/runs/([^/]+)"), "get_run", endpoints.get_run),
    ("POST", _P(r"/deployments/([^/]+)/run"), "create_run", endpoints.create_run),
    ("GET", _P(r"/deployment_runs"), "list_all_runs", endpoints.list_all_runs),
    ("GET", _P(r"/deployment_runs/([^/]+)"), "get_run_global", endpoints.get_run_global),
    *sessions_api.ROUTES,
)


def route(method: str, path: str) -> tuple[str, tuple[str, ...], Handler | None]:
    """Map a request to an endpoint name, its path arguments and its handler."""
    if not path.startswith(BASE_PATH + "/"):
        return "unknown", (), None
    rest = path[len(BASE_PATH) :].rstrip("/")
    for route_method, pattern, name, handler in ROUTES:
        m = pattern.fullmatch(rest)
        if m and method == route_method:
            return name, m.groups(), handler
    return "unknown", (), None


def handle_request(sim: Simulator, method: str, raw_path: str, headers: Mapping[str, str]) -> Reply:
    """Decide the full reply to one request (header names lowercased), faults included."""
    split = urlsplit(raw_path)
    endpoint, args, handler = route(method, split.path)
    request_id = headers.get("x-request-id") or str(uuid.uuid4())
    with sim._lock:
        sim.request_counts[endpoint] += 1
    if sim.faults.down:
        return Reply(reset=True)
    fault = sim.faults.take(endpoint)
    kind, retry_after = fault if fault else (None, None)
    delay = sim.faults.latency_s
    if kind == "reset":
        return Reply(reset=True)
    if kind == "slow":
        delay += float(retry_after or "0.5")
    if kind in ("500", "502", "503", "429", "malformed"):
        reply = fault_reply(kind, retry_after, request_id)
    else:
        try:
            body = _answer(sim, endpoint, args, handler, split.query, headers)
            reply = Reply(body=dump(body))
        except ApiError as err:
            reply = error_reply(err, request_id)
        if kind == "truncated":
            reply.body = reply.body[: len(reply.body) // 2]
    reply.headers.append(("request-id", request_id))
    reply.delay_s = delay
    return reply


def _answer(
    sim: Simulator,
    endpoint: str,
    args: tuple[str, ...],
    handler: Handler | None,
    query_string: str,
    headers: Mapping[str, str],
) -> JSON:
    """Authenticate and serve one API call, raising ApiError for error responses."""
    scheme, _, credential = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or credential.strip() != sim.token:
        raise ApiError(401, "authentication_error", AUTH_MESSAGE)
    if not sim.faults.consume_auth():
        raise ApiError(401, "authentication_error", AUTH_MESSAGE)
    if handler is None or endpoint in sim.faults.absent:
        raise ApiError(404, "not_found_error", "Not found")
    multi = parse_qs(query_string)
    query = {k: v[0] for k, v in multi.items()}
    with sim._lock:
        return handler(sim, Request(endpoint, args, query, multi, sim._sync()))
